"""The ``python -m chaos`` command line: options, the run, the report, ``--recheck``.

    python -m chaos --duration 300 --seed 7 [--events 2000 --users 50 ...]
    python -m chaos --plan-only --seed 7 --duration 300     the fault plan, nothing started
    python -m chaos --recheck WORKDIR                       the checks again, on a kept run's evidence
    python -m chaos --duration 600 --seed 42 --save         + the report, with its provenance, kept in
                                                              chaos/results/<date>-seed42.json

A saved report is one to quote: ``--save`` refuses to start from a dirty tree
(``bench.provenance`` says which files count) unless ``--allow-dirty`` is given,
which the file records.

Exit status: 0 every invariant held, 1 a violation (the seed and the command to
reproduce it are printed), 2 the run itself failed (set-up, broker) or was refused,
130 interrupted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import shlex
import shutil
import signal
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

from bench import provenance
from chaos import checks, faults, logs
from chaos.driver import ChaosRun, StopRequestedError, engine_functions, say
from chaos.workload import events

RESULTS = provenance.ROOT / "chaos" / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--duration", type=float, default=300.0, help="seconds of faults")
    p.add_argument("--seed", type=int, default=None, help="fault plan and workload seed (default: random)")
    p.add_argument("--events", type=int, default=2000, help="M events")
    p.add_argument("--users", type=int, default=50, help="K users (keys)")
    p.add_argument("--bad-records", type=int, default=0,
                   help="malformed records (bad JSON, no key, wrong type, invalid UTF-8, empty) interleaved with "
                        "the events; each must be dead-lettered once with its reason")
    p.add_argument("--brokers", type=int, default=1, choices=range(1, 10), metavar="N",
                   help="brokers: 1, or a KRaft cluster of N (3: RF 3, a broker fault kills one node)")
    p.add_argument("--workers", type=int, default=2, help="workers at the start")
    p.add_argument("--max-workers", type=int, default=3, help="worker slots (add_worker fills them)")
    p.add_argument("--partitions", type=int, default=8, help="STREAMAPP_PARTITIONS")
    p.add_argument("--session-timeout", type=float, default=10.0, help="STREAMAPP_SESSION_TIMEOUT")
    p.add_argument("--poll-interval", type=float, default=0.2, help="STREAMAPP_MODERATION_POLL_INTERVAL")
    p.add_argument("--pending-polls", type=int, default=1, help="backend answers PENDING this many polls per post")
    p.add_argument("--gap", default="3,12", help="min,max seconds between faults")
    p.add_argument("--faults", default=",".join(faults.FAULTS), help="fault kinds to draw from")
    p.add_argument("--produce-fraction", type=float, default=0.8, help="produce over this part of --duration")
    p.add_argument("--settle", type=float, default=180.0, help="seconds to wait for quiescence after the faults")
    p.add_argument("--workdir", default=None, help="keep logs and data here (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work dir after a clean run")
    p.add_argument("--plan-only", action="store_true", help="print the fault plan and exit")
    p.add_argument("--recheck", metavar="WORKDIR", help="run the checks again on a kept work dir and exit")
    p.add_argument("--save", nargs="?", const=str(RESULTS), default=None, metavar="DIR",
                   help=f"keep the report with its provenance in DIR/<date>-seed<N>.json (DIR: {RESULTS})")
    p.add_argument("--allow-dirty", action="store_true",
                   help="--save from a tree with uncommitted changes (recorded as dirty: true)")
    args = p.parse_args(argv if argv is not None else sys.argv[1:])
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 1_000_000)
    lo, _, hi = args.gap.partition(",")
    args.gap_range = (float(lo), float(hi or lo))
    args.fault_kinds = tuple(k.strip() for k in args.faults.split(",") if k.strip())
    unknown = set(args.fault_kinds) - set(faults.FAULTS)
    if unknown:
        p.error(f"unknown fault kinds {sorted(unknown)}; choose from {', '.join(faults.FAULTS)}")
    if not 1 <= args.workers <= args.max_workers:
        p.error("need 1 <= --workers <= --max-workers")
    if args.save and (args.plan_only or args.recheck):
        p.error("--save keeps the report of a run; --plan-only and --recheck make none")
    return args


def reproduce(args: argparse.Namespace) -> str:
    extra = []
    for name, default in (("events", 2000), ("users", 50), ("bad_records", 0), ("workers", 2), ("max_workers", 3),
                          ("partitions", 8),
                          ("session_timeout", 10.0), ("poll_interval", 0.2), ("pending_polls", 1), ("gap", "3,12"),
                          ("faults", ",".join(faults.FAULTS)), ("produce_fraction", 0.8), ("settle", 180.0)):
        value = getattr(args, name)
        if value != default:
            extra.append(f"--{name.replace('_', '-')} {value:g}" if isinstance(value, float)
                         else f"--{name.replace('_', '-')} {value}")
    return f"python -m chaos --duration {args.duration:g} --seed {args.seed}" + "".join(f" {e}" for e in extra)


def recheck(workdir: Path) -> int:
    """Run the checks again on a kept work dir's ``evidence.json`` (no broker needed).

    Activations are read again from the worker logs when they are there (the
    attribution to incarnations is the current one); faults, crashes and
    journal entries of work dirs from older drivers come from report.txt and
    evidence.jsonl. Without the run's code snapshot (``code/``), the engine's
    partitioning comes from the code this command runs.
    """
    data = json.loads((workdir / "evidence.json").read_text())
    if not (workdir / "code").is_dir():
        say(f"chaos: no code snapshot in {workdir}; partitioning by the current tree's streamapp")
    _, partition_for, _ = engine_functions(workdir / "code")
    partitions = data.pop("partitions")
    evidence = checks.Evidence.from_json(data, lambda user: partition_for(f"UserFeed/{user}", partitions))
    worker_logs = sorted(workdir.glob("w*.log"))
    if worker_logs:
        evidence.activations = [a for log in worker_logs
                                for a in logs.activations_from_log(log.read_text(errors="replace"), log.stem)]
    if "events" not in data:
        evidence.events = logs.legacy_events(workdir)
    if "entries" not in data:
        evidence.entries, evidence.epochs = logs.legacy_internal_commands(workdir)
    faults_done = sum(1 for line in (workdir / "report.txt").read_text().splitlines() if "] fault #" in line
                      and "was not running" not in line)
    report = checks.check(evidence, faults_done)
    for v in report.violations:
        say(f"chaos: VIOLATION {v}")
    say(report.summary())
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.recheck:
        return recheck(Path(args.recheck))
    saving: Saving | None = None
    if args.save:
        code = provenance.code_state()  # the workers run a copy of streamapp/ taken at set-up
        refused = provenance.refusal(code, args.allow_dirty, "a chaos report")
        if refused:
            say(f"chaos: {refused}")
            return 2
        saving = Saving(args, code)
    plan = faults.plan(args.seed, args.duration, slots=tuple(f"w{i}" for i in range(args.max_workers)),
                       initial=args.workers, gap=args.gap_range, session_timeout=args.session_timeout,
                       kinds=args.fault_kinds)
    counts = Counter(a.kind for a in plan if a.is_fault)
    say(f"chaos: plan for seed {args.seed}: {sum(counts.values())} faults "
        f"({', '.join(f'{k}={counts[k]}' for k in faults.FAULTS if counts[k])}) in {args.duration:g}s")
    if args.plan_only:
        for action in plan:
            say(f"  +{action.at:7.1f}s {action}")
        return 0
    workload = events(args.seed, args.events, args.users)
    run = ChaosRun(args)

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise StopRequestedError(signal.Signals(signum).name)

    previous = {s: signal.signal(s, interrupted) for s in (signal.SIGTERM, signal.SIGINT)}
    failed = True
    try:
        run.setup()
        run.run_faults(plan, workload)
        run.settle()
        evidence = run.collect()
        report = checks.check(evidence, run.faults_done)
        report.notes += [f"diagnosis: {d}" for d in run.admissions()]
        failed = not report.ok
        lines = write_report(run, report, evidence)
        if saving:
            path = saving.save(run, report, lines, 0 if report.ok else 1)
            say(f"chaos: report saved in {path}")
        return 0 if report.ok else 1
    except StopRequestedError as exc:
        say(f"chaos: interrupted ({exc}); seed {args.seed}; work dir {run.workdir}")
        return 130
    except Exception as exc:
        say(f"chaos: ERROR {exc!r} (seed {args.seed}, work dir {run.workdir})")
        say(f"chaos: reproduce with: {reproduce(args)}")
        traceback.print_exc()
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        run.cleanup()
        if not failed and not args.keep and not args.workdir:
            shutil.rmtree(run.workdir, ignore_errors=True)


def write_report(run: ChaosRun, report: checks.Report, evidence: checks.Evidence) -> list[str]:
    """Write ``report.txt`` in the work dir, print the summary; returns the report's lines."""
    args = run.args
    lines = [f"chaos run: seed={args.seed} duration={args.duration:g}s events={args.events} users={args.users} "
             f"bad_records={args.bad_records} "
             f"workers={args.workers}..{args.max_workers} partitions={args.partitions} "
             f"session_timeout={args.session_timeout:g}s code={run.code_version}"]
    lines += run.fault_log
    if run.crashes:
        lines.append(f"worker crashes (exits the driver did not cause): {len(run.crashes)}")
        lines += [f"  {c}" for c in run.crashes]
    calls = Counter(c.kind for c in evidence.calls)
    lines.append(f"backend calls: {dict(calls)}; proxy-seen repeated keys: {_repeats(evidence)}")
    lines += [f"note: {n}" for n in report.notes]
    for note in report.notes:
        say(f"chaos: {note}")
    if report.violations:
        lines.append(f"VIOLATIONS ({len(report.violations)}):")
        lines += [f"  {v}" for v in report.violations]
    (run.workdir / "report.txt").write_text("\n".join(lines) + "\n")
    for v in report.violations[:50]:
        say(f"chaos: VIOLATION {v}")
    if len(report.violations) > 50:
        say(f"chaos: ... {len(report.violations) - 50} more in {run.workdir / 'report.txt'}")
    say(f"chaos: worker crashes={len(run.crashes)}" + "".join(f"; {c}" for c in run.crashes))
    say(f"chaos: duplicate attempts seen by the proxy: {_repeats(evidence)}")
    if not report.ok:
        path = run.evidence_dump(report)
        say(f"chaos: evidence (internal topic, changelogs) in {path}; logs in {run.workdir}")
        say(f"chaos: FAILED seed={args.seed}; reproduce with: {reproduce(args)}")
    say(report.summary())
    return lines


