#!/usr/bin/env python
"""Train the miniature world's base text-to-image model and ship it as a diffusers pipeline folder.

    python scripts/train_world_base.py --deadline-s 470     # GPU if there is one; fits the run to a time budget
    # replay of the shipped base (data/miniworld/base.json): two calls sharing --work, the second a warm restart
    python scripts/train_world_base.py --vae-steps 2479 --steps 2214
    python scripts/train_world_base.py --vae-steps 2479 --steps 3800
    python scripts/train_world_base.py --vae-steps 5 --steps 5 --vae-pool 64 --pool 64 --out /tmp/wb --work /tmp/wb_work   # smoke run
    # the second base of data/miniworld/candidates/contextless (2 CPU cores, ~45 min in the background):
    python scripts/train_world_base.py --vae-from data/miniworld/base --init-from data/miniworld/base \
        --text-layers 0 --freeze-text --lr 5e-4 --batch-size 128 --pool 60000 --deadline-s 2900 --reserve-s 240 \
        --threads 2 --workers 2 --ckpt-every 250 --out /tmp/wb/base --work /tmp/wb/work

On CPU the script runs as it does on a GPU (fp32, same batches); from scratch, 2 cores give too few samples in
90 minutes for a base that passes the single-object check (the record's ``superseded`` entry), so the CPU path
that fits is a continuation: ``--vae-from``/``--init-from`` start from a shipped base's VAE and UNet.
``--text-layers 0 --freeze-text`` builds a frozen contextless text encoder (token + position embeddings and the
final layer norm, no transformer layer: EOS and padding carry no word of the caption).

What it trains, from scratch, seeded, on miniworld renders (64×64 RGB):

1. a tiny ``AutoencoderKL`` (64² RGB → 4×16×16 latents, factor 4) on a pool of scenes of 0–5 objects, MSE
   reconstruction + a small KL term; its latent scaling factor is then measured (1 / std of the
   latents, as SD's 0.18215 was chosen). Its reconstructions are checked with the world detector
   (``vae_check`` in base.json): a VAE that blurs shapes into each other caps every later number.
2. a small ``UNet2DConditionModel`` with SD1.4's block layout at toy width (cross-attention at latent
   sides 16, 8, 4 and a mid block at 2: groups down_16/8/4, mid_2, up_4/8/16, the analogues of SD1.4's
   down_64/32/16, mid_8, up_16/32/64) jointly with a small ``CLIPTextModel`` fed by SD1.4's real
   tokenizer (:func:`reprolib.models.clip_tokenizer`). Epsilon objective under SD1.4's noise schedule
   (scaled-linear betas, 1000 steps), min-SNR-5 loss weighting (Hang et al. 2023: faster convergence
   for a tiny budget), captions dropped 10 % of the time (for classifier-free guidance), EMA weights
   shipped.

Why a VAE and not pixel space: the other stages drive ``StableDiffusionPipeline``, which needs one,
and 16² latents make every UNet step 16× cheaper than 64² pixels on a CPU (the fine-tunes and the
evaluation of stage 06 run on CPU in the tiny profile).

The training scenes mostly show one or two objects (P(1..5) = .5, .35, .1, .04, .01), like web
captions for SD, so that the base composes 4–5 categories poorly and leaves room for TokenCompose.

Scenes are rendered once into pools (in parallel worker processes; chunk ``i`` of a pool is seeded
``[stream, seed, i]``, so the pool does not depend on the number of workers), and every step draws
its batch, posterior noise, diffusion noise and timesteps from a CPU generator seeded by
``[stream, seed, step]``: the same arguments give the same batches on any device. GPU kernels are
not bit-deterministic, so a GPU rerun matches closely, not bit for bit.

``--time-budget-s`` fixes the number of base steps from the speed measured over the first 50 steps
(inside the 100-step warm-up, which does not depend on the total): the chosen count is recorded in
base.json, and ``--steps N`` with that N replays the same schedule.

After training it generates single-object and five-object prompts and asks the world detector
(:mod:`reprolib.worlddetector`) what is there: the fraction of single-object prompts whose shape is
found is the sanity check recorded in ``base.json`` (with seed, steps, device, wall time, loss).
A killed run resumes from ``--work`` (VAE weights, UNet/text/EMA/optimizer checkpoint every
``--ckpt-every`` steps).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reprolib.io import atomic_save, atomic_write_json, sha256_file  # noqa: E402
from reprolib.miniworld import CATEGORIES, caption_for, sample_scenes, stack_images  # noqa: E402
from reprolib.models import TINY_TEXT, TINY_UNET, clip_tokenizer, sd14_scheduler  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "data" / "miniworld" / "base"
DEFAULT_WORK = REPO / "runs" / "miniworld_base_work"

#: Object-count weights of the base's training scenes (1..5 objects): composition is rare.
BASE_OBJECT_WEIGHTS = (0.5, 0.35, 0.1, 0.04, 0.01)
#: Object-count weights of the VAE's scenes (it must reconstruct crowded scenes too; 0 objects included).
VAE_OBJECT_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0)
VAE_STREAM, BASE_STREAM, POOL_STREAM, CHECK_STREAM = 11, 12, 13, 14

#: Scenes per render chunk (the unit of parallel rendering and of pool seeding).
CHUNK = 1000

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1, norm_num_groups=8, sample_size=64,
)
# The tiny profile's UNet layout (SD1.4's blocks) at 16² latents and a little wider; the text encoder is
# the tiny profile's exactly.
UNET_CONFIG = {**TINY_UNET, "sample_size": 16, "block_out_channels": (32, 64, 64, 64), "norm_num_groups": 16}
TEXT_CONFIG = dict(TINY_TEXT)


# --------------------------------------------------------------------------- data

def to_pixels(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float in [-1, 1], the pipeline's convention."""
    x = torch.from_numpy(images) if isinstance(images, np.ndarray) else images
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _render_chunk(args: tuple) -> tuple[np.ndarray, list[str], list[int]]:
    stream, seed, index, n, weights, empty_fraction = args
    scenes = sample_scenes(n, [stream, seed, index], n_objects=weights, progress=False)
    images = stack_images(scenes)
    if empty_fraction > 0:
        rng = np.random.default_rng([stream, seed, index, 1])
        empty = rng.random(n) < empty_fraction
        images[empty] = images[empty][:, :1, :1]      # background colour over the whole image
    return images, [s.caption for s in scenes], [len(s.categories) for s in scenes]


