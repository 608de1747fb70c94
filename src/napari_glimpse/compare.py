"""Several methods on one slide: one table, and a report readable without napari.

:func:`compare` runs the chosen methods (default: every method with shipped weights) one
after another on a slide or a region of it, through the shared runtime
(:func:`napari_glimpse.runtime.run.run_inference`), and yields their progress. Its
:class:`Comparison` has one row per method: slide score, call, threshold, seconds, patches and
pixels read, device, and the evidence agreement with every other method: the share of this
method's evidence points that lie within one patch (:data:`PATCH_UM`, the PCam patch every
shipped model reads, in level-0 px of the slide) of one of the other method's points.

:func:`save_comparison` writes ``DIR/<method>/`` (each result folder), ``DIR/compare.json``,
``DIR/thumbs/<method>.png`` and ``DIR/report.html`` (the table and the thumbnails inline).
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .annotations._types import atomic_write_text
from .errors import GlimpseError
from .results import InferenceResult, is_lazy_array
from .runtime.events import Progress

__all__ = ["compare", "Comparison", "default_methods", "agreement", "save_comparison", "PATCH_UM"]

#: One patch: 96 px at 0.972 um/px (PCam), the unit of evidence agreement.
PATCH_UM = 96 * 0.972
COLUMNS = ("method", "slide_score", "slide_call", "threshold", "seconds", "patches_read",
           "pixels_read", "device")


def default_methods() -> list[str]:
    """Every registered method with shipped weights."""
    from .methods.registry import get_method, list_methods, shipped_checkpoint

    return [m for m in list_methods() if get_method(m).weights and shipped_checkpoint(m)]


def agreement(a: np.ndarray, b: np.ndarray, radius: float) -> float | None:
    """The share of points ``a`` (N, 2) within ``radius`` of some point of ``b`` (None if either is empty)."""
    a = np.asarray(a, float).reshape(-1, 2)
    b = np.asarray(b, float).reshape(-1, 2)
    if not len(a) or not len(b):
        return None
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(axis=1)
    return float(np.mean(d <= radius))


@dataclass
class Comparison:
    """What :func:`compare` found on one slide."""

    slide: str
    region: tuple[int, int, int, int] | None
    mpp: tuple[float, float] | None
    results: dict[str, InferenceResult] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def patch_px(self) -> float:
        """One patch in level-0 px (96 px when the slide has no pixel size)."""
        return PATCH_UM / float(np.mean(self.mpp)) if self.mpp else 96.0

    def rows(self) -> list[dict[str, Any]]:
        """One row per method that ran: :data:`COLUMNS`, then ``agreement`` (method -> share)."""
        ev = {m: np.asarray(r.summary.get("evidence") or [], float).reshape(-1, 2)
              for m, r in self.results.items()}
        out = []
        for m, r in self.results.items():
            s = r.summary
            row = {"method": m, "slide_score": r.slide_score, "slide_call": s.get("slide_call"),
                   "threshold": s.get("threshold"), "seconds": round(float(s.get("seconds", 0.0)), 3),
                   "patches_read": s.get("patches_read"), "pixels_read": s.get("pixels_read"),
                   "device": s.get("device")}
            row["agreement"] = {o: agreement(ev[m], ev[o], self.patch_px) for o in self.results if o != m}
            out.append(row)
        return out


def compare(slide, methods: Sequence[str] | None = None, region: Sequence[int] | None = None,
            device: str | None = None, checkpoints: dict[str, str] | None = None,
            models: dict | None = None) -> Generator[Progress, None, Comparison]:
    """Run ``methods`` on ``slide`` (a path or an open Slide); yields Progress, returns a Comparison.

    A method that fails (no weights, bad input) is recorded in ``errors`` and the others go
    on. ``models`` (method -> LoadedModel) reuses loaded models, e.g. a panel's cache.
    """
    from .methods.registry import get_method, load_model
    from .runtime.run import run_inference
    from .slides import open_slide

    methods = list(methods) if methods else default_methods()
    if not methods:
        raise GlimpseError("no method to compare: none has shipped weights; name some with --methods")
    for m in methods:  # an unknown name fails before anything runs
        try:
            get_method(m)
        except KeyError as exc:
            raise GlimpseError(exc.args[0]) from None
    own = isinstance(slide, (str, os.PathLike))
    opened = open_slide(slide) if own else slide
    try:
        comp = Comparison(opened.path, None if region is None else tuple(int(v) for v in region), opened.mpp)
        for i, name in enumerate(methods):
            yield Progress("compare", i, len(methods), message=name)
            try:
                model = (models or {}).get(name) or load_model(name, (checkpoints or {}).get(name), device)
                gen = run_inference(name, opened, model, region=comp.region)
                while True:
                    try:
                        ev = next(gen)
                    except StopIteration as stop:
                        comp.results[name] = stop.value
                        break
                    yield Progress(ev.stage, ev.done, ev.total, f"{name}: {ev.message}".strip(), ev.metrics)
            except GlimpseError as exc:
                comp.errors[name] = str(exc)
        yield Progress("compare", len(methods), len(methods), message="done")
        return comp
    finally:
        if own:
            opened.close()


# ------------------------------------------------------------------------------- report


def _backdrop(slide, region, max_side: int = 900):
    """(RGB thumbnail, extent (x0, x1, y1, y0) in level-0 px) of the region or the slide."""
    from PIL import Image

    w0, h0 = slide.dimensions
    x0, y0, x1, y1 = region or (0, 0, w0, h0)
    ds = max((x1 - x0), (y1 - y0)) / max_side
    level = slide.best_level_for_downsample(max(ds, 1.0))
    f = slide.levels[level].downsample
    px = slide.read_region((int(x0), int(y0)), level, (max(1, round((x1 - x0) / f)), max(1, round((y1 - y0) / f))))
    if max(px.shape[:2]) > max_side:
        s = max_side / max(px.shape[:2])
        px = np.asarray(Image.fromarray(px).resize((max(1, round(px.shape[1] * s)), max(1, round(px.shape[0] * s)))))
    return px, (x0, x1, y1, y0)


def _truth(slide_path: str, extent):
    """The ground-truth mask beside a mosaic (``<stem>.mask.tif``) over ``extent``, or None."""
    mask = Path(str(slide_path)[: -len(".tif")] + ".mask.tif") if str(slide_path).endswith(".tif") else None
    if mask is None or not mask.is_file():
        return None
    from .annotations import read_label_mask, tumour_pixels
    from .slides import open_slide

    try:
        with open_slide(slide_path) as s:
            lm = read_label_mask(mask, s.dimensions, max_pixels=2**22)
        m = tumour_pixels(lm)
    except GlimpseError:
        return None
    dy, dx = np.broadcast_to(np.asarray(lm.downsample, float), (2,))[::-1]
    # mask pixel j covers level-0 [j * d, (j + 1) * d): contour it at the pixel centres
    return m, (np.arange(m.shape[1]) + 0.5) * dx, (np.arange(m.shape[0]) + 0.5) * dy


def _overlay_png(result: InferenceResult, backdrop, extent, truth, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    h, w = backdrop.shape[:2]
    fig, ax = plt.subplots(figsize=(6, 6 * h / max(w, 1) + 0.4), dpi=110)
    ax.imshow(backdrop, extent=extent, interpolation="bilinear")
    for m in result.maps:
        data = m.data
        if is_lazy_array(data):
            step = max(1, int(np.ceil(max(data.shape[-2:]) / 1024)))
            data, cell = np.asarray(data[::step, ::step]), np.asarray(m.cell_size, float) * step
        else:
            data, cell = np.asarray(data), np.asarray(m.cell_size, float)
        if data.ndim != 2 or not data.size or not m.visible:
            continue
        sx, sy = np.broadcast_to(cell, (2,))
        ox, oy = m.origin
        ext = (ox, ox + data.shape[1] * sx, oy + data.shape[0] * sy, oy)
        if m.kind == "labels":
            colours = m.metadata.get("class_colours") or ["#00000000", "#2ca02c", "#d62728"]
            cmap = ListedColormap(["#00000000"] + list(colours[1:]))
            ax.imshow(np.ma.masked_equal(data, 0), extent=ext, cmap=cmap, vmin=0, vmax=len(colours) - 1,
                      alpha=0.5, interpolation="nearest")
        else:
            lo, hi = m.contrast_limits or (float(np.nanmin(data)), float(np.nanmax(data)))
            t = np.nan_to_num(np.clip((data - lo) / max(hi - lo, 1e-12), 0, 1))
            # fading, as the viewer shows maps: low values leave the tissue visible
            ax.imshow(data, extent=ext, cmap=m.colormap if m.colormap in plt.colormaps() else "inferno",
                      vmin=lo, vmax=hi, alpha=np.clip(t * 2.0, 0, 0.7), interpolation="nearest")
        break  # the first map: the method's own explanation
    for b in result.boxes:
        for x0, y0, x1, y1 in np.asarray(b.boxes, float).reshape(-1, 4)[:300]:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=0.8,
                                   ec=b.edge_color if isinstance(b.edge_color, str) else "cyan"))
    for ln in result.lines:
        segs = np.asarray(ln.segments, float).reshape(-1, 2, 2)[:500]
        if len(segs):
            ax.add_collection(LineCollection(segs, colors=ln.edge_color, linewidths=0.6))
    ev = np.asarray(result.summary.get("evidence") or [], float).reshape(-1, 2)
    if len(ev):
        ax.scatter(ev[:, 0], ev[:, 1], s=60, facecolors="none", edgecolors="yellow", linewidths=1.4)
    if truth is not None and truth[0].any():
        mask, xs, ys = truth
        ax.contour(xs, ys, mask.astype(np.float32), levels=[0.5], colors="lime", linewidths=1.0)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "tumour" if v else "no tumour"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1e4 else f"{v:.3g}"
    return html.escape(str(v))


def _html(comp: Comparison, rows: list[dict], thumbs: dict[str, str]) -> str:
    others = [r["method"] for r in rows]
    head = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in COLUMNS) + "".join(
        f"<th>agrees with {html.escape(o)}</th>" for o in others)
    body = []
    for r in rows:
        cells = "".join(f"<td>{_fmt(r[c] if c != 'slide_call' or r[c] is None else bool(r[c]))}</td>" for c in COLUMNS)
        cells += "".join(f"<td>{'-' if o == r['method'] else _fmt(r['agreement'].get(o))}</td>" for o in others)
        body.append(f"<tr>{cells}</tr>")
    errors = "".join(f"<li><b>{html.escape(m)}</b>: {html.escape(e)}</li>" for m, e in comp.errors.items())
    figs = "".join(f'<figure><img src="data:image/png;base64,{b64}" alt="{html.escape(m)}"><figcaption>'
                   f"{html.escape(m)}</figcaption></figure>" for m, b64 in thumbs.items())
    region = "whole slide" if comp.region is None else f"region x0 y0 x1 y1 = {list(comp.region)} (level-0 px)"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>napari-glimpse compare: {html.escape(Path(comp.slide).name)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:4px 8px;text-align:right}} th{{background:#eee}}
figure{{display:inline-block;margin:8px}} img{{max-width:560px}}</style></head><body>
<h1>{html.escape(Path(comp.slide).name)}</h1>
<p>{html.escape(comp.slide)}: {region}. Agreement: share of the row's evidence points within one patch
({comp.patch_px:.0f} level-0 px = {PATCH_UM:.0f} um) of one of the column method's points.
Yellow rings: evidence points; green line: the ground truth beside a mosaic.</p>
<table><tr>{head}</tr>{''.join(body)}</table>
{f'<h2>Failed</h2><ul>{errors}</ul>' if errors else ''}
<h2>What each method saw</h2>{figs}
</body></html>
"""


