"""What ``napari-glimpse view`` shows: a slide, the sample mosaic with its truth, and results.

Two viewers, because two slides share one world (both start at the origin in microns):

- "slide": the slide (default: the bundled CMU-1-Small-Region) and its tissue mask, plus
  every ``--result`` folder computed on it;
- "mosaic": the sample PatchCamelyon mosaic, its ground-truth tumour mask, ``--result``
  folders whose slide is the mosaic, and the layers of every shipped model run on it
  (:mod:`._models`; cached, so a second start is instant).

Every plugin widget in the manifest is docked in each viewer; the scale bar is on. Headless,
each viewer's canvas and whole window are saved as PNG (the mosaic once with its truth and
once per model), with ``summary.json`` / ``summary.txt``.
"""

from __future__ import annotations

import json
import os
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GlimpseError

PLUGIN = "napari-glimpse"


def _add(viewer, layer_data: list[tuple]) -> list:
    added = []
    for t in layer_data:
        if t[0] is None:  # the reader's "nothing to add" sentinel
            continue
        data, kwargs, layer_type = t
        added.append(getattr(viewer, f"add_{layer_type}")(data, **kwargs))
    return added


# viewer -> {widget name: widget} of the widgets dock_plugin_widgets docked in it.
_DOCKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def dock_plugin_widgets(viewer) -> list[str]:
    """Dock every widget this plugin's manifest contributes; returns their names (the
    widgets are remembered per viewer, for :func:`_show_method_in_panels`)."""
    import npe2

    manifest = npe2.PluginManager.instance().get_manifest(PLUGIN)
    names = [w.display_name for w in (manifest.contributions.widgets or [])]
    widgets = {}
    for name in names:
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        widgets[name] = widget
    _DOCKED[viewer] = widgets
    return names


def _show_method_in_panels(viewer, method: str | None, layers: list) -> str | None:
    """Point the Run-model and Train-model panels at ``method`` (the checkpoint's settings
    then show) and select that method's top visible layer, so a screenshot's panels describe
    what it shows. Returns the method the Run-model panel shows (None without the panel)."""
    from .widgets._inference import InferenceWidget
    from .widgets._training import TrainingWidget

    shown = None
    for widget in _DOCKED.get(viewer, {}).values():
        if isinstance(widget, (InferenceWidget, TrainingWidget)):
            if method is not None and method in (widget.method.choices or ()):
                widget.method.value = method
            if isinstance(widget, InferenceWidget):
                shown = widget.method.value
    visible = [lyr for lyr in layers if lyr.visible]
    if method is not None and layers:
        viewer.layers.selection.active = (visible or layers)[-1]  # the top one: leaves, peaks
    _process_events()
    return shown


