"""Blended Latent Diffusion (Avrahami et al. 2023) on PIE-Bench, with any UNet plugged in.

The editor follows the diffusers script the PIE-Bench authors ran (``run_editing_blended_latent_diffusion.py``
of cure-lab/PnPInversion, itself a copy of omriav/blended-latent-diffusion's
``scripts/text_editing_stable_diffusion.py``). Its behaviour, quirks included, is the default here:

* **Scheduler**: a fresh ``DDIMScheduler(beta_start=0.00085, beta_end=0.012, "scaled_linear",
  clip_sample=False, set_alpha_to_one=False)``; every other setting is the class default, so
  ``steps_offset=0`` (SD1.4's own config says 1): 50 steps are ``980, 960, …, 0``. The pipeline's
  own scheduler is not used.
* **Source latents**: the image resized to the working size (bilinear), scaled to [-1, 1], VAE posterior
  **mean** (no sampling) × 0.18215 (the official constant; we read the VAE's ``scaling_factor``, which is
  0.18215 for SD1.4 and differs only for the miniature world's VAE).
* **Mask**: the 0/1 mask as an 8-bit PIL image, resized to the latent size with **nearest** (PIL samples
  the pixel at the centre of each cell, so the forced 1-pixel border of PIE-Bench masks never reaches
  the latent mask) and thresholded at 0.5.
* **Prompts**: the editing prompt without ``[ ]`` marks; the negative prompt is ``""``; guidance 7.5.
* **Start**: ``timesteps[int(len(timesteps) · 0.25):]`` — 12 of 50 steps are skipped and the first
  UNet input (t = 740) is **pure Gaussian noise**, not the noised source (switch ``start_from``).
* **Blending**: after each DDIM step, ``latents = latents·m + add_noise(source, ε, t)·(1 − m)`` with fresh
  noise ε and the **current** t, although the DDIM step has just produced latents at the previous
  timestep: the background is always one step noisier than the foreground (switch ``blend_noise_at``).
  At the last step (t = 0) the background is the source noised to ᾱ₀ = 0.99915, not the clean source.
* **Noise**: PnPInversion calls ``setup_seed(1234)`` before each image. The start noise comes from the CPU
  generator (``torch.randn(..., generator=torch.manual_seed(…))``) and the blending noise from
  ``randn_like`` on the GPU, i.e. the CUDA generator, both seeded 1234. This is reproduced with two
  local generators (on a CPU run the official code would draw both from the one CPU generator, and
  so does this code).
* **Precision**: the official script runs VAE, text encoder and UNet in fp16 (``precision``); on CPU every
  stage runs fp32 (:func:`reprolib.config.effective_precision`).
* **Output**: decoded with ``1 / 0.18215 · latents`` (likewise the VAE's factor), ``(x / 2 + 0.5).clamp(0, 1)``, ``round(x · 255)``;
  saved at the record's ``image_path`` as the official script saves it: a side-by-side strip
  ``[prompt text | source | black | edit]`` in one JPEG with PIL's defaults (quality 75, 4:2:0 chroma),
  from which PIE-Bench's ``evaluate.py`` crops the last square (:func:`reprolib.metrics.load_edited`).
  The strip matters: JPEG's chroma upsampling at decode reads the neighbouring panel, so the crop's
  first column differs from a JPEG of the edit alone (by up to 28 levels on a coloured test image); the
  neighbour is always black, so the crop depends on the edit only (``save_as="strip"``, the default).
  ``save_as="png"`` saves the edit alone, lossless, beside it (``<image_path>.png``): exact pixels, not
  the ones the published numbers were computed from.

Variants (never the default): ``start_from="noised_source"`` starts from the source noised to the first
timestep (the paper's Algorithm 1, SDEdit-style); ``blend_noise_at="t_prev"`` noises the background to the
level the DDIM step just reached (t − 1000/steps; ᾱ₀ at the last step, where DDIM itself lands).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .io import atomic_save, atomic_write_json, repo_path
from .models import checkpoint_label

#: SD1.x latent scaling factor, hard-coded in the official script.
LATENT_SCALE = 0.18215

#: The seed PnPInversion's ``setup_seed()`` sets before every image.
OFFICIAL_SEED = 1234
START_FROM = ("noise", "noised_source")
BLEND_NOISE_AT = ("t", "t_prev")
SAVE_AS = ("strip", "png")
OPTIONS_FILE = "bld_options.json"


def latent_scale(vae) -> float:
    """The VAE's ``scaling_factor`` (the official script's constant 0.18215 is SD1.4's: identical there;
    the miniature world's VAE has its own, and the constant would wash its images out)."""
    return float(getattr(vae.config, "scaling_factor", LATENT_SCALE) or LATENT_SCALE)


