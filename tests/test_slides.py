"""Slide reading: metadata, OpenSlide-equal pixels, laziness, bad input."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_glimpse.cli import main as cli_main
from napari_glimpse.errors import SlideError
from napari_glimpse.slides import Level, open_slide

DATA = Path(__file__).parent / "data"
SVS = DATA / "cmu-1-small-region.svs"
OME = DATA / "OS-1-detail.ome.tif"

openslide = pytest.importorskip("openslide")


def pattern(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth-ish colour image (JPEG-friendly, but every pixel differs from its neighbours)."""
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 40, (h, w, 1))
    img = np.stack([(x * 3) % 256, (y * 2) % 256, ((x + y) * 5) % 256], -1) + noise
    return np.clip(img, 0, 255).astype(np.uint8)


def write_pyramid(path, base, tile=256, subifds=False, compression="jpeg", mpp=0.5):
    levels = [base]
    while max(levels[-1].shape[:2]) > 300:
        prev = levels[-1]
        h, w = (prev.shape[0] + 1) // 2, (prev.shape[1] + 1) // 2
        levels.append(np.asarray(prev[::2, ::2][:h, :w]))
    res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    with tifffile.TiffWriter(path) as tw:
        tw.write(
            levels[0], tile=(tile, tile), compression=compression, photometric="rgb",
            subifds=len(levels) - 1 if subifds else None, **res,
        )  # fmt: skip
        for lv in levels[1:]:
            tw.write(lv, tile=(tile, tile), compression=compression, photometric="rgb",
                     subfiletype=1)  # fmt: skip
    return levels


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    path = tmp_path_factory.mktemp("pyr") / "pyramid.tif"
    levels = write_pyramid(path, pattern(1001, 1301))
    return path, levels


def opaque_diff(ours: np.ndarray, ref_rgba: np.ndarray) -> int:
    ref = np.asarray(ref_rgba)
    opaque = ref[..., 3] == 255
    assert opaque.any()
    return int(np.abs(ours.astype(int) - ref[..., :3])[opaque].max())


# -- metadata ----------------------------------------------------------------------------
def test_svs_metadata_and_associated():
    with open_slide(SVS) as s:
        assert s.format == "aperio-svs" and s.vendor == "aperio"
        assert s.dimensions == (2220, 2967)
        assert s.levels[0] == Level(2220, 2967, 1.0)
        assert s.mpp == (0.499, 0.499)
        assert s.magnification == 20.0
        assert s.associated == ["label", "macro", "thumbnail"]
        label = s.associated_image("label")
        assert label.shape == (463, 387, 3) and label.dtype == np.uint8
        ref = openslide.OpenSlide(str(SVS)).associated_images["macro"]
        assert s.associated_image("macro").shape == (ref.size[1], ref.size[0], 3)
        with pytest.raises(SlideError, match="no associated image"):
            s.associated_image("nope")


def test_ome_metadata_and_pixels(tmp_path):
    # OpenSlide 4 rejects this big-endian OME file ("Cannot read dircount"), so the same
    # JPEG tile bytes are copied unchanged into a plain tiled TIFF that it does read.
    copy = tmp_path / "same-tiles.tif"
    with tifffile.TiffFile(OME) as tif:
        page = tif.pages.first
        fh = tif.filehandle

        def raw_tiles():
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
                fh.seek(offset)
                yield fh.read(count)

        tifffile.imwrite(
            copy, raw_tiles(), shape=page.shape, dtype=np.uint8, tile=(512, 512),
            compression="jpeg", photometric="rgb",
        )  # fmt: skip
    osr = openslide.OpenSlide(str(copy))
    with open_slide(OME) as s:
        assert s.format == "ome-tiff"
        assert s.dimensions == (1101, 1101)
        assert s.mpp == pytest.approx((0.2271, 0.2271), abs=1e-3)
        for x, y, w, h in [(0, 0, 100, 100), (500, 505, 30, 40), (1000, 1050, 200, 100),
                           (-7, 300, 520, 600)]:  # fmt: skip
            ref = osr.read_region((x, y), 0, (w, h))
            got = s.read_region((x, y), 0, (w, h))
            assert opaque_diff(got, ref) == 0
            assert (got[np.asarray(ref)[..., 3] == 0] == 255).all()
        assert np.array_equal(s.read_region((0, 0), 0, (1101, 1101)), tifffile.imread(OME))


