"""Hierarchical glimpse tree (METHODS.md section 1): classifier C on leaf glimpses, U-Net
policies P_l choosing where to look at each finer level, Boltzmann sampling with suppression.

Modules: :mod:`.config` (the config dataclass), :mod:`.model` (C and P_l), :mod:`.sampling`
(box smoothing, Q, drawing children), :mod:`.inference` (regions, the tree, 'All'),
:mod:`.tree_result` (result dataclasses, :func:`subtree`), :mod:`.api` (load / infer /
evaluate), :mod:`.training` (supervised and MIL), :mod:`.data` (slide folders).
Only the config is imported here: torch loads when a callable runs.
"""

from .config import GlimpseTreeConfig, branching_for_leaves

__all__ = ["GlimpseTreeConfig", "branching_for_leaves", "build_model", "infer", "train", "evaluate",
           "default_checkpoint", "load_model", "subtree"]


def build_model(config=None):
    from .model import build_model as _build

    return _build(config)


def infer(slide_path, checkpoint=None, *, device=None, region=None, leaves: int = 0, branching=None,
          temperature: float | None = None, seed: int | None = None, dense: bool | None = None,
          tissue: str | None = None, tissue_min: float | None = None, **kwargs):
    """See :func:`.api.infer`; None keeps the checkpoint config's value."""
    from .api import infer as _infer

    return (yield from _infer(slide_path, checkpoint, device=device, region=region, leaves=leaves,
                              branching=branching, temperature=temperature, seed=seed, dense=dense,
                              tissue=tissue, tissue_min=tissue_min, **kwargs))


def evaluate(data_dir, checkpoint=None, *, device="auto", leaves: int = 0, branching=None,
             temperature: float | None = None, seed: int | None = None, dense: bool | None = None, **kwargs):
    """See :func:`.api.evaluate`; None keeps the checkpoint config's value."""
    from .api import evaluate as _evaluate

    return (yield from _evaluate(data_dir, checkpoint, device=device, leaves=leaves, branching=branching,
                                 temperature=temperature, seed=seed, dense=dense, **kwargs))


def train(train_dir, out, **kwargs):
    """See :func:`.training.train`."""
    from .training import train as _train

    return (yield from _train(train_dir, out, **kwargs))


def default_checkpoint():
    from .api import default_checkpoint as _default

    return _default()


def load_model(checkpoint=None, device=None):
    from .api import load_model as _load

    return _load(checkpoint, device)


def subtree(result_or_tree, node_id: int) -> list[int]:
    """Ids of a glimpse and all its descendants (see :func:`.tree_result.subtree`)."""
    from .tree_result import subtree as _subtree

    return _subtree(result_or_tree, node_id)


def method_spec():
    """The registry entry of ``glimpse-tree``."""
    from ..registry import MethodSpec

    return MethodSpec(
        name="glimpse-tree",
        description="Hierarchical glimpse tree: U-Net policies pick where to look, C classifies leaf glimpses",
        config_cls=GlimpseTreeConfig,
        build_model=build_model,
        train=train,
        infer=infer,
        evaluate=evaluate,
        default_checkpoint=default_checkpoint,
        load_model=load_model,
        extra={
            # training data the widgets / CLI ask for (slides + annotations or labels.csv)
            "train_inputs": [
                {"name": "train_dir", "kind": "folder", "label": "training slides",
                 "help": "slides with <stem>.geojson / .xml / .mask.tif tumour annotations (supervised) "
                         "or a labels.csv (slide,label) for MIL"},
                {"name": "val_dir", "kind": "folder", "label": "validation slides", "required": False,
                 "help": "slides with labels.csv: the tree's slide AUC picks the best epoch"},
            ],
            "cli_train_flags": ["strategy"],
            # for the widgets: call ``hook(viewer)`` after adding this method's layers (click a
            # glimpse box -> select its subtree, show only its Q maps); idempotent
            "napari_layers_hook": "napari_glimpse._napari.glimpse_select:attach_glimpse_select",
            "param_help": {"leaves": "N_G, leaf glimpses per region, split over the levels "
                                     "(the checkpoint's own split when it has N_G leaves, else 8 -> branching 2 4); "
                                     "0 keeps --branching / the checkpoint's"},
            "shipped": {"supervised": "glimpse_tree_supervised.safetensors", "mil": "glimpse_tree_mil.safetensors"},
        },
    )
