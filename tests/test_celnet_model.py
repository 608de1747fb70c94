"""CELNet network: shape, size, receptive field, and the exact dense-map contract."""

from __future__ import annotations

import pytest
import torch

from napari_glimpse.methods.backbones import resnet18, resnet34
from napari_glimpse.methods.celnet.model import CELNet, CELNetConfig


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    # Fresh BN statistics are the identity; random ones make the equivalence test meaningful.
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def test_paper_size_and_outputs():
    torch.manual_seed(0)
    model = CELNet().eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.25e6 < n_params < 0.35e6  # paper: 297 K
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        out = model(x)
        f2, f3 = model.features(x)
    assert set(out) == {"logit", "aux2", "aux3"}
    assert all(v.shape == (2,) for v in out.values())
    assert f2.shape == (2, 32, 48, 48) and f3.shape == (2, 64, 24, 24)
    pooled = (f2.mean((2, 3)), f2.amax((2, 3)), f3.mean((2, 3)), f3.amax((2, 3)))
    torch.testing.assert_close(model.head(*pooled), out["logit"])
    torch.testing.assert_close(model.aux_heads(*pooled)[1], out["aux3"])


# Small variants keep the tests fast; the margin formula and the pooling are the same code
# for the paper's size (checked once, at 3 blocks, in the margin test).
SMALL = {"widths": (4, 8, 8), "reduction": 2}


@pytest.mark.parametrize("blocks, stem_stride", [(1, 1), (3, 1), (3, 2)])
def test_context_margin_bounds_the_receptive_field(blocks, stem_stride):
    torch.manual_seed(0)
    model = CELNet(CELNetConfig(blocks=blocks, stem_stride=stem_stride, **SMALL)).eval()
    m, s = model.context_margin, model.stride
    assert s == 4 * stem_stride
    size = 2 * m + 64
    x = torch.rand(1, 3, size, size, requires_grad=True)
    _, f3 = model.features(x)
    c = size // (2 * s)  # an F3 cell near the middle, centred on input pixel s * c
    f3[0, :, c, c].sum().backward()
    rows = x.grad[0].abs().sum(0).sum(1).nonzero().flatten()
    reach = max(s * c - rows.min().item(), rows.max().item() - s * c)
    assert reach <= m  # nothing beyond the margin influences the cell
    assert reach > m - 3 * s  # and the margin is not wastefully large


