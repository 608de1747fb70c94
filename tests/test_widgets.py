"""The "Run model" and "Train model" dock widgets, driven in a real viewer (xvfb-run -a).

Inference runs a tiny randomly initialised CELNet over the tiny mosaic; training runs one
epoch on 16 real PCam patches. Waits use qtbot.waitUntil / waitSignal, never sleep.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_glimpse._napari.widgets import _methods
from napari_glimpse._napari.widgets._common import RecentCheckpoints, replace_layers
from napari_glimpse._napari.widgets._form import ConfigForm
from napari_glimpse._napari.widgets._inference import RECTANGLE, VIEW, shapes_box, view_box
from napari_glimpse.methods.celnet.model import CELNet, CELNetConfig

# Real PCam validation patches bundled with the tests (tests/data/ATTRIBUTION.md): the suite must
# not depend on ../shared, which a clone elsewhere does not have.
PCAM = Path(__file__).parent / "data" / "pcam_valid"
SVS = Path(__file__).resolve().parents[1] / "src/napari_glimpse/_sample_data/cmu-1-small-region.svs"
TINY = {"widths": (4, 8, 8), "blocks": 1}  # ~4k parameters: seconds on a CPU


# ------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _own_config_dir(tmp_path, monkeypatch):
    """Recent checkpoints go to a per-test folder, never the user's ~/.config."""
    monkeypatch.setenv("NAPARI_GLIMPSE_CONFIG", str(tmp_path / "config"))


@pytest.fixture
def celnet_spec():
    from napari_glimpse.methods.registry import get_method

    return get_method("celnet")


def save_tiny_celnet(path: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny CELNet checkpoint (weights + JSON config)."""
    import torch

    from napari_glimpse.runtime.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    model = CELNet(CELNetConfig(**TINY))
    save_checkpoint(path, method="celnet", config=model.config, model_state=model.state_dict())
    return path


@pytest.fixture
def tiny_ckpt(tmp_path) -> Path:
    return save_tiny_celnet(tmp_path / "tiny-celnet.safetensors")


def open_slide_layer(viewer, path):
    (layer,) = viewer.open(str(path), plugin="napari-glimpse")
    return layer


def make_inference_widget(viewer, ckpt, method="celnet"):
    """Docked as napari docks it from the manifest (the viewer reaches it as a proxy)."""
    from napari_glimpse._napari.widgets import InferenceWidget

    _, w = viewer.window.add_plugin_dock_widget("napari-glimpse", "Run model")
    assert isinstance(w, InferenceWidget)
    w.method.value = method
    w.checkpoint_file.value = str(ckpt)
    w.device.value = "cpu"
    return w


def run_to_end(qtbot, widget, timeout=60_000):
    """Run and wait for the end. Not waitSignal(worker.finished): a fast failure can finish
    before the test connects; the widget's own slot is connected before the thread starts."""
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)
    return worker


# ------------------------------------------------------------- pure helpers (no viewer)


def test_view_box_scales_corner_pixels_by_the_level_downsample():
    corners = np.array([[10, 20], [49, 99]])  # (row, col) of the drawn level, inclusive
    assert view_box(corners, 4.0, (1000, 1000)) == (80, 40, 400, 200)
    assert view_box(corners, 16.0, (1000, 500)) == (320, 160, 1000, 500)  # clipped


def test_shapes_box_inverts_the_world_transform():
    mpp = (0.5, 0.5)
    # A rectangle drawn over level-0 corners x 100..300, y 40..80 (world um, (row, col)).
    from napari_glimpse.coords import points_to_world

    rect = points_to_world(np.array([[100, 40], [300, 40], [300, 80], [100, 80]]), mpp)
    assert shapes_box([rect], (1, 1), (0, 0), mpp, (1000, 1000)) == (100, 40, 300, 80)
    # Layer scale 2: data coordinates are half the world coordinates.
    assert shapes_box([rect / 2], (2, 2), (0, 0), mpp, (200, 1000)) == (100, 40, 200, 80)


