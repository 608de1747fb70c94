"""MagNets: fields on the pyramid, both samplers' gradients, the network's tree, training, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fake_slides import FakeSlide

from napari_glimpse.methods.magnet.config import MagNetConfig
from napari_glimpse.methods.magnet.model import (
    build_model,
    loss_part_names,
    magnet_loss,
    theta_from_mass,
)
from napari_glimpse.methods.magnet.sampling import (
    TURNS,
    Field,
    PyramidReader,
    bilinear_sample,
    compose,
    grey_filter,
    lms_sample,
)


def _smooth_image(n=512, seed=0):
    """Colourful low-frequency RGB (periods of 150-400 px): nothing grey, bilinear is accurate."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    img = np.zeros((n, n, 3))
    for ch in range(3):
        for _ in range(3):
            fx, fy = rng.uniform(1 / 400, 1 / 150, 2) * 2 * np.pi
            img[..., ch] += rng.uniform(15, 30) * np.sin(fx * xx + fy * yy + rng.uniform(0, 6))
    img[..., 0] += 160
    img[..., 1] += 60
    img[..., 2] += 110
    return np.clip(img, 0, 255).astype(np.uint8)


def _ramp_image(n=224):
    """Exactly linear in x and y (whole-number slopes; bilinear interpolation is exact on it)."""
    yy, xx = np.mgrid[0:n, 0:n]
    return np.stack([20 + xx, 10 + yy, 250 - xx], -1).astype(np.uint8)


def _field_of(theta: torch.Tensor, parent=(112.0, 112.0, 112.0)):
    root = Field(*(torch.tensor(v) for v in parent))
    return compose(root, theta)


def _loss_of(reader, theta, size, weights):
    return (reader.read(_field_of(theta), size).double() * weights.double()).sum()


def _grad_check(sampler: str, image: np.ndarray, size=24):
    """Autograd d loss / d (s, t_x, t_y) and central finite differences, on a field inside
    the slide whose level stays the same under the perturbation."""
    slide = FakeSlide(image, downsamples=(1, 4))
    reader = PyramidReader(slide, "cpu", sampler, grey_threshold=0)
    torch.manual_seed(0)
    weights = torch.rand(3, size, size)
    s, tx, ty = 0.3, 0.12, -0.2
    theta = torch.tensor([[s, 0.0, tx], [0.0, s, ty]], requires_grad=True)
    torch.manual_seed(1)
    _loss_of(reader, theta, size, weights).backward()
    auto = np.array([theta.grad[0, 0] + theta.grad[1, 1], theta.grad[0, 2], theta.grad[1, 2]], np.float64)
    eps = 2e-3
    numeric = []
    for which in range(3):
        vals = []
        for sign in (1, -1):
            th = torch.tensor([[s, 0.0, tx], [0.0, s, ty]], dtype=torch.float64)
            if which == 0:
                th[0, 0] += sign * eps
                th[1, 1] += sign * eps
            else:
                th[which - 1, 2] += sign * eps
            with torch.no_grad():
                vals.append(float(_loss_of(reader, th.float(), size, weights)))
        numeric.append((vals[0] - vals[1]) / (2 * eps))
    return auto, np.array(numeric)


@pytest.mark.parametrize("sampler", ["bilinear", "lms"])
def test_gradient_of_the_patch_wrt_theta_matches_finite_differences(sampler):
    auto, numeric = _grad_check(sampler, _smooth_image())
    np.testing.assert_allclose(auto, numeric, rtol=0.06, atol=0.02 * np.abs(numeric).max())
    assert np.abs(numeric).min() > 1.0  # the check is not vacuous: every component moves the loss


@pytest.mark.parametrize("sampler", ["bilinear", "lms"])
def test_gradient_is_exact_on_a_linear_image(sampler):
    auto, numeric = _grad_check(sampler, _ramp_image())
    np.testing.assert_allclose(auto, numeric, rtol=0.01, atol=1e-3 * np.abs(numeric).max())


