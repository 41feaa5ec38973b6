"""Per-token cross-attention maps over the denoising steps, their figures, and a measured companion.

**Recording.** :func:`generate_with_attention` runs diffusers' ``StableDiffusionPipeline`` (or its
img2img sibling) with :func:`reprolib.attention.install_capture` on the chosen layer groups
(``keep_history=True, keep_last=False``). The store keeps one entry per UNet forward, already
averaged over heads and over the layers of each group, detached and on the CPU. With classifier-free
guidance the UNet batch is ``[unconditional, conditional]``; only the conditional half is kept, since
that is the branch the prompt's tokens attend in. Each :class:`AttentionRecord` holds, per group,
``(steps, h, w, 77)`` maps that sum to one over the 77 tokens at every pixel (a softmax row).

**Words.** :func:`prompt_words` splits a prompt into words with their token positions
(:func:`reprolib.tokens.word_spans`). A word split into several tokens is shown as the **sum** of its
tokens' maps, as the original pixel loss sums a word's tokens (``loss_utils.py``). Punctuation tokens
glued to a word ("star," → "star" + ",") are dropped from it: a comma is not part of the object.

**Figures** (seaborn/matplotlib, one style, each function returns a ``Figure``):
:func:`sample_grid` (Figs 1–2), :func:`attention_over_time` (Figs 3–4: rows = words, columns =
steps, checkpoints side by side, each checkpoint's final image in its own column), :func:`mass_figure`.
Maps are heatmaps in a perceptually uniform colormap with one colour scale per row (word) and a colour
bar: ``norm="row"`` shares the scale across steps and checkpoints so that magnitudes compare;
``norm="max"`` divides each map by its own maximum, as prompt-to-prompt's ``show_cross_attention``
(whose code the authors acknowledge) does.

**Attention mass inside the mask** (what the report's Figs 3–4 only show): for a noun with token
set ``T`` and a binary mask ``M`` of its object, ``mass = Σ_p M(p) Σ_{k∈T} A_k(p) / Σ_p Σ_{k∈T} A_k(p)``
at each step. It is exactly the quantity inside TokenCompose's token loss (Eq. 1 is ``(1 - mass)²``
per token). ``chance`` is the mask's area fraction: what a map spread evenly would score. The
question is *where the mask comes from*, since a generated image's layout is not known in advance:

* ``sdedit`` (tiny profile): start the denoising from a real image whose masks are exact (a
  :mod:`reprolib.miniworld` scene), noised to an intermediate step (``strength``), with its own caption
  as the prompt. The layout is then the source scene's, by construction, and the masks are exact. The
  first recorded step is already at ``strength · T`` rather than pure noise, and the layout may drift a
  little while denoising (smaller ``strength``: less drift, fewer noisy steps). Using the exact masks of
  a *different* rendered scene with the same caption for an image generated from noise would be
  meaningless, and the world detector is a classifier without masks, so this is the honest option.
* ``generated`` (paper profile): generate from noise, then segment the final image with a
  text-prompted segmenter (Grounded-SAM, stage 01) for each noun. Nouns the segmenter does not find
  yield no row (an object that was not drawn has no mask), so this variant conditions on the object
  having been generated; the count of missing nouns is reported alongside.

CIs are percentile bootstrap intervals (``scipy.stats.bootstrap``) over prompts: rows are first averaged
within a prompt (over its nouns and seeds), then prompts are resampled. :func:`paired_difference`
compares two checkpoints on the same prompts, seeds and starting noise.
"""
from __future__ import annotations

import statistics
import string
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .attention import install_capture, remove_hooks, split_spatial
from .tokens import word_spans, word_token_indices

PROMPTS_FILE = Path(__file__).resolve().parent.parent / "data" / "attention_prompts.yaml"
MAX_TOKENS = 77
MASK_MODES = ("area", "original")
NORMS = ("max", "row")

Segmenter = Callable[[np.ndarray, Sequence[str]], Mapping[str, np.ndarray]]


# --------------------------------------------------------------------------- prompts and words

@dataclass(frozen=True)
class Word:
    """One whitespace-separated word of a prompt, its token positions (1-based after SOT), noun or not."""
    text: str
    tokens: tuple[int, ...]
    is_noun: bool = False


@dataclass(frozen=True)
class PromptSpec:
    """A prompt of a figure, its nouns (highlighted, measured) and where it comes from."""
    prompt: str
    nouns: tuple[str, ...] = ()
    source: str = ""


def _is_punct(piece: str) -> bool:
    return bool(piece) and not any(ch.isalnum() for ch in piece)


def prompt_words(tokenizer, prompt: str, nouns: Sequence[str] = ()) -> list[Word]:
    """Words of ``prompt`` with their tokens; words of a noun phrase (``"wine glass"``) are marked nouns.

    Punctuation-only tokens are dropped from a word that has others, and punctuation-only words are
    dropped. Raises when the prompt does not fit SD's 77-token context (the pipeline would truncate it).
    """
    n_tokens = len(tokenizer.encode(prompt))
    if n_tokens > MAX_TOKENS:
        raise ValueError(f"prompt has {n_tokens} tokens, more than {MAX_TOKENS}: {prompt!r}")
    noun_words = {w.strip(string.punctuation).lower() for n in nouns for w in n.split()}
    ids = tokenizer.encode(prompt)
    words = []
    for text, toks in word_spans(tokenizer, prompt):
        pieces = [tokenizer.decode([ids[t]]).strip() for t in toks]
        keep = [t for t, p in zip(toks, pieces) if not _is_punct(p)]
        if not keep:
            continue
        clean = text.strip(string.punctuation) or text
        words.append(Word(clean, tuple(keep), clean.lower() in noun_words))
    return words


