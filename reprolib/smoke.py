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


# --------------------------------------------------------------------------- which models a profile names

def profile_model_ids(P) -> list[str]:
    """Every hub id the profile names (the base, checkpoints, detectors, segmenters, metric networks); the
    flair noun tagger (``data.pos_tagger``) is not a transformers model and is left out (see data/archs/README)."""
    from .models import CHECKPOINTS
    ids = [P.model.pretrained, P.data.detector_id, P.data.sam_id, P.data.caption_clip_id, P.multigen.detector_id,
           P.editing.dino_id, P.editing.clip_id]
    for name in (*P.multigen.checkpoints, *P.attention.checkpoints, *P.editing.checkpoints):
        ids.append(CHECKPOINTS.get(name, name))
    return [i for i in dict.fromkeys(ids) if i not in ("tiny", "miniworld", "base", "attend_and_excite")]


def run_model_ids(P) -> list[str]:
    """The hub ids the stages of profile `P` actually load (the transformers Grounded-SAM only with that backend;
    the caption CLIP is not used by any stage)."""
    skip = {P.data.caption_clip_id}
    if P.data.gsam_backend == "official":
        skip |= {P.data.detector_id, P.data.sam_id}
    return [i for i in profile_model_ids(P) if i not in skip]


# --------------------------------------------------------------------------- local stand-ins of the downloads

SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "tokencompose"


