"""Registration of the built-in methods (imported by ``napari_glimpse.methods``)."""

from __future__ import annotations

from .celnet import CELNetConfig, build_model, default_checkpoint, evaluate_celnet, train_celnet
from .registry import MethodSpec, register


def _infer_celnet(slide_path, checkpoint=None, *, device=None, region=None, stride=32, **kwargs):
    # Imported on call: slide inference pulls in the slide readers.
    from .celnet_infer import infer

    return (yield from infer(slide_path, checkpoint, device=device, region=region, stride=stride, **kwargs))


register(
    MethodSpec(
        name="celnet",
        description="CELNet: tumour probability map (fully convolutional) + CELM evidence localisation",
        config_cls=CELNetConfig,
        build_model=build_model,
        train=train_celnet,
        infer=_infer_celnet,
        evaluate=evaluate_celnet,
        default_checkpoint=default_checkpoint,
    ),
    replace=True,
)

# glimpse-tree: config only at import; torch loads when one of its callables runs.
from .glimpse_tree import method_spec as _glimpse_tree_spec  # noqa: E402

register(_glimpse_tree_spec(), replace=True)
