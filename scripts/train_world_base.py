#!/usr/bin/env python
"""Train the miniature world's base text-to-image model and ship it as a diffusers pipeline folder.

    python scripts/train_world_base.py --threads 1                  # writes data/miniworld/base/ + base.json
    python scripts/train_world_base.py --vae-steps 5 --steps 5 --out /tmp/wb --work /tmp/wb_work   # smoke run

What it trains, from scratch, seeded, on fresh miniworld renders (64×64 RGB):

1. a tiny ``AutoencoderKL`` (64² RGB → 4×16×16 latents, factor 4) on scenes of 0–5 objects, MSE
   reconstruction + a small KL term; its latent scaling factor is then measured (1 / std of the
   latents, as SD's 0.18215 was chosen);
2. a small ``UNet2DConditionModel`` with SD1.4's block layout at toy width (cross-attention at latent
   sides 16, 8, 4 and a mid block at 2: groups down_16/8/4, mid_2, up_4/8/16, the analogues of SD1.4's
   down_64/32/16, mid_8, up_16/32/64) jointly with a small ``CLIPTextModel`` fed by SD1.4's real
   tokenizer (:func:`reprolib.models.clip_tokenizer`). Epsilon objective under SD1.4's noise schedule
   (scaled-linear betas, 1000 steps), min-SNR-5 loss weighting (Hang et al. 2023: faster convergence
   for a tiny budget), captions dropped 10 % of the time (for classifier-free guidance), EMA weights
   shipped.

Why a VAE and not pixel space: the other stages drive ``StableDiffusionPipeline``, which needs one,
and 16² latents make every UNet step 16× cheaper than 64² pixels on a CPU.

The training scenes mostly show one or two objects (P(1..5) = .5, .35, .1, .04, .01), like web
captions for SD, so that the base composes 4–5 categories poorly and leaves room for TokenCompose.

After training it generates single-object and five-object prompts and asks the world detector
(:mod:`reprolib.worlddetector`) what is there: the fraction of single-object prompts whose shape is
found is the sanity check recorded in ``base.json`` (with seed, steps, device, wall time, loss).
A killed run resumes from ``--work`` (VAE weights, UNet/text/EMA/optimizer checkpoint every 100 steps).
"""
from __future__ import annotations

import argparse
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

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1, norm_num_groups=8, sample_size=64,
)
# The tiny profile's UNet layout (SD1.4's blocks) at 16² latents and a little wider; the text encoder is
# the tiny profile's exactly.
UNET_CONFIG = {**TINY_UNET, "sample_size": 16, "block_out_channels": (32, 64, 64, 64), "norm_num_groups": 16}
TEXT_CONFIG = dict(TINY_TEXT)


# --------------------------------------------------------------------------- data

