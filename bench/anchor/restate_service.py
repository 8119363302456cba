"""The Restate side of the anchor: the same handlers as ``bench/services.py``, written with Restate's Python SDK.

Served by hypercorn from the anchor's own venv (``data/anchor/venv``: restate-sdk
and hypercorn, nothing of streamapp's), so this module imports only the SDK,
hypercorn and the standard library. One process (hypercorn's CLI would add a
parent and a resource tracker beside its worker process):

    data/anchor/venv/bin/python -m bench.anchor.restate_service --port PORT

    Bench/Step   one ``ctx.run`` + one state write   (throughput, latency; streamapp's Bench/Step)
    Bench/Nap    one durable sleep of ``s`` seconds   (head-of-line; streamapp's Bench/Nap)

A Kafka subscription invokes them with the record's value as the input and the
record's key as the object key. Each handler appends one line to the ledger
named by ``BENCH_LEDGER`` as its last act (``i`` from the input, the invocation
id, the wall time): the bench maps ``i`` to the invocation id, and reads the
durable completion time from Restate's own ``sys_invocation`` table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from datetime import timedelta
from typing import IO, Any

import restate

bench = restate.VirtualObject("Bench")

_ledger: IO[str] | None = None


def note(**fields: object) -> None:
    """Append one line to the ledger (one write call, so lines from concurrent tasks never mix)."""
    global _ledger
    if _ledger is None:
        _ledger = open(os.environ["BENCH_LEDGER"], "a", encoding="utf-8", buffering=1)
    _ledger.write(json.dumps(fields) + "\n")


@bench.handler()
async def Step(ctx: restate.ObjectContext, req: dict[str, Any]) -> int:
    i = int(req.get("i", 0))
    value: int = await ctx.run_typed("step", lambda: i)
    ctx.set("last", value)
    note(i=i, id=ctx.request().id, t=time.time())
    return value


@bench.handler()
async def Nap(ctx: restate.ObjectContext, req: dict[str, Any]) -> None:
    await ctx.sleep(timedelta(seconds=float(req.get("s", 1.0))))
    note(i=req.get("i"), id=ctx.request().id, t=time.time())


app = restate.app(services=[bench])


def main() -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    ap = argparse.ArgumentParser(prog="python -m bench.anchor.restate_service")
    ap.add_argument("--port", type=int, required=True)
    config = Config()
    config.bind = [f"127.0.0.1:{ap.parse_args().port}"]  # HTTP/2 cleartext (prior knowledge), as Restate speaks it
    config.accesslog = None
    config.graceful_timeout = 2.0
    asyncio.run(serve(app, config, shutdown_trigger=_sigterm))


async def _sigterm() -> None:
    """Return at SIGTERM (or SIGINT): hypercorn then shuts down.

    Installed once serving has started: set before, the handler was replaced (the process, serving this
    app, did not answer SIGTERM, and the bench had to kill it 20 s later).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


if __name__ == "__main__":
    main()