def load_prompts(profile_name: str, path: str | Path = PROMPTS_FILE) -> dict[str, list[PromptSpec]]:
    """The figure prompts of a profile (``tiny`` or ``paper``) from ``data/attention_prompts.yaml``.

    Returns ``{"fig1": [...], "fig2": [...], "fig3_4": [...], ...}``; unknown profile names fall back to
    ``paper`` (real-weight profiles share its prompts).
    """
    import yaml
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"attention prompts file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    section = raw.get(profile_name, raw.get("paper"))
    if not isinstance(section, Mapping):
        raise ValueError(f"{path}: no prompts for profile {profile_name!r} (nor 'paper')")
    out: dict[str, list[PromptSpec]] = {}
    for fig, items in section.items():
        items = [items] if isinstance(items, Mapping) else items
        specs = []
        for i, it in enumerate(items or []):
            if not isinstance(it, Mapping) or "prompt" not in it:
                raise ValueError(f"{path}: {profile_name}.{fig}[{i}] needs a 'prompt'")
            specs.append(PromptSpec(str(it["prompt"]), tuple(it.get("nouns", ())), str(it.get("source", ""))))
        out[fig] = specs
    return out


# --------------------------------------------------------------------------- recording

@dataclass
class AttentionRecord:
    """One generated image and its conditional cross-attention maps at every denoising step.

    ``maps[group]`` is ``(steps, h, w, 77)`` float32 numpy (so never on an accelerator): mean over
    heads and over the group's layers, conditional branch only; it sums to one over tokens.
    ``timesteps[i]`` is the scheduler timestep of step ``i``.
    """
    prompt: str
    seed: int
    image: np.ndarray
    timesteps: list[int]
    maps: dict[str, np.ndarray]
    checkpoint: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        return len(self.timesteps)

    def group(self, group: str) -> np.ndarray:
        if group not in self.maps:
            raise KeyError(f"no maps recorded for layer group {group!r}; recorded: {sorted(self.maps)}")
        return self.maps[group]

    def token_maps(self, token_sets: Sequence[Sequence[int]], group: str,
                   steps: Sequence[int] | None = None) -> np.ndarray:
        """``(n_steps_selected, n_sets, h, w)``: for each set, the sum of its tokens' maps."""
        m = self.group(group)
        idx = resolve_steps(m.shape[0], steps)
        return combine_tokens(m[idx], token_sets)


def resolve_steps(n_steps: int, steps: Sequence[int] | None) -> list[int]:
    """Step indices (negative counts from the end) → checked non-negative indices; None means all."""
    if steps is None:
        return list(range(n_steps))
    out = []
    for s in steps:
        i = int(s) + n_steps if int(s) < 0 else int(s)
        if not 0 <= i < n_steps:
            raise IndexError(f"step {s} out of range: this run recorded {n_steps} denoising steps")
        out.append(i)
    return out


def combine_tokens(maps: np.ndarray, token_sets: Sequence[Sequence[int]]) -> np.ndarray:
    """``(..., h, w, 77)`` → ``(..., n_sets, h, w)``: per set, the sum of its tokens' maps (as the pixel loss)."""
    out = []
    for k, toks in enumerate(token_sets):
        toks = list(toks)
        if not toks:
            raise ValueError(f"token set {k} is empty")
        bad = [t for t in toks if not 0 <= t < maps.shape[-1]]
        if bad:
            raise IndexError(f"token position {bad[0]} out of range for {maps.shape[-1]} tokens")
        out.append(maps[..., toks].sum(-1))
    return np.stack(out, axis=-3)


def file_label(name: str) -> str:
    """A checkpoint label made safe for a file or folder name."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("_") or "checkpoint"


def _fresh_scheduler(scheduler):
    """A new scheduler of the same kind and config: no state shared between calls."""
    return type(scheduler).from_config(scheduler.config)


def _pipeline(components, img2img: bool):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
    cls = StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline
    pipe = cls(vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
               unet=components.unet, scheduler=_fresh_scheduler(components.scheduler), safety_checker=None,
               feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _device_of(module) -> torch.device:
    return next(module.parameters()).device


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _run_batch(components, prompts: Sequence[str], seeds: Sequence[int], layers: Sequence[str] | None,
               num_inference_steps: int, guidance_scale: float, height: int | None, width: int | None,
               init_images: Sequence[np.ndarray] | None, strength: float) -> tuple[np.ndarray, list[int], list]:
    """One pipeline call; returns uint8 images, the timesteps of the steps, and the store's history."""
    from PIL import Image

    unet = components.unet
    pipe = _pipeline(components, img2img=init_images is not None)
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]  # same noise on any device
    timesteps: list[int] = []

    def on_step(_pipe, i, t, kwargs):
        timesteps.append(int(t))
        return {}

    kw: dict[str, Any] = dict(prompt=list(prompts), num_inference_steps=num_inference_steps,
                              guidance_scale=guidance_scale, generator=generators, output_type="np",
                              callback_on_step_end=on_step)
    if init_images is None:
        kw.update(height=height, width=width)
    else:
        kw.update(image=[Image.fromarray(np.asarray(im, dtype=np.uint8)) for im in init_images], strength=strength)
    before = dict(unet.attn_processors)
    store = install_capture(unet, list(layers), keep_history=True, keep_last=False) if layers else None
    try:
        with torch.no_grad():
            out = pipe(**kw)
    finally:
        if store is not None:
            remove_hooks(store)
            unet.set_attn_processor(before)
    history = store.history if store is not None else []
    if store is not None and len(history) != len(timesteps):
        raise RuntimeError(f"recorded {len(history)} UNet forwards for {len(timesteps)} denoising steps; "
                           "expected one forward per step")
    return _to_uint8(out.images), timesteps, history