# -- pixels equal OpenSlide ----------------------------------------------------------------
@pytest.mark.parametrize(
    "loc,size",
    [((0, 0), (512, 512)), ((239, 239), (3, 3)), ((230, 470), (300, 260)),
     ((2000, 2800), (400, 300)), ((-40, -25), (100, 80)), ((1111, 1234), (1, 1))],
)  # fmt: skip
def test_svs_read_region_equals_openslide(loc, size):
    ref = openslide.OpenSlide(str(SVS)).read_region(loc, 0, size)
    with open_slide(SVS) as s:
        got = s.read_region(loc, 0, size)
    assert got.shape == (size[1], size[0], 3)
    assert opaque_diff(got, ref) == 0
    outside = np.asarray(ref)[..., 3] == 0
    assert (got[outside] == 255).all()


def test_pyramid_levels_equal_openslide(pyramid):
    path, levels = pyramid
    osr = openslide.OpenSlide(str(path))
    with open_slide(path) as s:
        assert [(lv.width, lv.height) for lv in s.levels] == list(osr.level_dimensions)
        assert [lv.downsample for lv in s.levels] == pytest.approx(osr.level_downsamples)
        assert s.mpp == pytest.approx((0.5, 0.5))
        for level in range(len(s.levels)):
            ds = s.levels[level].downsample
            # Whole level pixels (including tile borders and image edges) are exact.
            for lx, ly in [(0, 0), (250, 250), (255, 3), (s.levels[level].width - 50, 10)]:
                loc = (round(lx * ds), round(ly * ds))
                if loc[0] / ds != int(loc[0] / ds) or loc[1] / ds != int(loc[1] / ds):
                    continue
                got = s.read_region(loc, level, (120, 90))
                assert opaque_diff(got, osr.read_region(loc, level, (120, 90))) == 0
            # Fractional positions: OpenSlide resamples bilinearly (pixman's float path);
            # we reproduce its arithmetic, so bytes are equal except on the one row or
            # column where OpenSlide blends two separately painted tiles.
            for loc in [(101, 37), (513, 515), (3, 1), (-5, 9), (-50, -20), (1001, 501)]:
                got = s.read_region(loc, level, (150, 100))
                ref = np.asarray(osr.read_region(loc, level, (150, 100)))
                diff = np.abs(got.astype(int) - ref[..., :3]).max(-1)[ref[..., 3] == 255]
                assert diff.max() <= 2 and (diff > 0).mean() < 0.02


def test_subifd_pyramid_levels(tmp_path):
    path = tmp_path / "sub.tif"
    levels = write_pyramid(path, pattern(700, 900), tile=128, subifds=True)
    with open_slide(path) as s:
        assert len(s.levels) == len(levels)
        for i, ref in enumerate(levels):
            stored = tifffile.TiffFile(path).series[0].levels[i].asarray()
            assert np.array_equal(s.read_region((0, 0), i, (ref.shape[1], ref.shape[0])), stored)
        # Level 0 against OpenSlide (which ignores SubIFDs but reads level 0).
        ref0 = openslide.OpenSlide(str(path)).read_region((127, 129), 0, (300, 300))
        assert opaque_diff(s.read_region((127, 129), 0, (300, 300)), ref0) == 0


