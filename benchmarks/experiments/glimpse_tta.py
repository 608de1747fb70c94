"""Experiment: glimpse_branching.py with C's logit averaged over the 8 rotations / flips of every
glimpse it scores (tree leaves and All tiles alike). Not a package option: on the validation
mosaics it lowered tree and All alike (docs/glimpse_table1.md).

    python benchmarks/experiments/glimpse_tta.py --data runs/glimpse/val --models mil --branchings 2x4
"""
import sys
from pathlib import Path

import numpy as np

import napari_glimpse.methods.glimpse_tree.inference as inf

_orig = inf.classify_glimpses


def classify_tta(model, images, batch_size=32):
    if len(images) == 0:
        return np.zeros(0, np.float64)
    logits = []
    for k in range(4):
        for flip in (False, True):
            im = np.rot90(images, k, axes=(1, 2))
            if flip:
                im = im[:, :, ::-1]
            p = np.clip(_orig(model, np.ascontiguousarray(im), batch_size), 1e-7, 1 - 1e-7)
            logits.append(np.log(p / (1 - p)))
    return 1 / (1 + np.exp(-np.mean(logits, 0)))


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import glimpse_branching

    inf.classify_glimpses = classify_tta  # run_tree and run_all look it up in the module
    return glimpse_branching.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