class EditingError(ValueError):
    """Bad editing options or inputs; the message names the parameter."""


# --------------------------------------------------------------------------- options

@dataclass(frozen=True)
class BLDOptions:
    """Blended Latent Diffusion settings; the defaults are the official script's."""
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    blending_start: float = 0.25          # fraction of the schedule skipped ("blending_percentage")
    start_from: str = "noise"             # "noise" (official) | "noised_source"
    blend_noise_at: str = "t"             # "t" (official) | "t_prev"
    seed: int = OFFICIAL_SEED
    resolution: int = 512                 # images are resized to resolution² (official: 512)
    save_as: str = "strip"                # "strip" (official JPEG strip, what evaluate.py reads) | "png"

    def __post_init__(self) -> None:
        if self.num_inference_steps < 1:
            raise EditingError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if not 0.0 <= self.blending_start < 1.0:
            raise EditingError(f"blending_start must be in [0, 1), got {self.blending_start}")
        if self.start_from not in START_FROM:
            raise EditingError(f"start_from must be one of {START_FROM}, got {self.start_from!r}")
        if self.blend_noise_at not in BLEND_NOISE_AT:
            raise EditingError(f"blend_noise_at must be one of {BLEND_NOISE_AT}, got {self.blend_noise_at!r}")
        if self.resolution < 8:
            raise EditingError(f"resolution must be >= 8 pixels, got {self.resolution}")
        if self.save_as not in SAVE_AS:
            raise EditingError(f"editing.save_as must be one of {SAVE_AS}, got {self.save_as!r}")

    @classmethod
    def from_profile(cls, profile) -> "BLDOptions":
        """Options from ``profile.editing`` (and the model's resolution)."""
        e = profile.editing
        return cls(num_inference_steps=e.num_inference_steps, guidance_scale=e.guidance_scale,
                   blending_start=e.blending_start, start_from=e.start_from, blend_noise_at=e.blend_noise_at,
                   seed=e.seed, resolution=e.resolution or profile.model.resolution, save_as=e.save_as)


def bld_scheduler():
    """The official script's scheduler: DDIM with SD's betas and the class defaults (``steps_offset=0``)."""
    from diffusers import DDIMScheduler
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False)


def blending_timesteps(scheduler, options: BLDOptions) -> torch.Tensor:
    """``scheduler.timesteps[int(len · blending_start):]`` after ``set_timesteps`` (the steps actually run)."""
    scheduler.set_timesteps(options.num_inference_steps)
    ts = scheduler.timesteps
    return ts[int(len(ts) * options.blending_start):]


# --------------------------------------------------------------------------- inputs

def load_image(path: str | Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8 RGB, resized bilinearly with PIL as the official script does."""
    from PIL import Image
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"source image not found: {path}")
    with Image.open(path) as im:
        if im.mode not in ("RGB", "RGBA"):
            im = im.convert("RGB")
        im = im.resize((size, size), Image.BILINEAR)
        return np.array(im)[:, :, :3]


def prompt_panel(text: str, size: int) -> np.ndarray:
    """The strip's first panel, as PnPInversion's ``txt_draw``: the text at (−0.1, 1.1) in axes units,
    3.5 pt, wrapped, on a 1-inch 300-dpi matplotlib figure without axes, resized to size² (Lanczos)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image
    fig = Figure(figsize=(1, 1), dpi=300)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.text(-0.1, 1.1, text, fontsize=3.5, wrap=True, verticalalignment="top", horizontalalignment="left")
    ax.axis("off")
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[:, :, :3]
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.LANCZOS))


