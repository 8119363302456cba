"""Restate's server, CLI and Python SDK for the anchor, installed once under ``data/anchor/`` (gitignored).

    data/anchor/npm/    npm install @restatedev/restate-server@1.7.12 @restatedev/restate@1.7.12
                        (the linux-x64 binaries come as the optional dependencies
                        @restatedev/restate-server-linux-x64 and @restatedev/restate-linux-x64)
    data/anchor/venv/   restate-sdk 1.2.0 + hypercorn 0.18.0, nothing of streamapp's

Each step is skipped when what it makes is already there at the pinned
version, so a second run installs nothing.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
from pathlib import Path

from bench.common import ROOT, BenchError

RESTATE_VERSION = "1.7.12"
SDK_VERSION = "1.2.0"
HYPERCORN_VERSION = "0.18.0"
NPM_PACKAGES = (f"@restatedev/restate-server@{RESTATE_VERSION}", f"@restatedev/restate@{RESTATE_VERSION}")
PIP_PACKAGES = (f"restate-sdk=={SDK_VERSION}", f"hypercorn=={HYPERCORN_VERSION}")


def data_dir() -> Path:
    """The project's data dir (``STREAMAPP_DATA_DIR``, as ``make`` sets it, else ``data/``), ``anchor/`` under it."""
    return Path(os.environ.get("STREAMAPP_DATA_DIR") or ROOT / "data") / "anchor"


@dataclasses.dataclass(frozen=True)
class Installed:
    server: Path  # the restate-server binary
    cli: Path  # the restate CLI binary
    python: Path  # the anchor venv's interpreter (restate-sdk, hypercorn)


def _find(npm_dir: Path, name: str) -> Path | None:
    for path in sorted((npm_dir / "node_modules" / "@restatedev").glob(f"*/bin/{name}")):
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def _version(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _run(args: list[str], what: str) -> None:
    print(f"   anchor: {what} ...", flush=True)
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise BenchError(f"{what} failed (exit {proc.returncode}): {shlex.join(args)}\n{proc.stdout}\n{proc.stderr}")


def ensure(base: Path | None = None) -> Installed:
    """Install what is missing; return where the binaries are. Raises ``BenchError`` with npm's or pip's output."""
    base = base or data_dir()
    npm_dir = base / "npm"
    server, cli = _find(npm_dir, "restate-server"), _find(npm_dir, "restate")
    if server is None or cli is None or RESTATE_VERSION not in _version([str(server), "--version"]):
        npm_dir.mkdir(parents=True, exist_ok=True)
        # --ignore-scripts: the packages need no install script (the binary is in the tarball); one of their
        # dependencies has a telemetry postinstall.
        _run(["npm", "install", "--prefix", str(npm_dir), "--no-audit", "--no-fund", "--ignore-scripts",
              *NPM_PACKAGES], f"npm install {' '.join(NPM_PACKAGES)}")
        server, cli = _find(npm_dir, "restate-server"), _find(npm_dir, "restate")
        if server is None or cli is None:
            raise BenchError(f"npm installed {' '.join(NPM_PACKAGES)} but no restate-server/restate binary is under "
                             f"{npm_dir}/node_modules/@restatedev/*/bin (no build for this platform?)")
    venv = base / "venv"
    python = venv / "bin" / "python"
    wanted = {p.split("==")[0]: p.split("==")[1] for p in PIP_PACKAGES}
    if not python.exists() or _pip_versions(python, list(wanted)) != wanted:
        if not python.exists():
            _run([sys.executable, "-m", "venv", str(venv)], f"python -m venv {venv}")
        _run([str(python), "-m", "pip", "install", "-q", *PIP_PACKAGES], f"pip install {' '.join(PIP_PACKAGES)}")
    return Installed(server, cli, python)


def _pip_versions(python: Path, dists: list[str]) -> dict[str, str]:
    code = ("import sys, importlib.metadata as m\n"
            "for d in sys.argv[1:]:\n"
            "    try: print(d, m.version(d))\n"
            "    except m.PackageNotFoundError: pass\n")
    out = _version([str(python), "-c", code, *dists])
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def versions(installed: Installed) -> dict[str, str]:
    """What the anchor ran, for the result file."""
    return {
        "restate-server": _version([str(installed.server), "--version"]) or "unknown",
        "restate-cli": _version([str(installed.cli), "--version"]) or "unknown",
        **{f"{k} (anchor venv)": v for k, v in _pip_versions(installed.python, ["restate-sdk", "hypercorn"]).items()},
        "anchor venv python": _version([str(installed.python), "-c",
                                        "import platform; print(platform.python_version())"]) or "unknown",
    }