def _same_file(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def slide_scene(viewer, slide_path: str, results: list) -> dict[str, Any]:
    """Slide + tissue mask + results on it. Raises GlimpseError on a bad slide."""
    from ..layers import mask_to_layer_data, result_to_layers, slide_to_layer_data
    from ..slides import open_slide
    from ..slides.tissue import tissue_mask
    from .widgets._common import run_layers_hook

    t0 = time.perf_counter()
    slide = open_slide(slide_path)  # stays open: the image layer reads from it lazily
    layers = _add(viewer, [slide_to_layer_data(slide)])
    t_open = time.perf_counter() - t0
    t0 = time.perf_counter()
    tissue = tissue_mask(slide)
    layers += _add(
        viewer, [mask_to_layer_data(tissue.mask, tissue.cell_size, slide.mpp, name="tissue")]
    )
    t_tissue = time.perf_counter() - t0
    for result in results:
        layers += _add(viewer, result_to_layers(result, mpp=slide.mpp))
        run_layers_hook(result.method, viewer)
    return {
        "slide": slide_path,
        "format": slide.format,
        "dimensions": list(slide.dimensions),
        "mpp": slide.mpp,
        "levels": [[lv.width, lv.height, lv.downsample] for lv in slide.levels],
        "tissue_fraction": float(np.mean(tissue.mask)),
        "seconds_open": round(t_open, 3),
        "seconds_tissue_mask": round(t_tissue, 3),
        "results": [r.method for r in results],
    }


def mosaic_scene(viewer, results: list) -> dict[str, Any]:
    """The sample mosaic + its ground-truth mask + results for it."""
    from ..layers import result_to_layers
    from ._sample_data import mosaic_layer_data
    from .widgets._common import run_layers_hook

    t0 = time.perf_counter()
    layer_data, info = mosaic_layer_data()
    _add(viewer, layer_data)
    for result in results:
        _add(viewer, result_to_layers(result, mpp=info.get("mpp")))
        run_layers_hook(result.method, viewer)
    info["seconds_open"] = round(time.perf_counter() - t0, 3)
    info["results"] = [r.method for r in results]
    return info


def _layer_summary(viewer) -> list[dict[str, Any]]:
    out = []
    for layer in viewer.layers:
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        shape = list(np.shape(data)) if not isinstance(data, list) else [len(data)]
        out.append({
            "name": layer.name,
            "type": type(layer).__name__,
            "shape": shape,
            "scale": [float(s) for s in layer.scale],
            "translate": [float(t) for t in layer.translate],
            "visible": bool(layer.visible),
        })
    return out


def _load_results(result_dirs: list[str]) -> list:
    from ..runtime.results_io import load_result

    return [load_result(d) for d in result_dirs]


def run_view(
    slide: str | None = None,
    results: list[str] | None = None,
    mosaic: bool = True,
    headless: bool = False,
    out: str | os.PathLike = "view-out",
    size: tuple[int, int] = (900, 1200),
    models: bool = True,
    rerun: bool = False,
    model_params: dict[str, dict[str, Any]] | None = None,
) -> int:
    """Open the viewers and run the shipped models on the sample mosaic.

    Interactive, the viewers open at once and each model's layers appear when it finishes
    (a worker thread runs them). Headless, the models run first, then screenshots and
    ``summary.json`` / ``summary.txt`` go to ``out``.

    Parameters
    ----------
    models
        Run every registered method with a bundled checkpoint on the sample mosaic (results
        cached per method / checkpoint / parameters in the user cache folder).
    rerun
        Recompute the models' results even when cached.
    model_params
        Per-method keyword arguments for ``infer`` (tests use tiny settings).
    """
    import napari

    from ._sample_data import cmu1_path

    slide_path = slide or str(cmu1_path())
    loaded = _load_results(results or [])
    mosaic_results = [r for r in loaded if _is_mosaic_result(r)]
    slide_results = [r for r in loaded if r not in mosaic_results]

    summary: dict[str, Any] = {"napari": napari.__version__, "scenes": {}, "screenshots": [],
                               "methods": {}}
    viewers = []
    t0 = time.perf_counter()
    viewer = napari.Viewer(title=f"napari-glimpse: {Path(slide_path).name}", show=True)
    viewers.append(("slide", viewer))
    summary["scenes"]["slide"] = slide_scene(viewer, slide_path, slide_results)
    summary["widgets"] = dock_plugin_widgets(viewer)
    mv = None
    if mosaic:
        mv = napari.Viewer(title="napari-glimpse: tumour mosaic", show=True)
        try:
            summary["scenes"]["mosaic"] = mosaic_scene(mv, mosaic_results)
        except ImportError as exc:  # the mosaic builder is not installed in this checkout
            mv.close()
            mv = None
            summary["mosaic_skipped"] = f"sample mosaic unavailable: {exc}"
        else:
            viewers.append(("mosaic", mv))
            dock_plugin_widgets(mv)
    summary["seconds_to_open"] = round(time.perf_counter() - t0, 3)

    for _, v in viewers:
        # Under xvfb the window is shown too: napari renders nothing into a hidden canvas.
        v.window.resize(size[1] + 400, size[0] + 150)
        _fit_canvas(v, size)
        _scale_bar_um(v)
        _process_events()
        _zoom_to_slide(v)

    job = None
    if mv is not None and models:
        from ._models import run_models
        from ._sample_data import mosaic_results_dir, mosaic_slide_path

        job = _ModelJob(mv, summary["methods"])
        gen = run_models(str(mosaic_slide_path()), mosaic_results_dir(),
                         params=model_params, rerun=rerun)
        if headless:
            job.drain(gen)
        else:
            job.start(gen)

    if not headless:
        for name, v in viewers:
            summary["scenes"][name]["layers"] = _layer_summary(v)
        napari.run()
        return 0

    for name, v in viewers:
        summary["scenes"][name]["layers"] = _layer_summary(v)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, v in viewers:
        shots = [(name, None)]
        if name == "mosaic" and job is not None:
            shots += [(f"mosaic-{m}", m) for m in job.layers if job.layers[m]]
        for shot, method in shots:
            shown = job.show_only(method) if (name == "mosaic" and job is not None) else None
            panel = _show_method_in_panels(v, method, job.layers.get(method, []) if job else [])
            _fit_canvas(v, size)  # a panel's longer form may have taken canvas room
            summary["scenes"].setdefault(shot, {"of": name})
            summary["scenes"][shot].update(_screenshot(v, out, shot), panel_method=panel)
            if shown is not None:
                summary["scenes"][shot]["visible_layers"] = shown
            summary["screenshots"].append(summary["scenes"][shot]["screenshot"])
        if name == "mosaic" and job is not None:
            job.show_only(None, all_methods=True)
    for _, v in viewers:
        v.close()
    _write_summary(out, summary)
    return 0


def _fit_canvas(viewer, size: tuple[int, int]) -> None:
    """Grow the window until its canvas is at least ``size`` (rows, cols) px: the docked
    widgets take their room from the canvas, and a narrow window left it a sliver."""
    for _ in range(4):
        _process_events()
        h, w = _canvas_size(viewer)
        dh, dw = max(0, size[0] - h), max(0, size[1] - w)
        if not (dh or dw):
            break
        _, _, win_w, win_h = viewer.window.geometry()
        viewer.window.resize(win_w + dw, win_h + dh)


def _canvas_size(viewer) -> tuple[int, int]:
    """(rows, cols) of the canvas as Qt lays it out (the widget's own size: napari 0.9's
    ``viewer.canvas.size`` can lag behind a wider dock and report room the canvas no longer
    has); else napari's record of it."""
    native = getattr(getattr(getattr(viewer.window, "_qt_viewer", None), "canvas", None), "native", None)
    if native is not None and hasattr(native, "size"):
        q = native.size()
        return int(q.height()), int(q.width())
    canvas = getattr(viewer, "canvas", None)
    if canvas is not None and hasattr(canvas, "size"):
        return tuple(int(n) for n in canvas.size)
    return tuple(int(n) for n in viewer.window._qt_viewer.canvas.size)


def _screenshot(viewer, out: Path, name: str) -> dict[str, Any]:
    """Canvas and whole-window PNGs of ``viewer``; what they show, for the summary."""
    t0 = time.perf_counter()
    path = out / f"{name}.png"
    _process_events()
    img = viewer.screenshot(str(path), canvas_only=True)
    viewer.screenshot(str(out / f"{name}-window.png"), canvas_only=False)
    return {
        "screenshot": str(path),
        "window_screenshot": str(out / f"{name}-window.png"),
        "seconds_screenshot": round(time.perf_counter() - t0, 3),
        "screenshot_size": [int(n) for n in np.asarray(img).shape[:2]],
        "screenshot_mean_rgb": [
            round(float(c), 1) for c in np.asarray(img)[..., :3].reshape(-1, 3).mean(axis=0)
        ],
    }


def _scale_bar_um(viewer) -> None:
    """Scale bar on, in microns when the slide has an mpp (every layer is placed in um).

    napari >= 0.6 takes units from the layers (all must agree). Layers made by
    :mod:`napari_glimpse.layers` already say micrometres; this also tells any other layer
    (one drawn by hand, say), now or added later.
    """
    canvas = getattr(viewer, "canvas", None)  # napari >= 0.9 moved overlays to the canvas
    bar = canvas.overlays.scale_bar if canvas is not None else viewer.scale_bar
    bar.visible = True
    if _slide_layer_mpp(viewer) is None:
        return
    if not hasattr(viewer.layers[0], "units"):  # napari < 0.6: the scale bar holds the unit
        bar.unit = "um"
        return

    def to_um(layer) -> None:
        layer.units = ("um",) * layer.ndim

    for layer in viewer.layers:
        to_um(layer)
    viewer.layers.events.inserted.connect(lambda ev: to_um(ev.value))


def _zoom_to_slide(viewer) -> None:
    """Fit the first slide layer to the canvas (result maps may reach past the slide)."""
    from ..layers import META_KIND

    slides = [lyr for lyr in viewer.layers if (lyr.metadata or {}).get(META_KIND) == "slide"]
    if slides and slides[0].ndim < viewer.dims.ndim:
        # napari 0.9 cannot fit a subset of layers with fewer dimensions than the viewer (an
        # attention stack [H, M, N] over a 2-D slide raises IndexError): fit them all; the
        # stacks lie inside the slide
        slides = []
    viewer.reset_view(layers=slides[:1] or None)


class _ModelJob:
    """Adds each finished model's layers to the mosaic viewer and records its summary."""

    def __init__(self, viewer, methods_summary: dict[str, Any]):
        from ._sample_data import mosaic_truth

        self.viewer = viewer
        self.summary = methods_summary
        self.layers: dict[str, list] = {}
        self.truth = mosaic_truth()
        self.worker = None
        self._pbar = None

    # -------------------------------------------------------------- driving

    def drain(self, gen) -> None:
        """Headless: run the models here and now."""
        from ._models import MethodRun

        for item in gen:
            if isinstance(item, MethodRun):
                self.add(item)

    def start(self, gen) -> None:
        """Interactive: run the models in a worker thread; layers appear as each finishes."""
        from napari.utils import progress

        from .widgets._common import notify_error, start_generator

        self._pbar = progress(total=0, desc="models on the mosaic")
        self.worker = start_generator(
            lambda: gen, on_progress=self._on_item, on_result=lambda _: None,
            on_error=notify_error, on_finished=self._finished)
        # Closing the window while a model runs must not leave reports for deleted widgets.
        self.viewer.window._qt_window.destroyed.connect(self._abandon)

    def _abandon(self, *_) -> None:
        from .widgets._common import abandon

        if self.worker is not None:
            abandon(self.worker)
            self.worker = None

    def _on_item(self, item) -> None:
        from ._models import MethodRun

        if isinstance(item, MethodRun):
            self.add(item)
        elif self._pbar is not None:
            self._pbar.total = max(1, int(item.total))
            self._pbar.n = int(item.done)
            self._pbar.set_description(f"{item.stage} {item.message}".strip())
            self._pbar.refresh()

    def _finished(self) -> None:
        self.worker = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None

    # -------------------------------------------------------------- results

    def add(self, run) -> None:
        """Add one method's layers (replacing an earlier run's) and summarise it."""
        from ..evaluate import truth_check
        from ..layers import result_to_layers
        from .widgets._common import replace_layers

        entry: dict[str, Any] = {"checkpoint": run.checkpoint, "cache_dir": run.cache_dir,
                                 "cached": run.cached, "seconds_wall": round(run.seconds_wall, 3)}
        self.summary[run.method] = entry
        if run.result is None:
            entry["error"] = run.info.get("error")
            from napari.utils.notifications import show_warning

            show_warning(f"{run.method} failed on the sample mosaic: {entry['error']}")
            return
        r = run.result
        s = r.summary or {}
        entry.update({"slide_score": r.slide_score, "seconds": s.get("seconds"),
                      "patches_read": s.get("patches_read"), "pixels_read": s.get("pixels_read"),
                      "slide_call": s.get("slide_call"), "threshold": s.get("threshold"),
                      "slide_aggregation": s.get("slide_aggregation")})
        mpp = _slide_layer_mpp(self.viewer)
        added = replace_layers(self.viewer, result_to_layers(r, mpp=mpp),
                               f"{run.method}:{r.slide_path}", method=run.method)
        self.layers[run.method] = added
        entry["layers"] = [lyr.name for lyr in added]
        entry["truth"] = truth_check(r, *self.truth)

    def show_only(self, method: str | None, all_methods: bool = False) -> list[str]:
        """Show the slide, the truth (as an outline under a method) and one method's layers
        (the glimpse tree with the Q map of its first glimpse)."""
        from ..layers import META_KIND

        mine = {id(lyr) for m, lys in self.layers.items() for lyr in lys
                if all_methods or m == method}
        ours = {id(lyr) for lys in self.layers.values() for lyr in lys}
        # under one method, the Q map of its first glimpse: what the policy saw there
        q_maps = [lyr for lyr in self.layers.get(method, [])
                  if (lyr.metadata or {}).get("glimpse_role") == "q_map"] if method else []
        first_q = min(q_maps, key=lambda lyr: int(lyr.metadata.get("node_id", 1 << 30)), default=None)
        for lyr in self.viewer.layers:
            if id(lyr) in ours:
                q_map = (lyr.metadata or {}).get("glimpse_role") == "q_map"
                lyr.visible = id(lyr) in mine and (not q_map or lyr is first_q)
            elif (lyr.metadata or {}).get(META_KIND) == "mask":
                lyr.visible = True
                # under one method: a bright outline on top, so the overlay stays readable
                lyr.contour = 0 if method is None else 4
                lyr.opacity = 0.5 if method is None else 1.0
                if method is not None:
                    self.viewer.layers.move(self.viewer.layers.index(lyr), len(self.viewer.layers))
        return [lyr.name for lyr in self.viewer.layers if lyr.visible]


def _slide_layer_mpp(viewer):
    from ..layers import META_KIND, META_MPP

    for lyr in viewer.layers:
        md = lyr.metadata or {}
        if md.get(META_KIND) == "slide" and md.get(META_MPP) is not None:
            return tuple(md[META_MPP])
    return None


def _process_events() -> None:
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()


def _is_mosaic_result(result) -> bool:
    from ._sample_data import mosaic_slide_path

    return _same_file(result.slide_path, str(mosaic_slide_path()))


def _write_summary(out: Path, summary: dict[str, Any]) -> None:
    def atomic(path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    atomic(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    lines = [f"napari {summary['napari']}; widgets docked: {summary.get('widgets') or 'none'}"]
    if "mosaic_skipped" in summary:
        lines.append(summary["mosaic_skipped"])
    for name, scene in summary["scenes"].items():
        lines.append(f"[{name}] {scene.get('slide', '')}")
        for key in ("format", "dimensions", "mpp", "tissue_fraction", "tumour_cells", "tumour_pixels",
                    "seconds_open", "seconds_screenshot", "results", "screenshot"):
            if key in scene:
                lines.append(f"  {key}: {scene[key]}")
        for layer in scene.get("layers", []):
            lines.append(f"  layer {layer['name']!r} ({layer['type']}) shape {layer['shape']} "
                         f"scale {[round(s, 4) for s in layer['scale']]}")
    for method, m in summary.get("methods", {}).items():
        lines.append(f"[model {method}] checkpoint {Path(m['checkpoint']).name}"
                     f"{' (cached result)' if m.get('cached') else ''}")
        if "error" in m:
            lines.append(f"  FAILED: {m['error']}")
            continue
        score = m.get("slide_score")
        call = m.get("slide_call")
        if call is not None:
            lines.append(f"  call: {'tumour' if call else 'no tumour'} (threshold {m.get('threshold'):.4g}, "
                         f"aggregation {m.get('slide_aggregation') or 'the model'})")
        lines.append(f"  slide_score {score if score is None else round(float(score), 4)}, "
                     f"seconds {m.get('seconds') and round(float(m['seconds']), 2)}, "
                     f"patches_read {m.get('patches_read')}, pixels_read {m.get('pixels_read')}")
        lines.append(f"  layers: {', '.join(m.get('layers', []))}")
        for key, value in m.get("truth", {}).items():
            lines.append(f"  truth: {key}: {value}")
    atomic(out / "summary.txt", "\n".join(lines) + "\n")


__all__ = ["run_view", "slide_scene", "mosaic_scene", "dock_plugin_widgets", "GlimpseError"]
