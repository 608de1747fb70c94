"""The attention-based classifier of Brancati et al. over a feature grid, its max-only ablation,
the ABMIL baseline (Ilse et al. 2018), and Grad-CAM over the grid.

A grid G (M', N', K) goes through a Conv3d(1 -> H, (K, n, n)) -- a 2-D convolution over all K
features -- giving G' (H, M', N'). The max branch keeps one cell per 2 x 2 block of G'
(MaxPool2d with indices, MaxUnpool2d), the min branch the same on -G'; a softmax over all cells
per channel gives the attention maps A (eq. 1). In the authors' code the unpooled zeros still
get weight e^0 ("faithful"); "masked" spreads the attention over the pooled cells only. Each
branch reads out v[h, k] = sum_mn A[h, m, n] G[m, n, k] (eq. 2), a ReLU, both are
concatenated, dropout, and one linear layer gives 2 logits (classification) or 1 value
(regression on standardised targets).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .grids import pad_grid

__all__ = ["GridAttention", "build_model", "branch_attention", "grad_cam"]


def branch_attention(g: torch.Tensor, masked: bool) -> torch.Tensor:
    """Attention maps (H, M, N) of one branch from its input (H, M, N) (G' or -G'; M, N even).

    The sparse map keeps each 2 x 2 block's maximum in place, zero elsewhere; the softmax runs
    over all M * N cells per channel (``masked``: over the kept cells only).
    """
    h, m, n = g.shape
    pooled, idx = F.max_pool2d(g[None], 2, 2, return_indices=True)
    sparse = F.max_unpool2d(pooled, idx, 2, 2, output_size=(m, n))[0]
    logits = sparse.reshape(h, -1)
    if masked:
        kept = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, idx.reshape(h, -1), True)
        logits = logits.masked_fill(~kept, float("-inf"))
    return torch.softmax(logits, dim=1).reshape(h, m, n)


class GridAttention(nn.Module):
    """Grid attention over one slide's feature grid.

    Parameters
    ----------
    features : int
        K, the feature length of the grid.
    channels : int
        H, attention maps per branch.
    kernel : int
        n of the n x n x K convolution (odd).
    head : {"minmax", "max", "abmil"}
        The paper's min + max branches, the max branch alone, or ABMIL gated attention.
    variant : {"faithful", "masked"}
        Softmax over all cells (unpooled zeros weigh e^0) or over the pooled cells only.
    task : {"classification", "regression"}
        2 logits or 1 value.
    """

    def __init__(self, features: int, channels: int = 64, kernel: int = 3, head: str = "minmax",
                 variant: str = "faithful", task: str = "classification", dropout: float = 0.5,
                 abmil_hidden: int = 128):
        super().__init__()
        if head not in ("minmax", "max", "abmil"):
            raise ValueError(f"head must be minmax, max or abmil, got {head!r}")
        self.k, self.head, self.masked, self.task = int(features), head, variant == "masked", task
        outputs = 2 if task == "classification" else 1
        self.dropout = nn.Dropout(dropout)
        if head == "abmil":
            self.att_v = nn.Linear(self.k, abmil_hidden)
            self.att_u = nn.Linear(self.k, abmil_hidden)
            self.att_w = nn.Linear(abmil_hidden, 1)
            self.classifier = nn.Linear(self.k, outputs)
        else:
            self.conv = nn.Conv3d(1, channels, (self.k, kernel, kernel), padding=(0, kernel // 2, kernel // 2))
            branches = 2 if head == "minmax" else 1
            self.classifier = nn.Linear(branches * channels * self.k, outputs)

    def forward(self, features: torch.Tensor, tissue: torch.Tensor | None = None) -> dict:
        """One grid (M, N, K) (and its tissue (M, N)) -> ``{"out", "maps", "conv"}``.

        ``out``: (2,) logits or (1,) value; ``maps``: branch name -> attention (H, M', N') over
        the padded grid (ABMIL: ``"abmil"``, (1, M', N'), zero off tissue); ``conv``: G'
        (H, M', N'), None for ABMIL. M', N': the grid padded by :func:`pad_grid`.
        """
        g, tissue = pad_grid(features.float(), tissue)
        m, n, k = g.shape
        if k != self.k:
            raise ValueError(f"the model reads grids of {self.k} features, this grid has {k}")
        if self.head == "abmil":
            cells = g.reshape(-1, k)
            score = self.att_w(torch.tanh(self.att_v(cells)) * torch.sigmoid(self.att_u(cells)))[:, 0]
            on = tissue.reshape(-1)
            if not bool(on.any()):
                on = torch.ones_like(on)
            a = torch.softmax(score.masked_fill(~on, float("-inf")), 0)
            out = self.classifier(self.dropout(a @ cells))
            return {"out": out, "maps": {"abmil": a.reshape(1, m, n)}, "conv": None}
        conv = self.conv(g.permute(2, 0, 1)[None, None])[0, :, 0]  # (H, M, N)
        maps = {"max": branch_attention(conv, self.masked)}
        if self.head == "minmax":
            maps["min"] = branch_attention(-conv, self.masked)
        flat = g.reshape(-1, k)
        v = [F.relu(a.reshape(a.shape[0], -1) @ flat).reshape(-1) for a in maps.values()]
        out = self.classifier(self.dropout(torch.cat(v)))
        return {"out": out, "maps": maps, "conv": conv}


def build_model(config) -> GridAttention:
    """The network of an :class:`~.config.AttentionGridConfig` (K: its ``feature_dim``)."""
    if config.feature_dim < 1:
        raise ValueError("AttentionGridConfig.feature_dim is set by training from the feature grids")
    return GridAttention(config.feature_dim, config.channels, config.kernel, config.head,
                         config.variant, config.task, config.dropout, config.abmil_hidden)


def grad_cam(model: GridAttention, features: torch.Tensor, tissue: torch.Tensor | None = None) -> tuple[dict, torch.Tensor]:
    """The forward pass and the Grad-CAM map (M', N') of one grid (Selvaraju et al.).

    The gradient of the positive-class logit (regression: the output) with respect to G';
    channel weights are its spatial means; the map is ReLU(sum_h w_h G'_h). Zeros for ABMIL.
    """
    with torch.enable_grad():
        result = model(features, tissue)
        conv = result["conv"]
        if conv is None:
            return result, torch.zeros(result["maps"]["abmil"].shape[1:])
        target = result["out"][1] if model.task == "classification" else result["out"][0]
        (grad,) = torch.autograd.grad(target, conv)
    weights = grad.mean(dim=(1, 2))
    cam = F.relu((weights[:, None, None] * conv.detach()).sum(0))
    return result, cam


def slide_score(out: torch.Tensor, config) -> float:
    """The slide's score from the model output: P(class 1), or the regression value in label units."""
    if config.task == "classification":
        return float(torch.softmax(out.detach().float(), 0)[1])
    return float(out.detach()[0]) * config.target_std + config.target_mean
