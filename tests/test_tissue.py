"""Tissue masks: Otsu on saturation and the grey filter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_glimpse.slides import open_slide
from napari_glimpse.slides.tissue import TissueMask, otsu_threshold, tissue_mask

SVS = Path(__file__).parent / "data" / "cmu-1-small-region.svs"


@pytest.fixture
def blob_slide(tmp_path):
    """White 2000 x 1600 slide with a pink disc of radius 400 centred at (1200, 700)."""
    h, w = 1600, 2000
    y, x = np.mgrid[0:h, 0:w]
    img = np.full((h, w, 3), 245, np.uint8)
    img += np.random.default_rng(0).integers(0, 6, (h, w, 1)).astype(np.uint8)
    disc = (x - 1200) ** 2 + (y - 700) ** 2 < 400**2
    img[disc] = (200, 110, 170)
    path = tmp_path / "blob.tif"
    tifffile.imwrite(path, img, tile=(256, 256), compression="zlib", photometric="rgb")
    return path, disc


def test_otsu_splits_two_modes():
    values = np.concatenate([np.full(500, 20), np.full(300, 180)])
    assert 20 < otsu_threshold(values) <= 180


@pytest.mark.parametrize("method", ["otsu", "grey"])
def test_blob_mask(blob_slide, method):
    path, disc = blob_slide
    with open_slide(path) as s:
        tm = tissue_mask(s, method=method, max_size=500)
    assert isinstance(tm, TissueMask)
    assert max(tm.mask.shape) <= 500
    assert tm.cell_size == pytest.approx(4.0)
    frac = tm.mask.mean()
    assert frac == pytest.approx(disc.mean(), abs=0.01)
    assert tm.fraction(1100, 600, 1300, 800) == 1.0  # inside the disc
    assert tm.fraction(0, 0, 300, 300) == 0.0  # white corner
    half = tm.fraction(1200, 0, 2000, 1600)  # holds half the disc: 0.196 of the box
    assert half == pytest.approx(np.pi * 400**2 / 2 / (800 * 1600), abs=0.01)
    assert tm.fraction(1199, 699, 1201, 701) == 1.0  # box smaller than a cell


@pytest.mark.parametrize("method", ["otsu", "grey"])
def test_svs_tissue_fraction_plausible(method):
    with open_slide(SVS) as s:
        tm = tissue_mask(s, method=method, max_size=512)
        w, h = s.dimensions
    assert tm.mask.shape == (512, round(512 * w / h))
    # CMU-1-Small-Region: tissue strands on a white background (about a third tissue).
    assert 0.2 < tm.mask.mean() < 0.5
    assert tm.mask[:, -60:].mean() < 0.05  # the right edge is bare glass
    assert tm.fraction(0, 0, w, h) == pytest.approx(tm.mask.mean(), abs=0.01)


def test_blank_slide_has_no_tissue(tmp_path):
    path = tmp_path / "white.png"
    from PIL import Image

    Image.fromarray(np.full((300, 300, 3), 250, np.uint8)).save(path)
    with open_slide(path) as s:
        assert not tissue_mask(s, "otsu").mask.any()
        assert not tissue_mask(s, "grey").mask.any()


def test_bad_method(blob_slide):
    with open_slide(blob_slide[0]) as s, pytest.raises(ValueError, match="unknown tissue"):
        tissue_mask(s, method="magic")
