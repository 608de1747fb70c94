"""CELNet: cancerous-evidence localisation network (Huang & Chung, MICCAI 2019).

Architecture (METHODS.md section 5)::

    RGB [0, 1] -> normalise -> 3x3 conv head (3 -> 16), BN, ReLU
      module 1: 3 MA-ResBlocks, 16 ch, stride 1   (96 x 96 for a 96-px patch)
      module 2: 3 MA-ResBlocks, 32 ch, stride 2   (48 x 48)  -> F2
      module 3: 3 MA-ResBlocks, 64 ch, stride 2   (24 x 24)  -> F3
    companion 2 = [GAP(F2), GMP(F2)]  (64)     -> 1x1 conv -> aux2 logit
    companion 3 = [GAP(F3), GMP(F3)]  (128)    -> 1x1 conv -> aux3 logit
    [companion 2, companion 3]        (192)    -> 1x1 conv -> logit (cancer score before sigmoid)

An MA-ResBlock is conv3x3(stride s)-BN-ReLU, conv3x3-BN, the multi-branch attention module
(MAM), plus the shortcut (identity, or 3x3 stride-2 conv + BN when the block downsamples),
then ReLU. MAM = channel attention (a shared bottleneck MLP, reduction 4, on the average- and
max-pooled descriptors, summed, sigmoid) followed by spatial attention
``A_s = sigmoid(sum_k conv_k([mean_c F, max_c F]))`` for k in (3, 5, 7), multiplying F.

Contract for fully-convolutional slide inference (read this before writing a dense path)
-------------------------------------------------------------------------------------
The paper's channel attention pools over the whole feature map. A global pool makes every
feature depend on the whole input, so the features of a patch inside a large tile can never
equal those of the patch alone, and no dense map can be exact. CELNet here therefore pools the
channel-attention descriptors over a *local* window of ``config.channel_window`` cells
(default 7; ``None`` restores the paper's global pooling and gives up exactness). With that,
every layer before the companion pooling is a local, translation-equivariant operation and
the network has a finite receptive field: a feature cell of F2/F3 depends only on input
pixels within ``model.context_margin`` px (168 px with the defaults) of the cell's centre.

Consequences, which both paths must respect:

* ``forward(x)`` classifies a bare ``patch_size`` patch with zero padding at its border -- how
  the network is trained and how PCam-style patch data is evaluated.
* On a slide, a patch has real neighbours, so the per-patch reference is
  ``classify_with_context(x)``: ``x`` is the patch read together with ``context_margin`` px of
  slide around it (``patch_size + 2 * context_margin`` px square); the companions pool only
  the cells of the central patch.
* The dense path reads a tile together with the same margin, computes ``features`` once and
  calls ``window_logits(F2, F3, step)``. Output cell (r, c) is the window whose top-left
  input pixel is (row, col) = (r * step, c * step) relative to the tile input's origin; it
  equals ``classify_with_context`` of that window (to float round-off, < 1e-4) whenever the
  window lies at least ``context_margin`` px inside the input on every side. Windows closer
  to the input border see zero padding instead of slide and must be discarded (overlap
  neighbouring tiles by ``2 * context_margin`` px). ``step`` and window offsets must be
  multiples of ``model.stride`` (4 px, 8 with ``stem_stride=2``) so that the stride-2 grids
  line up.
* The dense map and ``forward`` on an isolated patch differ near the patch border by design:
  the patch alone is padded with zeros, the slide is not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import CELNetConfig

__all__ = ["CELNet", "CELNetConfig", "MAM", "build_model"]

# ImageNet-like RGB statistics; the network takes float RGB in [0, 1] and normalises itself, so
# every caller (training, dense inference, CELM) feeds the same thing.
_MEAN = (0.70, 0.55, 0.70)
_STD = (0.20, 0.25, 0.20)


class MAM(nn.Module):
    """Multi-branch attention module: channel attention, then multi-kernel spatial attention."""

    def __init__(self, channels: int, reduction: int, kernels: tuple[int, ...], window: int | None):
        super().__init__()
        hidden = channels // reduction
        self.window = window
        # 1x1 convs rather than Linear so the MLP applies per cell when pooling is local.
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.ModuleList(nn.Conv2d(2, 1, k, padding=k // 2) for k in kernels)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if self.window is None:
            avg = f.mean(dim=(2, 3), keepdim=True)
            mx = f.amax(dim=(2, 3), keepdim=True)
        else:
            # w x w pooling as a w x 1 then a 1 x w pass: the same numbers (max and the
            # border-aware mean are separable), 2w instead of w^2 reads per cell.
            w, p = self.window, self.window // 2
            avg = F.avg_pool2d(f, (w, 1), stride=1, padding=(p, 0), count_include_pad=False)
            avg = F.avg_pool2d(avg, (1, w), stride=1, padding=(0, p), count_include_pad=False)
            mx = F.max_pool2d(F.max_pool2d(f, (w, 1), stride=1, padding=(p, 0)), (1, w), stride=1, padding=(0, p))
        f = f * torch.sigmoid(self.mlp(avg) + self.mlp(mx))
        # max (not amax): same forward; its backward scatters through indices instead of a
        # tie mask over all channels, the costliest op of a training step.
        s = torch.cat([f.mean(dim=1, keepdim=True), f.max(dim=1, keepdim=True).values], dim=1)
        a = self.spatial[0](s)
        for conv in self.spatial[1:]:
            a = a + conv(s)
        return f * torch.sigmoid(a)


class MAResBlock(nn.Module):
    """Residual building block with MAM; downsamples with a 3x3 stride-2 shortcut conv."""

    def __init__(self, cin: int, cout: int, stride: int, config: CELNetConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.mam = MAM(cout, config.reduction, config.spatial_kernels, config.channel_window)
        self.shortcut = None
        if stride != 1 or cin != cout:
            # 3x3 rather than 1x1 so downsampling loses less (paper, section 2.1).
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.mam(self.bn2(self.conv2(out)))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity, inplace=True)


class CELNet(nn.Module):
    """CELNet with deep supervision; see the module docstring for the dense-inference contract.

    Parameters
    ----------
    config : CELNetConfig
        Network shape and everything else the method needs.

    Attributes
    ----------
    stride : int
        Input pixels per F3 cell (``4 * config.stem_stride``); F2 cells are ``stride // 2`` px.
    context_margin : int
        Receptive-field radius in input px, rounded up to a multiple of ``stride``: features of
        cells inside a window depend only on pixels within this margin around the window.
    """

    def __init__(self, config: CELNetConfig | None = None):
        super().__init__()
        self.config = config = config or CELNetConfig()
        self.stride = 4 * config.stem_stride
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        w1, w2, w3 = config.widths
        self.stem = nn.Sequential(
            nn.Conv2d(3, w1, 3, stride=config.stem_stride, padding=1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(inplace=True)
        )
        self.module1 = self._module(w1, w1, 1)
        self.module2 = self._module(w1, w2, 2)
        self.module3 = self._module(w2, w3, 2)
        self.aux2 = nn.Conv2d(2 * w2, 1, 1)
        self.aux3 = nn.Conv2d(2 * w3, 1, 1)
        self.classifier = nn.Conv2d(2 * w2 + 2 * w3, 1, 1)
        self.context_margin = self._receptive_radius()
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size[0] == 3 and m.in_channels > 2:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _module(self, cin: int, cout: int, stride: int) -> nn.Sequential:
        blocks = [MAResBlock(cin, cout, stride, self.config)]
        blocks += [MAResBlock(cout, cout, 1, self.config) for _ in range(self.config.blocks - 1)]
        return nn.Sequential(*blocks)

    def _receptive_radius(self) -> int | None:
        """Receptive-field radius of F3 in input px, rounded up to a multiple of ``stride``."""
        cfg = self.config
        if cfg.channel_window is None:
            return None
        per_block = cfg.channel_window // 2 + max(cfg.spatial_kernels) // 2  # MAM, in cells
        radius, jump = 1, cfg.stem_stride  # stem conv
        for stride in (1, 2, 2):
            for b in range(cfg.blocks):
                radius += jump  # conv1 (its stride acts after its own footprint)
                if b == 0:
                    jump *= stride
                radius += jump + per_block * jump  # conv2 + MAM
        return int(math.ceil(radius / self.stride) * self.stride)

    # --- the pieces the dense path and CELM use ---------------------------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """RGB float in [0, 1] -> network input."""
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Module-2 and module-3 feature maps (before pooling) of RGB input in [0, 1].

        ``x`` is (N, 3, H, W) with H, W multiples of s = ``stride``; F2 is (N, w2, 2H/s, 2W/s),
        F3 is (N, w3, H/s, W/s). Cell (i, j) of F2 is centred on input pixel (i, j) x s/2, of F3
        on (i, j) x s.
        """
        h = self.module1(self.stem(self.normalize(x)))
        f2 = self.module2(h)
        return f2, self.module3(f2)

    def head(self, gap2: torch.Tensor, gmp2: torch.Tensor, gap3: torch.Tensor, gmp3: torch.Tensor) -> torch.Tensor:
        """Cancer-score logit from pooled companions: (N, C) -> (N,), or (N, C, h, w) -> (N, h, w)."""
        return self._conv1x1(self.classifier, torch.cat([gap2, gmp2, gap3, gmp3], dim=1))

    def aux_heads(self, gap2, gmp2, gap3, gmp3) -> tuple[torch.Tensor, torch.Tensor]:
        """Companion logits (aux2, aux3), same shapes as :meth:`head`."""
        return (
            self._conv1x1(self.aux2, torch.cat([gap2, gmp2], dim=1)),
            self._conv1x1(self.aux3, torch.cat([gap3, gmp3], dim=1)),
        )

    @staticmethod
    def _conv1x1(conv: nn.Conv2d, z: torch.Tensor) -> torch.Tensor:
        if z.ndim == 2:
            return F.linear(z, conv.weight.flatten(1), conv.bias)[:, 0]
        return conv(z)[:, 0]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits (before sigmoid) of bare patches, zero-padded at their border.

        Returns ``dict(logit=(N,), aux2=(N,), aux3=(N,))``.
        """
        f2, f3 = self.features(x)
        pooled = (f2.mean(dim=(2, 3)), f2.amax(dim=(2, 3)), f3.mean(dim=(2, 3)), f3.amax(dim=(2, 3)))
        aux2, aux3 = self.aux_heads(*pooled)
        return {"logit": self.head(*pooled), "aux2": aux2, "aux3": aux3}

    def window_logits(self, f2: torch.Tensor, f3: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """Dense logits of every ``patch_size`` window, ``step`` px apart, from tile features.

        Returns (N, rows, cols); cell (r, c) is the window whose top-left input pixel is
        (r * step, c * step). Exact only for windows ``context_margin`` px inside the input.
        """
        step = step or self.stride
        if step % self.stride:
            raise ValueError(f"step must be a multiple of {self.stride} px, got {step}")
        c3, c2 = self.stride, self.stride // 2  # input px per F3 / F2 cell
        k3, k2 = self.config.patch_size // c3, self.config.patch_size // c2
        s3, s2 = step // c3, step // c2
        pooled = (
            F.avg_pool2d(f2, k2, stride=s2),
            F.max_pool2d(f2, k2, stride=s2),
            F.avg_pool2d(f3, k3, stride=s3),
            F.max_pool2d(f3, k3, stride=s3),
        )
        rows = min(p.shape[2] for p in pooled)
        cols = min(p.shape[3] for p in pooled)
        return self.head(*(p[:, :, :rows, :cols] for p in pooled))

    def classify_with_context(self, x: torch.Tensor) -> torch.Tensor:
        """Logit of the central patch of ``x`` read with ``context_margin`` px of context.

        ``x`` is (N, 3, P + 2m, P + 2m) with P = ``patch_size`` and m = ``context_margin``;
        the per-patch reference that the dense map reproduces. Returns (N,).
        """
        m, p = self.context_margin, self.config.patch_size
        if m is None:
            raise ValueError("channel_window=None (global channel attention) has no finite context")
        if x.shape[-1] != p + 2 * m or x.shape[-2] != p + 2 * m:
            raise ValueError(f"expected {p + 2 * m} px square input (patch {p} + 2 x margin {m}), got {tuple(x.shape[-2:])}")
        f2, f3 = self.features(x)
        c3, c2 = self.stride, self.stride // 2
        f2 = f2[:, :, m // c2 : (m + p) // c2, m // c2 : (m + p) // c2]
        f3 = f3[:, :, m // c3 : (m + p) // c3, m // c3 : (m + p) // c3]
        pooled = (f2.mean(dim=(2, 3)), f2.amax(dim=(2, 3)), f3.mean(dim=(2, 3)), f3.amax(dim=(2, 3)))
        return self.head(*pooled)


def build_model(config: CELNetConfig | None = None) -> CELNet:
    """Build an untrained CELNet (the registry's ``build_model``)."""
    return CELNet(config or CELNetConfig())
