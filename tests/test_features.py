"""Patch-feature grids: geometry on real mosaic cells, background never read, the zarr cache, CLI."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from napari_glimpse.cli import main
from napari_glimpse.encoders import load_encoder
from napari_glimpse.errors import SlideError
from napari_glimpse.features import cache as cache_mod
from napari_glimpse.features import grid as grid_mod
from napari_glimpse.features.cache import cached_grid_features, iter_cached_grid_features
from napari_glimpse.features.grid import grid_features, iter_grid_features
from napari_glimpse.mosaic import bundled_patches_dir, make_mosaics
from napari_glimpse.runtime.regions import read_region_at, to_tensor
from napari_glimpse.slides import Slide, open_slide


def _encoder(seed: int = 0):
    """The untrained small encoder (fixed weights), perturbed by ``seed`` for another checksum."""
    enc = load_encoder("small")
    if seed:
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in enc.parameters():
                p.add_(torch.randn_like(p) * 0.01)
    return enc


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    out = tmp_path_factory.mktemp("mosaic")
    return make_mosaics(bundled_patches_dir(), out, 1, grid=(10, 12), seed=1)[0]


@pytest.fixture(scope="module")
def encoder():
    return _encoder(0)


def _direct(slide, encoder, x, y, patch_px, downsample):
    img, _ = read_region_at(slide, x, y, patch_px, patch_px, downsample)
    with torch.inference_mode():
        return encoder(to_tensor(img[None]))[0].numpy()


def _assert_cells_match_direct_reads(grid, slide, encoder, downsample, cells):
    for r, c in cells:
        x, y = grid.origin[0] + c * grid.cell_size, grid.origin[1] + r * grid.cell_size
        want = _direct(slide, encoder, x, y, grid.meta["patch_px"], downsample)
        np.testing.assert_allclose(grid.features[r, c].astype(np.float32), want, rtol=2e-3, atol=2e-3)


def test_whole_slide_grid_lands_on_the_mosaic_cells(mosaic, encoder):
    g = grid_features(mosaic.path, encoder, tissue=None)
    assert g.shape == (10, 12) and g.origin == (0.0, 0.0) and g.cell_size == 96.0
    assert g.features.dtype == np.float16 and g.features.shape == (10, 12, encoder.feature_dim)
    np.testing.assert_allclose(g.cell_centres([[2, 3], [9, 11]]), [[3 * 96 + 48, 2 * 96 + 48], [11 * 96 + 48, 9 * 96 + 48]])
    assert g.meta["patches_read"] == 120 and g.meta["pixels_read"] == 1152 * 960
    with open_slide(mosaic.path) as slide:
        _assert_cells_match_direct_reads(g, slide, encoder, 1.0, [(0, 0), (6, 3), (9, 11)])


def test_tissue_grid_starts_at_the_tissue_box_and_skips_background(mosaic, encoder, monkeypatch):
    reads = []
    real = grid_mod.read_region_at

    def spy(slide, x, y, w, h, ds):
        reads.append((x, y, w, h, ds))
        return real(slide, x, y, w, h, ds)

    monkeypatch.setattr(grid_mod, "read_region_at", spy)
    g = grid_features(mosaic.path, encoder)
    ox, oy = g.origin
    assert ox % 96 == 0 and oy % 96 == 0  # the mosaic's tissue starts on a cell
    assert 0 < g.tissue.sum() < g.tissue.size
    assert not g.features[~g.tissue].any() and g.features[g.tissue].any(axis=-1).all()
    assert g.scores is None  # the small encoder has no score head
    assert g.meta["patches_read"] == g.tissue.sum()
    assert g.meta["pixels_read"] == g.tissue.sum() * 96 * 96
    read = np.zeros(g.shape, bool)
    for x, y, w, h, _ in reads:  # every read is one row of tissue cells
        assert h == 96
        r, c0 = round((y - oy) / 96), round((x - ox) / 96)
        read[r, c0:c0 + w // 96] = True
    np.testing.assert_array_equal(read, g.tissue)
    with open_slide(mosaic.path) as slide:
        _assert_cells_match_direct_reads(g, slide, encoder, 1.0, np.argwhere(g.tissue)[:4])
    nothing = grid_features(mosaic.path, encoder, tissue_min=1.01)
    assert nothing.meta["pixels_read"] == 0 and not nothing.features.any()


def test_region_and_coarser_grid(mosaic, encoder):
    g = grid_features(mosaic.path, encoder, tissue=None, region=(50, 30, 500, 400))
    assert g.origin == (50.0, 30.0) and g.shape == (4, 5)  # ceil(370 / 96) x ceil(450 / 96)
    with open_slide(mosaic.path) as slide:
        _assert_cells_match_direct_reads(g, slide, encoder, 1.0, [(0, 0), (3, 4)])
    # 4x the encoder's um/px: the pyramid's 4x level is read as it is, 96 of its px per cell
    coarse = grid_features(mosaic.path, encoder, tissue=None, mpp=4 * 0.972)
    assert coarse.cell_size == 384.0 and coarse.shape == (3, 3) and coarse.meta["level"] == 1
    with open_slide(mosaic.path) as slide:
        _assert_cells_match_direct_reads(coarse, slide, encoder, 4.0, [(0, 0), (1, 2)])
    # 1.5x: no level fits, level 0 is resized (144 level-0 px per cell)
    mid = grid_features(mosaic.path, encoder, tissue=None, mpp=1.5 * 0.972)
    assert mid.cell_size == pytest.approx(144.0) and mid.shape == (7, 8)


def test_slide_without_mpp_needs_the_grid_mpp(tmp_path, encoder):
    path = tmp_path / "plain.png"
    Image.fromarray(np.full((200, 300, 3), 200, np.uint8)).save(path)
    with pytest.raises(SlideError, match="plain.png.*mpp"):
        grid_features(path, encoder, tissue=None)
    g = grid_features(path, encoder, tissue=None, mpp=0.5)
    assert g.cell_size == 96.0 and g.shape == (3, 4)
    # blank glass: an empty grid, stored and read back like any other
    for cached in (False, True):
        blank = cached_grid_features(path, encoder, cache=tmp_path / "cache", mpp=0.5)
        assert blank.shape == (0, 0) and blank.features.shape == (0, 0, encoder.feature_dim)
        assert blank.meta["cached"] is cached and blank.meta["pixels_read"] == 0


def test_cache_hit_reads_no_pixels_and_stale_entries_miss(mosaic, encoder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = cached_grid_features(mosaic.path, encoder, cache=cache)
    assert first.meta["cached"] is False and len(list(cache.glob("mosaic_000-*.zarr"))) == 1

    def no_pixels(*args, **kwargs):
        raise AssertionError("a cached grid read slide pixels")

    with monkeypatch.context() as m:
        m.setattr(Slide, "read_region", no_pixels)
        m.setattr(cache_mod, "iter_grid_features", no_pixels)
        hit = cached_grid_features(mosaic.path, encoder, cache=cache)
        with pytest.raises(AssertionError, match="read slide pixels"):  # the guard works
            cached_grid_features(mosaic.path, encoder, cache=False)
    assert hit.meta["cached"] is True
    np.testing.assert_array_equal(hit.features, first.features)
    np.testing.assert_array_equal(hit.tissue, first.tissue)
    assert hit.origin == first.origin and hit.cell_size == first.cell_size
    assert hit.meta["encoder_checksum"] == encoder.checksum

    other = _encoder(1)
    assert other.checksum != encoder.checksum
    assert cached_grid_features(mosaic.path, other, cache=cache).meta["cached"] is False
    assert cached_grid_features(mosaic.path, encoder, cache=cache, tissue_min=0.5).meta["cached"] is False
    assert cached_grid_features(mosaic.path, encoder, cache=cache, patch_px=64).meta["cached"] is False
    st = os.stat(mosaic.path)
    os.utime(mosaic.path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file was touched
    touched = cached_grid_features(mosaic.path, encoder, cache=cache)
    assert touched.meta["cached"] is False
    assert cached_grid_features(mosaic.path, encoder, cache=cache).meta["cached"] is True


def test_partial_and_foreign_entries_are_recomputed(mosaic, encoder, tmp_path):
    import shutil

    cache = tmp_path / "cache"
    good = cached_grid_features(mosaic.path, encoder, cache=cache)
    (entry,) = cache.glob("*.zarr")
    shutil.rmtree(entry / "features")  # a half-written or damaged entry
    again = cached_grid_features(mosaic.path, encoder, cache=cache)
    assert again.meta["cached"] is False
    np.testing.assert_array_equal(again.features, good.features)
    assert cached_grid_features(mosaic.path, encoder, cache=cache).meta["cached"] is True
    # an entry of other parameters copied under this name: its stored key does not match
    other = tmp_path / "other"
    cached_grid_features(mosaic.path, encoder, cache=other, tissue_min=0.9)
    shutil.rmtree(entry)
    shutil.copytree(next(other.glob("*.zarr")), entry)
    assert cached_grid_features(mosaic.path, encoder, cache=cache).meta["cached"] is False
    # stopped mid-run (a GUI cancel): nothing is stored under the final name
    fresh = tmp_path / "fresh"
    gen = iter_cached_grid_features(mosaic.path, encoder, cache=fresh, batch_size=4)
    stages = [next(gen).stage for _ in range(5)]
    gen.close()
    assert "features" in stages and not list(fresh.glob("*.zarr"))
    assert cached_grid_features(mosaic.path, encoder, cache=fresh).meta["cached"] is False


def test_progress_reaches_the_tissue_count(mosaic, encoder):
    gen = iter_grid_features(mosaic.path, encoder, batch_size=4)
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            grid = stop.value
            break
    feats = [e for e in events if e.stage == "features"]
    assert len(feats) >= grid.tissue.sum() // 4
    assert feats[-1].done == feats[-1].total == grid.tissue.sum()


def test_cli_second_run_reads_the_cache_and_bad_files_do_not_stop_it(mosaic, tmp_path, capsys):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"not a slide at all")
    out = tmp_path / "feats"
    args = ["features", "--encoder", "small", "--device", "cpu", str(bad), str(mosaic.path), "--out", str(out)]
    torch.manual_seed(0)
    assert main(args) == 1
    first = capsys.readouterr()
    assert "broken.svs" in first.err and "Traceback" not in first.err
    (line,) = [ln for ln in first.out.splitlines() if "mosaic_000" in ln]
    assert "computed" in line and "patches/s" in line
    torch.manual_seed(0)  # the same weights again
    assert main(args[:5] + [str(mosaic.path), "--out", str(out)]) == 0
    second = capsys.readouterr().out
    assert "cached" in second and "grid " in second
