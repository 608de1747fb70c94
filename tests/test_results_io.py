"""Round trip of inference results through zarr + GeoJSON + summary.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_glimpse.errors import GlimpseError
from napari_glimpse.results import InferenceResult, SlideBoxes, SlideLines, SlideMap, SlidePoints
from napari_glimpse.runtime.results_io import load_result, save_result


def _result() -> InferenceResult:
    rng = np.random.default_rng(0)
    return InferenceResult(
        method="celnet",
        slide_path="/data/slide one.svs",
        slide_score=0.8125,
        maps=[
            SlideMap("tumour probability", rng.random((7, 9), dtype=np.float32), 64.0, (32.0, 16.5)),
            SlideMap("evidence mask", (rng.random((5, 4)) > 0.5).astype(np.uint8), (8.0, 9.5),
                     kind="labels", colormap="red", contrast_limits=None, opacity=0.4,
                     metadata={"threshold": 0.5}, visible=False),
            SlideMap("stack/with slash", rng.random((3, 4, 5)), 2.0),
            SlideMap("empty", np.zeros((0, 0), np.float32), 16.0),
        ],
        points=[
            SlidePoints("peaks", rng.random((4, 2)) * 1000,
                        {"score": rng.random(4).astype(np.float32), "rank": np.arange(4)},
                        size_px=96.0, face_color="cyan", metadata={"min_distance": 3}),
            SlidePoints("no peaks", np.zeros((0, 2)), {"score": np.zeros(0)}),
        ],
        boxes=[SlideBoxes("tiles", np.array([[0, 0, 10, 20], [5.5, 6, 7, 8]], float),
                          {"label": np.array(["a", "b"])}, text="label")],
        lines=[SlideLines("edges", rng.random((3, 2, 2)), {"level": np.array([0, 1, 1])})],
        summary={"seconds": 1.25, "patches_read": 10, "pixels_read": 12345,
                 "region": [0, 0, 100, 200], "checkpoint": None, "device": "cpu"},
        mpp=(0.499, 0.5),
    )


def _assert_same(a: InferenceResult, b: InferenceResult) -> None:
    assert (a.method, a.slide_path, a.slide_score, a.mpp, a.summary) == (
        b.method, b.slide_path, b.slide_score, b.mpp, b.summary)
    assert len(a.maps) == len(b.maps)
    for m, n in zip(a.maps, b.maps, strict=True):
        assert m.data.dtype == n.data.dtype and m.data.shape == n.data.shape
        np.testing.assert_array_equal(m.data, n.data)
        for f in ("name", "cell_size", "origin", "kind", "colormap", "contrast_limits",
                  "opacity", "metadata", "visible"):
            assert getattr(m, f) == getattr(n, f), f
    for kind, coords in (("points", "xy"), ("boxes", "boxes"), ("lines", "segments")):
        la, lb = getattr(a, kind), getattr(b, kind)
        assert [x.name for x in la] == [x.name for x in lb]
        for x, y in zip(la, lb, strict=True):
            np.testing.assert_array_equal(getattr(x, coords), getattr(y, coords))
            assert getattr(x, coords).shape == getattr(y, coords).shape
            assert x.properties.keys() == y.properties.keys()
            for k in x.properties:
                assert x.properties[k].dtype == y.properties[k].dtype
                np.testing.assert_array_equal(x.properties[k], y.properties[k])
            assert x.metadata == y.metadata


def test_round_trip_is_exact(tmp_path):
    result = _result()
    out = save_result(result, tmp_path / "slide")
    _assert_same(result, load_result(out))
    summary = json.loads((out / "summary.json").read_text())
    for key in ("slide_score", "seconds", "patches_read", "pixels_read", "method", "slide_path"):
        assert key in summary
    geo = json.loads((out / "points.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == 4
    assert geo["features"][0]["geometry"]["type"] == "Point"


def test_overwrite_leaves_no_temporaries(tmp_path):
    result = _result()
    save_result(result, tmp_path / "slide")
    result.slide_score = 0.25
    result.maps = result.maps[:1]
    save_result(result, tmp_path / "slide")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slide"]
    loaded = load_result(tmp_path / "slide")
    assert loaded.slide_score == 0.25 and len(loaded.maps) == 1


def test_failed_save_leaves_nothing(tmp_path):
    result = _result()
    result.summary["bad"] = object()  # not JSON serialisable: fails after the maps were written
    with pytest.raises(TypeError):
        save_result(result, tmp_path / "slide")
    assert list(tmp_path.iterdir()) == []


def test_load_non_result_names_the_folder(tmp_path):
    with pytest.raises(GlimpseError, match="summary.json"):
        load_result(tmp_path)
