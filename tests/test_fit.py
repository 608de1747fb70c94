"""The one training loop (runtime/fit.py) driven by a toy trainer: a 2-parameter linear model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from napari_glimpse.errors import CheckpointError, GlimpseError
from napari_glimpse.runtime.checkpoint import load_checkpoint, save_checkpoint
from napari_glimpse.runtime.events import Progress
from napari_glimpse.runtime.fit import Trainer, fit, last_path

METHOD = "toy-linear"


@dataclass
class ToyConfig:
    epochs: int = 4
    lr: float = 0.05
    mpp: float = 1.0
    scores: tuple[float, ...] = ()  # validation score of each epoch (empty: no validation)
    warmup_epochs: int = 0  # epochs that may not become the best


class ToyTrainer(Trainer):
    """y = 3x - 1 plus noise, fitted by SGD with momentum and a decaying step."""

    def setup(self):
        data = torch.Generator().manual_seed(self.seed)
        self.x = torch.randn(64, 1, generator=data)
        self.y = 3 * self.x - 1 + 0.1 * torch.randn(64, 1, generator=data)
        self.model = torch.nn.Linear(1, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.lr, momentum=0.9)
        # decays after resume points: a schedule restored wrongly changes the weights
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=[2, 3], gamma=0.5)
        self.steps = 0
        yield Progress("load", 1, 1, "toy data")

    def train_epoch(self, epoch, net):
        order = torch.randperm(64, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
        total = 0.0
        for b in range(4):
            idx = order[b * 16 : (b + 1) * 16]
            # input noise from torch's global generator: resume must restore its state
            x = self.x[idx] + 0.05 * torch.randn(16, 1)
            self.optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(net(x), self.y[idx])
            loss.backward()
            self.optimizer.step()
            total += loss.item()
            self.steps += 1
            yield Progress("train", b + 1, 4, f"epoch {epoch + 1}", {"loss": total / (b + 1)})
        self.scheduler.step()
        return {"train_loss": total / 4, "phase": "fit"}

    def validate(self, epoch):
        if not self.config.scores:
            return None
        yield Progress("validate", 1, 1, "toy validation")
        return {"score": self.config.scores[epoch], "val_auc": self.config.scores[epoch]}

    def may_be_best(self, epoch):
        return epoch >= self.config.warmup_epochs

    def data_summary(self):
        return {"train": "toy", "n": 64}

    def state(self):
        return {"steps": self.steps}

    def load_state(self, state):
        self.steps = state["steps"]


def _drive(gen, stop=None):
    """Run ``gen``; ``stop(event)`` True closes it there (a GUI cancel, or a kill: nothing after
    that point runs). Returns (result or None, events)."""
    events = []
    while True:
        try:
            ev = next(gen)
        except StopIteration as done:
            return done.value, events
        events.append(ev)
        if stop is not None and stop(ev):
            gen.close()
            return None, events


def _fit(out, config, **kw):
    return fit(METHOD, ToyTrainer, config, "toy-data", out, device="cpu", seed=kw.pop("seed", 4), **kw)


def test_fit_writes_best_and_last_with_the_history(tmp_path):
    out = tmp_path / "m.safetensors"
    result, events = _drive(_fit(out, ToyConfig()))
    assert result == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.last.safetensors", "m.safetensors"]  # no *.tmp
    epochs = [e for e in events if e.stage == "epoch"]
    assert [e.done for e in epochs] == [1, 2, 3, 4] and all(e.total == 4 for e in epochs)
    assert all("train_loss" in e.metrics and "phase" not in e.metrics for e in epochs)  # numbers only
    last = load_checkpoint(last_path(out), expected_method=METHOD)
    history = last.header["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # it learns
    assert last.header["classes"] == ["normal", "tumour"] and last.header["mpp"] == 1.0
    assert last.header["training"] == {"train": "toy", "n": 64, "seed": 4, "device": "cpu", "world_size": 1,
                                       "init": None}
    assert last.header["trainer"] == {"steps": 16}
    # without validation data the best epoch is the lowest training loss
    best = load_checkpoint(out)
    lowest = min(history, key=lambda h: h["train_loss"])["epoch"]
    assert best.epoch == best.header["best"]["epoch"] == lowest
    assert best.optimizer_state is None and last.optimizer_state is not None
    w = last.model_state["weight"].item()
    assert abs(w - 3) < 1.0


@pytest.mark.parametrize("stop_at", ["epoch 2", "epoch 3, batch 2"])
def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, stop_at):
    full = tmp_path / "full.safetensors"
    _drive(_fit(full, ToyConfig()))
    part = tmp_path / "part.safetensors"
    if stop_at == "epoch 2":
        def stop(ev):
            return ev.stage == "epoch" and ev.done == 2
    else:  # in the middle of epoch 3: what it trained is lost, epoch 2 is on disk
        seen = []

        def stop(ev):
            seen.append(ev.stage)
            return seen.count("epoch") == 2 and ev.stage == "train" and ev.done == 2
    cancelled, _ = _drive(_fit(part, ToyConfig()), stop)
    assert cancelled is None and load_checkpoint(last_path(part)).epoch == 2
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))

    result, events = _drive(_fit(part, ToyConfig(), resume=True))
    assert result == str(part)
    resumed = [e for e in events if e.stage == "resume"]
    assert len(resumed) == 1 and resumed[0].done == 2
    assert [e.done for e in events if e.stage == "epoch"] == [3, 4]
    a, b = load_checkpoint(last_path(full)), load_checkpoint(last_path(part))
    assert a.model_state.keys() == b.model_state.keys()
    assert all(torch.equal(a.model_state[k], b.model_state[k]) for k in a.model_state)
    assert torch.equal(a.optimizer_state["state"][0]["momentum_buffer"], b.optimizer_state["state"][0]["momentum_buffer"])
    assert a.header["history"] == b.header["history"] and a.header["best"] == b.header["best"]
    assert b.header["trainer"] == {"steps": 16}  # the trainer's own state came back too
    assert b.header["scheduler"]["last_epoch"] == 4


def test_validation_score_picks_the_best_epoch_after_the_warm_up(tmp_path):
    out = tmp_path / "m.safetensors"
    # epoch 1 scores highest but is in the warm-up; epoch 4's NaN never displaces a real score
    config = ToyConfig(scores=(0.99, 0.3, 0.9, math.nan), warmup_epochs=1)
    _, events = _drive(_fit(out, config, val_dir=tmp_path))
    assert [e.message.endswith("(best)") for e in events if e.stage == "epoch"] == [False, True, True, False]
    best = load_checkpoint(out)
    assert best.header["best"] == {"epoch": 3, "score": 0.9}
    assert best.epoch == 3 and best.metrics["val_auc"] == 0.9
    history = load_checkpoint(last_path(out)).header["history"]
    assert [h["val_auc"] for h in history[:3]] == [0.99, 0.3, 0.9] and math.isnan(history[3]["val_auc"])


def test_no_best_epoch_is_an_error(tmp_path):
    out = tmp_path / "m.safetensors"
    with pytest.raises(CheckpointError, match="no best checkpoint was written"):
        _drive(_fit(out, ToyConfig(epochs=2, warmup_epochs=2)))
    assert last_path(out).exists() and not out.exists()


def test_init_starts_from_the_given_weights(tmp_path):
    init = save_checkpoint(tmp_path / "init.safetensors", method=METHOD, config=ToyConfig(),
                           model_state={"weight": torch.tensor([[5.0]]), "bias": torch.tensor([-2.0])})
    out = tmp_path / "ft.safetensors"
    _drive(_fit(out, ToyConfig(epochs=1, lr=0.0), init=init))  # lr 0: the weights stay as loaded
    state = load_checkpoint(out).model_state
    assert state["weight"].item() == 5.0 and state["bias"].item() == -2.0
    assert load_checkpoint(out).header["training"]["init"] == init
    fresh = tmp_path / "fresh.safetensors"
    _drive(_fit(fresh, ToyConfig(epochs=1, lr=0.0)))
    assert load_checkpoint(fresh).model_state["weight"].item() != 5.0
    other = save_checkpoint(tmp_path / "other.safetensors", method="celnet", config={},
                            model_state={"weight": torch.zeros(1, 1), "bias": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="'celnet'.*'toy-linear'"):
        _drive(_fit(tmp_path / "x.safetensors", ToyConfig(), init=other))
    assert not (tmp_path / "x.safetensors").exists()


def test_resume_refuses_a_best_checkpoint_without_its_last(tmp_path):
    out = tmp_path / "m.safetensors"
    _drive(_fit(out, ToyConfig(epochs=1)))
    last_path(out).unlink()
    with pytest.raises(CheckpointError, match="no '.last' companion"):
        _drive(_fit(out, ToyConfig(), resume=True))


def test_torchrun_is_refused_without_ddp_support(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(GlimpseError, match="one process"):
        next(_fit(tmp_path / "m.safetensors", ToyConfig()))
    assert not list(tmp_path.iterdir())


def test_training_options_are_config_fields_not_keywords(tmp_path):
    # epochs / lr / batch_size / epoch_size / workers used to be keywords that unknown names
    # slipped past silently; now they are config fields and a stray keyword is a TypeError
    from napari_glimpse.methods.celnet.training import train_celnet
    from napari_glimpse.methods.glimpse_tree.training import train as train_tree

    with pytest.raises(TypeError, match="epochs"):
        train_celnet(tmp_path, tmp_path / "m.safetensors", epochs=1)
    with pytest.raises(TypeError, match="strategy"):
        train_tree(tmp_path, tmp_path / "m.safetensors", strategy="mil")