def test_recent_checkpoints_newest_first_atomic_and_signalled(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"x")
    b.write_bytes(b"y")
    store = RecentCheckpoints.for_file(tmp_path / "cfg" / "recent.json")
    assert store is RecentCheckpoints.for_file(tmp_path / "cfg" / "recent.json")
    seen = []
    store.changed.connect(lambda: seen.append(1))
    store.add(a, "celnet")
    store.add(b, "other")
    store.add(a, "celnet")
    assert [e["path"] for e in store.entries()] == [str(a), str(b)]
    assert [e["path"] for e in store.entries("celnet")] == [str(a)]
    assert len(seen) == 3
    assert [p.name for p in (tmp_path / "cfg").iterdir()] == ["recent.json"]  # no temp left
    b.unlink()
    assert [e["path"] for e in store.entries()] == [str(a)]  # vanished files are not offered
    (tmp_path / "cfg" / "recent.json").write_text("{not json")
    assert store.entries() == []


def test_config_form_shows_basic_fields_and_folds_advanced_ones_away():
    form = ConfigForm(CELNetConfig, include=lambda f: f.group != "inference")
    names = [w.name for w in form.fields]
    assert {"lr", "epochs", "augment", "momentum", "blocks"} <= set(names)
    assert "celm_a" not in names  # chosen on validation data, not trained
    assert "lr_milestones" not in names  # float tuples keep the config's value
    assert not form.lr.native.isHidden() and form.blocks.native.isHidden()  # network shape: advanced
    form.show_advanced.value = True
    assert not form.blocks.native.isHidden()
    form.lr.value = 3e-5
    assert form.values()["lr"] == pytest.approx(3e-5)  # not rounded to 0.00
    assert form.epochs.max == 10000
    assert CELNetConfig(**form.values()).lr == pytest.approx(3e-5)


def test_run_model_form_is_the_inference_config_with_few_basic_fields(celnet_spec):
    from napari_glimpse.methods.celnet.config import CELNetInferConfig

    form = ConfigForm(*_methods.inference_fields(celnet_spec))
    # every field but the learned aggregator's fitted numbers (a float tuple: set by calibrate, not typed)
    assert set(form.values()) == {f.name for f in dataclasses.fields(CELNetInferConfig)} - {"aggregator"}
    basic = [w.name for w in form.fields if w not in form.advanced]
    assert len(basic) <= 7 and "nms_min_distance" not in basic and "threshold" in basic
    CELNetInferConfig(**form.values())  # what the form gives, the config takes


def test_a_new_method_brings_its_own_training_panel(qtbot, monkeypatch):
    """Data folders follow the spec's data kind; options come from its training config."""
    from magicgui.widgets import ComboBox, FileEdit

    from napari_glimpse._napari.widgets import TrainingWidget
    from napari_glimpse.config import check, param
    from napari_glimpse.methods.registry import MethodSpec

    @dataclasses.dataclass
    class GridConfig:
        lr: float = param(1e-4, "learning rate", min=1e-7, max=1.0)
        epochs: int = param(3, "epochs", min=1, max=100)
        pooling: str = param("max", "feature pooling", choices=("max", "mean"))

        def __post_init__(self):
            check(self)

    spec = MethodSpec("grid", "grid", GridConfig, GridConfig, "x:y", "x:y", train=lambda *a, **kw: iter(()),
                      data="slides")
    monkeypatch.setattr(_methods, "method_names", lambda: ["grid"])
    monkeypatch.setattr(_methods, "get_spec", lambda name: spec)
    w = TrainingWidget()
    assert [d.name for d in w.data] == ["train_dir", "val_dir"]
    assert [d.label for d in w.data] == ["training", "validation"] and "slides" in w.data[0].tooltip
    assert all(isinstance(d, FileEdit) for d in w.data)
    assert isinstance(w.method_options.pooling, ComboBox)
    assert w.method_options.epochs.value == 3  # the method's default
    assert w._config(spec) == GridConfig()


# ------------------------------------------------------------------------ GUI tests


