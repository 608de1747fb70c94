"""Cohort inference: one task per slide on Dask distributed, resumable, failures reported.

``napari-glimpse infer METHOD SLIDE... --out DIR --scheduler local:N|ADDRESS`` runs here:

- ``local:N`` starts a :class:`distributed.LocalCluster` of N single-threaded worker processes
  (torch gets the machine's cores divided among them); any other value is a scheduler
  address (``tcp://host:8786``), which reaches any Dask cluster, e.g. one started by
  dask-jobqueue on SLURM. ``serial`` runs the same tasks in this process, one after another.
- Each worker loads the model once (:func:`_model`, cached per process) and uses its GPU when
  it has one (with several GPUs, worker ``i`` takes ``cuda:i % count``).
- A slide whose result folder is complete (``summary.json`` of this method is written last,
  and the folder is renamed into place) is skipped; a slide that fails gets status
  ``failed`` and its one-line error, and the others go on.
- ``DIR/cohort.csv`` has one row per slide (:data:`COLUMNS`); it is rewritten (temporary file,
  then rename) after every slide, so a killed run leaves a valid table behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..annotations._types import atomic_write_text
from ..errors import GlimpseError

__all__ = ["run_cohort", "COLUMNS", "read_cohort"]

#: The columns of ``cohort.csv``.
COLUMNS = ("slide", "status", "slide_score", "slide_call", "threshold", "seconds",
           "patches_read", "device", "out", "error")

_MODELS: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def _worker_device(device: str | None) -> str | None:
    """``device``, or on a worker of a machine with several GPUs, ``cuda:<worker % count>``."""
    if device is not None:
        return device
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count > 1:
        try:
            from distributed import get_worker

            name = get_worker().name
            index = name if isinstance(name, int) else abs(hash(name))
            return f"cuda:{index % count}"
        except (ImportError, ValueError):
            pass
    return None


def _model(method: str, checkpoint, device, threads):
    """The loaded model of this process (loaded once per worker)."""
    from ..methods.registry import load_model

    key = (method, None if checkpoint is None else str(checkpoint), device)
    with _LOCK:
        if key not in _MODELS:
            if threads:
                import torch

                torch.set_num_threads(int(threads))
            _MODELS[key] = load_model(method, checkpoint, _worker_device(device))
        return _MODELS[key]


def _one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, GlimpseError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__


def _row(slide: str, status: str, target: Path, summary: Mapping | None = None,
         error: str = "", seconds: float | None = None) -> dict:
    s = summary or {}
    sec = s.get("seconds") if seconds is None else seconds
    return {"slide": slide, "status": status, "slide_score": s.get("slide_score"),
            "slide_call": s.get("slide_call"), "threshold": s.get("threshold"),
            "seconds": None if sec is None else round(float(sec), 3),
            "patches_read": s.get("patches_read"), "device": s.get("device"),
            "out": str(target), "error": error}


def complete_summary(target: Path, method: str) -> dict | None:
    """The summary of a complete result of ``method`` in ``target``, else None."""
    path = Path(target) / "summary.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if doc.get("method") != method:
        return None
    return {**doc.get("summary", {}), "slide_score": doc.get("slide_score")}


def infer_one(method: str, slide: str, target: str, checkpoint=None, device: str | None = None,
              overrides: Mapping[str, Any] | None = None, region=None, threads: int | None = None) -> dict:
    """Run ``method`` on one slide and save its result folder: the task each worker runs.

    Never raises for a bad slide: returns the ``cohort.csv`` row (status ``done`` or
    ``failed`` with a one-line error).
    """
    from ..methods.registry import infer_config_for
    from .events import run_to_end
    from .results_io import save_result
    from .run import run_inference

    t0 = time.perf_counter()
    target_path = Path(target)
    try:
        model = _model(method, checkpoint, device, threads)
        config = infer_config_for(method, model, overrides)
        result = run_to_end(run_inference(method, slide, model, config, region=region))
        save_result(result, target_path)
        return _row(slide, "done", target_path, {**result.summary, "slide_score": result.slide_score})
    except Exception as exc:  # one broken slide must not stop the cohort
        return _row(slide, "failed", target_path, error=_one_line(exc), seconds=time.perf_counter() - t0)


def _targets(slides: Sequence[str], out: Path) -> list[Path]:
    """``out/<stem>`` per slide; two slides with one stem are an error (one would overwrite the other)."""
    seen: dict[str, str] = {}
    targets = []
    for s in slides:
        stem = Path(s).stem  # as the serial ``infer`` names it
        if stem in seen:
            raise GlimpseError(f"two slides would share the result folder {stem!r}: {seen[stem]} and {s}")
        seen[stem] = s
        targets.append(out / stem)
    return targets


def write_cohort_csv(rows: Sequence[Mapping], path: Path) -> None:
    """``cohort.csv`` through a temporary file and a rename."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in COLUMNS})
    atomic_write_text(path, buf.getvalue())


