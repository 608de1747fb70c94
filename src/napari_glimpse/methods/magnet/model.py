"""The MagNet network (METHODS.md section 3; Dimitriou et al.): magnifying layers, the GRU
classification layer with its running probability, the auxiliary classifiers and the loss.

Magnifying layer, per output patch: three Inception-style blocks on the 56 x 56 input I ->
a 56 x 56 map -> spatial sparsemax (the ``entmax`` package) -> probability mass p over the
input's pixel centres u on [-1, 1]^2; mu = sum p u, (t_x, t_y) = tanh(mu),
s = max(sum p |u - mu|, min_scale), theta = [[s, 0, t_x], [0, s, t_y]]. The patch is the
field theta selects in its parent's field, read from the pyramid (:mod:`.sampling`) at the
next layer's 56 x 56 or, in the last layer, at 224 x 224. The first patch of layer 2 (of
every parent) is frozen to the whole input (theta = identity). Localisers are independent per
patch: layer l has prod(P_1..P_l) of them.

Where the paper samples the child from its parent's 112 x 112 image I', this implementation
reads the child's field from the pyramid level that gives at least the output size across it:
the same image wherever I' had the resolution, finer wherever the child is smaller than half
its parent (the paper's point: magnified patches carry detail their input lacked).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import MagNetConfig
from .sampling import Field, compose

__all__ = ["InceptionBlock", "Localiser", "theta_from_mass", "MagNet", "build_model", "magnet_loss"]


class InceptionBlock(nn.Module):
    """Parallel 1x1, 3x3, 5x5 and pooled-1x1 convolutions (BN + ReLU), concatenated."""

    def __init__(self, cin: int, width: int):
        super().__init__()

        def branch(k):
            return nn.Sequential(nn.Conv2d(cin, width, k, padding=k // 2, bias=False), nn.BatchNorm2d(width),
                                 nn.ReLU(inplace=True))

        self.b1, self.b3, self.b5 = branch(1), branch(3), branch(5)
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), branch(1))
        self.out_channels = 4 * width

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.pool(x)], 1)


def _pixel_centres(size: int, device) -> torch.Tensor:
    u = (2 * torch.arange(size, dtype=torch.float32, device=device) + 1) / size - 1
    uy, ux = torch.meshgrid(u, u, indexing="ij")
    return torch.stack([ux, uy], -1).reshape(-1, 2)  # (S*S, 2) as (x, y)


def theta_from_mass(p: torch.Tensor, min_scale: float) -> torch.Tensor:
    """theta (B, 2, 3) from probability masses p (B, S, S) over the pixel centres."""
    b, s, _ = p.shape
    u = _pixel_centres(s, p.device)
    flat = p.reshape(b, -1)
    mu = flat @ u  # (B, 2)
    spread = (flat * torch.linalg.vector_norm(u[None] - mu[:, None], dim=-1)).sum(1)
    scale = spread.clamp(min=min_scale)
    t = torch.tanh(mu)
    zero = torch.zeros_like(scale)
    return torch.stack([torch.stack([scale, zero, t[:, 0]], 1), torch.stack([zero, scale, t[:, 1]], 1)], 1)


class Localiser(nn.Module):
    """One patch of a magnifying layer: image (B, 3, S, S) -> (theta (B, 2, 3), mass (B, S, S))."""

    def __init__(self, width: int, min_scale: float):
        super().__init__()
        blocks, cin = [], 3
        for _ in range(3):
            blk = InceptionBlock(cin, width)
            blocks.append(blk)
            cin = blk.out_channels
        self.blocks = nn.Sequential(*blocks)
        self.score = nn.Conv2d(cin, 1, 1)
        self.min_scale = float(min_scale)

    def forward(self, image: torch.Tensor):
        from entmax import sparsemax

        logits = self.score(self.blocks(image))[:, 0]  # (B, S, S)
        b, s, _ = logits.shape
        p = sparsemax(logits.reshape(b, -1), dim=-1).reshape(b, s, s)
        return theta_from_mass(p, self.min_scale), p


def _node_parent(patches: tuple[int, ...], layer: int, index: int) -> tuple[int, int]:
    """(parent index in layer - 1, position k among its siblings) of node ``index`` of ``layer``."""
    p = int(patches[layer])
    return index // p, index % p


class AuxClassifier(nn.Module):
    """A slide-level classifier over a set of patches: CNN features, mean over the set, linear."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(encoder.feature_dim, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(images).mean(0))


