"""CELM: cancerous evidence localisation maps (Huang & Chung, CELNet paper, section 2.2).

* CAM_l = ReLU(sum_k alpha_k F_l^k), alpha_k = spatial mean of dy/dF_l^k (Grad-CAM), on the
  outputs of modules 2 and 3; M^c = a * up(CAM3) + (1 - a) * up(CAM2) (bilinear). Each CAM
  is scaled to [0, 1] by its maximum before fusion so that ``a`` weighs shapes, not the
  arbitrary magnitudes of two layers.
* CSM: guided back-propagation gradient of y (the logit) w.r.t. the input, min-max
  normalised to [0, 1] per image, converted to grey, Gaussian smoothed.
* CELM = b * (M^c . M^s) + (1 - b) * M^c, in [0, 1].
* Localisation: evidence mask = smoothed CELM >= threshold; tumour region coordinates =
  non-maximum suppression of the probability map.

The model must expose ``features(x) -> (F2, F3)`` and a way to turn those into the logit:
``head(gap2, gmp2, gap3, gmp3)`` if it has one (CELNet), else its ``forward`` is run with a hook on
``features`` that captures (F2, F3) on the way. Guided back-propagation runs the model
under a torch function mode that makes every ReLU (module or functional) pass only
positive gradients at positive inputs.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class CELMParams:
    """CELM and localisation settings (defaults used when the model config has no such field).

    Attributes
    ----------
    alpha
        Weight of CAM3 against CAM2 in M^c ("a").
    beta
        Weight of the CAM x CSM product against CAM alone ("b").
    csm_sigma
        Gaussian sigma (input pixels) smoothing the saliency map.
    mask_sigma
        Gaussian sigma (map cells) smoothing CELM before thresholding.
    mask_threshold
        CELM value at or above which a pixel is evidence.
    prob_threshold
        Windows with a tumour probability above this get a CELM in slide inference.
    nms_min_distance
        Peaks closer than this (map cells) to a stronger one are suppressed.
    nms_min_score
        Peaks below this probability are not reported.
    nms_max_peaks
        At most this many peaks.
    """

    alpha: float = 0.5
    beta: float = 0.5
    csm_sigma: float = 2.0
    mask_sigma: float = 1.0
    mask_threshold: float = 0.5
    prob_threshold: float = 0.5
    nms_min_distance: float = 3.0
    nms_min_score: float = 0.5
    nms_max_peaks: int = 100

    def __post_init__(self):
        for name in ("alpha", "beta", "mask_threshold", "prob_threshold", "nms_min_score"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"CELMParams.{name} must be in [0, 1], not {v}")
        if self.csm_sigma < 0 or self.mask_sigma < 0 or self.nms_min_distance < 0:
            raise ValueError("CELMParams sigmas and nms_min_distance must be >= 0")

    # Names the CELNet config uses for the same settings.
    _CONFIG_NAMES = {
        "alpha": ("celm_a",),
        "beta": ("celm_b",),
        "csm_sigma": ("saliency_sigma",),
        "mask_threshold": ("evidence_threshold",),
        "prob_threshold": ("threshold",),
        "nms_min_score": ("threshold",),
    }

    @classmethod
    def from_config(cls, config, **overrides) -> CELMParams:
        """Settings from a model config (its field names or ours), then non-None overrides."""
        values = {}
        for name in cls.__dataclass_fields__:
            for key in (name, *cls._CONFIG_NAMES.get(name, ())):
                if config is not None and hasattr(config, key):
                    values[name] = getattr(config, key)
                    break
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


# ------------------------------------------------------------------------- gradients


def _features_and_logit(model: nn.Module, x: torch.Tensor):
    """(F2, F3, logit (N,)) with F2, F3 part of the graph that produced the logit.

    A model with ``head(gap2, gmp2, gap3, gmp3)`` (CELNet) is driven piecewise, the same
    way its ``forward`` is; any other model's ``forward`` is run with ``features`` wrapped
    to capture (F2, F3) on the way.
    """
    head = getattr(model, "head", None)
    if callable(head):
        f2, f3 = model.features(x)
        logit = head(f2.mean(dim=(2, 3)), f2.amax(dim=(2, 3)), f3.mean(dim=(2, 3)), f3.amax(dim=(2, 3)))
        return f2, f3, logit.reshape(len(x))
    captured = {}
    original = model.features

    def features_hook(inp):
        captured["f"] = original(inp)
        return captured["f"]

    model.features = features_hook  # an instance attribute shadows the method for one call
    try:
        out = model(x)
    finally:
        del model.features
    if "f" not in captured:
        raise RuntimeError(f"{type(model).__name__}.forward does not call features()")
    f2, f3 = captured["f"]
    logit = out["logit"] if isinstance(out, dict) else out
    return f2, f3, logit.reshape(len(x), -1)[:, 0]


def _normalise_max(m: torch.Tensor) -> torch.Tensor:
    peak = m.flatten(1).amax(1).clamp_min(1e-12).view(-1, *([1] * (m.dim() - 1)))
    return m / peak


def grad_cams(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grad-CAMs of modules 2 and 3 at input size, each scaled to [0, 1], and the logits.

    Returns
    -------
    cam2, cam3, logit
        (N, H, W), (N, H, W), (N,)
    """
    # The input requires grad so that F2/F3 are in a graph even for a parameter-free model.
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        f2, f3, logit = _features_and_logit(model, x)
        g2, g3 = torch.autograd.grad(logit.sum(), (f2, f3))
    cams = []
    for f, g in ((f2, g2), (f3, g3)):
        alpha = g.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((alpha * f).sum(1, keepdim=True)).detach()
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        cams.append(_normalise_max(cam.clamp_min(0)))
    return cams[0], cams[1], logit.detach()


