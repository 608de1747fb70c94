"""Cohort inference on Dask distributed: equal to a serial run, resumable, a broken slide reported."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from napari_glimpse.cli import main
from napari_glimpse.runtime.cohort import read_cohort, run_cohort
from napari_glimpse.runtime.results_io import load_result
from napari_glimpse.slides.writer import write_pyramid


@pytest.fixture()
def cohort(tmp_path, tiny_mosaic):
    """Two real slides and one broken one (a truncated TIFF), in the order given."""
    a = tmp_path / "slides" / "a.tif"
    a.parent.mkdir()
    shutil.copy(tiny_mosaic.path, a)
    b = tmp_path / "slides" / "b.tif"  # the same cells turned: another map and tumour place
    image = np.ascontiguousarray(np.rot90(tiny_mosaic.image))
    h, w = image.shape[:2]
    write_pyramid(b, w, h, (image[y:y + 128, x:x + 128] for y in range(0, h, 128)
                            for x in range(0, w, 128)), tiny_mosaic.mpp, tile_size=128, compression="zlib")
    broken = tmp_path / "slides" / "broken.tif"
    broken.write_bytes(tiny_mosaic.path.read_bytes()[:2000])
    return [a, broken, b]


@pytest.mark.slow
def test_two_local_workers_equal_serial_and_a_broken_slide_does_not_stop_the_rest(tmp_path, cohort):
    serial = run_cohort("celnet", cohort, tmp_path / "serial", scheduler="serial", threads=1)
    assert [r["status"] for r in serial] == ["done", "failed", "done"]
    assert "broken.tif" in serial[1]["error"] and "\n" not in serial[1]["error"]
    assert not (tmp_path / "serial" / "broken").exists()  # no half-written folder

    rc = main(["infer", "celnet", *map(str, cohort), "--out", str(tmp_path / "dask"),
               "--scheduler", "local:2", "--quiet"])
    assert rc == 1  # one slide failed: a batch system sees it
    rows = read_cohort(tmp_path / "dask" / "cohort.csv")
    assert [r["slide"] for r in rows] == [str(p) for p in cohort]
    assert [r["status"] for r in rows] == ["done", "failed", "done"]
    assert rows[1]["error"] == serial[1]["error"]
    for s, d in zip(serial, rows, strict=True):
        if s["status"] != "done":
            continue
        assert float(d["slide_score"]) == pytest.approx(s["slide_score"], abs=1e-6)
        rs, rd = load_result(s["out"]), load_result(d["out"])
        assert [m.name for m in rs.maps] == [m.name for m in rd.maps]
        for ms, md in zip(rs.maps, rd.maps, strict=True):
            np.testing.assert_allclose(np.asarray(md.data), np.asarray(ms.data), atol=1e-6)
        np.testing.assert_allclose(rd.points[0].xy, rs.points[0].xy)

    # Resumable: complete folders are skipped (not rewritten); the failed slide is tried again.
    stamp = (tmp_path / "serial" / "a" / "summary.json").stat().st_mtime_ns
    again = run_cohort("celnet", cohort, tmp_path / "serial", scheduler="serial")
    assert [r["status"] for r in again] == ["skipped", "failed", "skipped"]
    assert again[0]["slide_score"] == pytest.approx(serial[0]["slide_score"])
    assert (tmp_path / "serial" / "a" / "summary.json").stat().st_mtime_ns == stamp
    table = read_cohort(tmp_path / "serial" / "cohort.csv")
    assert [r["status"] for r in table] == ["skipped", "failed", "skipped"]
    assert json.loads((tmp_path / "serial" / "a" / "summary.json").read_text())["method"] == "celnet"


def test_cohort_refuses_two_slides_with_one_result_folder_and_a_bad_scheduler(tmp_path, tiny_mosaic):
    other = tmp_path / "x" / tiny_mosaic.path.name
    other.parent.mkdir()
    shutil.copy(tiny_mosaic.path, other)
    rc = main(["infer", "celnet", str(tiny_mosaic.path), str(other), "--out", str(tmp_path / "o"),
               "--scheduler", "serial"])
    assert rc == 1 and not (tmp_path / "o" / "cohort.csv").exists()
    rc = main(["infer", "celnet", str(tiny_mosaic.path), "--out", str(tmp_path / "o"),
               "--scheduler", "local:zero"])
    assert rc == 1
