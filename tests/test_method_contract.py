"""The method contract, proved with a method that lives in this file alone.

"mean-colour" is a real, if humble, patch classifier: logistic regression on a patch's mean
RGB (tumour patches are darker and more purple). It registers one MethodSpec, trains through
runtime.fit, and is driven through `napari-glimpse train / evaluate / infer`, both dock
widgets and the result reader, with no package file touched.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_glimpse.config import check, param
from napari_glimpse.methods.registry import MethodSpec, register, unregister
from napari_glimpse.results import InferenceResult, SlideMap
from napari_glimpse.runtime.events import Progress
from napari_glimpse.runtime.fit import Trainer, fit

PCAM = Path(__file__).parent / "data" / "pcam_valid"  # held out: 80 PCam valid patches
BANK = Path(__file__).resolve().parents[1] / "src/napari_glimpse/_sample_data/patches"  # 300 other patches
HERE = "test_method_contract"  # this module, as the lazy references name it


@dataclasses.dataclass
class MeanColourConfig:
    epochs: int = param(30, "epochs", min=1, max=1000)
    lr: float = param(0.5, "learning rate", min=1e-5, max=10.0)
    mpp: float = param(0.972, "working resolution (um/px)", min=0.1, max=10.0, advanced=True)
    threshold: float = param(0.5, "call threshold handed to inference", min=0.0, max=1.0, group="inference")

    def __post_init__(self):
        check(self)


@dataclasses.dataclass
class MeanColourInferConfig:
    cell: int = param(96, "working px per map cell", min=8, max=1024)
    threshold: float = param(0.5, "tumour threshold", min=0.0, max=1.0)

    def __post_init__(self):
        check(self)


class MeanColour(torch.nn.Module):
    def __init__(self, config: MeanColourConfig):
        super().__init__()
        self.config = config
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, rgb_mean):  # (N, 3) in [0, 1]
        return self.linear((rgb_mean - 0.6) * 10)[:, 0]


def _patch_means(folder):
    from napari_glimpse.runtime.data import load_patch_folder

    data = load_patch_folder(folder)
    x = torch.from_numpy(data.images.reshape(len(data.images), -1, 3).mean(1) / 255.0).float()
    return x, torch.from_numpy(data.labels).float()


class MeanColourTrainer(Trainer):
    def setup(self):
        self.x, self.y = _patch_means(self.train_dir)
        self.val = _patch_means(self.val_dir) if self.val_dir else None
        self.model = MeanColour(self.config).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.lr)
        self.scheduler = None
        yield Progress("load", 1, 1, "patch means")

    def train_epoch(self, epoch, net):
        self.optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(self.x), self.y)
        loss.backward()
        self.optimizer.step()
        yield Progress("train", 1, 1, f"epoch {epoch + 1}", {"loss": loss.item()})
        return {"train_loss": loss.item()}

    def validate(self, epoch):
        if self.val is None:
            return None
        from napari_glimpse.evaluate import roc_auc

        with torch.no_grad():
            p = torch.sigmoid(self.model(self.val[0])).numpy()
        auc = roc_auc(self.val[1].numpy(), p)
        yield Progress("validate", 1, 1, "validation")
        return {"score": auc, "val_auc": auc}

    def data_summary(self):
        return {"train": str(self.train_dir), "patches": len(self.y)}


def train(train_dir, out, *, val_dir=None, config=None, resume=False, device="auto", seed=0, init=None):
    return (yield from fit("mean-colour", MeanColourTrainer, config or MeanColourConfig(), train_dir, out,
                           val_dir=val_dir, resume=resume, init=init, device=device, seed=seed))


def load(path, device):
    from napari_glimpse.runtime.checkpoint import build_from_checkpoint

    return build_from_checkpoint(path, "mean-colour", MeanColourConfig, MeanColour, device)


def infer(slide, model, config, region):
    """Tumour probability per cell of ``config.cell`` working px over the slide (or region)."""
    from napari_glimpse.runtime.regions import read_region_at

    x0, y0, x1, y1 = region or (0, 0, *slide.dimensions)
    ds = model.config.mpp / float(np.mean(slide.mpp)) if slide.mpp else 1.0
    step = config.cell * ds
    rows, cols = max(1, int((y1 - y0) // step)), max(1, int((x1 - x0) // step))
    probs = np.zeros((rows, cols), np.float32)
    pixels = 0
    for r in range(rows):
        img, n = read_region_at(slide, x0, y0 + r * step, cols * config.cell, config.cell, ds)
        pixels += n
        means = img.reshape(config.cell, cols, config.cell, 3).mean(axis=(0, 2)) / 255.0
        with torch.no_grad():
            probs[r] = torch.sigmoid(model.model(torch.from_numpy(means).float())).numpy()
        yield Progress("inference", r + 1, rows, f"row {r + 1}/{rows}")
    rr, cc = np.unravel_index(np.argsort(-probs, axis=None)[:10], probs.shape)
    evidence = [[x0 + (c + 0.5) * step, y0 + (r + 0.5) * step] for r, c in zip(rr, cc, strict=True)]
    score = float(probs.max())
    return InferenceResult(
        "mean-colour", slide.path, score, maps=[SlideMap("mean-colour probability", probs, step, (x0, y0))],
        summary={"slide_score": score, "patches_read": rows, "pixels_read": pixels, "evidence": evidence,
                 "call": int(score >= config.threshold)}, mpp=slide.mpp)


def evaluate(data_dir, model, config, *, limit=0):
    from napari_glimpse.evaluate import roc_auc

    x, y = _patch_means(data_dir)
    with torch.no_grad():
        p = torch.sigmoid(model.model(x)).numpy()
    yield Progress("evaluate", 1, 1, "patches")
    return {"n": len(y), "auc": roc_auc(y.numpy(), p),
            "accuracy": float(np.mean((p >= config.threshold) == y.numpy().astype(bool)))}


SPEC = MethodSpec(
    name="mean-colour", title="Mean colour (a contract test)",
    train_config=f"{HERE}:MeanColourConfig", infer_config=f"{HERE}:MeanColourInferConfig",
    load=f"{HERE}:load", infer=f"{HERE}:infer", train=f"{HERE}:train", evaluate=f"{HERE}:evaluate",
    data="patches",
)


@pytest.fixture
def registered():
    register(SPEC, replace=True)
    yield SPEC
    unregister(SPEC.name)


def test_a_method_in_one_file_runs_through_cli_widgets_and_reader(registered, tmp_path, capsys,
                                                                   make_napari_viewer, qtbot, tiny_mosaic,
                                                                   monkeypatch):
    from napari_glimpse.cli import main
    from napari_glimpse.runtime.checkpoint import read_header
    from napari_glimpse.runtime.results_io import load_result

    monkeypatch.setenv("NAPARI_GLIMPSE_CONFIG", str(tmp_path / "config"))
    ckpt = tmp_path / "mc.safetensors"
    # train: its flags are its config's; another method's flag is refused
    with pytest.raises(SystemExit):
        main(["train", "mean-colour", "--data", str(PCAM), "--out", str(ckpt), "--blocks", "1"])
    with pytest.raises(SystemExit):  # chosen on validation data, not trained: no training flag
        main(["train", "mean-colour", "--data", str(PCAM), "--out", str(ckpt), "--threshold", "0.4"])
    capsys.readouterr()
    assert main(["train", "mean-colour", "--data", str(BANK), "--val", str(PCAM), "--out", str(ckpt),
                 "--epochs", "40"]) == 0
    from napari_glimpse.runtime.fit import last_path

    header = read_header(last_path(ckpt), expected_method="mean-colour")
    assert len(header["history"]) == 40 and header["config"]["epochs"] == 40
    best = read_header(ckpt)["best"]  # the best checkpoint is the epoch of the highest validation AUC
    assert best["score"] == max(h["val_auc"] for h in header["history"])
    capsys.readouterr()
    # evaluate: it learned (mean colour separates PCam tumour from normal well above chance)
    assert main(["evaluate", "mean-colour", "--checkpoint", str(ckpt), "--data", str(PCAM)]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["n"] == 80 and metrics["auc"] > 0.65, metrics
    # infer: the common summary, the result folder, and the reader
    out = tmp_path / "out"
    assert main(["infer", "mean-colour", "--checkpoint", str(ckpt), str(tiny_mosaic.path), "--out", str(out),
                 "--cell", "48", "--quiet"]) == 0
    summary = json.loads((out / tiny_mosaic.path.stem / "summary.json").read_text())
    from napari_glimpse.runtime.run import SUMMARY_KEYS

    assert set(SUMMARY_KEYS) <= set(summary), summary.keys()
    assert summary["method"] == "mean-colour" and summary["summary"]["call"] in (0, 1)
    result = load_result(out / tiny_mosaic.path.stem)
    assert result.maps[0].name == "mean-colour probability" and result.maps[0].data.shape == (8, 8)  # 768 px at 0.5 um/px, 48 px cells at 0.972

    # both dock widgets list it and run it
    from napari_glimpse._napari.widgets import InferenceWidget, TrainingWidget

    viewer = make_napari_viewer()
    viewer.open(str(tiny_mosaic.path), plugin="napari-glimpse")
    run = InferenceWidget(viewer)
    viewer.window.add_dock_widget(run)  # docked: the viewer owns it and cleans it up
    assert "mean-colour" in run.method.choices
    run.method.value = "mean-colour"
    assert set(run.params.values()) == {"cell", "threshold"}
    run.checkpoint_file.value = str(ckpt)
    assert run.run() is not None
    qtbot.waitUntil(lambda: run.worker is None, timeout=60_000)
    assert "mean-colour probability" in [layer.name for layer in viewer.layers], run.status.value
    assert len(run.models) == 1
    run.run()  # a second run reuses the loaded model
    qtbot.waitUntil(lambda: run.worker is None, timeout=60_000)
    assert len(run.models) == 1
    panel = TrainingWidget(viewer)
    viewer.window.add_dock_widget(panel)
    panel.method.value = "mean-colour"
    assert [d.label for d in panel.data] == ["training", "validation"]
    assert set(panel.method_options.values()) == {"epochs", "lr", "mpp"}  # threshold: chosen, not trained
    panel.data[0].value = PCAM
    panel.method_options.epochs.value = 3
    panel.output.value = tmp_path / "gui.safetensors"
    assert panel.start() is not None
    qtbot.waitUntil(lambda: panel.worker is None, timeout=60_000)
    assert panel.last_checkpoint and Path(panel.last_checkpoint).is_file(), panel.status.value
