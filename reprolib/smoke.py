"""The paper profile at full size without its weights: random models of the real architectures.

No machine of this project reaches a model hub. To prove the ``paper`` profile anyway, every model it
names is rebuilt from its real configuration (``data/archs/``, each file's source in its README) with
random weights, and saved where ``from_pretrained`` finds it with ``HF_HUB_OFFLINE=1``: a hub-layout
cache (``models--org--name/snapshots/<rev>/`` + ``refs/main``). :func:`run_smoke` then runs every stage
of the paper profile through the runner, at the real resolutions with minimal counts, on local stand-ins
of its downloads, and checks what each stage wrote. ``python -m reprolib smoke --profile paper``.

:func:`build_random` is the small loader the benchmarks use: one model of a real architecture, on the
``meta`` device (no memory: shapes only) or with random weights on a real one.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from .io import REPO_ROOT, atomic_write_json, atomic_write_text

ARCHS_DIR = REPO_ROOT / "data" / "archs"
#: Where each kind of model keeps its config inside its folder (an SD pipeline: one per part).
PART_CONFIG = {"scheduler": "scheduler/scheduler_config.json", "feature_extractor": "feature_extractor/preprocessor_config.json"}


class SmokeError(RuntimeError):
    """A model id without a shipped architecture, or a stage whose outputs are missing or wrong."""


# --------------------------------------------------------------------------- the shipped architectures

def registry(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Model id → how its random copy is built (``data/archs/models.json``)."""
    return json.loads(Path(path or ARCHS_DIR / "models.json").read_text())


def arch_entry(model_id: str) -> dict[str, Any]:
    """The registry entry of `model_id`; one line naming it when no architecture is shipped."""
    reg = registry()
    if model_id not in reg:
        raise SmokeError(f"no shipped architecture for model id {model_id!r} (data/archs/models.json knows: "
                         f"{', '.join(sorted(reg))})")
    return reg[model_id]


def config_path(model_id: str, part: str | None = None) -> Path:
    """The shipped config file of `model_id` (an SD pipeline's `part`: ``unet``, ``vae``, ...)."""
    entry = arch_entry(model_id)
    root = ARCHS_DIR / entry["archs"]
    if entry["kind"] in ("sd_pipeline", "sd_unet"):
        part = part or "unet"
        return root / PART_CONFIG.get(part, f"{part}/config.json")
    return root / "config.json"


def arch_config(model_id: str, part: str | None = None) -> dict[str, Any]:
    """The real configuration of `model_id` (or of one part of an SD pipeline) as a dict."""
    return json.loads(config_path(model_id, part).read_text())


def _kind_of(model_id: str, part: str | None) -> str:
    entry = arch_entry(model_id)
    if entry["kind"] in ("sd_pipeline", "sd_unet"):
        part = part or "unet"
        if part not in entry.get("parts", ["unet"]):
            raise SmokeError(f"{model_id} has no random-buildable part {part!r}; parts: {', '.join(entry['parts'])}")
        return f"sd_{part}"
    return entry["kind"]


def _construct(kind: str, cfg: dict[str, Any]):
    """One model of `kind` from its config dict (random init of the library's own initialisers)."""
    if kind == "sd_unet":
        from diffusers import UNet2DConditionModel
        return UNet2DConditionModel.from_config(cfg)
    if kind == "sd_vae":
        from diffusers import AutoencoderKL
        return AutoencoderKL.from_config(cfg)
    if kind == "sd_text_encoder":
        from transformers import CLIPTextConfig, CLIPTextModel
        return CLIPTextModel(CLIPTextConfig.from_dict(cfg))
    if kind == "sd_safety_checker":
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPConfig
        return StableDiffusionSafetyChecker(CLIPConfig.from_dict(cfg))
    if kind == "owlv2":
        from transformers import Owlv2Config, Owlv2ForObjectDetection
        return Owlv2ForObjectDetection(Owlv2Config.from_dict(cfg))
    if kind == "grounding_dino":
        from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection
        return GroundingDinoForObjectDetection(GroundingDinoConfig.from_dict(cfg))
    if kind == "sam_hq":
        from transformers import SamHQConfig, SamHQModel
        return SamHQModel(SamHQConfig.from_dict(cfg))
    if kind == "clip":
        from transformers import CLIPConfig, CLIPModel
        return CLIPModel(CLIPConfig.from_dict(cfg))
    if kind == "vit":
        from transformers import ViTConfig, ViTModel
        return ViTModel(ViTConfig.from_dict(cfg), add_pooling_layer=False)
    raise SmokeError(f"unknown model kind {kind!r} in data/archs/models.json")


