"""MultiGen (stage 03): prompt sets, image generation, MG-k scores and their statistics.

The original pipeline (mlpc-ucsd/TokenCompose ``multigen/``) is three scripts: ``gen_image_dist.py``
(10 images per prompt with ``StableDiffusionPipeline`` defaults), ``gen_json_dist.py`` (OWLv2 detections,
see :mod:`reprolib.detection`) and ``gen_multigen_scores.py`` (MG1–MG5). This module reproduces them
with these differences, each with a switch back to the original:

* **Seeds.** The original never seeded its pipeline. Here image ``j`` of prompt ``p`` starts from noise
  drawn by a CPU generator seeded from ``(profile seed, p, j)`` (:func:`image_seed`), so any image can be
  regenerated alone (:func:`regenerate_image`) and every checkpoint sees the same initial noise, which
  makes the paired tests between checkpoints sharper. There is no "unseeded" switch: it would only
  make results irreproducible.
* **Fast path** (default): fp16/bf16 weights, several prompts per batch, PyTorch SDPA attention.
  ``faithful=True`` restores the original's fp32, one image per call and the classic attention
  processor (its environment, PyTorch 1.13 + diffusers 0.20, had no SDPA). Batched images equal single
  ones up to float noise (tested).
* **Resumable** and **atomic**: images are written as ``<prompt id>_<index>.png`` (the original's names)
  through a temporary file; valid PNGs already there are skipped.
* **Statistics.** Besides the original's mean and std over the image index (:func:`multigen_original`,
  an exact re-implementation, quirks included), 95 % bootstrap CIs over prompts and paired tests between
  checkpoints over the same (prompt, index) cells (paired bootstrap and exact McNemar).

Relative paths in a profile (``output_dir``, ``prompt_mirror``) are relative to the repository root, so a
notebook finds the same files wherever papermill was started.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import Profile, effective_precision, precision_dtype, resolve_device
from .io import (REPO_ROOT, SIGNATURE_FILE, ChecksumError, atomic_save, atomic_write_json, download,
                 remove_stale_temps, repo_path, reset_if_changed)
from .models import (CHECKPOINTS, WORLD, ModelLoadError, SD14, checkpoint_label, load_checkpoint_components,
                     resolve_checkpoint)

DATA_DIR = REPO_ROOT / "data" / "multigen"
MIRROR_ENV = "REPROLIB_MULTIGEN_MIRROR"
NUM_INS = 5                                   # categories per MultiGen prompt
NUM_TO_PERCENT = 100
ATTEND_AND_EXCITE = "attend_and_excite"
#: Our checkpoint aliases → the reported row they reproduce: (study, key) of
#: :func:`reprolib.reported.load_multigen_reported` (the report's rows, or the authors' README for SD1.4).
COUNTERPARTS = {"sd14": ("authors", "SD 1.4"), "tokencompose_a": ("report", "A"), "tokencompose_b": ("report", "B"),
                ATTEND_AND_EXCITE: ("report", "attend_and_excite")}


class MultiGenError(ValueError):
    """Bad MultiGen input: a prompt file, record, category list or checkpoint; the message names it."""


# =========================================================================== prompt sets

@functools.lru_cache(maxsize=1)
def official_sets() -> dict[str, dict[str, Any]]:
    """name → {file, url, sha256, n_prompts, categories} of the official prompt sets (data/multigen)."""
    raw = json.loads((DATA_DIR / "prompt_sets.json").read_text())
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def category_list(name: str) -> list[str]:
    """Category names: ``coco`` (80), ``ade20k`` (150), ``ade20k_multigen`` (100), ``miniworld`` (10), or a .txt path."""
    if name == "miniworld":
        from .miniworld import CATEGORIES
        return list(CATEGORIES)
    path = DATA_DIR / f"{name}_categories.txt" if not name.endswith(".txt") else repo_path(name)
    if not path.is_file():
        raise MultiGenError(f"unknown category list {name!r} (no {path})")
    cats = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(cats)) != len(cats):
        raise MultiGenError(f"{path}: duplicate category names")
    return cats


def prompt_text(categories: Sequence[str]) -> str:
    """MultiGen's wording: 'a photo of a A, a B, a C, a D, and a E.' ('a' even before vowels, as the original)."""
    if len(categories) < 2:
        raise MultiGenError(f"a MultiGen prompt needs at least 2 categories, got {list(categories)}")
    return "a photo of a " + ", a ".join(categories[:-1]) + ", and a " + categories[-1] + "."


def make_record(unique_id: int, categories: Sequence[str]) -> dict[str, Any]:
    """One prompt record in the official JSON format."""
    rec: dict[str, Any] = {"unique_id": unique_id, "num_objects": len(categories)}
    for i, c in enumerate(categories):
        rec[f"obj_{i + 1}_attributes"] = [c]
    rec["text"] = prompt_text(categories)
    return rec


def prompt_categories(record: Mapping[str, Any], num_ins: int = NUM_INS) -> list[str]:
    """The categories the original scores: the first attribute of ``obj_1`` … ``obj_<num_ins>``."""
    return [record[f"obj_{i + 1}_attributes"][0] for i in range(num_ins)]


def validate_records(records: Any, where: str, num_ins: int = NUM_INS) -> list[dict[str, Any]]:
    """Check the official format; ``unique_id`` must equal the position (the original indexes by it)."""
    if not isinstance(records, list) or not records:
        raise MultiGenError(f"{where}: expected a non-empty JSON list of prompt records")
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("text"), str):
            raise MultiGenError(f"{where}: record {i} has no 'text'")
        if r.get("unique_id") != i:
            raise MultiGenError(f"{where}: record {i} has unique_id {r.get('unique_id')!r}, expected {i}")
        for k in range(num_ins):
            a = r.get(f"obj_{k + 1}_attributes")
            if not isinstance(a, list) or not a or not isinstance(a[0], str):
                raise MultiGenError(f"{where}: record {i} lacks obj_{k + 1}_attributes")
    return records