class _GuidedReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x > 0) * (grad > 0)


class guided_relus(torch.overrides.TorchFunctionMode):
    """Inside this context every ReLU (``nn.ReLU``, ``F.relu``, in place or not) is guided.

    Guided back-propagation (Springenberg et al.) passes a gradient through a ReLU only
    where both the input and the incoming gradient are positive. A function mode catches
    functional ReLUs too, which swapping ``nn.ReLU`` modules would miss, and touches no
    shared state: it acts on the calling thread only.
    """

    _RELUS = frozenset({F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self._RELUS:
            return _GuidedReLUFn.apply(args[0])
        return func(*args, **(kwargs or {}))


def input_gradient(model: nn.Module, x: torch.Tensor, guided: bool = True) -> torch.Tensor:
    """d logit / d input, (N, 3, H, W); through guided ReLUs unless ``guided`` is False."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), (guided_relus() if guided else contextlib.nullcontext()):
        _, _, logit = _features_and_logit(model, x)
        (g,) = torch.autograd.grad(logit.sum(), x)
    return g


def gaussian_blur(m: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, H, W) maps (reflect padding)."""
    if sigma <= 0:
        return m
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=m.dtype, device=m.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    y = m[:, None]
    pad_h, pad_w = min(r, m.shape[-2] - 1), min(r, m.shape[-1] - 1)
    # Reflect padding needs a pad smaller than the map; pad the remainder by replication.
    y = F.pad(y, (pad_w, pad_w, pad_h, pad_h), mode="reflect") if pad_w and pad_h else y
    y = F.pad(y, (r - pad_w, r - pad_w, r - pad_h, r - pad_h), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y[:, 0]


def saliency_map(model: nn.Module, x: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """CSM (N, H, W) in [0, 1]: guided gradient, min-max normalised, grey, smoothed."""
    g = input_gradient(model, x, guided=True)
    lo = g.flatten(1).amin(1).view(-1, 1, 1, 1)
    hi = g.flatten(1).amax(1).view(-1, 1, 1, 1)
    g = (g - lo) / (hi - lo).clamp_min(1e-12)
    grey = 0.299 * g[:, 0] + 0.587 * g[:, 1] + 0.114 * g[:, 2]
    return gaussian_blur(grey, sigma).clamp(0, 1)


@dataclass
class CELMOutput:
    """Per-image maps at input size (N, H, W), all in [0, 1], and the logits (N,)."""

    celm: torch.Tensor
    cam: torch.Tensor
    csm: torch.Tensor
    cam2: torch.Tensor
    cam3: torch.Tensor
    logit: torch.Tensor


def compute_celm(model: nn.Module, x: torch.Tensor, params: CELMParams | None = None) -> CELMOutput:
    """CELM of a batch of model inputs.

    Parameters
    ----------
    model
        CELNet (or any model with ``features(x) -> (F2, F3)``), in eval mode.
    x
        (N, 3, H, W) model inputs, already normalised the way the model expects.
    params
        a / b / sigma settings; defaults when None.
    """
    params = params or CELMParams()
    cam2, cam3, logit = grad_cams(model, x)
    cam = params.alpha * cam3 + (1 - params.alpha) * cam2
    csm = saliency_map(model, x, params.csm_sigma)
    celm = params.beta * (cam * csm) + (1 - params.beta) * cam
    return CELMOutput(celm.clamp(0, 1), cam, csm, cam2, cam3, logit)


# ---------------------------------------------------------------------- localisation


def evidence_mask(celm: np.ndarray, threshold: float = 0.5, sigma: float = 1.0) -> np.ndarray:
    """Labels (uint8, 1 = evidence): CELM smoothed with a Gaussian of ``sigma``, >= threshold."""
    m = torch.as_tensor(np.asarray(celm, np.float32))[None]
    smooth = gaussian_blur(m, sigma)[0].numpy() if min(m.shape[-2:]) > 1 else m[0].numpy()
    return (smooth >= threshold).astype(np.uint8)


def nms_peaks(
    prob: np.ndarray, min_distance: float = 3.0, min_score: float = 0.5, max_peaks: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Iterative non-maximum suppression on a probability map.

    Not ``skimage.feature.peak_local_max``: that keeps only local maxima, so a broad tumour
    region gives one peak, where this also takes cells down its slopes (every ``min_distance``).

    Repeatedly take the highest cell, then zero every cell within ``min_distance`` cells
    (Euclidean) of it, until the maximum is below ``min_score`` or ``max_peaks`` were taken.

    Returns
    -------
    rc, scores
        (K, 2) integer (row, col) of the peaks, strongest first, and their values (K,).
    """
    p = np.array(prob, dtype=np.float64, copy=True)
    p[~np.isfinite(p)] = -np.inf
    rows, cols = np.indices(p.shape) if p.size else (np.zeros(0), np.zeros(0))
    peaks, scores = [], []
    while len(peaks) < max_peaks and p.size:
        idx = int(np.argmax(p))
        r, c = divmod(idx, p.shape[1])
        v = p[r, c]
        if not v >= min_score:
            break
        peaks.append((r, c))
        scores.append(float(prob[r, c]))
        p[(rows - r) ** 2 + (cols - c) ** 2 <= min_distance**2] = -np.inf
    return np.asarray(peaks, dtype=np.int64).reshape(-1, 2), np.asarray(scores, dtype=np.float32)
