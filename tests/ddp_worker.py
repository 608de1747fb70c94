"""One process (or one torchrun rank) of tests/test_ddp.py: trains each method on tiny data.

``python ddp_worker.py --units ROOT`` under ``torch.distributed.run`` checks DistContext's
collectives. ``python ddp_worker.py ROOT`` (or under ``torch.distributed.run``) trains, one after another,
grid attention, a MagNet, a RAZN and two glimpse trees on the data test_ddp.py made under
ROOT, writing ``ROOT/<world size>/<name>.safetensors``. The grids of grid attention are
synthetic (made here from each slide's name), as in test_attention_grid.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))


def _fake_grids():
    from test_attention_grid import synthetic_grid

    from napari_glimpse.methods.attention_grid import grids

    def slide_grid(slide, params, device, region=None):
        stem = Path(str(getattr(slide, "path", slide))).stem
        k = int(stem[1:])
        yield grids.Progress("features", 1, 1, "synthetic")
        return synthetic_grid(np.random.default_rng(k), 3 * (k % 2))[0]

    grids.slide_grid = slide_grid


def units(root: Path) -> None:
    """DistContext's collective pieces on two ranks; writes ``ROOT/units-<rank>.json``."""
    import json

    from napari_glimpse.runtime.distributed import process_group

    with process_group(torch.device("cpu")) as (ctx, _):
        torch.manual_seed(ctx.rank)  # different weights on each rank
        net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2), torch.nn.Linear(2, 1))
        ctx.broadcast_module(net)  # now rank 0's on both
        weights = [p.detach().clone() for p in net.parameters()]
        net[1].running_mean.fill_(float(ctx.rank))
        ctx.average_buffers(net)
        # rank 0 backpropagates through the first layer only, rank 1 through nothing: the sum
        # is rank 0's gradient on both, and the last layer keeps no gradient
        if ctx.rank == 0:
            net[0](torch.ones(4, 3)).sum().backward()
        ctx.sync_grads(net)
        grads = [None if p.grad is None else p.grad.tolist() for p in net.parameters()]
        ctx.check_in_step(net)
        with torch.no_grad():
            net[2].bias += ctx.rank  # rank 1 drifts
        try:
            ctx.check_in_step(net)
            diverged = ""
        except RuntimeError as exc:
            diverged = str(exc)
        result = {"weights": [w.tolist() for w in weights], "running_mean": net[1].running_mean.tolist(),
                  "grads": grads, "diverged": diverged}
    (root / f"units-{ctx.rank}.json").write_text(json.dumps(result))


def main(root: Path) -> None:
    from test_magnet import _tiny_config

    from napari_glimpse.methods.attention_grid.config import AttentionGridConfig
    from napari_glimpse.methods.attention_grid.training import train as train_grid
    from napari_glimpse.methods.glimpse_tree.config import GlimpseTreeConfig
    from napari_glimpse.methods.glimpse_tree.training import train as train_tree
    from napari_glimpse.methods.magnet.training import train as train_magnet
    from napari_glimpse.methods.razn.config import RAZNConfig
    from napari_glimpse.methods.razn.training import train as train_razn
    from napari_glimpse.runtime.events import run_to_end

    torch.set_num_threads(1)
    _fake_grids()
    out = root / os.environ.get("WORLD_SIZE", "1")
    out.mkdir(exist_ok=True)
    # seven slides in steps of three: shares of 2 / 1 and a last step of one slide (rank 1 idle)
    grid_cfg = AttentionGridConfig(channels=4, dropout=0.25, lr=1e-3, accumulate=3, encoder="small", epochs=2)
    run_to_end(train_grid(root / "grids", out / "grid.safetensors", config=grid_cfg, device="cpu"))
    magnet_cfg = _tiny_config(patches=(2, 2), epochs=2, lr=3e-3, batch_size=3)
    run_to_end(train_magnet(root / "blobs", out / "magnet.safetensors", config=magnet_cfg, device="cpu"))
    razn_cfg = RAZNConfig(mpp=3.888, tile_px=32, encoder="small", epochs=2, tiles_per_epoch=14, batch_size=5)
    run_to_end(train_razn(root / "razn", out / "razn.safetensors", config=razn_cfg, device="cpu"))
    tiny = {"glimpse_size": 32, "classifier_width": 8, "policy_width": 4, "batch_size": 5}
    full = GlimpseTreeConfig(**tiny, epochs=3, warmup_epochs=1, warmup_glimpses=6)  # warm-up C, C, P
    run_to_end(train_tree(root / "mosaics", out / "tree.safetensors", config=full, device="cpu"))
    dense = GlimpseTreeConfig(**tiny, epochs=1, warmup_epochs=0, train_classifier=False, policy_target="dense", policy_passes=2)
    run_to_end(train_tree(root / "mosaics", out / "tree-dense.safetensors", config=dense, device="cpu",
                          init=root / "tree-init.safetensors"))


if __name__ == "__main__":
    if sys.argv[1] == "--units":
        units(Path(sys.argv[2]))
    else:
        main(Path(sys.argv[1]))
