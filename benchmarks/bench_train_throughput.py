"""Training throughput of CELNet (patches/s) on this machine, against baselines in the same run.

Baselines: CELNet without MAM attention (the paper's "CELNet-") and MAM with
its first implementation (w x w pooling windows, ``amax`` over channels), which computes the same
numbers as today's separable pools. Prints one line per model and the ratios; CUDA is measured
too when available.

    python benchmarks/bench_train_throughput.py [--batch 32] [--steps 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
import types

import torch
import torch.nn.functional as F
from torch import nn

from napari_glimpse.methods import get_method
from napari_glimpse.methods.celnet.model import MAM, CELNet, CELNetConfig
from napari_glimpse.methods.celnet.training import deep_supervision_loss
from napari_glimpse.runtime.checkpoint import config_from_checkpoint, load_checkpoint
from napari_glimpse.runtime.cpu_memory import default_allocator, keep_freed_memory


class _NoMAM(nn.Module):
    def forward(self, f):
        return f


def _mam_2d_forward(self, f):
    """MAM as first written: w x w pooling windows and ``amax`` over channels (same numbers)."""
    w = self.window
    avg = F.avg_pool2d(f, w, stride=1, padding=w // 2, count_include_pad=False)
    mx = F.max_pool2d(f, w, stride=1, padding=w // 2)
    f = f * torch.sigmoid(self.mlp(avg) + self.mlp(mx))
    s = torch.cat([f.mean(dim=1, keepdim=True), f.amax(dim=1, keepdim=True)], dim=1)
    return f * torch.sigmoid(sum(conv(s) for conv in self.spatial))


def celnet_with_2d_mam(config: CELNetConfig) -> CELNet:
    model = CELNet(config)
    for m in model.modules():
        if isinstance(m, MAM):
            m.forward = types.MethodType(_mam_2d_forward, m)
    return model


def celnet_without_mam(config: CELNetConfig) -> CELNet:
    model = CELNet(config)
    for m in model.modules():
        if hasattr(m, "mam"):
            m.mam = _NoMAM()
    return model


def patches_per_second(model, device, batch, steps, channels_last=True) -> float:
    model = model.to(device).train()
    x = torch.rand(batch, 3, 96, 96, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, device=device) > 0.5).float()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def step():
        opt.zero_grad()
        deep_supervision_loss(model(x), y, 0.5).backward()
        opt.step()

    step()  # warm-up (allocations, oneDNN primitive creation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    keep_freed_memory()  # as the CLI does
    shipped = config_from_checkpoint(CELNetConfig, load_checkpoint(get_method("celnet").default_checkpoint()))
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        models = {
            "CELNet (paper, 3 blocks)": CELNet(CELNetConfig()),
            "CELNet paper, 2-D MAM pools": celnet_with_2d_mam(CELNetConfig()),
            f"CELNet shipped ({shipped.blocks} block)": CELNet(shipped),
            "CELNet shipped, 2-D MAM pools": celnet_with_2d_mam(shipped),
            # widths tried for the shipped model: module 1 (full resolution) dominates the cost
            "CELNet 1 block, 16/32/96": CELNet(CELNetConfig(blocks=1, widths=(16, 32, 96))),
            # the paper's depth and widths with a stride-2 head: every module at half resolution
            "CELNet 3 blocks, stem stride 2": CELNet(CELNetConfig(stem_stride=2)),
            "CELNet 1 block, 16/48/128": CELNet(CELNetConfig(blocks=1, widths=(16, 48, 128))),
            "CELNet- (no MAM, 3 blocks)": celnet_without_mam(CELNetConfig()),
        }
        rates = {}
        for name, model in models.items():
            rates[name] = patches_per_second(model, device, args.batch, args.steps)
            print(f"{device.type:5s} {name:28s} {rates[name]:8.1f} patches/s", flush=True)
        if device.type == "cpu":
            # glibc's allocator: default thresholds (large blocks mmapped and unmapped every step)
            # against runtime.cpu_memory's, same model, same process, back to back
            name = f"CELNet shipped ({shipped.blocks} block)"
            default_allocator()
            slow = patches_per_second(CELNet(shipped), device, args.batch, args.steps)
            keep_freed_memory()
            fast = patches_per_second(CELNet(shipped), device, args.batch, args.steps)
            print(f"cpu   {name}: glibc default allocator {slow:.1f} patches/s, keep_freed_memory {fast:.1f} "
                  f"patches/s ({fast / slow:.2f}x)", flush=True)
        ref = rates["CELNet (paper, 3 blocks)"]
        print(f"{device.type:5s} ratios vs CELNet: " + ", ".join(f"{n}: {r / ref:.2f}x" for n, r in rates.items()))
        print(f"{device.type:5s} one PCam epoch (20,000 patches) with the paper CELNet: {20000 / ref / 60:.1f} min")


if __name__ == "__main__":
    main()
