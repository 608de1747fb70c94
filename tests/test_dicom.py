"""DICOM whole-slide images: made from the bundled real SVS with wsidicomizer, read through
wsidicom with the Slide API; pixels equal OpenSlide's read of the same DICOM."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from napari_glimpse.errors import SlideError
from napari_glimpse.slides import open_slide

SVS = Path(__file__).resolve().parents[1] / "src/napari_glimpse/_sample_data/cmu-1-small-region.svs"


@pytest.fixture(scope="module")
def dicom_dir(tmp_path_factory) -> Path:
    wsidicomizer = pytest.importorskip("wsidicomizer")
    out = tmp_path_factory.mktemp("dicom") / "CMU-1-small-region"
    out.mkdir()
    # the SVS's own JPEG tiles, not re-encoded (levels wsidicomizer adds are labelled RGB but
    # coded YCbCr, and readers disagree on them: our coarser levels are computed instead)
    wsidicomizer.WsiDicomizer.convert(SVS, out)
    return out


def _openslide(dicom_dir):
    openslide = pytest.importorskip("openslide")
    volume = next(p for p in sorted(dicom_dir.iterdir()) if p.suffix == ".dcm"
                  and openslide.OpenSlide.detect_format(str(p)) == "dicom")
    return openslide.OpenSlide(str(volume))


def test_dicom_pixels_equal_openslide_and_the_svs(dicom_dir):
    ref = _openslide(dicom_dir)
    with open_slide(dicom_dir) as s, open_slide(SVS) as svs:
        assert s.format == "dicom" and s.dimensions == ref.dimensions == svs.dimensions
        assert s.mpp == pytest.approx(svs.mpp, rel=1e-3)
        rng = np.random.default_rng(0)
        w, h = s.dimensions
        boxes = [(0, 0, 300, 200), (w - 100, h - 77, 150, 120), (-20, -30, 64, 64)]
        boxes += [(int(rng.integers(0, w - 300)), int(rng.integers(0, h - 300)), 257, 241) for _ in range(4)]
        for x, y, bw, bh in boxes:
            ours = s.read_region((x, y), 0, (bw, bh))
            rgba = np.asarray(ref.read_region((x, y), 0, (bw, bh)))
            theirs = np.where(rgba[..., 3:] == 0, 255, rgba[..., :3]).astype(np.uint8)  # outside: white
            np.testing.assert_array_equal(ours, theirs)
            # the same JPEG tiles as the SVS (no re-encoding)
            np.testing.assert_array_equal(ours, svs.read_region((x, y), 0, (bw, bh)))
        # levels computed on demand, a lazy dask pyramid with square chunks
        assert s.level_count >= 2 and s.levels[1].downsample == 2.0
        levels = s.dask_levels()
        assert levels[0].shape == (h, w, 3) and levels[0].chunksize[0] == levels[0].chunksize[1]
        np.testing.assert_array_equal(np.asarray(levels[0][100:400, 700:1000]),
                                      s.read_region((700, 100), 0, (300, 300)))
        np.testing.assert_array_equal(np.asarray(levels[1][50:150, 60:160]),
                                      s.read_level_box(1, 60, 50, 100, 100))
        assert "label" in s.associated and s.associated_image("label").ndim == 3


def test_one_file_of_the_set_opens_the_slide_and_the_napari_reader_claims_it(dicom_dir):
    from napari_glimpse._napari._reader import napari_get_reader

    one = next(p for p in sorted(dicom_dir.iterdir()) if p.suffix == ".dcm")
    with open_slide(one) as s:
        assert s.format == "dicom" and s.dimensions == (2220, 2967)
    assert napari_get_reader(str(dicom_dir)) is not None
    data, kw, kind = napari_get_reader(str(one))(str(one))[0]
    assert kind == "image" and kw["multiscale"] and data[0].shape == (2967, 2220, 3)


def test_broken_dicom_is_a_clear_error(tmp_path, dicom_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SlideError, match="not a slide file"):
        open_slide(empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    biggest = max(dicom_dir.iterdir(), key=lambda p: p.stat().st_size)
    (broken / "x.dcm").write_bytes(biggest.read_bytes()[:3000])
    with pytest.raises(SlideError) as err, open_slide(broken) as s:
        s.read_region((0, 0), 0, (512, 512))
    assert str(broken) in str(err.value)
    assert os.listdir(broken) == ["x.dcm"]  # nothing written beside it
