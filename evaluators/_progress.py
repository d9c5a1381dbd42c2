"""Progress lines for long work: elapsed time and an ETA from the rate so far."""

from __future__ import annotations

import time


def hms(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour."""
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Eta:
    """Elapsed time and the time left for ``total`` units of work (trials, epochs, steps).

    Work taken from an earlier run (:meth:`skip`) counts as done but not into the rate.
    """

    def __init__(self, total: float, done: float = 0.0) -> None:
        self.total, self.done, self.timed = total, done, 0.0
        self.start = time.perf_counter()

    def skip(self, units: float) -> None:
        self.done += units

    def step(self, units: float = 1.0) -> str:
        """Count ``units`` as done now; ``"elapsed m:ss  ETA m:ss"``."""
        self.done += units
        self.timed += units
        el = time.perf_counter() - self.start
        eta = el / self.timed * max(0.0, self.total - self.done) if self.timed else 0.0
        return f"elapsed {hms(el)}  ETA {hms(eta)}"