@pytest.mark.parametrize("stem_stride", [1, 2])
def test_dense_window_logits_equal_per_patch_with_context(stem_stride):
    torch.manual_seed(1)
    model = CELNet(CELNetConfig(blocks=1, stem_stride=stem_stride, **SMALL)).eval()
    _randomise_bn(model)
    m, p, s = model.context_margin, model.config.patch_size, model.stride
    tile = torch.rand(1, 3, 2 * m + p + 48, 2 * m + p + 48)
    with torch.no_grad():
        f2, f3 = model.features(tile)
        dense = model.window_logits(f2, f3, step=s)
        diffs = []
        for r, c in [(m, m), (m + 8, m + 24), (m + 24, m + 40)]:
            ref = model.classify_with_context(tile[:, :, r - m : r + p + m, c - m : c + p + m])
            diffs.append(abs(ref.item() - dense[0, r // s, c // s].item()))
    assert dense.shape == (1, (tile.shape[-1] - p) // s + 1, (tile.shape[-1] - p) // s + 1)
    assert max(diffs) < 1e-4
    assert dense.std() > 1e-3  # the windows really differ, so equality is not trivial


def test_global_channel_attention_has_no_finite_context():
    model = CELNet(CELNetConfig(channel_window=None, blocks=1))
    assert model.context_margin is None
    with pytest.raises(ValueError, match="no finite context"):
        model.classify_with_context(torch.rand(1, 3, 96, 96))
    with pytest.raises(ValueError, match="multiple of 4"):
        CELNet(CELNetConfig(blocks=1)).window_logits(torch.rand(1, 32, 48, 48), torch.rand(1, 64, 24, 24), step=6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"channel_window": 4}, "channel_window"),
        ({"patch_size": 98}, "multiple of 4"),
        ({"patch_size": 100, "stem_stride": 2}, "multiple of 8"),
        ({"stem_stride": 3}, "stem_stride"),
        ({"spatial_kernels": (3, 4)}, "odd"),
        ({"lr": -1.0}, "lr"),
        ({"widths": (16, 32)}, "three"),
        ({"lr_milestones": (0.5, 1.5)}, "milestones"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CELNetConfig(**kwargs)


def test_config_accepts_json_lists():
    cfg = CELNetConfig(widths=[8, 16, 32], spatial_kernels=[3, 5], reduction=2)
    assert cfg.widths == (8, 16, 32) and cfg.spatial_kernels == (3, 5)


# torchvision's resnet18 state-dict layout, written out from torchvision 0.x
def _torchvision_resnet_keys(layers):
    keys = ["conv1.weight"] + [f"bn1.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    for i, n in enumerate(layers, 1):
        for b in range(n):
            pre = f"layer{i}.{b}"
            keys += [f"{pre}.conv1.weight"] + [f"{pre}.bn1.{s}" for s in bn]
            keys += [f"{pre}.conv2.weight"] + [f"{pre}.bn2.{s}" for s in bn]
            if b == 0 and i > 1:
                keys += [f"{pre}.downsample.0.weight"] + [f"{pre}.downsample.1.{s}" for s in bn]
    return keys + ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("build, layers", [(resnet18, (2, 2, 2, 2)), (resnet34, (3, 4, 6, 3))])
def test_resnet_state_dict_matches_torchvision_layout(build, layers):
    state = build().state_dict()
    assert list(state) == _torchvision_resnet_keys(layers)
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert state["layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
    assert state["fc.weight"].shape == (1000, 512)
    n = sum(t.numel() for k, t in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert n == {(2, 2, 2, 2): 11_689_512, (3, 4, 6, 3): 21_797_672}[layers]


def test_local_channel_attention_pools_a_full_window_around_each_cell():
    # MAM pools its channel descriptors as two separable passes; they must equal a w x w
    # window (border cells average only the cells inside the map) so dense == per patch holds.
    import torch.nn.functional as F

    from napari_glimpse.methods.celnet.model import MAM

    torch.manual_seed(0)
    mam = MAM(8, 2, (3, 5), window=5).eval()
    f = torch.randn(2, 8, 13, 11)
    avg = F.avg_pool2d(f, 5, stride=1, padding=2, count_include_pad=False)
    mx = F.max_pool2d(f, 5, stride=1, padding=2)
    g = f * torch.sigmoid(mam.mlp(avg) + mam.mlp(mx))
    s = torch.cat([g.mean(dim=1, keepdim=True), g.amax(dim=1, keepdim=True)], dim=1)
    expected = g * torch.sigmoid(sum(conv(s) for conv in mam.spatial))
    with torch.no_grad():
        assert torch.allclose(mam(f), expected, atol=1e-6)


@pytest.mark.parametrize("stem_stride", [1, 2])
def test_dense_tta_equals_the_mean_over_turned_windows_with_context(stem_stride):
    from napari_glimpse.methods.celnet.dense import iter_tile_probabilities
    from napari_glimpse.runtime.augment import dihedral
    from napari_glimpse.runtime.events import run_to_end

    torch.manual_seed(2)
    model = CELNet(CELNetConfig(blocks=1, stem_stride=stem_stride, **SMALL)).eval()
    _randomise_bn(model)
    m, p, stride, n = model.context_margin, model.config.patch_size, 8, 4
    size = (n - 1) * stride + p + 2 * m
    tiles = (torch.rand(1, size, size, 3) * 255).to(torch.uint8).numpy()
    tta = run_to_end(iter_tile_probabilities(model, tiles, n, stride, tta=True))
    plain = run_to_end(iter_tile_probabilities(model, tiles, n, stride))
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        for r, c in [(0, 0), (1, 3), (3, 2)]:
            win = x[:, :, r * stride : r * stride + p + 2 * m, c * stride : c * stride + p + 2 * m]
            ref = torch.stack([torch.sigmoid(model.classify_with_context(dihedral(win, k))) for k in range(8)]).mean()
            assert abs(ref.item() - tta[0, r, c]) < 1e-4, (r, c)
            assert abs(torch.sigmoid(model.classify_with_context(win)).item() - plain[0, r, c]) < 1e-4
    assert abs(tta - plain).max() > 1e-3  # the turns really change the scores
