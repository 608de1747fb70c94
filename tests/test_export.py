"""Exports: QuPath GeoJSON (valid, read back by the plugin's reader, regions on the right
pixels) and OME-Zarr maps that napari-ome-zarr places where the plugin's own layers are."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_glimpse.annotations.geojson import read_geojson
from napari_glimpse.cli import main
from napari_glimpse.export import export_result, label_regions, to_qupath
from napari_glimpse.results import InferenceResult, SlideBoxes, SlideMap, SlidePoints
from napari_glimpse.runtime.results_io import save_result

MPP = (0.5, 0.25)


def _labels() -> np.ndarray:
    lab = np.zeros((40, 50), np.uint8)
    lab[5:25, 10:40] = 2      # a tumour region with a hole of normal tissue
    lab[10:15, 20:25] = 1
    lab[30:34, 2:6] = 1       # a separate normal region
    return lab


def _result() -> InferenceResult:
    heat = np.linspace(0, 1, 12 * 20, dtype=np.float32).reshape(12, 20)
    return InferenceResult(
        method="razn", slide_path="s.tif", slide_score=0.4, mpp=MPP,
        maps=[SlideMap("heat", heat, cell_size=(32, 16), origin=(64, 8)),
              SlideMap("seg", _labels(), cell_size=8, origin=(16, 24), kind="labels",
                       metadata={"classes": ["glass", "normal", "tumour"],
                                 "class_colours": ["#00000000", "#3c8c3c", "#d22828"]})],
        points=[SlidePoints("peaks", np.array([[100.0, 50.0], [10.0, 20.0]]),
                            properties={"score": np.array([0.9, 0.2])})],
        boxes=[SlideBoxes("rois", np.array([[0.0, 0.0, 64.0, 32.0]]), properties={"p": np.array([0.7])},
                          edge_color="orange")])


def test_qupath_geojson_is_valid_typed_and_read_back(tmp_path):
    doc = to_qupath(_result())
    kinds = {f["properties"]["objectType"] for f in doc["features"]}
    assert kinds == {"annotation", "detection"}
    box = next(f for f in doc["features"] if f["properties"]["classification"]["name"] == "rois")
    assert box["properties"]["classification"]["color"] == [255, 165, 0]
    assert box["properties"]["measurements"] == {"p": pytest.approx(0.7)}
    peak = next(f for f in doc["features"] if f["properties"]["objectType"] == "detection")
    assert peak["geometry"] == {"type": "Point", "coordinates": [100.0, 50.0]}
    assert peak["properties"]["measurements"]["score"] == pytest.approx(0.9)

    written = export_result(_result(), tmp_path, ome_zarr=False)
    with pytest.warns(UserWarning, match="without an area"):  # points are not areas
        back = read_geojson(written["geojson"][0])
    tumour = [a for a in back if a.label == "tumour"]
    assert len(tumour) == 1 and len(tumour[0].holes) == 1 and tumour[0].color == (210, 40, 40)
    assert sorted(a.label for a in back) == ["normal", "normal", "rois", "tumour"]  # the hole is normal tissue


def test_label_regions_land_on_their_cells():
    from skimage.draw import polygon2mask

    m = _result().maps[1]
    lab = _labels()
    for cls, rings, cells in label_regions(m):
        assert cells == int(np.sum(_component_of(lab, cls, rings[0], m)))
        # back to map cells: x = origin + (col + 0.5) * cell
        to_rc = [np.stack([(r[:, 1] - 24) / 8 - 0.5, (r[:, 0] - 16) / 8 - 0.5], 1) for r in rings]
        mask = polygon2mask(lab.shape, to_rc[0])
        for h in to_rc[1:]:
            mask &= ~polygon2mask(lab.shape, h)
        truth = _component_of(lab, cls, rings[0], m)
        assert (mask != truth).sum() <= 0.15 * truth.sum()  # cell centres on the ring's mid-line
        assert mask[truth].mean() > 0.9


def _component_of(lab, cls, ring, m):
    from scipy import ndimage

    comps, _ = ndimage.label(lab == cls)
    c = int((ring[:, 0].mean() - 16) / 8), int((ring[:, 1].mean() - 24) / 8)
    ids = np.unique(comps[max(c[1] - 3, 0):c[1] + 4, max(c[0] - 3, 0):c[0] + 4])
    ids = [i for i in ids if i]
    sizes = [(comps == i).sum() for i in ids]
    return comps == ids[int(np.argmax(sizes))]


def test_cli_export_of_a_saved_result(tmp_path, capsys):
    save_result(_result(), tmp_path / "res")
    assert main(["export", str(tmp_path / "res"), "--out", str(tmp_path / "ex")]) == 0
    written = json.loads(capsys.readouterr().out)
    assert [p.endswith("razn.qupath.geojson") for p in written["geojson"]] == [True]
    assert sorted(p.rsplit("/", 1)[1] for p in written["ome_zarr"]) == ["heat.ome.zarr", "seg.ome.zarr"]
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "ex2")]) == 1


def test_ome_zarr_is_valid_ngff_with_pyramid_levels(tmp_path):
    import zarr
    from ome_zarr_models.v05.image import Image

    big = SlideMap("big labels", np.zeros((2100, 900), np.uint8), cell_size=4, kind="labels")
    big.data[1000:1010, 100:120] = 1
    r = _result()
    r.maps.append(big)
    paths = export_result(r, tmp_path, geojson=False)["ome_zarr"]
    for p in paths:
        Image.from_zarr(zarr.open_group(p, mode="r"))  # raises when not NGFF 0.5
    g = zarr.open_group(paths[-1], mode="r")
    assert sorted(g.keys()) == ["s0", "s1", "s2"] and g["s2"].shape == (525, 225)
    assert g["s2"][250, 25] == 1 and g.attrs["ome"]["image-label"]["colors"] == []


def _region_result() -> InferenceResult:
    """A result of a region deep in the slide: its maps start far from the slide's corner."""
    r = _result()
    for m in r.maps:
        m.origin = (m.origin[0] + 50_000, m.origin[1] + 30_013)
    return r