def official_strip(source: np.ndarray, edited: np.ndarray, prompt: str) -> np.ndarray:
    """``[text | source | black | edit]`` side by side: what the official BLD script saves for one record.

    The text is ``"edit prompt: ['<prompt>']"`` (the script formats the one-prompt list it passes).
    """
    side = edited.shape[0]
    if source.shape != edited.shape or edited.shape[:2] != (side, side):
        raise EditingError(f"strip panels must be equal squares, got {source.shape} and {edited.shape}")
    text = prompt_panel(f"edit prompt: {[prompt]}", side)
    return np.concatenate([text, source, np.zeros_like(text), edited], axis=1)


def edited_path(root: str | Path, image_path: str, save_as: str = "strip") -> Path:
    """Where an edit is saved: the strip at ``<root>/<image_path>``, or ``<image_path>`` with ``.png``."""
    path = Path(root) / image_path
    return path if save_as == "strip" else path.with_suffix(".png")


def save_edit(dest: Path, source: np.ndarray, edited: np.ndarray, prompt: str, save_as: str = "strip") -> Path:
    """Write one edit atomically: the official JPEG strip (PIL's default quality) or the edit alone as PNG."""
    from PIL import Image
    if save_as == "png":
        pil = Image.fromarray(edited)
        return atomic_save(dest, lambda p: pil.save(p, format="PNG"))
    pil = Image.fromarray(official_strip(source, edited, prompt))
    return atomic_save(dest, lambda p: pil.save(p, format="JPEG"))


def latent_mask(mask: np.ndarray, latent_hw: tuple[int, int]) -> torch.Tensor:
    """(1, 1, h, w) float 0/1 mask: 8-bit PIL image → nearest resize to the latent size → threshold 0.5."""
    from PIL import Image
    m = np.asarray(mask)
    if m.ndim != 2:
        raise EditingError(f"mask must be 2-D (H, W), got shape {m.shape}")
    h, w = int(latent_hw[0]), int(latent_hw[1])
    pil = Image.fromarray(np.uint8(m), mode="L").resize((w, h), Image.NEAREST)
    arr = np.array(pil).astype(np.float64)
    arr = np.where(arr >= 0.5, 1.0, 0.0)
    return torch.from_numpy(arr).float()[None, None]


@torch.no_grad()
def encode_image(vae, image: np.ndarray, device: str | torch.device, dtype: torch.dtype) -> torch.Tensor:
    """VAE posterior mean × scaling factor (SD1.4: 0.18215) of an (H, W, 3) uint8 image (``_image2latent``)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).float() / 127.5 - 1
    x = x.permute(2, 0, 1).unsqueeze(0).to(device).to(dtype)
    return vae.encode(x).latent_dist.mean * latent_scale(vae)


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompt: str, device: str | torch.device) -> torch.Tensor:
    """``cat([E(""), E(prompt)])``, both padded to the tokenizer's max length, no attention mask."""
    ids = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    cond = text_encoder(ids.to(device))[0]
    uncond_ids = tokenizer([""], padding="max_length", max_length=ids.shape[-1], return_tensors="pt").input_ids
    uncond = text_encoder(uncond_ids.to(device))[0]
    return torch.cat([uncond, cond])


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> np.ndarray:
    """(B, H, W, 3) uint8: ``1 / scaling factor · latents`` → VAE → ``round(clamp(x/2 + 0.5) · 255)``."""
    image = vae.decode(1 / latent_scale(vae) * latents).sample
    image = (image / 2 + 0.5).clamp(0, 1)
    if image.dtype == torch.bfloat16:  # numpy has no bfloat16
        image = image.float()
    image = image.detach().cpu().permute(0, 2, 3, 1).numpy()
    return (image * 255).round().astype("uint8")


