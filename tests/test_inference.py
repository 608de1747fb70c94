"""Slide inference: working resolution, window/cell alignment, dense CELNet == per-patch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fake_slides import FakeSlide, FakeTissue

from napari_glimpse.methods.celnet.celm import CELMParams
from napari_glimpse.methods.celnet.inference import dense_tile_probabilities, infer_celnet
from napari_glimpse.methods.celnet.model import CELNet, CELNetConfig
from napari_glimpse.runtime.inference import (
    WindowGrid,
    read_working,
    working_grid,
)


def run(gen):
    """Drive a progress generator to its return value; also return the events."""
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return stop.value, events


def tiny_celnet(seed=0, stem_stride=1) -> CELNet:
    torch.manual_seed(seed)
    cfg = CELNetConfig(widths=(4, 8, 8), blocks=1, reduction=2, channel_window=3,
                       spatial_kernels=(3,), patch_size=32, mpp=1.0, stem_stride=stem_stride)
    model = CELNet(cfg).eval()
    for m in model.modules():  # non-trivial BN statistics, so eval-mode BN is not identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def textured(h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.kron(img, np.ones((8, 8, 1), np.uint8))[:h, :w]


def test_working_grid_picks_level_and_resize():
    slide = FakeSlide(textured(256, 256), mpp=(0.25, 0.25), downsamples=(1, 4))
    g = working_grid(slide, 1.0)
    assert (g.level, g.zoom, g.downsample) == (1, 1.0, 4.0)  # level 1 is exactly 1.0 um/px
    g = working_grid(slide, 0.5)  # between levels: read level 0, downscale by 2
    assert (g.level, g.zoom, g.downsample) == (0, 2.0, 2.0)
    img, npx = read_working(slide, g, 0, 0, 16, 8)
    assert img.shape == (8, 16, 3) and npx == 32 * 16
    with pytest.warns(UserWarning, match="no mpp"):
        g = working_grid(FakeSlide(textured(64, 64), mpp=None), 0.97, region=(8, 8, 40, 72))
    assert g.mpp_assumed and g.downsample == 1 and g.region == (8, 8, 40, 64)


def test_window_cells_are_centred_on_windows():
    slide = FakeSlide(textured(400, 400), mpp=(0.5, 0.5), downsamples=(1,))
    grid = working_grid(slide, 1.0, region=(40, 80, 400, 400))  # downsample 2
    w = WindowGrid(grid, patch=32, stride=8)
    assert w.cell_size == 16 and w.offset == 12
    # Window (i, j) top-left in working px: j*8 - 12; its centre j*8 + 4 = centre of cell j.
    cx, cy = w.cell_centres(np.array([3]), np.array([5]))[0]
    wx_centre = 5 * 8 - 12 + 16
    assert cx == pytest.approx(40 + wx_centre * 2) and cy == pytest.approx(80 + (3 * 8 - 12 + 16) * 2)
    assert w.origin == (40.0, 80.0)
    # 160 working px / 8 = 20 rows; of 180 px, cell 22 (centre 180) lies past the edge: 22 cols.
    assert w.shape == (20, 22)


@pytest.mark.parametrize("stem_stride", [1, 2])
def test_dense_tile_equals_per_patch_classification(stem_stride):
    model = tiny_celnet(stem_stride=stem_stride)
    m, p, stride, n = model.context_margin, model.config.patch_size, 8, 3
    size = (n - 1) * stride + p + 2 * m
    tile = textured(size, size, seed=1)
    dense = dense_tile_probabilities(model, tile[None], n, stride)[0]
    ref = np.zeros_like(dense)
    x = torch.from_numpy(tile).permute(2, 0, 1).float().div(255)[None]
    with torch.no_grad():
        for r in range(n):
            for c in range(n):
                crop = x[:, :, r * stride : r * stride + p + 2 * m, c * stride : c * stride + p + 2 * m]
                ref[r, c] = torch.sigmoid(model.classify_with_context(crop)).item()
    assert np.abs(dense - ref).max() <= 1e-4
    assert dense.std() > 1e-3  # not a constant map, so the comparison means something


@pytest.mark.parametrize("stem_stride", [1, 2])
def test_infer_celnet_matches_per_window_reference_across_tiles(stem_stride):
    model = tiny_celnet(stem_stride=stem_stride)
    m, p, stride = model.context_margin, model.config.patch_size, 8
    img = textured(300, 260, seed=2)
    slide = FakeSlide(img, mpp=(0.5, 0.5), downsamples=(1, 2))  # working 1.0 um/px = level 1
    region = (20, 40, 260, 300)
    # A small tile_size forces several tiles, so tile seams are checked too.
    result, events = run(infer_celnet(slide, model, region=region, stride=stride, tile_size=p + 2 * m + 3 * stride,
                                      tissue=None, celm=True))
    prob = result.maps[0].data
    assert len(events) > 1 and events[-1].done == events[-1].total
    grid = working_grid(slide, 1.0, region)
    w = WindowGrid(grid, p, stride)
    assert prob.shape == w.shape and result.maps[0].cell_size == 16.0
    assert result.maps[0].origin == (20.0, 40.0)
    # Reference: each window read with its context and classified on its own.
    rng = np.random.default_rng(0)
    for r, c in zip(rng.integers(0, prob.shape[0], 12), rng.integers(0, prob.shape[1], 12), strict=True):
        crop, _ = read_working(slide, grid, c * stride - w.offset - m, r * stride - w.offset - m,
                               p + 2 * m, p + 2 * m)
        x = torch.from_numpy(crop).permute(2, 0, 1).float().div(255)[None]
        with torch.no_grad():
            ref = torch.sigmoid(model.classify_with_context(x)).item()
        assert abs(prob[r, c] - ref) <= 1e-4
    assert result.slide_score == pytest.approx(float(prob.max()))
    assert {mp.name for mp in result.maps} == {"tumour probability", "CELM evidence", "evidence mask"}
    ev = result.maps[1].data
    assert ev.min() >= 0 and ev.max() <= 1
    s = result.summary
    assert s["patches_read"] >= 2 and s["pixels_read"] > 0 and s["seconds"] > 0
    # Bounded reads: no read is as large as the region at level 0.
    assert max(w_ * h_ for _, w_, h_ in slide.reads) < (region[2] - region[0]) * (region[3] - region[1])


def test_tissue_mask_skips_background_tiles():
    model = tiny_celnet()
    img = textured(512, 512)
    slide = FakeSlide(img, mpp=(1.0, 1.0), downsamples=(1,))
    mask = np.zeros((16, 16), bool)
    mask[:4, :4] = True  # tissue only in the top-left 128 x 128 px
    full, _ = run(infer_celnet(slide, model, stride=16, tile_size=400, tissue=None, celm=False))
    part, _ = run(infer_celnet(slide, model, stride=16, tile_size=400, tissue=FakeTissue(mask, 32.0),
                               celm=False))
    assert part.summary["patches_read"] < full.summary["patches_read"]
    assert part.maps[0].data[20:, 20:].max() == 0
    assert len(part.maps) == 1


def test_bad_stride_is_refused():
    model = tiny_celnet()
    slide = FakeSlide(textured(64, 64), mpp=(1.0, 1.0), downsamples=(1,))
    with pytest.raises(ValueError, match="multiple of 4"):
        run(infer_celnet(slide, model, stride=6, tissue=None))


def test_cli_infer_writes_summary_maps_and_geojson(tmp_path, capsys):
    import json

    from napari_glimpse.cli import main
    from napari_glimpse.runtime.checkpoint import save_checkpoint
    from napari_glimpse.runtime.results_io import load_result

    ckpt = tmp_path / "tiny.safetensors"
    model = tiny_celnet()
    save_checkpoint(ckpt, method="celnet", config=model.config, model_state=model.state_dict())
    slide = str(Path(__file__).resolve().parents[1] / "src/napari_glimpse/_sample_data/cmu-1-small-region.svs")
    rc = main(["infer", "celnet", "--checkpoint", str(ckpt), slide, "--out", str(tmp_path / "out"),
               "--region", "600", "800", "1000", "1100", "--stride", "16", "--quiet"])
    assert rc == 0
    summary = json.loads((tmp_path / "out" / "cmu-1-small-region" / "summary.json").read_text())
    for key in ("slide_score", "seconds", "patches_read", "pixels_read"):
        assert key in summary
    assert summary["region"] == [600, 800, 1000, 1100] and summary["patches_read"] >= 1
    result = load_result(tmp_path / "out" / "cmu-1-small-region")
    prob = result.maps[0]
    assert prob.cell_size == pytest.approx(16 * 1.0 / 0.499, rel=0.06)  # 16 working px at 1.0 um/px
    assert result.slide_score == pytest.approx(float(prob.data.max()))
    assert (tmp_path / "out" / "cmu-1-small-region" / "points.geojson").is_file()
    assert json.loads(capsys.readouterr().out)["slide_score"] == result.slide_score
    assert summary["summary"]["tta"] is False
    rc = main(["infer", "celnet", "--checkpoint", str(ckpt), slide, "--out", str(tmp_path / "tta"),
               "--region", "600", "800", "1000", "1100", "--stride", "16", "--quiet", "--tta", "--no-celm"])
    assert rc == 0
    tta = load_result(tmp_path / "tta" / "cmu-1-small-region")
    assert tta.summary["tta"] is True and tta.maps[0].data.shape == prob.data.shape
    assert not np.array_equal(tta.maps[0].data, prob.data)  # averaged over the turned windows
    capsys.readouterr()
    bad = main(["infer", "celnet", "--checkpoint", str(tmp_path / "missing.safetensors"), slide,
                "--out", str(tmp_path / "x"), "--quiet"])
    assert bad == 1


# ------------------------------------------------------------- progress, cancel, edges


def test_banded_features_equal_whole_features():
    from napari_glimpse.methods.celnet.dense import count_pieces, iter_features

    model = tiny_celnet()
    x = torch.from_numpy(textured(148, 148, seed=3)).permute(2, 0, 1).float().div(255)[None]
    with torch.no_grad():
        ref2, ref3 = model.features(x)
    piece = 148 * 4 * 6  # a few rows per band, so every layer runs in many bands
    gen, yields = iter_features(model, x, piece), 0
    while True:
        try:
            next(gen)
            yields += 1
        except StopIteration as stop:
            f2, f3 = stop.value
            break
    assert yields == count_pieces(model, 148, 1, piece) > 20
    assert (f2 - ref2).abs().max() <= 1e-5 and (f3 - ref3).abs().max() <= 1e-5


def test_default_celnet_tile_reports_progress_many_times():
    from napari_glimpse.methods.celnet.dense import DEFAULT_PIECE, count_pieces

    # A 1536-px tile of the paper's CELNet took a minute on a loaded CPU: it must report
    # (and so be cancellable) dozens of times, not once.
    assert count_pieces(CELNet(CELNetConfig()), 1536, 1, DEFAULT_PIECE["cpu"]) >= 40


def test_slide_inference_yields_within_tiles_and_stops_when_dropped():
    model = tiny_celnet()
    slide = FakeSlide(textured(256, 256, seed=4), mpp=(1.0, 1.0), downsamples=(1,))
    kw = {"stride": 8, "tile_size": 200, "tissue": None, "celm": False}
    whole, whole_events = run(infer_celnet(slide, model, piece_size=2**40, **kw))
    tiles = whole.summary["patches_read"]
    layers = 1 + 3 * model.config.blocks  # stem + blocks: one report each when unbanded
    assert tiles >= 2 and sum("features" in e.message for e in whole_events) == tiles * layers
    banded, events = run(infer_celnet(slide, model, piece_size=8000, **kw))
    assert sum("features" in e.message for e in events) >= 20 * tiles  # many reports per tile
    assert [e.done for e in events] == sorted(e.done for e in events) and events[-1].done == events[-1].total
    np.testing.assert_allclose(banded.maps[0].data, whole.maps[0].data, atol=1e-5)
    # CELM reports after every batch (here one window each: 4 windows on the lattice).
    _, events = run(infer_celnet(slide, model, region=(0, 0, 64, 64), stride=8, tissue=None,
                                 celm=True, celm_batch=1, params=CELMParams(prob_threshold=0.0)))
    assert [e.message.split(": ")[-1] for e in events if "evidence" in e.message] == [
        f"evidence {i}/4 windows" for i in range(1, 5)]
    # A consumer that stops iterating stops the run: no further tile is read.
    slide.reads.clear()
    gen = infer_celnet(slide, model, piece_size=8000, **kw)
    next(gen)
    gen.close()
    assert len(slide.reads) == 1


def test_map_ends_where_window_centres_leave_the_region():
    model = tiny_celnet()
    p, m, stride = model.config.patch_size, model.context_margin, 8
    for width, height in ((100, 61), (104, 64), (97, 99)):
        slide = FakeSlide(textured(height, width, seed=5), mpp=(1.0, 1.0), downsamples=(1,))
        result, _ = run(infer_celnet(slide, model, stride=stride, tissue=None, celm=False))
        prob = result.maps[0]
        rows, cols = prob.data.shape
        ox, oy = prob.origin
        # Last cell's centre inside the slide, the next one's outside: the map ends within
        # half a cell of the right / bottom edges instead of running a cell past them.
        assert ox + (cols - 0.5) * prob.cell_size < width <= ox + (cols + 0.5) * prob.cell_size
        assert oy + (rows - 0.5) * prob.cell_size < height <= oy + (rows + 0.5) * prob.cell_size
        # Alignment unchanged: the last cell is still the window centred on it.
        r, c = rows - 1, cols - 1
        w = WindowGrid(working_grid(slide, 1.0), p, stride)
        crop, _ = read_working(slide, w.grid, c * stride - w.offset - m, r * stride - w.offset - m,
                               p + 2 * m, p + 2 * m)
        with torch.no_grad():
            ref = torch.sigmoid(model.classify_with_context(
                torch.from_numpy(crop).permute(2, 0, 1).float().div(255)[None])).item()
        assert abs(prob.data[r, c] - ref) <= 1e-4


def test_registry_infer_exposes_and_applies_celnet_parameters(tmp_path):
    from napari_glimpse.methods import infer

    model = tiny_celnet()
    slide = FakeSlide(textured(128, 128, seed=6), mpp=(1.0, 1.0), downsamples=(1,))
    kw = {"model": model, "stride": 16, "tissue": "none", "celm": False}
    low, _ = run(infer("celnet", slide, threshold=0.0, **kw))
    high, _ = run(infer("celnet", slide, threshold=1.0, **kw))
    few, _ = run(infer("celnet", slide, threshold=0.0, nms_max_peaks=2, **kw))
    # the evidence points are the NMS peaks, best first
    assert low.summary["evidence"][0] == pytest.approx(list(low.points[0].xy[np.argmax(low.points[0].properties["score"])]), abs=0.01)
    assert len(low.points[0].xy) > 2 and len(high.points[0].xy) == 0
    assert len(few.points[0].xy) == 2
