"""One dense-max policy step of the glimpse tree: separable box pools against 2-D pools.

A step is what ``policy_dense.dense_policy_epoch`` does per region: the root glimpse and four
level-1 glimpses (304 px) through their policy U-Nets, (K * q) by a 76 px box mean at every
valid centre, the dense-max target by a 76 px box maximum, the weighted squared error and its
backward pass. Both variants run on the same inputs in the same process, alternating, so
machine load hits both alike; the losses and gradients must agree.

    python benchmarks/bench_policy_step.py --steps 10
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def main(argv=None) -> int:
    from napari_glimpse.methods.glimpse_tree.config import GlimpseTreeConfig
    from napari_glimpse.methods.glimpse_tree.model import build_model
    from napari_glimpse.methods.glimpse_tree.policy_dense import box_pool

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--policy-width", type=int, default=8)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = GlimpseTreeConfig(policy_width=args.policy_width)
    s, k = cfg.glimpse_size, cfg.child_extent
    torch.manual_seed(0)
    model = build_model(cfg).train()
    g = torch.Generator().manual_seed(1)
    xs = [torch.rand(1, 3, s, s, generator=g), torch.rand(4, 3, s, s, generator=g)]
    ys = [torch.rand(1, s, s, generator=g), torch.rand(4, s, s, generator=g)]

    def separable(x, mode):
        return box_pool(x, k, mode)

    def pools_2d(x, mode):
        pool = F.avg_pool2d if mode == "mean" else F.max_pool2d
        return pool(x[:, None], k, stride=1)[:, 0]

    def step(pool):
        model.zero_grad(set_to_none=True)
        loss = 0.0
        for level, (x, y) in enumerate(zip(xs, ys, strict=True)):
            q = model.q_map(level, x)
            target = pool(y, "max" if level == 0 else "mean")
            pred = pool(q, "mean")
            loss = loss + ((1 + 10 * target) * (pred - target) ** 2).sum() / target[0].numel()
        loss.backward()
        return loss.item(), torch.cat([p.grad.reshape(-1) for p in model.policies.parameters()])

    times = {"separable": [], "2-D": []}
    ref = {}
    for _ in range(args.steps):
        for name, pool in (("separable", separable), ("2-D", pools_2d)):
            t0 = time.perf_counter()
            ref[name] = step(pool)
            times[name].append(time.perf_counter() - t0)
    (la, ga), (lb, gb) = ref["separable"], ref["2-D"]
    sep, two = (sorted(t)[len(t) // 2] for t in (times["separable"], times["2-D"]))
    print(f"policy width {args.policy_width}, {args.threads} thread(s), median of {args.steps} steps")
    print(f"separable box pools: {sep * 1000:.1f} ms / step")
    print(f"2-D pools:           {two * 1000:.1f} ms / step")
    print(f"speed-up: {two / sep:.2f}x; loss {la:.6f} vs {lb:.6f}; max gradient difference "
          f"{float((ga - gb).abs().max()):.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