# -- laziness and chunks -------------------------------------------------------------------
def test_read_region_decodes_only_needed_tiles(tmp_path):
    path = tmp_path / "big.tif"
    side, tile = 16384, 256
    block = np.full((tile, tile, 3), 200, np.uint8)
    tifffile.imwrite(
        path, (block for _ in range((side // tile) ** 2)), shape=(side, side, 3),
        dtype=np.uint8, tile=(tile, tile), compression="zlib", photometric="rgb", bigtiff=True,
    )  # fmt: skip
    tracemalloc.start()
    try:
        with open_slide(path) as s:
            assert s.dimensions == (side, side)
            assert s._backend.decoded_tiles() == 0  # opening reads metadata only
            px = s.read_region((1000, 1000), 0, (200, 200))
            assert (px == 200).all()
            assert s._backend.decoded_tiles() <= 4
            px = s.read_region((1000, 1000), 0, (200, 200))  # cached
            assert s._backend.decoded_tiles() <= 4
            arr = s.dask_levels()[0]
            assert arr.shape == (side, side, 3) and arr.chunksize[:2] == (512, 512)
            assert (arr[5000:5010, 7000:7010].compute() == 200).all()
            assert s.levels[-1].width <= 1024  # levels made lazily over the one stored
            before = s._backend.decoded_tiles()
            assert (s.read_region((8000, 8000), len(s.levels) - 1, (4, 4)) == 200).all()
            assert s._backend.decoded_tiles() - before <= 4
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Level 0 is 805 MB; everything above touched a few 512 px chunks at most.
    assert peak < 60e6


def test_dask_chunks_square_for_thin_tiles_and_strips(tmp_path):
    with open_slide(SVS) as s:  # 240 px tiles
        for arr in s.dask_levels():
            ch, cw = arr.chunksize[:2]
            assert ch == cw >= 512 or (ch, cw) == arr.shape[:2]
        assert s.dask_levels()[0].chunksize[:2] == (720, 720)
        lvl0 = s.dask_levels()[0][100:400, 200:600].compute()
        assert np.array_equal(lvl0, s.read_region((200, 100), 0, (400, 300)))
    path = tmp_path / "strips.tif"
    img = pattern(2200, 1200)
    tifffile.imwrite(path, img, rowsperstrip=16, compression="zlib", photometric="rgb")
    with open_slide(path) as s:
        assert s.dask_levels()[0].chunksize[:2] == (512, 512)
        assert np.array_equal(s.read_region((33, 77), 0, (600, 500)), img[77:577, 33:633])
        # Coarser levels computed lazily from level 0 by 2 x 2 means.
        assert s.levels[1:] == [Level(600, 1100, 2.0), Level(300, 550, 4.0)]
        want = np.round(img[:200, :200].reshape(100, 2, 100, 2, 3).mean((1, 3))).astype(np.uint8)
        assert np.array_equal(s.read_region((0, 0), 1, (100, 100)), want)
        assert np.array_equal(s.dask_levels()[1][:100, :100].compute(), want)
        # read_region on computed levels equals the dask levels napari shows.
        for level in (1, 2):
            lv = s.levels[level]
            dask_px = s.dask_levels()[level].compute()
            assert dask_px.shape == (lv.height, lv.width, 3)
            got = s.read_region((0, 0), level, (lv.width, lv.height))
            assert np.array_equal(got, dask_px)


# -- plain images and resolution -----------------------------------------------------------
@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_plain_images(tmp_path, ext):
    from PIL import Image

    img = pattern(300, 400)
    path = tmp_path / f"img.{ext}"
    Image.fromarray(img).save(path)
    ref = np.asarray(Image.open(path).convert("RGB"))
    with open_slide(path) as s:
        assert s.format == "image" and s.dimensions == (400, 300)
        assert np.array_equal(s.read_region((10, 20), 0, (50, 40)), ref[20:60, 10:60])
        assert s.thumbnail(100).shape[1] == 100


def test_implausible_mpp_warns_and_is_unknown(tmp_path):
    path = tmp_path / "dpi72.tif"
    tifffile.imwrite(path, pattern(64, 64), resolution=(72, 72), resolutionunit="INCH")
    with pytest.warns(UserWarning, match=r"dpi72\.tif.*352\.7"), open_slide(path) as s:
        assert s.mpp is None


def test_best_level():
    with open_slide(SVS) as s:
        assert s.best_level_for_mpp(0.5) == 0
        assert s.best_level_for_mpp(1.0) == 1
        assert s.best_level_for_mpp(0.9) == 0  # never coarser than asked
        assert s.best_level_for_mpp(100) == len(s.levels) - 1
        assert s.best_level_for_downsample(3.0) == 1
        assert s.best_level_for_downsample(0.5) == 0


# -- bad input -----------------------------------------------------------------------------
def _damaged(tmp_path, kind):
    path = tmp_path / f"bad-{kind}.svs"
    if kind == "missing":
        return tmp_path / "missing.svs"
    if kind == "directory":
        return tmp_path
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image\n" * 10)
    elif kind.startswith("truncated"):
        data = SVS.read_bytes()
        path.write_bytes(data[: int(len(data) * int(kind[-2:]) / 100)])
    elif kind == "compression":
        shutil.copy(OME, path)
        path.chmod(0o644)
        with tifffile.TiffFile(path) as tif:
            tag = tif.pages.first.tags["Compression"]
            offset, order = tag.valueoffset, tif.byteorder
        with open(path, "r+b") as fh:
            fh.seek(offset)
            fh.write((61234).to_bytes(2, "little" if order == "<" else "big"))
    return path


@pytest.mark.parametrize(
    "kind,problem",
    [("missing", "no such file"), ("directory", "directory"), ("empty", "empty"),
     ("text", "not an image"), ("truncated60", "truncated"), ("truncated90", "truncated"),
     ("compression", "compression")],
)  # fmt: skip
def test_bad_input_raises_slide_error(tmp_path, kind, problem):
    path = _damaged(tmp_path, kind)
    with pytest.raises(SlideError, match=problem) as info:
        open_slide(path)
    assert str(path) in str(info.value)


def test_corrupt_tile_raises_at_read_time(tmp_path):
    path = tmp_path / "corrupt.tif"
    write_pyramid(path, pattern(600, 600), tile=256)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        offset, count = page.dataoffsets[4], page.databytecounts[4]
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\x00" * count)
    with open_slide(path) as s:
        s.read_region((0, 0), 0, (100, 100))  # tile 0 is fine
        with pytest.raises(SlideError, match="corrupt.tif.*cannot read pixels"):
            s.read_region((300, 300), 0, (100, 100))


def test_cli_info(capsys, tmp_path):
    assert cli_main(["info", str(SVS)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "aperio-svs" and out["mpp"] == [0.499, 0.499]
    assert out["levels"][0] == {"width": 2220, "height": 2967, "downsample": 1.0}
    assert out["magnification"] == 20.0 and "label" in out["associated"]
    assert cli_main(["info", str(tmp_path / "nope.svs")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.svs: no such file" in err[0]


def test_svs_with_jpeg2000_tiles(tmp_path):
    # Aperio's JPEG 2000 flavour (compression 33005); OpenSlide's build here refuses it,
    # so the reference is tifffile's whole-page decode.
    img = pattern(600, 800)
    path = tmp_path / "j2k.svs"
    desc = "Aperio Image Library v12.0.0\r\n800x600 [0,0 800x600] (256x256) J2K|AppMag = 40|MPP = 0.2520"
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(256, 256), compression=33005, photometric="rgb", description=desc)
    ref = tifffile.imread(path)
    assert np.abs(ref.astype(int) - img).mean() < 3  # it really is the image, lossy
    with open_slide(path) as s:
        assert s.format == "aperio-svs"
        assert s.mpp == (0.252, 0.252) and s.magnification == 40.0
        assert np.array_equal(s.read_region((100, 200), 0, (400, 300)), ref[200:500, 100:500])
        assert np.array_equal(s.dask_levels()[0].compute(), ref)


def test_images_that_must_be_decoded_whole_are_refused_when_huge(tmp_path, monkeypatch):
    from PIL import Image

    from napari_glimpse.slides import _plain, _tiff

    # Stand-ins for gigapixel files: lower the limit rather than write 300 MP.
    monkeypatch.setattr(_plain, "MAX_PLAIN_PIXELS", 10_000)
    monkeypatch.setattr(_tiff, "MAX_PLAIN_PIXELS", 10_000)
    png = tmp_path / "huge.png"
    Image.fromarray(pattern(200, 200)).save(png)
    with pytest.raises(SlideError, match=r"huge\.png.*too large to decode whole"):
        open_slide(png)
    one_strip = tmp_path / "one-strip.tif"
    tifffile.imwrite(one_strip, pattern(200, 200), rowsperstrip=200, photometric="rgb")
    with pytest.raises(SlideError, match=r"one-strip\.tif.*tiled pyramidal TIFF"):
        open_slide(one_strip)
    many_strips = tmp_path / "strips.tif"
    tifffile.imwrite(many_strips, pattern(200, 200), rowsperstrip=8, photometric="rgb")
    with open_slide(many_strips) as s:  # strips of 1,600 px are fine
        assert s.dimensions == (200, 200)


def test_ome_pyramid_in_subifds_with_nm_units(tmp_path):
    base = pattern(900, 1100)
    levels = [base, base[::2, ::2], base[::4, ::4]]
    path = tmp_path / "pyr.ome.tif"
    meta = {
        "axes": "YXS",
        "PhysicalSizeX": 250.0,
        "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 260.0,
        "PhysicalSizeYUnit": "nm",
    }
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(base, tile=(256, 256), compression="zlib", photometric="rgb", subifds=2,
                 metadata=meta)  # fmt: skip
        for lv in levels[1:]:
            tw.write(lv, tile=(256, 256), compression="zlib", photometric="rgb", subfiletype=1)
    with open_slide(path) as s:
        assert s.format == "ome-tiff"
        assert s.mpp == pytest.approx((0.25, 0.26))
        assert [(lv.width, lv.height) for lv in s.levels] == [(1100, 900), (550, 450), (275, 225)]
        assert s.best_level_for_mpp(1.0) == 2 and s.best_level_for_mpp(0.6) == 1
        for i, ref in enumerate(levels):  # zlib: lossless, so the source pixels come back
            assert np.array_equal(s.read_region((0, 0), i, (ref.shape[1], ref.shape[0])), ref)
            assert np.array_equal(s.dask_levels()[i].compute(), ref)


def test_pyramid_as_unflagged_following_pages(tmp_path):
    base = pattern(700, 900)
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tw:
        for lv in (base, base[::2, ::2], base[::4, ::4]):
            tw.write(lv, tile=(128, 128), compression="zlib", photometric="rgb")
        tw.write(pattern(50, 120), photometric="rgb")  # a strip image: not a level
    with open_slide(path) as s:
        assert [lv.downsample for lv in s.levels] == [1.0, 2.0, 4.0]
        assert np.array_equal(s.read_region((8, 4), 2, (100, 50)), base[::4, ::4][1:51, 2:102])


def test_reads_from_many_threads_equal_serial_reads(tiny_mosaic):
    """Tiles are fetched by positional reads: threads (napari's chunk loading, MagNet's sibling
    fields) never see each other's file position, on a freshly opened slide too."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(0)
    with open_slide(tiny_mosaic.path) as s:
        jobs = []
        for _ in range(300):
            lv = int(rng.integers(0, s.level_count))
            L = s.levels[lv]
            jobs.append((lv, int(rng.integers(0, L.width)), int(rng.integers(0, L.height)), 150, 150))
        serial = [s.read_level_box(*j) for j in jobs]
    for _ in range(3):
        with open_slide(tiny_mosaic.path) as s, ThreadPoolExecutor(8) as pool:
            parallel = list(pool.map(lambda j: s.read_level_box(*j), jobs))
        assert all(np.array_equal(a, b) for a, b in zip(parallel, serial, strict=True))
