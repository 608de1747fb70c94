"""Comparing methods on one slide: the table, the agreement, report.html and the dock widget."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from napari_glimpse.cli import main
from napari_glimpse.compare import agreement, compare, default_methods, save_comparison
from napari_glimpse.runtime.events import run_to_end

FAST = ["patch-classifier", "attention-grid"]


def test_agreement_counts_points_within_one_patch():
    a = np.array([[0.0, 0.0], [100.0, 0.0], [500.0, 500.0]])
    b = np.array([[0.0, 90.0]])
    assert agreement(a, b, 96.0) == pytest.approx(1 / 3)
    assert agreement(a, b, 150.0) == pytest.approx(2 / 3)  # (100, 0) is 134.5 px away
    assert agreement(a, np.zeros((0, 2)), 96.0) is None


def test_default_methods_are_those_with_shipped_weights():
    methods = default_methods()
    assert {"celnet", "glimpse-tree", "attention-grid", "patch-classifier"} <= set(methods)
    assert "razn" not in methods and "magnet" not in methods  # no weights shipped


def test_cli_compare_writes_table_results_and_a_self_contained_report(tmp_path, tiny_mosaic, capsys):
    rc = main(["compare", str(tiny_mosaic.path), "--methods", *FAST, "razn", "--out", str(tmp_path / "c"),
               "--quiet"])
    assert rc == 0  # razn has no weights: reported, the others go on
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["method"] for r in rows] == FAST
    for r in rows:
        assert 0.0 <= r["slide_score"] <= 1.0 and r["patches_read"] > 0 and r["device"] == "cpu"
        assert set(r["agreement"]) == set(FAST) - {r["method"]}
    doc = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert "razn" in doc["errors"] and doc["patch_px"] == pytest.approx(96 * 0.972 / 0.5)
    for m in FAST:
        assert (tmp_path / "c" / m / "summary.json").is_file()
    report = (tmp_path / "c" / "report.html").read_text()
    assert len(re.findall(r'<img src="data:image/png;base64,', report)) == len(FAST)
    assert "<table>" in report and "razn" in report and "agrees with attention-grid" in report


def test_compare_region_and_bad_input(tmp_path, tiny_mosaic):
    comp = run_to_end(compare(tiny_mosaic.path, ["patch-classifier"], region=(0, 0, 384, 384)))
    assert comp.region == (0, 0, 384, 384)
    assert comp.results["patch-classifier"].summary["region"] == [0, 0, 384, 384]
    report = save_comparison(comp, tmp_path / "r")
    assert "region x0 y0 x1 y1 = [0, 0, 384, 384]" in report.read_text()
    assert main(["compare", str(tiny_mosaic.path), "--methods", "nope", "--out", str(tmp_path / "x")]) != 0
    assert main(["compare", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "x")]) == 1


@pytest.mark.gui
def test_compare_widget_runs_methods_fills_the_table_and_toggles_their_layers(
        make_napari_viewer, qtbot, tiny_mosaic, tmp_path):
    from qtpy.QtCore import Qt

    from napari_glimpse._napari.widgets import CompareWidget

    viewer = make_napari_viewer()
    (slide,) = viewer.open(str(tiny_mosaic.path), plugin="napari-glimpse")
    _, w = viewer.window.add_plugin_dock_widget("napari-glimpse", "Compare")
    assert isinstance(w, CompareWidget) and w.slide.value is slide
    w.methods.value = FAST
    w.device.value = "cpu"
    assert w.run() is not None
    qtbot.waitUntil(lambda: w.worker is None, timeout=120_000)
    assert w.table.rowCount() == 2 and w.status.value.startswith("2 compared")
    names = [w.table.item(i, 1).text() for i in range(2)]
    assert sorted(names) == sorted(FAST)
    row = names.index("attention-grid")
    layers = w.method_layers("attention-grid")
    shown = [lyr.visible for lyr in layers]
    assert any(shown) and not all(shown)  # its attention stacks come hidden
    w.table.item(row, 0).setCheckState(Qt.CheckState.Unchecked)  # unchecked: every attention-grid layer hidden
    assert not any(lyr.visible for lyr in layers)
    assert any(lyr.visible for lyr in w.method_layers("patch-classifier"))
    w.table.item(row, 0).setCheckState(Qt.CheckState.Checked)  # checked: back as they were
    assert [lyr.visible for lyr in layers] == shown
    w.report_dir.value = str(tmp_path / "rep")
    assert w.save_report().is_file()
    # a re-run replaces the layers, it does not pile them up
    n = len(viewer.layers)
    w.run()
    qtbot.waitUntil(lambda: w.worker is None, timeout=120_000)
    assert len(viewer.layers) == n
