"""Provenance of executed stages, and small helpers the book's glue relies on.

Each stage notebook calls :func:`start_stage` after its parameters cell and :func:`finish_stage` at
the end. The record (git SHA and dirty flag, profile and parameters, package versions, device,
seeds, start/end/duration) is written next to the stage's artifacts as ``provenance.json`` and a
one-line summary is glued under every table and figure of the book.
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import Profile, apply_runtime
from .io import atomic_write_json

PACKAGES = ("reprolib", "torch", "torchvision", "diffusers", "transformers", "accelerate", "torchmetrics",
            "safetensors", "numpy", "pandas", "scipy", "statsmodels", "great-tables", "papermill", "jupyter-book")
WORLD_BANNER = ("A small text-to-image model trained from scratch on synthetic shapes (on one GPU, minutes), "
                "fine-tuned for minutes on CPU: these numbers test whether TokenCompose's mechanism helps "
                "composition in a toy world, not what it does for Stable Diffusion.")
TINY_WORLD_BANNER = ("Tiny profile: these numbers come from the miniature world: a small model trained on "
                     "synthetic shapes, fine-tuned and scored on CPU with an exact shape detector. They check "
                     "the pipeline end to end and describe a toy world; they are not results about Stable "
                     "Diffusion, COCO or ADE20K, and reported values shown beside them are not comparable.")
TINY_BANNER = ("Tiny profile: these numbers come from small random-initialised models on CPU. They check "
               "that the pipeline runs end to end; they are not scientific results.")


def git_state(repo: Path | None = None) -> dict[str, Any]:
    """SHA of HEAD and whether the tree has uncommitted changes (None when not a git checkout)."""
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        return {"sha": sha, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out = {}
    for n in names:
        try:
            out[n] = _md.version(n)
        except _md.PackageNotFoundError:
            out[n] = None
    return out


def device_info() -> dict[str, Any]:
    """CPU model/cores and, when present, the GPU names and count."""
    import os
    import torch
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                            "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    if info["gpu_count"]:
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(info["gpu_count"])]
    return info


@dataclass
class Provenance:
    stage: str
    profile: str
    parameters: dict[str, Any]
    profile_values: dict[str, Any]
    git: dict[str, Any]
    packages: dict[str, str | None]
    device: dict[str, Any]
    seeds: dict[str, Any]
    started: str
    runtime: dict[str, Any] = field(default_factory=dict)
    ended: str | None = None
    duration_s: float | None = None
    _t0: float = field(default=0.0, repr=False)

    def short(self) -> str:
        """One line for under a table or figure."""
        sha = (self.git.get("sha") or "unknown")[:8] + ("+dirty" if self.git.get("dirty") else "")
        dev = ", ".join(self.device.get("gpus", [])) or f"CPU×{self.device.get('cpu_count')}"
        dur = f", {self.duration_s:.0f} s" if self.duration_s is not None else ""
        return (f"Produced by stage {self.stage}, profile {self.profile}, commit {sha}, on {dev}, "
                f"{self.started[:16].replace('T', ' ')} UTC{dur}.")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_t0")
        return d


def start_stage(stage: str, profile: Profile, parameters: dict[str, Any] | None = None) -> Provenance:
    """Open the provenance record of a stage run (call right after the parameters cell).

    It also applies the profile's runtime settings (:func:`reprolib.config.apply_runtime`), so every
    stage runs with the thread count its provenance records.
    """
    import torch
    apply_runtime(profile)
    return Provenance(
        stage=stage, profile=profile.name, parameters=dict(parameters or {}), profile_values=profile.to_dict(),
        git=git_state(), packages=package_versions(), device=device_info(),
        seeds={"profile": profile.seed, "model": profile.model.seed, "train": profile.train.seed},
        runtime={"torch_threads": torch.get_num_threads()},
        started=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), _t0=time.time(),
    )


def finish_stage(prov: Provenance, out_dir: str | Path) -> Path:
    """Close the record and write ``<out_dir>/provenance.json`` atomically."""
    prov.ended = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    prov.duration_s = round(time.time() - prov._t0, 2)
    return atomic_write_json(Path(out_dir) / "provenance.json", prov.to_dict())


# --------------------------------------------------------------------------- glue helpers for the book

def banner_html(profile: Profile) -> str:
    """The banner shown at the top of every book page with numbers (says what tiny-profile numbers are)."""
    if profile.is_world:
        return f'<div class="repro-banner tiny"><strong>Pipeline check, toy world.</strong> {TINY_WORLD_BANNER}</div>'
    if profile.is_tiny:
        return f'<div class="repro-banner tiny"><strong>Pipeline check.</strong> {TINY_BANNER}</div>'
    return (f'<div class="repro-banner paper">Profile <code>{profile.name}</code>: real weights '
            f'(<code>{profile.model.pretrained}</code>).</div>')


def provenance_table(prov: Provenance):
    """Full provenance as a two-column DataFrame (for the appendix)."""
    import pandas as pd
    d = prov.to_dict()
    rows = [("stage", d["stage"]), ("profile", d["profile"]),
            ("git commit", f"{d['git'].get('sha')}{' (dirty)' if d['git'].get('dirty') else ''}"),
            ("started (UTC)", d["started"]), ("ended (UTC)", d["ended"]), ("duration (s)", d["duration_s"]),
            ("device", json_compact(d["device"])), ("seeds", json_compact(d["seeds"])), ("runtime", json_compact(d["runtime"])),
            ("parameters", json_compact(d["parameters"]))]
    rows += [(f"package {k}", v or "not installed") for k, v in d["packages"].items()]
    return pd.DataFrame(rows, columns=["field", "value"]).set_index("field")


def json_compact(obj: Any) -> str:
    import json
    return json.dumps(obj, sort_keys=True, default=str)


def world_banner_html() -> str:
    """The banner of the miniature-world stage, whose model is trained, not random."""
    return f'<div class="repro-banner tiny"><strong>Miniature world.</strong> {WORLD_BANNER}</div>'


def glue_banner(prefix: str, profile: Profile, html: str | None = None) -> None:
    """Glue ``<prefix>banner`` (HTML; the profile's unless given) and display it in the executed notebook too."""
    from IPython.display import HTML, display
    from myst_nb import glue
    html = HTML(html or banner_html(profile))
    display(html)
    glue(f"{prefix}banner", html, display=False)


def glue_provenance(prefix: str, prov: Provenance, out_dir: str | Path) -> Path:
    """Finish the stage record and glue ``<prefix>provenance`` (one line) and ``<prefix>provenance_full``."""
    from IPython.display import HTML
    from myst_nb import glue

    from .tables import glue_table
    path = finish_stage(prov, out_dir)
    glue(f"{prefix}provenance", HTML(f'<p class="repro-provenance">{prov.short()}</p>'), display=False)
    glue_table(f"{prefix}provenance_full", provenance_table(prov).reset_index(), display=False,
               labels={"field": "Field", "value": "Value"}, wrap={"value": 30})
    return path