def to_pixels(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float in [-1, 1], the pipeline's convention."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def vae_batch(seed: int, step: int, batch_size: int) -> torch.Tensor:
    """Fresh scenes for one VAE step (1 in 10 empty), a pure function of (seed, step)."""
    scenes = sample_scenes(batch_size, [VAE_STREAM, seed, step], n_objects=VAE_OBJECT_WEIGHTS, progress=False)
    images = stack_images(scenes)
    rng = np.random.default_rng([VAE_STREAM, seed, step, 1])
    empty = rng.random(batch_size) < 0.1
    images[empty] = images[empty][:, :1, :1]          # background colour over the whole image
    return to_pixels(images)


def tokenize(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """(N, 77) ids padded to max length, as StableDiffusionPipeline tokenizes prompts."""
    return tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


# --------------------------------------------------------------------------- models

def build_models(seed: int):
    """Fresh VAE, UNet and text encoder (seeded)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    return vae, unet, text


def save_state(path: Path, state: dict[str, Any]) -> Path:
    return atomic_save(path, lambda p: torch.save(state, p))


def load_state(path: Path) -> dict[str, Any] | None:
    return torch.load(path, weights_only=True) if path.is_file() else None


def train_vae(vae, steps: int, batch_size: int, lr: float, seed: int, kl_weight: float = 1e-6,
              progress: bool = True) -> list[float]:
    """MSE reconstruction of fresh world scenes + ``kl_weight`` × KL; AdamW, cosine LR."""
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 2), pct_start=0.1)
    losses: list[float] = []
    bar = tqdm(range(steps), desc="vae", disable=not progress)
    for step in bar:
        x = vae_batch(seed, step, batch_size)
        dist = vae.encode(x).latent_dist
        rec = vae.decode(dist.sample()).sample
        loss = F.mse_loss(rec, x) + kl_weight * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    return losses


@torch.no_grad()
def encode_pool(vae, n: int, seed: int, tokenizer, batch_size: int = 100, progress: bool = True
                ) -> dict[str, torch.Tensor]:
    """The base's training pool: ``n`` scenes (BASE_OBJECT_WEIGHTS), posterior mean/std and caption ids."""
    vae.eval()
    scenes = sample_scenes(n, [POOL_STREAM, seed], n_objects=BASE_OBJECT_WEIGHTS, progress=progress)
    means, stds = [], []
    for i in tqdm(range(0, n, batch_size), desc="encode pool", disable=not progress):
        dist = vae.encode(to_pixels(stack_images(scenes[i:i + batch_size]))).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return {"mean": torch.cat(means), "std": torch.cat(stds),
            "input_ids": tokenize(tokenizer, [s.caption for s in scenes]),
            "n_objects": torch.tensor([len(s.categories) for s in scenes])}


def latent_scaling(pool: dict[str, torch.Tensor]) -> float:
    """1 / std of the (posterior-mean) latents: unit-variance latents, as SD's 0.18215 was chosen."""
    return float(1.0 / pool["mean"].std())


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """min(SNR, γ) / SNR per sample (epsilon prediction)."""
    ac = scheduler.alphas_cumprod[timesteps]
    snr = ac / (1.0 - ac)
    return torch.clamp(snr, max=gamma) / snr


def lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        prog = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, prog)))
    return f


