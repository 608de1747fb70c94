"""What both dock widgets share: running a core generator in a thread, replacing result
layers, the recent-checkpoints store and the layer / device choices.

Long work follows one pattern (STYLE.md, "Long work in a GUI"): the core yields
:class:`~napari_glimpse.runtime.events.Progress` and *returns* its result;
:func:`start_generator` runs it in napari's ``thread_worker`` machinery, so the viewer stays
responsive and ``worker.quit()`` cancels at the next yield.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from psygnal import Signal

from ...errors import GlimpseError
from ...layers import META_KIND, META_MPP, META_SLIDE

DEVICES = ("auto", "cpu", "cuda", "mps")
# Metadata key that ties result layers to the run that made them, so a re-run replaces them.
META_RUN = "glimpse_run"


# ------------------------------------------------------------------------ worker


def start_generator(
    make: Callable[[], Generator],
    *,
    on_progress: Callable[[Any], None],
    on_result: Callable[[Any], None],
    on_error: Callable[[BaseException], None],
    on_finished: Callable[[], None],
    on_aborted: Callable[[], None] | None = None,
):
    """Run ``make()`` (a Progress generator) in a worker thread and return the started worker.

    ``make`` is called inside the thread, so opening slides and loading checkpoints does not
    block the GUI either. Errors go to ``on_error`` (not re-raised into the event loop);
    ``on_finished`` runs after a result, an error or a cancel alike.
    """
    from napari.qt.threading import create_worker

    from ...runtime.cpu_memory import keep_freed_memory

    def drive():
        keep_freed_memory()  # models allocate and free large tensors every step (see the module)
        return (yield from make())

    worker = create_worker(drive, _start_thread=False, _ignore_errors=True)
    worker.yielded.connect(on_progress)
    worker.returned.connect(on_result)
    worker.errored.connect(on_error)
    worker.finished.connect(on_finished)
    if on_aborted is not None:
        worker.aborted.connect(on_aborted)
    worker.start()
    return worker


def abandon(worker) -> None:
    """Quit a worker whose widget is gone: cut its signals first, so that reports still
    queued do not reach deleted Qt widgets."""
    for name in ("yielded", "returned", "errored", "finished", "aborted"):
        try:
            getattr(worker, name).disconnect()
        except (TypeError, RuntimeError):  # nothing connected
            continue
    worker.quit()


class WorkerControls:
    """Cancel and teardown for a widget that runs one worker at a time in ``self.worker``
    and shows its state in ``self.status``."""

    worker = None

    def _quit_quietly(self, *_) -> None:
        # Qt may report the destruction while Python is already tearing the widget down.
        worker = getattr(self, "worker", None)
        if worker is not None:
            abandon(worker)

    def _on_error(self, exc) -> None:
        self.status.value = "failed"
        notify_error(exc)

    def _on_finished(self) -> None:
        """After a result, an error or a cancel: the widget takes new work again."""
        self.worker = None
        self._set_running(False)

    def cancel(self, _=None) -> None:
        """Stop at the next yield: the generators yield per batch (training keeps the last
        saved epoch)."""
        if self.worker is not None:
            self.status.value = "cancelling..."
            self.worker.quit()


def error_message(exc: BaseException) -> str:
    """One line for a notification: GlimpseError already names the file."""
    if isinstance(exc, GlimpseError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def notify_error(exc: BaseException) -> None:
    from napari.utils.notifications import show_error

    show_error(error_message(exc))


# ------------------------------------------------------------------------ layers


def slide_layers(viewer) -> list:
    """Image layers that show a slide opened by this plugin (they carry its path and mpp)."""
    if viewer is None:
        return []
    return [
        layer for layer in viewer.layers
        if layer.__class__.__name__ == "Image"
        and (layer.metadata or {}).get(META_KIND) == "slide"
        and (layer.metadata or {}).get(META_SLIDE)
    ]


def layers_of_type(viewer, type_name: str) -> list:
    if viewer is None:
        return []
    return [layer for layer in viewer.layers if layer.__class__.__name__ == type_name]


def slide_mpp(layer) -> tuple[float, float] | None:
    mpp = (layer.metadata or {}).get(META_MPP)
    return None if mpp is None else (float(mpp[0]), float(mpp[1]))


def replace_layers(viewer, layer_data: list[tuple], run_key: str,
                   method: str | None = None) -> list:
    """Add result layers, first removing the layers an earlier run with ``run_key`` made.

    A new layer takes the place (index) of the old one of the same name, so a re-run keeps
    the user's layer order; the others go on top. The layers' kwargs come from
    :mod:`napari_glimpse.layers`, which also sets their units (micrometres when the slide
    has an mpp). With ``method``, that method's layers hook runs afterwards
    (:func:`run_layers_hook`).
    """
    old = [lyr for lyr in viewer.layers if (lyr.metadata or {}).get(META_RUN) == run_key]
    old_index = {lyr.name: viewer.layers.index(lyr) for lyr in old}
    for lyr in old:
        viewer.layers.remove(lyr)
    added = []
    for data, kwargs, layer_type in layer_data:
        kwargs = dict(kwargs)
        kwargs["metadata"] = {**kwargs.get("metadata", {}), META_RUN: run_key}
        layer = getattr(viewer, f"add_{layer_type}")(data, **kwargs)
        if layer.name in old_index:
            target = min(old_index[layer.name], len(viewer.layers) - 1)
            viewer.layers.move(viewer.layers.index(layer), target)
        added.append(layer)
    if method is not None:
        run_layers_hook(method, viewer)
    return added


def run_layers_hook(method: str, viewer) -> None:
    """Call the method's ``napari_hook`` with ``viewer`` once its layers are in (glimpse-tree:
    click a glimpse to select its subtree). Hooks must be safe to call more than once. A
    method not in the registry (a result saved by a plugin not installed) has none.
    """
    from ...methods.registry import get_method

    try:
        spec = get_method(method)
    except KeyError:
        return
    if spec.napari_hook is not None:
        spec.get("napari_hook")(viewer)


# ------------------------------------------------------------ recent checkpoints


def config_dir() -> Path:
    """``$NAPARI_GLIMPSE_CONFIG``, else ``$XDG_CONFIG_HOME/napari-glimpse`` (~/.config/...)."""
    root = os.environ.get("NAPARI_GLIMPSE_CONFIG")
    if not root:
        xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
        root = os.path.join(xdg, "napari-glimpse")
    return Path(root)


class RecentCheckpoints:
    """Checkpoints trained or opened recently, newest first, in a small JSON file.

    The file is the shared state: every widget (in any viewer or process) reads it when it
    refreshes its choices. Widgets of one process share one object per file
    (:meth:`for_file`), whose ``changed`` signal lets the inference widget show a checkpoint
    the moment training writes it.
    """

    changed = Signal()
    MAX = 20
    _open: dict[str, RecentCheckpoints] = {}

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def for_file(cls, path: str | os.PathLike | None = None) -> RecentCheckpoints:
        """The store for ``path`` (default ``config_dir()/recent_checkpoints.json``)."""
        p = Path(path) if path is not None else config_dir() / "recent_checkpoints.json"
        key = str(p.resolve())
        if key not in cls._open:
            cls._open[key] = cls(p)
        return cls._open[key]

    def entries(self, method: str | None = None) -> list[dict[str, Any]]:
        """``[{"path", "method", "added"}]`` newest first; missing files are left out."""
        try:
            data = json.loads(self.path.read_text())
            items = [e for e in data.get("checkpoints", []) if isinstance(e, dict) and "path" in e]
        except FileNotFoundError:
            return []
        except (OSError, ValueError):
            return []  # a damaged list is not worth an error: it is rebuilt on the next add
        return [
            e for e in items
            if os.path.isfile(e["path"]) and (method is None or e.get("method") in (None, method))
        ]

    def add(self, path: str | os.PathLike, method: str | None = None) -> None:
        """Put ``path`` first (once), trim to :attr:`MAX`, write atomically, emit ``changed``."""
        path = str(Path(path).resolve())
        items = [e for e in self.entries() if e["path"] != path]
        items.insert(0, {"path": path, "method": method, "added": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".recent-", suffix=".json", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"checkpoints": items[: self.MAX]}, f, indent=1)
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        self.changed.emit()
