"""The one-command run: execute the stage notebooks in order with papermill, then build the book.

Stage caching works like ``dvc repro``: a stage re-runs only when its notebook, its parameters,
reprolib's source, or an upstream stage changed (the cache key chains through the upstream keys).
A failing stage stops the run, names the partial notebook, and leaves earlier outputs in place. A
kernel that dies (killed by the out-of-memory killer, a segfault in an extension) is reported with
the stage, the cause as far as it is known (exit signal or code, the kernel's peak memory against the
machine's) and the partial notebook, whose cells after the one that was running are marked pending.
"""
from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from tqdm.auto import tqdm

from .config import load_profile
from .io import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BOOK = ROOT / "book"
STAGE_DIR = BOOK / "_stages"          # executed notebooks live inside the book, which glues from them
CACHE_FILE = ".stage-cache.json"
SOURCE = ROOT / "reprolib"          # the code whose digest is part of every stage's cache key
#: Shipped data a stage reads beyond its parameters (the digest of these files is part of its cache key),
#: so that re-exporting the committed multi-seed run or correcting a reported table re-runs the stage.
DATA_DEPS: dict[str, tuple[str, ...]] = {"06": ("data/miniworld",),
                                         "07": ("data/report", "data/multigen", "data/editing")}

#: Which earlier stages a stage reads from (its cache key includes theirs).
UPSTREAM: dict[str, tuple[str, ...]] = {"02": ("01",), "03": ("02",), "04": ("02",), "05": ("02",),
                                        "06": ("05",),      # its BLD validity gate reads stage 05's world edits
                                        "07": ("03", "04", "05")}   # 07 reads their measurements (paper profile)


class StageFailed(RuntimeError):
    """A stage notebook raised; the message names the stage and the partial notebook."""


class StagesNotReady(RuntimeError):
    """The book was asked for while stage notebooks are missing or stale; the message says what to run."""


@dataclass(frozen=True)
class Stage:
    id: str           # "03"
    name: str         # "03_multigen"
    path: Path        # notebooks/03_multigen.ipynb

    @property
    def output(self) -> Path:
        return STAGE_DIR / f"{self.name}.ipynb"


def discover_stages(notebooks: Path = NOTEBOOKS) -> list[Stage]:
    """``notebooks/0*_*.ipynb`` in order."""
    return [Stage(p.stem.split("_", 1)[0], p.stem, p) for p in sorted(notebooks.glob("0*_*.ipynb"))]


def select_stages(stages: Sequence[Stage], only: Sequence[str] | None) -> list[Stage]:
    """Keep the stages named in ``only`` (``"03"`` or ``"03_multigen"``); raise naming an unknown one."""
    if not only:
        return list(stages)
    known = {s.id: s for s in stages} | {s.name: s for s in stages}
    for o in only:
        if o not in known:
            raise ValueError(f"unknown stage {o!r}; stages: {', '.join(s.id for s in stages)}")
    wanted = {known[o].id for o in only}
    return [s for s in stages if s.id in wanted]


def _hash_files(h, files, rel_to: Path) -> None:
    """Feed each file's path (relative to `rel_to`) and bytes into `h`, in sorted order."""
    for p in sorted(files):
        h.update(p.relative_to(rel_to).as_posix().encode())
        h.update(p.read_bytes())


def source_digest(root: Path | None = None) -> str:
    """Hash of reprolib's source (:data:`SOURCE` by default): a code change invalidates every stage."""
    root = Path(root or SOURCE)
    h = hashlib.sha256()
    _hash_files(h, root.rglob("*.py"), root)
    return h.hexdigest()


def data_digest(paths: Sequence[str], root: Path = ROOT) -> str:
    """Hash of every file under `paths` (files or folders, relative to the repository), names and bytes."""
    h = hashlib.sha256()
    for rel in paths:
        base = root / rel
        files = [q for q in base.rglob("*") if q.is_file()] if base.is_dir() else [base] if base.is_file() else []
        _hash_files(h, files, root)
    return h.hexdigest()


def stage_code(stage: Stage, code: str) -> str:
    """What a stage's key takes as its code: reprolib's digest, plus its shipped data's (:data:`DATA_DEPS`)."""
    deps = DATA_DEPS.get(stage.id, ())
    return code + data_digest(deps) if deps else code


