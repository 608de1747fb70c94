"""The one region reader: level choice, resize only outside the tolerance, white past the slide."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fake_slides import FakeSlide

from napari_glimpse.runtime.device import is_oom
from napari_glimpse.runtime.regions import choose_level, read_region_at, to_tensor


def textured(h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.kron(img, np.ones((8, 8, 1), np.uint8))[:h, :w]


@pytest.mark.parametrize(("downsample", "level", "zoom"), [
    (1.0, 0, 1.0),
    (2.0, 0, 2.0),  # between levels: the finer one, shrunk
    (3.9, 1, 1.0),  # level 1 (4x) is 2.6 % coarser: read as is
    (3.7, 0, 3.7),  # 8 % coarser: too far, shrink level 0
    (4.0, 1, 1.0),
    (7.0, 1, 1.75),
    (16.5, 2, 1.0),
    (100.0, 2, 100 / 16),
    (0.5, 0, 0.5),  # finer than level 0: level 0 enlarged
])
def test_level_is_the_coarsest_at_most_five_percent_coarser(downsample, level, zoom):
    slide = FakeSlide(textured(256, 256), downsamples=(1, 4, 16))
    choice = choose_level(slide, downsample)
    assert (choice.level, choice.zoom) == (level, pytest.approx(zoom))


def test_a_level_within_tolerance_is_read_unresized():
    slide = FakeSlide(textured(256, 256), downsamples=(1, 4))
    img, npx = read_region_at(slide, 32, 64, 20, 10, 3.9)
    assert npx == 200 and slide.reads[-1] == (1, 20, 10)
    assert (img == slide.read_region((32, 64), 1, (20, 10))).all()


def test_a_read_between_levels_is_resized_from_the_finer_level():
    slide = FakeSlide(textured(256, 256), downsamples=(1, 4))
    img, npx = read_region_at(slide, 0, 0, 16, 8, 2.0)
    assert img.shape == (8, 16, 3) and npx == 32 * 16 and slide.reads[-1] == (0, 32, 16)
    # The texture is constant on 8 px blocks (4 output px): away from block edges the shrunk
    # image is the block's colour; the filter only blends neighbouring blocks at their edges.
    ref = slide.read_region((0, 0), 0, (32, 16))[::2, ::2].astype(int)
    inner = np.ix_([1, 2, 5, 6], [1, 2, 5, 6, 9, 10, 13, 14])
    assert np.abs(img.astype(int)[inner] - ref[inner]).max() <= 1


def test_only_the_inside_of_the_slide_is_read_and_the_rest_is_white():
    image = textured(100, 120, seed=3)
    slide = FakeSlide(image, downsamples=(1,))
    img, npx = read_region_at(slide, -10, 90, 30, 20, 1.0)  # off the left and bottom edges
    assert npx == 20 * 10 and slide.reads[-1] == (0, 20, 10)
    assert (img[:, :10] == 255).all() and (img[10:] == 255).all()
    assert (img[:10, 10:] == image[90:100, 0:20]).all()
    img, npx = read_region_at(slide, 500, 0, 8, 8, 1.0)  # misses the slide: nothing read
    assert npx == 0 and (img == 255).all()
    # Shrunk near an edge: no output pixel blends tissue with the white beyond the slide.
    img, _ = read_region_at(FakeSlide(np.zeros((64, 64, 3), np.uint8), downsamples=(1,)), -6, 0, 8, 8, 2.0)
    assert (img[:, :3] == 255).all() and (img[:, 3:] == 0).all()


def test_to_tensor_is_nchw_in_unit_range_and_exact():
    images = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3) * 2
    x = to_tensor(images, torch.device("cpu"))
    assert x.shape == (2, 3, 3, 4) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    assert to_tensor(images).device.type == "cpu"


def test_host_memory_errors_count_as_out_of_memory():
    assert is_oom(MemoryError()) and is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert not is_oom(RuntimeError("shapes cannot be multiplied"))