@pytest.mark.gui
def test_inference_adds_named_layers_and_rerun_replaces_them(
    make_napari_viewer, qtbot, tiny_mosaic, tiny_ckpt, celnet_spec
):
    viewer = make_napari_viewer()
    slide = open_slide_layer(viewer, tiny_mosaic.path)
    w = make_inference_widget(viewer, tiny_ckpt)
    assert w.slide.value.name == slide.name  # the only slide layer is chosen
    assert w.checkpoint.value == str(tiny_ckpt)
    run_to_end(qtbot, w)
    names = [lyr.name for lyr in viewer.layers]
    assert {"tumour probability", "tumour peaks"} <= set(names), names
    assert w.progress.value == w.progress.max > 0
    assert w.status.value.startswith("done: tumour (score") or w.status.value.startswith("done: no tumour (score")
    assert "0.500)" in w.status.value  # the call and the threshold it used (the checkpoint's)
    prob = viewer.layers["tumour probability"]
    # The map covers the slide: its world extent matches the slide's (within one cell).
    cell_um = prob.scale[-1]
    np.testing.assert_allclose(prob.extent.world[1], slide.extent.world[1], atol=cell_um)
    n_layers = len(viewer.layers)

    run_to_end(qtbot, w)
    assert len(viewer.layers) == n_layers  # replaced, not piled up
    assert sorted(lyr.name for lyr in viewer.layers) == sorted(names)

    viewer.window.resize(1400, 900)  # room for the canvas beside the docks
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=False)
    from PIL import Image

    Image.fromarray(np.asarray(shot)).save("/tmp/widgets-shot.png")


@pytest.mark.gui
def test_inference_on_a_drawn_rectangle_covers_only_that_box(
    make_napari_viewer, qtbot, tiny_mosaic, tiny_ckpt, celnet_spec
):
    viewer = make_napari_viewer()
    slide = open_slide_layer(viewer, tiny_mosaic.path)
    from napari_glimpse.coords import boxes_to_world

    box = (192, 96, 480, 384)
    shapes = viewer.add_shapes(boxes_to_world(np.array([box]), tiny_mosaic.mpp),
                               shape_type="rectangle", name="roi")
    w = make_inference_widget(viewer, tiny_ckpt)
    w.region.value = RECTANGLE
    w.shapes.value = shapes
    assert w.region_box(slide) == box
    run_to_end(qtbot, w)
    prob = viewer.layers["tumour probability"]
    x0, y0, x1, y1 = box
    mpp = tiny_mosaic.mpp[0]
    lo, hi = prob.extent.world  # (row, col) um of the first / last cell centres
    cell = prob.scale[-1]
    assert lo[1] - cell / 2 == pytest.approx((x0 - 0.5) * mpp, abs=cell)
    assert hi[1] + cell / 2 == pytest.approx((x1 - 0.5) * mpp, abs=cell)
    assert lo[0] - cell / 2 == pytest.approx((y0 - 0.5) * mpp, abs=cell)


@pytest.mark.gui
def test_current_view_region_follows_the_camera(make_napari_viewer, qtbot, tiny_ckpt, celnet_spec):
    viewer = make_napari_viewer(show=True)
    slide = open_slide_layer(viewer, SVS)  # 2220 x 2967 px, 0.499 um/px
    w = make_inference_widget(viewer, tiny_ckpt)
    w.region.value = VIEW
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9: scene
    camera.center = (100.0, 100.0)  # um: level-0 pixel (200, 200)
    camera.zoom = 8.0
    # napari updates corner pixels when it draws; wait for a view smaller than the slide.
    qtbot.waitUntil(lambda: slide.data_level == 0 and 0 < slide.corner_pixels[1, -1] < 2000,
                    timeout=10_000)
    x0, y0, x1, y1 = w.region_box(slide)
    assert x0 < 200 < x1 and y0 < 200 < y1
    assert (x1 - x0) < 2220 / 2 and (y1 - y0) < 2967 / 2  # a part of the slide, not all of it