def noised_source(scheduler, source: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                  blend_noise_at: str = "t") -> torch.Tensor:
    """The background latents of one step: the source noised to t (official) or to DDIM's previous timestep.

    ``"t_prev"`` uses the level the DDIM step just produced: ᾱ at ``t − 1000 / steps``, or
    ``final_alpha_cumprod`` (ᾱ₀ here, as ``set_alpha_to_one=False``) below zero, exactly as DDIM's step does.
    """
    if blend_noise_at == "t":
        return scheduler.add_noise(source, noise, t)
    if blend_noise_at != "t_prev":
        raise EditingError(f"blend_noise_at must be one of {BLEND_NOISE_AT}, got {blend_noise_at!r}")
    prev = int(t) - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    abar = scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod
    abar = abar.to(device=source.device, dtype=source.dtype)
    return abar ** 0.5 * source + (1 - abar) ** 0.5 * noise


# --------------------------------------------------------------------------- the editor

@dataclass
class EditStep:
    """One denoising step (CPU, float32): DDIM output, its x̂₀, the noised source, and the blend."""
    t: int
    denoised: torch.Tensor                # scheduler.step(...).prev_sample (before blending)
    pred_x0: torch.Tensor                 # scheduler.step(...).pred_original_sample
    background: torch.Tensor              # the noised source used for blending
    latents: torch.Tensor                 # after blending: denoised·m + background·(1 − m)


@dataclass
class EditResult:
    """An edited image and, when asked, what happened on the way."""
    image: np.ndarray                     # (H, W, 3) uint8
    latents: torch.Tensor                 # final latents (1, C, h, w), CPU float32
    mask: torch.Tensor                    # latent mask (1, 1, h, w), CPU float32
    source_latents: torch.Tensor          # (1, C, h, w), CPU float32
    timesteps: list[int]
    steps: list[EditStep] = field(default_factory=list)
    attention: list[dict[str, torch.Tensor]] = field(default_factory=list)  # per step: group → (h·w, 77)


def _generators(seed: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """Start-noise generator (CPU) and blending-noise generator (the device's; the same one on CPU)."""
    start = torch.Generator("cpu").manual_seed(seed)
    if device.type == "cpu":
        return start, start
    return start, torch.Generator(device).manual_seed(seed)


@torch.no_grad()
def blended_latent_diffusion(components, image: np.ndarray, mask: np.ndarray, prompt: str,
                             options: BLDOptions = BLDOptions(), device: str | torch.device = "cpu",
                             keep_steps: bool = False, attention_layers: Sequence[str] | None = None,
                             callback: Callable[[int, int, torch.Tensor], None] | None = None) -> EditResult:
    """Edit `image` inside `mask` (1 = edit) towards `prompt` with the parts in `components`.

    `components` is a :class:`reprolib.models.Components` (any UNet: SD1.4 or a TokenCompose checkpoint);
    its scheduler is ignored in favour of :func:`bld_scheduler`. Runs in the dtype the models are in.
    `keep_steps` returns every step's latents; `attention_layers` (e.g. ``["up_64"]``) records the
    text-conditioned cross-attention maps of those groups at every step (mean over heads and layers).
    `callback(i, t, latents)` is called after each blend.
    """
    device = torch.device(device)
    unet, vae = components.unet, components.vae
    dtype = unet.dtype
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise EditingError(f"image must be (H, W, 3) uint8, got shape {image.shape} dtype {image.dtype}")
    scheduler = bld_scheduler()
    timesteps = blending_timesteps(scheduler, options)

    source = encode_image(vae, image, device, dtype)
    m = latent_mask(mask, tuple(source.shape[-2:])).to(device=device, dtype=dtype)
    embeddings = encode_prompts(components.tokenizer, components.text_encoder, prompt, device).to(dtype)
    gen_start, gen_blend = _generators(options.seed, device)
    shape = (1, unet.config.in_channels, *source.shape[-2:])
    latents = torch.randn(shape, generator=gen_start).to(device).to(dtype)
    if options.start_from == "noised_source":
        latents = scheduler.add_noise(source, latents, timesteps[0])

    store = None
    if attention_layers:
        from .attention import install_capture
        store = install_capture(unet, list(attention_layers), keep_history=True, keep_last=False)
    result = EditResult(image=np.zeros(0, np.uint8), latents=latents, mask=m.float().cpu(),
                        source_latents=source.float().cpu(), timesteps=[int(t) for t in timesteps])
    try:
        for i, t in enumerate(timesteps):
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2), timestep=t)
            noise_pred = unet(model_input, t, encoder_hidden_states=embeddings).sample
            uncond, cond = noise_pred.chunk(2)
            noise_pred = uncond + options.guidance_scale * (cond - uncond)
            out = scheduler.step(noise_pred, t, latents)
            denoised = out.prev_sample
            noise = torch.randn(denoised.shape, generator=gen_blend, device=gen_blend.device,
                                dtype=denoised.dtype).to(device)
            background = noised_source(scheduler, source, noise, t, options.blend_noise_at)
            latents = denoised * m + background * (1 - m)
            if keep_steps:
                result.steps.append(EditStep(int(t), denoised.float().cpu(), out.pred_original_sample.float().cpu(),
                                             background.float().cpu(), latents.float().cpu()))
            if store is not None and store.history:
                result.attention.append({g: v[-1] for g, v in store.history[-1].items()})
            if callback is not None:
                callback(i, int(t), latents)
    finally:
        if store is not None:
            from .attention import uninstall_capture
            uninstall_capture(unet, store)
    result.latents = latents.float().cpu()
    result.image = decode_latents(vae, latents)[0]
    return result