def save_comparison(comp: Comparison, out_dir: str | os.PathLike) -> Path:
    """Write the result folders, ``compare.json``, the thumbnails and ``report.html``; returns the report."""
    from .runtime.results_io import _jsonable, save_result
    from .slides import open_slide

    out = Path(out_dir)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    rows = comp.rows()
    for name, result in comp.results.items():
        save_result(result, out / name)
    thumbs = {}
    with open_slide(comp.slide) as slide:
        backdrop, extent = _backdrop(slide, comp.region)
    truth = _truth(comp.slide, extent)
    for row in rows:
        name = row["method"]
        png = out / "thumbs" / f"{name}.png"
        call = row["slide_call"]
        title = f"{name}: score {_fmt(row['slide_score'])}" + ("" if call is None else f", {_fmt(bool(call))}")
        _overlay_png(comp.results[name], backdrop, extent, truth, png, title)
        thumbs[name] = base64.b64encode(png.read_bytes()).decode()
    doc = {"slide": comp.slide, "region": comp.region, "patch_px": comp.patch_px, "rows": rows, "errors": comp.errors}
    atomic_write_text(out / "compare.json", json.dumps(_jsonable(doc), indent=2) + "\n")
    report = out / "report.html"
    atomic_write_text(report, _html(comp, rows, thumbs))
    return report
