"""Grid attention (METHODS.md section 2) on synthetic feature grids and tiny mosaics.

Synthetic grids stand in for the compressing path (``grids.slide_grid`` is replaced): normal
cells carry |N(0, 1)| / 2 features, a positive slide has 3 tissue cells shifted along a fixed
feature direction, a regression slide a planted fraction of such cells.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_glimpse.features import FeatureGrid
from napari_glimpse.methods.attention_grid import api, grids
from napari_glimpse.methods.attention_grid.config import (
    AttentionGridConfig,
    AttentionGridInferConfig,
)
from napari_glimpse.methods.attention_grid.model import GridAttention, branch_attention
from napari_glimpse.methods.registry import LoadedModel
from napari_glimpse.runtime.events import run_to_end

K = 16
DIRECTION = np.r_[np.ones(4), np.zeros(K - 4)]
TINY = {"channels": 4, "dropout": 0.25, "lr": 1e-3, "accumulate": 1, "encoder": "small"}


def synthetic_grid(rng, planted: int | float = 0, origin=(0.0, 0.0), cell=96.0) -> tuple[FeatureGrid, set]:
    """A grid of 6-10 x 6-10 cells, tissue inside a 1-cell border; ``planted`` cells (a count,
    or a fraction of the tissue) get the tumour direction. Returns the grid and those cells."""
    m, n = (int(v) for v in rng.integers(6, 11, 2))
    tissue = np.zeros((m, n), bool)
    tissue[1:-1, 1:-1] = True
    f = np.abs(rng.normal(size=(m, n, K))) * 0.5
    cells = np.argwhere(tissue)
    k = int(round(planted * len(cells))) if isinstance(planted, float) else planted
    pick = cells[rng.choice(len(cells), k, replace=False)] if k else np.zeros((0, 2), int)
    f[pick[:, 0], pick[:, 1]] += 1.5 * DIRECTION
    f[~tissue] = 0
    grid = FeatureGrid(f.astype(np.float16), tissue, None, origin, cell,
                       {"patches_read": int(tissue.sum()), "pixels_read": int(tissue.sum() * 96 * 96)})
    return grid, {tuple(int(v) for v in p) for p in pick}


def slide_folder(path, n, rng, kind="classification", labels="labels.csv"):
    """A folder of ``n`` (empty) slide files with a labels file; returns {stem: (grid, planted)}."""
    path.mkdir(parents=True, exist_ok=True)
    made, rows = {}, ["slide,label"]
    for i in range(n):
        stem = f"s{i:03d}"
        (path / f"{stem}.tif").write_bytes(b"")
        if kind == "classification":
            label = i % 2
            made[stem] = synthetic_grid(rng, 3 * label)
        else:
            label = float(rng.uniform(0.0, 0.4))
            made[stem] = synthetic_grid(rng, label)
        rows.append(f"{stem},{label}")
    (path / labels).write_text("\n".join(rows) + "\n")
    return made


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one thread is faster than contending for the machine's cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def fake_grids(monkeypatch):
    """``grids.slide_grid`` answers from a dict stem -> (FeatureGrid, planted) that tests fill."""
    table: dict = {}

    def slide_grid(slide, params, device, region=None):
        from pathlib import Path

        yield grids.Progress("features", 1, 1, "synthetic")
        return table[Path(str(getattr(slide, "path", slide))).stem][0]

    monkeypatch.setattr(grids, "slide_grid", slide_grid)
    return table


def _tensor(grid):
    return torch.from_numpy(grid.features.astype(np.float32)), torch.from_numpy(grid.tissue)


# ----------------------------------------------------------------------------- the network


def test_maps_have_the_padded_grid_shape_and_each_channel_sums_to_one():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = GridAttention(K, channels=3).eval()
    f = torch.from_numpy(np.abs(rng.normal(size=(5, 7, K)))).float()
    out = net(f)
    assert out["out"].shape == (2,) and out["conv"].shape == (3, 6, 8)  # padded to even sizes
    for key in ("max", "min"):
        assert out["maps"][key].shape == (3, 6, 8)
        assert torch.allclose(out["maps"][key].sum((1, 2)), torch.ones(3))
    tiny = net(f[:1, :1])  # one cell: padded to at least 3 x 3, then even
    assert tiny["maps"]["max"].shape == (3, 4, 4)
    assert GridAttention(K, 3, task="regression")(f)["out"].shape == (1,)
    assert set(GridAttention(K, 3, head="max")(f)["maps"]) == {"max"}


def test_faithful_and_masked_differ_exactly_where_the_unpooled_zeros_are():
    torch.manual_seed(1)
    g = torch.randn(2, 6, 8)
    faithful, masked = branch_attention(g, masked=False), branch_attention(g, masked=True)
    blocks = g.reshape(2, 3, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(2, 3, 4, 4)
    kept = torch.zeros(2, 3, 4, 4, dtype=torch.bool).scatter_(3, blocks.argmax(3, keepdim=True), True)
    kept = kept.reshape(2, 3, 4, 2, 2).permute(0, 1, 3, 2, 4).reshape(2, 6, 8)
    assert kept.sum() == 2 * 12
    assert (masked[~kept] == 0).all() and (masked[kept] > 0).all()
    for h in range(2):  # faithful: every unpooled zero weighs e^0 / Z, the kept cells e^g / Z
        zeros = faithful[h][~kept[h]]
        assert torch.allclose(zeros, zeros[0].expand_as(zeros))
        z = 1.0 / zeros[0]
        assert torch.allclose(faithful[h][kept[h]], torch.exp(g[h][kept[h]]) / z, rtol=1e-5)
        ratio = faithful[h][kept[h]] / masked[h][kept[h]]  # same cells, another normaliser
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5) and ratio[0] < 1


def test_min_branch_attends_to_the_minimum_of_each_block():
    torch.manual_seed(2)
    net = GridAttention(K, channels=3, variant="masked").eval()
    out = net(torch.rand(6, 6, K))
    conv, amin = out["conv"].detach(), out["maps"]["min"].detach()
    for h in range(3):
        for r in range(0, 6, 2):
            for c in range(0, 6, 2):
                block, att = conv[h, r:r + 2, c:c + 2], amin[h, r:r + 2, c:c + 2]
                assert (att > 0).sum() == 1 and att.argmax() == block.argmin()
        on = amin[h] > 0  # the weights are softmax(-G') over the kept cells
        assert torch.allclose(amin[h][on], torch.softmax(-conv[h][on], 0), rtol=1e-5)


def test_a_shift_by_whole_cells_moves_the_maps():
    torch.manual_seed(3)
    rng = np.random.default_rng(3)
    f = np.zeros((12, 12, K), np.float32)
    f[2:7, 3:8] = np.abs(rng.normal(size=(5, 5, K)))
    net = GridAttention(K, channels=3).eval()
    a = net(torch.from_numpy(f))
    b = net(torch.from_numpy(np.roll(f, (2, 2), axis=(0, 1))))
    for key in ("max", "min"):
        assert torch.allclose(torch.roll(a["maps"][key], (2, 2), dims=(1, 2)), b["maps"][key], atol=1e-6)
    assert torch.allclose(a["out"], b["out"], atol=1e-5)  # the slide call does not move


# ----------------------------------------------------------------------------- it learns


def _held_out(model, cfg, n, seed, kind="classification"):
    rng = np.random.default_rng(seed)
    loaded = LoadedModel("attention-grid", model, cfg, None, "cpu")
    scores, truth, hits = [], [], {"attention": 0, "gradcam": 0}
    for i in range(n):
        planted = 3 * (i % 2) if kind == "classification" else float(rng.uniform(0.0, 0.4))
        grid, cells = synthetic_grid(rng, planted)
        for by in hits:
            res = api.result_from_grid(grid, loaded, AttentionGridInferConfig(evidence=by), "synthetic")
            if i % 2 and kind == "classification":
                x, y = res.summary["evidence"][0]
                hits[by] += (int(y // grid.cell_size), int(x // grid.cell_size)) in cells
        scores.append(res.slide_score)
        truth.append(i % 2 if kind == "classification" else planted)
    return np.array(truth), np.array(scores), {k: v / (n // 2) for k, v in hits.items()}


@pytest.mark.parametrize("head, variant", [("minmax", "faithful"), ("minmax", "masked"), ("max", "faithful"),
                                           ("abmil", "faithful")])
def test_training_learns_planted_cells_and_attends_to_them(fake_grids, tmp_path, head, variant, capsys):
    from napari_glimpse.evaluate import roc_auc
    from napari_glimpse.methods.attention_grid.training import train

    rng = np.random.default_rng(10)
    fake_grids.update(slide_folder(tmp_path / "train", 40, rng))
    fake_grids.update({f"v{k}": v for k, v in slide_folder(tmp_path / "val", 10, rng).items()})
    for p in (tmp_path / "val").glob("s*.tif"):  # validation stems differ from training stems
        p.rename(p.with_name("v" + p.name))
    (tmp_path / "val" / "labels.csv").write_text(
        "\n".join(["slide,label"] + [f"vs{i:03d},{i % 2}" for i in range(10)]) + "\n")
    from napari_glimpse.runtime.checkpoint import read_header
    from napari_glimpse.runtime.fit import last_path

    cfg = AttentionGridConfig(**TINY, epochs=12, head=head, variant=variant)
    out = run_to_end(train(tmp_path / "train", tmp_path / "ag.safetensors", val_dir=tmp_path / "val",
                           config=cfg, device="cpu"))
    best = read_header(out)
    assert best["best"]["score"] == max(h["val_auc"] for h in best["history"])
    assert best["config"]["slide_threshold"] == best["metrics"]["threshold"]  # the best epoch's own threshold
    # held out: the fully trained model (the best epoch is the first perfect one on 10 validation slides)
    model, stored = api.load(str(last_path(out)), torch.device("cpu"))
    assert (stored.head, stored.variant, stored.task, stored.feature_dim) == (head, variant, "classification", K)
    assert 0.0 <= stored.slide_threshold <= 1.0
    truth, scores, hits = _held_out(model, stored, 40, seed=99)
    auc = roc_auc(truth, scores)
    with capsys.disabled():
        cam = "n/a (no G')" if head == "abmil" else f"{hits['gradcam']:.2f}"
        print(f"\n[attention-grid {head} {variant}] held-out AUC {auc:.3f}; top cell on a planted cell: "
              f"attention {hits['attention']:.2f}, Grad-CAM {cam}")
    assert auc > 0.9
    assert hits["attention"] >= 0.7  # the evidence default: the mean max attention (ABMIL: its attention)


def test_regression_learns_a_planted_fraction_in_label_units(fake_grids, tmp_path):
    from napari_glimpse.evaluate import spearman
    from napari_glimpse.methods.attention_grid.training import train

    rng = np.random.default_rng(20)
    fake_grids.update(slide_folder(tmp_path / "train", 40, rng, "regression", "fraction.csv"))
    cfg = AttentionGridConfig(**TINY, epochs=10, task="regression", labels="fraction.csv")
    out = run_to_end(train(tmp_path / "train", tmp_path / "r.safetensors", config=cfg, device="cpu"))
    model, stored = api.load(out, torch.device("cpu"))
    assert stored.task == "regression" and stored.target_std > 0
    truth, scores, _ = _held_out(model, stored, 40, seed=98, kind="regression")
    rho = spearman(truth, scores)
    print(f"[attention-grid regression] held-out Spearman {rho:.3f}, mean |error| {np.abs(truth - scores).mean():.3f}")
    assert rho > 0.8
    assert np.abs(truth - scores).mean() < 0.1  # in label units, not standardised ones


def test_resume_after_a_cancel_gives_the_uninterrupted_weights(fake_grids, tmp_path):
    from napari_glimpse.methods.attention_grid.training import train
    from napari_glimpse.runtime.checkpoint import load_checkpoint
    from napari_glimpse.runtime.fit import last_path

    fake_grids.update(slide_folder(tmp_path / "d", 8, np.random.default_rng(30)))
    cfg = {**TINY, "epochs": 3, "accumulate": 3}
    full = run_to_end(train(tmp_path / "d", tmp_path / "full.safetensors", config=AttentionGridConfig(**cfg),
                            device="cpu", seed=4))
    gen = train(tmp_path / "d", tmp_path / "cut.safetensors", config=AttentionGridConfig(**cfg), device="cpu", seed=4)
    stages = []
    for ev in gen:
        stages.append(ev.stage)
        if ev.stage == "epoch" and ev.done == 1:
            gen.close()  # a GUI cancel
            break
    assert stages[0] == "features" and "train" in stages
    events = []
    run_to_end(train(tmp_path / "d", tmp_path / "cut.safetensors", config=AttentionGridConfig(**cfg),
                     device="cpu", seed=4, resume=True), events.append)
    assert [e.stage for e in events if e.stage in ("resume", "epoch")] == ["resume", "epoch", "epoch"]
    a = load_checkpoint(last_path(full)).model_state
    b = load_checkpoint(last_path(tmp_path / "cut.safetensors")).model_state
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- layers


def test_stack_cells_and_evidence_land_on_their_level0_pixels():
    from napari.layers import Image, Points

    from napari_glimpse.layers import result_to_layers

    rng = np.random.default_rng(40)
    grid, cells = synthetic_grid(rng, 3, origin=(37.0, 11.0), cell=50.0)
    torch.manual_seed(0)
    cfg = AttentionGridConfig(channels=3, feature_dim=K)
    from napari_glimpse.methods.attention_grid.model import build_model

    loaded = LoadedModel("attention-grid", build_model(cfg).eval(), cfg, None, "cpu")
    res = api.result_from_grid(grid, loaded, AttentionGridInferConfig(), "synthetic", mpp=(0.5, 0.25))
    names = [m.name for m in res.maps]
    assert names == ["max attention (mean)", "max attention", "min attention (mean)", "min attention", "Grad-CAM"]
    layers = {kw["name"]: (d, kw, t) for d, kw, t in result_to_layers(res)}
    data, kw, kind = layers["max attention"]
    m, n = grid.shape
    assert kind == "image" and data.shape == (3, m, n)
    layer = Image(data, **{k: v for k, v in kw.items() if k != "units"})
    # level-0 pixel (x, y) = (37 + 50 * 4 + 10, 11 + 50 * 2 + 49) lies in cell (row 2, col 4)
    x, y = 37 + 50 * 4 + 10, 11 + 50 * 2 + 49
    idx = np.round(layer.world_to_data((1, y * 0.25, x * 0.5))).astype(int)
    assert tuple(idx) == (1, 2, 4)
    pts, pkw, _ = layers["evidence"]
    points = Points(pts, **{k: v for k, v in pkw.items() if k not in ("units",)})
    best = res.points[0].xy[0]
    r, c = int((best[1] - 11) // 50), int((best[0] - 37) // 50)
    assert grid.tissue[r, c]
    heat = layers["max attention (mean)"][0]
    assert np.argmax(np.where(grid.tissue, heat, -1)) == r * n + c  # the first point is the top cell
    world = points.data[0]
    assert np.round(layer.world_to_data((0, *world))[1:]).astype(int).tolist() == [r, c]


# ----------------------------------------------------------------------------- CLI on real slides


def pixel_grid(slide, params, device, region=None):
    """A stand-in compressing path on real slide pixels: per 96 px cell its mean and std RGB."""
    from napari_glimpse.slides import open_slide

    if isinstance(slide, str):
        with open_slide(slide) as opened:
            return (yield from pixel_grid(opened, params, device, region))
    w, h = slide.dimensions
    img = slide.read_region((0, 0), 0, (w, h)).astype(np.float32) / 255.0
    m, n = h // 96, w // 96
    cells = img[: m * 96, : n * 96].reshape(m, 96, n, 96, 3)
    f = np.concatenate([cells.mean((1, 3)), cells.std((1, 3))], axis=2)
    tissue = cells.mean((1, 3, 4)) < 0.85
    f[~tissue] = 0
    yield grids.Progress("features", 1, 1, "pixel features")
    return FeatureGrid(f.astype(np.float16), tissue, None, (0.0, 0.0), 96.0,
                       {"patches_read": int(tissue.sum()), "pixels_read": int(w * h)})


def test_cli_train_evaluate_infer_on_mosaic_slides(tmp_path, monkeypatch, capsys):
    from napari_glimpse.cli import main
    from napari_glimpse.runtime.checkpoint import read_header
    from napari_glimpse.runtime.results_io import load_result

    monkeypatch.setattr(grids, "slide_grid", pixel_grid)
    monkeypatch.setenv("NAPARI_GLIMPSE_CONFIG", str(tmp_path / "config"))
    data = tmp_path / "slides"
    assert main(["make-mosaic", "--out", str(data), "--count", "4", "--grid", "4", "5", "--seed", "2",
                 "--max-patches-per-class", "20"]) == 0
    ckpt = tmp_path / "ag.safetensors"
    common = ["--data", str(data), "--val", str(data), "--epochs", "2", "--channels", "2", "--accumulate", "2",
              "--encoder", "small", "--lr", "1e-3"]
    assert main(["train", "attention-grid", *common, "--out", str(ckpt)]) == 0
    header = read_header(ckpt, expected_method="attention-grid")
    assert header["config"]["head"] == "minmax" and header["config"]["variant"] == "faithful"
    assert header["config"]["feature_dim"] == 6 and len(header["history"]) >= 1
    reg = tmp_path / "reg.safetensors"
    assert main(["train", "attention-grid", *common, "--out", str(reg), "--task", "regression",
                 "--labels", "tumour_fraction.csv"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "attention-grid", "--checkpoint", str(ckpt), "--data", str(data)]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["n"] == 4 and {"auc", "auc_interval", "seconds_per_slide"} <= set(metrics)
    assert main(["evaluate", "attention-grid", "--checkpoint", str(reg), "--data", str(data)]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["n"] == 4 and "spearman" in metrics and "auc" not in metrics
    slide = sorted(data.glob("*.tif"))[0]
    out = tmp_path / "out"
    assert main(["infer", "attention-grid", "--checkpoint", str(ckpt), str(slide), "--out", str(out),
                 "--quiet"]) == 0
    summary = json.loads((out / slide.stem / "summary.json").read_text())
    assert summary["summary"]["slide_call"] in (0, 1) and 0 < len(summary["evidence"]) <= 10
    result = load_result(out / slide.stem)
    stack = next(m for m in result.maps if m.name == "max attention")
    assert stack.data.shape == (2, 4, 5) and stack.cell_size == 96.0
    assert np.allclose(stack.data.sum((1, 2)) <= 1.0 + 1e-5, True)


def test_panels_offer_the_task_and_the_encoder_from_the_registry(make_napari_viewer):
    from napari_glimpse._napari.widgets import InferenceWidget, TrainingWidget

    viewer = make_napari_viewer()
    panel = TrainingWidget(viewer)
    viewer.window.add_dock_widget(panel)
    panel.method.value = "attention-grid"
    assert [d.label for d in panel.data] == ["training", "validation"]
    options = set(panel.method_options.values())
    assert {"task", "encoder", "labels", "epochs", "accumulate"} <= options
    assert not options & {"slide_threshold", "threshold_rule", "target_mean", "target_std", "feature_dim"}  # set by training
    assert set(panel.method_options.task.choices) == {"classification", "regression"}
    assert "resnet34" in panel.method_options.encoder.choices
    run = InferenceWidget(viewer)
    viewer.window.add_dock_widget(run)
    run.method.value = "attention-grid"
    assert {"slide_threshold", "evidence"} <= set(run.params.values())


def test_a_missing_labels_file_is_named_and_youden_picks_the_separating_threshold(tmp_path):
    from napari_glimpse.calls import choose_threshold
    from napari_glimpse.errors import DatasetError
    from napari_glimpse.evaluate import spearman
    from napari_glimpse.methods.attention_grid.training import labelled_slides

    slide_folder(tmp_path, 4, np.random.default_rng(0))
    with pytest.raises(DatasetError, match="fraction.csv"):
        labelled_slides(tmp_path, AttentionGridConfig(task="regression", labels="fraction.csv"))
    assert [i.label for i in labelled_slides(tmp_path, AttentionGridConfig())] == [0, 1, 0, 1]
    assert choose_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.9]) == pytest.approx(0.45)  # midway
    assert spearman([1, 2, 3, 4], [10, 20, 30, 25]) == pytest.approx(0.8)


# ----------------------------------------------------------------------------- the real feature cache


@pytest.fixture
def mosaic_folder(tmp_path):
    from napari_glimpse.cli import main

    data = tmp_path / "slides"
    assert main(["make-mosaic", "--out", str(data), "--count", "4", "--grid", "4", "5", "--seed", "2",
                 "--max-patches-per-class", "20", "--lattice-offset"]) == 0
    return data


def test_training_after_features_reads_no_pixels(mosaic_folder, tmp_path, monkeypatch, capsys):
    from napari_glimpse.cli import main
    from napari_glimpse.slides import Slide

    cache = tmp_path / "cache"
    slides = [str(p) for p in sorted(mosaic_folder.glob("mosaic_???.tif"))]
    assert main(["features", "--encoder", "small", *slides, "--out", str(cache)]) == 0
    assert main(["features", "--encoder", "small", slides[0], "--out", str(cache)]) == 0
    assert "cached" in capsys.readouterr().out.strip().splitlines()[-1]

    def no_pixels(*args, **kwargs):
        raise AssertionError("training read slide pixels")

    monkeypatch.setattr(Slide, "read_region", no_pixels)
    ckpt = tmp_path / "ag.safetensors"
    assert main(["train", "attention-grid", "--data", str(mosaic_folder), "--val", str(mosaic_folder),
                 "--encoder", "small", "--feature-cache", str(cache), "--epochs", "2", "--channels", "2",
                 "--accumulate", "1", "--out", str(ckpt)]) == 0
    assert ckpt.is_file()


@pytest.mark.gui
def test_the_training_panel_shows_feature_extraction_as_its_own_stage(make_napari_viewer, qtbot, mosaic_folder,
                                                                      tmp_path, monkeypatch):
    from napari_glimpse._napari.widgets import TrainingWidget

    monkeypatch.setenv("NAPARI_GLIMPSE_CONFIG", str(tmp_path / "config"))
    viewer = make_napari_viewer()
    panel = TrainingWidget(viewer)
    panel.method.value = "attention-grid"
    panel.data[0].value, panel.data[1].value = mosaic_folder, mosaic_folder
    panel.output.value = tmp_path / "panel.safetensors"
    panel.method_options.set_values({"encoder": "small", "epochs": 1, "channels": 2, "accumulate": 1,
                                     "feature_cache": str(tmp_path / "cache")})
    stages = []
    worker = panel.start()
    assert worker is not None
    worker.yielded.connect(lambda ev: stages.append(panel.stage.value))
    qtbot.waitUntil(lambda: panel.worker is None, timeout=60_000)
    assert panel.status.value.startswith("saved"), panel.status.value
    assert "feature extraction" in stages and "training" in stages
    assert stages.index("feature extraction") < stages.index("training")
