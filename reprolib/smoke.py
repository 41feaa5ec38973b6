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
REGISTRY = ARCHS_DIR / "models.json"
#: Where each kind of model keeps its config inside its folder (an SD pipeline: one per part).
PART_CONFIG = {"scheduler": "scheduler/scheduler_config.json", "feature_extractor": "feature_extractor/preprocessor_config.json"}


class SmokeError(RuntimeError):
    """A model id without a shipped architecture, or a stage whose outputs are missing or wrong."""


# --------------------------------------------------------------------------- the shipped architectures

def registry(path: Path = REGISTRY) -> dict[str, dict[str, Any]]:
    """Model id → how its random copy is built (``data/archs/models.json``)."""
    return json.loads(Path(path).read_text())


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
