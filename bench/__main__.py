"""``python -m bench [--smoke] [--only SCENARIO ...] [--allow-dirty]``: run the scenarios, print the table, write JSON.

Each JSON file records where its figures come from (``bench.provenance``):
the exact revision and whether the tree was dirty, the command line, the
machine, the versions, and the load average before and after the scenario.
A full-size run refuses to start from a dirty tree (exit status 2) unless
``--allow-dirty`` is given; ``--smoke`` runs (not kept) always may. When the tree
changes during a run, the scenario is not written and the run stops, unless allowed.

Exits non-zero otherwise only when a scenario could not complete or lost
invocations; timings are reported against the targets, never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import shlex
import signal
import sys
import time
import traceback
from pathlib import Path
from types import FrameType

from bench import provenance, report
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
    ap.add_argument("--profile", action="store_true",
                    help="py-spy the throughput worker and the restarted recovery worker; print where time goes")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (worker logs, ledgers)")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="write full-size results from a tree with uncommitted changes (recorded as dirty: true)")
    return ap.parse_args(argv)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops every process


def main(argv: list[str]) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    names = args.only or list(SCENARIOS)
    out_dir = args.results or (ROOT / "bench" / "results" / ("smoke" if args.smoke else ""))
    allow_dirty = args.allow_dirty or args.smoke  # smoke results are not kept
    start = provenance.code_state()
    refused = provenance.refusal(start, allow_dirty, "benchmark results")
    if refused:
        print(refused, file=sys.stderr)
        return 2
    harness.ensure_broker()
    when = datetime.datetime.now()
    prov = provenance.record(start, shlex.join(["python", "-m", "bench", *argv]), args.allow_dirty)
    print(report.header(args.smoke, prov, provenance.load_average()), flush=True)
    results: list[Result] = []
    run = Run(smoke=args.smoke, keep=args.keep, profile=args.profile)
    try:
        for name in names:
            result = Result(name)
            print(f"== {name} ...", flush=True)
            began = time.monotonic()
            load_before = provenance.load_average()
            try:
                SCENARIOS[name](run, result)
            except BenchError as exc:
                result.problems.append(str(exc))
            except Exception:  # a broken scenario must not stop the others (or leave processes)
                result.problems.append(traceback.format_exc())
            finally:
                result.seconds = time.monotonic() - began
                result.load = (load_before, provenance.load_average())
                run.stop_workers()
            results.append(result)
            # Workers start from the tree on disk: a commit or an edit made while the bench runs
            # changes what later scenarios measure.
            now = provenance.code_state()
            changed = provenance.changed_during_run(start, now)
            if changed and not allow_dirty:
                result.problems.append(f"{changed}; result not written, the remaining scenarios not run "
                                       "(--allow-dirty to keep such results as dirty)")
                print(f"   FAILED: {changed}; not written", flush=True)
                break
            if changed:
                result.notes.append(changed)
            written = {**prov, "dirty": True, "changes": [*now.changes, changed]} if changed else prov
            path = report.write(result, out_dir, when, args.smoke, written)
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
