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
    out, events = _run(spec.get("train")(folder, tmp_path / "m.safetensors", val_dir=folder,
                                  config=GlimpseTreeConfig(**SMALL, strategy=strategy, policy_target=target,
                                                           policy_passes=2)))
    epochs = [e for e in events if e.stage == "epoch"]
    assert [e.metrics.get("epoch") for e in epochs] == [1, 2, 3]
    assert "(warm-up C)" in epochs[0].message and "(C)" in epochs[1].message and "(P)" in epochs[2].message
    assert all(np.isfinite(e.metrics["loss"]) for e in epochs)
    ckpt = load_checkpoint(out, expected_method="glimpse-tree")
    assert ckpt.config["strategy"] == strategy
    from napari_glimpse.methods import load_model

    loaded = load_model(spec, out, "cpu")
    model, config = loaded.model, loaded.config
    assert config.glimpse_size == 32 and len(model.policies) == 2
    # after the P epoch (the last), whatever the target, the policies' batch-norm statistics are
    # recomputed over the four one-region mosaics: one batch per region and level (the two
    # passes of policy steps alone would leave 8)
    from napari_glimpse.runtime.fit import last_path

    state = load_checkpoint(last_path(out)).model_state
    assert {int(v) for k, v in state.items() if k.startswith("policies.") and k.endswith("num_batches_tracked")} == {4}


def test_resume_is_exact(mosaics, tmp_path):  # noqa: F811
    from napari_glimpse.methods.glimpse_tree.training import train
    from napari_glimpse.runtime.checkpoint import load_checkpoint
    from napari_glimpse.runtime.fit import last_path

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
    flags = []
    for k, v in {**SMALL, "epochs": 2}.items():
        flags += [f"--{k.replace('_', '-')}", *map(str, v if isinstance(v, tuple) else (v,))]
    rc = main(["train", "glimpse-tree", "--strategy", "mil", "--data", str(folder), "--val", str(folder),
               "--out", str(out), *flags])
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