def generate_with_attention(components, prompts: str | Sequence[str], seeds: int | Sequence[int] = 0,
                            layers: Sequence[str] = ("up_64",), num_inference_steps: int = 50,
                            guidance_scale: float = 7.5, height: int | None = None, width: int | None = None,
                            init_images: Sequence[np.ndarray] | None = None, strength: float = 1.0,
                            batch_size: int = 1, checkpoint: str = "",
                            progress: bool = False) -> list[AttentionRecord]:
    """Generate one image per (prompt, seed) pair while recording the chosen layers' cross-attention.

    ``seeds`` pairs with ``prompts`` (a single int is used for all); the noise comes from a CPU
    generator seeded per image, so it is the same on any device, for any checkpoint and any batch.
    ``init_images`` (uint8 ``(H, W, 3)``, one per prompt) switches to img2img (SDEdit): denoising starts
    from the image noised to ``strength`` · T. ``components`` must already be on its device and dtype.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = [int(seeds)] * len(prompts) if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    if init_images is not None and len(init_images) != len(prompts):
        raise ValueError(f"{len(init_images)} init_images for {len(prompts)} prompts")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cfg = guidance_scale > 1.0 and components.unet.config.time_cond_proj_dim is None
    records: list[AttentionRecord] = []
    starts = range(0, len(prompts), batch_size)
    for s in tqdm(starts, desc="generate+attention", disable=not progress, leave=False):
        sl = slice(s, s + batch_size)
        images, ts, history = _run_batch(
            components, prompts[sl], seeds[sl], layers, num_inference_steps, guidance_scale, height, width,
            None if init_images is None else init_images[sl], strength)
        n = len(images)
        per_group: dict[str, np.ndarray] = {}
        for g in layers:
            steps = torch.stack([h[g] for h in history])          # (steps, B, HW, 77), CPU, fp32
            if steps.shape[1] != (2 * n if cfg else n):
                raise RuntimeError(f"UNet batch {steps.shape[1]} does not match {n} images (cfg={cfg})")
            cond = steps[:, n:] if cfg else steps
            per_group[g] = split_spatial(cond).numpy()            # (steps, B, h, w, 77)
        for b in range(n):
            records.append(AttentionRecord(
                prompt=prompts[s + b], seed=seeds[s + b], image=images[b], timesteps=list(ts),
                maps={g: np.ascontiguousarray(m[:, b]) for g, m in per_group.items()}, checkpoint=checkpoint,
                meta=dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                          strength=strength if init_images is not None else 1.0,
                          protocol="sdedit" if init_images is not None else "generated")))
    return records


def generate_images(components, prompts: Sequence[str], seeds: int | Sequence[int] = 0,
                    num_inference_steps: int = 50, guidance_scale: float = 7.5, height: int | None = None,
                    width: int | None = None) -> np.ndarray:
    """Plain generation (no capture, fused attention): uint8 ``(N, H, W, 3)``, same noise as above."""
    prompts = list(prompts)
    seeds = [int(seeds)] * len(prompts) if isinstance(seeds, (int, np.integer)) else list(seeds)
    images, _, _ = _run_batch(components, prompts, seeds, None, num_inference_steps, guidance_scale,
                              height, width, None, 1.0)
    return images


# --------------------------------------------------------------------------- capture overhead

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def capture_overhead(components, prompt: str, layers: Sequence[str], num_inference_steps: int,
                     guidance_scale: float = 7.5, repeats: int = 3, seed: int = 0,
                     height: int | None = None, width: int | None = None, warmup: bool = True) -> dict[str, Any]:
    """Median wall time of plain generation vs generation with recording, interleaved, after a warm-up.

    ``warmup=False`` skips the untimed first run of each, for models that already ran in this process.

    "Plain" uses fused SDPA everywhere and keeps nothing; "capture" is :func:`generate_with_attention`
    (explicit softmax on the chosen layers, per-step history moved to the CPU, numpy conversion).
    ``overhead`` is ``capture / plain - 1``; the issue's budget is 20 %.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    from diffusers.models.attention_processor import AttnProcessor2_0
    unet = components.unet
    device = _device_of(unet)
    before = dict(unet.attn_processors)
    unet.set_attn_processor(AttnProcessor2_0())

    def plain() -> None:
        generate_images(components, [prompt], seed, num_inference_steps, guidance_scale, height, width)

    def capture() -> None:
        generate_with_attention(components, prompt, seed, layers, num_inference_steps, guidance_scale,
                                height, width)

    times: dict[str, list[float]] = {"plain": [], "capture": []}
    try:
        if warmup:
            plain(), capture()                                    # kernels, allocator, caches
        for r in range(repeats):                                  # alternate the order: no position bias
            for name, fn in ((("plain", plain), ("capture", capture)) if r % 2 == 0 else
                             (("capture", capture), ("plain", plain))):
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - t0)
    finally:
        unet.set_attn_processor(before)
    p, c = statistics.median(times["plain"]), statistics.median(times["capture"])
    return dict(device=str(device), layers=list(layers), num_inference_steps=num_inference_steps,
                repeats=repeats, plain_s=p, capture_s=c, overhead=c / p - 1.0,
                within_budget=bool(c / p - 1.0 <= 0.20), plain_all=times["plain"], capture_all=times["capture"])


