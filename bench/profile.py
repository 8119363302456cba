"""Where a worker's time goes: py-spy raw samples folded into a few cost buckets.

``python -m bench --profile`` records the throughput worker with
``py-spy record -f raw`` and prints the buckets here; ``python -m
bench.profile FILE [INVOCATIONS_PER_S]`` summarises any raw file. Each sample
is charged to the innermost frame that matches a rule below (so JSON done
for the changelog counts as JSON, a socket write under aiokafka as Kafka
client I/O). Samples waiting in epoll are idle and left out of the shares.
"""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

SAMPLE_RATE = 250  # Hz, as recorded by the throughput scenario
DURATION = 15.0  # s

# (bucket, substrings of a frame's "function (file:line)"), tried innermost frame first.
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("idle (epoll wait)", ("EpollSelector.select",)),
    # Reached only when every inner frame was asyncio's own: the loop's scheduling and callbacks.
    ("asyncio event loop", ("mode/worker.py", "mode/threads.py", "(threading.py")),
    ("logging", ("logging/", "colorlog/")),
    ("JSON encode/decode", ("json/", "faust/serializers/", "faust/utils/json")),
    ("RocksDB store (faust/stores, rocksdict)", ("faust/stores/", "rocksdict")),
    ("Kafka produce path (aiokafka producer, sockets)", ("aiokafka/producer/", "aiokafka/conn", "aiokafka/client",
                                                          "aiokafka/protocol", "aiokafka/record",
                                                          "faust/transport/producer")),
    ("Kafka consume path (fetcher, conductor, stream)", ("aiokafka/consumer/", "faust/transport/consumer",
                                                         "faust/transport/conductor", "faust/streams",
                                                         "faust/transport/drivers/",
                                                         "mode/services.py", "mode/utils/queues")),
    ("Faust tables (changelog bookkeeping)", ("faust/tables/",)),
    ("Faust/mode other", ("faust/", "mode/")),
    ("streamapp engine + actors", ("streamapp/runtime/",)),
    ("handler + executor + context", ("streamapp/durable/", "bench/services")),
]


def record(pid: int, to: Path, seconds: float = DURATION) -> subprocess.Popen[bytes]:
    """py-spy the process ``pid`` for ``seconds`` into ``to`` (raw format); the caller waits for it."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-d", f"{seconds:g}",
         "-r", str(SAMPLE_RATE), "-f", "raw", "-o", str(to)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def bucket(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, needles in RULES:
            if any(n in frame for n in needles):
                return name
    return "asyncio event loop"


def fold(path: Path) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[bucket(stack.split(";"))] += int(n)
    return counts


def summary(path: Path, per_second: float | None = None, top: int = 6) -> list[str]:
    """Lines naming the top buckets with their share of busy samples (and µs per invocation)."""
    counts = fold(path)
    idle = counts.pop("idle (epoll wait)", 0)
    busy = sum(counts.values())
    if not busy:
        return ["profile: no samples"]
    lines = [f"profile (py-spy, {busy + idle} samples, {100 * busy / max(busy + idle, 1):.0f}% busy): "
             "share of busy time per bucket" + (", CPU µs per invocation" if per_second else "")]
    for name, n in counts.most_common(top):
        cost = ""
        if per_second:
            cost = f", ~{n / SAMPLE_RATE / (per_second * DURATION) * 1e6:.0f} µs/inv"
        lines.append(f"  {100 * n / busy:4.1f}% {name}{cost}")
    return lines


if __name__ == "__main__":
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else None
    print("\n".join(summary(Path(sys.argv[1]), rate, top=20)))