def train_base(unet, text, pool: dict[str, torch.Tensor], scale: float, steps: int, batch_size: int,
               lr: float, seed: int, ckpt: Path, uncond_ids: torch.Tensor, p_uncond: float = 0.1,
               ema_decay: float = 0.995, ckpt_every: int = 100, progress: bool = True):
    """Joint UNet + text-encoder training on the pool; resumable from ``ckpt``; returns (EMA unet, EMA
    text, losses, segments). A run resumed with a larger ``steps`` recomputes the cosine schedule for
    the new total (a warm restart); ``segments`` lists [start step, schedule total] of each part."""
    import copy
    sched = sd14_scheduler("ddpm")
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    lrs = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(min(100, steps // 10 + 1), steps))
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
        if segments[-1][1] != steps:          # extended run: the LR schedule is recomputed for the new total
            segments.append([start, steps])
    unet.train(), text.train()
    n = pool["mean"].shape[0]
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="base", disable=not progress)
    for step in bar:
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([BASE_STREAM, seed, step]).generate_state(1)[0]))
        idx = torch.randint(0, n, (batch_size,), generator=g)
        mean, std = pool["mean"][idx], pool["std"][idx]
        latents = (mean + std * torch.randn(mean.shape, generator=g)) * scale
        ids = pool["input_ids"][idx].clone()
        drop = torch.rand(batch_size, generator=g) < p_uncond
        ids[drop] = uncond_ids
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=g)
        noisy = sched.add_noise(latents, noise, t)
        pred = unet(noisy, t, text(ids)[0]).sample
        per = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per * min_snr_weights(sched, t)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lrs.step()
        d = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for src, dst in ((unet, ema_unet), (text, ema_text)):
                for p_s, p_d in zip(src.parameters(), dst.parameters()):
                    p_d.lerp_(p_s, 1.0 - d)
        losses.append(per.mean().item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if (step + 1) % ckpt_every == 0 or step + 1 == steps:
            save_state(ckpt, {"unet": unet.state_dict(), "text": text.state_dict(),
                              "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(),
                              "opt": opt.state_dict(), "lrs": lrs.state_dict(), "step": step + 1,
                              "losses": losses, "segments": segments})
    return ema_unet, ema_text, losses, segments


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
    import json
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
                 guidance: float = 5.0) -> dict[str, Any]:
    """Detector check of the shipped base: single-object prompts (is the shape found?) and 5-object
    prompts (how many of the 5 are found?)."""
    from reprolib.models import load_components
    from reprolib.worlddetector import load_world_detector, present
    comps = load_components(str(folder))
    pipe = comps.pipeline()
    det = load_world_detector()
    rng = np.random.default_rng([CHECK_STREAM, seed])
    single = [c for c in CATEGORIES for _ in range(per_category)]
    multi = [[CATEGORIES[i] for i in rng.choice(len(CATEGORIES), 5, replace=False)] for _ in range(n_multi)]

    def gen(cats_list: list[list[str]]) -> list[set[str]]:
        prompts = [caption_for(c) for c in cats_list]
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=g, output_type="np")
        return present(det, out.images.astype(np.float32).clip(0, 1))

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
    p.add_argument("--vae-steps", type=int, default=250)
    p.add_argument("--vae-batch-size", type=int, default=16)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--pool", type=int, default=10000, help="training scenes encoded once")
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--check-per-category", type=int, default=4)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    tokenizer = clip_tokenizer()
    vae, unet, text = build_models(args.seed)
    vae_ckpt = args.work / "vae.pt"
    state = load_state(vae_ckpt)
    if state is None:
        vae_losses = train_vae(vae, args.vae_steps, args.vae_batch_size, args.vae_lr, args.seed)
        save_state(vae_ckpt, {"vae": vae.state_dict(), "losses": vae_losses})
    else:
        vae.load_state_dict(state["vae"])
        vae_losses = list(state["losses"])
    vae_s = time.perf_counter() - t0
    pool = encode_pool(vae, args.pool, args.seed, tokenizer)
    scale = latent_scaling(pool)
    vae.register_to_config(scaling_factor=scale)
    uncond = tokenize(tokenizer, [""])[0]
    t1 = time.perf_counter()
    ema_unet, ema_text, losses, segments = train_base(unet, text, pool, scale, args.steps, args.batch_size, args.lr,
                                            args.seed, args.work / "base.pt", uncond)
    base_s = time.perf_counter() - t1
    out = save_pipeline(vae.eval(), ema_unet, ema_text, tokenizer, args.out)
    train_s = time.perf_counter() - t0
    check = sample_check(out, args.seed, args.check_per_category)
    print(f"single-object prompts: shape found {check['single_object_found']:.3f}, "
          f"exactly it {check['single_object_exact']:.3f}; five-object prompts: "
          f"{check['five_object_mean_found']:.2f} of 5 found")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    record = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "script": "scripts/train_world_base.py",
        "argv": sys.argv[1:] if argv is None else argv, "seed": args.seed, "device": "cpu",
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "object_weights": list(BASE_OBJECT_WEIGHTS),
        "vae": {"steps": args.vae_steps, "batch_size": args.vae_batch_size, "lr": args.vae_lr,
                "final_loss_mean_last_20": float(np.mean(vae_losses[-20:])), "wall_time_s": round(vae_s, 1),
                "scaling_factor": scale, "config": VAE_CONFIG},
        "base": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "pool": args.pool,
                 "p_uncond": 0.1, "ema_decay": 0.995, "loss_weighting": "min-snr-5",
                 "schedule_segments": segments,
                 "final_loss_mean_last_50": float(np.mean(losses[-50:])), "wall_time_s": round(base_s, 1),
                 "unet_config": UNET_CONFIG, "text_config": TEXT_CONFIG,
                 "unet_parameters": sum(p.numel() for p in ema_unet.parameters()),
                 "text_parameters": sum(p.numel() for p in ema_text.parameters())},
        "train_wall_time_s": round(train_s, 1), "total_wall_time_s": round(time.perf_counter() - t0, 1),
        "folder": str(out.relative_to(REPO)) if out.is_relative_to(REPO) else str(out),
        "folder_bytes": size,
        "unet_sha256": sha256_file(out / "unet" / "diffusion_pytorch_model.safetensors"),
        "sample_check": check,
        "loss_curve_every_50": [float(np.mean(losses[i:i + 50])) for i in range(0, len(losses), 50)],
    }
    dest = args.out.parent / f"{args.out.name}.json"
    atomic_write_json(dest, record)
    print(f"wrote {out} ({size / 1e6:.1f} MB) and {dest} in {record['total_wall_time_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
