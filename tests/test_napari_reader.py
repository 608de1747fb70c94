"""The npe2 reader / writer through napari: slides, annotations, result folders, bad files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from napari_glimpse._napari import _reader
from napari_glimpse._napari._reader import napari_get_reader
from napari_glimpse._napari._writer import write_shapes_geojson
from napari_glimpse.annotations import Annotation, write_annotations
from napari_glimpse.results import InferenceResult, SlideMap, SlidePoints
from napari_glimpse.runtime.results_io import save_result

SVS = "src/napari_glimpse/_sample_data/cmu-1-small-region.svs"


def test_reader_claims_only_what_it_handles(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "other.xml").write_text("<config/>")
    (tmp_path / "emptydir").mkdir()
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader(str(tmp_path / "other.xml")) is None
    assert napari_get_reader(str(tmp_path / "emptydir")) is None
    assert napari_get_reader(["a.svs", "b.svs"]) is None
    assert napari_get_reader("x.svs") is _reader.read_slide
    assert napari_get_reader("x.mask.tif") is _reader.read_mask
    assert napari_get_reader("x.geojson") is _reader.read_annotations


def test_broken_slide_notifies_and_returns_nothing(tmp_path, monkeypatch):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00 this is not a tiff")
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    out = napari_get_reader(str(bad))(str(bad))
    assert out == [(None,)]
    assert len(shown) == 1 and "broken.svs" in shown[0]


@pytest.mark.gui
def test_open_slide_in_viewer_is_multiscale_in_microns(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open(SVS, plugin="napari-glimpse")
    assert len(layers) == 1
    layer = layers[0]
    assert layer.multiscale and layer.rgb
    np.testing.assert_allclose(layer.scale, (0.499, 0.499))
    assert layer.metadata["slide_path"].endswith("cmu-1-small-region.svs")
    assert layer.data[0].shape == (2967, 2220, 3)


@pytest.mark.gui
def test_annotations_align_with_sibling_slide_and_write_back(make_napari_viewer, tmp_path):
    shutil.copy(SVS, tmp_path / "slide.svs")
    poly = np.array([[100.0, 200.0], [400.0, 200.0], [400.0, 600.0], [100.0, 600.0]])
    ann = tmp_path / "slide.annotations.geojson"
    write_annotations(ann, [Annotation(poly, label="Tumor", name="t1")])
    viewer = make_napari_viewer()
    (shapes,) = viewer.open(str(ann), plugin="napari-glimpse")
    # level-0 corner x = 100 -> world col (100 - 0.5) * mpp, in the slide's microns
    np.testing.assert_allclose(shapes.data[0][:, 1].min(), 99.5 * 0.499)
    out = tmp_path / "back.geojson"
    write_shapes_geojson(str(out), [shapes.as_layer_data_tuple()])
    feature = json.loads(out.read_text())["features"][0]
    ring = np.array(feature["geometry"]["coordinates"][0][:-1])
    np.testing.assert_allclose(ring, poly, atol=1e-6)
    assert feature["properties"]["classification"]["name"] == "Tumor"


@pytest.mark.gui
def test_result_folder_opens_as_layers(make_napari_viewer, tmp_path):
    result = InferenceResult(
        method="celnet", slide_path=SVS, slide_score=0.8,
        maps=[SlideMap("probability", np.random.default_rng(0).random((5, 7)), cell_size=96)],
        points=[SlidePoints("peaks", np.array([[480.0, 96.0]]), {"score": np.array([0.9])})],
        mpp=(0.499, 0.499),
    )
    folder = save_result(result, tmp_path / "res")
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin="napari-glimpse")
    assert [layer.name for layer in layers] == ["probability", "peaks"]
    np.testing.assert_allclose(layers[0].scale, (96 * 0.499, 96 * 0.499))
    np.testing.assert_allclose(layers[1].data[0], [95.5 * 0.499, 479.5 * 0.499])