def load_prompt_file(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read and validate a prompt JSON (official format)."""
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MultiGenError(f"{path}: cannot read prompt file: {e}") from None
    return validate_records(records, str(path))


def resolve_mirror(configured: str | None) -> str | None:
    """Where the official files come from: the profile's ``prompt_mirror``, else ``$REPROLIB_MULTIGEN_MIRROR``."""
    return configured or os.environ.get(MIRROR_ENV) or None


def prompt_set_url(name: str, mirror: str | None = None) -> str:
    """The official raw GitHub URL, or the same file name under a mirror folder (file:// URL) or base URL."""
    sets = official_sets()
    if name not in sets:
        raise MultiGenError(f"unknown official prompt set {name!r}; known: {', '.join(sets)}")
    if not mirror:
        return sets[name]["url"]
    if "://" in mirror:
        return mirror.rstrip("/") + "/" + sets[name]["file"]
    return (repo_path(mirror).resolve() / sets[name]["file"]).as_uri()


def fetch_prompt_set(name: str, cache_dir: str | os.PathLike, mirror: str | None = None,
                     progress: bool = False) -> Path:
    """Download (or copy from the mirror) an official prompt file into ``cache_dir``, sha256-verified."""
    spec = official_sets().get(name)
    if spec is None:
        raise MultiGenError(f"unknown official prompt set {name!r}; known: {', '.join(official_sets())}")
    return download(prompt_set_url(name, mirror), Path(cache_dir) / spec["file"], spec["sha256"], progress=progress)


def sample_prompts(categories: Sequence[str], n: int, k: int = NUM_INS, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` prompt records of ``k`` distinct categories each, drawn uniformly with ``numpy`` from ``seed``."""
    cats = list(categories)
    if len(set(cats)) < k:
        raise MultiGenError(f"need at least {k} distinct categories to sample prompts, got {len(set(cats))}")
    if n < 1:
        raise MultiGenError(f"number of prompts must be positive, got {n}")
    rng = np.random.default_rng(seed)
    return [make_record(i, [cats[j] for j in rng.choice(len(cats), size=k, replace=False)]) for i in range(n)]


@dataclass
class PromptSet:
    """The prompts a run uses and where they came from (shown in the notebook)."""
    name: str
    records: list[dict[str, Any]]
    source: str
    fallback: bool = False

    def describe(self) -> str:
        how = "FALLBACK (official file unavailable): " if self.fallback else ""
        return f"{self.name}: {len(self.records)} prompts, {how}{self.source}"


def get_prompt_set(name: str, cache_dir: str | os.PathLike, mirror: str | None = None,
                   n_prompts: int | None = None, allow_fallback: bool = False, seed: int = 0) -> PromptSet:
    """An official set (first ``n_prompts``), or a set sampled from a category list for any other name.

    With ``allow_fallback`` (the tiny profile) an official set that cannot be fetched is replaced by a
    seeded sample over the same categories, and the returned set says so.
    """
    if name in official_sets():
        try:
            path = fetch_prompt_set(name, cache_dir, resolve_mirror(mirror))
            recs = load_prompt_file(path)
            src = f"official, sha256-verified, from {prompt_set_url(name, resolve_mirror(mirror))}"
            return PromptSet(name, recs[:n_prompts] if n_prompts else recs, src)
        except (OSError, ChecksumError) as e:  # download failures and checksum errors
            if not allow_fallback:
                raise
            cats = official_sets()[name]["categories"].removesuffix("_categories.txt")
            n = n_prompts or official_sets()[name]["n_prompts"]
            return PromptSet(name, sample_prompts(category_list(cats), n, seed=seed),
                             f"seeded sample (seed {seed}) over the {cats} categories; reason: {e}", True)
    n = n_prompts or 1000
    return PromptSet(name, sample_prompts(category_list(name), n, seed=seed),
                     f"seeded sample (seed {seed}) over the {name} categories")


# =========================================================================== generation

@dataclass(frozen=True)
class GenSettings:
    """Everything that decides the pixels of an image, besides the checkpoint and the prompt."""
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    resolution: int = 512
    batch_size: int = 8
    precision: str = "fp16"
    safety_checker: bool = True
    seed: int = 0
    attention: str = "sdpa"          # "sdpa" (AttnProcessor2_0) or "classic" (AttnProcessor, the original's)


def gen_settings(profile: Profile, device: str | torch.device | None = None) -> GenSettings:
    """Settings of a profile; ``multigen.faithful`` forces the original's fp32, batch 1, classic attention.

    The precision is the one the images are made in on `device` (default: the profile's), by the one
    policy of :func:`reprolib.config.effective_precision` (fp32 on CPU).
    """
    cfg = profile.multigen
    faithful = cfg.faithful
    precision = effective_precision("fp32" if faithful else cfg.precision, device or _device(profile),
                                    "multigen.precision")
    return GenSettings(cfg.num_inference_steps, cfg.guidance_scale, profile.model.resolution,
                       1 if faithful else cfg.batch_size, precision,
                       cfg.safety_checker, profile.seed, "classic" if faithful else "sdpa")


def torch_dtype(precision: str, device: str | torch.device) -> torch.dtype:
    """fp32/fp16/bf16 → dtype on `device`, by the project's one policy (:func:`reprolib.config.precision_dtype`)."""
    return precision_dtype(precision, device, "multigen.precision")


def image_id(prompt_id: int, index: int) -> str:
    """The original's image name: ``<prompt unique_id>_<image index>``."""
    return f"{prompt_id}_{index}"


def image_seed(prompt_id: int, index: int, base_seed: int = 0) -> int:
    """A 63-bit seed from (base seed, prompt id, image index): stable across runs, machines and batchings."""
    h = hashlib.sha256(f"multigen/{base_seed}/{prompt_id}/{index}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def image_generator(prompt_id: int, index: int, base_seed: int = 0) -> torch.Generator:
    """CPU generator of one image: the initial latents are then the same on every device."""
    return torch.Generator("cpu").manual_seed(image_seed(prompt_id, index, base_seed))


def check_checkpoint(name: str) -> str:
    """Validate a checkpoint name up front; raise one line naming it (alias, hub id, UNet folder, A&E)."""
    if name == ATTEND_AND_EXCITE:
        return name
    source = resolve_checkpoint(name)  # raises ModelLoadError naming unknown ids / missing paths
    p = Path(source).expanduser()
    if p.is_dir() and not ((p / "config.json").is_file() or (p / "unet" / "config.json").is_file()):
        raise ModelLoadError(f"no UNet in checkpoint folder {name}: expected config.json or unet/config.json")
    return source


def category_token_indices(tokenizer, text: str, categories: Sequence[str]) -> list[int]:
    """Token positions (BOS = 0) of each category's last token in ``text``: Attend-and-Excite's subjects.

    The last sub-token is the head noun of multi-word names ("wine **glass**"); categories are matched
    left to right so a repeated name gets its own occurrence.
    """
    ids = tokenizer(text).input_ids
    out, pos = [], 0
    for c in categories:
        sub = tokenizer(c, add_special_tokens=False).input_ids
        start = next((s for s in range(pos, len(ids) - len(sub) + 1) if ids[s:s + len(sub)] == sub), None)
        if start is None:
            raise MultiGenError(f"category {c!r} not found in the tokens of prompt {text!r}")
        out.append(start + len(sub) - 1)
        pos = start + len(sub)
    return out


def load_pipeline(checkpoint: str, base: str, settings: GenSettings, device: str | torch.device,
                  model_seed: int = 0):
    """A diffusers pipeline for a checkpoint: SD1.4 parts with its UNet, PNDM (SD1.4's default scheduler).

    ``attend_and_excite`` is diffusers' ``StableDiffusionAttendAndExcitePipeline`` on SD1.4. The safety
    checker is SD1.4's (the original loaded full hub pipelines, which carry it); the tiny profile has none.
    """
    check_checkpoint(checkpoint)
    dtype = torch_dtype(settings.precision, device)
    is_ae = checkpoint == ATTEND_AND_EXCITE
    cast = None if dtype == torch.float32 else dtype  # fp32 weights load as fp32; casting them only warns
    comps = load_checkpoint_components("sd14" if is_ae else checkpoint, base=base, seed=model_seed, dtype=cast)
    safety, features = None, None
    if settings.safety_checker:
        if base in ("tiny", WORLD):
            warnings.warn("the tiny profile has no safety checker: generating without one", stacklevel=2)
        else:
            safety, features = _load_safety_checker(base, dtype)
    return build_pipeline(comps, settings, device, safety, features, attend_and_excite=is_ae)


def build_pipeline(comps, settings: GenSettings, device: str | torch.device, safety_checker=None,
                   feature_extractor=None, attend_and_excite: bool = False):
    """The generation pipeline of loaded parts, in the settings' precision and attention processor
    (what :func:`load_pipeline` returns; benchmarks pass random parts of the real sizes)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    dtype = torch_dtype(settings.precision, device)
    cast = None if dtype == torch.float32 else dtype
    if attend_and_excite:
        from diffusers import StableDiffusionAttendAndExcitePipeline as cls
    else:
        cls = StableDiffusionPipeline
    pipe = cls(vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer, unet=comps.unet,
               scheduler=comps.scheduler, safety_checker=safety_checker, feature_extractor=feature_extractor,
               requires_safety_checker=False)
    pipe = pipe.to(device=device, dtype=cast)
    if not attend_and_excite:  # A&E installs its own attention processors
        pipe.unet.set_attn_processor(AttnProcessor() if settings.attention == "classic" else AttnProcessor2_0())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_safety_checker(base: str, dtype: torch.dtype):
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor
    src = base if base != "tiny" else SD14
    try:
        return (StableDiffusionSafetyChecker.from_pretrained(src, subfolder="safety_checker", torch_dtype=dtype),
                CLIPImageProcessor.from_pretrained(src, subfolder="feature_extractor"))
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelLoadError(f"cannot load the safety checker of {src}: {first}") from None


@dataclass(frozen=True)
class WorkItem:
    """One image to make: prompt ``prompt_id``'s image number ``index``."""
    prompt_id: int
    index: int
    text: str
    categories: tuple[str, ...]

    @property
    def id(self) -> str:
        return image_id(self.prompt_id, self.index)


def work_items(records: Sequence[Mapping[str, Any]], images_per_prompt: int) -> list[WorkItem]:
    """All (prompt, index) cells in the original's order (prompt-major)."""
    return [WorkItem(r["unique_id"], j, r["text"], tuple(prompt_categories(r)))
            for r in records for j in range(images_per_prompt)]


def is_valid_png(path: str | os.PathLike, size: int | None = None) -> bool:
    """True for a complete, decodable PNG (of ``size``² when given): what resume may skip."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            if im.format != "PNG" or (size is not None and im.size != (size, size)):
                return False
            im.load()
        return True
    except (OSError, ValueError, SyntaxError):
        return False


def _pipe_call(pipe, items: Sequence[WorkItem], settings: GenSettings) -> list:
    kw: dict[str, Any] = dict(
        prompt=[it.text for it in items], num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale, height=settings.resolution, width=settings.resolution,
        generator=[image_generator(it.prompt_id, it.index, settings.seed) for it in items])
    if "token_indices" in _call_params(type(pipe)):
        kw["token_indices"] = [category_token_indices(pipe.tokenizer, it.text, it.categories) for it in items]
    return pipe(**kw).images


@functools.lru_cache(maxsize=8)
def _call_params(cls: type) -> frozenset[str]:
    import inspect
    return frozenset(inspect.signature(cls.__call__).parameters)


def _save_png(path: Path, image) -> None:
    atomic_save(path, lambda p: image.save(p, format="PNG"))


def generate_images(pipe, items: Sequence[WorkItem], out_dir: str | os.PathLike, settings: GenSettings,
                    progress: bool = True, shard: bool = True) -> dict[str, int]:
    """Write ``out_dir/<pid>_<j>.png`` for every item; resumable; sharded over accelerate processes.

    Every process takes its whole batches of the *full* item list (:func:`reprolib.distributed.batch_shard`)
    and skips the valid PNGs already there, so a fresh run makes every image in the batch one process
    would (same pixels for any number of processes), each exactly once, and a killed run restarted with
    any number of processes finishes the rest.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bs = max(1, settings.batch_size)
    remove_stale_temps(out_dir, recursive=False)          # half-written PNGs of a killed run
    mine = list(items)
    state = None
    if shard:
        from .distributed import batch_shard, process_state
        state = process_state(getattr(pipe, "device", "cpu"))
        mine = batch_shard(mine, bs, state.num_processes, state.process_index)
    todo = [it for it in mine if not is_valid_png(out_dir / f"{it.id}.png", settings.resolution)]
    with tqdm(total=len(todo), desc=f"generate {out_dir.parent.name}/{out_dir.name}", disable=not progress,
              leave=False) as bar:
        for start in range(0, len(todo), bs):
            batch = todo[start:start + bs]
            for it, img in zip(batch, _pipe_call(pipe, batch, settings)):
                _save_png(out_dir / f"{it.id}.png", img)
            bar.update(len(batch))
    if state is not None:
        state.wait_for_everyone()
    return {"done": len(todo), "skipped": len(mine) - len(todo)}


def regenerate_image(pipe, record: Mapping[str, Any], index: int, settings: GenSettings):
    """Image ``index`` of a prompt, alone (batch 1): the seed makes it the one a full run wrote."""
    it = WorkItem(record["unique_id"], index, record["text"], tuple(prompt_categories(record)))
    return _pipe_call(pipe, [it], settings)[0]


def is_blacked_out(path: str | os.PathLike) -> bool:
    """An all-black image: what the safety checker leaves in place of a flagged one."""
    from PIL import Image
    with Image.open(path) as im:
        return int(np.asarray(im.convert("RGB")).max()) == 0


def count_blacked_out(image_dir: str | os.PathLike) -> int:
    """How many PNGs of a folder were blacked out (counted from the files, so it survives resumes)."""
    return sum(is_blacked_out(p) for p in sorted(Path(image_dir).glob("*_*.png")))


# =========================================================================== scoring (the original)

def multigen_original(results: Mapping[str, Mapping[str, Sequence]], text_data: Sequence[Mapping[str, Any]],
                      threshold: float = 0.1, num_ins: int = NUM_INS, img_per_prompt: int = 10
                      ) -> tuple[list[float], np.ndarray]:
    """MG_1..MG_num_ins (%) and their std exactly as ``gen_multigen_scores.get_multigen`` computes them.

    Per image: the *set* of detected classes with score > ``threshold`` intersected with the *set* of the
    prompt's categories; its size c adds one to MG_1..MG_c. MG_k = 100 · count / number of images. The
    std is over the image index j: for each j the float32 rate ``100 · count_j / (n_images / img_per_prompt)``,
    then ``np.std`` (population std). Quirks kept: denominators use ``len(results)`` (so missing images
    shrink them), float32 accumulation, a category named twice counts once.
    """
    mg_n = [0] * num_ins
    mg_std = np.zeros((img_per_prompt, num_ins), dtype=np.float32)
    for img_id, rr in results.items():
        pid, j = (int(x) for x in img_id.split("_")[:2])
        obj_list = prompt_categories(text_data[pid], num_ins)
        classes, scores = rr["classes"], rr["scores"]
        if len(classes) != len(scores):
            raise MultiGenError(f"detections of image {img_id}: {len(classes)} classes but {len(scores)} scores")
        detected = [classes[i] for i in range(len(scores)) if scores[i] > threshold]
        for k in range(len(set(detected) & set(obj_list))):
            mg_n[k] += 1
            mg_std[j][k] += 1
    mg_std = (NUM_TO_PERCENT * mg_std) / (len(results) / img_per_prompt)
    return [NUM_TO_PERCENT * m / len(results) for m in mg_n], np.std(mg_std, axis=0)


def found_count(dets: Mapping[str, Sequence], categories: Sequence[str], threshold: float = 0.1) -> int:
    """How many distinct prompt categories were detected with score > ``threshold`` in one image."""
    detected = {c for c, s in zip(dets["classes"], dets["scores"]) if s > threshold}
    return len(detected & set(categories))


def cell_table(results: Mapping[str, Mapping[str, Sequence]], records: Sequence[Mapping[str, Any]],
               threshold: float = 0.1, num_ins: int = NUM_INS) -> pd.DataFrame:
    """One row per image: prompt_id, image_index, n_found (distinct prompt categories detected)."""
    rows = []
    for img_id, rr in results.items():
        pid, j = (int(x) for x in img_id.split("_")[:2])
        rows.append((pid, j, found_count(rr, prompt_categories(records[pid], num_ins), threshold)))
    return pd.DataFrame(rows, columns=["prompt_id", "image_index", "n_found"]).sort_values(
        ["prompt_id", "image_index"], ignore_index=True)


# =========================================================================== statistics

def _per_prompt(cells: pd.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Successes (n_found ≥ k) and image counts per prompt."""
    g = (cells["n_found"] >= k).groupby(cells["prompt_id"])
    return g.sum().to_numpy(float), g.size().to_numpy(float)


def bootstrap_ci(cells: pd.DataFrame, k: int, n_boot: int = 2000, seed: int = 0, level: float = 0.95
                 ) -> tuple[float, float]:
    """Percentile CI (%) of MG_k resampling *prompts* with replacement (images of a prompt are not independent)."""
    s, n = _per_prompt(cells, k)
    if len(s) == 0:
        return (float("nan"), float("nan"))
    idx = np.random.default_rng(seed).integers(0, len(s), size=(n_boot, len(s)))
    boot = NUM_TO_PERCENT * s[idx].sum(1) / n[idx].sum(1)
    a = (1 - level) / 2
    return float(np.quantile(boot, a)), float(np.quantile(boot, 1 - a))


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """Discordant counts (a only, b only) and the exact two-sided McNemar p-value (binomial, p = 1/2)."""
    from scipy.stats import binomtest
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    n10, n01 = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(min(n10, n01), n10 + n01, 0.5).pvalue if n10 + n01 else 1.0
    return n10, n01, float(p)


def paired_test(cells_a: pd.DataFrame, cells_b: pd.DataFrame, k: int, n_boot: int = 2000, seed: int = 0,
                level: float = 0.95) -> dict[str, float]:
    """A vs B on "≥ k found" over the (prompt, index) cells both have.

    ``diff`` = MG_k(A) − MG_k(B) in points; paired bootstrap over prompts gives its CI and a two-sided
    p-value (null: the bootstrap distribution shifted to 0); McNemar's exact test treats cells as
    independent (it ignores the clustering by prompt, so it is the optimistic one of the two). With few
    prompts the bootstrap is coarse: its p-value is at least 1/(n_boot+1) and is that small whenever every
    prompt moves the same way; read it with the CI and ``n_cells``.
    """
    m = cells_a.merge(cells_b, on=["prompt_id", "image_index"], suffixes=("_a", "_b"))
    if m.empty:
        raise MultiGenError("paired test: the two runs share no (prompt, index) cell")
    sa, sb = m["n_found_a"] >= k, m["n_found_b"] >= k
    d = (sa.astype(float) - sb.astype(float)).groupby(m["prompt_id"])
    ds, dn = d.sum().to_numpy(), d.size().to_numpy(float)
    diff = NUM_TO_PERCENT * ds.sum() / dn.sum()
    idx = np.random.default_rng(seed).integers(0, len(ds), size=(n_boot, len(ds)))
    boot = NUM_TO_PERCENT * ds[idx].sum(1) / dn[idx].sum(1)
    a = (1 - level) / 2
    p_boot = (1 + np.sum(np.abs(boot - diff) >= abs(diff) - 1e-12)) / (n_boot + 1)
    n10, n01, p_mc = mcnemar_exact(sa.to_numpy(), sb.to_numpy())
    return {"k": k, "diff": float(diff), "ci_low": float(np.quantile(boot, a)),
            "ci_high": float(np.quantile(boot, 1 - a)), "p_bootstrap": float(min(1.0, p_boot)),
            "p_mcnemar": p_mc, "a_only": n10, "b_only": n01, "n_cells": int(len(m))}


def score_run(results: Mapping[str, Mapping[str, Sequence]], records: Sequence[Mapping[str, Any]],
              threshold: float = 0.1, img_per_prompt: int = 10, n_boot: int = 2000, seed: int = 0,
              num_ins: int = NUM_INS) -> pd.DataFrame:
    """MG_1..MG_5 of one run: the original's mean and std, plus a bootstrap CI over prompts."""
    if not results:
        raise MultiGenError("no detections to score")
    mean, std = multigen_original(results, records, threshold, num_ins, img_per_prompt)
    cells = cell_table(results, records, threshold, num_ins)
    rows = []
    for k in range(1, num_ins + 1):
        lo, hi = bootstrap_ci(cells, k, n_boot, seed)
        rows.append({"k": k, "mean": mean[k - 1], "std": float(std[k - 1]), "ci_low": lo, "ci_high": hi,
                     "n_images": len(results), "n_prompts": int(cells["prompt_id"].nunique())})
    return pd.DataFrame(rows)


# =========================================================================== reported values and tables

def load_reported(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Cited MG values of the authors' README (data/multigen/reported.csv): method, prompt_set, k, mean, std, source."""
    from .reported import ReportedDataError, load_authors_table1
    try:
        return load_authors_table1(path or DATA_DIR / "reported.csv").drop(columns="key")
    except ReportedDataError as e:
        raise MultiGenError(str(e)) from None


def counterparts(checkpoints: Sequence[str], profile: Profile | None = None) -> dict[str, tuple[str, str]]:
    """Our checkpoint → its reported row ``(study, key)`` of :func:`reprolib.reported.load_multigen_reported`.

    None on a tiny profile: its numbers come from another world, and comparing them with reported
    values would mean nothing. Stage 02's export is the report's "retrained" row on real profiles.
    """
    if profile is not None and profile.is_tiny:
        return {}
    out = {c: COUNTERPARTS[c] for c in checkpoints if c in COUNTERPARTS}
    if profile is not None:
        trained = repo_path(Path(profile.train.output_dir) / "unet").resolve()
        out.update({c: ("report", "retrained") for c in checkpoints
                    if c not in out and repo_path(c).resolve() == trained})
    return out


def _cells_frame(scores: pd.DataFrame, value, ks: Sequence[int], labels: Mapping[str, str] | None,
                 prompt_sets: Sequence[str] | None = None) -> pd.DataFrame:
    from .reported import PROMPT_SETS
    prompt_sets = list(prompt_sets or dict.fromkeys(scores["prompt_set"]))
    cols = [("", "Checkpoint")] + [(PROMPT_SETS.get(ps, ps), f"MG{k} (%)") for ps in prompt_sets for k in ks]
    rows = []
    for ckpt in dict.fromkeys(scores["checkpoint"]):
        d = scores[scores["checkpoint"] == ckpt]
        row = [(labels or {}).get(ckpt, ckpt)]
        for ps, k in itertools.product(prompt_sets, ks):
            r = d[(d["prompt_set"] == ps) & (d["k"] == k)]
            row.append(value(r.iloc[0]) if len(r) else None)
        rows.append(row)
    return pd.DataFrame(rows, columns=pd.MultiIndex.from_tuples(cols))


def table1(scores: pd.DataFrame, labels: Mapping[str, str] | None = None, ks: Sequence[int] = (2, 3, 4, 5),
           decimals: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Our own Table 1 (measured rows only): "mean ± std" (the original's std over image indices) per
    prompt set and MG_k, and the numeric means of the same shape (for bold). Rows are labelled with
    ``labels`` (display names); reported rows never appear here (:mod:`reprolib.reported` has them)."""
    from .tables import mean_std
    cells = _cells_frame(scores, lambda r: mean_std(r["mean"], r["std"], decimals), ks, labels)
    means = _cells_frame(scores, lambda r: float(r["mean"]), ks, labels)
    return cells, means


def table1_gt(scores: pd.DataFrame, labels: Mapping[str, str], title: str, notes: Sequence[str] = (),
              ks: Sequence[int] = (2, 3, 4, 5)):
    """:func:`table1` as a book table, best per column in bold."""
    from .tables import best_mask, table
    cells, means = table1(scores, labels, ks)
    value_cols = [c for c in cells.columns if c[0] != ""]
    bold = pd.DataFrame(False, index=cells.index, columns=cells.columns)
    bold[value_cols] = best_mask(means[value_cols]).to_numpy()
    return table(cells, stub="|Checkpoint", stubhead="Checkpoint", bold=bold, title=title,
                 subtitle="MG-k (%): mean ± std over the image indices, as the original computes it.", notes=notes)


def verdicts(scores: pd.DataFrame, reported: pd.DataFrame, pairs: Mapping[str, tuple[str, str]],
             ks: Sequence[int] = (2, 3, 4, 5)) -> pd.DataFrame:
    """Per Table 1 cell: is the reported value inside our 95 % bootstrap interval over prompts?

    ``reported`` is :func:`reprolib.reported.load_multigen_reported`; ``pairs`` maps our checkpoints to
    their reported rows (:func:`counterparts`). For each such checkpoint, prompt set and MG_k: ours
    (mean and CI), reported (mean), their difference, and a verdict — "consistent" when the reported
    mean lies inside our interval, "ours higher" / "ours lower" otherwise. The interval covers prompt
    sampling only, not differences of hardware, precision or software versions.
    """
    rows = []
    for _, r in scores[scores["k"].isin(ks)].iterrows():
        if r["checkpoint"] not in pairs:
            continue
        study, key = pairs[r["checkpoint"]]
        rep = reported[(reported["study"] == study) & (reported["key"] == key)
                       & (reported["prompt_set"] == r["prompt_set"]) & (reported["k"] == r["k"])]
        if rep.empty:
            continue
        rm = float(rep["mean"].iloc[0])
        verdict = ("consistent" if r["ci_low"] <= rm <= r["ci_high"]
                   else "ours higher" if r["ci_low"] > rm else "ours lower")
        rows.append({"checkpoint": r["checkpoint"], "reported as": rep["name"].iloc[0], "prompt_set": r["prompt_set"],
                     "k": int(r["k"]), "ours": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                     "reported": rm, "reported_std": float(rep["std"].iloc[0]), "ours − reported": r["mean"] - rm,
                     "verdict": verdict})
    return pd.DataFrame(rows, columns=["checkpoint", "reported as", "prompt_set", "k", "ours", "ci_low", "ci_high",
                                       "reported", "reported_std", "ours − reported", "verdict"])


def scores_display(scores: pd.DataFrame, labels: Mapping[str, str]) -> pd.DataFrame:
    """All MG-k scores as the book shows them: "mean ± std" (the original's) and "mean [95 % CI]" (ours)."""
    from .reported import PROMPT_SETS
    from .tables import mean_ci, mean_std
    return pd.DataFrame({
        "Prompt set": scores["prompt_set"].map(lambda x: PROMPT_SETS.get(x, x)),
        "Checkpoint": scores["checkpoint"].map(lambda c: labels.get(c, c)), "k": scores["k"].astype(int),
        "MG-k (%), mean ± std over image indices": [mean_std(m, s) for m, s in zip(scores["mean"], scores["std"])],
        "MG-k (%), mean [95 % CI over prompts]": [mean_ci(m, lo, hi) for m, lo, hi in
                                                   zip(scores["mean"], scores["ci_low"], scores["ci_high"])],
        "images": scores["n_images"].astype(int), "prompts": scores["n_prompts"].astype(int),
        "blacked out": scores["blacked_out"].astype(int)})


def paired_display(paired: pd.DataFrame, labels: Mapping[str, str], decimals: int = 2) -> pd.DataFrame:
    """Paired comparisons as the book shows them: the difference with its paired-bootstrap interval."""
    from .reported import PROMPT_SETS
    from .tables import mean_ci, p_value
    return pd.DataFrame({
        "Prompt set": paired["prompt_set"].map(lambda x: PROMPT_SETS.get(x, x)),
        "A": paired["checkpoint_a"].map(lambda c: labels.get(c, c)),
        "B": paired["checkpoint_b"].map(lambda c: labels.get(c, c)), "k": paired["k"].astype(int),
        "MG-k A − B (points) [95 % CI]": [mean_ci(d, lo, hi, decimals) for d, lo, hi in
                                          zip(paired["diff"], paired["ci_low"], paired["ci_high"])],
        "p (paired bootstrap)": paired["p_bootstrap"].map(p_value),
        "p (McNemar, exact)": paired["p_mcnemar"].map(p_value),
        "cells only A / only B / all": [f"{a} / {b} / {n}" for a, b, n in
                                        zip(paired["a_only"], paired["b_only"], paired["n_cells"])]})


def side_by_side(verdict: pd.DataFrame, labels: Mapping[str, str], profile_name: str):
    """Our cells beside the reported ones with the per-cell verdict: one row group per checkpoint,
    rows "ours", "reported", "verdict"; columns (prompt set, MG_k). A book table (``GT``)."""
    from .reported import PROMPT_SETS
    from .tables import mean_ci, mean_std, table
    cols = list(dict.fromkeys(zip(verdict["prompt_set"], verdict["k"])))
    header = pd.MultiIndex.from_tuples([("", "group"), ("", "row")]
                                       + [(PROMPT_SETS.get(ps, ps), f"MG{k} (%)") for ps, k in cols])
    rows = []
    for ckpt, g in verdict.groupby("checkpoint", sort=False):
        cell = {(r.prompt_set, r.k): r for r in g.itertuples()}
        group = labels.get(ckpt, ckpt)
        get = [cell.get(c) for c in cols]
        rows.append([group, f"ours ({profile_name} profile), mean [95 % CI]",
                     *[mean_ci(r.ours, r.ci_low, r.ci_high) if r else None for r in get]])
        rows.append([group, f"reported: {g['reported as'].iloc[0]}",
                     *[mean_std(r.reported, r.reported_std) if r else None for r in get]])
        rows.append([group, "verdict", *[r.verdict if r else None for r in get]])
    return table(pd.DataFrame(rows, columns=header), stub="|row", group="|group", stubhead="",
                 title=f"Ours ({profile_name} profile) beside the reported values",
                 subtitle="Verdict: is the reported mean inside our 95 % bootstrap interval over prompts?")


def tidy(scores: pd.DataFrame, paired: pd.DataFrame, reported: pd.DataFrame | None = None) -> pd.DataFrame:
    """Everything in one long table: prompt_set, checkpoint, other, k, statistic, value, source."""
    id_s = ["prompt_set", "checkpoint", "k"]
    s = scores.melt(id_vars=id_s, value_vars=[c for c in scores.columns if c not in id_s], var_name="statistic")
    s["other"], s["source"] = "", "ours"
    parts = [s]
    if len(paired):
        p = paired.rename(columns={"checkpoint_a": "checkpoint", "checkpoint_b": "other"})
        id_p = ["prompt_set", "checkpoint", "other", "k"]
        p = p.melt(id_vars=id_p, value_vars=[c for c in p.columns if c not in id_p], var_name="statistic")
        p["source"] = "ours (paired)"
        parts.append(p)
    if reported is not None and len(reported):
        r = reported.rename(columns={"method": "checkpoint"}).melt(
            id_vars=["prompt_set", "checkpoint", "k", "source"], value_vars=["mean", "std"], var_name="statistic")
        r["source"] = "reported: " + r["source"]
        r["other"] = ""
        parts.append(r)
    return pd.concat(parts, ignore_index=True)[["prompt_set", "checkpoint", "other", "k", "statistic", "value",
                                                 "source"]]


# =========================================================================== stage runner

@dataclass
class StagePaths:
    """Where stage 03 keeps its files under ``output_dir``."""
    root: Path

    def images(self, prompt_set: str, checkpoint: str) -> Path:
        return self.root / "images" / prompt_set / checkpoint_label(checkpoint)

    def detections(self, prompt_set: str, checkpoint: str) -> Path:
        return self.root / "detections" / prompt_set / checkpoint_label(checkpoint)

    @property
    def prompts(self) -> Path:
        return self.root / "prompts"


def stage_paths(profile: Profile) -> StagePaths:
    return StagePaths(repo_path(profile.multigen.output_dir))


def load_prompt_sets(profile: Profile) -> dict[str, PromptSet]:
    """The profile's prompt sets (official when reachable; the tiny profile falls back to sampling)."""
    mg, paths = profile.multigen, stage_paths(profile)
    out = {}
    for name in mg.prompt_sets:
        ps = get_prompt_set(name, paths.prompts / "official", mg.prompt_mirror, mg.n_prompts,
                            allow_fallback=profile.is_tiny, seed=profile.seed)
        atomic_write_json(paths.prompts / f"{name}.json", ps.records, indent=None)
        out[name] = ps
    return out


def _device(profile: Profile) -> str:
    """The profile's device; under a multi-process launch on GPUs, this process's own GPU."""
    from .distributed import process_state
    device = resolve_device(profile)
    state = process_state(device)
    return str(state.device) if state.num_processes > 1 and profile.device == "auto" else device


def image_signature(checkpoint: str, profile: Profile, settings: GenSettings) -> dict[str, Any]:
    """What a checkpoint's generated images depend on: names, weights (sha256 of local safetensors) and
    every generation setting except the batch size."""
    from dataclasses import asdict

    from .models import BASE, checkpoint_weights
    unet = BASE if checkpoint == ATTEND_AND_EXCITE else checkpoint      # A&E runs on the base's own UNet
    return {"checkpoint": checkpoint, "base": profile.model.pretrained, "model_seed": profile.model.seed,
            **checkpoint_weights(unet, profile.model.pretrained),
            **{k: v for k, v in asdict(settings).items() if k != "batch_size"}}


def run_generation(profile: Profile, prompt_sets: Mapping[str, PromptSet], progress: bool = True) -> pd.DataFrame:
    """Generate every (checkpoint, prompt set) of the profile; returns counts incl. blacked-out images."""
    mg, paths, settings = profile.multigen, stage_paths(profile), gen_settings(profile)
    for c in mg.checkpoints:
        check_checkpoint(c)
    from .distributed import process_state
    device, rows = _device(profile), []
    state = process_state(device)
    for ckpt in mg.checkpoints:
        pipe = load_pipeline(ckpt, profile.model.pretrained, settings, device, profile.model.seed)
        sig = image_signature(ckpt, profile, settings)
        for name, ps in prompt_sets.items():
            d = paths.images(name, ckpt)
            with state.main_process_first():                 # one process compares and deletes, then the rest
                if state.is_main_process and reset_if_changed(d, sig, "*.png"):   # other weights or settings:
                    for f in paths.detections(name, ckpt).glob("*.json"):        # redo, and its detections
                        f.unlink()
            counts = generate_images(pipe, work_items(ps.records, mg.images_per_prompt), d, settings, progress)
            rows.append({"prompt_set": name, "checkpoint": ckpt, **counts, "blacked_out": count_blacked_out(d)})
        del pipe
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return pd.DataFrame(rows)


def run_detection(profile: Profile, prompt_sets: Mapping[str, PromptSet], progress: bool = True,
                  backend: str = "pil", num_workers: int = 0) -> pd.DataFrame:
    """Detect every generated image of the profile (resumable); returns per-run counts."""
    from .detection import detect_folder, load_detector

    mg, paths = profile.multigen, stage_paths(profile)
    device = _device(profile)
    precision = effective_precision("fp32" if mg.faithful else mg.precision, device, "multigen.precision")
    det = load_detector(mg.detector_id, tiny=profile.is_tiny, device=device, precision=precision,
                        backend=backend, seed=profile.model.seed)
    rows = []
    det_sig = {"detector_id": mg.detector_id, "precision": precision, "save_threshold": mg.save_threshold,
               "faithful": mg.faithful, "tiny": profile.is_tiny, "seed": profile.model.seed}
    for ckpt in mg.checkpoints:
        for name, ps in prompt_sets.items():
            images_sig = paths.images(name, ckpt) / SIGNATURE_FILE
            images_sig = json.loads(images_sig.read_text()) if images_sig.is_file() else None
            reset_if_changed(paths.detections(name, ckpt), {**det_sig, "images": images_sig}, "*.json")
            items = [(it.id, paths.images(name, ckpt) / f"{it.id}.png", it.categories)
                     for it in work_items(ps.records, mg.images_per_prompt)]
            counts = detect_folder(det, items, paths.detections(name, ckpt), mg.batch_size, mg.save_threshold,
                                   mg.faithful, num_workers, progress)
            rows.append({"prompt_set": name, "checkpoint": ckpt, **counts})
    return pd.DataFrame(rows)


@dataclass
class MultiGenScores:
    """Outputs of :func:`run_scoring` (also written as CSVs under ``output_dir``)."""
    scores: pd.DataFrame
    paired: pd.DataFrame
    cells: pd.DataFrame
    tidy: pd.DataFrame = field(default_factory=pd.DataFrame)


def run_scoring(profile: Profile, prompt_sets: Mapping[str, PromptSet]) -> MultiGenScores:
    """Scores, paired tests and per-image cells of every run; writes scores/paired/cells/tidy CSVs."""
    from .detection import load_detections

    mg, paths = profile.multigen, stage_paths(profile)
    wanted = {(name, it.id) for name, ps in prompt_sets.items() for it in work_items(ps.records, mg.images_per_prompt)}
    scores, cells = [], {}
    for name, ps in prompt_sets.items():
        for ckpt in mg.checkpoints:
            res = {k: v for k, v in load_detections(paths.detections(name, ckpt)).items() if (name, k) in wanted}
            df = score_run(res, ps.records, mg.detection_threshold, mg.images_per_prompt, mg.n_bootstrap,
                           profile.seed)
            df.insert(0, "checkpoint", ckpt)
            df.insert(0, "prompt_set", name)
            df["blacked_out"] = count_blacked_out(paths.images(name, ckpt))
            df["threshold"] = mg.detection_threshold
            scores.append(df)
            cells[(name, ckpt)] = cell_table(res, ps.records, mg.detection_threshold)
    paired = []
    for name in prompt_sets:
        for a, b in itertools.combinations(mg.checkpoints, 2):
            for k in range(1, NUM_INS + 1):
                paired.append({"prompt_set": name, "checkpoint_a": a, "checkpoint_b": b,
                               **paired_test(cells[(name, a)], cells[(name, b)], k, mg.n_bootstrap, profile.seed)})
    cell_df = pd.concat([c.assign(prompt_set=n, checkpoint=k) for (n, k), c in cells.items()], ignore_index=True)
    out = MultiGenScores(pd.concat(scores, ignore_index=True), pd.DataFrame(paired), cell_df)
    out.tidy = tidy(out.scores, out.paired, load_reported())
    for fname, df in (("scores", out.scores), ("paired", out.paired), ("cells", out.cells), ("tidy", out.tidy)):
        atomic_save(paths.root / f"multigen_{fname}.csv", lambda p, df=df: df.to_csv(p, index=False))
    return out


# =========================================================================== figures

def plot_mg_curves(scores: pd.DataFrame, reported: pd.DataFrame | None = None,
                   pairs: Mapping[str, tuple[str, str]] | None = None, labels: Mapping[str, str] | None = None):
    """MG_k against k, one panel per prompt set, one line per checkpoint with its 95 % CI band.

    With ``reported`` (:func:`reprolib.reported.load_multigen_reported`) and ``pairs`` (:func:`counterparts`),
    each checkpoint's reported counterpart is drawn dashed with × markers. ``labels``: display names.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    labels = dict(labels or {})
    data = scores.assign(checkpoint=scores["checkpoint"].map(lambda c: labels.get(c, c)))
    sets = list(dict.fromkeys(data["prompt_set"]))
    shown = [c for c in dict.fromkeys(scores["checkpoint"])]
    drawn_reported = False
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets) + 1.5, 3.6), sharey=True, squeeze=False)
        names = [labels.get(c, c) for c in shown]
        palette = dict(zip(names, sns.color_palette("colorblind", n_colors=len(names))))
        for ax, ps in zip(axes[0], sets):
            d = data[data["prompt_set"] == ps]
            sns.lineplot(data=d, x="k", y="mean", hue="checkpoint", marker="o", palette=palette, ax=ax,
                         legend=False)
            for name, g in d.groupby("checkpoint", sort=False):
                ax.fill_between(g["k"], g["ci_low"], g["ci_high"], color=palette[name], alpha=0.2, lw=0)
            if reported is not None and pairs:
                r = reported[reported["prompt_set"] == ps]
                for ckpt in shown:
                    if ckpt not in pairs:
                        continue
                    study, key = pairs[ckpt]
                    m = r[(r["study"] == study) & (r["key"] == key)].sort_values("k")
                    if len(m):
                        drawn_reported = True
                        ax.plot(m["k"], m["mean"], ls="--", marker="x", color=palette[labels.get(ckpt, ckpt)],
                                alpha=0.8)
            ax.set(title=ps, xlabel="k (objects found ≥ k)", ylabel="MG-k (%)", xticks=range(1, NUM_INS + 1))
        handles = [plt.Line2D([], [], color=palette[n], marker="o", label=n) for n in names]
        if drawn_reported:
            handles.append(plt.Line2D([], [], color="grey", ls="--", marker="x", label="reported counterpart"))
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
        fig.tight_layout()
    return fig


def image_grid(paths: StagePaths, prompt_set: PromptSet, checkpoints: Sequence[str], prompt_ids: Sequence[int],
               index: int = 0, labels: Mapping[str, str] | None = None):
    """Image ``index`` of a few prompts (columns) for each checkpoint (rows, named by ``labels``), prompts as titles."""
    import textwrap

    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(len(checkpoints), len(prompt_ids), figsize=(2.6 * len(prompt_ids), 2.8 * len(checkpoints)),
                             squeeze=False)
    for r, ckpt in enumerate(checkpoints):
        for c, pid in enumerate(prompt_ids):
            ax = axes[r][c]
            p = paths.images(prompt_set.name, ckpt) / f"{image_id(pid, index)}.png"
            if p.is_file():
                with Image.open(p) as im:
                    ax.imshow(np.asarray(im.convert("RGB")))
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(textwrap.fill(prompt_set.records[pid]["text"], 30), fontsize=7)
            if c == 0:
                ax.set_ylabel(textwrap.fill((labels or {}).get(ckpt, ckpt), 22), fontsize=8)
    fig.tight_layout()
    return fig


# =========================================================================== command line

def main(argv: Sequence[str] | None = None) -> None:
    """``[accelerate launch -m] python -m reprolib.multigen --profile paper [--stage generate] [k=v ...]``.

    Generation is sharded over the launched processes; detection and scoring run in one process.
    """
    import argparse

    from .config import apply_runtime, load_profile

    ap = argparse.ArgumentParser(prog="reprolib.multigen", description=main.__doc__)
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--stage", choices=["generate", "detect", "score", "all"], default="all")
    ap.add_argument("overrides", nargs="*", help="profile overrides as key=value (e.g. multigen.n_prompts=10)")
    args = ap.parse_args(argv)
    over = dict(kv.split("=", 1) for kv in args.overrides)
    from .distributed import process_state
    profile = load_profile(args.profile, over)
    apply_runtime(profile)
    state = process_state(_device(profile))
    with state.main_process_first():                        # one process fetches and writes the prompt files
        sets = load_prompt_sets(profile)
    if state.is_main_process:
        for ps in sets.values():
            print(ps.describe())
    if args.stage in ("generate", "all"):
        counts = run_generation(profile, sets, progress=state.is_local_main_process)
        print(f"generated by process {state.process_index} of {state.num_processes}:",   # one line each
              counts.to_json(orient="records"), flush=True)
    if not state.is_main_process:
        return
    if args.stage in ("detect", "all"):
        print(run_detection(profile, sets).to_string(index=False))
    if args.stage in ("score", "all"):
        print(run_scoring(profile, sets).scores.to_string(index=False))


if __name__ == "__main__":
    main()
