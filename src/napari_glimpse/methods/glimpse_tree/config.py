"""The glimpse-tree config: every number of METHODS.md section 1 is a field here."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...calls import AggregationInfer, AggregationParams, SlideCallInfer, SlideCallParams
from ...config import check, param, same_as

__all__ = ["GlimpseTreeConfig", "GlimpseTreeInferConfig", "branching_for_leaves", "BACKBONES", "POLICY_TARGETS"]

BACKBONES = ("small", "resnet18", "resnet34", "inception_v3")
POLICY_TARGETS = ("sampled", "dense", "dense-max")


def branching_for_leaves(leaves: int, levels: int) -> tuple[int, ...]:
    """Split ``leaves`` into ``levels`` branching factors, the larger ones deeper.

    4 -> (2, 2), 8 -> (2, 4), 16 -> (4, 4), 1 -> (1, 1) for two levels: more children
    where glimpses are cheap and the policy sees most detail.
    """
    if leaves < 1 or levels < 1:
        raise ValueError(f"need leaves >= 1 and levels >= 1, got {leaves} and {levels}")
    out, rest = [], leaves
    for i in range(levels, 0, -1):
        # the smallest factor of rest that is at least rest ** (1 / i)
        target = rest ** (1.0 / i)
        k = next(d for d in range(max(1, math.floor(target - 1e-9)), rest + 1) if rest % d == 0 and d >= target - 1e-9)
        out.append(k)
        rest //= k
    return tuple(sorted(out))


@dataclass
class GlimpseTreeConfig(SlideCallParams, AggregationParams):
    """A hierarchical glimpse tree: classifier C, policies P_l, sampling, training.

    Defaults are the paper's (Table 1: L = 2, 304 px glimpses, x4 per level, N_G = 8 leaves
    as (2, 4), T = 0.05 at test time) except the working resolution, which is PCam's 10x
    (0.972 um/px) because that is the data available here (the paper used 20x).
    """

    # --- network -------------------------------------------------------------------------
    backbone: str = param("small", "classifier C: small (fast CPU CNN), resnet18, resnet34 or inception_v3",
                       choices=BACKBONES, advanced=True)
    classifier_width: int = param(32, "channels of the small classifier's first stage", min=4, max=256, advanced=True)
    policy_width: int = param(8, "channels of the policy U-Nets' first stage", min=2, max=64, advanced=True)
    # --- tree ----------------------------------------------------------------------------
    levels: int = param(2, "L: levels below the root (the root is level 0, leaves level L)", min=1, max=4, advanced=True)
    glimpse_size: int = param(304, "glimpse edge in pixels at every level (multiple of level_scale)", min=16, max=1024, advanced=True)
    level_scale: int = param(4, "resolution factor between consecutive levels", min=2, max=8, advanced=True)
    # --- inference -----------------------------------------------------------------------
    branching: tuple[int, ...] = param((2, 4), "children per glimpse at each non-final level; N_G = product", group="inference")
    temperature: float = param(0.05, "Boltzmann temperature T at test time (T -> 0 takes the maximum)",
                            min=1e-4, max=100.0, group="inference")
    seed: int = param(0, "seed of the glimpse sampling (same seed, same glimpses)", min=0, max=2**31 - 1, group="inference")
    dense: bool = param(False, "the 'All' baseline: classify every leaf-sized tile of the regions instead", group="inference")
    tissue: str = param("otsu", "tissue mask: otsu (saturation) or grey (MagNets' grey filter)",
                     choices=("otsu", "grey"), group="inference")
    tissue_size: int = param(256, "tissue mask long side in pixels (computed on a low-resolution level)",
                          min=16, max=8192, group="inference")
    tissue_min: float = param(0.0, "'All': skip leaf tiles with less tissue than this fraction "
                           "(0 classifies every tile of the regions, the paper's All)",
                           min=0.0, max=1.0, group="inference")
    child_inside_min: float = param(1.0, "draw children only where at least this fraction of the child's box lies "
                                 "inside the slide (lowered to the best reachable when no child can)",
                                 min=0.0, max=1.0, group="inference")
    child_tissue_min: float = param(0.25, "draw children only where at least this fraction of the child's box is "
                                 "tissue (ignored where no child reaches it; 0 = off)",
                                 min=0.0, max=1.0, group="inference")
    # --- data / resolution ---------------------------------------------------------------
    mpp: float = param(0.972, "working resolution (leaf glimpses) in um/px", min=0.05, max=20.0, advanced=True)
    leaf_positive_fraction: float = param(
        0.02, "supervised: a leaf glimpse is positive when this fraction of it is annotated tumour",
        min=0.0, max=1.0, advanced=True)
    # --- training ------------------------------------------------------------------------
    strategy: str = param("supervised", "supervised (pixel annotations) or mil (slide labels only)",
                       choices=("supervised", "mil"))
    epochs: int = param(24, "training epochs (warm-up included)", min=1, max=10000)
    warmup_epochs: int = param(4, "epochs of C alone on uniformly sampled glimpses before alternating C / P",
                            min=0, max=10000)
    warmup_glimpses: int = param(600, "uniformly sampled glimpses per class for the warm-up",
                              min=2, max=100000, advanced=True)
    lr: float = param(1e-3, "initial learning rate (Adam)", min=1e-7, max=10.0)
    lr_decay: float = param(0.1, "learning-rate factor every lr_decay_steps steps", min=0.0, max=1.0, advanced=True)
    lr_decay_steps: int = param(1000, "optimizer steps between learning-rate decays", min=1, max=10**7, advanced=True)
    weight_decay: float = param(1e-4, "L2 weight decay", min=0.0, max=1.0, advanced=True)
    batch_size: int = param(16, "glimpses per classifier step", min=1, max=4096)
    train_branching: tuple[int, ...] = param((2, 4), "branching while training (leaves drawn per region)", advanced=True)
    policy_branching: tuple[int, ...] = param((4, 8), "branching in policy epochs: more trajectories per region "
                                           "for eq. 5 (leaves are only scored, not trained)", advanced=True)
    policy_target: str = param("sampled", "policy loss: sampled (eq. 5 at the drawn centres, the paper), dense "
                            "(q pixel-wise against C's scores on all leaf tiles) or dense-max (eq. 1: K * q at "
                            "every centre against the best leaf score inside that child)",
                            choices=POLICY_TARGETS, advanced=True)
    policy_regions: int = param(0, "dense policy target: C's score maps of at most this many random regions per "
                             "policy epoch (0 = all)", min=0, max=10**6, advanced=True)
    policy_pos_weight: float = param(0.0, "dense policy target: extra weight of the squared error where C's score "
                                  "is high (1 + w * score)", min=0.0, max=1000.0, advanced=True)
    leaf_jitter: float = param(0.0, "C epochs: move each policy-drawn leaf by up to this fraction of its edge in x and y "
                            "(C learns to score tumour wherever it sits in a glimpse, as the tree's leaves are "
                            "not on All's grid; 0 = the paper)", min=0.0, max=1.0, advanced=True)
    mil_tissue_min: float = param(0.5, "MIL: leaves with less tissue than this fraction do not train C",
                               min=0.0, max=1.0, advanced=True)
    policy_passes: int = param(1, "passes over the training regions per policy epoch (policy steps are cheap)",
                            min=1, max=100, advanced=True)
    temperature_start: float = param(1.0, "training temperature at the first alternating epoch (near uniform)",
                                  min=1e-4, max=100.0, advanced=True)
    temperature_decay: float = param(0.75, "training temperature factor per epoch", min=0.01, max=1.0, advanced=True)
    temperature_min: float = param(0.05, "lowest training temperature", min=1e-4, max=100.0, advanced=True)
    augment: bool = param(True, "random 90-degree rotations and flips of classifier glimpses")
    train_classifier: bool = param(True, "alternate C and policy epochs; off: every epoch trains the policies only, "
                                "C frozen (fine-tune the policies of a trained model given with init)")
    val_seeds: int = param(1, "validation: the tree's slide AUC averaged over this many sampling seeds "
                        "(one seed's AUC on a few slides is noisy, and picking the best epoch on it overfits)",
                        min=1, max=100)

    def __post_init__(self):
        check(self)
        for name in ("branching", "train_branching", "policy_branching"):
            value = getattr(self, name)
            value = (value,) if isinstance(value, int) else tuple(int(v) for v in value)
            if len(value) != self.levels or any(v < 1 for v in value):
                raise ValueError(f"GlimpseTreeConfig.{name} needs {self.levels} positive counts "
                                 f"(one per non-final level), got {value}")
            setattr(self, name, value)
        if self.glimpse_size % self.level_scale:
            raise ValueError(f"GlimpseTreeConfig.glimpse_size={self.glimpse_size} must be a multiple of "
                             f"level_scale={self.level_scale}")
        if self.warmup_epochs > self.epochs:
            raise ValueError("GlimpseTreeConfig.warmup_epochs cannot exceed epochs")

    @property
    def leaves(self) -> int:
        """N_G: leaf glimpses per region."""
        return math.prod(self.branching)

    @property
    def child_extent(self) -> int:
        """A child's edge in its parent's pixels (the box kernel K and the suppression box)."""
        return self.glimpse_size // self.level_scale

    @property
    def region_size(self) -> int:
        """A root glimpse's edge in working pixels: glimpse_size * level_scale ** levels."""
        return self.glimpse_size * self.level_scale**self.levels

    def downscale(self, level: int) -> int:
        """s_l = level_scale ** (L - l): working pixels per pixel of a level-l glimpse."""
        return self.level_scale ** (self.levels - level)


@dataclass
class GlimpseTreeInferConfig(SlideCallInfer, AggregationInfer):
    """The parameters of a glimpse-tree slide run (the "Run model" form and ``infer glimpse-tree``
    flags). Fields named like a :class:`GlimpseTreeConfig` inference field default to the
    checkpoint's value (its branching was chosen on validation mosaics)."""

    leaves: int = param(0, "N_G, leaf glimpses per region, split over the levels (the checkpoint's own split "
                           "when it has N_G leaves, else 8 -> branching 2 4); 0 keeps branching", min=0, max=4096)
    branching: tuple[int, ...] = same_as(GlimpseTreeConfig, "branching", advanced=True)
    temperature: float = same_as(GlimpseTreeConfig, "temperature", advanced=True)
    seed: int = same_as(GlimpseTreeConfig, "seed", advanced=True)
    dense: bool = same_as(GlimpseTreeConfig, "dense")
    tissue: str = same_as(GlimpseTreeConfig, "tissue", advanced=True)
    tissue_min: float = same_as(GlimpseTreeConfig, "tissue_min", advanced=True)
    show_q: bool = param(True, "keep the policies' Q maps as (hidden) layers", advanced=True)

    def __post_init__(self):
        check(self)
