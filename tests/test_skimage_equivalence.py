"""scikit-image instead of hand-written image code, where it computes the same thing.

Otsu's threshold now comes from ``skimage.filters.threshold_otsu``: compared here with the
hand-written one it replaced, on the real slides in tests/data and on random histograms. NMS
peaks and polygon filling stay hand-written; the tests below show the difference that made
``peak_local_max`` and ``skimage.draw.polygon`` unfit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.draw import polygon as sk_polygon
from skimage.feature import peak_local_max

from napari_glimpse.annotations.masks import _fill_rings, mask_to_polygons
from napari_glimpse.methods.celnet.celm import nms_peaks
from napari_glimpse.slides import open_slide
from napari_glimpse.slides.tissue import otsu_threshold, saturation, tissue_mask

DATA = Path(__file__).parent / "data"
SLIDES = [DATA / "cmu-1-small-region.svs", DATA / "OS-1-detail.ome.tif"]


def _hand_written_otsu(values: np.ndarray, bins: int = 256) -> float:
    """The Otsu threshold slides/tissue.py computed before scikit-image."""
    values = np.asarray(values).ravel()
    if values.size == 0:
        return 0.0
    hist, edges = np.histogram(values, bins=bins, range=(0, 256))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(float)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


@pytest.mark.parametrize("slide_path", SLIDES, ids=lambda p: p.name)
@pytest.mark.parametrize("size", [256, 1024])
def test_otsu_equals_the_hand_written_one_on_real_slides(slide_path, size):
    sat = saturation(open_slide(slide_path).thumbnail(size))
    assert otsu_threshold(sat) == _hand_written_otsu(sat)


def test_otsu_equals_the_hand_written_one_on_random_bimodal_data():
    rng = np.random.default_rng(0)
    for _ in range(200):
        parts = [rng.normal(rng.uniform(0, 255), rng.uniform(1, 60), int(rng.integers(5, 3000)))
                 for _ in range(2)]
        values = np.concatenate(parts).clip(0, 255)
        assert otsu_threshold(values) == _hand_written_otsu(values)
    ints = rng.integers(0, 256, 5000).astype(np.uint8)  # integer data, every bin populated
    assert otsu_threshold(ints) == _hand_written_otsu(ints)


def test_otsu_with_nothing_to_split_puts_every_value_below_the_threshold():
    assert otsu_threshold(np.full(100, 200.0)) > 200
    assert otsu_threshold(np.zeros(0)) == 0.0


def _patch(i: int) -> np.ndarray:
    files = sorted((DATA / "pcam_valid").glob("*/*.jpg"))
    return np.asarray(Image.open(files[i]).convert("L"), np.float64) / 255


def test_nms_peaks_also_takes_the_slopes_that_peak_local_max_leaves_out():
    # One broad blob (a tumour region on a probability map): peak_local_max keeps its one
    # local maximum; CELNet's NMS marks the region with peaks min_distance apart.
    yy, xx = np.mgrid[0:40, 0:40]
    blob = np.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / (2 * 8.0**2))
    rc, _ = nms_peaks(blob, min_distance=3, min_score=0.5)
    local = peak_local_max(blob, min_distance=3, threshold_abs=0.5, exclude_border=False, p_norm=2)
    assert local.tolist() == [[20, 20]]
    assert rc[0].tolist() == [20, 20] and len(rc) > 5
    d = np.hypot(*(rc[:, None, :] - rc[None, :, :]).transpose(2, 0, 1))
    assert d[np.triu_indices(len(rc), 1)].min() > 3  # still suppressed within min_distance
    # Real patches, smoothed into a stand-in probability map: the same, NMS finds more.
    for i in (0, 45):
        img = ndimage.gaussian_filter(_patch(i), 3)
        ours, _ = nms_peaks(img, min_distance=3, min_score=0.5, max_peaks=10_000)
        theirs = peak_local_max(img, min_distance=3, threshold_abs=0.5, exclude_border=False, p_norm=2)
        assert len(ours) > 2 * len(theirs) > 0


def _sk_fill(rings: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Even-odd fill with skimage.draw.polygon, pixel centres at (i + 0.5, j + 0.5) as ours."""
    out = np.zeros(shape, bool)
    for ring in rings:
        rr, cc = sk_polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape)
        one = np.zeros(shape, bool)
        one[rr, cc] = True
        out ^= one
    return out


@pytest.mark.parametrize("slide_path", SLIDES, ids=lambda p: p.name)
def test_polygon_fill_equals_skimage_away_from_edges_on_real_tissue_polygons(slide_path):
    # Tissue regions traced to polygons: vertices on cell corners, so no pixel centre lies on
    # an edge, and the two fills agree pixel for pixel.
    tissue = tissue_mask(open_slide(slide_path), max_size=256)
    annotations = mask_to_polygons(tissue.mask, downsample=tissue.cell_size)
    assert len(annotations) > 10
    for a in annotations:
        rings = [a.polygon / tissue.cell_size] + [h / tissue.cell_size for h in a.holes]
        assert np.array_equal(_fill_rings(rings, tissue.mask.shape), _sk_fill(rings, tissue.mask.shape))


def test_polygon_fill_equals_skimage_on_random_float_polygons():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(3, 30))
        angle, radius = np.sort(rng.uniform(0, 2 * np.pi, n)), rng.uniform(2, 30, n)
        centre = rng.uniform(0, 60, 2)
        ring = np.stack([centre[0] + radius * np.cos(angle), centre[1] + radius * np.sin(angle)], 1)
        shape = (int(rng.integers(5, 70)), int(rng.integers(5, 70)))
        assert np.array_equal(_fill_rings([ring], shape), _sk_fill([ring], shape))


def test_polygon_fill_gives_a_pixel_on_a_shared_edge_to_one_polygon_where_skimage_gives_both():
    # Two triangles splitting a 4 x 4 square along its diagonal, which runs through the
    # centres of the diagonal pixels.
    lower = np.array([[0, 0], [4, 4], [0, 4]], float)
    upper = np.array([[0, 0], [4, 0], [4, 4]], float)
    ours = _fill_rings([lower], (4, 4)), _fill_rings([upper], (4, 4))
    assert not (ours[0] & ours[1]).any() and (ours[0] | ours[1]).all()
    theirs = _sk_fill([lower], (4, 4)), _sk_fill([upper], (4, 4))
    assert (theirs[0] & theirs[1]).sum() == 4  # the diagonal, claimed twice
