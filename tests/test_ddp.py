"""Every method's training under torchrun: two CPU ranks (Gloo) against one process.

tests/ddp_worker.py trains grid attention, a MagNet, a RAZN and two glimpse trees on tiny
data, once as a plain process and once as two torchrun ranks. Where a step's items are whole
slides (grid attention, MagNet) or whole tree levels (a dense policy epoch), two ranks must
take the same steps as one process: the weights agree to float rounding. Where a batch's
patches are split (RAZN fields, glimpse-tree C batches), each rank's batch norm sees its share,
so the weights differ as under DistributedDataParallel; there the run must complete, use every
item once per epoch across the ranks, and keep the ranks in step (fit checks it every epoch).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_magnet import _blob_slides
from test_training import _free_port

from napari_glimpse.runtime.checkpoint import load_checkpoint
from napari_glimpse.runtime.fit import last_path

WORKER = Path(__file__).with_name("ddp_worker.py")


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from napari_glimpse.methods.glimpse_tree.config import GlimpseTreeConfig
    from napari_glimpse.methods.glimpse_tree.model import build_model
    from napari_glimpse.mosaic import bundled_patches_dir, make_mosaics
    from napari_glimpse.runtime.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("ddp")
    grids = root / "grids"
    grids.mkdir()
    for k in range(7):
        (grids / f"s{k:03d}.tif").write_bytes(b"")
    (grids / "labels.csv").write_text("slide,label\n" + "".join(f"s{k:03d},{k % 2}\n" for k in range(7)))
    _blob_slides(root / "blobs", 5, 0, size=256)
    make_mosaics(bundled_patches_dir(), root / "razn", count=2, size=(480, 480), seed=1, positive_fraction=1.0,
                 tumour_fraction=0.3, lattice_offset=True, mask_classes=True, max_patches_per_class=40)
    make_mosaics(bundled_patches_dir(), root / "mosaics", count=4, grid=(6, 6), seed=5, tumour_fraction=0.5,
                 max_patches_per_class=40)
    torch.manual_seed(0)
    model = build_model(GlimpseTreeConfig(glimpse_size=32, classifier_width=8, policy_width=4))
    save_checkpoint(root / "tree-init.safetensors", method="glimpse-tree", config=model.config,
                    model_state=model.state_dict())

    one = subprocess.run([sys.executable, str(WORKER), str(root)], capture_output=True, text=True, timeout=400,
                         env=_env())
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(WORKER), str(root)],
                         capture_output=True, text=True, timeout=600, env=_env())
    assert two.returncode == 0, two.stderr[-3000:]
    return root


def test_gradients_sum_weights_broadcast_buffers_average_and_divergence_is_caught(tmp_path):
    import json

    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(WORKER), "--units",
                           str(tmp_path)], capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"units-{r}.json").read_text()) for r in (0, 1))
    assert r0["weights"] == r1["weights"]
    assert r0["running_mean"] == r1["running_mean"] == [0.5, 0.5]
    # d/dW of sum(W x + b) over 4 rows of ones: 4 everywhere; the untouched layers keep None
    assert r0["grads"] == r1["grads"] == [[[4.0] * 3] * 2, [4.0, 4.0], None, None, None, None]
    assert r0["diverged"].startswith("the torchrun ranks' weights have diverged") and r1["diverged"]


def _pair(root, name):
    return [load_checkpoint(last_path(root / w / f"{name}.safetensors")) for w in ("1", "2")]


def _params_close(a, b, prefix="", atol=1e-5, q=1.0):
    """The ``q`` quantile of |a - b| over the weights (not the running statistics) is below ``atol``."""
    diffs = torch.cat([(a.model_state[k] - b.model_state[k]).abs().flatten() for k in a.model_state
                       if k.startswith(prefix) and a.model_state[k].is_floating_point() and "running_" not in k])
    assert len(diffs)
    worst = float(torch.quantile(diffs.double(), q))
    assert worst < atol, worst


# MagNet: Adam turns rounding noise in near-zero gradients into steps of about lr, so one
# process on two threads differs from one process on one thread by up to 5e-3 in a few weights
# (measured); the bulk of the weights must agree to rounding
TOLERANCE = {"grid": {"atol": 1e-5}, "magnet": {"atol": 1e-4, "q": 0.9}}


@pytest.mark.parametrize("name", ["grid", "magnet"])
def test_two_ranks_take_the_steps_of_one_process_on_slides(runs, name):
    one, two = _pair(runs, name)
    assert one.header["training"]["world_size"] == 1 and two.header["training"]["world_size"] == 2
    assert [h["slides"] for h in two.header["history"]] == [h["slides"] for h in one.header["history"]]
    assert two.header["history"][-1]["train_loss"] == pytest.approx(one.header["history"][-1]["train_loss"], rel=1e-4)
    _params_close(one, two, **TOLERANCE[name])
    losses = [h["train_loss"] for h in one.header["history"]]
    assert losses[0] != losses[1]  # the weights moved between the epochs: not two copies of the initial ones


def test_a_dense_policy_epoch_splits_its_levels_and_matches_one_process(runs):
    one, two = _pair(runs, "tree-dense")
    _params_close(one, two, "policies.")
    ref = load_checkpoint(runs / "tree-init.safetensors").model_state
    assert all(torch.equal(two.model_state[k], ref[k]) for k in ref if k.startswith("classifier."))
    assert not all(torch.equal(two.model_state[k], ref[k]) for k in ref if k.startswith("policies.") and "weight" in k)
    assert two.header["history"][0]["samples"] == one.header["history"][0]["samples"]


def test_split_batches_use_every_item_once_and_keep_the_ranks_in_step(runs):
    # fit compares the ranks' weights after every epoch (and fails the run if they diverged):
    # these runs completed, so the summed gradients kept both ranks on the same weights
    razn_one, razn_two = _pair(runs, "razn")
    assert [h["fields"] for h in razn_two.header["history"]] == [h["fields"] for h in razn_one.header["history"]] == [14, 14]
    tree_one, tree_two = _pair(runs, "tree")
    assert [h["phase"] for h in tree_two.header["history"]] == ["warm-up C", "C", "P"]
    assert tree_two.header["history"][0]["samples"] == tree_one.header["history"][0]["samples"]
    for two in (razn_two, tree_two):
        assert two.header["training"]["world_size"] == 2
        assert all(np.isfinite(h.get("train_loss", h.get("loss"))) for h in two.header["history"])
        assert two.header["history"][0]["seconds"] > 0
    assert sorted(p.name for p in (runs / "2").iterdir()) == sorted(p.name for p in (runs / "1").iterdir())