def endless_infer(counter):
    """An inference generator that only stops when cancelled (a few ms of work per yield)."""
    from napari_glimpse.runtime.events import Progress

    rng = np.random.default_rng(0)

    def infer(slide, model, config, region):
        while True:
            counter.append(1)
            np.sort(rng.random(200_000))  # stands in for a batch of model work
            yield Progress("inference", len(counter), 10**6, "tile")

    return infer


@pytest.mark.gui
def test_cancel_stops_at_the_next_yield(make_napari_viewer, qtbot, tiny_mosaic, tiny_ckpt,
                                        monkeypatch):
    yields = []
    from napari_glimpse.methods.registry import MethodSpec

    @dataclasses.dataclass
    class NoParams:
        pass

    spec = MethodSpec("endless", "endless", NoParams, NoParams, load=lambda path, device: (object(), None),
                      infer=endless_infer(yields))
    monkeypatch.setattr(_methods, "method_names", lambda: ["endless"])
    monkeypatch.setattr(_methods, "get_spec", lambda name: spec)
    viewer = make_napari_viewer()
    open_slide_layer(viewer, tiny_mosaic.path)
    w = make_inference_widget(viewer, tiny_ckpt, method="endless")
    n_before = len(viewer.layers)
    w.run()
    qtbot.waitUntil(lambda: w.progress.value >= 5, timeout=10_000)
    assert w.cancel_button.enabled and not w.run_button.enabled
    w.cancel()
    at_cancel = len(yields)
    qtbot.waitUntil(lambda: w.worker is None, timeout=5000)
    assert len(yields) <= at_cancel + 2  # stopped at the next yield
    assert w.status.value == "cancelled"
    assert len(viewer.layers) == n_before  # nothing added
    assert w.run_button.enabled and not w.cancel_button.enabled

    # Closing the viewer mid-run stops the model too (and nothing touches deleted widgets).
    from qtpy.QtCore import QThreadPool

    w.run()
    qtbot.waitUntil(lambda: len(yields) > at_cancel + 5, timeout=10_000)
    viewer.close()
    assert QThreadPool.globalInstance().waitForDone(5000)  # the worker thread ended


def test_inference_form_shows_the_checkpoints_own_celm_settings(make_napari_viewer, tmp_path, tiny_ckpt):
    import torch

    from napari_glimpse.runtime.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = CELNet(CELNetConfig(**TINY, celm_a=0.9, celm_b=0.1, evidence_threshold=0.05))
    tuned = tmp_path / "tuned.safetensors"
    save_checkpoint(tuned, method="celnet", config=model.config, model_state=model.state_dict())
    w = make_inference_widget(make_napari_viewer(), tuned)
    values = w.params.values()
    assert (values["celm_a"], values["celm_b"], values["evidence_threshold"]) == pytest.approx((0.9, 0.1, 0.05))
    assert values["stride"] == 32  # not a checkpoint setting: the form's default stays
    w.checkpoint_file.value = str(tiny_ckpt)  # paper defaults again
    assert w.params.values()["celm_a"] == pytest.approx(0.5)


@pytest.mark.gui
def test_broken_checkpoint_notifies_and_viewer_keeps_working(
    make_napari_viewer, qtbot, tiny_mosaic, tmp_path, celnet_spec, monkeypatch
):
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    viewer = make_napari_viewer()
    open_slide_layer(viewer, tiny_mosaic.path)
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    w = make_inference_widget(viewer, bad)
    run_to_end(qtbot, w)
    assert len(shown) == 1 and "broken.safetensors" in shown[0], shown
    assert w.status.value == "failed" and w.run_button.enabled
    assert len(viewer.layers) == 1
    viewer.add_points([[1.0, 1.0]])  # still alive
    assert len(viewer.layers) == 2


@pytest.mark.gui
def test_no_slide_layer_gives_a_message_not_a_crash(make_napari_viewer, celnet_spec, monkeypatch):
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    from napari_glimpse._napari.widgets import InferenceWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 8)))  # not a slide: not offered
    w = InferenceWidget(viewer)
    assert w.slide.choices == (None,) or w.slide.value is None
    assert w.run() is None and "slide" in shown[0]


