"""Real kills: a child Python process is SIGKILLed while it is writing a file, as the out-of-memory killer
or a preempted job would stop it (no ``finally``, no ``atexit``, no flush).

The child installs :func:`hang_in_write`: the N-th atomic write whose target matches a pattern writes half
of its bytes into its temporary file, drops a marker file and blocks; :func:`run_killed` waits for the
marker (or for the first outputs with :func:`first_outputs`) and sends SIGKILL. The temporary file is the
one ``reprolib.io`` really writes, so what the kill leaves on disk is what a real kill leaves.
"""
from __future__ import annotations

import fnmatch
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def hang_in_write(pattern: str, nth: int, marker: str | os.PathLike) -> None:
    """(In the child.) Make the ``nth`` atomic write to a path matching ``pattern`` stop half-way."""
    from reprolib import io
    real, seen = io._atomic, []

    def atomic(path, writer):
        if not fnmatch.fnmatch(str(path), pattern):
            return real(path, writer)
        seen.append(path)
        if len(seen) < nth:
            return real(path, writer)

        def half_then_hang(tmp):
            writer(tmp)
            data = Path(tmp).read_bytes()
            Path(tmp).write_bytes(data[: len(data) // 2])
            Path(marker).write_text(str(path))
            while True:                         # killed here, mid-write
                time.sleep(0.05)
        return real(path, half_then_hang)

    io._atomic = atomic


def run_killed(code: str, ready: Callable[[], bool], timeout: float = 240.0) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (the repository and ``tests/`` importable), SIGKILL it as soon as
    ``ready()`` holds, and return it; fails if it ends by itself or never gets ready."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    try:
        while not ready():
            if p.poll() is not None:
                raise AssertionError(f"child ended by itself (exit {p.returncode}) before the kill:\n{p.stdout.read()}")
            if time.time() - t0 > timeout:
                raise AssertionError("child never reached the point where it is killed")
            time.sleep(0.02)
        os.kill(p.pid, signal.SIGKILL)
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == -signal.SIGKILL, (p.returncode, out)
    return subprocess.CompletedProcess(p.args, p.returncode, out, None)


def first_outputs(folder: Path, pattern: str, n: int = 1) -> Callable[[], bool]:
    """``ready`` for :func:`run_killed`: at least ``n`` finished files matching ``pattern`` in ``folder``."""
    return lambda: len(list(Path(folder).glob(pattern))) >= n


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders anywhere below ``folder`` (what a kill leaves until cleaned)."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.name.endswith((".tmp", ".old")))
