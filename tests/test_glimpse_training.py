"""Glimpse-tree training on tiny mosaics: both strategies run, checkpoints load, resume is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_glimpse_tree import TINY, drive, mosaics, one_thread, tiny_model  # noqa: F401  (fixtures)

from napari_glimpse.errors import DatasetError
from napari_glimpse.methods.glimpse_tree.config import GlimpseTreeConfig

SMALL = {**TINY, "epochs": 3, "warmup_epochs": 1, "warmup_glimpses": 6, "batch_size": 4}


def _run(gen, stop_after_epoch: int | None = None):
    events = []
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value, events
        events.append(ev)
        if stop_after_epoch is not None and ev.stage == "epoch" and ev.done == stop_after_epoch:
            gen.close()  # as a GUI cancel does
            return None, events


@pytest.mark.parametrize("strategy, target", [("supervised", "sampled"), ("mil", "dense")])
def test_training_runs_and_alternates(mosaics, tmp_path, strategy, target):  # noqa: F811
    from napari_glimpse.methods import get_method
    from napari_glimpse.runtime.checkpoint import load_checkpoint

    folder, _ = mosaics
    spec = get_method("glimpse-tree")
    out, events = _run(spec.train(folder, tmp_path / "m.safetensors", val_dir=folder, strategy=strategy,
                                  config=GlimpseTreeConfig(**SMALL, policy_target=target)))
    epochs = [e for e in events if e.stage == "epoch"]
    assert [e.metrics.get("epoch") for e in epochs] == [1, 2, 3]
    assert "(warm-up C)" in epochs[0].message and "(C)" in epochs[1].message and "(P)" in epochs[2].message
    assert all(np.isfinite(e.metrics["loss"]) for e in epochs)
    ckpt = load_checkpoint(out, expected_method="glimpse-tree")
    assert ckpt.config["strategy"] == strategy
    model, config, _ = spec.load_model(out, "cpu")
    assert config.glimpse_size == 32 and len(model.policies) == 2


def test_resume_is_exact(mosaics, tmp_path):  # noqa: F811
    from napari_glimpse.methods.glimpse_tree.training import train
    from napari_glimpse.runtime.checkpoint import load_checkpoint
    from napari_glimpse.runtime.training import last_path

    folder, _ = mosaics
    cfg = GlimpseTreeConfig(**SMALL)
    full = tmp_path / "full.safetensors"
    _run(train(folder, full, config=cfg))
    part = tmp_path / "part.safetensors"
    _run(train(folder, part, config=cfg), stop_after_epoch=2)
    assert load_checkpoint(last_path(part)).epoch == 2
    _, events = _run(train(folder, part, config=cfg, resume=True))
    assert events[[e.stage for e in events].index("resume")].done == 2
    a, b = load_checkpoint(last_path(full)).model_state, load_checkpoint(last_path(part)).model_state
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_supervised_needs_annotations(tmp_path):
    from napari_glimpse.methods.glimpse_tree.training import train

    (tmp_path / "a.tif").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("slide,label\na,1\n")
    with pytest.raises(DatasetError, match="annotations"):
        drive(train(tmp_path, tmp_path / "o.safetensors", config=GlimpseTreeConfig(**SMALL)))


def test_cli_train_mil(mosaics, tmp_path, capsys):  # noqa: F811
    from napari_glimpse.cli import main
    from napari_glimpse.runtime.checkpoint import load_checkpoint

    folder, _ = mosaics
    out = tmp_path / "cli.safetensors"
    sets = [f"--set={k}={v}" for k, v in {**SMALL, "epochs": 2}.items()]
    rc = main(["train", "glimpse-tree", "--strategy", "mil", "--data", str(folder), "--val", str(folder),
               "--out", str(out), *sets])
    assert rc == 0
    assert "epoch 2/2" in capsys.readouterr().out
    assert load_checkpoint(out).config["strategy"] == "mil"


def test_checkpoint_whose_header_length_starts_with_0x80_loads(tmp_path):
    # a safetensors header length whose low byte is 0x80 (pickle's signature) is still safetensors
    from napari_glimpse.runtime.checkpoint import load_checkpoint, save_checkpoint

    state = {"w": torch.zeros(2)}
    for pad in range(300):
        path = save_checkpoint(tmp_path / "c.safetensors", method="glimpse-tree", config={}, model_state=state,
                               header={"pad": "x" * pad})
        with open(path, "rb") as fh:
            if fh.read(1) == b"\x80":
                break
    else:
        pytest.fail("no padding gave a header length with low byte 0x80")
    assert torch.equal(load_checkpoint(path).model_state["w"], state["w"])


def test_init_starts_from_given_weights(mosaics, tmp_path, tiny_model):  # noqa: F811
    # a C-only epoch never touches the policies: they must equal the initial weights exactly
    from napari_glimpse.methods.glimpse_tree.training import train
    from napari_glimpse.runtime.checkpoint import load_checkpoint, save_checkpoint

    folder, _ = mosaics
    init = save_checkpoint(tmp_path / "init.safetensors", method="glimpse-tree", config=tiny_model.config,
                           model_state=tiny_model.state_dict())
    cfg = GlimpseTreeConfig(**{**SMALL, "epochs": 1, "warmup_epochs": 0})
    out, _ = _run(train(folder, tmp_path / "o.safetensors", config=cfg, init=init))
    state = load_checkpoint(out).model_state
    ref = tiny_model.state_dict()
    assert all(torch.equal(state[k], ref[k]) for k in ref if k.startswith("policies."))
    assert not all(torch.equal(state[k], ref[k]) for k in ref if k.startswith("classifier.") and "weight" in k)