def build_random(model_id: str, part: str | None = None, device: str | torch.device = "cpu", seed: int = 0,
                 dtype: torch.dtype | None = None):
    """A model of `model_id`'s real architecture: on ``meta`` (accelerate's ``init_empty_weights``: shapes,
    no memory) or with random weights (seeded; the library's own initialisation) on `device`.

    SD pipeline ids take a `part` (``unet`` default, ``vae``, ``text_encoder``, ``safety_checker``);
    TokenCompose checkpoint ids are their UNet.

    >>> build_random("CompVis/stable-diffusion-v1-4", device="meta").config.cross_attention_dim
    768
    """
    kind = _kind_of(model_id, part)
    cfg = arch_config(model_id, part)
    if torch.device(device).type == "meta":
        from accelerate import init_empty_weights
        with init_empty_weights():
            model = _construct(kind, cfg)
    else:
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            model = _construct(kind, cfg)
    model = model.eval()
    return model if dtype is None else model.to(dtype=dtype)


def sd14_components(device: str | torch.device = "cpu", seed: int = 0, dtype: torch.dtype | None = None,
                    unet_id: str = "CompVis/stable-diffusion-v1-4", scheduler: str = "pndm"):
    """Random SD1.4 parts of the real sizes as :class:`reprolib.models.Components` (tokenizer: SD1.4's, rebuilt
    offline): what a benchmark on a GPU needs without the weights."""
    from .models import SD14, Components, clip_tokenizer, sd14_scheduler
    parts = {p: build_random(SD14 if p != "unet" else unet_id, p, device, seed + i, dtype)
             for i, p in enumerate(("unet", "vae", "text_encoder"))}
    return Components(parts["unet"], parts["vae"], parts["text_encoder"], clip_tokenizer(), sd14_scheduler(scheduler),
                      f"random {SD14} architecture (seed {seed})")


# --------------------------------------------------------------------------- a hub-layout cache

#: Files of a model folder that are not weights: copied from ``data/archs`` into the snapshot as they are.
_EXTRA_FILES = ("model_index.json", "scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json",
                "preprocessor_config.json")
RANDOM_MARKER = "reprolib_random.json"


def revision_of(model_id: str, seed: int) -> str:
    """The snapshot's (made-up) commit hash: 40 hex digits, stable in the id and seed."""
    return hashlib.sha1(f"reprolib-smoke:{model_id}:{seed}".encode()).hexdigest()


def repo_folder(cache: str | Path, model_id: str) -> Path:
    """``<cache>/models--org--name``, the hub's own layout (``huggingface_hub``'s ``repo_folder_name``)."""
    return Path(cache) / ("models--" + model_id.replace("/", "--"))


def snapshot_dir(cache: str | Path, model_id: str, revision: str) -> Path:
    """Create ``models--org--name/snapshots/<revision>/`` with ``refs/main`` pointing at it; returns the snapshot."""
    repo = repo_folder(cache, model_id)
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    atomic_write_text(repo / "refs" / "main", revision)
    return snap