def coco_standins(data_root: Path, n: int, shared: Path = SHARED_DATA, size: tuple[int, int] = (640, 480),
                  seed: int = 0) -> list[dict]:
    """The authors' ``metadata.jsonl`` (the shared copy, sha256-checked by stage 01 as if downloaded) and, for
    its first `n` records, synthetic JPEGs of COCO's usual 640×480 under the records' own file names: stage 01
    finds both present and downloads nothing."""
    import numpy as np
    from PIL import Image

    from .data import coco_sources, read_metadata
    from .io import verify_sha256
    src = shared / "metadata.jsonl"
    if not src.is_file():
        raise SmokeError(f"the authors' metadata.jsonl is needed at {src} (sha256 {coco_sources()['metadata']['sha256']})")
    verify_sha256(src, coco_sources()["metadata"]["sha256"])
    data_root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, data_root / "original_metadata.jsonl")
    rows = read_metadata(src)[:n]
    rng = np.random.default_rng(seed)
    for row in rows:
        w, h = size
        base = rng.integers(0, 256, size=(1, 1, 3))
        noise = rng.integers(-40, 40, size=(h // 8, w // 8, 3))
        img = np.clip(base + np.kron(noise, np.ones((8, 8, 1))), 0, 255).astype(np.uint8)
        dest = data_root / row["file_name"]
        from .io import atomic_save
        atomic_save(dest, lambda p, im=Image.fromarray(img): im.save(p, format="JPEG", quality=90))
    return rows


def attention_prompts_subset(dest: Path) -> Path:
    """The paper's figure prompts (``data/attention_prompts.yaml``) cut to one: the first ``mass`` prompt
    (also one of Fig. 1's) for every figure, so that stage 04 generates it once per checkpoint for all figures."""
    import yaml

    from .viz import PROMPTS_FILE
    raw = yaml.safe_load(Path(PROMPTS_FILE).read_text())
    first = raw["paper"]["mass"][0]
    sub = {"paper": {fig: [json.loads(json.dumps(first))] for fig in raw["paper"]}}   # no YAML aliases
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest, yaml.safe_dump(sub, sort_keys=False))
    return dest


def lpips_backbone_standin(torch_home: Path, seed: int = 0) -> Path:
    """Random ImageNet-SqueezeNet-1.1 weights where torchvision's download would put them (``TORCH_HOME``):
    the LPIPS metric's backbone (its linear heads ship with torchmetrics)."""
    from torchvision.models import SqueezeNet1_1_Weights, squeezenet1_1
    url = SqueezeNet1_1_Weights.IMAGENET1K_V1.url
    dest = torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sd = squeezenet1_1(weights=None).state_dict()
        from .io import atomic_save
        atomic_save(dest, lambda p: torch.save(sd, p))
    return dest


# --------------------------------------------------------------------------- the run

#: Minimal counts of the smoke run: every stage, every code path, the real sizes, as little work as that allows.
SMOKE_COUNTS: dict[str, Any] = {
    "data.limit": 2, "data.gsam_batch_size": 1,
    "train.steps": 1, "train.grad_accum": 1, "train.batch_size": 1, "train.gradient_checkpointing": True,
    "multigen.n_prompts": 1, "multigen.images_per_prompt": 1, "multigen.num_inference_steps": 2,
    "multigen.batch_size": 1, "multigen.n_bootstrap": 20,
    "attention.num_inference_steps": 2, "attention.timesteps": [0, 1], "attention.seeds": [0],
    "attention.mass_prompts": 1, "attention.n_bootstrap": 20, "attention.overhead_repeats": 1,
    "attention.batch_size": 1,
    "editing.limit": 1, "editing.num_inference_steps": 2,
}


def smoke_overrides(root: Path, shared: Path = SHARED_DATA) -> dict[str, Any]:
    """The ``-p`` overrides of a smoke run under `root`: minimal counts, every output under `root`, and the
    downloads' local stand-ins (COCO in ``data.root``, MultiGen prompt files from `shared`, a synthetic
    PIE-Bench, a cut prompt file, random official Grounded-SAM checkpoints); the flair tagger is replaced
    by the lexicon tagger (flair's model is not a transformers architecture)."""
    return {**SMOKE_COUNTS,
            "data.root": str(root / "data"), "data.gsam_checkpoints": str(root / "gsam"), "data.pos_tagger": "lexicon",
            "train.output_dir": str(root / "train"),
            "multigen.output_dir": str(root / "multigen"), "multigen.prompt_mirror": str(shared),
            "attention.output_dir": str(root / "attention"), "attention.prompt_file": str(root / "inputs" / "attention_prompts.yaml"),
            "editing.output_dir": str(root / "editing"), "editing.piebench_root": str(root / "inputs" / "piebench"),
            "report.output_dir": str(root / "report")}


def prepare(root: Path, P, shared: Path = SHARED_DATA, seed: int = 0, log=print) -> dict[str, Any]:
    """Everything the stages would download, written locally under `root`: the hub cache of random models,
    official Grounded-SAM checkpoints of the real sizes, the LPIPS backbone, the data stand-ins."""
    from .gsam_official import write_random_checkpoints
    from .piebench import make_synthetic_piebench
    from .viz import load_prompts
    rows = coco_standins(Path(P.data.root), P.data.limit or 2, shared, seed=seed)
    attention_prompts_subset(Path(P.attention.prompt_file))
    make_synthetic_piebench(Path(P.editing.piebench_root), n=max(P.editing.limit or 1, 1), seed=seed,
                            size=P.editing.resolution or P.model.resolution)
    words = [r["text"] for r in rows] + [n for r in rows for n, _ in r["attn_list"]]
    words += [" ".join(sp.nouns) + " " + sp.prompt for specs in load_prompts("paper", P.attention.prompt_file).values()
              for sp in specs]
    lpips_backbone_standin(root / "torch", seed)
    log(f"random models of the real architectures into {root / 'hf' / 'hub'}:")
    cache = write_hub_cache(root / "hf" / "hub", run_model_ids(P), seed, words, log)
    if P.data.gsam_backend == "official":
        t0 = time.time()
        gsam = Path(P.data.gsam_checkpoints)
        if not (gsam / "gsam_checkpoints.json").is_file():
            write_random_checkpoints(gsam, "full", (P.data.segmenter,), vocabulary=words, seed=seed)
        cache["official Grounded-SAM"] = {"seconds": round(time.time() - t0, 1), "bytes": folder_bytes(gsam),
                                          "snapshot": str(gsam)}
        log(f"  official Grounded-SAM (full size): {cache['official Grounded-SAM']['bytes'] / 2**30:.2f} GiB")
    return cache


@dataclass
class StageReport:
    """One stage of a smoke run: wall time, peak memory of its kernel (the runner's MemoryWatch), checks."""
    stage: str
    status: str = "not run"           # "ok", "failed", "checks failed", "not run"
    seconds: float | None = None
    peak_gib: float | None = None
    checks: list[str] = field(default_factory=list)
    error: str | None = None


def _images(folder: Path, pattern: str = "*.png") -> list[Path]:
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


def _csv_rows(path: Path) -> int:
    import pandas as pd
    if not path.is_file():
        raise SmokeError(f"{path} is missing")
    n = len(pd.read_csv(path))
    if n == 0:
        raise SmokeError(f"{path} has no rows")
    return n


def _sizes(paths: Sequence[Path]) -> set[tuple[int, int]]:
    from PIL import Image
    out = set()
    for p in paths:
        with Image.open(p) as im:
            out.add(im.size)
    return out


def check_stage(stage: str, P) -> list[str]:
    """What stage `stage` must have written for profile `P` (paths, sizes, rows); a :class:`SmokeError` names
    the first thing missing or wrong, else the list of what was checked."""
    from .models import checkpoint_label
    from .train import with_trained
    res = P.model.resolution
    done: list[str] = []
    if stage == "01":
        from .data import load_records
        root = Path(P.data.root)
        recs = load_records(root, image_dir=root, check_files=True)
        if len(recs) != (P.data.limit or len(recs)):
            raise SmokeError(f"stage 01: {len(recs)} records in {root}, expected {P.data.limit}")
        masks = [n.mask for r in recs for n in r.nouns if n.mask is not None]
        for r in recs:
            img = _sizes([r.image])
            bad = [n.mask for n in r.nouns if n.mask is not None and _sizes([n.mask]) != img]
            if bad:
                raise SmokeError(f"stage 01: mask {bad[0]} does not have its image's size {img}")
        done += [f"{len(recs)} records", f"{len(masks)} Grounded-SAM masks, each of its image's size"]
    elif stage == "02":
        out = Path(P.train.output_dir)
        cfg = json.loads((out / "unet" / "config.json").read_text())
        if cfg["block_out_channels"] != [320, 640, 1280, 1280] or cfg["sample_size"] != res // 8:
            raise SmokeError(f"stage 02: exported UNet is not SD1.4's architecture: {out / 'unet' / 'config.json'}")
        if not (out / "unet" / "diffusion_pytorch_model.safetensors").is_file():
            raise SmokeError(f"stage 02: no safetensors weights in {out / 'unet'}")
        n = _csv_rows(out / "log.csv")
        if n != P.train.steps:
            raise SmokeError(f"stage 02: {n} logged steps, expected {P.train.steps}")
        done += [f"exported SD1.4-size UNet ({folder_bytes(out / 'unet') / 2**30:.1f} GiB, safetensors)",
                 f"{n} logged step(s)"]
    elif stage == "03":
        M = P.multigen
        root = Path(M.output_dir)
        ckpts = with_trained(M.checkpoints, P) if M.use_trained else list(M.checkpoints)
        want = (M.n_prompts or 0) * M.images_per_prompt
        for ps in M.prompt_sets:
            for c in ckpts:
                imgs = _images(root / "images" / ps / checkpoint_label(c))
                if len(imgs) != want or _sizes(imgs) != {(res, res)}:
                    raise SmokeError(f"stage 03: {ps}/{checkpoint_label(c)}: {len(imgs)} images of sizes "
                                     f"{_sizes(imgs)}, expected {want} of {res}x{res}")
                dets = _images(root / "detections" / ps / checkpoint_label(c), "*_*.json")   # <prompt>_<index>.json
                if len(dets) != want:
                    raise SmokeError(f"stage 03: {ps}/{checkpoint_label(c)}: {len(dets)} detection files, expected {want}")
        n = _csv_rows(root / "multigen_scores.csv")
        done += [f"{len(M.prompt_sets)} prompt sets x {len(ckpts)} checkpoints x {want} image(s) of {res}x{res}, "
                 "one detection file each", f"multigen_scores.csv: {n} rows"]
    elif stage == "04":
        out = Path(P.attention.output_dir)
        n = _csv_rows(out / "mass.csv")
        samples = sorted(out.glob("samples/*/*.png"))
        if not samples or _sizes(samples) != {(res, res)}:
            raise SmokeError(f"stage 04: samples in {out / 'samples'}: {len(samples)} of sizes {_sizes(samples)}")
        if not (out / "overhead.json").is_file():
            raise SmokeError(f"stage 04: {out / 'overhead.json'} is missing")
        done += [f"mass.csv: {n} rows", f"{len(samples)} samples of {res}x{res}", "overhead.json"]
    elif stage == "05":
        E = P.editing
        out = Path(E.output_dir)
        ckpts = with_trained(E.checkpoints, P) if E.use_trained else list(E.checkpoints)
        n = _csv_rows(out / "scores.csv")
        if n != (E.limit or n) * len(ckpts):
            raise SmokeError(f"stage 05: scores.csv has {n} rows, expected {E.limit} x {len(ckpts)} checkpoints")
        edits = sorted((out / "edits").rglob("*.jpg")) + sorted((out / "edits").rglob("*.png"))
        heights = {h for _, h in _sizes(edits)}
        if len(edits) < len(ckpts) or heights != {E.resolution or res}:
            raise SmokeError(f"stage 05: {len(edits)} edited images of heights {heights} in {out / 'edits'}")
        done += [f"scores.csv: {n} rows", f"{len(edits)} edits ({E.save_as}) of height {E.resolution or res}"]
    elif stage == "06":
        out = Path(P.train.output_dir).parent / "miniworld"
        if not (out / "world_summary.json").is_file():
            raise SmokeError(f"stage 06: {out / 'world_summary.json'} is missing")
        done += ["world_summary.json"]
    elif stage == "07":
        out = Path(P.report.output_dir)
        done += [f"reanalysis.csv: {_csv_rows(out / 'reanalysis.csv')} rows",
                 f"claims_ledger.csv: {_csv_rows(out / 'claims_ledger.csv')} rows"]
    return done


def _gib(n: float) -> float:
    return round(n / 2**30, 2)


def run_smoke(profile: str = "paper", workdir: str | Path | None = None, keep: bool = False,
              only: Sequence[str] | None = None, extra: Mapping[str, Any] | None = None,
              shared: Path = SHARED_DATA, seed: int = 0, log=print) -> dict[str, Any]:
    """Build the random models and stand-ins, run the profile's stages one by one through the runner (offline,
    into `workdir`), check each stage's outputs; returns the report, written to ``<workdir>/smoke.json`` after
    every stage (a run resumed in the same `workdir`, e.g. with `only`, keeps the earlier stages' entries).

    Stops at the first stage that fails (later stages read its outputs); `workdir` is deleted at the end
    unless `keep` (or a stage failed: its partial notebook stays there to read).
    """
    import resource
    import tempfile

    from .config import load_profile
    from .runner import MemoryWatch, StageFailed, discover_stages, run_stages, select_stages
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="reprolib-smoke-"))
    root.mkdir(parents=True, exist_ok=True)
    overrides = {**smoke_overrides(root, shared), **dict(extra or {})}
    P = load_profile(profile, overrides)
    stages = select_stages(discover_stages(), only)
    previous = json.loads((root / "smoke.json").read_text()) if (root / "smoke.json").is_file() else {}
    entries = {s["stage"]: s for s in previous.get("stages", [])}
    report: dict[str, Any] = {"profile": profile, "workdir": str(root), "overrides": overrides,
                              "cpu_count": os.cpu_count(), "load_before": os.getloadavg(), "ok": None}
    t0 = time.time()
    log(f"smoke run of profile {profile!r} in {root}")
    report["models"] = prepare(root, P, shared, seed, log)
    report["prepare_runs"] = previous.get("prepare_runs", []) + [      # a resumed run finds the models built
        {"seconds": round(time.time() - t0, 1), "peak_gib": _gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}]
    report["prepare_seconds"] = sum(r["seconds"] for r in report["prepare_runs"])
    report["prepare_peak_gib"] = max(r["peak_gib"] for r in report["prepare_runs"])

    def save() -> None:
        report["stages"] = [entries.get(st.name, vars(StageReport(st.name))) for st in discover_stages()]
        report["total_seconds"] = round(time.time() - t0, 1)
        report["load_after"] = os.getloadavg()
        atomic_write_json(root / "smoke.json", report)

    failed = False
    with offline_env(root / "hf" / "hub", root / "torch"):
        for st in stages:
            rep = StageReport(st.name)
            entries[st.name] = vars(rep)
            if failed:
                continue
            s0 = time.time()
            try:
                with MemoryWatch() as watch:
                    run_stages(profile, overrides, only=[st.id], stage_dir=root / "stages", log=log)
                rep.status = "ok"
            except StageFailed as e:
                rep.status, rep.error, failed = "failed", str(e), True
            rep.seconds, rep.peak_gib = round(time.time() - s0, 1), _gib(watch.peak_rss)
            if rep.status == "ok":
                try:
                    rep.checks = check_stage(st.id, P)
                except (SmokeError, OSError, ValueError, KeyError) as e:
                    rep.status, rep.error, failed = "checks failed", str(e), True
            rep.checks.append(f"load average {os.getloadavg()[1]:.1f} (5 min) at its end")
            entries[st.name] = vars(rep)
            save()
            log(f"[{st.id}] {rep.status}: {rep.seconds:.0f} s, peak {rep.peak_gib:.1f} GiB"
                + (f"; {rep.error}" if rep.error else ""))
    report["ok"] = not failed                     # every stage asked for ran and passed its checks
    save()
    report["complete"] = all(e["status"] == "ok" for e in report["stages"])
    atomic_write_json(root / "smoke.json", report)
    if not keep and report["ok"]:
        shutil.rmtree(root, ignore_errors=True)
    return report


