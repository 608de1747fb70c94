"""What RAZN's relative time is made of: the policy and the zoomed tiles against f_theta0.

    nice python benchmarks/bench_razn_cost.py [--encoders pcam resnet18] [--tiles 16] [--threads 2]

For each segmentation encoder, times (in eval mode, no gradients, in the same run) the policy
g_phi on ``--tiles`` x0 tiles of 256 px, f_theta0 on the same tiles and f_theta1 on their r^2 = 4
children each. Compute only: the pixel reads are left out (a zoom also reads r^2 times the
pixels). Prints P / F0 and Z = 4 F1 / F0, and the relative time 1 + P / F0 + z Z that a model
zooming on a share z of the tiles would have, with the largest z that keeps it <= 2.0.
"""

from __future__ import annotations

import argparse
import time

import torch

from napari_glimpse.methods.razn.config import RAZNConfig
from napari_glimpse.methods.razn.model import build_model


def _best_of(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoders", nargs="+", default=["pcam", "resnet18"])
    ap.add_argument("--tiles", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    x0 = torch.rand(a.tiles, 3, 256, 256)
    children = torch.rand(4 * a.tiles, 3, 256, 256)
    print(f"{a.tiles} x0 tiles of 256 px, {a.threads} threads; seconds are the best of 3")
    print(f"{'encoder':<10}{'policy':>9}{'f_theta0':>10}{'f_theta1 x4':>13}{'P/F0':>7}{'Z':>7}"
          f"{'z=0.1':>7}{'z=0.2':>7}{'max z for 2.0':>15}")
    for name in a.encoders:
        model = build_model(RAZNConfig(encoder=name, classes=("glass", "normal tissue", "tumour"))).eval()
        with torch.no_grad():
            p = _best_of(lambda m=model: m.p_tilde(0, x0))
            f0 = _best_of(lambda m=model: m.segs[0](x0))
            f1 = _best_of(lambda m=model: m.segs[1](children))
        pr, z = p / f0, f1 / f0
        print(f"{name:<10}{p:>8.2f}s{f0:>9.2f}s{f1:>12.2f}s{pr:>7.2f}{z:>7.2f}{1 + pr + 0.1 * z:>7.2f}"
              f"{1 + pr + 0.2 * z:>7.2f}{max(0.0, (1 - pr) / z):>15.2f}")


if __name__ == "__main__":
    main()