# --------------------------------------------------------------------------- mass inside the mask

def resize_mask(mask: np.ndarray, size: tuple[int, int], mode: str = "area") -> np.ndarray:
    """Binary image-size mask → attention-map grid.

    ``area`` (default): the fraction of each cell the mask covers (area averaging), so that mass is
    counted in proportion to the object's pixels. ``original``: bilinear without antialiasing, then
    ``> 0``, exactly how the original token loss resizes masks (a slightly dilated binary mask).
    """
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
    m = torch.as_tensor(np.asarray(mask), dtype=torch.float32)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {tuple(m.shape)}")
    if mode == "area":
        return F.adaptive_avg_pool2d(m[None, None], size)[0, 0].numpy()
    from .losses import resize_masks
    if size[0] != size[1]:
        raise ValueError(f"original mask resizing needs a square map, got {size}")
    return resize_masks(m[None], size[0], antialias=False)[0].numpy()


def mass_inside(maps: np.ndarray, mask_small: np.ndarray) -> np.ndarray:
    """``(..., h, w)`` maps and an ``(h, w)`` weight mask → fraction of each map's mass inside the mask."""
    if maps.shape[-2:] != mask_small.shape:
        raise ValueError(f"maps of spatial shape {maps.shape[-2:]} vs mask of shape {mask_small.shape}")
    total = maps.sum(axis=(-2, -1))
    inside = (maps * mask_small).sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


def mass_table(records: Sequence[AttentionRecord], masks: Sequence[Mapping[str, np.ndarray]], tokenizer,
               mode: str = "area", prompt_ids: Sequence[Any] | None = None):
    """One row per (record, noun, layer group, step): attention mass inside the noun's mask.

    ``masks[i]`` maps each noun of ``records[i].prompt`` to a boolean image-size mask; the noun's token
    positions are found as the original training code finds them (:func:`word_token_indices`). Nouns
    with an empty mask are skipped. ``prompt_ids`` (default: the prompt text) is the bootstrap unit.
    """
    import pandas as pd

    if len(records) != len(masks):
        raise ValueError(f"{len(records)} records but {len(masks)} mask dicts")
    ids = [r.prompt for r in records] if prompt_ids is None else list(prompt_ids)
    if len(ids) != len(records):
        raise ValueError(f"{len(ids)} prompt_ids for {len(records)} records")
    rows = []
    for rec, mdict, pid in zip(records, masks, ids):
        for noun, mask in mdict.items():
            mask = np.asarray(mask, dtype=bool)
            if not mask.any():
                continue
            toks = word_token_indices(tokenizer, rec.prompt, noun)
            for group, maps in rec.maps.items():
                small = resize_mask(mask, maps.shape[1:3], mode)
                frac = mass_inside(combine_tokens(maps, [toks])[:, 0], small)
                chance = float(small.mean())
                for step, (t, v) in enumerate(zip(rec.timesteps, frac)):
                    rows.append(dict(checkpoint=rec.checkpoint, prompt_id=pid, prompt=rec.prompt, seed=rec.seed,
                                     noun=noun, layer=group, step=step, timestep=t, mass=float(v), chance=chance))
    cols = ["checkpoint", "prompt_id", "prompt", "seed", "noun", "layer", "step", "timestep", "mass", "chance"]
    return pd.DataFrame(rows, columns=cols)


def _without_maps(records: Sequence[AttentionRecord]) -> list[AttentionRecord]:
    return [replace(r, maps={}) for r in records]


def _concat_tables(tables: list) -> "pd.DataFrame":  # noqa: F821
    """Chunks' mass tables as one (the empty table's columns when there is nothing)."""
    import pandas as pd
    nonempty = [t for t in tables if len(t)]
    return pd.concat(nonempty, ignore_index=True) if nonempty else mass_table([], [], None)


def _sdedit_chunks(components, scenes: Sequence, seeds: int | Sequence[int], layers: Sequence[str],
                   num_inference_steps: int, guidance_scale: float, strength: float, checkpoint: str,
                   batch_size: int, progress: bool, desc: str):
    """SDEdit from `scenes` in chunks of `batch_size`: yields ``(scenes, records, prompt_ids)`` per chunk, so
    that a caller scores each chunk and drops its maps before the next (memory bounded by the chunk)."""
    seeds = [int(seeds)] * len(scenes) if isinstance(seeds, (int, np.integer)) else list(seeds)
    if len(seeds) != len(scenes):
        raise ValueError(f"{len(seeds)} seeds for {len(scenes)} scenes")
    for s in tqdm(range(0, len(scenes), max(1, batch_size)), desc=desc, disable=not progress, leave=False):
        chunk = scenes[s:s + batch_size]
        records = generate_with_attention(
            components, [sc.caption for sc in chunk], seeds[s:s + batch_size], layers, num_inference_steps,
            guidance_scale, init_images=[sc.image for sc in chunk], strength=strength, batch_size=batch_size,
            checkpoint=checkpoint)
        yield chunk, records, list(range(s, s + len(chunk)))