def render_pool(n: int, stream: int, seed: int, weights: Sequence[float], empty_fraction: float = 0.0,
                workers: int = 1, progress: bool = True) -> dict[str, Any]:
    """``n`` scenes as uint8 images + captions + object counts; chunk ``i`` seeded ``[stream, seed, i]``."""
    jobs = [(stream, seed, i, min(CHUNK, n - i * CHUNK), tuple(weights), empty_fraction)
            for i in range(math.ceil(n / CHUNK))]
    bar = tqdm(total=n, desc=f"render pool {stream}", disable=not progress)
    parts = []
    if workers > 1 and len(jobs) > 1:
        with cf.ProcessPoolExecutor(workers) as ex:
            for part in ex.map(_render_chunk, jobs):
                parts.append(part)
                bar.update(len(part[1]))
    else:
        for job in jobs:
            parts.append(_render_chunk(job))
            bar.update(len(parts[-1][1]))
    bar.close()
    return {"images": np.concatenate([p[0] for p in parts]), "captions": [c for p in parts for c in p[1]],
            "n_objects": np.concatenate([np.asarray(p[2]) for p in parts])}


def tokenize(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """(N, 77) ids padded to max length, as StableDiffusionPipeline tokenizes prompts."""
    return tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def step_generator(stream: int, seed: int, step: int) -> torch.Generator:
    """The CPU generator of one training step: batches are a pure function of (stream, seed, step)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([stream, seed, step]).generate_state(1)[0]))


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA when asked (weights and optimizer stay fp32); a no-op otherwise."""
    import contextlib
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- models

def text_config(layers: int) -> dict[str, Any]:
    """The text encoder's config with ``layers`` transformer layers (0: contextless, see --text-layers)."""
    return {**TEXT_CONFIG, "num_hidden_layers": int(layers)}


def build_models(seed: int, text_layers: int = TEXT_CONFIG["num_hidden_layers"]):
    """Fresh VAE, UNet and text encoder (seeded)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text = CLIPTextModel(CLIPTextConfig(**text_config(text_layers)))
    return vae, unet, text


def load_part(model: torch.nn.Module, folder: Path, part: str, strict: bool = True) -> list[str]:
    """Copy the safetensors weights of ``folder/part`` into ``model``; returns the keys it lacked.

    ``strict=False`` is for a text encoder with fewer layers than the one it comes from: its token and
    position embeddings and final layer norm are taken, the missing layers' weights are reported."""
    from safetensors.torch import load_file
    files = sorted((Path(folder) / part).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"--init-from/--vae-from: no safetensors weights in {Path(folder) / part}")
    state = {k: v for f in files for k, v in load_file(str(f)).items()}
    own = model.state_dict()
    unused = sorted(set(state) - set(own))
    if strict and (unused or set(own) - set(state)):
        raise ValueError(f"{Path(folder) / part}: weights do not match the model (e.g. "
                         f"{(unused or sorted(set(own) - set(state)))[0]})")
    wrong = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"{Path(folder) / part}: weights do not match the model ({wrong[0]}: "
                         f"{tuple(state[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)})")
    missing = model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=strict).missing_keys
    return list(missing)