@pytest.mark.gui
@pytest.mark.parametrize("make", [_result, _region_result])
def test_napari_ome_zarr_puts_maps_where_the_plugin_does(make_napari_viewer, tmp_path, make):
    import zarr
    from napari.layers import Layer

    from napari_glimpse.layers import result_to_layers

    result = make()
    paths = export_result(result, tmp_path, geojson=False)["ome_zarr"]
    viewer = make_napari_viewer()
    ours = {kw["name"]: (data, kw, kind) for data, kw, kind in result_to_layers(result)}
    for path, m in zip(paths, result.maps, strict=True):
        theirs = viewer.open(path, plugin="napari-ome-zarr")
        assert len(theirs) == 1
        theirs = theirs[0]
        mine = viewer.add_layer(Layer.create(*ours[m.name]))
        assert type(theirs).__name__ == type(mine).__name__  # a label map opens as Labels
        rows, cols = m.data.shape[-2:]
        values = np.asarray(theirs.data[0] if theirs.multiscale else theirs.data)
        pad = np.asarray(zarr.open_group(path, mode="r").attrs["napari_glimpse"]["lattice_pad_cells"])
        for cell in ((0, 0), (rows - 1, cols - 1), (rows // 2, cols // 3), (7, 11)):
            world = np.asarray(mine.data_to_world(cell))  # where the plugin puts this cell
            there = np.asarray(theirs.world_to_data(world))
            # napari-ome-zarr 0.10 drops the NGFF translation: the same cell, half a cell away at most
            same = pad + np.asarray(cell)
            assert np.all(np.abs(there - same) <= 0.5 + 1e-9), (m.name, cell, there, same)
            assert values[tuple(same)] == pytest.approx(m.data[cell])
        # a reader that applies the translation too (the NGFF spec) lands on the cell exactly
        ds = zarr.open_group(path, mode="r").attrs["ome"]["multiscales"][0]["datasets"][0]
        scale, shift = (np.asarray(t[k]) for t, k in zip(ds["coordinateTransformations"],
                                                          ("scale", "translation"), strict=True))
        for cell in ((0, 0), (rows - 1, cols - 1)):
            exact = (np.asarray(mine.data_to_world(cell)) - shift) / scale
            np.testing.assert_allclose(exact, pad + np.asarray(cell), atol=1e-9)
