"""Registration of the built-in methods (imported by ``napari_glimpse.methods``)."""

from __future__ import annotations

from .celnet.config import CELNetConfig, CELNetInferConfig
from .celnet.inference import infer as infer_celnet
from .celnet.inference import load_model as load_celnet_model
from .celnet.model import build_model
from .celnet.training import default_checkpoint, evaluate_celnet, train_celnet
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
        extra={"infer_config_cls": CELNetInferConfig},
    ),
    replace=True,
)

from .glimpse_tree import method_spec as _glimpse_tree_spec  # noqa: E402

register(_glimpse_tree_spec(), replace=True)