def write_tokenizer(kind: str, folder: str | Path, words: Iterable[str] = ()) -> Path:
    """A tokenizer folder offline: ``clip`` (SD1.4's, exact), ``clip_owlv2`` (the same BPE with OWLv2's
    ``pad_token="!"``, 16 tokens) or ``bert`` (bert-base-uncased's size, made-up vocabulary of `words`)."""
    from .models import write_clip_tokenizer_files
    folder = Path(folder)
    if kind in ("clip", "clip_owlv2"):
        write_clip_tokenizer_files(folder)
        if kind == "clip_owlv2":
            cfg = json.loads((folder / "tokenizer_config.json").read_text())
            cfg.update(pad_token="!", model_max_length=16)
            atomic_write_text(folder / "tokenizer_config.json", json.dumps(cfg))
            special = json.loads((folder / "special_tokens_map.json").read_text())
            atomic_write_text(folder / "special_tokens_map.json", json.dumps({**special, "pad_token": "!"}))
        return folder
    if kind == "bert":
        from transformers import BertTokenizer

        from .gsam_official import bert_vocabulary
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.txt").write_text("\n".join(bert_vocabulary(list(words), 30522)) + "\n")
        BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True, model_max_length=512).save_pretrained(folder)
        return folder
    raise SmokeError(f"unknown tokenizer kind {kind!r} in data/archs/models.json")


def _seed_for(model_id: str, part: str | None, seed: int) -> int:
    from .models import _seed_of
    return _seed_of(f"{model_id}/{part or ''}", seed)


def write_model(cache: str | Path, model_id: str, seed: int = 0, words: Iterable[str] = ()) -> Path:
    """One model id into the cache: random weights (safetensors) of its real architecture, part by part
    (built, saved, freed: one model in memory at a time), its tokenizer and processor files. Returns the
    snapshot folder; a snapshot already complete (its marker file written last) is kept."""
    entry = arch_entry(model_id)
    snap = snapshot_dir(cache, model_id, revision_of(model_id, seed))
    if (snap / RANDOM_MARKER).is_file():
        return snap
    parts = entry.get("parts") or [None]
    for part in parts:
        model = build_random(model_id, part, "cpu", _seed_for(model_id, part, seed))
        dest = snap / part if part else snap
        model.save_pretrained(str(dest), safe_serialization=True)
        del model
        gc.collect()
    src = ARCHS_DIR / entry["archs"]
    for rel in _EXTRA_FILES:
        if (src / rel).is_file() and (entry["kind"] == "sd_pipeline" or "/" not in rel):
            (snap / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, snap / rel)
    if entry.get("tokenizer"):
        write_tokenizer(entry["tokenizer"], snap / "tokenizer" if entry["kind"] == "sd_pipeline" else snap, words)
    atomic_write_json(snap / RANDOM_MARKER, {"model_id": model_id, "seed": seed, "random": True,
                                             "architecture": f"data/archs/{entry['archs']}",
                                             "note": "random weights of the real architecture (reprolib.smoke)"})
    return snap


def folder_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def write_hub_cache(cache: str | Path, model_ids: Sequence[str], seed: int = 0, words: Iterable[str] = (),
                    log=print) -> dict[str, dict[str, Any]]:
    """Every id of `model_ids` into the hub-layout cache `cache` (``HF_HUB_CACHE``); per id its seconds and bytes."""
    from tqdm.auto import tqdm
    words = list(words)
    out = {}
    for mid in tqdm(list(dict.fromkeys(model_ids)), desc="random models", unit="model", disable=None):
        t0 = time.time()
        snap = write_model(cache, mid, seed, words)
        out[mid] = {"seconds": round(time.time() - t0, 1), "bytes": folder_bytes(snap), "snapshot": str(snap)}
        log(f"  {mid}: {out[mid]['bytes'] / 2**30:.2f} GiB in {out[mid]['seconds']:.0f} s")
    return out


@contextlib.contextmanager
def offline_env(cache: str | Path, torch_home: str | Path | None = None):
    """``HF_HUB_CACHE`` = `cache`, every hub client offline (``HF_HUB_OFFLINE=1``), ``TORCH_HOME`` = `torch_home`,
    inside the block; the environment is restored after. Stage kernels started inside inherit it."""
    keys = {"HF_HUB_CACHE": str(cache), "HF_HOME": str(Path(cache).parent), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    if torch_home is not None:
        keys["TORCH_HOME"] = str(torch_home)
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
