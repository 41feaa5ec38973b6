"""Atomic writes and checksum-verified downloads.

Every artifact on disk is written through these helpers so that a killed job never leaves a
half-written file that a resumed job would mistake for a finished one.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm


REPO_ROOT = Path(__file__).resolve().parent.parent


def repo_path(p: str | os.PathLike) -> Path:
    """Absolute paths stay; relative ones are taken from the repository root (not the notebook's cwd)."""
    p = Path(p).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


class ChecksumError(RuntimeError):
    """A downloaded or local file does not have the expected sha256."""


#: This machine's name as it appears in temporary file names (no dots, so names parse back).
HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
#: ``.<name>.pid<pid>@<host>.<random>.tmp``: who wrote a temporary file, so a later run can tell a dead
#: writer's leftover (SIGKILL skips every ``finally``) from a live writer's file.
_TEMP = re.compile(r"^\.(?P<name>.+)\.pid(?P<pid>\d+)@(?P<host>[A-Za-z0-9_-]+)\.[A-Za-z0-9_]+\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = True) -> int:
    """Delete the temporary files of writers that were killed mid-write (this machine's, whose process is
    gone); a live writer's files, or another machine's, are left alone. Returns how many were deleted."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in (folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")):
        m = _TEMP.match(p.name)
        if m and m["host"] == HOST and not _alive(int(m["pid"])) and p.is_file():
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def _atomic(path: Path, writer: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.pid{os.getpid()}@{HOST}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes so that `path` holds either the old or the complete new content."""
    return _atomic(Path(path), lambda p: p.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    return _atomic(Path(path), lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    """JSON version of :func:`atomic_write_text`."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_save(path: str | os.PathLike, save: Callable[[Path], None]) -> Path:
    """Run `save(tmp_path)` (e.g. ``img.save`` or ``df.to_csv``) and move the result into place."""
    return _atomic(Path(path), save)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise :class:`ChecksumError` naming the file when its hash differs."""
    got = sha256_file(path)
    if got != expected.lower():
        raise ChecksumError(f"{path}: sha256 {got} does not match expected {expected}")


def download(url: str, dest: str | os.PathLike, sha256: str | None = None,
             progress: bool = True, timeout: float = 60.0) -> Path:
    """Fetch `url` to `dest` once: skip when a verified copy exists, verify before moving into place.

    A corrupt existing file is replaced; a download whose hash is wrong is discarded and raises.
    """
    dest = Path(dest)
    if dest.exists():
        if sha256 is None:
            return dest
        try:
            verify_sha256(dest, sha256)
            return dest
        except ChecksumError:
            dest.unlink()

    def fetch(tmp: Path) -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
                total = int(r.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name,
                          disable=not progress, leave=False) as bar:
                    for block in iter(lambda: r.read(1 << 16), b""):
                        f.write(block)
                        bar.update(len(block))
        except OSError as e:  # URLError is an OSError
            raise OSError(f"download failed: {url}: {e}") from None
        if sha256 is not None:
            try:
                verify_sha256(tmp, sha256)
            except ChecksumError:
                raise ChecksumError(f"{url}: downloaded file does not match sha256 {sha256}") from None

    return _atomic(dest, fetch)


#: File in an output folder recording what its files were made from (see :func:`reset_if_changed`).
SIGNATURE_FILE = "signature.json"


def reset_if_changed(folder: str | os.PathLike, signature: Any, pattern: str = "*") -> int:
    """Keep a resumable output folder consistent with what made it.

    ``folder/signature.json`` records ``signature`` (JSON-able: checkpoint, weights hashes, settings). When
    the recorded one differs, the folder's files matching ``pattern`` are deleted, so a resumed job never
    mixes outputs of two settings or two models; then ``signature`` is written (atomically). A folder
    with files but no record (made before records existed) is adopted as it is: nothing is deleted
    without evidence that it is stale. Returns how many files were deleted.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sig = json.loads(json.dumps(signature, sort_keys=True, default=str))
    path = folder / SIGNATURE_FILE
    removed = 0
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if old != sig:
            for f in folder.glob(pattern):
                if f.is_file() and f.name != SIGNATURE_FILE:
                    f.unlink()
                    removed += 1
    atomic_write_json(path, sig)
    return removed
