"""Annotations: GeoJSON / ASAP round trips, Camelyon16 exclusions, masks at any level, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_glimpse.annotations import (
    Annotation,
    mask_to_polygons,
    polygons_to_mask,
    read_annotations,
    read_asap,
    read_geojson,
    read_label_mask,
    write_annotations,
    write_asap,
    write_geojson,
)
from napari_glimpse.errors import AnnotationError

SQUARE_WITH_HOLE = Annotation(
    [(100, 100), (500, 100), (500, 400), (100, 400)],
    holes=[[(200, 200), (300, 200), (300, 300), (200, 300)]],
    label="Tumor",
    color=(200, 0, 0),
    name="lesion 1",
)
CAMELYON_XML = """<?xml version="1.0"?>
<ASAP_Annotations>
  <Annotations>
    <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="2" X="40" Y="40" />
        <Coordinate Order="0" X="0" Y="0" />
        <Coordinate Order="1" X="40" Y="0" />
        <Coordinate Order="3" X="0" Y="40" />
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 1" Type="Polygon" PartOfGroup="_2" Color="#64FE2E">
      <Coordinates>
        <Coordinate Order="0" X="10" Y="10" /><Coordinate Order="1" X="20" Y="10" />
        <Coordinate Order="2" X="20" Y="20" /><Coordinate Order="3" X="10" Y="20" />
      </Coordinates>
    </Annotation>
    <Annotation Name="dot" Type="Dot" PartOfGroup="None">
      <Coordinates><Coordinate Order="0" X="5" Y="5" /></Coordinates>
    </Annotation>
  </Annotations>
  <AnnotationGroups>
    <Group Name="_0" PartOfGroup="None" Color="#ff0000"><Attributes /></Group>
    <Group Name="_2" PartOfGroup="None" Color="#00ff00"><Attributes /></Group>
  </AnnotationGroups>
