"""The checkpoints shipped inside the package load safely and beat chance on held-out data."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from test_glimpse_tree import one_thread  # noqa: E402, F401  (fixture: tiny networks run on one thread)

from napari_glimpse.methods import get_method, load_model  # noqa: E402
from napari_glimpse.methods.registry import infer_config_for  # noqa: E402
from napari_glimpse.runtime.events import run_to_end  # noqa: E402

HELD_OUT = Path(__file__).parent / "data" / "pcam_valid"


_drain = run_to_end  # drive a progress generator to its result


@pytest.mark.parametrize("method", ["celnet", "patch-classifier"])
def test_shipped_patch_models_beat_chance_on_held_out_pcam(method):
    spec = get_method(method)
    ckpt = spec.default_checkpoint()
    assert ckpt is not None and Path(ckpt).is_file(), f"{method} ships a default checkpoint"
    model = load_model(spec, None, "cpu")
    metrics = _drain(spec.get("evaluate")(HELD_OUT, model, infer_config_for(spec, model)))
    assert metrics["n"] == 80
    # Full PCam validation split: CELNet 0.883 / 0.948, the pcam encoder 0.840 / 0.922 (README). 80 patches are noisy, so the
    # bar is "clearly better than chance", which a random or constant model does not pass.
    assert metrics["auc"] > 0.75, metrics
    assert metrics["accuracy"] > 0.65, metrics


@pytest.fixture(scope="module")
def held_out_mosaics(tmp_path_factory):
    """Eight one-region mosaics (4992 px) of the 80 held-out PCam validation patches, four with tumour."""
    from napari_glimpse.mosaic import make_mosaics

    out = tmp_path_factory.mktemp("held_out_mosaics")
    make_mosaics(HELD_OUT, out, count=8, size=(4992, 4992), seed=21, max_patches_per_class=40)
    return out


@pytest.mark.parametrize("strategy", ["supervised", "mil"])
def test_shipped_glimpse_trees_beat_chance_on_held_out_mosaics(held_out_mosaics, strategy, one_thread):  # noqa: F811
    # patches no shipped model saw, in slides none was selected on; N_G = 8, T = 0.05, seed 0.
    # Eight slides are few, so the bar is well above chance, not the README's figures.
    spec = get_method("glimpse-tree")
    model = load_model(spec, strategy, "cpu")
    res = _drain(spec.get("evaluate")(held_out_mosaics, model, infer_config_for(spec, model, {"seed": 0})))
    assert res["n"] == 8 and sum(res["labels"]) == 4
    assert res["auc"] >= 0.8, res
    # one region: 1 + n0 + 8 glimpses, (2, 4) for MIL and (4, 2) for supervised (its checkpoint's split)
    assert res["patches_per_slide"] <= {"mil": 11, "supervised": 13}[strategy]


def test_shipped_pcam_encoder_finds_the_tumour_of_held_out_mosaics(held_out_mosaics, one_thread):  # noqa: F811
    # the patch classifier's most probable cell (its first evidence point) on each positive
    # mosaic falls on the tumour mask: the grid the features come from lands on the right pixels
    import tifffile

    from napari_glimpse.runtime.data import read_labels
    from napari_glimpse.slides import open_slide

    spec = get_method("patch-classifier")
    model = load_model(spec, None, "cpu")
    labels = read_labels(held_out_mosaics / "labels.csv")
    hits = positives = 0
    for stem, label in labels.values.items():
        if not label:
            continue
        positives += 1
        with open_slide(held_out_mosaics / f"{stem}.tif") as slide:
            res = _drain(spec.get("infer")(slide, model, infer_config_for(spec, model), None))
        x, y = res.summary["evidence"][0]
        mask = tifffile.imread(held_out_mosaics / f"{stem}.mask.tif")
        hits += bool(mask[int(y), int(x)])
    assert positives == 4 and hits >= 3, (hits, positives)