def read_cohort(path: str | os.PathLike) -> list[dict]:
    """The rows of a ``cohort.csv`` (strings, as written)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _client(scheduler: str):
    """(client, cluster or None, threads per worker or None) for ``local:N`` or an address."""
    import logging

    from distributed import Client, LocalCluster

    if scheduler.startswith("local:"):
        try:
            n = int(scheduler.split(":", 1)[1])
        except ValueError:
            raise GlimpseError(f"--scheduler {scheduler!r}: expected local:N with N a number of workers") from None
        if n < 1:
            raise GlimpseError(f"--scheduler {scheduler!r}: N must be at least 1")
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
        return Client(cluster), cluster, max(1, (os.cpu_count() or 1) // n)
    try:
        return Client(scheduler, timeout="20s"), None, None
    except (OSError, TimeoutError, ValueError) as exc:
        raise GlimpseError(f"cannot reach the Dask scheduler {scheduler!r}: {_one_line(exc)}") from None


def run_cohort(method: str, slides: Sequence[str | os.PathLike], out: str | os.PathLike, *,
               checkpoint=None, device: str | None = None, overrides: Mapping[str, Any] | None = None,
               region=None, scheduler: str = "serial", threads: int | None = None,
               on_row: Callable[[dict, int, int], None] | None = None) -> list[dict]:
    """Run ``method`` on every slide (one task each) and return the ``cohort.csv`` rows.

    Parameters
    ----------
    method, checkpoint, device, overrides, region
        As for :func:`napari_glimpse.runtime.run.infer` (the overrides are inference-config fields).
    slides
        Slide paths; each result goes to ``out/<stem>``.
    scheduler
        ``"serial"`` (this process), ``"local:N"`` (a LocalCluster of N workers) or a Dask
        scheduler address.
    on_row
        Called with ``(row, done, total)`` as each slide finishes (skipped ones first).
    """
    from ..methods.registry import get_method, infer_config_for, resolve_checkpoint

    spec = get_method(method)
    ckpt = resolve_checkpoint(spec, checkpoint)  # a missing checkpoint fails here, once
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    slides = [os.fspath(s) for s in slides]
    targets = _targets(slides, out)
    overrides = dict(overrides or {})
    try:  # a bad flag value fails before any slide runs
        infer_config_for(spec, None, overrides)
    except ValueError as exc:
        raise GlimpseError(str(exc)) from None
    rows: dict[int, dict] = {}
    csv_path = out / "cohort.csv"
    todo = []
    for i, (s, t) in enumerate(zip(slides, targets, strict=True)):
        summary = complete_summary(t, spec.name)
        if summary is not None:
            rows[i] = _row(s, "skipped", t, summary)
        else:
            todo.append(i)

    def record(i: int, row: dict) -> None:
        rows[i] = row
        write_cohort_csv([rows[k] for k in sorted(rows)], csv_path)
        if on_row is not None:
            on_row(row, len(rows), len(slides))

    for i in sorted(rows):
        record(i, rows[i])
    args = {"checkpoint": ckpt, "device": device, "overrides": overrides, "region": region}
    if scheduler == "serial":
        for i in todo:
            record(i, infer_one(spec.name, slides[i], str(targets[i]), threads=threads, **args))
    elif todo:
        from distributed import as_completed

        client, cluster, per_worker = _client(scheduler)
        try:
            futures = {client.submit(infer_one, spec.name, slides[i], str(targets[i]),
                                     threads=threads or per_worker, pure=False,
                                     key=f"glimpse-{spec.name}-{i}-{targets[i].name}", **args): i
                       for i in todo}
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    row = fut.result()
                except Exception as exc:  # the worker died (killed, out of memory)
                    row = _row(slides[i], "failed", targets[i], error=_one_line(exc))
                record(i, row)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    if not csv_path.exists():
        write_cohort_csv([], csv_path)
    return [rows[k] for k in sorted(rows)]