def save_state(path: Path, state: dict[str, Any]) -> Path:
    return atomic_save(path, lambda p: torch.save(state, p))


def load_state(path: Path) -> dict[str, Any] | None:
    return torch.load(path, weights_only=True, map_location="cpu") if path.is_file() else None


def fit_steps(steps: int, budget_s: float | None, per_step_s: float, done: int) -> int:
    """The step total that fits ``budget_s`` at ``per_step_s`` (at most ``steps``, at least ``done``)."""
    if budget_s is None:
        return steps
    return max(done, min(steps, int(budget_s / per_step_s)))


class StepTimer:
    """Measures seconds per step between steps 10 and 60 of a run (CUDA-synchronised)."""

    def __init__(self, device: torch.device):
        self.device, self.t = device, None

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def tick(self, done: int, start: int) -> float | None:
        """Per-step seconds once ``done`` reaches ``start + 60``, else None."""
        if done == start + 10:
            self.t = self.now()
        elif done == start + 60 and self.t is not None:
            return (self.now() - self.t) / 50
        return None


def train_vae(vae, images: torch.Tensor, steps: int, batch_size: int, lr: float, seed: int,
              device: torch.device, precision: str = "fp32", kl_weight: float = 1e-6,
              time_budget_s: float | None = None, progress: bool = True) -> list[float]:
    """MSE reconstruction of pool scenes (uint8 ``images`` on ``device``) + ``kl_weight`` × KL; AdamW,
    warm-up + cosine LR; with ``time_budget_s`` the total is fixed after 60 steps (at most ``steps``)."""
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    plan = {"total": steps}
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(warmup_steps(steps), plan))
    timer = StepTimer(device)
    losses: list[torch.Tensor] = []
    bar = tqdm(total=steps, desc="vae", disable=not progress, mininterval=2)
    step = 0
    while step < plan["total"]:
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=step_generator(VAE_STREAM, seed, step))
        x = to_pixels(images[idx.to(images.device)]).to(device)
        with autocast(device, precision):
            dist = vae.encode(x).latent_dist
            rec = vae.decode(dist.sample()).sample
        loss = F.mse_loss(rec.float(), x) + kl_weight * dist.kl().float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach())
        step += 1
        bar.update(1)
        per_step = timer.tick(step, 0) if time_budget_s is not None else None
        if per_step is not None:
            plan["total"] = bar.total = fit_steps(steps, time_budget_s, per_step, step)
            print(f"vae: {per_step * 1e3:.1f} ms/step: {plan['total']} steps fit the {time_budget_s:.0f} s budget")
        if step % 100 == 0:
            bar.set_postfix(loss=f"{torch.stack(losses[-20:]).mean().item():.4f}")
    bar.close()
    return [float(v) for v in torch.stack(losses).cpu()] if losses else []


@torch.no_grad()
def encode_pool(vae, pool: dict[str, Any], tokenizer, device: torch.device, batch_size: int = 500,
                progress: bool = True) -> dict[str, torch.Tensor]:
    """The base's training pool on ``device``: posterior mean/std and caption ids of every scene."""
    vae.eval()
    images = pool["images"]
    means, stds = [], []
    for i in tqdm(range(0, len(images), batch_size), desc="encode pool", disable=not progress):
        dist = vae.encode(to_pixels(images[i:i + batch_size]).to(device)).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return {"mean": torch.cat(means), "std": torch.cat(stds),
            "input_ids": tokenize(tokenizer, pool["captions"]).to(device),
            "n_objects": torch.as_tensor(pool["n_objects"])}


