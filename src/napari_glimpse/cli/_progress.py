"""Progress of a long generator on the command line."""

from __future__ import annotations

import sys


def drive(gen, *, desc: str = "", quiet: bool = False, epoch_lines: bool = False):
    """Run a Progress generator to its result; ``epoch_lines`` prints epoch / resume events on stdout."""
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        if quiet:
            continue
        if epoch_lines and ev.stage in ("epoch", "resume"):
            print(str(ev), flush=True)
        elif ev.done == ev.total:
            print(f"{desc} {ev}".strip(), file=sys.stderr, flush=True)