@pytest.mark.gui
def test_replace_layers_keeps_other_runs(make_napari_viewer):
    viewer = make_napari_viewer()
    data = [(np.zeros((4, 4)), {"name": "m", "metadata": {}}, "image")]
    replace_layers(viewer, data, "a")
    replace_layers(viewer, data, "b")
    replace_layers(viewer, data, "a")
    assert len(viewer.layers) == 2
    assert {lyr.metadata["glimpse_run"] for lyr in viewer.layers} == {"a", "b"}


@pytest.fixture
def patch_dirs(tmp_path) -> Path:
    """tmp_path/{train,valid}/{0,1}: 4 + 4 real PCam patches to train on, 2 + 2 others to validate."""
    for c in ("0", "1"):
        files = sorted((PCAM / c).glob("*.jpg"))
        for split, chosen in (("train", files[:4]), ("valid", files[4:6])):
            dest = tmp_path / split / c
            dest.mkdir(parents=True)
            for f in chosen:
                shutil.copy(f, dest / f.name)
    return tmp_path


def make_training_widget(viewer, patch_dirs, out):
    from napari_glimpse._napari.widgets import TrainingWidget

    _, training = viewer.window.add_plugin_dock_widget("napari-glimpse", "Train model")
    assert isinstance(training, TrainingWidget)
    training.method.value = "celnet"
    training.data[0].value = patch_dirs / "train"
    training.data[1].value = patch_dirs / "valid"
    training.method_options.epochs.value = 1
    training.method_options.batch_size.value = 4
    training.device.value = "cpu"
    training.output.value = out
    return training


@pytest.mark.gui
def test_training_cancel_stops_after_a_batch(make_napari_viewer, qtbot, patch_dirs, celnet_spec):
    viewer = make_napari_viewer()
    training = make_training_widget(viewer, patch_dirs, patch_dirs / "c.safetensors")
    training.method_options.epochs.value = 1000
    assert training.start() is not None
    qtbot.waitUntil(lambda: "loss" in training.curves.series, timeout=60_000)
    training.cancel_button.changed.emit(True)
    qtbot.waitUntil(lambda: training.worker is None, timeout=30_000)
    assert training.status.value == "cancelled"
    assert training.last_checkpoint is None
    assert training.start_button.enabled and training.resume_button.enabled


@pytest.mark.gui
def test_training_one_epoch_checkpoint_appears_in_inference_widget(
    make_napari_viewer, qtbot, patch_dirs, celnet_spec
):
    from napari_glimpse._napari.widgets import InferenceWidget

    viewer = make_napari_viewer()
    _, inference = viewer.window.add_plugin_dock_widget("napari-glimpse", "Run model")
    assert isinstance(inference, InferenceWidget)
    training = make_training_widget(viewer, patch_dirs, patch_dirs / "trained.safetensors")
    # keep the network tiny (an advanced field: tuples are typed as numbers separated by spaces)
    training.method_options.set_values(TINY)
    assert training.method_options.values()["widths"] == (4, 8, 8)
    inference.method.value = "celnet"
    assert training.start() is not None
    qtbot.waitUntil(lambda: training.worker is None, timeout=120_000)
    assert training.last_checkpoint and Path(training.last_checkpoint).is_file()
    assert training.status.value.startswith("saved")
    assert "loss" in training.curves.series
    assert str(Path(training.last_checkpoint).resolve()) in inference.checkpoint.choices
    recent = json.loads((patch_dirs / "config" / "recent_checkpoints.json").read_text())
    assert recent["checkpoints"][0]["method"] == "celnet"
    training.native.grab().save("/tmp/widgets-train-shot.png")

    # Resume continues from the saved epoch to the new total.
    epochs_seen = []
    training.method_options.epochs.value = 2
    training.resume_button.changed.emit(True)  # what a click does
    assert training.worker is not None
    training.worker.yielded.connect(lambda ev: epochs_seen.append((ev.stage, ev.done)))
    qtbot.waitUntil(lambda: training.worker is None, timeout=120_000)
    assert training.status.value.startswith("saved"), training.status.value
    assert ("epoch", 2) in epochs_seen and ("epoch", 1) not in epochs_seen

    # "start from": a new run fine-tuned from the checkpoint just trained
    from napari_glimpse.runtime.checkpoint import read_header

    training.init.value = training.last_checkpoint
    training.output.value = patch_dirs / "finetuned.safetensors"
    training.method_options.epochs.value = 1
    assert training.start() is not None
    qtbot.waitUntil(lambda: training.worker is None, timeout=120_000)
    assert training.status.value.startswith("saved"), training.status.value
    header = read_header(patch_dirs / "finetuned.safetensors")
    assert header["training"]["init"] == str(Path(patch_dirs / "trained.safetensors").resolve())