def _repeats(evidence: checks.Evidence) -> str:
    """Repeated create-post/update-feed keys the proxy saw, by who repeated them."""
    by_key: dict[str, list[str]] = {}
    for call in evidence.calls:
        if call.key and call.status == 200:
            by_key.setdefault(call.key, []).append(call.incarnation)
    same = sum(len(incs) - len(set(incs)) for incs in by_key.values())
    other = sum(len(set(incs)) - 1 for incs in by_key.values())
    return f"repeats_same_worker={same} repeats_other_worker={other}"


class Saving:
    """A run whose report is kept (``--save``): what it ran on, taken before it starts."""

    def __init__(self, args: argparse.Namespace, code: provenance.Code) -> None:
        self.args = args
        self.started = datetime.datetime.now()
        self.began = time.monotonic()
        self.prov = provenance.record(code, shlex.join(["python", "-m", "chaos", *args.argv]), args.allow_dirty)
        self.load_before = provenance.load_average()

    def save(self, run: ChaosRun, report: checks.Report, lines: list[str], status: int) -> Path:
        args = self.args
        out_dir = Path(args.save)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{self.started:%Y-%m-%d}-seed{args.seed}.json"
        if path.exists():  # the same seed again that day: keep both
            path = path.with_name(f"{self.started:%Y-%m-%d-%H%M%S}-seed{args.seed}.json")
        doc: dict[str, Any] = {
            "seed": args.seed,
            "duration": args.duration,
            "date": self.started.isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - self.began, 1),
            "ok": report.ok,
            "exit_status": status,
            "summary": report.summary(),
            "violations": len(report.violations),
            "reproduce": reproduce(args),
            "parameters": {k: getattr(args, k) for k in (
                "duration", "seed", "events", "users", "workers", "max_workers", "partitions", "session_timeout",
                "poll_interval", "pending_polls", "gap", "faults", "produce_fraction", "settle")},
            "load_average": {"before": self.load_before, "after": provenance.load_average()},  # 1, 5, 15 min
            "code_copied": run.code_version,
            **self.prov,
            "report": lines,
        }
        path.write_text(json.dumps(doc, indent=2) + "\n")
        return path
