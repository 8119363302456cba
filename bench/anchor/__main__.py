"""``python -m bench.anchor [--smoke] [--only PART ...] [--keep] [--allow-dirty]``: streamapp beside Restate.

Installs Restate's server and CLI (npm) and its Python SDK (a venv of its
own) under ``data/anchor/`` once (``bench.anchor.install``), then runs each
part (throughput, latency, hol, idle) on streamapp and on Restate through the
same broker with the same sizes (``bench.anchor.scenarios``), prints one
table (streamapp | Restate | ratio | which way is better | who is ahead),
and writes ``bench/results/<date>-anchor.json`` (``bench/results/smoke/``
with ``--smoke``) with the provenance every bench result carries.

As with ``python -m bench``: a full-size run refuses a dirty tree (exit
status 2) unless ``--allow-dirty``; it exits 1 when a part could not
complete. Every process it starts runs under the bench temp dir and is
stopped by PID, its topics are deleted; the broker is never stopped.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import shlex
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from bench import provenance, report
from bench.anchor import install, scenarios, table
from bench.common import ROOT, BenchError, Result, Run
from tests import harness


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.anchor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (about 2 minutes; results not kept)")
    ap.add_argument("--only", nargs="+", choices=list(scenarios.PARTS), metavar="PART",
                    help=f"run only these ({', '.join(scenarios.PARTS)})")
    ap.add_argument("--results", type=Path, default=None,
                    help="where the JSON file goes (default bench/results, or bench/results/smoke with --smoke)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (Restate's data and logs, worker logs)")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="write full-size results from a tree with uncommitted changes (recorded as dirty: true)")
    return ap.parse_args(argv)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops every process


def merged(parts: list[Result]) -> Result:
    """The parts as one result (``<date>-anchor.json``): figures named ``<part>: <figure>``."""
    out = Result("anchor", seconds=sum(p.seconds for p in parts))
    for p in parts:
        out.parameters[p.scenario] = p.parameters
        out.figures.extend(type(f)(**{**vars(f), "name": f"{p.scenario}: {f.name}"}) for f in p.figures)
        out.notes.extend(p.notes)
        out.problems.extend(f"{p.scenario}: {x}" for x in p.problems)
    loads = [p.load for p in parts if p.load is not None]
    out.load = (loads[0][0], loads[-1][1]) if loads else None
    return out


def main(argv: list[str]) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    names = args.only or list(scenarios.PARTS)
    out_dir = args.results or (ROOT / "bench" / "results" / ("smoke" if args.smoke else ""))
    allow_dirty = args.allow_dirty or args.smoke
    start = provenance.code_state()
    refused = provenance.refusal(start, allow_dirty, "anchor results")
    if refused:
        print(refused, file=sys.stderr)
        return 2
    try:
        installed = install.ensure()
    except BenchError as exc:
        print(f"could not install Restate: {exc}", file=sys.stderr)
        return 1
    harness.ensure_broker()
    when = datetime.datetime.now()
    command = shlex.join(["python", "-m", "bench.anchor", *argv])
    prov = provenance.record(start, command, args.allow_dirty)
    prov["versions"].update(install.versions(installed))
    load = provenance.load_average()
    print(report.header(args.smoke, prov, load).replace("streamapp bench", "streamapp vs Restate (anchor)", 1)
          + f"\nRestate: {prov['versions']['restate-server']}, restate-sdk "
            f"{prov['versions'].get('restate-sdk (anchor venv)', '?')}", flush=True)
    parts: list[Result] = []
    stopped = ""
    run = Run(smoke=args.smoke, keep=args.keep)
    try:
        for name in names:
            part = Result(name)
            print(f"== {name} ...", flush=True)
            began = time.monotonic()
            before = provenance.load_average()
            try:
                scenarios.PARTS[name](run, installed, part)
            finally:
                part.seconds = time.monotonic() - began
                part.load = (before, provenance.load_average())
                run.stop_workers()
            parts.append(part)
            print(f"   {'ok' if part.ok else 'FAILED'} in {part.seconds:.0f} s", flush=True)
            changed = provenance.changed_during_run(start, provenance.code_state())
            if changed and not allow_dirty:
                stopped = changed
                print(f"   stopping: {changed}; nothing written", flush=True)
                break
            if changed:
                part.notes.append(changed)
    finally:
        run.keep = run.keep or any(not p.ok for p in parts)  # keep the logs of a failed part
        run.close()
    print()
    print(table.table(parts))
    print()
    print(report.notes(parts))
    if parts and not stopped:
        result = merged(parts)
        now = provenance.code_state()
        written = {**prov, "dirty": True, "changes": list(now.changes)} if now != start else prov
        written["parts"] = [{"part": p.scenario, "ok": p.ok, "seconds": round(p.seconds, 1),
                             "load_average": {"before": p.load[0], "after": p.load[1]} if p.load else None}
                            for p in parts]
        path = report.write(result, out_dir, when, args.smoke, written)
        print(f"\n-> {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in provenance.load_average())}")
    failed = [p.scenario for p in parts if not p.ok]
    if failed or stopped:
        print(f"\nFAILED: {', '.join(failed) or stopped}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
