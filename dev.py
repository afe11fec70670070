#!/usr/bin/env python3
"""Set up the project and run its main jobs, on a fresh machine with only Python 3.11.

    python3 dev.py demo     # create .venv, install Vigie, run `vigie demo`
    python3 dev.py test     # create .venv, install Vigie and test tools, run the whole suite

The virtual environment is reused while pyproject.toml is unchanged. ``test`` starts the local
PostgreSQL server when it is not running (the suite runs against SQLite and PostgreSQL) and
installs Debian's Chromium for the web page's browser test when it is missing.
Extra arguments after the command go to ``vigie demo`` or to pytest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".vigie-installed"
# Test workers at most: every one opens PostgreSQL connections, and some tests start processes
# of their own (two ingests at once, Spark, a browser).
MAX_WORKERS = 4


def _run(*command: str | Path, **kwargs: object) -> int:
    return subprocess.call([str(c) for c in command], cwd=ROOT, **kwargs)  # type: ignore[call-overload]


def setup() -> None:
    """Create .venv and install the project with its dev extra (test and lint tools) and its
    spark extra (the suite runs ``vigie batch --engine spark`` in local mode) if needed."""
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if sys.version_info < (3, 11):  # noqa: UP036 - run by whatever python3 is on PATH
        sys.exit(f"Vigie needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print("Creating .venv ...", flush=True)
        venv.create(VENV, with_pip=True)
    python = BIN / "python"
    quiet = ("-q", "--disable-pip-version-check")
    if _run(python, "-m", "pip", "install", *quiet, "--upgrade", "pip") != 0:
        sys.exit("pip upgrade failed")
    print("Installing Vigie and its dependencies ...", flush=True)
    if _run(python, "-m", "pip", "install", *quiet, "-e", ".[dev,spark]") != 0:
        sys.exit("installation failed (see pip's message above)")
    STAMP.write_text(wanted)


def _postgres_up(host: str = "127.0.0.1", port: int = 5432) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def ensure_postgres() -> None:
    """Start the local cluster (Debian pg_ctlcluster) when nothing listens on 5432."""
    if _postgres_up() or not shutil.which("pg_ctlcluster"):
        return
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    for version in versions:
        _run("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start")
    for _ in range(30):
        if _postgres_up():
            return
        time.sleep(1)
    print("warning: PostgreSQL did not start; the postgres tests will fail", flush=True)


BROWSER = ("/usr/bin/chromium", "/usr/bin/chromedriver")


def ensure_browser() -> None:
    """Install Debian's Chromium and its driver for the web page's browser test when missing
    (as root, with apt-get); otherwise that test fails saying what is missing."""
    if all(os.path.exists(path) for path in BROWSER):
        return
    if not shutil.which("apt-get") or os.geteuid() != 0:
        print("warning: chromium and chromedriver are missing; the browser test will fail")
        return
    print("Installing chromium and chromium-driver (Debian) for the browser test ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    command = ("apt-get", "install", "-y", "-q", "chromium", "chromium-driver")
    if _run(*command, env=env, stdout=subprocess.DEVNULL) != 0:
        _run("apt-get", "update", "-q", env=env, stdout=subprocess.DEVNULL)
        if _run(*command, env=env, stdout=subprocess.DEVNULL) != 0:
            print("warning: could not install chromium; the browser test will fail")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test"}:
        print(__doc__)
        return 2
    setup()
    if argv[0] == "demo":
        return _run(BIN / "vigie", "demo", *argv[1:])
    ensure_postgres()
    ensure_browser()
    env = dict(os.environ, PYTHONHASHSEED="0")
    return _run(BIN / "python", "-m", "pytest", "-m", "", *_workers(), *argv[1:], env=env)


def _workers() -> list[str]:
    """pytest-xdist's options: one worker per core, at most ``MAX_WORKERS`` (each test file on
    one worker, so that a module's fixtures are built once). Arguments given after ``test``
    come later and win (``-n 0``: in one process)."""
    workers = min(os.cpu_count() or 1, MAX_WORKERS)
    return ["-n", str(workers), "--dist", "loadfile"] if workers > 1 else []


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
