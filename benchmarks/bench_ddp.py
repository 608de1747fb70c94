"""Training under torchrun: one process against two ranks, for every method, in the same run.

    nice python benchmarks/bench_ddp.py [--slides 8] [--grid 12] [--methods razn magnet ...]

Writes ``--slides`` PCam mosaics (``--grid`` cells a side, lattice offset, half with tumour,
class masks and labels) to a temporary folder, then trains each method through the CLI twice:
as one process and as two torchrun ranks (Gloo), every process on one torch thread, so two
ranks use two cores where one process uses one. Prints the training seconds of the epochs
(from the checkpoint history: process start, data loading and feature extraction excluded)
and the wall time, and their ratios. CELNet (and the patch classifier) scale through
DistributedDataParallel and are measured by ``bench_train_throughput.py``.

On a 2-core machine a ratio near 2 is the most two ranks can give; under it lie the
gradient all-reduce per step, uneven shares (a step of 3 slides on 2 ranks is 2 + 1) and the
work every rank repeats (glimpse tree: the leaves a C epoch samples, eq. 5 policy steps).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from napari_glimpse.mosaic import bundled_patches_dir, make_mosaics
from napari_glimpse.runtime.checkpoint import load_checkpoint
from napari_glimpse.runtime.fit import last_path

#: per method: CLI flags of a short run (the shipped encoders, paper layouts where they fit 2 CPU cores)
RUNS = {
    "attention-grid": ["--encoder", "small", "--epochs", "3", "--accumulate", "4"],
    "magnet": ["--patches", "2", "3", "3", "--epochs", "2", "--batch-size", "4"],
    "razn": ["--encoder", "pcam", "--tile-px", "128", "--epochs", "2", "--tiles-per-epoch", "192",
             "--batch-size", "8"],
    "glimpse-tree": ["--epochs", "3", "--warmup-epochs", "1", "--warmup-glimpses", "64", "--batch-size", "16",
                     "--policy-target", "dense", "--policy-passes", "2"],
}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(method: str, data: Path, out: Path, ranks: int) -> tuple[float, float]:
    """(seconds of the epochs, wall seconds) of one training run."""
    cli = ["-m", "napari_glimpse", "train", method, "--data", str(data), "--out", str(out), "--device", "cpu",
           "--threads", "1", *RUNS[method]]
    if method == "attention-grid":  # both runs encode the slides (a shared cache would favour the second)
        cli += ["--feature-cache", str(out.parent / "features")]
    launch = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                 f"--nproc_per_node={ranks}", "--master_addr=127.0.0.1",
                                                 f"--master_port={_port()}"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.run(launch + cli, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{method} ({ranks} ranks) failed:\n{proc.stderr[-3000:]}")
    history = load_checkpoint(last_path(out)).header["history"]
    return sum(float(h["seconds"]) for h in history), wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slides", type=int, default=8)
    ap.add_argument("--grid", type=int, default=12)
    ap.add_argument("--methods", nargs="+", default=list(RUNS), choices=list(RUNS))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_mosaics(bundled_patches_dir(), tmp / "slides", count=a.slides, grid=(a.grid, a.grid), seed=3,
                     tumour_fraction=0.3, lattice_offset=True, mask_classes=True)
        print(f"{a.slides} mosaics of {a.grid} x {a.grid} cells; every process on 1 torch thread; "
              f"{os.cpu_count()} cores")
        print(f"{'method':<15}{'1 process':>12}{'2 ranks':>12}{'speed-up':>10}{'wall 1':>9}{'wall 2':>9}{'ratio':>7}")
        for method in a.methods:
            (e1, w1), (e2, w2) = (_train(method, tmp / "slides", tmp / f"{method}-{r}" / "m.safetensors", r)
                                  for r in (1, 2))
            print(f"{method:<15}{e1:>11.1f}s{e2:>11.1f}s{e1 / e2:>9.2f}x{w1:>8.1f}s{w2:>8.1f}s{w1 / w2:>6.2f}x")


if __name__ == "__main__":
    main()
