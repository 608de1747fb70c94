"""What ``napari-glimpse view`` shows: a slide, the sample mosaic with its truth, and results.

Two viewers, because two slides share one world (both start at the origin in microns):

- "slide": the slide (default: the bundled CMU-1-Small-Region) and its tissue mask, plus
  every ``--result`` folder computed on it;
- "mosaic": the sample PatchCamelyon mosaic, its ground-truth tumour mask, and the inference
  results found for it (``--result`` folders whose slide is the mosaic, or the cached CELNet
  result of an earlier run).

Every plugin widget in the manifest is docked in each viewer. Headless, each viewer's canvas
(and the first viewer's whole window) is saved as PNG, with ``summary.json`` / ``summary.txt``.
"""

from __future__ import annotations

import json
import os
import time
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


def dock_plugin_widgets(viewer) -> list[str]:
    """Dock every widget this plugin's manifest contributes; returns their names."""
    import npe2

    manifest = npe2.PluginManager.instance().get_manifest(PLUGIN)
    names = [w.display_name for w in (manifest.contributions.widgets or [])]
    for name in names:
        viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return names


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

    t0 = time.perf_counter()
    layer_data, info = mosaic_layer_data()
    _add(viewer, layer_data)
    for result in results:
        _add(viewer, result_to_layers(result, mpp=info.get("mpp")))
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
) -> int:
    """Open the viewers; headless, save screenshots + summary to ``out`` and return."""
    import napari

    from ._sample_data import cmu1_path, cached_mosaic_results

    slide_path = slide or str(cmu1_path())
    loaded = _load_results(results or [])
    mosaic_results = [r for r in loaded if _is_mosaic_result(r)]
    slide_results = [r for r in loaded if r not in mosaic_results]
    if mosaic:
        mosaic_results += cached_mosaic_results()

    summary: dict[str, Any] = {"napari": napari.__version__, "scenes": {}, "screenshots": []}
    viewers = []
    t0 = time.perf_counter()
    viewer = napari.Viewer(title=f"napari-glimpse: {Path(slide_path).name}", show=True)
    viewers.append(("slide", viewer))
    summary["scenes"]["slide"] = slide_scene(viewer, slide_path, slide_results)
    summary["widgets"] = dock_plugin_widgets(viewer)
    if mosaic:
        mv = napari.Viewer(title="napari-glimpse: tumour mosaic", show=True)
        try:
            summary["scenes"]["mosaic"] = mosaic_scene(mv, mosaic_results)
        except ImportError as exc:  # the mosaic builder is not installed in this checkout
            mv.close()
            summary["mosaic_skipped"] = f"sample mosaic unavailable: {exc}"
        else:
            viewers.append(("mosaic", mv))
            dock_plugin_widgets(mv)
    summary["seconds_to_open"] = round(time.perf_counter() - t0, 3)

    for name, v in viewers:
        # Under xvfb the window is shown too: napari renders nothing into a hidden canvas.
        v.window._qt_window.resize(size[1] + 400, size[0] + 150)
        _process_events()
        v.reset_view()
        summary["scenes"][name]["layers"] = _layer_summary(v)

    if not headless:
        napari.run()
        return 0

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, v in viewers:
        t0 = time.perf_counter()
        path = out / f"{name}.png"
        _process_events()
        img = v.screenshot(str(path), canvas_only=True)
        v.screenshot(str(out / f"{name}-window.png"), canvas_only=False)
        summary["scenes"][name]["screenshot"] = str(path)
        summary["scenes"][name]["seconds_screenshot"] = round(time.perf_counter() - t0, 3)
        summary["scenes"][name]["screenshot_mean_rgb"] = [
            round(float(c), 1) for c in np.asarray(img)[..., :3].reshape(-1, 3).mean(axis=0)
        ]
        summary["screenshots"].append(str(path))
    for _, v in viewers:
        v.close()
    _write_summary(out, summary)
    return 0


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
        for key in ("format", "dimensions", "mpp", "tissue_fraction", "tumour_cells",
                    "seconds_open", "seconds_screenshot", "results", "screenshot"):
            if key in scene:
                lines.append(f"  {key}: {scene[key]}")
        for layer in scene.get("layers", []):
            lines.append(f"  layer {layer['name']!r} ({layer['type']}) shape {layer['shape']} "
                         f"scale {[round(s, 4) for s in layer['scale']]}")
    atomic(out / "summary.txt", "\n".join(lines) + "\n")


__all__ = ["run_view", "slide_scene", "mosaic_scene", "dock_plugin_widgets", "GlimpseError"]