def sdedit_mass(components, scenes: Sequence, seeds: int | Sequence[int], layers: Sequence[str],
                num_inference_steps: int, guidance_scale: float, strength: float, checkpoint: str = "",
                mode: str = "area", batch_size: int = 8, progress: bool = False):
    """Tiny-profile protocol: SDEdit from :mod:`reprolib.miniworld` scenes, scored on their exact masks.

    Each scene's caption is the prompt and its image, noised to ``strength``, the start; the scene's
    visible masks are the ground truth. Scenes go through in chunks of `batch_size` (``attention.batch_size``)
    and each chunk's maps are dropped once scored, so memory does not grow with the number of scenes.
    Returns ``(table, records)``: the records keep image, timesteps and meta, not maps; ``prompt_id`` is
    the scene index.
    """
    tables, kept = [], []
    for chunk, records, ids in _sdedit_chunks(components, scenes, seeds, layers, num_inference_steps,
                                              guidance_scale, strength, checkpoint, batch_size, progress,
                                              "SDEdit mass"):
        tables.append(mass_table(records, [sc.masks for sc in chunk], components.tokenizer, mode, prompt_ids=ids))
        kept += _without_maps(records)
    return _concat_tables(tables), kept


#: The roles a prompt's 77 token positions play, in the order the diagnosis tables show them.
TOKEN_ROLES = ("BOS", "nouns", "other words", "EOS and padding")


def token_roles(tokenizer, prompt: str, nouns: Sequence[str]) -> dict[str, list[int]]:
    """Token positions of `prompt` by role. BOS matters on its own: in CLIP-conditioned UNets it is the
    attention sink that soaks up most of each softmax row; EOS and the padding after it carry the whole
    sentence (CLIP's causal mask), so attention there is text information without a place."""
    from .tokens import word_token_indices
    n = min(len(tokenizer(prompt).input_ids), tokenizer.model_max_length)     # BOS + word tokens + EOS
    noun_toks = sorted({t for noun in nouns for t in word_token_indices(tokenizer, prompt, noun)})
    others = [t for t in range(1, n - 1) if t not in set(noun_toks)]
    return {"BOS": [0], "nouns": noun_toks, "other words": others,
            "EOS and padding": list(range(n - 1, tokenizer.model_max_length))}


def flow_table(records: Sequence[AttentionRecord], nouns: Sequence[Sequence[str]], tokenizer,
               prompt_ids: Sequence[Any] | None = None):
    """One row per (record, layer group, step, role): the share of the conditional cross-attention that
    goes to that role's tokens (:func:`token_roles`), averaged over pixels. Shares sum to one over the roles."""
    import pandas as pd
    if len(records) != len(nouns):
        raise ValueError(f"{len(records)} records but {len(nouns)} noun lists")
    ids = [r.prompt for r in records] if prompt_ids is None else list(prompt_ids)
    rows = []
    for rec, ns, pid in zip(records, nouns, ids):
        roles = token_roles(tokenizer, rec.prompt, ns)
        for group, maps in rec.maps.items():
            per_token = maps.astype(np.float64).mean(axis=(1, 2))            # (steps, 77)
            for role, toks in roles.items():
                share = per_token[:, toks].sum(-1) if toks else np.zeros(len(per_token))
                rows += [dict(checkpoint=rec.checkpoint, prompt_id=pid, layer=group, step=i,
                              timestep=rec.timesteps[i], role=role, share=float(v)) for i, v in enumerate(share)]
    return pd.DataFrame(rows, columns=["checkpoint", "prompt_id", "layer", "step", "timestep", "role", "share"])


def sdedit_flow(components, scenes: Sequence, seeds: int | Sequence[int], layers: Sequence[str],
                num_inference_steps: int, guidance_scale: float, strength: float, checkpoint: str = "",
                mode: str = "area", batch_size: int = 8, progress: bool = False):
    """Where the text conditioning goes, from one SDEdit pass over `scenes`: ``(mass, flow)``, the
    :func:`mass_table` and the :func:`flow_table` of every chunk (maps dropped once scored)."""
    import pandas as pd
    mass, flow = [], []
    for chunk, records, ids in _sdedit_chunks(components, scenes, seeds, layers, num_inference_steps,
                                              guidance_scale, strength, checkpoint, batch_size, progress,
                                              "SDEdit flow"):
        mass.append(mass_table(records, [sc.masks for sc in chunk], components.tokenizer, mode, prompt_ids=ids))
        flow.append(flow_table(records, [sc.categories for sc in chunk], components.tokenizer, ids))
    return _concat_tables(mass), pd.concat(flow, ignore_index=True)