class MagNet(nn.Module):
    """Magnifying layers + GRU classification layer (+ auxiliary classifiers).

    ``forward(reader)`` runs one slide through a :class:`~.sampling.PyramidReader` and returns a
    dict: ``logits`` (2,), ``running`` (leaves,) the tumour probability after every leaf (GRU
    order = depth-first), ``prior`` the probability before any leaf, ``fields`` per layer the
    list of :class:`Field` s, ``thetas`` per layer (n, 2, 3), ``masses`` per layer (n, S, S) or
    None (frozen), ``frozen`` per layer the indices of frozen patches, ``aux`` (layer -> logits).
    """

    def __init__(self, config: MagNetConfig, encoder: nn.Module, aux_encoders: dict[int, nn.Module]):
        super().__init__()
        self.config = config
        self.patches = tuple(int(p) for p in config.patches)
        self.localisers = nn.ModuleDict()
        count = 1
        for layer, p in enumerate(self.patches):
            count *= p
            for i in range(count):
                if not self.is_frozen(layer, i):
                    self.localisers[f"{layer}_{i}"] = Localiser(config.inception_width, config.min_scale)
        self.encoder = encoder
        k = encoder.feature_dim
        self.gru = nn.GRU(k, config.gru_hidden, batch_first=True)
        self.head = nn.Sequential(nn.Linear(config.gru_hidden, 512), nn.ReLU(inplace=True), nn.Linear(512, 256),
                                  nn.ReLU(inplace=True), nn.Linear(256, 2))
        self.aux = nn.ModuleDict({str(layer): AuxClassifier(enc) for layer, enc in aux_encoders.items()})

    def is_frozen(self, layer: int, index: int) -> bool:
        """The first patch of layer 2 (0-based layer 1) of every parent is the whole input."""
        return layer == 1 and _node_parent(self.patches, layer, index)[1] == 0

    @property
    def layers(self) -> int:
        return len(self.patches)

    def forward(self, reader, *, with_aux: bool = True) -> dict:
        cfg = self.config
        dev = next(self.parameters()).device
        root = reader.root(dev)
        parents: list[Field] = [root]
        images = [reader.read(root, cfg.input_px)]
        fields, thetas, masses, frozen = [], [], [], []
        identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], device=dev)
        last = self.layers - 1
        outputs = {}
        for layer, p in enumerate(self.patches):
            n = len(parents) * p
            layer_fields, layer_thetas, layer_masses, layer_frozen = [], [], [], []
            # one batched pass per parent image would need one module per patch anyway
            for i in range(n):
                parent, _ = _node_parent(self.patches, layer, i)
                if self.is_frozen(layer, i):
                    theta, mass = identity, None
                    layer_frozen.append(i)
                else:
                    th, m = self.localisers[f"{layer}_{i}"](images[parent][None])
                    theta, mass = th[0], m[0]
                layer_thetas.append(theta)
                layer_masses.append(mass)
                layer_fields.append(compose(parents[parent], theta, reader.turn))
            size = cfg.leaf_px if layer == last else cfg.input_px
            out_images = reader.read_many(layer_fields, size)
            fields.append(layer_fields)
            thetas.append(torch.stack(layer_thetas))
            masses.append(layer_masses)
            frozen.append(layer_frozen)
            outputs[layer] = out_images
            parents, images = layer_fields, out_images
        leaves = torch.stack(outputs[last])
        feats = self.encoder(leaves)  # (L, K)
        seq, _ = self.gru(feats[None])
        h = seq[0]
        logits_all = self.head(h)  # (L, 2)
        prior = torch.softmax(self.head(torch.zeros_like(h[:1])), -1)[0, 1]
        aux = {}
        if with_aux:
            for key, clf in self.aux.items():
                layer = int(key)
                aux[layer] = clf(torch.stack(outputs[layer]) if layer != last else leaves)
        return {"logits": logits_all[-1], "running": torch.softmax(logits_all, -1)[:, 1], "prior": prior,
                "fields": fields, "thetas": thetas, "masses": masses, "frozen": frozen, "aux": aux}


def aux_layers(patches: tuple[int, ...]) -> tuple[int, ...]:
    """0-based layers of the auxiliary classifiers: the paper's layers 1 and 3 (the last one
    when there are fewer than 3)."""
    n = len(patches)
    return tuple(sorted({0, min(2, n - 1)}))


def build_model(config: MagNetConfig) -> MagNet:
    """The MagNet of ``config``; encoders from the registry with their shipped weights (a
    checkpoint's weights replace them on load)."""
    from ...encoders import load_encoder

    auxes = {layer: load_encoder(config.aux_encoder) for layer in aux_layers(config.patches)} if config.aux else {}
    return MagNet(config, load_encoder(config.encoder), auxes)


def loss_part_names(config) -> list[str]:
    """The names of the parts :func:`magnet_loss` reports for a model of ``config``."""
    layers = aux_layers(tuple(config.patches)) if config.aux else ()
    return ["ce", *(f"ce_aux{layer + 1}" for layer in layers)] + (["paradoxical"] if len(layers) >= 2 else [])


def magnet_loss(out: dict, label: int, *, paradoxical: bool = True) -> tuple[torch.Tensor, dict]:
    """Cross entropy on the GRU's last output and on the auxiliaries, plus the paradoxical
    max(0, CE_3 - CE_1) (first and last auxiliary layer). Returns (loss, parts as floats)."""
    y = torch.tensor([int(label)], device=out["logits"].device)
    ce = F.cross_entropy(out["logits"][None], y)
    parts = {"ce": float(ce.detach())}
    loss = ce
    aux = out.get("aux") or {}
    ces = {layer: F.cross_entropy(logits[None], y) for layer, logits in aux.items()}
    for layer, c in ces.items():
        loss = loss + c
        parts[f"ce_aux{layer + 1}"] = float(c.detach())
    if paradoxical and len(ces) >= 2:
        first, last = min(ces), max(ces)
        par = torch.relu(ces[last] - ces[first])
        loss = loss + par
        parts["paradoxical"] = float(par.detach())
    return loss, parts
