"""CPU and memory of a group of processes (Restate's server + SDK process, or one streamapp worker).

Each figure is of the group as a whole, children included (none is expected:
the SDK runs in one process, and so does a worker): CPU is the user + system
time the group spent over a wall-clock window, as a percentage of one core;
RSS is the sum of the group's resident sets, sampled every 0.2 s, and its
peak is the peak of that sum.
"""

from __future__ import annotations

import contextlib
import threading
import time

import psutil


def _tree(pids: list[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            out.append(proc)
            out.extend(proc.children(recursive=True))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for proc in _tree(pids):
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


def rss_mb(pids: list[int]) -> float:
    total = 0
    for proc in _tree(pids):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total / 2**20


def cpu_percent(cpu_before: float, cpu_after: float, wall: float) -> float:
    """CPU time spent over a wall-clock window, in percent of one core."""
    if wall <= 0:
        raise ValueError("an empty window")
    return 100.0 * (cpu_after - cpu_before) / wall


def idle_cpu(pids: list[int], seconds: float) -> tuple[float, float]:
    """(CPU % of one core, RSS in MB at the end) of the group over ``seconds`` of wall time."""
    cpu0, t0 = cpu_seconds(pids), time.monotonic()
    time.sleep(seconds)
    cpu1, t1 = cpu_seconds(pids), time.monotonic()
    return cpu_percent(cpu0, cpu1, t1 - t0), rss_mb(pids)


class PeakRss:
    """The peak of the group's summed RSS, sampled in a thread while the ``with`` block runs."""

    def __init__(self, pids: list[int], interval: float = 0.2) -> None:
        self.pids = pids
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        self.peak = max(self.peak, rss_mb(self.pids))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakRss:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
