"""The shared encoder registry and the patch classifier whose checkpoints are encoders."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from napari_glimpse.encoders import list_encoders, load_encoder, weights_checksum
from napari_glimpse.errors import CheckpointError
from napari_glimpse.evaluate import roc_auc
from napari_glimpse.methods.backbones import ResNet
from napari_glimpse.methods.patch_classifier.config import PatchClassifierConfig
from napari_glimpse.methods.patch_classifier.training import train_patch_classifier
from napari_glimpse.runtime.data import load_patch_folder
from napari_glimpse.runtime.regions import to_tensor


def _drain(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def test_registry_names_and_unknown_names():
    assert {"pcam", "small", "resnet18", "resnet34"} <= {s.name for s in list_encoders()}
    with pytest.raises(ValueError, match="known: .*resnet34"):
        load_encoder("vit-huge")
    with pytest.raises(CheckpointError, match="no such file"):
        load_encoder("resnet18=/nowhere/resnet18.pth")


def test_untrained_small_encoder_is_the_same_on_every_load_and_its_checksum_follows_the_weights():
    a, b = load_encoder("small"), load_encoder("small")
    assert a.checksum == b.checksum
    x = torch.rand(3, 3, 96, 96)
    with torch.inference_mode():
        assert torch.equal(a(x), b(x))
        assert a(x).shape == (3, a.feature_dim)
        b.trunk.stem[0].weight.add_(1e-3)
    assert weights_checksum(b) != a.checksum


def test_a_torchvision_state_dict_loads_by_its_parameter_names(tmp_path):
    ref = ResNet((2, 2, 2, 2))  # torchvision resnet18 names, fc 1000 included
    torch.manual_seed(1)
    for p in ref.parameters():
        p.data.normal_(0, 0.05)
    path = tmp_path / "resnet18-abc.pth"
    torch.save(ref.state_dict(), path)
    enc = load_encoder(f"resnet18={path}")
    assert enc.name == "resnet18=resnet18-abc.pth" and enc.feature_dim == 512
    x = torch.rand(2, 3, 64, 64)
    ref.eval()
    with torch.inference_mode():
        want = ref.avgpool(ref.layer4(ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(
            (x - enc.mean) / enc.std))))))))).flatten(1)
        assert torch.allclose(enc(x), want, atol=1e-5)
    # a state dict of another network, and a pickle that would run code, are refused with the file named
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_encoder(f"resnet34={tmp_path / 'bad.pth'}")


class _Boom:
    def __reduce__(self):
        return (print, ("executed",))


def test_a_pickle_with_code_is_not_executed(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"x": _Boom()}, path)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_encoder(f"resnet18={path}")
    assert "executed" not in capsys.readouterr().out


def test_a_trained_patch_classifier_is_an_encoder_that_beats_chance_on_held_apart_patches(tmp_path, pcam_patches):
    for split, sl in (("train", slice(0, 30)), ("val", slice(30, 40))):
        for c in (0, 1):
            d = tmp_path / split / str(c)
            d.mkdir(parents=True)
            for f in pcam_patches[c][sl]:
                shutil.copy(f, d / f.name)
    cfg = PatchClassifierConfig(width=8, batch_size=20, epochs=12, lr=3e-3, color_jitter=0.0)
    out = _drain(train_patch_classifier(tmp_path / "train", tmp_path / "pc.safetensors", val_dir=tmp_path / "val",
                                        config=cfg, device="cpu"))
    enc = load_encoder(out)
    assert enc.has_scores and enc.feature_dim == 32 and enc.name == "pc"
    assert enc.checksum != load_encoder("small").checksum
    val = load_patch_folder(tmp_path / "val")
    with torch.inference_mode():
        feats, logits = enc.features_and_scores(to_tensor(val.images, "cpu"))
    assert feats.shape == (20, 32)
    assert roc_auc(val.labels, logits.numpy()) > 0.75  # 10 + 10 patches it never saw
    assert np.isfinite(feats.numpy()).all()