# --------------------------------------------------------------------------- checkpoints and runs


#: Row names of our checkpoints in Table 2.
METHOD_LABELS = {"sd14": "BLD + SD1.4", "tokencompose_a": "BLD + TokenCompose (A)",
                 "tokencompose_b": "BLD + TokenCompose (B)"}


def method_label(name: str) -> str:
    """Table 2 row name of a checkpoint (``sd14`` → ``BLD + SD1.4``)."""
    return METHOD_LABELS.get(name, f"BLD + {checkpoint_label(name)}")


def checkpoint_components(base, checkpoint: str, base_name: str, seed: int = 0):
    """`base` with the UNet of `checkpoint` swapped in (VAE, text encoder, tokenizer untouched).

    ``sd14`` on an SD1.4 (or tiny) base keeps the base's own UNet. A relative folder (e.g. stage 02's
    ``runs/tiny/train/unet``) is taken from the repository root. The new UNet takes the base UNet's
    device and dtype.
    """
    from .models import CHECKPOINTS, SD14, load_unet, swap_unet
    if checkpoint == "sd14" and base_name in ("tiny", SD14):
        return base
    if checkpoint not in CHECKPOINTS and repo_path(checkpoint).exists():
        checkpoint = str(repo_path(checkpoint))
    dtype = base.unet.dtype
    unet = load_unet(checkpoint, base=base_name, seed=seed, dtype=None if dtype == torch.float32 else dtype)
    unet.to(device=base.unet.device)
    return swap_unet(base, unet.eval())


def load_base(base_name: str, seed: int, precision: str, device: str | torch.device):
    """The pipeline parts every checkpoint shares, in `precision` on `device` (fp32 on CPU: the project's
    one policy, :func:`reprolib.config.precision_dtype`), ready for editing."""
    from .config import precision_dtype
    from .models import load_components
    dtype = precision_dtype(precision, device, "editing.precision")
    # fp32 is what the weights hold: no cast (diffusers warns about casts it cannot check)
    comps = load_components(base_name, seed=seed, dtype=None if dtype == torch.float32 else dtype, scheduler="ddim")
    for m in (comps.unet, comps.vae, comps.text_encoder):
        m.to(device).eval()
    return comps


