"""Images/s and peak memory of one TokenCompose training step (stage 02), three ways.

(a) reference-style, like the original code: fp32, batch 1, gradient checkpointing, the attention
    probabilities of all 32 attention layers (16 self + 16 cross) materialised and stored in fp32;
(b) our fast path: bf16 autocast, fused SDPA everywhere except the trained cross-attention groups,
    at the largest batch that fits (``--batch`` fixes it);
(c) plain fine-tuning without any capture, at (b)'s batch and precision.

Each step is the trainer's own :func:`reprolib.train.step_losses` (cached-posterior latents, denoise +
token + pixel losses) + backward + clip + AdamW, on random weights (speed does not depend on them)
and random inputs; the text embeddings are precomputed (the text encoder is frozen and small).
Prints one line per variant and the ratios against the targets ((b) ≥ 20× (a) in images/s;
(b) ≤ 1.10× (c) in step time). Run it on the machine whose numbers you report::

    python benchmarks/train_step.py --tiny                    # tiny UNet, CPU, a minute
    python benchmarks/train_step.py --out runs/paper/train/benchmark.json   # SD1.4 at 512², GPU
"""
from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from reprolib import train as T  # noqa: E402
from reprolib.attention import install_capture, uninstall_capture  # noqa: E402
from reprolib.io import atomic_write_json  # noqa: E402
from reprolib.models import TINY_UNET, sd14_scheduler  # noqa: E402
from reprolib.report import device_info  # noqa: E402

#: SD1.4's ``unet/config.json`` (CompVis/stable-diffusion-v1-4), rebuilt in code: no download needed.
SD14_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
    center_input_sample=False, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1,
)
SD14_LAYERS = ["mid_8", "up_16", "up_32", "up_64"]
TINY_LAYERS = ["mid_4", "up_8", "up_16", "up_32"]
WORDS = [[2], [5, 6], [9]]                             # three grounded words, one of two tokens


def make_unet(config: dict, seed: int = 0):
    from diffusers import UNet2DConditionModel
    torch.manual_seed(seed)
    return UNet2DConditionModel(**config)


def make_batch(bsz: int, latent: int, text_dim: int, layers: list[str], device, seed: int = 0) -> dict:
    """Random step inputs in the trainer's batch layout (cached posterior, per-resolution masks)."""
    g = torch.Generator().manual_seed(seed)
    shape = (bsz, 4, latent, latent)
    res = sorted({T.layer_resolution(x) for x in layers})
    masks = [{r: torch.rand(len(WORDS), r, r, generator=g) > 0.6 for r in res} for _ in range(bsz)]
    return {
        "latent_mean": torch.randn(shape, generator=g).to(device),
        "latent_std": torch.rand(shape, generator=g).to(device),
        "posterior_eps": torch.randn(shape, generator=g).to(device),
        "noise": torch.randn(shape, generator=g).to(device),
        "timesteps": torch.randint(0, 1000, (bsz,), generator=g).to(device),
        "input_ids": torch.zeros(bsz, 77, dtype=torch.long, device=device),
        "token_indices": [WORDS] * bsz, "masks": [{r: m.to(device) for r, m in d.items()} for d in masks],
        "_emb": torch.randn(bsz, 77, text_dim, generator=g).to(device),
    }