def generated_mass(components, specs: Sequence[PromptSpec], seeds: Sequence[int], segment: Segmenter,
                   layers: Sequence[str], num_inference_steps: int, guidance_scale: float,
                   checkpoint: str = "", mode: str = "area", batch_size: int = 1, progress: bool = False,
                   height: int | None = None, width: int | None = None):
    """Paper-profile protocol: generate from noise, segment each noun in the final image, score.

    ``segment(image, nouns)`` returns ``{noun: bool mask}`` for the nouns it found (Grounded-SAM in
    stage 01). (prompt, seed) pairs go through in chunks of `batch_size` (``attention.batch_size``), each
    chunk's maps dropped once scored. Returns ``(table, records, missing)``: the records keep image,
    timesteps and meta, not maps; ``missing`` lists (prompt index, seed, noun) the segmenter did not
    find, which the table cannot score.
    """
    pairs = [(i, sp, int(s)) for i, sp in enumerate(specs) for s in seeds]
    tables, kept, missing = [], [], []
    step = max(1, batch_size)
    for c in tqdm(range(0, len(pairs), step), desc="generated mass", disable=not progress, leave=False):
        chunk = pairs[c:c + step]
        records = generate_with_attention(components, [p[1].prompt for p in chunk], [p[2] for p in chunk], layers,
                                          num_inference_steps, guidance_scale, height, width, batch_size=step,
                                          checkpoint=checkpoint)
        masks = []
        for (i, sp, s), rec in zip(chunk, records):
            found = dict(segment(rec.image, list(sp.nouns)))
            masks.append({n: found[n] for n in sp.nouns if n in found and np.asarray(found[n]).any()})
            missing += [(i, s, n) for n in sp.nouns if n not in masks[-1]]
        tables.append(mass_table(records, masks, components.tokenizer, mode, prompt_ids=[p[0] for p in chunk]))
        kept += _without_maps(records)
    return _concat_tables(tables), kept, missing


def gsam_segmenter(gsam) -> Segmenter:
    """Adapt stage 01's :class:`reprolib.gsam.GroundedSAM` to ``segment(image, nouns) -> {noun: mask}``."""
    from PIL import Image

    def segment(image: np.ndarray, nouns: Sequence[str]) -> Mapping[str, np.ndarray]:
        return gsam.masks_for([Image.fromarray(np.asarray(image, dtype=np.uint8))], [list(nouns)])[0]
    return segment


# --------------------------------------------------------------------------- statistics

def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap CI of ``values``; the CI is NaN with fewer than two values."""
    from scipy.stats import bootstrap
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if x.size < 2:
        return mean, float("nan"), float("nan")
    if np.all(x == x[0]):
        return mean, mean, mean
    res = bootstrap((x,), np.mean, n_resamples=n_boot, confidence_level=level, method="percentile",
                    random_state=np.random.default_rng(seed), vectorized=True)
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


def _check_columns(df, cols: Sequence[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"table has no column {missing[0]!r}; columns: {list(df.columns)}")


def summarize_mass(df, by: Sequence[str] = ("checkpoint", "layer", "step"), unit: str = "prompt_id",
                   n_boot: int = 2000, level: float = 0.95, seed: int = 0):
    """Mean mass and bootstrap CI over ``unit`` (prompts) for each ``by`` cell, with the chance level.

    Rows are averaged within (cell, unit) first (over nouns, seeds and whatever ``by`` leaves out),
    then units are resampled. Columns: ``by``…, ``mass``, ``lo``, ``hi``, ``chance``, ``n``.
    """
    import pandas as pd
    by = list(by)
    _check_columns(df, by + [unit, "mass", "chance"])
    per_unit = df.groupby(by + [unit], sort=True)[["mass", "chance"]].mean().reset_index()
    rows = []
    for key, g in per_unit.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        mean, lo, hi = bootstrap_ci(g["mass"].to_numpy(), n_boot, level, seed)
        rows.append(dict(zip(by, key), mass=mean, lo=lo, hi=hi, chance=float(g["chance"].mean()), n=len(g)))
    return pd.DataFrame(rows, columns=by + ["mass", "lo", "hi", "chance", "n"])


def paired_difference(df, a: str, b: str, by: Sequence[str] = ("layer", "step"), unit: str = "prompt_id",
                      n_boot: int = 2000, level: float = 0.95, seed: int = 0):
    """Mass of checkpoint ``b`` minus ``a`` on the same (prompt, seed, noun, layer, step), CI over prompts.

    Only pairs present for both checkpoints count. Columns: ``by``…, ``diff``, ``lo``, ``hi``, ``n``.
    """
    import pandas as pd
    by = list(by)
    _check_columns(df, by + [unit, "checkpoint", "seed", "noun", "layer", "step", "mass"])
    for c in (a, b):
        if not (df["checkpoint"] == c).any():
            raise KeyError(f"no rows for checkpoint {c!r}; have {sorted(df['checkpoint'].unique())}")
    keys = sorted(set(by + [unit, "seed", "noun", "layer", "step"]))
    wide = df[df["checkpoint"].isin([a, b])].pivot_table(index=keys, columns="checkpoint", values="mass")
    wide = wide.dropna(subset=[a, b]).reset_index()
    wide["diff"] = wide[b] - wide[a]
    per_unit = wide.groupby(by + [unit], sort=True)["diff"].mean().reset_index()
    rows = []
    for key, g in per_unit.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        mean, lo, hi = bootstrap_ci(g["diff"].to_numpy(), n_boot, level, seed)
        rows.append(dict(zip(by, key), diff=mean, lo=lo, hi=hi, n=len(g)))
    return pd.DataFrame(rows, columns=by + ["diff", "lo", "hi", "n"])


def mass_display(df):
    """A :func:`summarize_mass` or :func:`paired_difference` table as the book shows it: the estimate
    with its interval as one "mean [lo, hi]" cell, the chance level beside it, readable headers."""
    import pandas as pd

    from .tables import mean_ci
    value = "mass" if "mass" in df.columns else "diff"
    out = df.drop(columns=[c for c in (value, "lo", "hi", "chance", "n") if c in df.columns]).copy()
    out.columns = [str(c).replace("_", " ").capitalize() for c in out.columns]
    head = "Mass inside mask [95 % CI]" if value == "mass" else "Difference in mass [95 % CI]"
    digits = 3 if value == "mass" else 4                      # differences are small: one more digit
    out[head] = [mean_ci(m, lo, hi, digits) for m, lo, hi in zip(df[value], df["lo"], df["hi"])]
    if "chance" in df.columns:
        out["Chance (mask area)"] = df["chance"].round(3).to_numpy()
    out["Prompts"] = df["n"].astype(int).to_numpy()
    return pd.DataFrame(out).reset_index(drop=True)


# --------------------------------------------------------------------------- figures

_STYLE = dict(style="white", context="paper")
CMAP = "viridis"        # perceptually uniform (the original figures' rainbow "jet" is not)
NOUN_COLOR = "#c0392b"


def _style():
    """Context managers giving every figure the same seaborn look without touching global rcParams."""
    import contextlib
    import seaborn as sns
    stack = contextlib.ExitStack()
    stack.enter_context(sns.axes_style(_STYLE["style"]))
    stack.enter_context(sns.plotting_context(_STYLE["context"]))
    return stack


def freeze_layout(fig):
    """Fix a constrained-layout figure's geometry: every later render gives the same pixels.

    Constrained layout re-solves at each draw and the first draw moves things (colour bars), so the
    PNG that ``myst_nb.glue`` stores and the one the notebook displays would differ; the book only ships
    images that its stage notebook pages display, so a glued figure whose twin differs is lost.
    """
    fig.canvas.draw()
    fig.set_layout_engine("none")
    return fig


def checkpoint_palette(names: Sequence[str]) -> dict[str, Any]:
    """One colour per checkpoint, stable across the stage's figures."""
    import seaborn as sns
    return dict(zip(names, sns.color_palette("colorblind", max(len(names), 1))))


