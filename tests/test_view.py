"""The main job (`napari-glimpse view --headless`) on a tiny sample mosaic: the shipped models
run through the registry, their layers land in the mosaic viewer, and the summary reports them."""

import json

import pytest

pytest.importorskip("napari")

from napari_glimpse._napari import _sample_data  # noqa: E402
from napari_glimpse._napari._models import default_methods  # noqa: E402

CELNET_LAYERS = ["tumour probability", "CELM evidence", "evidence mask", "tumour peaks"]


@pytest.fixture
def tiny_mosaic(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_GLIMPSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_sample_data, "MOSAIC_GRID", (4, 4))
    monkeypatch.setattr(_sample_data, "MOSAIC_TUMOUR_FRACTION", 0.5)
    return tmp_path


def test_headless_view_runs_shipped_models(tiny_mosaic, qapp):
    from napari_glimpse._napari._view import run_view

    methods = dict(default_methods())
    assert {"celnet", "glimpse-tree"} <= set(methods)
    out = tiny_mosaic / "out"
    params = {"celnet": {"stride": 32, "nms_max_peaks": 5}}
    assert run_view(headless=True, out=out, size=(300, 400), model_params=params) == 0

    summary = json.loads((out / "summary.json").read_text())
    for name in ("celnet", "glimpse-tree"):
        m = summary["methods"][name]
        assert "error" not in m, m
        for key in ("slide_score", "seconds", "patches_read", "pixels_read", "checkpoint", "truth"):
            assert m[key] is not None, (name, key)
        assert m["checkpoint"] == methods[name]
        assert m["cached"] is False
        # the mosaic holds tumour; the summary's call is the model's own (its stored threshold),
        # judged against that (tiny inference settings: the call itself may be wrong)
        assert m["truth"]["mosaic_label"] == 1
        assert m["truth"]["slide_call"] == m["slide_call"] == int(m["slide_score"] >= m["threshold"])
        assert m["truth"]["slide_call_correct"] == (m["truth"]["slide_call"] == 1)
        assert (out / f"mosaic-{name}.png").is_file() and (out / f"mosaic-{name}-window.png").is_file()
        # the Run-model panel in a method's screenshot shows that method's settings
        assert summary["scenes"][f"mosaic-{name}"]["panel_method"] == name
    for shot in ("slide", "mosaic", "mosaic-celnet", "mosaic-glimpse-tree"):
        # the docked panels do not squeeze the canvas below the size asked for (rows, cols)
        h, w = summary["scenes"][shot]["screenshot_size"]
        assert h >= 300 and w >= 400, (shot, h, w)
    assert summary["methods"]["celnet"]["layers"] == CELNET_LAYERS
    dice = summary["methods"]["celnet"]["truth"]["evidence mask: Dice with tumour"]
    assert dice > 0  # the evidence mask overlaps the tumour cells
    gt = summary["methods"]["glimpse-tree"]["layers"]
    assert "glimpse edges" in gt and any(n.startswith("glimpses L") for n in gt)
    assert any(n.startswith("Q L0") for n in gt)
    scene = summary["scenes"]["mosaic"]
    # 4 x 4 cells, half of the tissue cells tumour: a count of cells, and 96 x 96 px each
    assert 1 <= scene["tumour_cells"] <= 16 and scene["tumour_pixels"] == scene["tumour_cells"] * 96 * 96
    names = [lyr["name"] for lyr in scene["layers"]]
    assert names[:2] == ["tumour mosaic", "ground truth (tumour)"]
    assert set(CELNET_LAYERS) <= set(names)
    for shot in ("slide", "mosaic"):
        assert (out / f"{shot}.png").is_file() and (out / f"{shot}-window.png").is_file()
    assert "[model celnet]" in (out / "summary.txt").read_text()

    # second start: the results come from the cache
    out2 = tiny_mosaic / "out2"
    assert run_view(headless=True, out=out2, size=(300, 400), model_params=params) == 0
    again = json.loads((out2 / "summary.json").read_text())
    assert all(again["methods"][n]["cached"] for n in ("celnet", "glimpse-tree"))
    assert again["methods"]["celnet"]["slide_score"] == summary["methods"]["celnet"]["slide_score"]
