"""RAZN (METHODS.md section 4): tiles and stitching, the dilated FCN, the policy gradient and
alternating updates, labels landing on the right pixels, learning, the CLI and the layers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from napari_glimpse.methods.razn.config import RAZNConfig
from napari_glimpse.methods.razn.model import bounded, split_tiles, stitch_tiles
from napari_glimpse.methods.razn.training import level_tiles, razn_losses


def test_split_and_stitch_are_inverse_and_row_major():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    t = split_tiles(x, 2)
    assert t.shape == (8, 1, 2, 2)
    assert torch.equal(t[1, 0], x[0, 0, :2, 2:])  # tile 1 of field 0: top right
    assert torch.equal(t[2, 0], x[0, 0, 2:, :2])
    assert torch.equal(stitch_tiles(t, 2), x)
    # tree order: children of level-1 tile k are level-2 tiles 4k .. 4k + 3
    y = torch.arange(16.0).reshape(1, 1, 4, 4)
    two = level_tiles(y, 2, 2)
    assert torch.equal(two[4:8].flatten(), y[0, 0, :2, 2:].flatten())


def test_dilated_resnet18_keeps_torchvision_names_and_has_output_stride_8():
    from napari_glimpse.methods.backbones import dilate_resnet, resnet18

    plain = resnet18()
    names = set(plain.state_dict())
    net = dilate_resnet(resnet18()).eval()
    assert set(net.state_dict()) == names
    with torch.no_grad():
        assert net.forward_features(torch.rand(1, 3, 64, 64)).shape == (1, 512, 8, 8)
        assert plain.eval().forward_features(torch.rand(1, 3, 64, 64)).shape == (1, 512, 2, 2)


@pytest.mark.parametrize("encoder", ["small", "resnet18"])
def test_segmentation_net_gives_per_pixel_logits(encoder):
    from napari_glimpse.methods.razn.model import SegNet

    net = SegNet(encoder, 3).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 64, 64)).shape == (2, 3, 64, 64)


def test_bounded_bernoulli_stays_in_its_bounds():
    p = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(bounded(p, 0.8), torch.tensor([0.2, 0.5, 0.8]))


class _Const(nn.Module):
    """A segmentation 'network' whose per-pixel logits favour the true class by ``margin``."""

    def __init__(self, margin: float, classes: int = 2):
        super().__init__()
        self.margin = nn.Parameter(torch.tensor(float(margin)))
        self.classes = classes

    def forward(self, x):
        n, _, h, w = x.shape
        target = (x[:, 0] > 0.5).long()  # the truth of the tests below: bright red = class 1
        onehot = nn.functional.one_hot(target, self.classes).permute(0, 3, 1, 2).float()
        return onehot * self.margin


class _Policy(nn.Module):
    def __init__(self):
        super().__init__()
        self.logit = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.sigmoid(self.logit).expand(len(x))


class _FakeRAZN(nn.Module):
    def __init__(self, m0: float, m1: float, alpha: float = 0.8):
        super().__init__()
        self.segs = nn.ModuleList([_Const(m0), _Const(m1)])
        self.policies = nn.ModuleList([_Policy()])
        self.config = RAZNConfig(alpha=alpha, tile_px=8, classes=("a", "b"), encoder="small")

    def p_tilde(self, level, x):
        return bounded(self.policies[level](x), self.config.alpha)


def _batch(b=16, t=8):
    x1 = torch.rand(b, 3, 2 * t, 2 * t)
    x0 = nn.functional.avg_pool2d(x1, 2)
    return [x0, x1], [(x0[:, 0] > 0.5).long(), (x1[:, 0] > 0.5).long()]


@pytest.mark.parametrize("finer_is_better", [True, False])
def test_policy_learns_to_zoom_exactly_when_zooming_lowers_the_loss(finer_is_better):
    torch.manual_seed(0)
    net = _FakeRAZN(0.5, 3.0) if finer_is_better else _FakeRAZN(3.0, 0.5)
    for s in net.segs:
        s.margin.requires_grad_(False)
    opt = torch.optim.SGD(net.policies.parameters(), lr=2.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        xs, ys = _batch()
        loss, _ = razn_losses(net, xs, ys, net.config, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    p = float(net.p_tilde(0, xs[0])[0])
    assert (p > 0.7) if finer_is_better else (p < 0.3)


def test_alternating_updates_train_f1_on_zoomed_tiles_and_f0_on_the_rest():
    xs, ys = _batch()
    for action, trained, untouched in ((1.0, 1, 0), (0.0, 0, 1)):
        net = _FakeRAZN(1.0, 1.0)
        loss, parts = razn_losses(net, xs, ys, net.config, decide=lambda pt, a=action: torch.full_like(pt, a))
        loss.backward()
        assert net.segs[trained].margin.grad is not None and float(net.segs[trained].margin.grad) != 0
        assert net.segs[untouched].margin.grad is None or float(net.segs[untouched].margin.grad) == 0
        assert parts["zoom_rate0"] == action


def _stripes_slide(tmp_path, size=512):
    """A pyramidal TIFF whose left 3/8 is red-dominant (class 1 for _Const) and a matching mask."""
    from napari_glimpse.slides.writer import write_pyramid

    img = np.full((size, size, 3), 60, np.uint8)
    img[:, : size * 3 // 8, 0] = 230
    img[size // 4 : size // 2, size * 5 // 8 :, 0] = 230
    path = tmp_path / "stripes.tif"
    write_pyramid(path, size, size, _tiles(img), 0.5, compression=None, tile_size=512)
    return path, (img[..., 0] > 127).astype(np.uint8)


def _tiles(img, t=512):
    for r in range(0, img.shape[0], t):
        for c in range(0, img.shape[1], t):
            yield img[r : r + t, c : c + t]


@pytest.mark.parametrize("mode", ["never", "always", "greedy"])
def test_labels_land_on_the_right_pixels_whether_a_tile_zooms_or_breaks(tmp_path, mode):
    from napari_glimpse.methods.razn.api import segment_fields
    from napari_glimpse.slides import open_slide

    path, truth = _stripes_slide(tmp_path)
    net = _FakeRAZN(5.0, 5.0)
    net.config = RAZNConfig(mpp=1.0, tile_px=64, classes=("a", "b"), encoder="small")

    class Src:
        mpp0 = 0.5

    with open_slide(path) as slide:
        Src.slide = slide
        fields = [(Src, x, y) for y in (0, 128, 256, 384) for x in (0, 128, 256, 384)]
        labels, dec, counts = segment_fields(net, net.config, fields, mode, "cpu")
    assert labels.shape == (16, 128, 128)  # the finest scale: level 0 here
    for (_, x, y), lab in zip(fields, labels, strict=True):
        t = truth[y : y + 128, x : x + 128]
        assert np.mean(lab == t) > 0.97, (x, y)
    zoomed = sum(d["zoom"] for d in dec if d["level"] == 0)
    assert zoomed == {"never": 0, "always": 16, "greedy": 16}[mode]  # p~ = 0.5 here: greedy zooms
    assert counts["patches_read"] == 16 + zoomed


def test_mosaic_class_masks_hold_glass_tissue_and_tumour(tmp_path):
    from napari_glimpse.annotations import read_label_mask
    from napari_glimpse.mosaic import bundled_patches_dir, make_mosaics

    made = make_mosaics(bundled_patches_dir(), tmp_path, count=1, size=(960, 960), seed=3, positive_fraction=1.0,
                        tumour_fraction=0.3, lattice_offset=True, mask_classes=True)
    mask = read_label_mask(made[0].mask_path).mask
    assert set(np.unique(mask).tolist()) == {0, 1, 2}
    assert (tmp_path / "classes.txt").read_text().split("\n")[:3] == ["glass", "normal tissue", "tumour"]
    # tumour pixels are exactly the tumour cells (the lattice offset included)
    ox, oy = made[0].lattice_offset
    r, c = made[0].tumour_cells[0]
    assert mask[r * 96 - oy + 48, c * 96 - ox + 48] == 2


def test_image_mask_pairs_with_a_binary_mask_give_two_classes(tmp_path):
    from PIL import Image

    from napari_glimpse.methods.razn.data import find_classes, open_sources
    from napari_glimpse.runtime.data import find_annotated

    img = np.full((200, 300, 3), 200, np.uint8)
    mask = np.zeros((200, 300), np.uint8)
    mask[50:100, 100:200] = 255
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(mask).save(tmp_path / "a.mask.png")
    items = find_annotated(tmp_path)
    classes, binary = find_classes(tmp_path, items, [(300, 200)])
    assert classes == ("background", "foreground") and binary
    cfg = RAZNConfig(mpp=2.0, tile_px=32, classes=classes, encoder="small")
    src = open_sources(items, cfg, binary=binary, n_classes=2)[0]
    try:
        assert src.mpp0 == 1.0  # no pixel size in the file: the finest scale (mpp / r)
        assert src.labels.shape == (200, 300) and set(np.unique(src.labels)) == {0, 1}
    finally:
        src.close()


# --------------------------------------------------------------------------- learning, CLI


@pytest.fixture(scope="module")
def razn_data(tmp_path_factory):
    from napari_glimpse.mosaic import bundled_patches_dir, make_mosaics

    root = tmp_path_factory.mktemp("razn")
    for name, seed, n in (("train", 1, 4), ("val", 2, 2)):
        make_mosaics(bundled_patches_dir(), root / name, count=n, size=(960, 960), seed=seed, positive_fraction=1.0,
                     tumour_fraction=0.3, lattice_offset=True, mask_classes=True)
    return root


@pytest.fixture(scope="module")
def trained_razn(razn_data):
    from napari_glimpse.methods.razn.training import train
    from napari_glimpse.runtime.events import run_to_end

    cfg = RAZNConfig(mpp=3.888, tile_px=48, encoder="pcam", epochs=4, tiles_per_epoch=128, batch_size=8, lr=1e-3)
    out = razn_data / "razn.safetensors"
    run_to_end(train(razn_data / "train", out, val_dir=razn_data / "val", config=cfg, device="cpu"))
    return out


def test_razn_learns_to_segment_held_out_mosaics(trained_razn, razn_data):
    from napari_glimpse.methods import get_method, load_model
    from napari_glimpse.methods.razn.api import evaluate
    from napari_glimpse.methods.razn.config import RAZNInferConfig
    from napari_glimpse.runtime.checkpoint import read_header
    from napari_glimpse.runtime.events import run_to_end

    header = read_header(trained_razn)
    assert header["classes"] == ["glass", "normal tissue", "tumour"]
    model = load_model(get_method("razn"), str(trained_razn), "cpu")
    res = run_to_end(evaluate(razn_data / "val", model, RAZNInferConfig(policy="greedy")))
    # a constant prediction has IoU <= 1 for one class and 0 for the other two: mean IoU <= 1/3
    assert res["miou"] > 0.4, res
    assert min(res["iou"]) > 0.1, res  # every class found, tumour included
    assert res["baselines"]["scale1"]["relative_time"] == 1.0


def test_cli_train_infer_and_evaluate_razn(trained_razn, razn_data, tmp_path, capsys):
    from napari_glimpse.cli import main
    from napari_glimpse.layers import result_to_layers
    from napari_glimpse.runtime.results_io import load_result

    slide = razn_data / "val" / "mosaic_000.tif"
    out = tmp_path / "inf"
    assert main(["infer", "razn", "--checkpoint", str(trained_razn), str(slide), "--out", str(out)]) == 0
    capsys.readouterr()
    res = load_result(out / "mosaic_000")
    (seg,) = [m for m in res.maps if m.kind == "labels"]
    assert seg.metadata["classes"] == ["glass", "normal tissue", "tumour"]
    assert seg.data.shape == (480, 480)  # fields of 192 level-0 px at 96 px: 2 level-0 px per label
    assert set(res.summary["class_area_mm2"]) == {"glass", "normal tissue", "tumour"}
    zoom = next(b for b in res.boxes if b.name == "RAZN zoom decisions")
    assert len(zoom.boxes) >= res.summary["tiles"]
    layers = result_to_layers(res)
    kinds = {kw["name"]: kind for _, kw, kind in layers}
    assert kinds["RAZN segmentation"] == "labels" and kinds["RAZN zoom decisions"] == "shapes"
    assert main(["evaluate", "razn", "--checkpoint", str(trained_razn), "--data", str(razn_data / "val"),
                 "--policy", "greedy"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for key in ("classes", "iou", "miou", "fwiou", "relative_time", "zoom_rate", "baselines"):
        assert key in doc
    assert set(doc["baselines"]) == {"scale1", "scale2"}
    assert doc["baselines"]["scale2"]["relative_time"] > 1.0


def test_the_dock_shows_the_area_of_every_class(trained_razn, razn_data, make_napari_viewer):
    from napari_glimpse._napari.razn_areas import install
    from napari_glimpse.layers import result_to_layers
    from napari_glimpse.methods import get_method, load_model
    from napari_glimpse.methods.razn.api import infer
    from napari_glimpse.methods.razn.config import RAZNInferConfig
    from napari_glimpse.runtime.events import run_to_end
    from napari_glimpse.slides import open_slide

    model = load_model(get_method("razn"), str(trained_razn), "cpu")
    with open_slide(razn_data / "val" / "mosaic_001.tif") as slide:
        res = run_to_end(infer(slide, model, RAZNInferConfig(policy="greedy"), None))
    viewer = make_napari_viewer()
    for data, kw, kind in result_to_layers(res):
        getattr(viewer, f"add_{kind}")(data, **kw)
    table = install(viewer)
    rows = table.rows()
    assert [r[0] for r in rows] == ["glass", "normal tissue", "tumour"]
    areas = res.summary["class_area_mm2"]
    assert float(rows[2][1]) == pytest.approx(areas["tumour"], abs=1e-3)
    assert install(viewer) is table  # docked once


def test_the_training_panel_says_what_each_data_folder_holds(razn_data, make_napari_viewer, qtbot, tmp_path):
    from napari_glimpse._napari.widgets._training import TrainingWidget
    from napari_glimpse.mosaic import bundled_patches_dir

    panel = TrainingWidget(make_napari_viewer(), recent=None)
    panel.method.value = "razn"
    panel.data[0].value = razn_data / "train"
    qtbot.waitUntil(lambda: panel.found[0].value.startswith("4 annotated"), timeout=20000)
    assert panel.found[0].value == "4 annotated images; classes: glass, normal tissue, tumour"
    (tmp_path / "empty").mkdir()
    panel.data[1].value = tmp_path / "empty"
    qtbot.waitUntil(lambda: panel.found[1].value.startswith("cannot use it"), timeout=20000)
    assert "empty" in panel.found[1].value
    panel.method.value = "celnet"  # a patch folder: patches per class
    panel.data[0].value = bundled_patches_dir()
    qtbot.waitUntil(lambda: "patches" in panel.found[0].value, timeout=20000)
    assert panel.found[0].value == "300 patches: 150 normal, 150 tumour"
    assert panel.data_values() == {"train_dir": str(bundled_patches_dir()), "val_dir": None}