def _blank(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _wrap(text: str, width: int = 28) -> str:
    import textwrap
    return "\n".join(textwrap.wrap(text, width)) or text


def sample_grid(images: Mapping[str, Sequence[Sequence[np.ndarray]]], prompts: Sequence[str],
                seeds: Sequence[int], panel: float = 1.6):
    """Figs 1–2: rows = prompts, columns = checkpoints × seeds (same seeds for every checkpoint).

    ``images[checkpoint][prompt_index][seed_index]`` is a uint8 ``(H, W, 3)`` image.
    """
    import matplotlib.pyplot as plt
    ckpts = list(images)
    if not ckpts or not prompts or not seeds:
        raise ValueError("sample_grid needs at least one checkpoint, prompt and seed")
    for c in ckpts:
        if len(images[c]) != len(prompts) or any(len(row) != len(seeds) for row in images[c]):
            raise ValueError(f"checkpoint {c!r}: expected {len(prompts)} prompts × {len(seeds)} seeds of images")
    n_rows, n_cols = len(prompts), len(ckpts) * len(seeds)
    with _style():
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel * n_cols + 1.6, panel * n_rows), squeeze=False)
        for r, prompt in enumerate(prompts):
            for ci, c in enumerate(ckpts):
                for si, s in enumerate(seeds):
                    ax = axes[r, ci * len(seeds) + si]
                    ax.imshow(images[c][r][si])
                    _blank(ax)
                    if r == 0:
                        ax.set_title(f"{_wrap(c, 18)}\nseed {s}", fontsize=7)
            axes[r, 0].set_ylabel(_wrap(prompt), fontsize=7, rotation=0, ha="right", va="center")
        fig.tight_layout()
    return fig


