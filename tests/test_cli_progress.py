"""cli._progress.drive: a bar on a terminal, sparse plain lines in a log, epochs on stdout."""

from __future__ import annotations

import io

import pytest

from napari_glimpse.cli import _progress
from napari_glimpse.cli._progress import drive
from napari_glimpse.runtime.events import Progress


def _job(n=1000, epochs=0):
    for e in range(epochs):
        yield Progress("epoch", e + 1, epochs, f"epoch {e + 1}/{epochs}", {"auc": 0.5 + e / 10})
    for i in range(n):
        yield Progress("tile", i + 1, n, f"tile {i + 1}/{n}")
    return "result"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def clock(monkeypatch):
    """time.monotonic of _progress advancing 10 ms per call: 1000 events span 10 s."""
    t = [0.0]

    def monotonic():
        t[0] += 0.01
        return t[0]

    monkeypatch.setattr(_progress.time, "monotonic", monotonic)


def test_a_log_gets_a_few_plain_lines_not_a_redrawn_bar(clock):
    log = io.StringIO()
    assert drive(_job(1000), desc="slide.svs", file=log) == "result"
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    assert 2 <= len(lines) < 20  # 10 s of work at one line per 5 s, plus the first and the last
    assert lines[0].startswith("slide.svs [tile 1/1000]")
    assert lines[-1].startswith("slide.svs [tile 1000/1000]")  # where it ended


def test_epoch_lines_go_to_stdout_every_one(clock):
    log, out = io.StringIO(), io.StringIO()
    drive(_job(50, epochs=3), file=log, out=out, epoch_lines=True)
    assert out.getvalue().splitlines() == [
        "[epoch 1/3] epoch 1/3 auc=0.5", "[epoch 2/3] epoch 2/3 auc=0.6", "[epoch 3/3] epoch 3/3 auc=0.7"]
    assert "[epoch" not in log.getvalue()
    log2, out2 = io.StringIO(), io.StringIO()
    drive(_job(50, epochs=3), file=log2, out=out2)  # without epoch_lines: just progress
    assert out2.getvalue() == ""


def test_quiet_prints_nothing_and_still_returns():
    log, out = io.StringIO(), io.StringIO()
    assert drive(_job(20, epochs=2), quiet=True, epoch_lines=True, file=log, out=out) == "result"
    assert log.getvalue() == out.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar():
    term = _Terminal()
    assert drive(_job(200), desc="mosaic", file=term) == "result"
    text = term.getvalue()
    assert "\r" in text and "mosaic tile" in text and "/200" in text


def test_an_interrupted_drive_closes_the_generator():
    closed = []

    def job():
        try:
            for i in range(10):
                yield Progress("tile", i, 10)
        finally:
            closed.append(True)

    class Breaks(io.StringIO):
        def write(self, s):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        drive(job(), file=Breaks())
    assert closed == [True]
