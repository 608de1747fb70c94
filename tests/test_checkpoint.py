"""Checkpoints: safetensors + JSON header; never unpickled; clear refusals."""

from __future__ import annotations

import pickle
import struct

import pytest
import torch

from napari_glimpse.errors import CheckpointError
from napari_glimpse.methods.celnet.model import CELNet, CELNetConfig
from napari_glimpse.runtime.checkpoint import (
    edit_config,
    load_checkpoint,
    load_model,
    save_checkpoint,
)

TINY = CELNetConfig(widths=(4, 8, 8), reduction=2, blocks=1)


def _save(path, config=TINY, method="celnet", **kw):
    torch.manual_seed(0)
    model = CELNet(config)
    save_checkpoint(path, method=method, config=config, model_state=model.state_dict(),
                    header={"classes": ["normal", "tumour"], "mpp": config.mpp, "epoch": 3,
                            "metrics": {"val_auc": 0.9}}, **kw)
    return model


def test_round_trip_restores_weights_config_and_header(tmp_path):
    path = tmp_path / "sub" / "m.safetensors"
    model = _save(path)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    model(torch.rand(2, 3, 32, 32))["logit"].sum().backward()
    opt.step()
    rng = torch.get_rng_state()
    save_checkpoint(path, method="celnet", config=TINY, model_state=model.state_dict(),
                    header={"epoch": 4}, optimizer_state=opt.state_dict(),
                    rng_state={"torch": rng})
    assert [p.name for p in path.parent.iterdir()] == ["m.safetensors"]  # no temp file left
    ckpt = load_checkpoint(path, expected_method="celnet")
    assert ckpt.method == "celnet" and ckpt.epoch == 4
    assert ckpt.config["widths"] == [4, 8, 8]
    assert ckpt.header["package_version"]
    loaded = load_model(path, method="celnet")
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert loaded.config == TINY and not loaded.training
    opt2 = torch.optim.SGD(loaded.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    opt2.load_state_dict(ckpt.optimizer_state)
    for s1, s2 in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values(), strict=True):
        assert torch.equal(s1["momentum_buffer"], s2["momentum_buffer"])
    assert torch.equal(ckpt.rng_state["torch"], rng)


class _Payload:
    """Unpickling this creates a file: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", ["evil.safetensors", "evil.pth", "evil.pkl"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, name):
    marker = tmp_path / "payload_ran"
    path = tmp_path / name
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match="refusing to unpickle") as err:
        load_model(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_torch_save_file_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(CELNet(TINY).state_dict(), path)
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint; refusing to unpickle"):
        load_checkpoint(path)


def test_other_method_is_refused_naming_both(tmp_path):
    path = tmp_path / "m.safetensors"
    _save(path, method="magnet")
    with pytest.raises(CheckpointError, match="'magnet'.*'celnet'"):
        load_checkpoint(path, expected_method="celnet")


def test_config_that_does_not_fit_the_weights_names_both_shapes(tmp_path):
    path = tmp_path / "m.safetensors"
    model = CELNet(CELNetConfig(widths=(4, 8, 16), reduction=2, blocks=1))
    # weights of one shape under the config of another
    save_checkpoint(path, method="celnet", config=TINY, model_state=model.state_dict())
    with pytest.raises(CheckpointError, match=r"parameter .* has shape \(.*\) in the checkpoint but \(.*\) in the model built from the config"):
        load_model(path, method="celnet")


def test_unknown_config_field_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    config = {**{k: getattr(TINY, k) for k in TINY.__dataclass_fields__}, "warp_drive": 3}
    save_checkpoint(path, method="celnet", config=config, model_state=CELNet(TINY).state_dict())
    with pytest.raises(CheckpointError, match="warp_drive"):
        load_model(path)


@pytest.mark.parametrize("cut", [4, 100, -10])
def test_truncated_file_is_refused(tmp_path, cut):
    path = tmp_path / "m.safetensors"
    _save(path)
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(path)


@pytest.mark.parametrize("length", [0x80, 0x4B50, 0x180])  # low bytes 0x80 / "PK": pickle / zip look-alikes
@pytest.mark.parametrize("cut", [4, 9, 100])
def test_truncated_file_whose_header_length_looks_like_a_pickle(tmp_path, length, cut):
    # The header length's low byte is whatever the JSON's size makes it; CI once produced a
    # header whose first byte was 0x80 and a truncated checkpoint was called a pickle.
    path = tmp_path / "m.safetensors"
    path.write_bytes((struct.pack("<Q", length) + b'{"__metadata__": {"x": "' + b"y" * 200)[:cut])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_edit_config_changes_settings_keeps_weights_and_records_the_edit(tmp_path):
    src, out = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    model = _save(src)
    edit_config(src, out, {"celm_a": 0.75, "evidence_threshold": 0.01}, "chosen on validation",
                expected_method="celnet")
    ckpt = load_checkpoint(out)
    assert ckpt.config["celm_a"] == 0.75 and ckpt.config["evidence_threshold"] == 0.01
    assert ckpt.config["celm_b"] == TINY.celm_b and ckpt.header["metrics"] == {"val_auc": 0.9}
    edits = ckpt.header["edits"]
    assert [(e["field"], e["from"], e["to"]) for e in edits] == [
        ("config.celm_a", TINY.celm_a, 0.75), ("config.evidence_threshold", TINY.evidence_threshold, 0.01)]
    assert all(e["why"] == "chosen on validation" for e in edits)
    loaded = load_model(out)
    assert loaded.config.celm_a == 0.75
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(CheckpointError, match="warp_drive"):
        edit_config(src, out, {"warp_drive": 3}, "no such field")
    with pytest.raises(CheckpointError, match="glimpse-tree"):
        edit_config(src, out, {"celm_a": 0.5}, "wrong method", expected_method="glimpse-tree")


def test_garbage_and_missing_files(tmp_path):
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"hello world, not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