def report_table(report: Mapping[str, Any]) -> str:
    """The smoke run's per-stage table (Markdown): status, wall time, the kernel's peak memory, what was checked."""
    lines = ["| stage | status | wall time | peak memory | checked |", "| --- | --- | ---: | ---: | --- |",
             f"| random models + stand-ins ({len(report.get('prepare_runs', [1]))} run(s)) | ok | "
             f"{report['prepare_seconds'] / 60:.1f} min | "
             f"{report['prepare_peak_gib']:.1f} GiB | {len(report['models'])} models of the real sizes "
             f"({sum(m['bytes'] for m in report['models'].values()) / 2**30:.1f} GiB) |"]
    for s in report["stages"]:
        t = "–" if s["seconds"] is None else f"{s['seconds'] / 60:.1f} min"
        m = "–" if s["peak_gib"] is None else f"{s['peak_gib']:.1f} GiB"
        lines.append(f"| {s['stage']} | {s['status']} | {t} | {m} | {'; '.join(s['checks']) or (s['error'] or '')} |")
    peak = max([report["prepare_peak_gib"]] + [s["peak_gib"] or 0 for s in report["stages"]])
    total = report["prepare_seconds"] + sum(s["seconds"] or 0 for s in report["stages"])
    lines.append(f"| **total** | {'ok' if report['ok'] else 'FAILED'} | {total / 60:.1f} min | "
                 f"{peak:.1f} GiB | {report['cpu_count']} CPUs, load {report['load_before'][0]:.1f} before, "
                 f"{report['load_after'][0]:.1f} after |")
    return "\n".join(lines)
