"""Training loop, datasets and the train / evaluate CLI, on a few real PCam patches."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from napari_glimpse.cli import main
from napari_glimpse.errors import DatasetError
from napari_glimpse.evaluate import roc_auc
from napari_glimpse.methods.celnet.model import CELNetConfig, build_model
from napari_glimpse.methods.celnet.training import train_celnet
from napari_glimpse.runtime.augment import augment_batch
from napari_glimpse.runtime.checkpoint import load_checkpoint
from napari_glimpse.runtime.data import load_patch_folder
from napari_glimpse.runtime.fit import last_path

TINY = CELNetConfig(widths=(4, 8, 8), reduction=2, blocks=1, batch_size=4, lr=0.01, epochs=2)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, pcam_patches):
    """train/ (6 + 6 patches) and val/ (4 + 4), class sub-folders 0/ and 1/."""
    root = tmp_path_factory.mktemp("pcam")
    for split, sl in (("train", slice(0, 6)), ("val", slice(100, 104))):
        for c in (0, 1):
            d = root / split / str(c)
            d.mkdir(parents=True)
            for f in pcam_patches[c][sl]:
                shutil.copy(f, d / f.name)
    return root


def _run(gen, stop_after_epoch=None):
    events = []
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value, events
        events.append(ev)
        if stop_after_epoch is not None and ev.stage == "epoch" and ev.done == stop_after_epoch:
            gen.close()  # what a cancelled worker does
            return None, events


def test_dataset_loads_labels_and_refuses_bad_folders(folders, tmp_path):
    data = load_patch_folder(folders / "train", workers=2)
    assert data.images.shape == (12, 96, 96, 3) and data.images.dtype == np.uint8
    assert data.labels.tolist() == [0] * 6 + [1] * 6
    assert data.summary()["per_class"] == {"0": 6, "1": 6}
    with pytest.raises(DatasetError, match="not found"):
        load_patch_folder(tmp_path / "nowhere")
    (tmp_path / "d" / "1").mkdir(parents=True)
    with pytest.raises(DatasetError, match="'0/' is missing"):
        load_patch_folder(tmp_path / "d")
    (tmp_path / "d" / "0").mkdir()
    with pytest.raises(DatasetError, match="'0/' holds no images"):
        load_patch_folder(tmp_path / "d")
    shutil.copy(next((folders / "train" / "0").iterdir()), tmp_path / "d" / "0")
    (tmp_path / "d" / "1" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg.*cannot decode"):
        load_patch_folder(tmp_path / "d")


def test_augmentation_applies_one_dihedral_transform_per_patch():
    x = torch.rand(16, 3, 8, 8)
    y = augment_batch(x, torch.Generator().manual_seed(0))
    seen = set()
    for a, b in zip(x, y, strict=True):
        variants = [torch.rot90(a if k < 4 else a.flip(-1), k % 4, dims=(-2, -1)) for k in range(8)]
        matches = [k for k, v in enumerate(variants) if torch.equal(v, b)]
        assert matches
        seen.add(matches[0])
    assert len(seen) > 2  # not always the same transform


def test_colour_jitter_is_seeded_bounded_and_varies_per_patch():
    x = torch.rand(32, 3, 8, 8) * 0.8 + 0.1
    a = augment_batch(x, torch.Generator().manual_seed(5), color_jitter=0.1)
    b = augment_batch(x, torch.Generator().manual_seed(5), color_jitter=0.1)
    assert torch.equal(a, b)  # the same seed, the same patches (resume stays exact)
    assert a.min() >= 0.0 and a.max() <= 1.0
    plain = augment_batch(x, torch.Generator().manual_seed(5))
    change = (a - plain).abs().mean(dim=(1, 2, 3))
    assert change.min() > 1e-3 and change.std() > 1e-3  # every patch shifted, each differently
    assert change.max() < 0.2  # a jitter, not a different image


def test_tta_averages_the_eight_rotations_and_flips(folders):
    from napari_glimpse.methods.celnet.training import evaluate
    from napari_glimpse.runtime.augment import dihedral

    torch.manual_seed(0)
    model = build_model(TINY).eval()
    data = load_patch_folder(folders / "val")
    plain = _run(evaluate(model, folders / "val", device="cpu"))[0]
    tta = _run(evaluate(model, folders / "val", device="cpu", tta=True))[0]
    assert not plain["tta"] and tta["tta"]
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        probs = torch.stack([torch.sigmoid(model(dihedral(x, k))["logit"]) for k in range(8)]).mean(0)
    assert tta["auc"] == pytest.approx(roc_auc(data.labels, probs.numpy()))
    assert tta["loss"] != pytest.approx(plain["loss"])  # the rotations really changed the scores


def test_resume_after_cancel_equals_uninterrupted_run(folders, tmp_path):
    kw = {"val_dir": folders / "val", "config": TINY, "seed": 3, "device": "cpu"}
    full, events = _run(train_celnet(folders / "train", tmp_path / "a" / "m.safetensors", **kw))
    stages = {e.stage for e in events}
    assert {"load", "train", "validate", "epoch"} <= stages
    epochs = [e for e in events if e.stage == "epoch"]
    assert [e.done for e in epochs] == [1, 2]
    assert {"train_loss", "train_bce", "val_loss", "val_accuracy", "val_auc"} <= set(epochs[-1].metrics)
    # the objective adds the companions' losses to the main output's BCE, which val_loss measures
    assert all(0 < e.metrics["train_bce"] < e.metrics["train_loss"] for e in epochs)

    out_b = tmp_path / "b" / "m.safetensors"
    cancelled, _ = _run(train_celnet(folders / "train", out_b, **kw), stop_after_epoch=1)
    assert cancelled is None and load_checkpoint(last_path(out_b)).epoch == 1
    resumed, events_b = _run(train_celnet(folders / "train", out_b, resume=True, **kw))
    assert events_b[[e.stage for e in events_b].index("resume")].done == 1
    a = load_checkpoint(last_path(tmp_path / "a" / "m.safetensors"))
    b = load_checkpoint(last_path(out_b))
    assert a.epoch == b.epoch == 2
    for name, t in a.model_state.items():
        assert torch.equal(t, b.model_state[name]), name
    for name in ("0.momentum_buffer",):
        assert torch.equal(a.optimizer_state["state"][0]["momentum_buffer"], b.optimizer_state["state"][0]["momentum_buffer"]), name
    assert a.header["history"][0]["train_loss"] == b.header["history"][0]["train_loss"]
    best = load_checkpoint(full)
    assert best.header["best"]["epoch"] == best.epoch
    assert best.header["classes"] == ["normal", "tumour"] and best.header["mpp"] == TINY.mpp


def test_cli_train_and_evaluate(folders, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    rc = main(["train", "celnet", "--data", str(folders / "train"), "--val", str(folders / "val"),
               "--out", str(out), "--epochs", "1", "--batch-size", "6", "--lr", "0.01",
               "--widths", "4", "8", "8", "--reduction", "2", "--blocks", "1"])
    assert rc == 0 and out.exists()
    assert "[epoch 1/1]" in capsys.readouterr().out
    rc = main(["evaluate", "celnet", "--checkpoint", str(out), "--data", str(folders / "val")])
    metrics = json.loads(capsys.readouterr().out)
    assert rc == 0 and metrics["n"] == 8
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["auc"] <= 1.0
    rc = main(["train", "celnet", "--data", str(tmp_path / "missing"), "--out", str(out)])
    assert rc == 1 and "missing: dataset folder not found" in capsys.readouterr().err
    rc = main(["train", "celnet", "--data", str(folders / "train"), "--out", str(out), "--blocks", "0"])
    assert rc == 1 and "blocks" in capsys.readouterr().err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_share_each_batch(folders, tmp_path):
    # Two CPU ranks (Gloo on the loopback): each batch is split between them, gradients are
    # averaged, and rank 0 alone validates and writes the checkpoints.
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp" / "m.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "napari_glimpse", "train", "celnet",
           "--data", str(folders / "train"), "--val", str(folders / "val"), "--out", str(out),
           "--epochs", "2", "--batch-size", "4", "--lr", "0.01", "--threads", "1",
           "--widths", "4", "8", "8", "--reduction", "2", "--blocks", "1"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("best checkpoint:") == 1  # rank 1 prints nothing
    assert proc.stdout.count("[epoch 2/2]") == 1
    ckpt = load_checkpoint(last_path(out))
    assert ckpt.header["training"]["world_size"] == 2
    history = ckpt.header["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["patches"] == 12 for h in history)  # every patch once per epoch over both ranks
    assert "val_auc" in history[-1]
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.last.safetensors", "m.safetensors"]


def test_keep_freed_memory_sets_glibc_thresholds_and_can_be_turned_off(monkeypatch):
    import sys

    from napari_glimpse.runtime import cpu_memory

    monkeypatch.setenv("NAPARI_GLIMPSE_KEEP_FREED_MEMORY", "0")
    assert cpu_memory.keep_freed_memory() is False
    monkeypatch.delenv("NAPARI_GLIMPSE_KEEP_FREED_MEMORY")
    expected = sys.platform.startswith("linux") and cpu_memory._mallopt() is not None
    assert cpu_memory.keep_freed_memory() is expected


def test_init_fine_tunes_from_a_checkpoint_and_refuses_another_method(folders, tmp_path, capsys):
    # a tiny lr and no momentum: one epoch leaves the init's weights all but unchanged
    base = tmp_path / "base.safetensors"
    _run(train_celnet(folders / "train", base, config=dataclasses.replace(TINY, epochs=1)))
    out = tmp_path / "ft.safetensors"
    cfg = CELNetConfig(**{**TINY.__dict__, "lr": 1e-7, "momentum": 0.0, "weight_decay": 0.0, "epochs": 1})
    _run(train_celnet(folders / "train", out, config=cfg, init=str(base)))
    fresh = tmp_path / "fresh.safetensors"
    _run(train_celnet(folders / "train", fresh, config=cfg))
    a, b, c = (load_checkpoint(p).model_state for p in (base, out, fresh))
    assert load_checkpoint(out).header["training"]["init"] == str(base)
    convs = [k for k, v in a.items() if k.endswith("weight") and v.ndim == 4]
    assert convs and max(float((a[k] - b[k]).abs().max()) for k in convs) < 1e-4
    assert max(float((a[k] - c[k]).abs().max()) for k in convs) > 1e-2
    # the CLI flag, with a checkpoint of another method: a clear error, nothing written
    from napari_glimpse.methods.registry import shipped_checkpoint

    rc = main(["train", "celnet", "--data", str(folders / "train"), "--out", str(tmp_path / "x.safetensors"),
               "--epochs", "1", "--init", shipped_checkpoint("glimpse-tree", "mil")])
    err = capsys.readouterr().err
    assert rc == 1 and "glimpse-tree" in err and "celnet" in err
    assert not (tmp_path / "x.safetensors").exists()
