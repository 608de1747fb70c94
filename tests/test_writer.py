"""The streaming pyramid writer: what OpenSlide and tifffile read back, memory, atomicity."""

from __future__ import annotations

import math
import os
import tracemalloc

import numpy as np
import openslide
import pytest
import tifffile

from napari_glimpse.slides.writer import pyramid_shapes, write_mask, write_pyramid


def _tiles(img, tile=512):
    h, w = img.shape[:2]
    for r in range(math.ceil(h / tile)):
        for c in range(math.ceil(w / tile)):
            yield img[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]


@pytest.fixture(scope="module")
def smooth_rgb():
    # smooth content so JPEG error is small; odd sizes exercise partial edge tiles
    h, w = 1301, 2051
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 127 // (w + h)) + 64], -1)
    return img.astype(np.uint8)


def test_lossless_pyramid_reads_back_in_tifffile_and_openslide(tmp_path, smooth_rgb):
    h, w = smooth_rgb.shape[:2]
    out = write_pyramid(tmp_path / "s.tif", w, h, _tiles(smooth_rgb), mpp=0.5, compression="zlib")
    expected = pyramid_shapes(w, h)
    assert expected == [(2051, 1301), (513, 326), (129, 82)]
    with tifffile.TiffFile(out) as tf:
        assert [(p.shape[1], p.shape[0]) for p in tf.pages] == expected
        assert all(p.is_tiled for p in tf.pages)
        np.testing.assert_array_equal(tf.pages[0].asarray(), smooth_rgb)
        # level 1 is the 4 x 4 box mean of level 0
        lvl1 = tf.pages[1].asarray().astype(int)
        box = smooth_rgb[:1300, :2048].reshape(325, 4, 512, 4, 3).mean((1, 3))
        assert np.abs(lvl1[:325, :512] - box).max() <= 1
        assert [(lv.shape[1], lv.shape[0]) for lv in tf.series[0].levels] == expected
    osr = openslide.OpenSlide(out)
    assert osr.level_dimensions == tuple(expected)
    assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.5, rel=1e-6)
    assert float(osr.properties["openslide.mpp-y"]) == pytest.approx(0.5, rel=1e-6)
    region = np.asarray(osr.read_region((1000, 700), 0, (600, 500)))[:, :, :3]
    np.testing.assert_array_equal(region, smooth_rgb[700:1200, 1000:1600])
    osr.close()


def test_jpeg_pyramid_matches_source_and_openslide(tmp_path, smooth_rgb):
    h, w = smooth_rgb.shape[:2]
    out = write_pyramid(tmp_path / "j.tif", w, h, _tiles(smooth_rgb), mpp=(0.25, 0.3))
    with tifffile.TiffFile(out) as tf:
        lvl0 = tf.pages[0].asarray()
        lvl1 = tf.pages[1].asarray()
        xres = tf.pages[0].tags["XResolution"].value
        assert tf.pages[0].tags["ResolutionUnit"].value == 3  # centimetre
    assert 1e4 / (xres[0] / xres[1]) == pytest.approx(0.25, rel=1e-5)
    assert np.abs(lvl0.astype(int) - smooth_rgb).mean() < 2
    osr = openslide.OpenSlide(out)
    assert float(osr.properties["openslide.mpp-y"]) == pytest.approx(0.3, rel=1e-5)
    # the coarser level was pre-encoded by the writer: OpenSlide must decode it identically
    got = np.asarray(osr.read_region((0, 0), 1, osr.level_dimensions[1]))[:, :, :3]
    np.testing.assert_array_equal(got, lvl1)
    osr.close()


def test_open_slide_reads_the_pyramid(tmp_path, smooth_rgb):
    slides = pytest.importorskip("napari_glimpse.slides")
    h, w = smooth_rgb.shape[:2]
    out = write_pyramid(tmp_path / "o.tif", w, h, _tiles(smooth_rgb), mpp=0.972, compression="zlib")
    with slides.open_slide(out) as s:
        assert s.dimensions == (w, h)
        assert s.mpp == pytest.approx((0.972, 0.972))
        assert [lv.downsample for lv in s.levels][:2] == pytest.approx([1.0, 4.0], rel=0.01)
        np.testing.assert_array_equal(s.read_region((5, 7), 0, (64, 32)), smooth_rgb[7:39, 5:69])


