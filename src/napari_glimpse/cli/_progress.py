"""Progress of a CLI command: a tqdm bar on a terminal, sparse plain lines in a log.

Every long-running core function is a generator of
:class:`~napari_glimpse.runtime.events.Progress`; :func:`drive` runs one to its return value
and shows its progress in the way that suits where stderr goes. On a terminal that is a tqdm
bar redrawn in place; in a file or a pipe (a batch job's log) a redrawn bar is a stream of
``\\r`` fragments, so there it writes one plain line at most every ``interval`` seconds.
"""

from __future__ import annotations

import sys
import time
from typing import IO

__all__ = ["drive"]

_EPOCH_STAGES = ("epoch", "resume")


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def drive(gen, *, desc: str = "", quiet: bool = False, epoch_lines: bool = False,
          file: IO[str] | None = None, out: IO[str] | None = None, interval: float = 5.0):
    """Run a Progress generator to its end and return its ``return`` value.

    Parameters
    ----------
    gen
        Generator yielding :class:`~napari_glimpse.runtime.events.Progress`.
    desc
        Prefix of the bar / lines (e.g. the slide's name).
    quiet
        Show nothing (epoch lines included); the generator still runs to its end.
    epoch_lines
        Print every ``"epoch"`` / ``"resume"`` report as one line on ``out``, whatever the
        terminal: the training log a user keeps. They are not drawn in the bar.
    file, out
        Where progress and epoch lines go (default: ``sys.stderr`` and ``sys.stdout``).
    interval
        Without a terminal, the least number of seconds between two progress lines.

    Returns
    -------
    object
        What the generator returned.
    """
    file = sys.stderr if file is None else file
    out = sys.stdout if out is None else out
    show = _Bar(file, desc) if _isatty(file) else _Lines(file, desc, interval)
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                if not quiet:
                    show.finish()
                return stop.value
            if quiet:
                continue
            if epoch_lines and ev.stage in _EPOCH_STAGES:
                show.pause()
                print(str(ev), file=out, flush=True)
            else:
                show.update(ev)
    finally:
        show.close()
        gen.close()  # interrupted (Ctrl-C): the generator's own clean-up runs now


def _label(desc: str, ev) -> str:
    return f"{desc} {ev.stage}".strip()


class _Bar:
    """One tqdm bar, reset when the stage or its total changes."""

    def __init__(self, file, desc: str):
        self.file, self.desc = file, desc
        self.bar = None
        self.key = None

    def update(self, ev) -> None:
        from tqdm import tqdm

        key = (ev.stage, ev.total)
        if self.bar is None:
            self.bar = tqdm(total=ev.total or None, desc=_label(self.desc, ev), file=self.file,
                            dynamic_ncols=True, leave=False, mininterval=0.2)
        elif key != self.key:
            self.bar.reset(total=ev.total or None)
            self.bar.set_description(_label(self.desc, ev), refresh=False)
        self.key = key
        if ev.message:
            self.bar.set_postfix_str(ev.message, refresh=False)
        self.bar.update(ev.done - self.bar.n)  # tqdm redraws at most every mininterval

    def pause(self) -> None:
        """Let a line be printed: clear the bar (it redraws at the next update)."""
        if self.bar is not None:
            self.bar.clear()

    def finish(self) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _Lines:
    """Plain lines: the first report, then at most one per ``interval``, and the last one."""

    def __init__(self, file, desc: str, interval: float):
        self.file, self.desc, self.interval = file, desc, interval
        self.last_t = None
        self.pending = None

    def update(self, ev) -> None:
        now = time.monotonic()
        if self.last_t is None or now - self.last_t >= self.interval:
            self._write(ev)
            self.last_t = now
        else:
            self.pending = ev

    def _write(self, ev) -> None:
        self.pending = None
        print(f"{self.desc} {ev}".strip(), file=self.file, flush=True)

    def pause(self) -> None:
        pass

    def finish(self) -> None:
        if self.pending is not None:  # where it ended, even if the interval has not passed
            self._write(self.pending)

    def close(self) -> None:
        pass