def _upsample(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.as_tensor(m, dtype=torch.float32)[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def attention_over_time(records: Mapping[str, AttentionRecord], words: Sequence[Word], group: str,
                        steps: Sequence[int], overlay: bool = False, norm: str = "row",
                        show_image: bool = True, alpha: float = 0.6, panel: float = 1.1):
    """Figs 3–4: rows = words, columns = steps; checkpoints side by side, nouns highlighted.

    Maps are heatmaps in a perceptually uniform colormap (:data:`CMAP`) with **one colour scale per
    row** and its colour bar at the row's end: ``norm="row"`` (default) shows attention probabilities
    (summed over the word's tokens) from 0 to the word's maximum over steps and checkpoints, so
    magnitudes compare along a row; ``norm="max"`` divides each map by its own maximum (prompt-to-prompt's
    ``show_cross_attention``), so the bar reads "fraction of the map's maximum". Each checkpoint's final
    image has its own column (top row), not under the maps; ``overlay=True`` restores drawing the maps
    over it.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    ckpts = list(records)
    if not ckpts or not words or not steps:
        raise ValueError("attention_over_time needs at least one record, word and step")
    n_first = records[ckpts[0]].n_steps
    for c in ckpts:
        if records[c].n_steps != n_first:
            raise ValueError(f"record {c!r} has {records[c].n_steps} steps, {ckpts[0]!r} has {n_first}")
    idx = resolve_steps(n_first, steps)
    tokens = [w.tokens for w in words]
    wmaps = {c: records[c].token_maps(tokens, group, idx) for c in ckpts}      # (S, W, h, w)
    row_max = np.max([wmaps[c].max(axis=(0, 2, 3)) for c in ckpts], axis=0)   # (W,)
    block = len(idx) + int(show_image)
    n_cols = block * len(ckpts)
    with _style():
        fig = plt.figure(figsize=(panel * n_cols + 1.8, panel * len(words) + 0.9), layout="constrained")
        gs = fig.add_gridspec(len(words), n_cols + 1, width_ratios=[1.0] * n_cols + [0.08])
        for wi, word in enumerate(words):
            vmax = 1.0 if norm == "max" else float(row_max[wi]) or 1.0
            scale = Normalize(0.0, vmax)
            for ci, c in enumerate(ckpts):
                rec = records[c]
                for si, step in enumerate(idx):
                    ax = fig.add_subplot(gs[wi, ci * block + si])
                    m = wmaps[c][si, wi]
                    if norm == "max":
                        m = m / m.max() if m.max() > 0 else m
                    if overlay:
                        ax.imshow(rec.image)
                        ax.imshow(_upsample(m, rec.image.shape[:2]), cmap=CMAP, norm=scale, alpha=alpha)
                    else:
                        ax.imshow(m, cmap=CMAP, norm=scale, interpolation="nearest")
                    _blank(ax)
                    if si == 0 and ci == 0:
                        ax.set_ylabel(word.text, rotation=0, ha="right", va="center", fontsize=9,
                                      color=NOUN_COLOR if word.is_noun else "black",
                                      fontweight="bold" if word.is_noun else "normal")
                    if wi == 0:                       # the checkpoint's name once, over its first column
                        name = _wrap(c, 18) if si == 0 else ""
                        ax.set_title(f"{name}\nstep {step} (t={rec.timesteps[step]})", fontsize=7)
                if show_image and wi == 0:
                    ax = fig.add_subplot(gs[0, ci * block + len(idx)])
                    ax.imshow(rec.image)
                    _blank(ax)
                    ax.set_title("final image", fontsize=7)
            cax = fig.add_subplot(gs[wi, n_cols], label=f"colour bar: {word.text}")
            bar = fig.colorbar(plt.cm.ScalarMappable(norm=scale, cmap=CMAP), cax=cax)
            bar.ax.tick_params(labelsize=6)
            bar.locator = plt.MaxNLocator(3)
            bar.update_ticks()
            if wi == len(words) // 2:
                bar.set_label("÷ map max" if norm == "max" else "attention", fontsize=7)
        fig.suptitle(records[ckpts[0]].prompt, fontsize=10)
    return freeze_layout(fig)


def mass_figure(summary, facet: str | None = None, x: str = "step", palette: Mapping[str, Any] | None = None,
                panel: float = 2.6):
    """Mass inside the mask over steps with CI bands, one line per checkpoint, chance dashed.

    ``summary`` comes from :func:`summarize_mass` with ``x`` (and ``facet``, e.g. ``"noun"`` or
    ``"layer"``) among its ``by`` columns; one axes per facet value, titled with it.
    """
    import matplotlib.pyplot as plt
    _check_columns(summary, [x, "checkpoint", "mass", "lo", "hi", "chance"] + ([facet] if facet else []))
    facets = sorted(summary[facet].unique()) if facet else [None]
    ckpts = list(dict.fromkeys(summary["checkpoint"]))
    palette = dict(palette or checkpoint_palette(ckpts))
    n_cols = min(len(facets), 5)
    n_rows = -(-len(facets) // n_cols)
    width = max(panel * n_cols, 2 * panel) + 0.4          # a single facet still gets room for its data
    with _style():
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(width, panel * n_rows + 0.4), squeeze=False, sharey=True)
        for k, fv in enumerate(facets):
            ax = axes[k // n_cols, k % n_cols]
            sub = summary if fv is None else summary[summary[facet] == fv]
            for c in ckpts:
                d = sub[sub["checkpoint"] == c].sort_values(x)
                ax.plot(d[x], d["mass"], color=palette.get(c), label=c, marker="o", ms=3)
                ax.fill_between(d[x], d["lo"], d["hi"], color=palette.get(c), alpha=0.2, linewidth=0)
            ch = sub.groupby(x)["chance"].mean()
            ax.plot(ch.index, ch.values, ls="--", color="grey", label="chance (mask area)")
            ax.set_title("all nouns" if fv is None else str(fv), fontsize=9)
            ax.set_xlabel("denoising step" if x == "step" else x)
            ax.margins(y=0.08)                                 # scaled to the data and the chance line
        for k in range(len(facets), n_rows * n_cols):
            axes[k // n_cols, k % n_cols].remove()
        for r in range(n_rows):
            axes[r, 0].set_ylabel("attention mass inside mask", fontsize=8)
        fig.tight_layout()
        handles, names = axes[0, 0].get_legend_handles_labels()   # one legend, at the right, never over the data
        fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    return fig