def run_signature(options: BLDOptions, checkpoint: str, base_name: str, precision: str) -> dict[str, Any]:
    """What an output folder's images depend on (stored next to them; a change redoes them): names,
    settings, and the sha256 of local weights (a retrained UNet at the same path redoes its edits)."""
    from .models import checkpoint_weights
    return {"checkpoint": checkpoint, "base": base_name, "precision": precision,
            **checkpoint_weights(checkpoint, base_name), **asdict(options)}


def target_word(record) -> str | None:
    """The edited word of a PIE-Bench record (for attention figures).

    The second ``blended_word`` (``"cat dog"`` → ``dog``), else the longest word of the first ``[ ]``
    span of the editing prompt (``[a watercolor painting of]`` → ``watercolor``), else the only
    blended word, else None.
    """
    import re
    words = record.blended_words
    if len(words) >= 2:
        return words[1]
    marked = re.findall(r"\[([^\]]+)\]", record.editing_prompt)
    if marked and marked[0].split():
        parts = marked[0].split()
        return max(reversed(parts), key=len)
    return words[0] if words else None


def edit_records(records: Sequence, components, out_root: str | Path, options: BLDOptions,
                 device: str | torch.device = "cpu", signature: dict[str, Any] | None = None,
                 rerun: bool = False, progress: bool = True) -> pd.DataFrame:
    """Edit every PIE-Bench record into ``<out_root>/<image_path>`` (:func:`save_edit`: the official strip,
    or the edit alone as PNG).

    Resumable: existing images are kept unless `rerun`, or unless ``<out_root>/bld_options.json``
    records a different `signature`: then the records' stale images (either format) are deleted before
    the new signature is written, so an interrupted run never mixes settings. Returns one row per record.
    """
    out_root = Path(out_root)
    sig = json.loads(json.dumps(signature or asdict(options)))
    sig_path = out_root / OPTIONS_FILE
    if rerun or (sig_path.is_file() and json.loads(sig_path.read_text()) != sig):
        for rec in records:
            for fmt in SAVE_AS:
                edited_path(out_root, rec.image_path, fmt).unlink(missing_ok=True)
    atomic_write_json(sig_path, sig)
    rows = []
    for rec in tqdm(records, desc="BLD edits", disable=not progress):
        dest = edited_path(out_root, rec.image_path, options.save_as)
        t0 = time.perf_counter()
        if not dest.is_file():
            image = load_image(rec.source_path, options.resolution)
            result = blended_latent_diffusion(components, image, rec.mask(), rec.target_prompt, options, device)
            save_edit(dest, image, result.image, rec.target_prompt, options.save_as)
            status = "edited"
        else:
            status = "kept"
        rows.append({"id": rec.id, "image_path": rec.image_path, "editing_type_id": rec.editing_type_id,
                     "output": str(dest), "status": status, "seconds": round(time.perf_counter() - t0, 3)})
    return pd.DataFrame(rows, columns=["id", "image_path", "editing_type_id", "output", "status", "seconds"])


def edit_checkpoints(records: Sequence, base, base_name: str, checkpoints: Sequence[str], options: BLDOptions,
                     out_root: str | Path, device: str | torch.device, precision: str, seed: int = 0,
                     progress: bool = True) -> pd.DataFrame:
    """Edit every record with every checkpoint into ``<out_root>/<checkpoint label>/``; one row per edit.

    The signature records the precision the edits are made in on `device` (fp32 on CPU)."""
    from .config import effective_precision
    precision = effective_precision(precision, device, "editing.precision")
    frames = []
    for ckpt in checkpoints:
        comps = checkpoint_components(base, ckpt, base_name, seed)
        df = edit_records(records, comps, Path(out_root) / checkpoint_label(ckpt), options, device,
                          signature=run_signature(options, ckpt, base_name, precision), progress=progress)
        frames.append(df.assign(checkpoint=ckpt))
        if comps is not base:
            del comps
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return pd.concat(frames, ignore_index=True)


