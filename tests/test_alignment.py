"""The overlay lands on the tumour: mask and slide agree in napari world coordinates.

A mosaic holds ONE tumour patch at a known cell. Its truth mask, shown at several
resolutions (one mask pixel per cell, per 32 px, per level-0 pixel), must cover exactly that
cell of the slide layer, to within one level-0 pixel, as napari itself maps the two layers
(``data_to_world`` of the mask, ``world_to_data`` of the slide). Each pyramid level of the
slide must hold that cell's pixels where napari puts that level.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_glimpse.layers import mask_to_layer_data, slide_to_layer_data
from napari_glimpse.slides import open_slide

pytestmark = pytest.mark.gui


def _tumour_edges_in_slide(mask_layer, image_layer):
    """The truth's tumour pixels' outer edges, in slide level-0 data (pixel-centre) coordinates."""
    rows, cols = np.nonzero(np.asarray(mask_layer.data))
    lo = np.array([rows.min() - 0.5, cols.min() - 0.5])  # pixel edges, not centres
    hi = np.array([rows.max() + 0.5, cols.max() + 0.5])
    world_lo, world_hi = mask_layer.data_to_world(lo), mask_layer.data_to_world(hi)
    return np.asarray(image_layer.world_to_data(world_lo)), np.asarray(
        image_layer.world_to_data(world_hi))


@pytest.mark.parametrize("mask_cell", [96, 32, 1])
def test_truth_mask_covers_the_tumour_cell(make_napari_viewer, tiny_mosaic, mask_cell):
    viewer = make_napari_viewer()
    with open_slide(tiny_mosaic.path) as slide:
        data, kw, _ = slide_to_layer_data(slide)
        image_layer = viewer.add_image(data, **kw)
        reps = tiny_mosaic.cell // mask_cell
        truth = np.kron(tiny_mosaic.truth, np.ones((reps, reps), np.uint8))
        mdata, mkw, _ = mask_to_layer_data(truth, mask_cell, slide.mpp)
        mask_layer = viewer.add_labels(mdata, **mkw)
        lo, hi = _tumour_edges_in_slide(mask_layer, image_layer)
        r, c = tiny_mosaic.tumour_cell
        cell = tiny_mosaic.cell
        # slide pixel i covers data coords [i - 0.5, i + 0.5]: the cell's edges
        expected_lo = np.array([r * cell - 0.5, c * cell - 0.5])
        expected_hi = np.array([(r + 1) * cell - 0.5, (c + 1) * cell - 0.5])
        np.testing.assert_allclose(lo[-2:], expected_lo, atol=1.0)
        np.testing.assert_allclose(hi[-2:], expected_hi, atol=1.0)

        # Each pyramid level: napari's level scale matches the slide's downsample, and the
        # level's pixels inside the mapped box are the tumour patch's pixels.
        assert image_layer.multiscale and len(slide.levels) >= 3
        patch = tiny_mosaic.image[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell].astype(float)
        for k, level in enumerate(slide.levels):
            ds = level.downsample
            np.testing.assert_allclose(image_layer.downsample_factors[k][:2], ds, rtol=0.02)
            y0, x0 = np.round((lo[-2:] + 0.5) / ds).astype(int)
            y1, x1 = np.round((hi[-2:] + 0.5) / ds).astype(int)
            got = np.asarray(image_layer.data[k][y0:y1, x0:x1]).astype(float)
            n = int(round(cell / ds))
            want = patch.reshape(n, int(ds), n, int(ds), 3).mean(axis=(1, 3))
            assert got.shape == want.shape
            assert np.abs(got - want).mean() < 2.0
            # one cell to the left holds a different (normal) patch: the check can fail
            left = np.asarray(image_layer.data[k][y0:y1, x0 - n:x1 - n]).astype(float)
            assert np.abs(left - want).mean() > 5.0