def test_mask_is_lossless_with_nearest_levels(tmp_path):
    rng = np.random.default_rng(0)
    cells = rng.random((14, 23)) < 0.3
    mask = np.repeat(np.repeat(cells, 96, 0), 96, 1).astype(np.uint8) * 255
    h, w = mask.shape
    out = write_mask(tmp_path / "m.tif", w, h, _tiles(mask), mpp=0.972)
    with tifffile.TiffFile(out) as tf:
        np.testing.assert_array_equal(tf.pages[0].asarray(), mask)
        np.testing.assert_array_equal(tf.pages[1].asarray(), mask[::4, ::4])
        np.testing.assert_array_equal(tf.pages[2].asarray(), mask[::16, ::16])
        assert set(np.unique(tf.pages[2].asarray())) <= {0, 255}
    osr = openslide.OpenSlide(out)
    got = np.asarray(osr.read_region((0, 0), 0, (w, h)))[:, :, 0]
    np.testing.assert_array_equal(got, mask)
    osr.close()
    with pytest.raises(ValueError, match="losslessly"):
        write_mask(tmp_path / "bad.tif", w, h, _tiles(mask), 1.0, compression="jpeg")


def test_memory_stays_bounded_for_an_8k_slide(tmp_path):
    side, tile = 8192, 512
    rng = np.random.default_rng(1)
    pool = [rng.integers(0, 256, (tile, tile, 3), dtype=np.uint8) for _ in range(3)]

    def tiles():
        for k in range((side // tile) ** 2):
            yield pool[k % 3]

    tracemalloc.start()
    write_pyramid(tmp_path / "big.tif", side, side, tiles(), mpp=0.5)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    level0 = side * side * 3
    # band buffers of the coarser levels only: a few % of level 0
    assert peak < 0.1 * level0, f"peak {peak / 2**20:.0f} MiB vs level 0 {level0 / 2**20:.0f} MiB"
    with tifffile.TiffFile(tmp_path / "big.tif") as tf:
        assert [p.shape[0] for p in tf.pages] == [8192, 2048, 512]
        np.testing.assert_array_equal(tf.pages[0].asarray()[512:520, 1024:1032].shape, (8, 8, 3))


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "s.tif"
    target.write_bytes(b"old")

    def broken():
        yield np.zeros((512, 512, 3), np.uint8)
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError, match="source died"):
        write_pyramid(target, 1024, 1024, broken(), mpp=0.5)
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["s.tif"]
    with pytest.raises(ValueError, match="tiles ended after 1 of 4"):
        write_pyramid(target, 1024, 1024, iter([np.zeros((512, 512, 3), np.uint8)]), 0.5)
    with pytest.raises(ValueError, match="channel"):
        write_pyramid(target, 512, 512, iter([np.zeros((512, 512), np.float32)]), 0.5)
    assert sorted(os.listdir(tmp_path)) == ["s.tif"]


def test_bigtiff_opens_in_openslide(tmp_path, smooth_rgb):
    # slides over 2 GiB uncompressed are written as BigTIFF; OpenSlide must still read them
    h, w = smooth_rgb.shape[:2]
    out = write_pyramid(tmp_path / "b.tif", w, h, _tiles(smooth_rgb), 0.5, bigtiff=True)
    with tifffile.TiffFile(out) as tf:
        assert tf.is_bigtiff
        lvl1 = tf.pages[1].asarray()
    osr = openslide.OpenSlide(out)
    assert osr.level_dimensions[1] == (513, 326)
    np.testing.assert_array_equal(
        np.asarray(osr.read_region((0, 0), 1, (513, 326)))[:, :, :3], lvl1
    )
    osr.close()