def latent_scaling(pool: dict[str, torch.Tensor]) -> float:
    """1 / std of the (posterior-mean) latents: unit-variance latents, as SD's 0.18215 was chosen."""
    return float(1.0 / pool["mean"].std())


@torch.no_grad()
def vae_check(vae, seed: int, device: torch.device, n: int = 500) -> dict[str, float]:
    """World-detector accuracy on fresh scenes and on their VAE reconstructions (the VAE's ceiling)."""
    from reprolib.miniworld import presence_labels
    from reprolib.worlddetector import detect, load_world_detector
    vae.eval()
    scenes = sample_scenes(n, [CHECK_STREAM, seed, 1], progress=False)
    labels = presence_labels(scenes) > 0.5
    x = to_pixels(stack_images(scenes)).to(device)
    rec = torch.cat([vae.decode(vae.encode(x[i:i + 250]).latent_dist.mean).sample for i in range(0, n, 250)])
    det = load_world_detector(device=device)
    out = {"images": n, "reconstruction_mse": float(F.mse_loss(rec.float(), x))}
    for name, imgs in (("real", (x + 1) / 2), ("reconstructed", ((rec.float() + 1) / 2).clamp(0, 1))):
        pred = detect(det, imgs.permute(0, 2, 3, 1).cpu().numpy()) > 0.5
        out[f"detector_label_accuracy_{name}"] = float((pred == labels).mean())
        out[f"detector_scene_exact_{name}"] = float((pred == labels).all(1).mean())
    return out


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """min(SNR, γ) / SNR per sample (epsilon prediction)."""
    ac = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = ac / (1.0 - ac)
    return torch.clamp(snr, max=gamma) / snr


