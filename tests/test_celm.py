"""CELM: Grad-CAM + guided-backprop saliency fusion, evidence masks, NMS peaks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_glimpse.methods.celnet.celm import (
    CELMParams,
    compute_celm,
    evidence_mask,
    gaussian_blur,
    input_gradient,
    nms_peaks,
)
from napari_glimpse.methods.celnet.model import CELNet, CELNetConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = CELNetConfig(widths=(4, 8, 8), blocks=1, reduction=2, channel_window=3,
                       spatial_kernels=(3,), patch_size=32)
    return CELNet(cfg).eval()


def test_celm_shapes_and_ranges(model):
    x = torch.rand(3, 3, 32, 32)
    out = compute_celm(model, x, CELMParams(alpha=0.3, beta=0.7))
    for m in (out.celm, out.cam, out.csm, out.cam2, out.cam3):
        assert m.shape == (3, 32, 32)
        assert float(m.min()) >= 0 and float(m.max()) <= 1
    np.testing.assert_allclose(out.cam, 0.3 * out.cam3 + 0.7 * out.cam2, atol=1e-6)
    np.testing.assert_allclose(out.celm, 0.7 * out.cam * out.csm + 0.3 * out.cam, atol=1e-6)
    with torch.no_grad():
        ref = model(x)["logit"]
    np.testing.assert_allclose(out.logit, ref, atol=1e-5)


def test_guided_backprop_differs_from_plain_gradient(model):
    x = torch.rand(2, 3, 32, 32)
    guided = input_gradient(model, x, guided=True)
    plain = input_gradient(model, x, guided=False)
    assert guided.shape == plain.shape == x.shape
    assert float((guided - plain).abs().max()) > 1e-3 * float(plain.abs().max())
    # Guided mode leaves the model untouched: the plain gradient is reproducible after it.
    np.testing.assert_allclose(input_gradient(model, x, guided=False), plain, atol=1e-7)


def test_gradcam_follows_the_evidence():
    # A "model" whose score is the mean of the red channel inside a square: Grad-CAM of a
    # linear feature map must light up where the features carry the score.
    class Toy(torch.nn.Module):
        def features(self, x):
            f = torch.nn.functional.avg_pool2d(x[:, :1], 2)
            return f, torch.nn.functional.avg_pool2d(f, 2)

        def head(self, gap2, gmp2, gap3, gmp3):
            return gmp3[:, 0] + gmp2[:, 0]

    x = torch.zeros(1, 3, 32, 32)
    x[:, 0, 8:16, 20:28] = 1.0
    out = compute_celm(Toy(), x, CELMParams(beta=0.0))
    inside = out.celm[0, 8:16, 20:28].mean()
    outside = out.celm[0, 24:, :12].mean()
    assert inside > 0.5 > outside


def test_nms_returns_the_right_peaks():
    prob = np.zeros((20, 30), np.float32)
    prob[5, 5], prob[5, 7], prob[15, 25], prob[10, 15] = 0.9, 0.8, 0.95, 0.4
    rc, scores = nms_peaks(prob, min_distance=3, min_score=0.5)
    assert rc.tolist() == [[15, 25], [5, 5]]  # (5, 7) suppressed by (5, 5); 0.4 below min
    np.testing.assert_allclose(scores, [0.95, 0.9])
    rc, _ = nms_peaks(prob, min_distance=1, min_score=0.3)
    assert rc.tolist() == [[15, 25], [5, 5], [5, 7], [10, 15]]
    rc, _ = nms_peaks(prob, min_distance=1, min_score=0.3, max_peaks=2)
    assert len(rc) == 2
    rc, s = nms_peaks(np.zeros((0, 0)), 3, 0.5)
    assert rc.shape == (0, 2) and s.shape == (0,)


def test_evidence_mask_threshold_and_smoothing():
    m = np.zeros((20, 20), np.float32)
    m[5:12, 5:12] = 1.0
    m[17, 17] = 1.0  # an isolated pixel is smoothed away
    mask = evidence_mask(m, threshold=0.5, sigma=1.0)
    assert mask.dtype == np.uint8 and mask[8, 8] == 1 and mask[17, 17] == 0 and mask[0, 0] == 0
    assert np.array_equal(evidence_mask(m, 0.5, 0.0), (m >= 0.5).astype(np.uint8))


def test_gaussian_blur_preserves_mass_and_params_validate():
    m = torch.zeros(1, 15, 15)
    m[0, 7, 7] = 1
    b = gaussian_blur(m, 1.5)
    assert b.shape == m.shape and float(b.sum()) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="alpha"):
        CELMParams(alpha=1.5)
    p = CELMParams.from_config(CELNetConfig(celm_a=0.2, evidence_threshold=0.7), beta=0.9)
    assert (p.alpha, p.mask_threshold, p.beta) == (0.2, 0.7, 0.9)
