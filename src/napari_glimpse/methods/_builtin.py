"""Registration of the built-in methods (imported by ``napari_glimpse.methods``)."""

from __future__ import annotations

from .celnet import CELNetConfig, build_model, default_checkpoint, evaluate_celnet, train_celnet

# celnet_infer imports torch and numpy only; its slide readers load when infer runs.
from .celnet_infer import CELNetInferConfig
from .celnet_infer import infer as infer_celnet
from .celnet_infer import load_model as load_celnet_model
from .registry import MethodSpec, register

register(
    MethodSpec(
        name="celnet",
        description="CELNet: tumour probability map (fully convolutional) + CELM evidence localisation",
        config_cls=CELNetConfig,
        build_model=build_model,
        train=train_celnet,
        infer=infer_celnet,
        evaluate=evaluate_celnet,
        default_checkpoint=default_checkpoint,
        load_model=load_celnet_model,
        # The "Run model" form: stride, tiles, tissue, CELM and NMS settings with help/ranges.
        extra={"infer_config_cls": CELNetInferConfig},
    ),
    replace=True,
)

# glimpse-tree: config only at import; torch loads when one of its callables runs.
from .glimpse_tree import method_spec as _glimpse_tree_spec  # noqa: E402

register(_glimpse_tree_spec(), replace=True)
