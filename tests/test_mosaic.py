"""Mosaic slides of real PCam patches: truth files agree with the pixels, determinism, CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import openslide
import pytest
import tifffile

from napari_glimpse.annotations import polygons_to_mask, read_geojson
from napari_glimpse.cli import main
from napari_glimpse.errors import DatasetError
from napari_glimpse.mosaic import bundled_patches_dir, load_patch_bank, make_mosaics


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory):
    out = tmp_path_factory.mktemp("mosaics")
    return out, make_mosaics(
        bundled_patches_dir(), out, count=3, grid=(14, 18), seed=5, positive_fraction=0.5
    )


def test_bundled_bank_is_small_and_real():
    bank = load_patch_bank(bundled_patches_dir())
    assert bank[0].shape == (150, 96, 96, 3) and bank[1].shape == (150, 96, 96, 3)
    size = sum(p.stat().st_size for p in bundled_patches_dir().rglob("*.jpg"))
    assert size < 2 * 2**20
    assert (bundled_patches_dir() / "ATTRIBUTION.md").is_file()


def test_truth_files_agree(mosaics):
    out, made = mosaics
    assert [m.label for m in made].count(1) == 2  # ceil(3 * 0.5)
    with open(out / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["slide"], int(r["label"])) for r in rows] == [(m.name, m.label) for m in made]
    for m in made:
        facts = json.loads(m.cells_path.read_text())
        cells = np.zeros((14, 18), bool)
        if facts["tumour_cells"]:
            cells[tuple(np.array(facts["tumour_cells"]).T)] = True
        assert cells.any() == bool(m.label) == bool(facts["label"])
        mask = tifffile.imread(m.mask_path, key=0)
        np.testing.assert_array_equal(mask, np.repeat(np.repeat(cells, 96, 0), 96, 1) * 255)
        polys = read_geojson(m.geojson_path, slide_dims=m.dimensions)
        assert all(p.label == "Tumor" for p in polys)
        np.testing.assert_array_equal(polygons_to_mask(polys, m.dimensions, 96), cells)


def test_slide_pixels_are_bank_patches_of_the_right_class(mosaics):
    _, made = mosaics
    m = next(m for m in made if m.label)
    bank = load_patch_bank(bundled_patches_dir())
    osr = openslide.OpenSlide(str(m.path))
    assert osr.level_dimensions[0] == (18 * 96, 14 * 96)
    assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.972)
    facts = json.loads(m.cells_path.read_text())
    for r, c in facts["tumour_cells"][:3]:
        cell = np.asarray(osr.read_region((c * 96, r * 96), 0, (96, 96)))[:, :, :3].astype(int)
        errs = {}
        for cls in (0, 1):
            variants = [
                np.rot90(p[:, ::-1] if t & 4 else p, t & 3) for p in bank[cls] for t in range(8)
            ]
            errs[cls] = min(np.abs(cell - v).mean() for v in variants)
        assert errs[1] < 8 < errs[0], errs  # JPEG-close to a tumour patch, not a normal one
    # glass: a corner cell is near-white background
    corner = np.asarray(osr.read_region((0, 0), 0, (96, 96)))[:, :, :3]
    assert corner.mean() > 225 and corner.std() < 8
    osr.close()


def test_same_seed_same_files_other_seed_other_slides(tmp_path):
    a = make_mosaics(bundled_patches_dir(), tmp_path / "a", 2, grid=(8, 9), seed=11)
    b = make_mosaics(bundled_patches_dir(), tmp_path / "b", 2, grid=(8, 9), seed=11)
    c = make_mosaics(bundled_patches_dir(), tmp_path / "c", 2, grid=(8, 9), seed=12)
    for x, y in zip(a, b, strict=True):
        for attr in ("path", "mask_path", "geojson_path", "cells_path"):
            assert getattr(x, attr).read_bytes() == getattr(y, attr).read_bytes()
    assert (tmp_path / "a/labels.csv").read_bytes() == (tmp_path / "b/labels.csv").read_bytes()
    assert a[0].path.read_bytes() != c[0].path.read_bytes()


def test_size_mode_and_negative_slides(tmp_path):
    (m,) = make_mosaics(
        bundled_patches_dir(),
        tmp_path,
        1,
        size=(1000, 700),
        seed=2,
        positive_fraction=0.0,
        name="neg",
    )
    assert m.name == "neg" and m.label == 0 and len(m.tumour_cells) == 0
    with tifffile.TiffFile(m.path) as tf:
        assert tf.pages[0].shape == (700, 1000, 3)
    assert not tifffile.imread(m.mask_path).any()
    assert json.loads(m.geojson_path.read_text())["features"] == []


def test_cli_make_mosaic(tmp_path, capsys):
    rc = main(
        [
            "make-mosaic",
            "--out",
            str(tmp_path),
            "--count",
            "2",
            "--grid",
            "6",
            "7",
            "--seed",
            "4",
            "--positive-fraction",
            "1",
        ]
    )
    assert rc == 0
    assert "label 1" in capsys.readouterr().out
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "labels.csv" in names and "mosaic_001.mask.tif" in names
    rc = main(
        [
            "make-mosaic",
            "--patches",
            str(tmp_path),
            "--out",
            str(tmp_path / "x"),
            "--grid",
            "6",
            "6",
        ]
    )
    assert rc == 1
    assert "no class folder '0/'" in capsys.readouterr().err


def test_bad_patch_folder_is_named(tmp_path):
    (tmp_path / "0").mkdir()
    (tmp_path / "1").mkdir()
    with pytest.raises(DatasetError, match="no patch images") as info:
        make_mosaics(tmp_path, tmp_path / "out", 1, grid=(4, 4))
    assert str(tmp_path / "0") in str(info.value)


def test_cli_needs_a_grid_or_a_size(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["make-mosaic", "--out", str(tmp_path)])
    assert "--grid --size is required" in capsys.readouterr().err


def test_lattice_offset_moves_pixels_mask_and_polygons_together(tmp_path):
    made = make_mosaics(bundled_patches_dir(), tmp_path, 4, size=(1500, 1300), seed=3,
                        positive_fraction=1.0, lattice_offset=True)
    offsets = {m.lattice_offset for m in made}
    assert len(offsets) > 1 and all(0 <= v < 96 for o in offsets for v in o) and (0, 0) not in offsets
    bank = load_patch_bank(bundled_patches_dir())
    for m in made:
        ox, oy = m.lattice_offset
        facts = json.loads(m.cells_path.read_text())
        assert facts["lattice_offset"] == [ox, oy]
        rows, cols = m.grid
        cells = np.zeros((rows, cols), bool)
        cells[tuple(np.array(facts["tumour_cells"]).T)] = True
        full = np.repeat(np.repeat(cells, 96, 0), 96, 1)[oy : oy + 1300, ox : ox + 1500]
        np.testing.assert_array_equal(tifffile.imread(m.mask_path, key=0), full * 255)
        polys = read_geojson(m.geojson_path, slide_dims=m.dimensions)
        np.testing.assert_array_equal(polygons_to_mask(polys, m.dimensions, 1) > 0, full)
        assert m.tumour_fraction == pytest.approx(len(facts["tumour_cells"]) / facts["tissue_cells"])
    # one tumour cell's pixels sit where the lattice says, and are a tumour patch
    m = made[0]
    ox, oy = m.lattice_offset
    r, c = json.loads(m.cells_path.read_text())["tumour_cells"][0]
    osr = openslide.OpenSlide(str(m.path))
    cell = np.asarray(osr.read_region((c * 96 - ox, r * 96 - oy), 0, (96, 96)))[:, :, :3].astype(int)
    osr.close()
    err = min(np.abs(cell - np.rot90(p[:, ::-1] if t & 4 else p, t & 3)).mean() for p in bank[1] for t in range(8))
    assert err < 8
    with open(tmp_path / "tumour_fraction.csv") as f:
        rows = {r["slide"]: float(r["label"]) for r in csv.DictReader(f)}
    assert rows[m.name] == pytest.approx(m.tumour_fraction, abs=1e-6)


def test_no_offset_slides_are_unchanged_by_the_option(tmp_path):
    a = make_mosaics(bundled_patches_dir(), tmp_path / "a", 2, grid=(8, 9), seed=11)
    b = make_mosaics(bundled_patches_dir(), tmp_path / "b", 2, grid=(8, 9), seed=11, lattice_offset=False)
    assert [m.path.read_bytes() for m in a] == [m.path.read_bytes() for m in b]
    assert all(m.lattice_offset == (0, 0) for m in a)
