"""Does CELNet lose accuracy because PCam labels only the centre of a patch?

PCam calls a 96 px patch positive when tumour touches its central 32 x 32 px; CELNet's companions
pool over the whole patch, so tumour near the border of a negative patch looks like tumour in
the centre. This probe keeps a checkpoint's trunk fixed and refits its head (the 1x1 conv over
the pooled companions, i.e. a logistic regression on [GAP, GMP] of F2 and F3) with the pooling
restricted to the central c px, on the training patches, and scores it on the validation
patches. If the centre hypothesis held, some c < 96 (or full + centre) would fit or generalise
better than c = 96.

    python benchmarks/experiments/celnet_centre_probe.py --data ../shared/data/pcam/train --val ../shared/data/pcam/valid \
        [--checkpoint CKPT] [--cache pooled.npz]

The pooled descriptors take about 6 min on 2 cores for 23,000 patches; ``--cache`` keeps them
so the fits can be rerun in seconds.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from napari_glimpse.evaluate import roc_auc
from napari_glimpse.methods import load_model
from napari_glimpse.runtime.data import load_patch_folder

CENTRES = (96, 80, 64, 48, 32)


def pooled_descriptors(model, folder: str, batch: int = 200) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """[GAP(F2), GMP(F2), GAP(F3), GMP(F3)] over the central c px of every patch, per c."""
    data = load_patch_folder(folder)
    p = model.config.patch_size
    out: dict[int, list] = {c: [] for c in CENTRES}
    t = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(data), batch):
            x = torch.from_numpy(data.images[i : i + batch]).permute(0, 3, 1, 2).float() / 255
            f2, f3 = model.features(x)
            for c in CENTRES:
                o2, o3 = (p - c) // 4, (p - c) // 8
                a2 = f2[:, :, o2 : o2 + c // 2, o2 : o2 + c // 2]
                a3 = f3[:, :, o3 : o3 + c // 4, o3 : o3 + c // 4]
                out[c].append(torch.cat([a2.mean((2, 3)), a2.amax((2, 3)), a3.mean((2, 3)), a3.amax((2, 3))], 1))
    print(f"{folder}: {len(data)} patches, {time.perf_counter() - t:.0f} s", flush=True)
    return {c: torch.cat(v).numpy() for c, v in out.items()}, data.labels.astype(np.float32)


def fit_head(xtr, ytr, xva, yva, l2: float = 1e-4) -> tuple[float, float, float]:
    """Logistic regression (L-BFGS) on standardised features: (train AUC, valid AUC, valid accuracy)."""
    xtr, xva, ytr_t = torch.from_numpy(xtr), torch.from_numpy(xva), torch.from_numpy(ytr)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    w = torch.zeros(xtr.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xtr @ w + b, ytr_t) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        ptr, pva = torch.sigmoid(xtr @ w + b).numpy(), torch.sigmoid(xva @ w + b).numpy()
    return roc_auc(ytr, ptr), roc_auc(yva, pva), float(((pva > 0.5) == yva).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="training patch folder (0/ and 1/)")
    ap.add_argument("--val", required=True, help="validation patch folder (0/ and 1/)")
    ap.add_argument("--checkpoint", default=None, help="CELNet checkpoint (default: the shipped one)")
    ap.add_argument("--cache", default=None, help="npz file to keep / reuse the pooled descriptors")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.cache and os.path.isfile(args.cache):
        z = np.load(args.cache)
        tr = {c: z[f"tr{c}"] for c in CENTRES}
        va = {c: z[f"va{c}"] for c in CENTRES}
        ytr, yva = z["ytr"], z["yva"]
    else:
        model = load_model("celnet", args.checkpoint, "cpu").model  # None: the shipped checkpoint
        tr, ytr = pooled_descriptors(model, args.data)
        va, yva = pooled_descriptors(model, args.val)
        if args.cache:
            tmp = args.cache + ".tmp.npz"
            np.savez_compressed(tmp, **{f"tr{c}": tr[c] for c in CENTRES}, **{f"va{c}": va[c] for c in CENTRES},
                                ytr=ytr, yva=yva)
            os.replace(tmp, args.cache)

    print("| pooling | train AUC | valid AUC | valid accuracy |\n|---|---|---|---|")
    for c in CENTRES:
        print("| centre {} px | {:.4f} | {:.4f} | {:.4f} |".format(c, *fit_head(tr[c], ytr, va[c], yva)), flush=True)
    for c in (64, 48, 32):
        r = fit_head(np.concatenate([tr[96], tr[c]], 1), ytr, np.concatenate([va[96], va[c]], 1), yva)
        print("| whole patch + centre {} px | {:.4f} | {:.4f} | {:.4f} |".format(c, *r), flush=True)


if __name__ == "__main__":
    main()
