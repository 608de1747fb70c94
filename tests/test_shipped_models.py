"""The checkpoints shipped inside the package load safely and beat chance on held-out data."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from napari_glimpse.methods import get_method  # noqa: E402
from napari_glimpse.runtime.events import run_to_end  # noqa: E402

HELD_OUT = Path(__file__).parent / "data" / "pcam_valid"


_drain = run_to_end  # drive a progress generator to its result


def test_shipped_celnet_beats_chance_on_held_out_pcam():
    spec = get_method("celnet")
    ckpt = spec.default_checkpoint()
    assert ckpt is not None and Path(ckpt).is_file(), "CELNet ships a default checkpoint"
    metrics = _drain(spec.evaluate(HELD_OUT, None, device="cpu", batch_size=40))
    assert metrics["n"] == 80
    # Full PCam validation split: accuracy 0.846, AUC 0.919 (README). 80 patches are noisy, so the
    # bar is "clearly better than chance", which a random or constant model does not pass.
    assert metrics["auc"] > 0.75, metrics
    assert metrics["accuracy"] > 0.65, metrics
