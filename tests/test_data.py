"""Training-data folders: slide labels, annotated images and their errors, on tiny generated files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from napari_glimpse.errors import DatasetError
from napari_glimpse.runtime.data import find_annotated, find_slides, read_labels


def _png(path, w=64, h=48, value=200):
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def _slides(folder, stems):
    folder.mkdir()
    for s in stems:
        _png(folder / f"{s}.tif")
    return folder


def test_labels_are_class_indices_names_in_sorted_order_or_numbers(tmp_path):
    folder = _slides(tmp_path / "a", ["s1", "s2", "s3"])
    (folder / "labels.csv").write_text("slide,label\ns1,tumour\ns2.tif,normal\ns3,tumour\n")
    items = {i.stem: i.label for i in find_slides(folder, need="labels")}
    assert items == {"s1": 1, "s2": 0, "s3": 1}
    assert read_labels(folder / "labels.csv").classes == ("normal", "tumour")
    (folder / "labels.csv").write_text("slide,label\ns1,0.5\ns2,2\ns3,-1.25\n")
    labels = read_labels(folder / "labels.csv")
    assert labels.regression and labels.values == {"s1": 0.5, "s2": 2.0, "s3": -1.25}
    (folder / "labels.csv").write_text("slide,label\ns1,2\ns2,0\ns3,1\n")
    assert read_labels(folder / "labels.csv").values["s1"] == 2
    with pytest.raises(DatasetError, match="label must be 0 or 1, got 2"):
        find_slides(folder, binary=True)


def test_slide_folder_errors_name_the_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no slides") as err:
        find_slides(tmp_path / "empty")
    assert "empty" in str(err.value)
    folder = _slides(tmp_path / "b", ["s1"])
    (folder / "labels.csv").write_text("slide,label\ns1,1\nghost,0\n")
    with pytest.raises(DatasetError, match=r"not in the folder: \['ghost'\]") as err:
        find_slides(folder)
    assert err.value.path.endswith("labels.csv")
    (folder / "labels.csv").write_text("slide,label\ns1,\n")
    with pytest.raises(DatasetError, match="line 2: slide 's1' has no label"):
        find_slides(folder)


def test_image_mask_pairs_work_without_slide_metadata(tmp_path):
    folder = tmp_path / "seg"
    folder.mkdir()
    _png(folder / "a.png")
    mask = np.zeros((24, 32), np.uint8)  # half size: downsample 2
    mask[4:12, 8:16] = 2
    Image.fromarray(mask).save(folder / "a_mask.png")
    _png(folder / "b.jpg")
    (folder / "b.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
         "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [32, 0], [32, 16], [0, 16], [0, 0]]]}}]}))
    items = {i.stem: i for i in find_annotated(folder)}
    assert set(items) == {"a", "b"} and items["a"].annotation.endswith("a_mask.png")
    assert items["a"].mpp is None and items["a"].mpp_assumed
    labels, ds = items["a"].label_mask((64, 48), 1.0)
    assert labels.shape == (48, 64) and ds == 1.0
    assert set(np.unique(labels)) == {0, 2} and labels[8:24, 16:32].all() and labels[:8].max() == 0
    coarse, _ = items["a"].label_mask((64, 48), 4.0)
    assert coarse.shape == (12, 16) and coarse[2:6, 4:8].min() == 2
    poly, _ = items["b"].label_mask((64, 48), 2.0)
    assert poly.dtype == np.uint8 and poly[:8, :16].min() == 1 and poly[8:].max() == 0
    given = find_annotated(folder, mpp=0.5)[0]
    assert given.mpp == 0.5 and given.mpp_assumed
    with given.open() as slide:
        assert slide.mpp == (0.5, 0.5)


def test_annotated_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        find_annotated(tmp_path / "empty")
    folder = tmp_path / "plain"
    folder.mkdir()
    _png(folder / "a.png")
    with pytest.raises(DatasetError, match="images but no annotations"):
        find_annotated(folder)
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(folder / "a.mask.png")  # 64 x 48 image: no integer ratio
    item = find_annotated(folder)[0]
    with pytest.raises(DatasetError, match="neither the size of its 64 x 48 image") as err:
        item.label_mask((64, 48), 1.0)
    assert err.value.path.endswith("a.mask.png")
