"""Glimpse tree: sampling rules, the tree on a real (tiny) mosaic, 'All', layers, subtree, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_glimpse.methods.glimpse_tree.config import GlimpseTreeConfig, branching_for_leaves
from napari_glimpse.methods.glimpse_tree.sampling import box_smooth, sample_children
from napari_glimpse.runtime.events import run_to_end  # noqa: E402

TINY = {"glimpse_size": 32, "classifier_width": 8, "policy_width": 4}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread (two contend on a shared 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


drive = run_to_end  # drive a progress generator to its result


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory):
    """Four 6 x 6-cell PCam mosaics (576 px, 0.972 um/px), two with tumour."""
    from napari_glimpse.mosaic import bundled_patches_dir, make_mosaics

    out = tmp_path_factory.mktemp("glimpse_mosaics")
    made = make_mosaics(bundled_patches_dir(), out, count=4, grid=(6, 6), seed=5, tumour_fraction=0.5,
                        max_patches_per_class=40)
    return out, made


@pytest.fixture(scope="module")
def tiny_model():
    import torch

    from napari_glimpse.methods.glimpse_tree.model import build_model

    torch.manual_seed(0)
    return build_model(GlimpseTreeConfig(**TINY)).eval()


def test_box_smooth_is_the_mean_over_the_child_box():
    rng = np.random.default_rng(0)
    q = rng.random((20, 20))
    k = 6
    kq = box_smooth(q, k)
    assert kq.shape == (15, 15)
    for i, j in [(0, 0), (7, 3), (14, 14)]:
        assert kq[i, j] == pytest.approx(q[i : i + k, j : j + k].mean())


def test_children_lie_inside_the_parent_and_do_not_repeat():
    rng = np.random.default_rng(1)
    q = np.random.default_rng(2).random((304, 304))
    centres, kq, big_q = sample_children(q, 16, 76, 0.05, rng)
    assert len(centres) == 16
    assert (centres >= 38).all() and (centres + 38 <= 304).all()  # border zeroed
    assert big_q[:38].max() == 0 and big_q[:, 304 - 38 + 1 :].max() == 0 and big_q[:, 266].max() > 0
    d = np.abs(centres[:, None, :] - centres[None, :, :]).max(-1) + np.eye(16, dtype=int) * 999
    assert d.min() >= 38  # suppression: no centre inside another child's box around its centre


def test_low_temperature_takes_the_maximum_and_positive_sign():
    q = np.zeros((304, 304))
    q[200:280, 20:100] = 1.0  # the only bright place
    for t in (0.05, 1e-4, 0.0):
        centres, kq, _ = sample_children(q, 1, 76, t, np.random.default_rng(3))
        x, y = centres[0]
        slack = 10 if t > 0.01 else 0  # T = 0.05 still draws near-maximal neighbours
        assert 58 - slack <= x <= 62 + slack and 238 - slack <= y <= 242 + slack, (t, centres)
        assert kq[0] > (0.8 if slack else 0.999)
    # a high temperature spreads the draws (near uniform)
    xs = [sample_children(q, 1, 76, 100.0, np.random.default_rng(s))[0][0, 0] for s in range(30)]
    assert np.ptp(xs) > 100


def test_same_seed_same_children():
    q = np.random.default_rng(4).random((64, 64))
    a = sample_children(q, 3, 16, 0.1, np.random.default_rng(9))[0]
    b = sample_children(q, 3, 16, 0.1, np.random.default_rng(9))[0]
    c = sample_children(q, 3, 16, 0.1, np.random.default_rng(10))[0]
    assert (a == b).all() and not (a == c).all()


def test_config_branching_and_validation():
    assert [branching_for_leaves(n, 2) for n in (4, 8, 16)] == [(2, 2), (2, 4), (4, 4)]
    c = GlimpseTreeConfig()
    assert (c.levels, c.glimpse_size, c.branching, c.temperature, c.leaves, c.region_size) == (
        2, 304, (2, 4), 0.05, 8, 4864)
    with pytest.raises(ValueError, match="branching"):
        GlimpseTreeConfig(branching=(2, 2, 2))
    # N_G = 8 keeps a checkpoint's own split of 8 leaves; other N_G use the rule
    from napari_glimpse.methods.glimpse_tree.api import _branching, leaves_branching
    from napari_glimpse.methods.glimpse_tree.config import GlimpseTreeInferConfig

    own = GlimpseTreeConfig(branching=(4, 2))
    assert [leaves_branching(own, n) for n in (4, 8, 16)] == [(2, 2), (4, 2), (4, 4)]
    assert leaves_branching(c, 8) == (2, 4)
    assert _branching(own, GlimpseTreeInferConfig(leaves=8, branching=(1, 8))) == (4, 2)  # N_G wins
    assert _branching(own, GlimpseTreeInferConfig(leaves=0, branching=(1, 8))) == (1, 8)
    with pytest.raises(ValueError, match="needs 2 entries"):
        _branching(own, GlimpseTreeInferConfig(branching=(2, 2, 2)))
    with pytest.raises(ValueError, match="temperature"):
        GlimpseTreeConfig(temperature=-1)


def test_tree_on_a_slide(mosaics, tiny_model):
    from napari_glimpse.methods import infer
    from napari_glimpse.methods.glimpse_tree.tree_result import subtree

    folder, made = mosaics
    path = str(made[0].path)
    res = drive(infer("glimpse-tree", path, model=tiny_model, leaves=8, seed=3))
    s = res.summary
    assert s["regions"] == 1 and s["leaves_classified"] == 8
    assert s["patches_read"] == 1 + 2 + 8  # root, two children, eight leaves: nothing else read
    # the root (downscale 16) comes from the x4 level: at most 128 x 128 px read there
    assert 10 * 32**2 <= s["pixels_read"] <= 128**2 + 10 * 32**2
    assert res.slide_score == pytest.approx(max(n["score"] for n in s["tree"] if n["level"] == 2), abs=1e-4)
    boxes = {b.metadata["level"]: b for b in res.boxes}
    assert [len(boxes[level].boxes) for level in (0, 1, 2)] == [1, 2, 8]
    nodes = {n["id"]: n for n in s["tree"]}
    for n in s["tree"]:
        if n["parent"] < 0:
            continue
        (x0, y0, x1, y1), (px0, py0, px1, py1) = n["box"], nodes[n["parent"]]["box"]
        assert px0 <= x0 and x1 <= px1 and py0 <= y0 and y1 <= py1  # inside its parent
        assert x1 - x0 == pytest.approx((px1 - px0) / 4)
    # Q maps sit inside their parent glimpse
    for m in res.maps:
        box = nodes[m.metadata["node_id"]]["box"]
        assert m.origin == pytest.approx(tuple(box[:2]))
        assert m.data.shape[0] * m.cell_size == pytest.approx(box[2] - box[0])
    assert len(res.lines[0].segments) == 10
    root = [n["id"] for n in s["tree"] if n["level"] == 0][0]
    child = [n["id"] for n in s["tree"] if n["level"] == 1][0]
    assert len(subtree(res, root)) == 11 and len(subtree(res, child)) == 5
    merged = {k: np.concatenate([b.properties[k] for b in res.boxes]) for k in ("node_id", "parent_id")}
    assert subtree(s["tree"], child) == subtree(merged, child)
    # deterministic per seed
    again = drive(infer("glimpse-tree", path, model=tiny_model, leaves=8, seed=3)).summary["tree"]
    other = drive(infer("glimpse-tree", path, model=tiny_model, leaves=8, seed=4)).summary["tree"]
    assert again == s["tree"] and other != s["tree"]


def test_a_slide_smaller_than_the_region_keeps_its_leaf_budget(tmp_path):
    # 288 px (3 x 3 cells) against a 1024 px region (64 px glimpses): the root has room for one
    # 256 px child only, which then takes the other child's leaves, so the tree still has
    # N_G = 8 leaves (the fixed (2, 4) branching would stop at 4), all on the slide
    import torch

    from napari_glimpse.methods import infer
    from napari_glimpse.methods.glimpse_tree.model import build_model
    from napari_glimpse.mosaic import bundled_patches_dir, make_mosaics

    torch.manual_seed(0)
    model = build_model(GlimpseTreeConfig(**{**TINY, "glimpse_size": 64})).eval()
    (made,) = make_mosaics(bundled_patches_dir(), tmp_path, count=1, grid=(3, 3), seed=3, max_patches_per_class=8)
    s = drive(infer("glimpse-tree", str(made.path), model=model, leaves=8, seed=0)).summary
    levels = [n["level"] for n in s["tree"]]
    assert levels.count(1) == 1 and levels.count(2) == 8 == s["leaves_classified"]
    for n in s["tree"]:
        x0, y0, x1, y1 = n["box"]
        assert n["level"] == 0 or (x0 >= 0 and y0 >= 0 and x1 <= 288 and y1 <= 288)


def test_subtree_forms():
    from napari_glimpse.methods.glimpse_tree.tree_result import subtree

    table = {0: -1, 1: 0, 2: 0, 3: 1, 4: 1, 5: 2}
    assert subtree(table, 1) == [1, 3, 4]
    assert subtree({"node_id": [0, 1, 2, 3], "parent_id": [-1, 0, 0, 2]}, 2) == [2, 3]
    assert subtree([{"id": 0, "parent": -1}, {"id": 7, "parent": 0}], 0) == [0, 7]
    with pytest.raises(KeyError):
        subtree(table, 42)


def test_all_baseline_and_layers(mosaics, tiny_model):
    from napari_glimpse.layers import result_to_layers
    from napari_glimpse.methods import infer

    folder, made = mosaics
    res = drive(infer("glimpse-tree", str(made[0].path), model=tiny_model, dense=True))
    (m,) = res.maps
    assert m.data.shape == (16, 16) and m.cell_size == 32
    n = int(np.isfinite(m.data).sum())
    assert res.summary["patches_read"] == n > 0
    assert res.slide_score == pytest.approx(np.nanmax(m.data))
    tree = drive(infer("glimpse-tree", str(made[0].path), model=tiny_model, leaves=4))
    layers = result_to_layers(tree)
    kinds = [t[2] for t in layers]
    assert kinds.count("image") == 3 and kinds.count("shapes") == 4  # Q maps, edges, 3 box levels
    leaf = [t for t in layers if t[1]["metadata"].get("level") == 2 and t[2] == "shapes"][0]
    assert {"node_id", "parent_id", "level", "score"} <= set(leaf[1]["features"])
    assert leaf[1]["metadata"]["glimpse_tree"] == tree.summary["result_id"]


def test_registry_and_cli(mosaics, tiny_model, tmp_path, capsys):
    from napari_glimpse.cli import main
    from napari_glimpse.methods import get_method
    from napari_glimpse.runtime.checkpoint import save_checkpoint

    spec = get_method("glimpse-tree")
    assert spec.train_config_cls is GlimpseTreeConfig and spec.data == "slides"
    folder, made = mosaics
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", method="glimpse-tree", config=tiny_model.config,
                           model_state=tiny_model.state_dict())
    out = tmp_path / "out"
    rc = main(["infer", "glimpse-tree", "--checkpoint", ckpt, "--leaves", "4", "--temperature", "0.1",
               "--seed", "2", "--quiet", str(made[1].path), "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / made[1].name / "summary.json").read_text())
    assert summary["summary"]["leaves"] == 4 and summary["summary"]["temperature"] == 0.1
    leaves = [n for n in summary["summary"]["tree"] if n["level"] == 2]
    assert summary["slide_score"] == pytest.approx(max(n["score"] for n in leaves), abs=1e-5)
    best = max(leaves, key=lambda n: n["score"])["box"]  # the evidence: the best leaf's centre first
    assert summary["evidence"][0] == pytest.approx([(best[0] + best[2]) / 2, (best[1] + best[3]) / 2], abs=0.01)
    assert summary["method"] == "glimpse-tree" and summary["device"] == "cpu" and summary["checkpoint"] == ckpt
    assert summary["patches_read"] == 1 + 2 + 4 and summary["seconds"] > 0 and summary["pixels_read"] > 0
    assert (out / made[1].name / "boxes.geojson").exists()
    capsys.readouterr()
    rc = main(["evaluate", "glimpse-tree", "--checkpoint", ckpt, "--data", str(folder), "--leaves", "4"])
    assert rc == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["n"] == 4 and len(metrics["scores"]) == 4 and metrics["seconds_per_slide"] > 0
    assert metrics["labels"] == sorted(metrics["labels"]) or set(metrics["labels"]) == {0, 1}


@pytest.mark.parametrize("backbone", ["resnet18", "inception_v3"])
def test_paper_backbones_have_torchvision_names(backbone):
    import torch

    from napari_glimpse.methods.glimpse_tree.model import build_model

    model = build_model(GlimpseTreeConfig(backbone=backbone)).eval()
    keys = set(model.classifier.backbone.state_dict())
    first = "conv1.weight" if backbone == "resnet18" else "Conv2d_1a_3x3.conv.weight"
    assert first in keys and "fc.weight" in keys
    with torch.no_grad():
        assert model.classify(torch.rand(1, 3, 80, 80)).shape == (1,)


def test_reader_uses_the_right_level_and_reads_only_the_glimpse(mosaics):
    from napari_glimpse.methods.glimpse_tree.inference import GlimpseReader
    from napari_glimpse.slides import open_slide

    _, made = mosaics
    with open_slide(made[0].path) as slide:
        reader = GlimpseReader(slide, GlimpseTreeConfig(**TINY))
        assert [slide.levels[reader.pyramid_level(reader.downsample(lv))].downsample for lv in (0, 1, 2)] == [4, 4, 1]
        img = reader.read(0, 32, 32)  # root: 512 level-0 px = 128 px of the x4 level, resized to 32
        assert img.shape == (32, 32, 3) and reader.pixels_read == 128**2 and reader.patches_read == 1
        ref = np.asarray(slide.read_region((32, 32), 1, (128, 128)))[..., :3].astype(float)
        assert np.abs(img.astype(float).mean((0, 1)) - ref.mean((0, 1))).max() < 3
        half = reader.read(2, -16, 100)  # a leaf half off the slide: only its inside half is read
        assert reader.pixels_read == 128**2 + 16 * 32
        assert (half[:, :16] == 255).all()
        assert (half[:, 16:] == np.asarray(slide.read_region((0, 100), 0, (16, 32)))[..., :3]).all()
