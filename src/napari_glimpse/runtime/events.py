"""What every long-running generator (training, inference, evaluation) yields."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Progress:
    """One progress report.

    Parameters
    ----------
    stage : str
        What is running: ``"load"``, ``"train"``, ``"validate"``, ``"epoch"``, ``"tile"``, ...
    done, total : int
        Units finished and units in this stage (batches, tiles, epochs).
    message : str
        One human line, e.g. ``"epoch 3/10"``.
    metrics : dict
        Numbers worth showing or logging (loss, accuracy, AUC, learning rate, ...).
    """

    stage: str
    done: int
    total: int
    message: str = ""
    metrics: dict = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """``done / total`` in [0, 1] (0 when the total is unknown)."""
        return min(max(self.done / self.total, 0.0), 1.0) if self.total > 0 else 0.0

    def __str__(self) -> str:
        nums = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.metrics.items())
        return f"[{self.stage} {self.done}/{self.total}] {self.message} {nums}".rstrip()


def run_to_end(gen, on_progress=None):
    """Drive a progress generator to its end and return its result (its ``return`` value).

    For scripts, tests and the CLI; GUIs wrap the generator in a thread worker instead.
    ``on_progress(progress)`` is called with every item the generator yields.
    """
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(item)
