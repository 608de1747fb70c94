"""What the registry calls for MagNets: load a checkpoint, run a slide, evaluate a folder."""

from __future__ import annotations

import time
from collections.abc import Generator

import numpy as np
import torch

from ...runtime.events import Progress
from .config import MagNetConfig, MagNetInferConfig

__all__ = ["load", "infer", "evaluate", "result_from_output", "LAYER_COLOURS", "leaf_table"]

METHOD = "magnet"
#: ROI box colour of magnifying layer 1, 2, ... (the frozen patches are drawn white)
LAYER_COLOURS = ("#ff7f0e", "#1f9bff", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
FROZEN_COLOUR = "#ffffff"


def load(path: str, device):
    """``(MagNet in eval mode on device, its MagNetConfig)`` (never unpickles)."""
    from ...runtime.checkpoint import build_from_checkpoint
    from .model import build_model

    return build_from_checkpoint(path, METHOD, MagNetConfig, build_model, device)


def leaf_table(out: dict) -> dict[str, np.ndarray]:
    """Per leaf in GRU order: level-0 box, centre, running probability, and its rise (the
    probability after it minus the one before; before the first leaf: the GRU's prior)."""
    running = out["running"].detach().cpu().numpy().astype(np.float64)
    prior = float(out["prior"].detach())
    before = np.concatenate([[prior], running[:-1]])
    boxes = np.array([f.box() for f in out["fields"][-1]], np.float64).reshape(-1, 4)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    return {"order": np.arange(len(running)), "box": boxes, "centre": centres, "running": running,
            "rise": running - before}


def result_from_output(out: dict, counts: dict, config: MagNetConfig, slide_path: str, mpp=None,
                       patches=None, threshold: float | None = None):
    """The InferenceResult of one forward pass: ROI boxes per magnifying layer (frozen patches
    white), parent -> child edges, the leaves with their running probability, the evidence
    points (leaf centres by the rise in running probability they caused), and a summary with
    the running probability curve."""
    from ...results import InferenceResult, SlideBoxes, SlideLines, SlidePoints
    from ...runtime.run import top_evidence

    patches = tuple(patches or config.patches)
    score = float(torch.softmax(out["logits"].detach(), -1)[1])
    leaves = leaf_table(out)
    boxes, lines = [], []
    last = len(out["fields"]) - 1
    parent_boxes = None
    for layer, fields in enumerate(out["fields"]):
        b = np.array([f.box() for f in fields], np.float64).reshape(-1, 4)
        theta = out["thetas"][layer].detach().cpu().numpy()
        frozen = np.zeros(len(b), bool)
        frozen[out["frozen"][layer]] = True
        parent = np.arange(len(b)) // int(patches[layer])
        colour = LAYER_COLOURS[layer % len(LAYER_COLOURS)]
        edge = np.array([FROZEN_COLOUR if f else colour for f in frozen], object)
        props = {"index": np.arange(len(b)), "parent": parent, "scale": theta[:, 0, 0].astype(np.float32),
                 "frozen": frozen}
        text = "scale"
        if layer == last:
            props.update(order=leaves["order"], running=leaves["running"].astype(np.float32),
                         rise=leaves["rise"].astype(np.float32))
            text = "running"
        name = f"MagNet layer {layer + 1}" + (" (leaves)" if layer == last else "")
        boxes.append(SlideBoxes(name, b, props, edge_color=edge if frozen.any() else colour,
                                edge_width_px=max(2.0, (b[:, 2] - b[:, 0]).mean() / 120), text=text,
                                metadata={"magnet_layer": layer + 1, "magnet_role": "boxes",
                                          "frozen_colour": FROZEN_COLOUR, "colour": colour,
                                          **({"prior": float(out["prior"].detach()),
                                              "slide_threshold": threshold} if layer == last else {})}))
        if parent_boxes is not None:
            pc = (parent_boxes[parent, :2] + parent_boxes[parent, 2:]) / 2
            cc = (b[:, :2] + b[:, 2:]) / 2
            lines.append(SlideLines(f"MagNet edges {layer} -> {layer + 1}", np.stack([pc, cc], 1),
                                    {"parent": parent, "child": np.arange(len(b))}, edge_color=colour,
                                    edge_width_px=max(2.0, (b[:, 2] - b[:, 0]).mean() / 200),
                                    metadata={"magnet_layer": layer + 1, "magnet_role": "edges"}))
        parent_boxes = b
    rank = np.argsort(-leaves["rise"], kind="stable")
    evidence = top_evidence(leaves["centre"], leaves["rise"])
    leaf_size = float(np.mean(leaves["box"][:, 2] - leaves["box"][:, 0])) if len(rank) else 64.0
    points = [SlidePoints("MagNet leaf probability", leaves["centre"],
                          {"running": leaves["running"].astype(np.float32), "order": leaves["order"],
                           "rise": leaves["rise"].astype(np.float32)},
                          size_px=leaf_size / 2, color_by="running",
                          metadata={"magnet_role": "leaf_probability"}),
              SlidePoints("MagNet evidence", leaves["centre"][rank],
                          {"rise": leaves["rise"][rank].astype(np.float32), "order": leaves["order"][rank],
                           "running": leaves["running"][rank].astype(np.float32), "rank": np.arange(len(rank))},
                          size_px=leaf_size / 4, face_color="yellow",
                          metadata={"ranked_by": "rise in running probability", "magnet_role": "evidence"})]
    summary = {
        "slide_score": score, "evidence": evidence,
        "patches_read": int(counts["patches_read"]), "pixels_read": int(counts["pixels_read"]),
        "leaves": int(len(rank)), "patches": list(patches), "sampler": config.sampler,
        "prior": float(out["prior"].detach()),
        "running": [round(float(v), 5) for v in leaves["running"]],
        "leaf_centres": [[round(float(x), 1), round(float(y), 1)] for x, y in leaves["centre"]],
        "leaf_boxes": [[round(float(v), 1) for v in row] for row in leaves["box"]],
    }
    return InferenceResult(METHOD, str(slide_path), score, points=points, boxes=boxes, lines=lines,
                           summary=summary, mpp=mpp)


def infer(slide, model, config: MagNetInferConfig, region) -> Generator:
    """One pass of the MagNet over the slide (or ``region``): the ROI tree, the running
    probability and the slide score (:func:`result_from_output`)."""
    from .training import run_slide

    net, cfg = model.model, model.config
    yield Progress("magnify", 0, 1, f"{len(cfg.patches)} magnifying layers, {cfg.leaves} leaves")
    net.eval()
    with torch.no_grad():
        out, counts = run_slide(net, slide, cfg, model.device, region=region)
    result = result_from_output(out, counts, cfg, getattr(slide, "path", slide), getattr(slide, "mpp", None),
                                threshold=float(config.slide_threshold))
    yield Progress("magnify", 1, 1, f"{counts['patches_read']} patches read")
    return result


def evaluate(data_dir, model, config: MagNetInferConfig, *, limit: int = 0) -> Generator:
    """Slide metrics on a folder with the checkpoint's labels file: ``auc``, ``auc_interval``
    (stratified bootstrap 95 %), ``n``, ``seconds_per_slide``, ``patches_read_mean``,
    ``pixels_read_mean``, the call at the stored threshold, with the scores and labels."""
    from ...calls import call_summary, choose_threshold
    from ...evaluate import bootstrap_auc_interval, roc_auc
    from ...runtime.events import run_to_end
    from ...slides import open_slide
    from .training import labelled_slides

    items = labelled_slides(data_dir, model.config)
    if limit:
        items = items[: int(limit)]
    scores, labels, seconds, reads, pixels = [], [], [], [], []
    for k, item in enumerate(items):
        t0 = time.perf_counter()
        with open_slide(item.path) as slide:
            res = run_to_end(infer(slide, model, config, None))
        seconds.append(time.perf_counter() - t0)
        scores.append(float(res.slide_score))
        labels.append(int(item.label))
        reads.append(res.summary["patches_read"])
        pixels.append(res.summary["pixels_read"])
        yield Progress("evaluate", k + 1, len(items), f"slide {k + 1}/{len(items)}")
    lo, hi = bootstrap_auc_interval(labels, scores) if len(set(labels)) > 1 else (float("nan"), float("nan"))
    return {"auc": roc_auc(labels, scores) if len(set(labels)) > 1 else float("nan"), "auc_interval": [lo, hi],
            "n": len(items), "seconds_per_slide": float(np.mean(seconds)) if seconds else float("nan"),
            "patches_read_mean": float(np.mean(reads)) if reads else float("nan"),
            "pixels_read_mean": float(np.mean(pixels)) if pixels else float("nan"),
            **call_summary(labels, scores, config.slide_threshold), "threshold_rule": config.threshold_rule,
            "youden_threshold": choose_threshold(labels, scores, "youden") if len(set(labels)) > 1 else None,
            "checkpoint": model.checkpoint, "scores": scores, "labels": labels,
            "stems": [i.stem for i in items]}
