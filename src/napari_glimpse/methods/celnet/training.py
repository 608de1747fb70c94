"""CELNet training and patch-folder evaluation."""

from __future__ import annotations

from .config import CELNetConfig
from .model import build_model


# --- registry glue: training, evaluation, shipped weights ------------------------------------
_SHIPPED = "celnet_pcam.safetensors"


def default_checkpoint() -> str | None:
    """The shipped PCam-trained checkpoint, or None when the package was built without it."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "_sample_data" / "weights" / _SHIPPED
    return str(path) if path.is_file() else None


def train_celnet(
    train_dir,
    out,
    *,
    val_dir=None,
    config: CELNetConfig | None = None,
    resume: bool = False,
    device: str | None = "auto",
    seed: int = 0,
    workers: int = 0,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    epoch_size: int | None = None,
    val_limit: int | None = None,
    init=None,
    **_ignored,
):
    """Train CELNet on patch folders (``0/`` normal, ``1/`` tumour); yields Progress, returns ``out``.

    ``epochs``, ``lr`` and ``batch_size`` override the config; ``init`` starts from a CELNet
    checkpoint's weights (fine-tuning). See :func:`napari_glimpse.runtime.training.train` for
    the files written and ``resume``.
    """
    import dataclasses

    from ...runtime.training import train

    config = config or CELNetConfig()
    overrides = {k: v for k, v in {"epochs": epochs, "lr": lr, "batch_size": batch_size}.items() if v is not None}
    if overrides:
        config = dataclasses.replace(config, **overrides)
    return (yield from train(
        "celnet", config, build_model, train_dir, out, val_dir=val_dir, resume=resume,
        device=device or "auto", seed=seed, workers=workers, epoch_size=epoch_size, val_limit=val_limit,
        init=init,
    ))


def evaluate_celnet(data_dir, checkpoint=None, *, device: str | None = "auto", batch_size: int = 128,
                    workers: int = 0, limit: int | None = None, tta: bool = False, **_ignored):
    """Accuracy / AUC / loss of a checkpoint (default: the shipped one) on a patch folder.

    ``tta`` averages each patch's 8 rotations / flips. Yields Progress; returns
    ``{"n", "accuracy", "auc", "loss", "tta", "checkpoint"}``.
    """
    from ...errors import CheckpointError
    from ...runtime.checkpoint import load_model
    from ...runtime.training import evaluate

    checkpoint = checkpoint or default_checkpoint()
    if checkpoint is None:
        raise CheckpointError("no checkpoint given and no shipped CELNet checkpoint is installed")
    model = load_model(checkpoint, method="celnet")
    metrics = yield from evaluate(model, data_dir, device=device or "auto", batch_size=batch_size,
                                  workers=workers, limit=limit, threshold=model.config.threshold, tta=tta)
    return {**metrics, "checkpoint": str(checkpoint)}


def evaluate_patches(model, data_dir, **kwargs):
    """Accuracy / AUC / loss of a loaded CELNet on a patch folder."""
    from ...runtime.training import evaluate

    return (yield from evaluate(model, data_dir, **kwargs))