def test_lms_value_is_the_bilinear_value_and_its_gradient_sees_past_one_pixel():
    img = torch.zeros(1, 1, 16, 16)
    img[..., 8:] = 1.0  # a step between columns 7 and 8
    # sampling at the centre of column 5: bilinear's slope there is zero, LMS's is not
    gx = torch.tensor(2 * (5.5 / 16) - 1, requires_grad=True)
    grid = torch.stack([gx, torch.tensor(0.0)]).view(1, 1, 1, 2)
    g = torch.Generator().manual_seed(0)
    out_l = lms_sample(img, grid, n=32, noise_px=2.0, generator=g)
    out_b = bilinear_sample(img, grid)
    assert torch.allclose(out_l, out_b)
    (grad_l,) = torch.autograd.grad(out_l.sum(), gx)
    grid_b = torch.stack([gx, torch.tensor(0.0)]).view(1, 1, 1, 2)
    (grad_b,) = torch.autograd.grad(bilinear_sample(img, grid_b).sum(), gx)
    assert float(grad_b) == 0.0 and float(grad_l) > 0.5


def test_sampled_patch_equals_a_direct_read_where_theta_is_exact(tiny_mosaic):
    from napari_glimpse.slides import open_slide

    with open_slide(tiny_mosaic.path) as slide:
        assert slide.level_count >= 2
        level, size = 1, 32
        ds = slide.levels[level].downsample
        reader = PyramidReader(slide, "cpu", "bilinear", grey_threshold=0)
        # a field of exactly size level-1 pixels, aligned to level-1 pixel borders
        x0, y0 = 40, 24  # level-1 px
        half = size * ds / 2
        field = Field(torch.tensor(x0 * ds + half), torch.tensor(y0 * ds + half), torch.tensor(half))
        assert reader.level_for(field, size) == level
        got = reader.read(field, size).permute(1, 2, 0).numpy() * 255
        want = slide.read_level_box(level, x0, y0, size, size).astype(np.float32)
        np.testing.assert_allclose(got, want, atol=1e-3)
        # a field at level 0 read at 2x its pixels: every output pixel is a quarter of a level-0 one
        level0 = Field(torch.tensor(100.0 + 8), torch.tensor(60.0 + 8), torch.tensor(8.0))
        assert reader.level_for(level0, 32) == 0


def test_fields_compose_and_turns_rotate_the_whole_slide():
    root = Field(torch.tensor(500.0), torch.tensor(300.0), torch.tensor(400.0))
    theta = torch.tensor([[0.25, 0.0, 0.5], [0.0, 0.25, -0.5]])
    child = compose(root, theta)
    assert child.box() == pytest.approx((600.0, 0.0, 800.0, 200.0))
    turned = compose(root, theta, torch.from_numpy(TURNS[1]))  # 90 degrees: (x, y) -> (-y, x)
    assert turned.box() == pytest.approx((600.0, 400.0, 800.0, 600.0))


def test_grey_filter_blackens_grey_and_white_only():
    px = np.array([[[255, 255, 255], [128, 130, 125], [200, 100, 180], [40, 60, 45]]], np.uint8)
    out = grey_filter(px, 15)
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 1].tolist() == [0, 0, 0]
    assert out[0, 2].tolist() == [200, 100, 180] and out[0, 3].tolist() == [40, 60, 45]


def test_theta_from_a_point_mass_and_from_a_uniform_mass():
    p = torch.zeros(1, 8, 8)
    p[0, 1, 6] = 1.0  # x index 6, y index 1
    th = theta_from_mass(p, 0.05)[0]
    u = (2 * np.arange(8) + 1) / 8 - 1
    assert float(th[0, 2]) == pytest.approx(np.tanh(u[6]), abs=1e-6)
    assert float(th[1, 2]) == pytest.approx(np.tanh(u[1]), abs=1e-6)
    assert float(th[0, 0]) == pytest.approx(0.05) and float(th[1, 1]) == pytest.approx(0.05)
    flat = torch.full((1, 8, 8), 1 / 64)
    th = theta_from_mass(flat, 0.05)[0]
    uu = np.stack(np.meshgrid(u, u), -1).reshape(-1, 2)
    assert float(th[0, 0]) == pytest.approx(np.linalg.norm(uu, axis=1).mean(), rel=1e-5)
    assert float(th[0, 2]) == pytest.approx(0.0, abs=1e-6)