def score_checkpoints(records: Sequence, checkpoints: Sequence[str], out_root: str | Path, models,
                      progress: bool = True) -> pd.DataFrame:
    """PIE-Bench metrics of every checkpoint's edits (``reprolib.metrics.score_records``), with a checkpoint column.

    Per-checkpoint CSVs go to ``<out_root>/<label>/scores.csv`` next to the images.
    """
    from .metrics import score_records
    frames = []
    for ckpt in checkpoints:
        root = Path(out_root) / checkpoint_label(ckpt)
        df = score_records(records, root, models, csv_path=root / "scores.csv", progress=progress)
        frames.append(df.assign(checkpoint=ckpt))
    return pd.concat(frames, ignore_index=True)


def world_edit_success(records: Sequence, checkpoints: Sequence[str], out_root: str | Path,
                       edits: dict[str, dict[str, Any]], detector=None, threshold: float = 0.5) -> pd.DataFrame:
    """Did each edit of a miniature-world set (:func:`reprolib.piebench.make_world_piebench`) succeed?

    The world's exact detector looks at every edited image: ``new_found`` (the requested shape is there),
    ``old_gone`` (the replaced one is not), ``kept`` (fraction of the untouched shapes still found) and
    ``success`` = new_found and old_gone. The source images are scored too (checkpoint ``"source"``): there
    the old shape should be found and the new one not, which bounds the detector's own error.
    """
    from PIL import Image

    from .metrics import load_edited
    from .worlddetector import load_world_detector, present
    det = detector or load_world_detector()
    rows = []
    sources = [np.asarray(Image.open(rec.source_path).convert("RGB")) for rec in records]
    for ckpt in ["source", *checkpoints]:
        images = np.stack(sources if ckpt == "source" else       # the edit as evaluate.py reads it
                          [load_edited(Path(out_root) / checkpoint_label(ckpt) / rec.image_path, src.shape[1::-1])
                           for rec, src in zip(records, sources)])
        for rec, found in zip(records, present(det, images, threshold)):
            meta = edits.get(rec.id)
            if meta is None:
                raise KeyError(f"record {rec.id}: not in the world edit sidecar")
            others = [c for c in meta["categories"] if c != meta["old"]]
            rows.append({"checkpoint": ckpt, "id": rec.id, "old": meta["old"], "new": meta["new"],
                         "new_found": meta["new"] in found, "old_gone": meta["old"] not in found,
                         "kept": float(np.mean([c in found for c in others])) if others else float("nan")})
    df = pd.DataFrame(rows)
    df["success"] = df["new_found"] & df["old_gone"]
    return df


