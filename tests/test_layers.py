"""Pure tests of napari_glimpse.layers: results -> layer-data tuples, no viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_glimpse import coords
from napari_glimpse.layers import (
    annotations_to_shapes_data,
    layer_mpp,
    mask_to_layer_data,
    result_to_layers,
    shapes_to_level0,
)
from napari_glimpse.results import InferenceResult, SlideBoxes, SlideLines, SlideMap, SlidePoints

MPP = (0.5, 0.25)


def _result():
    return InferenceResult(
        method="celnet",
        slide_path="/x/slide.tif",
        slide_score=0.9,
        maps=[
            SlideMap("prob", np.random.default_rng(0).random((4, 6)), cell_size=32, origin=(64, 0)),
            SlideMap("stack", np.zeros((3, 4, 6), np.float32), cell_size=(32, 16)),
            SlideMap("seg", np.ones((4, 6), np.uint8), cell_size=32, kind="labels"),
        ],
        points=[SlidePoints("peaks", np.array([[10.0, 20.0], [30.0, 40.0]]),
                            {"score": np.array([0.5, 0.9])})],
        boxes=[SlideBoxes("rois", np.array([[0, 0, 96, 96]]), {"score": np.array([0.7])},
                          text="score")],
        lines=[SlideLines("edges", np.array([[[0, 0], [96, 96]]]))],
        mpp=MPP,
    )


def test_result_to_layers_order_types_and_transforms():
    layers = result_to_layers(_result())
    names = [kw["name"] for _, kw, _ in layers]
    assert names == ["prob", "stack", "seg", "edges", "rois", "peaks"]
    types = [t for _, _, t in layers]
    assert types == ["image", "image", "labels", "shapes", "shapes", "points"]
    _, prob_kw, _ = layers[0]
    assert (prob_kw["scale"], prob_kw["translate"]) == coords.grid_transform(32, (64, 0), MPP)
    # map cell (0, 0) covers level-0 x in [64, 96): its centre x = 79.5 px -> world col 79.5 * 0.5
    assert prob_kw["translate"][1] == pytest.approx(79.5 * 0.5)
    _, stack_kw, _ = layers[1]
    assert len(stack_kw["scale"]) == 3 and stack_kw["scale"][0] == 1.0  # channel slider axis
    assert stack_kw["scale"][1:] == (16 * 0.25, 32 * 0.5)
    for _, kw, _ in layers:
        assert kw["metadata"]["method"] == "celnet"
        assert kw["metadata"]["mpp"] == list(MPP)


def test_points_boxes_lines_land_on_level0_positions():
    layers = {kw["name"]: (d, kw) for d, kw, _ in result_to_layers(_result())}
    peaks, kw = layers["peaks"]
    np.testing.assert_allclose(peaks[0], [(20 - 0.5) * 0.25, (10 - 0.5) * 0.5])
    np.testing.assert_allclose(kw["features"]["score"], [0.5, 0.9])
    rects, kw = layers["rois"]
    # the box's edges lie on pixel edges: x0 = 0 -> world col -0.5 px
    assert rects[0][:, 1].min() == pytest.approx(-0.5 * 0.5)
    assert rects[0][:, 1].max() == pytest.approx(95.5 * 0.5)
    assert "text" in kw
    edges, _ = layers["edges"]
    assert edges[0].shape == (2, 2)


def test_mpp_override_and_missing_mpp():
    r = _result()
    r.mpp = None
    _, kw, _ = result_to_layers(r)[0]
    assert kw["scale"] == (32.0, 32.0)  # level-0 pixels as units
    _, kw, _ = result_to_layers(r, mpp=(2.0, 2.0))[0]
    assert kw["scale"] == (64.0, 64.0)


def test_mask_layer_transform_and_dtype():
    mask = np.zeros((3, 5), bool)
    mask[1, 2] = True
    data, kw, kind = mask_to_layer_data(mask, 96, (0.5, 0.5))
    assert kind == "labels" and data.dtype == np.uint8 and data.sum() == 1
    assert kw["scale"] == (48.0, 48.0)
    assert kw["translate"] == (47.5 * 0.5, 47.5 * 0.5)
    with pytest.raises(ValueError, match="2-D"):
        mask_to_layer_data(np.zeros((2, 2, 2)), 1)


def test_annotations_round_trip_through_world_coordinates():
    polys = [np.array([[10.0, 20.0], [110.0, 20.0], [110.0, 70.0]]),
             np.array([[0.0, 0.0], [5.0, 0.0], [5.0, 5.0], [0.0, 5.0]])]
    data, kw, kind = annotations_to_shapes_data(polys, MPP, names=["a", "b"], classes=["Tumor", ""])
    assert kind == "shapes" and kw["shape_type"] == ["polygon", "polygon"]
    assert list(kw["features"]["classification"]) == ["Tumor", ""]
    back = shapes_to_level0(data, (1.0, 1.0), (0.0, 0.0), layer_mpp(kw["metadata"], (1.0, 1.0)))
    for a, b in zip(polys, back, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-9)


def test_layer_mpp_falls_back_to_scale_for_hand_drawn_layers():
    assert layer_mpp({"mpp": [0.5, 0.25]}, (1.0, 1.0)) == (0.5, 0.25)
    # napari gives a new layer the slide's step: (row, col) scale -> (x, y) mpp
    assert layer_mpp({}, (0.25, 0.5)) == (0.5, 0.25)
    # drawn in data coordinates with that scale: data (r, c) -> world (r * 0.25, c * 0.5)
    xy = shapes_to_level0([np.array([[4.0, 8.0]])], (0.25, 0.5), (0.0, 0.0), (0.5, 0.25))[0]
    np.testing.assert_allclose(xy, [[8.5, 4.5]])