def run_variant(unet, batch: dict, layers: list[str], capture: str, dtype: torch.dtype, steps: int,
                warmup: int, checkpointing: bool, max_seconds: float | None = None) -> dict:
    """Median step time and peak memory of `steps` timed training steps (after `warmup`).

    ``max_seconds`` caps the whole call: timing stops early (after at least 2 timed steps) once spent.
    """
    device = batch["latent_mean"].device
    unet = unet.to(device).train()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    store = None
    if capture == "all":
        store = install_capture(unet, "all", capture_self=True)          # every map kept, fp32
    elif capture == "train":
        store = install_capture(unet, layers)
    else:
        uninstall_capture(unet)
    emb = batch["_emb"]
    text = lambda ids: (emb[: ids.shape[0]],)                            # noqa: E731 (frozen encoder, precomputed)
    vae = SimpleNamespace(config=SimpleNamespace(scaling_factor=0.18215))
    sched = sd14_scheduler("ddpm")
    opt = torch.optim.AdamW(unet.parameters(), lr=5e-6)
    lam = (1e-3, 5e-5) if store is not None else (0.0, 0.0)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, start = [], time.perf_counter()
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            parts = T.step_losses(unet, vae, text, sched, batch, store, layers, *lam)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            if max_seconds is not None and len(times) >= 2 and time.perf_counter() - start > max_seconds:
                break
    step_s = statistics.median(times)
    bsz = batch["latent_mean"].shape[0]
    return {"batch": bsz, "step_s": step_s, "images_per_s": bsz / step_s, "timed_steps": len(times),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def fits(unet_fn, bsz, latent, text_dim, layers, device, dtype, checkpointing) -> dict | None:
    """One short run at `bsz`, or None when it does not fit in GPU memory."""
    try:
        batch = make_batch(bsz, latent, text_dim, layers, device)
        return run_variant(unet_fn(), batch, layers, "train", dtype, steps=1, warmup=1, checkpointing=checkpointing)
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def largest_batch(unet_fn, latent, text_dim, layers, device, dtype, checkpointing, limit: int) -> int:
    """Doubling search for the largest power-of-two batch (up to `limit`) whose step fits."""
    best, b = 0, 1
    while b <= limit and fits(unet_fn, b, latent, text_dim, layers, device, dtype, checkpointing):
        best, b = b, b * 2
    if not best:
        raise RuntimeError("even batch 1 does not fit in memory")
    return best


def fmt(name: str, r: dict) -> str:
    mem = f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else "n/a (CPU)"
    return f"{name}: batch {r['batch']}, {r['images_per_s']:.2f} images/s, step {r['step_s'] * 1000:.0f} ms, peak {mem}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true",
                    help="tiny UNet at 64² images (CPU-sized) instead of SD1.4 at 512²")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--batch", type=int, default=None,
                    help="batch of (b) and (c) (default: the largest that fits on GPU, 4 on CPU)")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default=None,
                    help="(b)/(c) precision (default: bf16 on GPU, fp32 on CPU)")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in (b) and (c) too")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 10 GPU, 2 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 GPU, 1 CPU)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    config, layers = (TINY_UNET, TINY_LAYERS) if args.tiny else (SD14_UNET, SD14_LAYERS)
    latent, text_dim = config["sample_size"], config["cross_attention_dim"]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.precision or ("bf16" if gpu else "fp32")]
    steps, warmup = args.steps or (10 if gpu else 2), args.warmup if args.warmup is not None else (3 if gpu else 1)
    base = make_unet(config)
    unet_fn = lambda: copy.deepcopy(base)                                # noqa: E731
    print(f"{'tiny' if args.tiny else 'SD1.4'} UNet, latents {latent}², {device} "
          f"({', '.join(device_info().get('gpus', [])) or 'CPU'}), {steps} timed steps after {warmup}")

    n_attn = len(base.attn_processors)
    out: dict = {"model": "tiny" if args.tiny else "sd14", "latent": latent, "device": str(device),
                 "machine": device_info(), "precision": args.precision or ("bf16" if gpu else "fp32"),
                 "layers": layers, "attention_layers": n_attn}
    out["a"] = run_variant(unet_fn(), make_batch(1, latent, text_dim, layers, device), layers, "all",
                           torch.float32, steps, warmup, checkpointing=True)
    print(fmt(f"(a) reference-style (fp32, all {n_attn} attention maps stored, checkpointing)", out["a"]))
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()
    bsz = args.batch or (largest_batch(unet_fn, latent, text_dim, layers, device, dtype, args.checkpointing,
                                       args.max_batch) if gpu else 4)
    batch = make_batch(bsz, latent, text_dim, layers, device)
    # (b) and (c) interleaved, so drifting clocks or neighbours hit both alike
    b_runs, c_runs = [], []
    for _ in range(2):
        b_runs.append(run_variant(unet_fn(), batch, layers, "train", dtype, steps, warmup, args.checkpointing))
        c_runs.append(run_variant(unet_fn(), batch, layers, "none", dtype, steps, warmup, args.checkpointing))
    out["b"] = min(b_runs, key=lambda r: r["step_s"])
    out["c"] = min(c_runs, key=lambda r: r["step_s"])
    print(fmt(f"(b) fast path ({out['precision']}, {len(layers)} groups captured)", out["b"]))
    print(fmt(f"(c) plain fine-tune ({out['precision']}, no capture)", out["c"]))
    out["speedup_b_over_a"] = out["b"]["images_per_s"] / out["a"]["images_per_s"]
    out["overhead_b_over_c"] = out["b"]["step_s"] / out["c"]["step_s"]
    print(f"ratios: (b)/(a) images/s = {out['speedup_b_over_a']:.1f}x (target >= 20x); "
          f"(b)/(c) step time = {out['overhead_b_over_c']:.3f}x (target <= 1.10x)")
    if args.out:
        atomic_write_json(args.out, out)
        print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