def world_edit_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint: % of edits with the new shape found, the old gone, both (success), untouched shapes kept."""
    out = df.groupby("checkpoint", sort=False)[["new_found", "old_gone", "success", "kept"]].mean() * 100
    out["n"] = df.groupby("checkpoint", sort=False).size()
    return out.rename(columns={"new_found": "new shape found (%)", "old_gone": "old shape gone (%)",
                               "success": "success (%)", "kept": "other shapes kept (%)"})


@dataclass
class EditingProcess:
    """What the editing-process figure shows for one record and one checkpoint."""
    timesteps: list[int]                  # the steps shown
    pred_x0: list[np.ndarray]             # decoded x̂₀ at those steps, (H, W, 3) uint8
    attention: torch.Tensor               # (steps shown, side, side): the word's cross-attention
    word: str | None                      # the word whose tokens are summed (None: all prompt tokens)
    image: np.ndarray                     # the final edit (with attention capture on)


def editing_process(components, record, options: BLDOptions, device: str | torch.device, group: str,
                    n_frames: int = 5) -> EditingProcess:
    """Re-run one edit recording every step and `group`'s cross-attention, for the Fig. 8-style figure.

    The word is :func:`target_word` (its tokens via :func:`reprolib.tokens.word_token_indices`); when it
    is not in the prompt, the maps of all prompt tokens are summed instead. Attention capture computes
    the softmax explicitly in fp32, so this edit can differ from the scored one by rounding.
    """
    from .tokens import TokenNotFoundError, word_token_indices
    image = load_image(record.source_path, options.resolution)
    res = blended_latent_diffusion(components, image, record.mask(), record.target_prompt, options, device,
                                   keep_steps=True, attention_layers=[group])
    word = target_word(record)
    try:
        tokens = word_token_indices(components.tokenizer, record.target_prompt, word) if word else None
    except TokenNotFoundError:
        tokens = None
    if tokens is None:
        word = None
        n = len(components.tokenizer(record.target_prompt, truncation=True).input_ids)
        tokens = list(range(1, n - 1))
    picks = sorted({int(round(i)) for i in np.linspace(0, len(res.steps) - 1, min(n_frames, len(res.steps)))})
    vae = components.vae
    x0 = [decode_latents(vae, res.steps[i].pred_x0.to(device=device, dtype=vae.dtype))[0] for i in picks]
    maps = attention_for_tokens(res.attention, group, tokens)[picks]
    return EditingProcess([res.timesteps[i] for i in picks], x0, maps, word, res.image)


# --------------------------------------------------------------------------- tables

#: Table 2 columns, in the papers' units (labels of reprolib.metrics.PAPER_UNITS).
TABLE2_METRICS = ("structure_distance", "psnr_unedit_part", "lpips_unedit_part", "mse_unedit_part",
                  "ssim_unedit_part", "clip_similarity_target_image", "clip_similarity_target_image_edit_part")
REPORTED_TABLE2 = Path(__file__).resolve().parent.parent / "data" / "editing" / "table2_reported.csv"


def load_reported_table2(path: str | Path = REPORTED_TABLE2) -> pd.DataFrame:
    """Cited Table 2 rows (``method``, ``source`` and the metric columns, in paper units; blanks are NaN)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reported Table 2 values not found: {path}")
    df = pd.read_csv(path, comment="#")
    missing = [c for c in ("method", "source", *TABLE2_METRICS) if c not in df.columns]
    if missing:
        raise EditingError(f"{path}: missing column {missing[0]!r}")
    if df["source"].isna().any() or (df["source"].astype(str).str.strip() == "").any():
        raise EditingError(f"{path}: every reported row needs a source")
    return df


def table2(reported: pd.DataFrame, summary: pd.DataFrame, labels: dict[str, str] | None = None,
           ours_source: str = "ours") -> pd.DataFrame:
    """Table 2: reported rows, then our overall ("all") rows per checkpoint, in paper units.

    `summary` is :func:`reprolib.metrics.summarise` of the per-image scores with ``by="checkpoint"``;
    `labels` maps checkpoint → row name (default :func:`method_label`: ``sd14`` → ``BLD + SD1.4``).
    """
    from .metrics import PAPER_UNITS
    cols = {m: PAPER_UNITS[m][0] for m in TABLE2_METRICS}
    rep = reported.rename(columns=cols)[["method", *cols.values(), "source"]].copy()
    rep["source"] = "reported: " + rep["source"].astype(str)
    if "checkpoint" not in summary.index.names:
        raise EditingError("summary must be summarise(df, by='checkpoint')")
    ours = summary.xs("all", level="category").reset_index()
    ours["method"] = [(labels or {}).get(c) or method_label(c) for c in ours["checkpoint"]]
    ours["source"] = ours_source
    for label in cols.values():
        if label not in ours.columns:
            ours[label] = np.nan
    ours = ours[["method", *cols.values(), "source", "n"]]
    out = pd.concat([rep, ours], ignore_index=True)
    return out.set_index("method")


def attention_for_tokens(attention: list[dict[str, torch.Tensor]], group: str,
                         tokens: Sequence[int]) -> torch.Tensor:
    """(steps, side, side) maps of `group`, summed over the token positions `tokens` (a multi-token word)."""
    from .attention import split_spatial
    if not attention:
        raise EditingError("no attention recorded: pass attention_layers to blended_latent_diffusion")
    if group not in attention[0]:
        raise EditingError(f"no attention recorded for layer group {group!r}; have {sorted(attention[0])}")
    maps = torch.stack([split_spatial(a[group]) for a in attention])       # (steps, s, s, 77)
    return maps[..., list(tokens)].sum(-1)