def _tiny_config(**kw):
    base = {"encoder": "small", "aux_encoder": "small", "input_px": 16, "leaf_px": 32, "inception_width": 2,
            "gru_hidden": 16}
    base.update(kw)
    return MagNetConfig(**base)


def test_the_tree_has_prod_p_leaves_frozen_patches_and_gradients_reach_every_localiser():
    cfg = _tiny_config()
    torch.manual_seed(0)
    net = build_model(cfg)
    slide = FakeSlide(_smooth_image(384), downsamples=(1, 2, 4))
    out = net(PyramidReader(slide, "cpu", "bilinear"))
    assert [len(f) for f in out["fields"]] == [2, 6, 18]
    assert out["running"].shape == (18,) and out["frozen"][1] == [0, 3]
    for i in out["frozen"][1]:  # the frozen patch is its parent's whole field
        assert out["fields"][1][i].box() == pytest.approx(out["fields"][0][i // 3].box())
    assert set(out["aux"]) == {0, 2}
    loss, parts = magnet_loss(out, 1)
    assert {"ce", "ce_aux1", "ce_aux3", "paradoxical"} <= set(parts)
    assert set(parts) == set(loss_part_names(cfg))  # what training sums over the ranks
    loss.backward()
    for name, loc in net.localisers.items():
        g = loc.score.weight.grad
        assert g is not None and torch.isfinite(g).all() and float(g.abs().sum()) > 0, name


def test_a_four_layer_magnet_has_54_leaves():
    net = build_model(_tiny_config(patches=(2, 3, 3, 3), aux=False))
    out = net(PyramidReader(FakeSlide(_smooth_image(384), downsamples=(1, 2, 4)), "cpu", "lms"), with_aux=False)
    assert [len(f) for f in out["fields"]] == [2, 6, 18, 54] and out["running"].shape == (54,)
    assert len(net.localisers) == 2 + 4 + 18 + 54


def _blob_slides(folder, n, seed, size=384):
    """Slides whose label is a red blob of 40-90 px somewhere on pale pink tissue."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["slide,label"]
    for k in range(n):
        img = np.empty((size, size, 3), np.uint8)
        img[:] = (230, 170, 215)
        img += rng.integers(0, 12, img.shape, dtype=np.uint8)
        label = k % 2
        if label:
            r = int(rng.integers(20, 45))
            cy, cx = rng.integers(r, size - r, 2)
            yy, xx = np.mgrid[0:size, 0:size]
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (150, 20, 90)
        Image.fromarray(img).save(folder / f"s{k:02d}.png")
        Image.fromarray(img).save(folder / f"s{k:02d}.tif")
        (folder / f"s{k:02d}.png").unlink()
        rows.append(f"s{k:02d},{label}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def trained_magnet(tmp_path_factory):
    from napari_glimpse.methods.magnet.training import train
    from napari_glimpse.runtime.events import run_to_end

    root = tmp_path_factory.mktemp("magnet")
    tr, va = _blob_slides(root / "train", 16, 0), _blob_slides(root / "val", 12, 1)
    cfg = _tiny_config(patches=(2, 2), epochs=12, lr=3e-3, batch_size=4)
    out = run_to_end(train(tr, root / "m.safetensors", val_dir=va, config=cfg, device="cpu", seed=0))
    return out, va


def test_magnet_learns_a_slide_label_it_can_only_see_by_looking(trained_magnet):
    from napari_glimpse.methods import load_model
    from napari_glimpse.methods.registry import get_method
    from napari_glimpse.runtime.checkpoint import read_header
    from napari_glimpse.runtime.events import run_to_end

    ckpt, va = trained_magnet
    header = read_header(ckpt)
    hist = header["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    spec = get_method("magnet")
    model = load_model(spec, ckpt, "cpu")
    res = run_to_end(spec.get("evaluate")(va, model, spec.infer_config_cls()))
    assert res["n"] == 12 and res["auc"] >= 0.8, res
    assert res["patches_read_mean"] == pytest.approx(1 + 2 + 4)


def test_cli_infer_and_evaluate_magnet(trained_magnet, tmp_path, capsys):
    from napari_glimpse.cli import main

    ckpt, va = trained_magnet
    out = tmp_path / "out"
    assert main(["infer", "magnet", "--checkpoint", ckpt, str(va / "s01.tif"), "--out", str(out)]) == 0
    doc = json.loads((out / "s01" / "summary.json").read_text())
    summary = doc["summary"]
    assert doc["method"] == "magnet" and len(summary["running"]) == 4
    assert summary["evidence"] and summary["patches_read"] == 7 and summary["slide_call"] in (0, 1)
    capsys.readouterr()
    assert main(["evaluate", "magnet", "--checkpoint", ckpt, "--data", str(va)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"auc", "n", "seconds_per_slide", "patches_read_mean"} <= set(metrics)


def _tiny_result(threshold=None):
    """The result of an untrained tiny MagNet ((2, 3, 3), 18 leaves) on a fake slide."""
    from napari_glimpse.methods.magnet.api import result_from_output

    cfg = _tiny_config()
    torch.manual_seed(0)
    net = build_model(cfg).eval()
    reader = PyramidReader(FakeSlide(_smooth_image(384), downsamples=(1, 2, 4)), "cpu", "bilinear")
    with torch.no_grad():
        out = net(reader)
    return result_from_output(out, {"patches_read": reader.reads, "pixels_read": reader.pixels_read}, cfg,
                              "fake.tif", (0.5, 0.5), threshold=threshold)


def test_result_layers_colour_each_layer_and_mark_frozen_patches():
    from napari_glimpse.layers import result_to_layers
    from napari_glimpse.methods.magnet.api import FROZEN_COLOUR, LAYER_COLOURS

    res = _tiny_result()
    assert [b.metadata["magnet_layer"] for b in res.boxes] == [1, 2, 3]
    layer2 = res.boxes[1]
    assert list(layer2.edge_color[layer2.properties["frozen"]]) == [FROZEN_COLOUR] * 2
    assert set(layer2.edge_color[~layer2.properties["frozen"]]) == {LAYER_COLOURS[1]}
    assert [len(s.segments) for s in res.lines] == [6, 18]
    assert [p.name for p in res.points] == ["MagNet leaf probability", "MagNet evidence"]
    rise = res.points[1].properties["rise"]
    assert np.all(np.diff(rise) <= 0)  # evidence: the largest rise first
    leaves = res.boxes[2]
    np.testing.assert_allclose(leaves.properties["running"], res.summary["running"], atol=1e-5)
    layers = result_to_layers(res)
    assert {t[2] for t in layers} == {"shapes", "points"}
    assert res.summary["patches_read"] == 1 + 2 + 6 + 18


def test_running_plot_docks_and_a_click_centres_the_viewer_on_the_leaf(make_napari_viewer):
    from napari_glimpse._napari.magnet_plot import install, leaves_layer
    from napari_glimpse.layers import result_to_layers

    res = _tiny_result(threshold=0.4)
    viewer = make_napari_viewer()
    for data, kwargs, kind in result_to_layers(res):
        viewer._add_layer_from_data(data, kwargs, kind)
    plot = install(viewer)
    assert install(viewer) is plot  # idempotent: one plot per viewer
    np.testing.assert_allclose(plot.running, res.summary["running"], atol=1e-5)
    assert plot.threshold == pytest.approx(0.4) and plot.prior == pytest.approx(res.summary["prior"])
    plot.resize(400, 200)
    k = 7
    pt = plot._xy(k, plot.running[k])
    assert plot.point_at(pt.x(), pt.y() + 3) == k
    plot.select(k)
    leaves = leaves_layer(viewer)
    assert leaves.selected_data == {k}
    x0, y0, x1, y1 = res.summary["leaf_boxes"][k]
    centre = np.asarray(viewer.camera.center)[-2:]
    np.testing.assert_allclose(centre, [(y0 + y1) / 2 * 0.5, (x0 + x1) / 2 * 0.5], rtol=1e-4, atol=0.5)
