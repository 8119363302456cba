"""``python -m bench [--smoke] [--only SCENARIO ...]``: run the scenarios, print the table, write JSON.

Exits non-zero only when a scenario could not complete or lost invocations;
timings are reported against the targets, never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from types import FrameType

from bench import report
from bench.common import ROOT, BenchError, Result, Run
from bench.scenarios import SCENARIOS
from tests import harness


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: every scenario in a minute or two")
    ap.add_argument("--only", nargs="+", choices=list(SCENARIOS), metavar="SCENARIO",
                    help=f"run only these ({', '.join(SCENARIOS)})")
    ap.add_argument("--results", type=Path, default=None,
                    help="where the JSON files go (default bench/results, or bench/results/smoke with --smoke)")
    ap.add_argument("--profile", action="store_true", help="py-spy the throughput worker; print where time goes")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (worker logs, ledgers)")
    return ap.parse_args(argv)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops every process


def main(argv: list[str]) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    names = args.only or list(SCENARIOS)
    out_dir = args.results or (ROOT / "bench" / "results" / ("smoke" if args.smoke else ""))
    harness.ensure_broker()
    when = datetime.datetime.now()
    command = " ".join(["python", "-m", "bench", *argv])
    env = report.environment()
    print(report.header(args.smoke, env), flush=True)
    results: list[Result] = []
    run = Run(smoke=args.smoke, keep=args.keep, profile=args.profile)
    try:
        for name in names:
            result = Result(name)
            print(f"== {name} ...", flush=True)
            began = time.monotonic()
            load_before = os.getloadavg()[0]
            try:
                SCENARIOS[name](run, result)
            except BenchError as exc:
                result.problems.append(str(exc))
            except Exception:  # a broken scenario must not stop the others (or leave processes)
                result.problems.append(traceback.format_exc())
            finally:
                result.seconds = time.monotonic() - began
                result.load = (load_before, os.getloadavg()[0])
                run.stop_workers()
            results.append(result)
            path = report.write(result, out_dir, command, args.smoke, when, env)
            shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            print(f"   {'ok' if result.ok else 'FAILED'} in {result.seconds:.0f} s -> {shown}", flush=True)
    finally:
        run.keep = run.keep or any(not r.ok for r in results)  # keep the logs of a failed scenario
        run.close()
    print()
    print(report.table(results))
    print()
    print(report.notes(results))
    failed = [r.scenario for r in results if not r.ok]
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