def test_dense_max_target_is_the_best_leaf_inside_each_child():
    # a root of 16 x 16 leaf tiles, 2 px each; a child is 8 px (4 x 4 tiles); one tumour tile
    from napari_glimpse.methods.glimpse_tree.policy_dense import (
        _centre_map,
        _upsample,
        dense_targets,
    )

    score = np.full((16, 16), 0.1, np.float32)
    score[5, 7] = 0.9
    root = dense_targets(torch.from_numpy(_centre_map(score, 2))[None], 8, leaf_child=False)[0]
    assert root.shape == (32 - 8 + 1,) * 2
    # the tile's centre pixel is (11, 15); a child box [i, i + 8) holds it for i in 4..11
    rows, cols = np.nonzero(root.numpy() > 0.5)
    assert set(rows) == set(range(4, 12)) and set(cols) == set(range(8, 16))
    assert np.allclose(root.numpy()[root.numpy() <= 0.5], 0.1)
    # children that are leaves: the mean of C's score over the child box, as the 'dense' target
    leaf = dense_targets(torch.from_numpy(_upsample(score, 2))[None], 2, leaf_child=True)[0]
    assert np.isclose(float(leaf[10, 14]), 0.9) and np.isclose(float(leaf[9, 14]), 0.5)
    # the separable pools equal the 2-D ones
    import torch.nn.functional as F

    from napari_glimpse.methods.glimpse_tree.policy_dense import box_pool

    x = torch.rand(2, 40, 40, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(box_pool(x, 7, "mean"), F.avg_pool2d(x[:, None], 7, stride=1)[:, 0], atol=1e-6)
    assert torch.equal(box_pool(x, 7, "max"), F.max_pool2d(x[:, None], 7, stride=1)[:, 0])


def test_policy_only_training_keeps_c_and_computes_score_maps_once(mosaics, tmp_path, tiny_model,  # noqa: F811
                                                                    monkeypatch):
    from napari_glimpse.methods.glimpse_tree import inference
    from napari_glimpse.methods.glimpse_tree.training import train
    from napari_glimpse.runtime.checkpoint import load_checkpoint, save_checkpoint

    folder, _ = mosaics
    calls = []
    real = inference.run_all
    monkeypatch.setattr(inference, "run_all", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    init = save_checkpoint(tmp_path / "init.safetensors", method="glimpse-tree", config=tiny_model.config,
                           model_state=tiny_model.state_dict())
    cfg = GlimpseTreeConfig(**{**SMALL, "epochs": 2, "train_classifier": False, "policy_target": "dense-max",
                               "policy_pos_weight": 10.0, "val_seeds": 2, "strategy": "mil"})
    out, events = _run(train(folder, tmp_path / "p.safetensors", val_dir=folder, config=cfg, init=init))
    epochs = [e for e in events if e.stage == "epoch"]
    assert len(epochs) == 2 and all("(P)" in e.message for e in epochs)
    assert not any(e.stage == "load" and "warm-up" in e.message for e in events)
    ckpt = load_checkpoint(tmp_path / "p.last.safetensors")
    state, ref = ckpt.model_state, tiny_model.state_dict()
    assert all(torch.equal(state[k], ref[k]) for k in ref if k.startswith("classifier."))
    assert not all(torch.equal(state[k], ref[k]) for k in ref if k.startswith("policies.") and "weight" in k)
    # validation runs the tree only (no 'All'); the two P epochs share one score map per region:
    # four tiny mosaics of one region each, mapped in epoch 1 only
    assert len(calls) == 4
    # the policies' batch-norm statistics are recomputed over the four regions after each P epoch
    tracked = [int(v) for k, v in state.items() if k.startswith("policies.") and k.endswith("num_batches_tracked")]
    assert tracked and set(tracked) == {4}
    assert all(np.isfinite(e.metrics["val_auc"]) for e in epochs)


def test_region_image_cache_crops_what_the_reader_reads(mosaics):  # noqa: F811
    from napari_glimpse.methods.glimpse_tree.data import find_slides
    from napari_glimpse.methods.glimpse_tree.policy_dense import RegionImages
    from napari_glimpse.methods.glimpse_tree.training import _open_slides

    folder, _ = mosaics
    cfg = GlimpseTreeConfig(**TINY)
    slides = _open_slides(find_slides(folder, need="labels")[:1], cfg, "mil")
    try:
        ts = slides[0]
        box = ts.regions[0]
        cache, tile = RegionImages(), cfg.glimpse_size * ts.reader.downsample(cfg.levels)
        for level, (r0, c0) in ((0, (0, 0)), (1, (3, 5)), (1, (12, 0))):
            x0, y0 = box[0] + c0 * tile, box[1] + r0 * tile
            got = cache.glimpse(ts, "r", box, level, x0, y0, cfg.glimpse_size)
            assert np.array_equal(got, ts.reader.read(level, x0, y0))
        assert len(cache._store) == 2  # one decoded region per level
        small = RegionImages(max_bytes=0)  # over budget: read directly, keep nothing
        assert np.array_equal(small.glimpse(ts, "r", box, 1, box[0], box[1], cfg.glimpse_size),
                              ts.reader.read(1, box[0], box[1])) and not small._store
    finally:
        for ts in slides:
            ts.slide.close()


def test_leaf_jitter_moves_drawn_leaves_within_bounds(mosaics, tiny_model):  # noqa: F811
    # C epochs read each policy-drawn leaf moved by up to leaf_jitter of its edge, kept on the
    # slide; the images are the moved boxes' pixels, compared with the same draws at jitter 0
    import dataclasses

    from napari_glimpse.methods.glimpse_tree.data import find_slides
    from napari_glimpse.methods.glimpse_tree.training import (
        _jitter_box,
        _open_slides,
        _sampled_leaves,
    )

    rng = np.random.default_rng(0)
    moved = np.array([_jitter_box((100.0, 50.0, 132.0, 82.0), 0.5, (576, 576), rng) for _ in range(500)])
    assert np.allclose(moved[:, 2] - moved[:, 0], 32) and np.allclose(moved[:, 3] - moved[:, 1], 32)
    assert np.abs(moved[:, 0] - 100).max() <= 16 and np.abs(moved[:, 1] - 50).max() <= 16
    assert np.abs(moved[:, 0] - 100).max() > 12 and np.std(moved[:, 1]) > 5  # spread over the range
    corner = np.array([_jitter_box((0.0, 544.0, 32.0, 576.0), 1.0, (576, 576), rng) for _ in range(200)])
    assert corner[:, 0].min() >= 0 and corner[:, 3].max() <= 576  # never off the slide

    folder, _ = mosaics
    cfg = GlimpseTreeConfig(**TINY, strategy="supervised")
    items = [i for i in find_slides(folder, need="annotations") if i.label == 1][:1]
    slides = _open_slides(items, cfg, "supervised")
    try:
        ts = slides[0]
        plain = _sampled_leaves(tiny_model, ts, ts.regions[0], 0, np.random.default_rng(3), cfg, 1.0)
        jcfg = dataclasses.replace(cfg, leaf_jitter=0.5)
        images, boxes = _sampled_leaves(tiny_model, ts, ts.regions[0], 0, np.random.default_rng(3), jcfg, 1.0)
        edge = cfg.glimpse_size * ts.reader.downsample(cfg.levels)
        assert len(boxes) == len(plain[1]) == 8
        shifts = np.array(boxes)[:, :2] - np.array(plain[1])[:, :2]
        assert np.abs(shifts).max() <= 0.5 * edge + 1e-6 and np.abs(shifts).max() > 0
        for img, b in zip(images, boxes, strict=True):
            assert np.array_equal(img, ts.reader.read(cfg.levels, b[0], b[1]))
    finally:
        for ts in slides:
            ts.slide.close()