</ASAP_Annotations>
"""


def test_geojson_round_trip_keeps_holes_class_colour_and_name(tmp_path):
    path = write_geojson(tmp_path / "a.geojson", [SQUARE_WITH_HOLE])
    doc = json.loads(Path(path).read_text())
    feat = doc["features"][0]
    assert doc["type"] == "FeatureCollection"
    assert feat["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert feat["geometry"]["coordinates"][0][0] == feat["geometry"]["coordinates"][0][-1]
    (back,) = read_geojson(path, slide_dims=(1000, 1000))
    np.testing.assert_array_equal(back.polygon, SQUARE_WITH_HOLE.polygon)
    np.testing.assert_array_equal(back.holes[0], SQUARE_WITH_HOLE.holes[0])
    assert (back.label, back.color, back.name) == ("Tumor", (200, 0, 0), "lesion 1")
    assert back.area == 400 * 300 - 100 * 100


def test_geojson_reads_qupath_variants(tmp_path):
    features = [
        {
            "type": "Feature",
            "geometry": {
                "type": "MultiPolygon",
                "coordinates": [
                    [[[0, 0], [10, 0], [10, 10], [0, 0]]],
                    [[[20, 20], [30, 20], [30, 30], [20, 20]]],
                ],
            },
            "properties": {"classification": {"name": "Tumor", "colorRGB": -3670016}},
        },
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]}, "properties": {}},
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [5, 0], [5, 5], [0, 0]]]},
            "properties": {},
        },
    ]
    p = tmp_path / "list.json"
    p.write_text(json.dumps(features))  # QuPath's "export as list of features"
    with pytest.warns(UserWarning, match="1 Point"):
        anns = read_geojson(p)
    assert [a.label for a in anns] == ["Tumor", "Tumor", "Unclassified"]
    assert anns[0].color == (200, 0, 0)
    np.testing.assert_array_equal(anns[1].polygon[0], [20, 20])


def test_asap_camelyon16_groups_and_exclusion(tmp_path):
    p = tmp_path / "tumor_001.xml"
    p.write_text(CAMELYON_XML)
    anns = read_asap(p, slide_dims=(100, 100))
    assert [a.label for a in anns] == ["Tumor", "Exclusion"]  # the Dot has no area
    np.testing.assert_array_equal(anns[0].polygon, [[0, 0], [40, 0], [40, 40], [0, 40]])
    assert anns[0].color == (0xF4, 0xFA, 0x58)
    mask = polygons_to_mask(anns, (100, 100), downsample=10)
    expected = np.zeros((10, 10), bool)
    expected[:4, :4] = True
    expected[1, 1] = False  # the "_2" square is cut out
    np.testing.assert_array_equal(mask, expected)


def test_asap_round_trip_writes_holes_as_exclusions(tmp_path):
    path = write_asap(tmp_path / "out.xml", [SQUARE_WITH_HOLE])
    text = Path(path).read_text()
    assert 'PartOfGroup="_0"' in text and 'PartOfGroup="_2"' in text
    back = read_asap(path)
    assert [a.label for a in back] == ["Tumor", "Exclusion"]
    dims = (600, 500)
    np.testing.assert_array_equal(
        polygons_to_mask(back, dims, 4), polygons_to_mask([SQUARE_WITH_HOLE], dims, 4)
    )


def test_cell_masks_round_trip_exactly_at_any_level():
    rng = np.random.default_rng(3)
    for _ in range(50):
        cells = rng.random((rng.integers(2, 20), rng.integers(2, 20))) < rng.uniform(0.1, 0.9)
        anns = mask_to_polygons(cells, downsample=96)
        dims = (cells.shape[1] * 96, cells.shape[0] * 96)
        np.testing.assert_array_equal(polygons_to_mask(anns, dims, 96), cells)
        fine = np.repeat(np.repeat(cells, 24, 0), 24, 1)
        np.testing.assert_array_equal(polygons_to_mask(anns, dims, 4), fine)
        # every vertex sits on the cell grid, and only corners are kept
        for a in anns:
            assert not (a.polygon % 96).any()
            d = np.diff(np.vstack([a.polygon, a.polygon[:1]]), axis=0)
            assert ((d[:, 0] == 0) ^ (d[:, 1] == 0)).all()
            turns = d[:, 0] * np.roll(d[:, 1], -1) - d[:, 1] * np.roll(d[:, 0], -1)
            assert (turns != 0).all()


def test_tracing_gives_holes_and_keeps_diagonal_neighbours_apart():
    m = np.zeros((6, 8), bool)
    m[1:5, 1:5] = True
    m[2, 2] = False  # a hole
    m[5, 5] = True  # touches the square only at a corner
    anns = sorted(mask_to_polygons(m), key=lambda a: -a.area)
    assert len(anns) == 2
    assert len(anns[0].holes) == 1 and anns[0].area == 15
    assert anns[1].area == 1 and not anns[1].holes


def test_rasterising_a_slanted_polygon_samples_pixel_centres():
    tri = Annotation([(0, 0), (200, 0), (0, 100)])
    mask = polygons_to_mask([tri], (200, 100))
    assert abs(int(mask.sum()) - 10000) < 200
    assert mask[0, 0] and not mask[99, 199]
    labels = polygons_to_mask(
        [tri, Annotation([(150, 50), (200, 50), (200, 100), (150, 100)], label="Other")],
        (200, 100),
        labels={"Tumor": 1, "Other": 2},
    )
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1, 2}
    assert labels[75, 175] == 2


def test_offset_and_out_of_slide_annotations(tmp_path):
    # QuPath on MRXS/NDPI: coordinates relative to openslide.bounds-x/y
    p = write_geojson(tmp_path / "q.geojson", [SQUARE_WITH_HOLE], offset=(1000, 2000))
    raw = json.loads(Path(p).read_text())["features"][0]["geometry"]["coordinates"][0][0]
    assert raw == [-900, -1900]
    (a,) = read_geojson(p, offset=(1000, 2000), slide_dims=(5000, 5000))
    np.testing.assert_array_equal(a.polygon[0], [100, 100])
    with pytest.raises(AnnotationError, match="outside the 5000 x 5000 px slide") as info:
        read_geojson(p, slide_dims=(5000, 5000))
    assert "q.geojson" in str(info.value) and "offset" in str(info.value)
    far = Annotation([(9000, 9000), (9100, 9000), (9100, 9100)])
    write_geojson(tmp_path / "far.geojson", [far])
    with pytest.raises(AnnotationError, match="another pyramid level"):
        read_annotations(tmp_path / "far.geojson", slide_dims=(2000, 2000))


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("bad.geojson", "{not json", "not a readable GeoJSON"),
        ("bad2.geojson", '{"type": "Topology"}', "not GeoJSON"),
        (
            "bad3.geojson",
            '{"type": "Feature", "geometry": {"type": "Polygon", '
            '"coordinates": [[[0, 0], [1, 1]]]}}',
            "at least 3 points",
        ),
        ("bad.xml", "<ASAP_Annotations><Annotations>", "not a readable XML"),
        ("bad2.xml", "<Other/>", "not ASAP XML"),
        (
            "bad3.xml",
            '<ASAP_Annotations><Annotations><Annotation Name="a" Type="Polygon">'
            '<Coordinates><Coordinate Order="0" X="1"/></Coordinates></Annotation>'
            "</Annotations></ASAP_Annotations>",
            "numeric X, Y",
        ),
        ("bad.csv", "x,y", "unknown annotation format"),
    ],
)
def test_malformed_files_name_the_file(tmp_path, name, text, match):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(AnnotationError, match=match) as info:
        read_annotations(p)
    assert str(p) in str(info.value)


def test_label_masks_infer_their_level(tmp_path):
    cells = np.zeros((10, 12), bool)
    cells[2:5, 3:9] = True
    full = np.repeat(np.repeat(cells, 96, 0), 96, 1)
    slide_dims = (full.shape[1], full.shape[0])  # 1152 x 960
    png = tmp_path / "m.png"
    Image.fromarray(full[::16, ::16].astype(np.uint8) * 255).save(png)
    lm = read_label_mask(png, slide_dims)
    assert lm.downsample == 16
    anns = read_annotations(png, slide_dims=slide_dims)
    np.testing.assert_array_equal(polygons_to_mask(anns, slide_dims, 96), cells)
    # a pyramid: the finest level under max_pixels is read
    from napari_glimpse.slides.writer import write_mask

    tiles = (
        full[r : r + 512, c : c + 512].astype(np.uint8) * 255
        for r in range(0, 960, 512)
        for c in range(0, 1152, 512)
    )
    tif = write_mask(tmp_path / "m.tif", 1152, 960, tiles, mpp=0.972)
    lm = read_label_mask(tif, slide_dims, max_pixels=300 * 300)
    assert lm.downsample == 4 and lm.mask.shape == (240, 288)
    skew = tmp_path / "skew.png"
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(skew)
    with pytest.raises(AnnotationError, match="another slide"):
        read_label_mask(skew, slide_dims)


def test_write_annotations_by_suffix_is_atomic(tmp_path):
    p = write_annotations(tmp_path / "x.xml", [SQUARE_WITH_HOLE])
    assert read_annotations(p)[0].label == "Tumor"
    with pytest.raises(AnnotationError):
        write_annotations(tmp_path / "x.txt", [SQUARE_WITH_HOLE])
    assert sorted(f.name for f in tmp_path.iterdir()) == ["x.xml"]


def test_a_class_mask_marks_tumour_only_where_classes_txt_names_it(tmp_path):
    # make-mosaic --mask-classes writes 0 glass / 1 normal tissue / 2 tumour with a classes.txt:
    # supervised glimpse trees (and the compare report's truth) must read class 2 as tumour,
    # not every tissue pixel
    import tifffile

    from napari_glimpse.annotations import read_label_mask, tumour_pixels
    from napari_glimpse.errors import AnnotationError
    from napari_glimpse.methods.glimpse_tree.data import tumour_mask
    from napari_glimpse.runtime.data import SlideItem

    m = np.zeros((64, 64), np.uint8)
    m[8:56, 8:56] = 1
    m[20:30, 20:40] = 2
    path = tmp_path / "s.mask.tif"
    tifffile.imwrite(path, m)
    assert tumour_pixels(read_label_mask(path)).sum() == m.astype(bool).sum()  # no names: non-zero
    (tmp_path / "classes.txt").write_text("glass\nnormal tissue\ntumour\n")
    got, ds = tumour_mask(SlideItem(str(tmp_path / "s.tif"), "s", None, str(path)), (64, 64))
    assert ds == 1.0 and got.sum() == 200 and got[25, 30] and not got[10, 10]
    (tmp_path / "classes.txt").write_text("background\nstroma\nepithelium\n")
    with pytest.raises(AnnotationError, match="names no tumour class"):
        tumour_pixels(read_label_mask(path))