@pytest.mark.gui
def test_glimpse_tree_run_attaches_click_select_and_layers_are_in_um(
    make_napari_viewer, qtbot, tiny_mosaic
):
    """The widget runs the method's layers hook (as `view` does) and its layers say um,
    like the slide's: napari wants one unit per axis across layers for the scale bar."""
    from napari_glimpse._napari.widgets import InferenceWidget
    from napari_glimpse._napari.widgets._inference import DEFAULT

    viewer = make_napari_viewer()
    slide = open_slide_layer(viewer, tiny_mosaic.path)
    _, w = viewer.window.add_plugin_dock_widget("napari-glimpse", "Run model")
    assert isinstance(w, InferenceWidget)
    w.method.value = "glimpse-tree"
    w.checkpoint.value = DEFAULT  # the shipped checkpoint
    w.device.value = "cpu"
    hooked = lambda: [cb for cb in viewer.mouse_drag_callbacks  # noqa: E731
                      if getattr(cb, "_glimpse_select_callback", False)]
    assert not hooked()
    run_to_end(qtbot, w, timeout=180_000)
    assert w.status.value.startswith("done"), w.status.value
    added = [lyr for lyr in viewer.layers if lyr.metadata.get("glimpse_run")]
    assert any(lyr.metadata.get("glimpse_role") == "boxes" for lyr in added), added
    assert len(hooked()) == 1
    for layer in [slide, *added]:
        assert [str(u) for u in layer.units] == ["micrometer"] * layer.ndim, layer.name
    units = viewer.layers.units  # None when the layers' units disagree
    assert units is not None and [str(u) for u in units[-2:]] == ["micrometer"] * 2

    run_to_end(qtbot, w, timeout=180_000)  # a re-run calls the hook again: still one callback
    assert len(hooked()) == 1


@pytest.mark.gui
def test_glimpse_tree_form_runs_each_shipped_tree_with_its_own_split(make_napari_viewer, tiny_mosaic):
    # the supervised tree splits N_G = 8 as (4, 2), MIL as (2, 4) (chosen on validation mosaics);
    # the form's N_G (0: the checkpoint's, or 8) keeps each checkpoint's own split
    from napari_glimpse._napari.widgets import _methods
    from napari_glimpse.methods import get_method
    from napari_glimpse.methods.registry import load_model, shipped_checkpoint
    from napari_glimpse.runtime.events import run_to_end as drain

    spec = get_method("glimpse-tree")
    w = make_inference_widget(make_napari_viewer(), shipped_checkpoint(spec, "supervised"), method="glimpse-tree")
    for strategy, split in (("supervised", [4, 2]), ("mil", [2, 4])):
        w.checkpoint_file.value = shipped_checkpoint(spec, strategy)
        assert w.params.values()["branching"] == tuple(split)  # shown as "4 2" / "2 4"
        for leaves in (0, 8):
            params = {**w.params.values(), "leaves": leaves}
            model = load_model(spec, strategy, "cpu")
            res = drain(_methods.infer_generator(spec, str(tiny_mosaic.path), model, region=None, params=params))
            assert res.summary["branching"] == split, (strategy, leaves)
    # the split is editable; text that is not whole numbers names the field
    w.params.branching.value = "1 8"
    assert w.params.values()["branching"] == (1, 8)
    w.params.branching.value = "1 x"
    with pytest.raises(ValueError, match="branching"):
        w.params.values()