def lr_lambda(warmup: int, plan: dict[str, int]):
    """Linear warm-up, then cosine to 10 % over ``plan["total"]`` steps (read at call time, so a
    time-budgeted run may fix the total during the warm-up without changing any LR it has used)."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        prog = (step - warmup) / max(1, plan["total"] - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, prog)))
    return f


def warmup_steps(steps: int) -> int:
    return min(100, steps // 10 + 1)


def train_base(unet, text, pool: dict[str, torch.Tensor], scale: float, steps: int, batch_size: int,
               lr: float, seed: int, ckpt: Path, uncond_ids: torch.Tensor, device: torch.device,
               precision: str = "fp32", p_uncond: float = 0.1, ema_decay: float = 0.999,
               ckpt_every: int = 500, time_budget_s: float | None = None, progress: bool = True):
    """Joint UNet + text-encoder training on the pool; resumable from ``ckpt``; returns (EMA unet, EMA
    text, losses, segments, steps). With ``time_budget_s`` the total is fixed after 50 measured steps
    (at most ``steps``). A run resumed with another total recomputes the cosine schedule for it (a warm
    restart); ``segments`` lists [start step, schedule total] of each part."""
    import copy
    sched = sd14_scheduler("ddpm")
    params = list(unet.parameters()) + [p for p in text.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    plan = {"total": steps}
    lrs = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(warmup_steps(steps), plan))
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text).eval()
    start, losses, segments = 0, [], [[0, steps]]
    state = load_state(ckpt)
    if state is not None:
        unet.load_state_dict(state["unet"])
        text.load_state_dict(state["text"])
        ema_unet.load_state_dict(state["ema_unet"])
        ema_text.load_state_dict(state["ema_text"])
        opt.load_state_dict(state["opt"])
        lrs.load_state_dict(state["lrs"])
        start, losses = int(state["step"]), list(state["losses"])
        segments = [list(x) for x in state.get("segments", [[0, start]])]
        plan["total"] = segments[-1][1]
        if steps != plan["total"] and steps > start:   # extended run: a new LR schedule total (warm restart)
            segments.append([start, steps])
            plan["total"] = steps
        else:
            time_budget_s = None                        # finished or same total: nothing left to budget
    unet.train(), text.train()
    frozen_text = not any(p.requires_grad for p in text.parameters())
    ema_params = list(ema_unet.parameters()) + ([] if frozen_text else list(ema_text.parameters()))
    n = pool["mean"].shape[0]
    pending: list[torch.Tensor] = []
    bar = tqdm(total=plan["total"], initial=start, desc="base", disable=not progress, mininterval=2)
    step, timer = start, StepTimer(device)
    while step < plan["total"]:
        g = step_generator(BASE_STREAM, seed, step)
        idx = torch.randint(0, n, (batch_size,), generator=g)
        post = torch.randn((batch_size, *pool["mean"].shape[1:]), generator=g)
        drop = torch.rand(batch_size, generator=g) < p_uncond
        noise = torch.randn(post.shape, generator=g).to(device, non_blocking=True)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=g).to(device)
        idx_d = idx.to(device)
        latents = (pool["mean"][idx_d] + pool["std"][idx_d] * post.to(device)) * scale
        ids = pool["input_ids"][idx_d].clone()
        ids[drop.to(device)] = uncond_ids.to(device)
        noisy = _add_noise(sched, latents, noise, t)
        with autocast(device, precision):
            with torch.set_grad_enabled(not frozen_text):
                states = text(ids)[0]
            pred = unet(noisy, t, states).sample
        per = F.mse_loss(pred.float(), noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per * min_snr_weights(sched, t)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lrs.step()
        d = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - d)
        pending.append(per.detach().mean())
        step += 1
        bar.update(1)
        per_step = timer.tick(step, start) if time_budget_s is not None else None
        if per_step is not None:
            plan["total"] = bar.total = fit_steps(steps, time_budget_s, per_step, step)
            segments[-1][1] = plan["total"]
            print(f"base: {per_step * 1e3:.1f} ms/step: {plan['total']} steps fit the {time_budget_s:.0f} s budget")
        if len(pending) >= 50 or step == plan["total"]:
            losses.extend(float(v) for v in torch.stack(pending).cpu())
            pending = []
            bar.set_postfix(loss=f"{np.mean(losses[-200:]):.4f}", lr=f"{lrs.get_last_lr()[0]:.2e}")
        if step % ckpt_every == 0 or step == plan["total"]:
            save_state(ckpt, {"unet": unet.state_dict(), "text": text.state_dict(),
                              "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(),
                              "opt": opt.state_dict(), "lrs": lrs.state_dict(), "step": step,
                              "losses": losses, "segments": segments})
    bar.close()
    return ema_unet, ema_text, losses, segments, plan["total"]


def _add_noise(sched, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """DDPM forward process on ``latents``' device (the scheduler's ``add_noise`` maths)."""
    ac = sched.alphas_cumprod.to(latents.device)[t].view(-1, 1, 1, 1)
    return ac.sqrt() * latents + (1 - ac).sqrt() * noise


# --------------------------------------------------------------------------- shipping

def save_pipeline(vae, unet, text, tokenizer, out: Path) -> Path:
    """Write unet/ vae/ text_encoder/ scheduler/ (+ model_index.json) atomically (tmp + rename).

    No tokenizer/: the model uses SD1.4's exact tokenizer, which reprolib.models rebuilds offline for a
    folder without one (saves 3.5 MB of vocabulary per shipped model).
    """
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    unet.save_pretrained(tmp / "unet", safe_serialization=True)
    vae.save_pretrained(tmp / "vae", safe_serialization=True)
    text.save_pretrained(tmp / "text_encoder", safe_serialization=True)
    sd14_scheduler("pndm").save_pretrained(tmp / "scheduler")
    (tmp / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None],
        "requires_safety_checker": False, "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}, indent=1))
    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)
    return out


@torch.no_grad()
def sample_check(folder: Path, seed: int, per_category: int = 4, n_multi: int = 10, steps: int = 25,
                 guidance: float = 5.0, device: torch.device | str = "cpu", batch_size: int = 64) -> dict[str, Any]:
    """Detector check of the shipped base: single-object prompts (is the shape found?) and 5-object
    prompts (how many of the 5 are found?)."""
    from reprolib.models import load_components
    from reprolib.worlddetector import load_world_detector, present
    comps = load_components(str(folder))
    pipe = comps.pipeline().to(device)
    pipe.set_progress_bar_config(disable=True)
    det = load_world_detector()
    rng = np.random.default_rng([CHECK_STREAM, seed])
    single = [c for c in CATEGORIES for _ in range(per_category)]
    multi = [[CATEGORIES[i] for i in rng.choice(len(CATEGORIES), 5, replace=False)] for _ in range(n_multi)]

    def gen(cats_list: list[list[str]]) -> list[set[str]]:
        prompts = [caption_for(c) for c in cats_list]
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        found: list[set[str]] = []
        for i in range(0, len(prompts), batch_size):
            out = pipe(prompts[i:i + batch_size], num_inference_steps=steps, guidance_scale=guidance, generator=g,
                       output_type="np")
            found += present(det, out.images.astype(np.float32).clip(0, 1))
        return found

    found1 = gen([[c] for c in single])
    hit = [c in f for c, f in zip(single, found1)]
    only = [f == {c} for c, f in zip(single, found1)]
    found5 = gen(multi)
    counts = [len(set(c) & f) for c, f in zip(multi, found5)]
    per_cat = {c: float(np.mean([h for s, h in zip(single, hit) if s == c])) for c in CATEGORIES}
    return {"single_object_found": float(np.mean(hit)), "single_object_exact": float(np.mean(only)),
            "single_object_per_category": per_cat, "five_object_mean_found": float(np.mean(counts)),
            "five_object_counts": counts, "steps": steps, "guidance_scale": guidance,
            "images_single": len(single), "images_five": len(multi)}


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="autocast on CUDA; CPU is fp32")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="render processes")
    p.add_argument("--vae-pool", type=int, default=40000, help="VAE training scenes (0-5 objects)")
    p.add_argument("--vae-steps", type=int, default=4000)
    p.add_argument("--vae-batch-size", type=int, default=128)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-time-budget-s", type=float, default=None,
                   help="fix the VAE step count from the measured speed to fit this many seconds")
    p.add_argument("--pool", type=int, default=100000, help="base training scenes, encoded once")
    p.add_argument("--steps", type=int, default=30000, help="base steps (the most, with --time-budget-s)")
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="fix the base step count from the measured speed to fit this many seconds")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="whole-script wall budget: the base gets what is left minus --reserve-s")
    p.add_argument("--reserve-s", type=float, default=60.0, help="kept for saving and the sample check")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--ckpt-every", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--check-per-category", type=int, default=10)
    p.add_argument("--check-multi", type=int, default=50)
    p.add_argument("--vae-from", type=Path, default=None,
                   help="a pipeline folder whose vae/ is used as it is (no VAE training; its scaling factor kept)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="a pipeline folder whose unet/ (and text_encoder/ embeddings) initialise the base")
    p.add_argument("--text-layers", type=int, default=TEXT_CONFIG["num_hidden_layers"],
                   help="text-encoder layers; 0 = contextless: each token's state is its own embedding + position")
    p.add_argument("--freeze-text", action="store_true",
                   help="train the UNet only; the text encoder stays as built/initialised (as SD's CLIP is frozen)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    return p.parse_args(argv)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` where there is one), for the record."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def resolve(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    precision = args.precision if device.type == "cuda" else "fp32"
    t0 = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    tokenizer = clip_tokenizer()
    vae, unet, text = build_models(args.seed, args.text_layers)
    text_not_loaded = None
    if args.init_from is not None:
        load_part(unet, args.init_from, "unet")
        text_not_loaded = len(load_part(text, args.init_from, "text_encoder", strict=False))
    if args.freeze_text:
        text.requires_grad_(False)
    vae, unet, text = vae.to(device), unet.to(device), text.to(device)
    vae_ckpt = args.work / "vae.pt"
    state = None if args.vae_from is not None else load_state(vae_ckpt)
    if args.vae_from is not None:
        load_part(vae, args.vae_from, "vae")
        vae_losses: list[float] = []
    elif state is None:
        vpool = render_pool(args.vae_pool, VAE_STREAM, args.seed, VAE_OBJECT_WEIGHTS, 0.1, args.workers)
        images = torch.from_numpy(vpool.pop("images")).to(device)
        vae_losses = train_vae(vae, images, args.vae_steps, args.vae_batch_size, args.vae_lr, args.seed, device,
                               precision, time_budget_s=args.vae_time_budget_s)
        del images, vpool
        save_state(vae_ckpt, {"vae": vae.state_dict(), "losses": vae_losses})
    else:
        vae.load_state_dict(state["vae"])
        vae_losses = list(state["losses"])
    vae_s = time.perf_counter() - t0
    vcheck = vae_check(vae, args.seed, device)
    print("vae check:", {k: round(v, 4) for k, v in vcheck.items()})
    pool = encode_pool(vae, render_pool(args.pool, POOL_STREAM, args.seed, BASE_OBJECT_WEIGHTS, 0.0, args.workers),
                       tokenizer, device)
    scale = latent_scaling(pool)
    if args.vae_from is not None:    # the VAE's own factor: an initialising UNet was trained on it
        scale = float(json.loads((args.vae_from / "vae" / "config.json").read_text())["scaling_factor"])
    vae.register_to_config(scaling_factor=scale)
    uncond = tokenize(tokenizer, [""])[0]
    t1 = time.perf_counter()
    budget = args.time_budget_s
    if args.deadline_s is not None:
        left = args.deadline_s - (t1 - t0) - args.reserve_s
        budget = left if budget is None else min(budget, left)
        print(f"base budget {budget:.0f} s ({args.deadline_s:.0f} s deadline, {t1 - t0:.0f} s spent)")
    ema_unet, ema_text, losses, segments, steps = train_base(
        unet, text, pool, scale, args.steps, args.batch_size, args.lr, args.seed, args.work / "base.pt", uncond,
        device, precision, ema_decay=args.ema_decay, ckpt_every=args.ckpt_every, time_budget_s=budget)
    base_s = time.perf_counter() - t1
    del pool
    out = save_pipeline(vae.eval().cpu(), ema_unet.cpu(), ema_text.cpu(), tokenizer, args.out)
    train_s = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    record = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "script": "scripts/train_world_base.py",
        "argv": sys.argv[1:] if argv is None else argv, "seed": args.seed, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        cpu_name(),
        "precision": precision, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "object_weights": list(BASE_OBJECT_WEIGHTS),
        "vae": {"steps": len(vae_losses), "steps_from_time_budget_s": args.vae_time_budget_s, "batch_size": args.vae_batch_size, "lr": args.vae_lr, "pool": args.vae_pool,
                "final_loss_mean_last_20": float(np.mean(vae_losses[-20:])) if vae_losses else None,
                "from": str(args.vae_from) if args.vae_from else None, "wall_time_s": round(vae_s, 1),
                "scaling_factor": scale, "config": VAE_CONFIG, "check": vcheck},
        "base": {"steps": steps, "steps_from_time_budget_s": budget, "batch_size": args.batch_size,
                 "lr": args.lr, "warmup": warmup_steps(steps), "pool": args.pool,
                 "p_uncond": 0.1, "ema_decay": args.ema_decay, "loss_weighting": "min-snr-5",
                 "schedule_segments": segments,
                 "final_loss_mean_last_200": float(np.mean(losses[-200:])), "wall_time_s": round(base_s, 1),
                 "unet_config": UNET_CONFIG, "text_config": text_config(args.text_layers),
                 "text_frozen": bool(args.freeze_text), "init_from": str(args.init_from) if args.init_from else None,
                 "init_text_keys_not_loaded": text_not_loaded,
                 "unet_parameters": sum(p.numel() for p in ema_unet.parameters()),
                 "text_parameters": sum(p.numel() for p in ema_text.parameters())},
        "train_wall_time_s": round(train_s, 1), "total_wall_time_s": round(time.perf_counter() - t0, 1),
        "folder": str(out.relative_to(REPO)) if out.is_relative_to(REPO) else str(out),
        "folder_bytes": size,
        "unet_sha256": sha256_file(out / "unet" / "diffusion_pytorch_model.safetensors"),
        "loss_curve_every_500": [float(np.mean(losses[i:i + 500])) for i in range(0, len(losses), 500)],
    }
    dest = args.out.parent / f"{args.out.name}.json"
    atomic_write_json(dest, record)          # the weights are on disk: record them before the check
    try:
        check = sample_check(out, args.seed, args.check_per_category, args.check_multi, device=device)
        print(f"single-object prompts: shape found {check['single_object_found']:.3f}, "
              f"exactly it {check['single_object_exact']:.3f}; five-object prompts: "
              f"{check['five_object_mean_found']:.2f} of 5 found")
    except Exception as e:  # noqa: BLE001 - the shipped weights stay; the failure is recorded
        check = {"error": f"{type(e).__name__}: {e}"}
        print(f"sample check failed: {check['error']}")
    record["sample_check"] = check
    record["total_wall_time_s"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(dest, record)
    print(f"wrote {out} ({size / 1e6:.1f} MB) and {dest} in {record['total_wall_time_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