def stage_key(stage: Stage, parameters: Mapping[str, Any], upstream_keys: Sequence[str], code: str) -> str:
    """Cache key of a stage run: notebook bytes, parameters, reprolib source, upstream keys."""
    h = hashlib.sha256()
    h.update(stage.path.read_bytes())
    h.update(json.dumps(parameters, sort_keys=True, default=str).encode())
    h.update(code.encode())
    for k in upstream_keys:
        h.update(k.encode())
    return h.hexdigest()


def load_cache(stage_dir: Path = STAGE_DIR) -> dict[str, Any]:
    f = stage_dir / CACHE_FILE
    return json.loads(f.read_text()) if f.is_file() else {}


def parse_params(pairs: Sequence[Sequence[str]] | None, params_file: str | None) -> dict[str, Any]:
    """``-p key value`` pairs (YAML-typed values) over a params YAML file: the profile overrides."""
    out: dict[str, Any] = {}
    if params_file:
        p = Path(params_file)
        if not p.is_file():
            raise FileNotFoundError(f"params file not found: {params_file}")
        out.update(yaml.safe_load(p.read_text()) or {})
    for key, value in pairs or []:
        out[key] = yaml.safe_load(value)
    return out


class MemoryWatch:
    """Peak resident memory of this process's children (the stage kernel and its workers), and the
    machine's lowest available memory, sampled every `interval` seconds in a background thread."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.peak_rss, self.min_available = interval, 0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        import psutil
        rss = 0
        for child in psutil.Process().children(recursive=True):
            try:
                rss += child.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        self.peak_rss = max(self.peak_rss, rss)
        avail = psutil.virtual_memory().available
        self.min_available = avail if self.min_available is None else min(self.min_available, avail)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "MemoryWatch":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def death_cause(returncode: int | None, peak_rss: int = 0, min_available: int | None = None,
                total: int | None = None) -> str:
    """Why a kernel died, in words: its exit signal or code, and whether memory ran out.

    The out-of-memory killer sends SIGKILL; memory is named as the likely cause when the kernel was
    killed that way while the machine had (almost) no memory left, or the kernel held most of it.
    """
    import psutil
    total = total or psutil.virtual_memory().total
    gib = 2 ** 30
    memory = f"kernel peak memory {peak_rss / gib:.1f} GiB of {total / gib:.1f} GiB"
    if returncode is None:
        return f"cause unknown; {memory}"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        what = f"killed by signal {-returncode} ({name})"
        if -returncode == signal.SIGKILL:
            starved = (min_available is not None and min_available < 0.05 * total) or peak_rss > 0.8 * total
            if starved:
                return f"{what}: out of memory ({memory}); lower the batch or chunk sizes"
            return f"{what}: by the out-of-memory killer or by hand ({memory})"
        return f"{what}; {memory}"
    return f"exited with code {returncode}; {memory}"


def mark_dead_kernel(path: Path, cause: str) -> None:
    """Make a partial notebook tell the truth after its kernel died: papermill marks every cell
    'completed' in that case; the cell that was running becomes 'failed' (with the cause as its
    error output) and the cells that never started 'pending'."""
    import nbformat
    nb = nbformat.read(str(path), as_version=4)
    running = None
    for i, cell in enumerate(nb.cells):
        meta = cell.metadata.get("papermill", {})
        if meta.get("start_time") is None:
            meta.update(status="pending", end_time=None, duration=None)
        else:
            running = i
    if running is not None:
        cell = nb.cells[running]
        cell.metadata.papermill.update(status="failed", exception=True)
        if cell.cell_type == "code":
            cell.outputs.append(nbformat.v4.new_output("error", ename="DeadKernelError",
                                                       evalue=f"Kernel died: {cause}", traceback=[]))
    nb.metadata.setdefault("papermill", {})["exception"] = True
    from .io import atomic_save
    atomic_save(path, lambda p: nbformat.write(nb, str(p)))


def execute_stage(stage: Stage, output: Path, parameters: Mapping[str, Any], kernel: str = "python3") -> None:
    """Run one stage notebook with papermill into `output`; raise :class:`StageFailed` naming the stage,
    the error (or how the kernel died) and the partial notebook."""
    import papermill as pm
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync
    from nbclient.exceptions import DeadKernelError

    km = AsyncKernelManager(kernel_name=kernel)          # ours, so its exit status can be read afterwards
    try:
        with MemoryWatch() as watch:
            try:
                pm.execute_notebook(str(stage.path), str(output), parameters=dict(parameters), kernel_name=kernel,
                                    cwd=str(ROOT), progress_bar=False, km=km)
            except pm.PapermillExecutionError as e:
                raise StageFailed(f"stage {stage.name} failed: {e.ename}: {e.evalue} "
                                  f"(partial notebook: {output})") from None
            except DeadKernelError:
                process = getattr(km.provisioner, "process", None)
                code = process.poll() if process is not None else None
                watch.sample()
                cause = death_cause(code, watch.peak_rss, watch.min_available)
                if output.is_file():
                    mark_dead_kernel(output, cause)
                raise StageFailed(f"stage {stage.name} failed: kernel died, {cause} "
                                  f"(partial notebook: {output})") from None
    finally:
        if km.has_kernel:                                 # shutting down also removes its connection file
            run_sync(km.shutdown_kernel)(now=True)


def run_stages(profile: str = "tiny", overrides: Mapping[str, Any] | None = None, only: Sequence[str] | None = None,
               force: bool = False, stage_dir: Path = STAGE_DIR, notebooks: Path = NOTEBOOKS,
               kernel: str = "python3", log=print) -> list[tuple[str, str]]:
    """Execute the stages; returns ``[(stage, "ran"|"cached")]``. Raises :class:`StageFailed`."""
    import os

    # A kernel started with MPLBACKEND=Agg never gets the inline backend, so its figures carry no PNG
    # and glue pastes nothing into the book: the stage kernels always use the inline backend.
    os.environ.pop("MPLBACKEND", None)
    overrides = dict(overrides or {})
    load_profile(profile, overrides)                     # fail fast on a bad profile or override
    stages = discover_stages(notebooks)
    if not stages:
        raise FileNotFoundError(f"no stage notebooks (0*_*.ipynb) in {notebooks}")
    todo = {s.id for s in select_stages(stages, only)}
    stage_dir.mkdir(parents=True, exist_ok=True)
    cache = load_cache(stage_dir)
    code = source_digest()
    keys: dict[str, str] = {}
    results = []
    params = {"profile": profile, "overrides": overrides}
    bar = tqdm(stages, desc="stages", unit="stage", disable=None)
    for st in bar:
        key = stage_key(st, params, [keys.get(u, "") for u in UPSTREAM.get(st.id, ())], stage_code(st, code))
        keys[st.id] = key
        if st.id not in todo:
            continue
        output = stage_dir / f"{st.name}.ipynb"
        if not force and cache.get(st.id, {}).get("key") == key and output.is_file():
            log(f"[{st.id}] {st.name}: up to date (cached)")
            results.append((st.id, "cached"))
            continue
        bar.set_postfix_str(st.name)
        log(f"[{st.id}] {st.name}: running with profile {profile!r}")
        t0 = time.time()
        cache.pop(st.id, None)
        atomic_write_json(stage_dir / CACHE_FILE, cache)
        execute_stage(st, output, params, kernel)
        cache[st.id] = {"key": key, "profile": profile, "overrides": overrides, "seconds": round(time.time() - t0, 1),
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_json(stage_dir / CACHE_FILE, cache)
        log(f"[{st.id}] {st.name}: done in {time.time() - t0:.0f} s → {output}")
        results.append((st.id, "ran"))
    return results


def build_book(strict: bool = True, book: Path = BOOK) -> Path:
    """``jupyter-book build book`` (warnings are errors when strict); returns the HTML folder."""
    cmd = ["jupyter-book", "build", str(book)]
    if strict:
        cmd += ["-W", "--keep-going"]
    r = subprocess.run(cmd, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"book build failed (exit {r.returncode}): {' '.join(cmd)}")
    return book / "_build" / "html"


# --------------------------------------------------------------------------- the book's own check

#: How ``jupyter-book build book`` treats missing or stale stages (env ``REPROLIB_BOOK_STAGES``):
#: ``run`` executes them through the runner's cache first, ``check`` stops with one line saying what to
#: run, ``auto`` (default) runs them on a tiny profile (minutes on a CPU) and stops on any other (hours
#: on a GPU are not started by a docs build).
BOOK_STAGES_ENV = "REPROLIB_BOOK_STAGES"
BOOK_STAGE_MODES = ("auto", "run", "check")


@dataclass(frozen=True)
class StageState:
    stage: Stage
    state: str        # "fresh" | "missing" | "stale"


def last_run(stage_dir: Path = STAGE_DIR) -> tuple[str, dict[str, Any]]:
    """Profile and overrides of the most recent stage run recorded in the cache (``tiny``, {} when none)."""
    entries = [v for v in load_cache(stage_dir).values() if isinstance(v, dict) and v.get("profile")]
    if not entries:
        return "tiny", {}
    last = max(entries, key=lambda v: v.get("finished", ""))
    return str(last["profile"]), dict(last.get("overrides") or {})


def stage_states(profile: str, overrides: Mapping[str, Any] | None = None, stage_dir: Path = STAGE_DIR,
                 notebooks: Path = NOTEBOOKS) -> list[StageState]:
    """Each stage's state for this profile and overrides, by the same cache keys as :func:`run_stages`:
    ``missing`` (no executed notebook or no cache entry), ``stale`` (its key changed) or ``fresh``."""
    cache = load_cache(stage_dir)
    code = source_digest()
    params = {"profile": profile, "overrides": dict(overrides or {})}
    keys: dict[str, str] = {}
    out = []
    for st in discover_stages(notebooks):
        keys[st.id] = stage_key(st, params, [keys.get(u, "") for u in UPSTREAM.get(st.id, ())],
                                stage_code(st, code))
        entry = cache.get(st.id) or {}
        if not (stage_dir / f"{st.name}.ipynb").is_file() or not entry:
            state = "missing"
        else:
            state = "fresh" if entry.get("key") == keys[st.id] else "stale"
        out.append(StageState(st, state))
    return out


def run_command(profile: str, overrides: Mapping[str, Any] | None = None) -> str:
    """The command that (re)produces the stages of a profile with these overrides."""
    import shlex
    cmd = f"python -m reprolib run --profile {shlex.quote(profile)}"
    for k, v in (overrides or {}).items():
        cmd += f" -p {k} {shlex.quote(v if isinstance(v, str) else json.dumps(v))}"
    return cmd


def ensure_stages(mode: str | None = None, stage_dir: Path = STAGE_DIR, notebooks: Path = NOTEBOOKS,
                  log=print) -> list[tuple[str, str]]:
    """Before the book is built: run the missing or stale stages, or stop with one line naming the command.

    The profile and overrides are those of the last recorded run (``tiny`` on a fresh clone). ``mode`` is
    one of :data:`BOOK_STAGE_MODES` (default: env ``REPROLIB_BOOK_STAGES``, else ``auto``). Returns what
    :func:`run_stages` returned ([] when every stage was fresh); raises :class:`StagesNotReady`.
    """
    import os
    mode = (mode or os.environ.get(BOOK_STAGES_ENV) or "auto").strip().lower()
    if mode not in BOOK_STAGE_MODES:
        raise ValueError(f"{BOOK_STAGES_ENV}={mode!r}: expected one of {', '.join(BOOK_STAGE_MODES)}")
    profile, overrides = last_run(stage_dir)
    todo = [s for s in stage_states(profile, overrides, stage_dir, notebooks) if s.state != "fresh"]
    if not todo:
        return []
    what = ", ".join(f"{s.stage.name} ({s.state})" for s in todo)
    if mode == "auto":
        mode = "run" if load_profile(profile, overrides).is_tiny else "check"
    if mode == "check":
        raise StagesNotReady(f"the book needs stage notebooks that are missing or stale: {what}; "
                             f"run `{run_command(profile, overrides)}` first")
    log(f"book: running the missing or stale stages first ({what}), profile {profile!r}")
    return run_stages(profile, overrides, only=[s.stage.id for s in todo], stage_dir=stage_dir,
                      notebooks=notebooks, log=log)
