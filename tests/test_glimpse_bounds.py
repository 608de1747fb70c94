"""Glimpse tree near the slide's edge: regions stay on the slide, children never leave it."""

from __future__ import annotations

import numpy as np
import pytest
from test_glimpse_tree import TINY, drive, mosaics, one_thread  # noqa: F401  (fixtures)

from napari_glimpse.methods.glimpse_tree.config import GlimpseTreeConfig
from napari_glimpse.methods.glimpse_tree.inference import plan_regions
from napari_glimpse.methods.glimpse_tree.sampling import sample_children, valid_centres


@pytest.fixture(scope="module")
def big_region_model():
    """Glimpses of 64 px: a region is 1024 px, larger than the 576 px test mosaics."""
    import torch

    from napari_glimpse.methods.glimpse_tree.model import build_model

    torch.manual_seed(0)
    return build_model(GlimpseTreeConfig(**{**TINY, "glimpse_size": 64})).eval()


def test_regions_stay_on_the_slide():
    # a slide smaller than a region: one region, centred on the slide
    assert plan_regions((1152, 900), None, 4864) == [(-1856.0, -1982.0, 3008.0, 2882.0)]
    # a slide 1.5 regions wide: the edge columns are shifted inside (they overlap) instead of hanging over
    boxes = plan_regions((1500, 1000), None, 1000)
    assert boxes == [(0.0, 0.0, 1000.0, 1000.0), (500.0, 0.0, 1500.0, 1000.0)]
    boxes = plan_regions((2500, 2100), None, 1000)
    assert len(boxes) == 9
    assert all(x0 >= 0 and x1 <= 2500 and y0 >= 0 and y1 <= 2100 for x0, y0, x1, y1 in boxes)
    assert {b[0] for b in boxes} == {0.0, 750.0, 1500.0}


def test_valid_centres_zero_q_and_fewer_children():
    q = np.zeros((64, 64))
    q[:, :20] = 1.0  # the policy likes the left edge, which is off the slide
    inside = np.zeros((64, 64))
    inside[:, 24:] = 1.0
    valid = valid_centres([(inside, 1.0)], 16)
    centres, _, big_q = sample_children(q, 20, 16, 0.05, np.random.default_rng(0), valid)
    assert len(centres) > 0 and (centres[:, 0] - 8 >= 24).all()  # every child box inside
    assert big_q[:, : 24 + 8].max() == 0 and big_q.max() == pytest.approx(1.0)
    assert len(centres) < 20  # suppression used up the valid centres: fewer children, no repeats
    again = sample_children(q, 20, 16, 0.05, np.random.default_rng(0), valid)[0]
    assert (again == centres).all()
    # no child can be wholly inside: the most-inside centres remain valid
    inside[:] = 0
    inside[20:30, 20:30] = 1.0
    valid = valid_centres([(inside, 1.0)], 16)
    assert valid.sum() == 7 * 7  # exactly the boxes that hold the whole 10 x 10 slide
    # a tissue rule no centre can meet is dropped, not allowed to veto everything
    tissue = np.zeros((64, 64))
    valid2 = valid_centres([(inside, 1.0), (tissue, 0.25)], 16)
    assert (valid2 == valid).all()


@pytest.mark.parametrize("leaves", [8, 16])
def test_leaves_stay_on_a_slide_smaller_than_a_region(mosaics, big_region_model, leaves):  # noqa: F811
    from napari_glimpse.methods import infer
    from napari_glimpse.slides import open_slide

    _, made = mosaics
    path = str(made[0].path)
    with open_slide(path) as slide:
        w, h = slide.dimensions
    assert max(w, h) < big_region_model.config.region_size  # the case of the defect
    tol = 4  # one parent pixel of a leaf's parent (level-0 px): the inside test samples pixel centres
    for seed in range(5):
        res = drive(infer("glimpse-tree", path, model=big_region_model, leaves=leaves, seed=seed))
        tree = res.summary["tree"]
        root = [n for n in tree if n["level"] == 0]
        assert len(root) == 1
        x0, y0, x1, y1 = root[0]["box"]
        assert (x0 + x1) / 2 == pytest.approx(w / 2, abs=1) and (y0 + y1) / 2 == pytest.approx(h / 2, abs=1)
        found = [n for n in tree if n["level"] == 2]
        assert 0 < len(found) <= leaves
        for n in found:
            bx0, by0, bx1, by1 = n["box"]
            assert bx0 >= -tol and by0 >= -tol and bx1 <= w + tol and by1 <= h + tol, (seed, n)
        assert res.summary["patches_read"] == len(tree)
        again = drive(infer("glimpse-tree", path, model=big_region_model, leaves=leaves, seed=seed)).summary["tree"]
        assert again == tree


def test_all_skips_tiles_off_the_slide(mosaics, big_region_model):  # noqa: F811
    from napari_glimpse.methods import infer

    _, made = mosaics
    res = drive(infer("glimpse-tree", str(made[0].path), model=big_region_model, dense=True))
    (m,) = res.maps
    w = 576  # 6 x 6 cells of 96 px; the region is 1024 px centred: 224 px (3.5 tiles) hang over each side
    assert m.data.shape == (16, 16) and m.cell_size == 64 and m.origin == (-224.0, -224.0)
    done = np.isfinite(m.data)
    assert done[4:12, 4:12].all() and done[3:13, 3:13].all()  # partly inside: still classified
    assert not done[:3].any() and not done[13:].any() and not done[:, :3].any() and not done[:, 13:].any()
    assert res.summary["patches_read"] == done.sum() == 100 and w == 9 * 64
