"""Slide calls (napari_glimpse.calls, runtime.calibrate, `napari-glimpse calibrate`): every
method's result carries a call, a threshold and its rule; aggregations and thresholds are
chosen on validation slides and stored in the checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_glimpse.calls import (
    ScoreSource,
    aggregate,
    call_metrics,
    call_text,
    choose_threshold,
    fit_learned,
    learned_score,
    parse_rule,
    score_features,
)


def _source():
    prob = np.zeros((6, 6))
    prob[1:3, 1:3] = 0.9   # a 4-cell region
    prob[5, 5] = 0.95      # one isolated window scoring highest
    prob[4, 0] = 0.6
    tissue = np.ones_like(prob, bool)
    tissue[0, :] = False
    return ScoreSource.from_map(prob, tissue, cell_px=100.0, mpp=(0.5, 0.5), patch_threshold=0.5)


def test_each_aggregation_on_a_known_map():
    src = _source()
    assert src.cell_mm2 == pytest.approx(0.05 ** 2)  # 100 px x 0.5 um = 50 um a side
    assert aggregate(src, "max") == pytest.approx(0.95)
    assert aggregate(src, "top_k", k=3) == pytest.approx((0.95 + 0.9 + 0.9) / 3)
    # the 2 x 2 region beats the single 0.95 window and the 0.6 one (4-connected, >= 0.5)
    assert aggregate(src, "largest_region") == pytest.approx(4 * 0.05 ** 2)
    f = score_features(src, k=3)
    assert f[0] == pytest.approx(0.95) and f[3] == pytest.approx(6 / 30)  # 6 of 30 tissue cells >= 0.5
    with pytest.raises(ValueError, match="slide_aggregation"):
        aggregate(src, "median")
    with pytest.raises(ValueError, match="calibrate"):
        aggregate(src, "learned", aggregator=(1.0, 2.0))
    assert aggregate(ScoreSource(np.zeros(0)), "top_k") == 0.0  # a slide without tissue


def test_the_learned_aggregator_is_the_logistic_regression_it_stores():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    y = (x[:, 0] + 0.5 * x[:, 4] + rng.normal(0, 0.5, 40) > 0).astype(int)
    agg = fit_learned(x, y)
    assert len(agg) == 16 and all(isinstance(v, float) for v in agg)  # JSON-able, in the checkpoint
    xs = (x - x.mean(0)) / x.std(0)
    ref = LogisticRegression(max_iter=1000).fit(xs, y).predict_proba(xs)[:, 1]
    ours = np.array([learned_score(agg, row) for row in x])
    np.testing.assert_allclose(ours, ref, atol=1e-9)
    with pytest.raises(ValueError, match="both classes"):
        fit_learned(x, np.zeros(40))


def test_threshold_rules():
    y = [0, 0, 0, 1, 1, 1]
    s = [0.1, 0.2, 0.7, 0.6, 0.8, 0.9]
    t = choose_threshold(y, s, "youden")
    assert 0.2 < t <= 0.6 or 0.7 < t <= 0.8  # both points separate 5 of 6; midway between scores
    assert t not in s
    t90 = choose_threshold(y, s, "sensitivity:1.0")
    assert t90 == pytest.approx(0.4)  # every positive called: midway between 0.2 and 0.6
    assert np.mean(np.array(s)[3:] >= t90) == 1.0
    assert parse_rule("sensitivity:0.9") == ("sensitivity", 0.9)
    for bad in ("sens", "sensitivity:2", "youden:1", ""):
        with pytest.raises(ValueError, match="threshold_rule"):
            parse_rule(bad)
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold([1, 1], [0.2, 0.3])


def test_call_metrics_have_intervals_around_the_point():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(30), np.ones(30)]
    s = np.r_[rng.uniform(0, 0.6, 30), rng.uniform(0.4, 1, 30)]
    m = call_metrics(y, s, 0.5, n_boot=300)
    for key in ("auc", "sensitivity", "specificity", "balanced_accuracy"):
        lo, hi = m[f"{key}_ci"]
        assert lo <= m[key] <= hi and hi - lo > 0
    assert m["balanced_accuracy"] == pytest.approx((m["sensitivity"] + m["specificity"]) / 2)
    assert call_text({"slide_score": 0.8, "slide_call": 1, "threshold": 0.5}).startswith("tumour (score 0.800 >= ")
    assert call_text({"slide_score": 0.2, "slide_call": 0, "threshold": 0.5}).startswith("no tumour")
    assert call_text({"slide_score": 0.2, "slide_call": None}) == "score 0.200, "


def test_every_slide_run_is_called_and_re_aggregated_by_the_runtime(tiny_mosaic):
    from napari_glimpse.methods import infer
    from napari_glimpse.runtime.events import run_to_end

    res = run_to_end(infer("patch-classifier", tiny_mosaic.path, slide_threshold=0.3, slide_aggregation="max"))
    s = res.summary
    prob = next(m for m in res.maps if m.name == "tumour probability").data
    assert s["slide_score"] == pytest.approx(float(prob.max())) == pytest.approx(s["slide_score_max"])
    assert (s["slide_call"], s["threshold"], s["threshold_rule"], s["slide_aggregation"]) == \
        (int(s["slide_score"] >= 0.3), 0.3, "youden", "max")
    top = run_to_end(infer("patch-classifier", tiny_mosaic.path, slide_aggregation="top_k", aggregation_k=3))
    assert top.summary["slide_score"] == pytest.approx(float(np.sort(prob[prob > 0])[-3:].mean()))
    assert top.slide_score == top.summary["slide_score"]
    assert top.summary["slide_score_max"] == pytest.approx(s["slide_score"])
    # the shipped checkpoint's own choice (calibrated on validation mosaics): the largest region in mm²
    shipped = run_to_end(infer("patch-classifier", tiny_mosaic.path)).summary
    assert shipped["slide_aggregation"] == "largest_region" and shipped["threshold_rule"] == "youden"
    cell_mm2 = (next(m for m in res.maps if m.name == "tumour probability").cell_size * 0.5 / 1000) ** 2
    assert shipped["slide_score"] / cell_mm2 == pytest.approx(round(shipped["slide_score"] / cell_mm2))
    # a method whose model gives the slide score itself: called, not re-aggregated
    ag = run_to_end(infer("attention-grid", tiny_mosaic.path, slide_threshold=0.99))
    assert ag.summary["slide_call"] == int(ag.summary["slide_score"] >= 0.99) and "slide_aggregation" not in ag.summary


@pytest.fixture(scope="module")
def labelled_mosaics(tmp_path_factory):
    """10 mosaics of 14 x 14 bundled PCam cells, half with tumour, with labels.csv."""
    from napari_glimpse.mosaic import bundled_patches_dir, make_mosaics

    out = tmp_path_factory.mktemp("cal")
    make_mosaics(bundled_patches_dir(), out, count=10, grid=(14, 14), seed=3, tumour_fraction=0.3,
                 lattice_offset=True)
    return out


@pytest.mark.parametrize("method", ["patch-classifier", "glimpse-tree", "attention-grid"])
def test_calibrate_writes_a_checkpoint_that_infers_with_its_choice(method, labelled_mosaics, tmp_path, capsys):
    from napari_glimpse.cli import main
    from napari_glimpse.methods import infer, load_model
    from napari_glimpse.runtime.checkpoint import read_header
    from napari_glimpse.runtime.events import run_to_end

    out = tmp_path / "calibrated.safetensors"
    assert main(["calibrate", method, "--data", str(labelled_mosaics), "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (report["n"], report["positives"], report["rule"]) == (10, 5, "youden")
    config = load_model(method, str(out)).config
    assert config.slide_threshold == pytest.approx(report["threshold"])
    edits = read_header(out)["edits"]
    assert any(e["field"] == "config.slide_threshold" and "calibrate" in e["why"] for e in edits)
    if method == "attention-grid":  # its model aggregates: only the threshold is chosen
        assert report["aggregation"] is None and report["table"] == {}
    else:
        assert report["aggregation"] in report["table"] and config.slide_aggregation == report["aggregation"]
        assert set(report["table"]) >= {"max", "top_k", "learned"}  # all compared
        if method == "patch-classifier":  # a dense map: max and top-k saturate with slide size, not shipped
            assert report["eligible"] == ["largest_region", "learned"]
        else:  # leaves lie on no grid
            assert report["eligible"] == ["max", "top_k", "learned"]
        for row in report["table"].values():
            assert 0.0 <= row["auc"] <= 1.0 and 0.0 <= row["balanced_accuracy"] <= 1.0
    res = run_to_end(infer(method, next(labelled_mosaics.glob("*_000.tif")), str(out)))
    assert res.summary["threshold"] == pytest.approx(report["threshold"])
    assert res.summary.get("slide_aggregation") == report["aggregation"]


def test_calibration_names_the_folder_when_it_cannot_choose(labelled_mosaics, tmp_path, capsys):
    from napari_glimpse.cli import main

    one_class = tmp_path / "negatives"
    one_class.mkdir()
    for f in labelled_mosaics.glob("mosaic_00[0-9].tif"):
        (one_class / f.name).symlink_to(f)
    labels = dict(line.split(",") for line in (labelled_mosaics / "labels.csv").read_text().split()[1:])
    (one_class / "labels.csv").write_text("slide,label\n" + "".join(f"{k},0\n" for k in labels))
    assert main(["calibrate", "patch-classifier", "--data", str(one_class)]) != 0
    err = capsys.readouterr().err
    assert "negatives" in err and "both classes" in err


def test_an_attention_grid_checkpoint_from_before_the_shared_call_still_loads(tmp_path):
    from napari_glimpse.methods.attention_grid.config import AttentionGridConfig
    from napari_glimpse.methods.registry import shipped_checkpoint
    from napari_glimpse.runtime.checkpoint import (
        config_from_checkpoint,
        load_checkpoint,
        save_checkpoint,
    )

    ckpt = load_checkpoint(shipped_checkpoint("attention-grid"))
    old = {k: v for k, v in ckpt.config.items() if k not in ("slide_threshold", "threshold_rule")}
    old["threshold"] = 0.4321
    path = save_checkpoint(tmp_path / "old.safetensors", method="attention-grid", config=old,
                           model_state=ckpt.model_state)
    assert config_from_checkpoint(AttentionGridConfig, load_checkpoint(path)).slide_threshold == 0.4321


def test_naming_an_aggregation_imposes_it(labelled_mosaics, tmp_path, capsys):
    from napari_glimpse.cli import main

    assert main(["calibrate", "patch-classifier", "--data", str(labelled_mosaics), "--aggregations", "max",
                 "--rule", "sensitivity:1.0"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["aggregation"] == "max" and list(report["table"]) == ["max"] and "written" not in report
    assert report["table"]["max"]["sensitivity"] == 1.0  # the rule's promise on the slides it chose on


def test_several_validation_folders_choose_the_call_that_transfers_between_them(labelled_mosaics, tmp_path,
                                                                                 capsys):
    from napari_glimpse.calls import cross_bank_accuracy
    from napari_glimpse.cli import main
    from napari_glimpse.mosaic import bundled_patches_dir, make_mosaics

    other = tmp_path / "bank2"
    make_mosaics(bundled_patches_dir(), other, count=8, grid=(14, 14), seed=4, tumour_fraction=0.3,
                 lattice_offset=True)
    assert main(["calibrate", "patch-classifier", "--data", str(labelled_mosaics), str(other)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["n"] == 18 and report["criterion"] == "cross_bank_balanced_accuracy"
    assert len(report["banks"]) == 2
    best = max(report["table"][a]["cross_bank_balanced_accuracy"] for a in report["eligible"])
    assert report["table"][report["aggregation"]]["cross_bank_balanced_accuracy"] >= best - 0.005
    # the criterion itself: a call chosen on one bank, measured on the other
    # bank a: negative 0.2, positive 0.8 (threshold 0.5); bank b: 0.6 and 0.9 (threshold 0.75).
    # a's threshold calls b's negative tumour (0.5); b's threshold holds on a (1.0): mean 0.75
    src = [ScoreSource(np.array([v])) for v in (0.2, 0.8, 0.6, 0.9)]
    assert cross_bank_accuracy(src, [0, 1, 0, 1], ["a", "a", "b", "b"], "max") == pytest.approx(0.75)
