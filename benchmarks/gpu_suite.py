"""One command for the GPU numbers: every heavy step of the study on SD1.4-size models with random weights.

No network and no weights: the models are built from the real configurations in ``data/archs``
(:func:`reprolib.smoke.build_random`; speed does not depend on the weights' values). Parts, each with its
own time cap so that the whole run fits ``--budget`` (default 8 minutes on one H100/H200):

* ``train``: one TokenCompose optimizer step (``benchmarks/train_step.py``): (a) reference-style (fp32,
  batch 1, all attention maps stored, gradient checkpointing), (b) our fast path (bf16, trained groups
  captured, SDPA elsewhere), (c) plain fine-tuning (no capture), (b) and (c) at the batch that fills the
  GPU and at the paper's effective batch of 4; then the wall time of a 24,500-step retrain at batch 4
  projected from each step time (the data loader and VAE are not in the step: latents are cached).
* ``multigen``: MultiGen generation end to end (prompt encoding, 50 steps with classifier-free guidance,
  VAE decode, safety checker, PNG writing, :func:`reprolib.multigen.generate_images`): original-style
  (fp32, one image per call, classic attention) vs fast (fp16, batch 16, SDPA).
* ``detection``: OWLv2-L (``google/owlv2-large-patch14-ensemble``'s architecture) on the generated
  images, one per call (the original) vs batched.
* ``capture``: stage 04's attention-recording overhead (:func:`reprolib.viz.capture_overhead`, fp32).
* ``bld``: Blended Latent Diffusion (:func:`reprolib.editing.blended_latent_diffusion`, fp16, the
  official 50 steps from 25 %) seconds per image, JPEG strip written.

Writes JSON (``--out``) and prints a table. ``--tiny`` runs the same parts on toy models on CPU in about a
minute: it checks the suite, not the GPU::

    python benchmarks/gpu_suite.py --out runs/benchmarks/gpu_suite.json     # one H100/H200, <= 8 min
    python benchmarks/gpu_suite.py --tiny --out /tmp/gpu_suite_tiny.json    # CPU, toy models
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")             # nothing here may reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import multigen_throughput as MT  # noqa: E402
import train_step as TS  # noqa: E402
from reprolib import detection as det  # noqa: E402
from reprolib import editing, viz  # noqa: E402
from reprolib import multigen as mg  # noqa: E402
from reprolib.config import load_profile  # noqa: E402
from reprolib.io import atomic_write_json  # noqa: E402
from reprolib.models import SD14, Components, clip_tokenizer, sd14_scheduler, tiny_text_encoder, tiny_vae  # noqa: E402
from reprolib.report import device_info  # noqa: E402

OWLV2 = det.OWLV2_LARGE
#: Share of the budget each part may spend (the other 23 %: building the models, warm-ups that overrun a cap).
CAPS = {"train": 0.3, "multigen": 0.22, "detection": 0.05, "capture": 0.1, "bld": 0.1}
#: --tiny: a UNet with SD1.4's block layout at toy width, 16² latents from 32² images (CPU-sized steps).
MICRO_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 16, 32, 32),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
)
PART_KEYS = {
    "train": ("a", "b_fill", "c_fill", "b_paper_batch", "c_paper_batch", "fill_batch", "retrain_hours"),
    "multigen": ("original", "fast", "speedup"),
    "detection": ("one_by_one_images_per_s", "batched_images_per_s", "batch", "speedup"),
    "capture": ("plain_s", "capture_s", "overhead"),
    "bld": ("seconds_per_image", "images"),
}


@dataclass
class Setup:
    """What every part shares: the device, the paper profile, the models (fp32 and half) and the sizes."""
    tiny: bool
    device: torch.device
    paper: Any
    comps: Components                  # fp32 (training copies it; stage 04 runs in fp32)
    half: Components                   # the profile's half precision (MultiGen fast path, BLD)
    half_name: str
    safety: tuple[Any, Any] | None     # (safety checker fp32, feature extractor); None on --tiny
    resolution: int
    steps: int                         # denoising steps of generation / BLD
    work: Path

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def _sync(device: torch.device) -> None:
    MT._sync(str(device))


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build_setup(tiny: bool, device: torch.device, work: Path, steps: int | None) -> Setup:
    """Random models of the real SD1.4 sizes (``data/archs``) on the device, or toy ones with ``--tiny``."""
    paper = load_profile("paper")
    half_name = "fp32" if device.type == "cpu" else paper.multigen.precision
    half_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[half_name]
    safety = None
    if tiny:
        torch.manual_seed(0)
        from diffusers import UNet2DConditionModel
        comps = Components(UNet2DConditionModel(**MICRO_UNET), tiny_vae(0), tiny_text_encoder(0), clip_tokenizer(),
                           sd14_scheduler("pndm"), "toy models (--tiny)").to(device)
        resolution, n_steps = 32, steps or 4
    else:
        from reprolib.smoke import build_random, config_path, sd14_components
        comps = sd14_components(device, seed=0)
        if paper.multigen.safety_checker:
            from transformers import CLIPImageProcessor
            safety = (build_random(SD14, "safety_checker", device, seed=3),
                      CLIPImageProcessor.from_pretrained(config_path(SD14, "feature_extractor").parent))
        resolution, n_steps = paper.model.resolution, steps or paper.multigen.num_inference_steps
    half = copy.deepcopy(comps).to(device, half_dtype)
    for m in (comps.unet, comps.vae, comps.text_encoder, half.unet, half.vae, half.text_encoder):
        m.eval()
    return Setup(tiny, device, paper, comps, half, half_name, safety, resolution, n_steps, work)


# --------------------------------------------------------------------------- parts

def part_train(S: Setup, cap: float, max_batch: int) -> dict[str, Any]:
    """(a), (b), (c) of train_step.py; (b)/(c) at the batch that fills the GPU and at the paper's batch."""
    base = S.comps.unet
    latent, text_dim = base.config.sample_size, base.config.cross_attention_dim
    layers = ["mid_2", "up_4", "up_8", "up_16"] if S.tiny else list(S.paper.train.train_layers)
    fast = torch.bfloat16 if S.gpu and S.paper.train.mixed_precision == "bf16" else \
        torch.float16 if S.gpu and S.paper.train.mixed_precision == "fp16" else torch.float32
    steps, warmup = (10, 3) if S.gpu else (3, 1)
    unet_fn = lambda: copy.deepcopy(base)                                  # noqa: E731
    paper_batch = S.paper.train.batch_size * S.paper.train.grad_accum

    def variant(capture: str, bsz: int, dtype, checkpointing: bool, share: float) -> dict:
        batch = TS.make_batch(bsz, latent, text_dim, layers, S.device)
        r = TS.run_variant(unet_fn(), batch, layers, capture, dtype, steps, warmup, checkpointing,
                           max_seconds=share * cap)
        _free(S.device)
        return r

    out: dict[str, Any] = {"layers": layers, "precision": _dtype_name(fast)}
    out["a"] = variant("all", 1, torch.float32, True, 0.2)
    fill = (TS.largest_batch(unet_fn, latent, text_dim, layers, S.device, fast, False, max_batch)
            if S.gpu else 8)
    _free(S.device)
    out["fill_batch"], out["fill_batch_search"], out["fill_batch_is_limit"] = fill, S.gpu, S.gpu and fill >= max_batch
    for key, bsz in (("fill", fill), ("paper_batch", paper_batch)):
        out[f"b_{key}"] = variant("train", bsz, fast, False, 0.15)
        out[f"c_{key}"] = variant("none", bsz, fast, False, 0.1)
    n = S.paper.train.steps
    out["retrain_steps"], out["paper_batch"] = n, paper_batch
    out["retrain_hours"] = {
        "fast_b_at_paper_batch": n * out["b_paper_batch"]["step_s"] / 3600,
        "plain_c_at_paper_batch": n * out["c_paper_batch"]["step_s"] / 3600,
        "reference_a_batch1_x_accumulation": n * paper_batch * out["a"]["step_s"] / 3600,
    }
    return out


def _generate_timed(pipe, items, settings, folder: Path, cap: float, device) -> dict[str, Any]:
    """Images/s of generate_images (PNG files included) over whole batches until `cap` s are spent."""
    bs = settings.batch_size
    mg.generate_images(pipe, items[:bs], folder / "warmup", settings, progress=False, shard=False)
    _sync(device)
    done, t0 = 0, time.perf_counter()
    for s in range(0, len(items), bs):
        mg.generate_images(pipe, items[s:s + bs], folder, settings, progress=False, shard=False)
        _sync(device)
        done += len(items[s:s + bs])
        if time.perf_counter() - t0 > cap:
            break
    wall = time.perf_counter() - t0
    return {"batch": bs, "precision": settings.precision, "attention": settings.attention, "images": done,
            "seconds": wall, "images_per_s": done / wall, "seconds_per_image": wall / done}


def part_multigen(S: Setup, cap: float) -> dict[str, Any]:
    """Original-style vs fast generation, end to end, same prompts and seeds."""
    fast_bs = 4 if S.tiny else S.paper.multigen.batch_size
    records = mg.sample_prompts(mg.category_list("coco"), 4 * fast_bs, seed=0)
    items = mg.work_items(records, 1)
    guidance, safe = S.paper.multigen.guidance_scale, S.safety is not None
    variants = {
        "original": (mg.GenSettings(S.steps, guidance, S.resolution, 1, "fp32", safe, 0, attention="classic"),
                     S.comps, 0.4),
        "fast": (mg.GenSettings(S.steps, guidance, S.resolution, fast_bs, S.half_name, safe, 0, attention="sdpa"),
                 S.half, 0.6),
    }
    out: dict[str, Any] = {"steps": S.steps, "resolution": S.resolution, "safety_checker": safe}
    for name, (settings, comps, share) in variants.items():
        checker = None
        if S.safety is not None:
            checker = S.safety[0] if settings.precision == "fp32" else copy.deepcopy(S.safety[0]).to(S.half.unet.dtype)
        pipe = mg.build_pipeline(comps, settings, S.device, checker, S.safety[1] if S.safety else None)
        out[name] = _generate_timed(pipe, items, settings, S.work / "multigen" / name, share * cap, S.device)
        del pipe, checker
        _free(S.device)
    from diffusers.models.attention_processor import AttnProcessor2_0
    S.comps.unet.set_attn_processor(AttnProcessor2_0())                   # the original-style run set classic ones
    out["speedup"] = out["fast"]["images_per_s"] / out["original"]["images_per_s"]
    return out


def _owlv2(S: Setup):
    """(model, processor): OWLv2-L's real architecture with random weights, or the toy OWLv2 (--tiny)."""
    if S.tiny:
        return det.tiny_owlv2(0)
    from transformers import AutoTokenizer, Owlv2ImageProcessorPil, Owlv2Processor

    from reprolib.smoke import build_random, config_path, write_tokenizer
    tok = write_tokenizer("clip_owlv2", S.work / "owlv2_tokenizer")
    proc = Owlv2Processor(image_processor=Owlv2ImageProcessorPil.from_pretrained(config_path(OWLV2).parent),
                          tokenizer=AutoTokenizer.from_pretrained(tok))
    return build_random(OWLV2, device=S.device, seed=0), proc


def part_detection(S: Setup, cap: float) -> dict[str, Any]:
    """OWLv2 on the fast variant's PNGs (or random images if generation did not run)."""
    from PIL import Image
    files = sorted((S.work / "multigen" / "fast").glob("*.png"))
    n = 8 if S.tiny else 32
    if files:
        images = [Image.open(f).convert("RGB") for f in files[:n]]
    else:
        g = np.random.default_rng(0)
        images = [Image.fromarray(g.integers(0, 256, (S.resolution, S.resolution, 3), dtype=np.uint8)) for _ in range(n)]
    images = (images * n)[:n]
    model, proc = _owlv2(S)
    dtype = S.half.unet.dtype
    detector = det.owlv2_detector(model, proc, str(S.device), dtype, name=OWLV2)
    cats = [["cat", "dog", "car", "chair", "cup"]] * len(images)
    bs = 4 if S.tiny else S.paper.multigen.batch_size
    t0 = time.perf_counter()
    one = MT.time_detection(detector, images, cats, 1, str(S.device))
    batched = MT.time_detection(detector, images, cats, bs, str(S.device))
    del model, detector
    _free(S.device)
    return {"images": len(images), "precision": _dtype_name(dtype), "batch": bs,
            "one_by_one_images_per_s": one, "batched_images_per_s": batched, "speedup": batched / one,
            "over_cap": time.perf_counter() - t0 > cap}


def part_capture(S: Setup, cap: float) -> dict[str, Any]:
    """Stage 04's capture overhead, fp32 as the stage runs; repeats sized to the cap from the warm-ups."""
    layers = ["up_16"] if S.tiny else list(S.paper.attention.layers)
    g = S.paper.attention.guidance_scale
    prompt = "A tiger wearing an astronaut suit and drinking a cup of coffee"
    timed = []
    for fn in (lambda: viz.generate_images(S.comps, [prompt], 0, S.steps, g, S.resolution, S.resolution),
               lambda: viz.generate_with_attention(S.comps, prompt, 0, layers, S.steps, g, S.resolution, S.resolution)):
        t0 = time.perf_counter()
        fn()                                                               # warm-up, timed to size the repeats
        _sync(S.device)
        timed.append(time.perf_counter() - t0)
    repeats = int(max(1, min(5, (cap - sum(timed)) // sum(timed))))
    res = viz.capture_overhead(S.comps, prompt, layers, S.steps, g, repeats=repeats, height=S.resolution,
                               width=S.resolution, warmup=False)
    res.update(layers=layers, repeats=repeats, steps=S.steps)
    return res


def part_bld(S: Setup, cap: float) -> dict[str, Any]:
    """Seconds per edited image (encode, the blended denoising loop, decode, JPEG strip) in the profile's precision."""
    opts = replace(editing.BLDOptions.from_profile(S.paper), num_inference_steps=S.steps, resolution=S.resolution)
    g = np.random.default_rng(0)
    r = S.resolution
    image = g.integers(0, 256, (r, r, 3), dtype=np.uint8)
    mask = np.zeros((r, r), np.uint8)
    mask[r // 4: 3 * r // 4, r // 4: 3 * r // 4] = 1
    prompt = "a photo of a cat sitting on a bench"

    def one(i: int) -> None:
        res = editing.blended_latent_diffusion(S.half, image, mask, prompt, opts, S.device)
        editing.save_edit(S.work / "bld" / f"{i}.jpg", image, res.image, prompt, opts.save_as)

    one(-1)                                                                # warm-up
    _sync(S.device)
    times, t0 = [], time.perf_counter()
    while len(times) < 10 and (not times or time.perf_counter() - t0 < cap):
        t = time.perf_counter()
        one(len(times))
        _sync(S.device)
        times.append(time.perf_counter() - t)
    return {"seconds_per_image": statistics.median(times), "images": len(times), "steps": opts.num_inference_steps,
            "blended_steps": len(editing.blending_timesteps(editing.bld_scheduler(), opts)),
            "precision": _dtype_name(S.half.unet.dtype)}


# --------------------------------------------------------------------------- table

def rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(part, what, value) lines of the printed table."""
    p, out = result["parts"], []
    if "train" in p and "a" in p["train"]:
        t = p["train"]
        for k, label in (("a", "(a) reference-style, fp32, all maps, checkpointing"),
                         ("b_fill", "(b) fast path, batch that fills the GPU" if p["train"]["fill_batch_search"]
                          else "(b) fast path, large batch (no GPU to fill)"), ("c_fill", "(c) plain, same batch"),
                         ("b_paper_batch", "(b) fast path, paper's batch"), ("c_paper_batch", "(c) plain, paper's batch")):
            r = t[k]
            mem = f", peak {r['peak_gib']:.1f} GiB" if r.get("peak_gib") is not None else ""
            prec = "fp32" if k == "a" else t["precision"]
            out.append(("train", f"{label} ({r['batch']}, {prec})",
                        f"{r['images_per_s']:.2f} images/s, {1000 * r['step_s']:.0f} ms/step{mem}"))
        for k, h in t["retrain_hours"].items():
            out.append(("train", f"{t['retrain_steps']:,} steps at batch {t['paper_batch']}: {k}", f"{h:.2f} h"))
    if "multigen" in p and "fast" in p["multigen"]:
        m = p["multigen"]
        for k in ("original", "fast"):
            r = m[k]
            out.append(("multigen", f"{k}: {r['precision']}, batch {r['batch']}, {r['attention']}, {m['steps']} steps",
                        f"{r['seconds_per_image']:.3f} s/image ({r['images']} images)"))
        out.append(("multigen", "speed-up fast / original", f"{m['speedup']:.1f}x"))
    if "detection" in p and "batch" in p["detection"]:
        d = p["detection"]
        out.append(("detection", f"OWLv2 one per call ({d['precision']})", f"{d['one_by_one_images_per_s']:.1f} images/s"))
        out.append(("detection", f"OWLv2 batch {d['batch']}", f"{d['batched_images_per_s']:.1f} images/s"))
    if "capture" in p and "overhead" in p["capture"]:
        c = p["capture"]
        out.append(("capture", f"plain vs recording {c['layers']}, {c['steps']} steps, median of {c['repeats']}",
                    f"{c['plain_s']:.2f} s vs {c['capture_s']:.2f} s ({100 * c['overhead']:+.1f} %)"))
    if "bld" in p and "seconds_per_image" in p["bld"]:
        b = p["bld"]
        out.append(("bld", f"BLD {b['precision']}, {b['blended_steps']} of {b['steps']} steps, median of {b['images']}",
                    f"{b['seconds_per_image']:.2f} s/image"))
    for name, r in p.items():
        if "error" in r or "skipped" in r:
            out.append((name, "not measured", r.get("error") or r["skipped"]))
    return out


def print_table(result: dict[str, Any]) -> None:
    lines = rows(result)
    w0, w1 = max(len(r[0]) for r in lines), max(len(r[1]) for r in lines)
    for part, what, value in lines:
        print(f"{part:<{w0}}  {what:<{w1}}  {value}")
    print(f"total {result['total_s']:.0f} s of a {result['budget_s']:.0f} s budget on {result['device_name']}")


# --------------------------------------------------------------------------- main

def run_suite(tiny: bool = False, device: str | None = None, budget: float | None = None, parts=None,
              max_batch: int = 64, steps: int | None = None, work: Path | None = None,
              log: Callable[[str], None] = print, keep_going: bool = False) -> dict[str, Any]:
    """Every part in order, each within its cap; a part that fails is recorded (with its error) and the rest run.

    A part that would start with less than half its cap left before the budget's end is skipped (and
    recorded so), unless ``keep_going``.
    """
    t_start = time.perf_counter()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    budget = budget or (480.0 if not tiny else 240.0)
    parts = list(parts or CAPS)
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        S = build_setup(tiny, dev, Path(work or tmp), steps)
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
        result: dict[str, Any] = {
            "suite": "benchmarks/gpu_suite.py", "mode": "tiny" if tiny else "sd14", "device": str(dev),
            "device_name": name, "machine": device_info(), "torch": torch.__version__, "budget_s": budget,
            "models": S.comps.source,
            "setup_s": time.perf_counter() - t_start, "parts": {}}
        log(f"models ready in {result['setup_s']:.0f} s on {name}")
        fns = {"train": lambda c: part_train(S, c, max_batch), "multigen": lambda c: part_multigen(S, c),
               "detection": lambda c: part_detection(S, c), "capture": lambda c: part_capture(S, c),
               "bld": lambda c: part_bld(S, c)}
        deadline = t_start + budget
        for part in parts:
            cap = CAPS[part] * budget
            if not keep_going and time.perf_counter() + 0.5 * cap > deadline:
                result["parts"][part] = {"skipped": "budget spent"}
                continue
            t0 = time.perf_counter()
            try:
                result["parts"][part] = fns[part](cap)
            except Exception as e:                       # noqa: BLE001 (recorded; the other parts still run)
                result["parts"][part] = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
            result["parts"][part]["seconds"] = time.perf_counter() - t0
            result["parts"][part]["cap_s"] = cap
            log(f"{part}: {result['parts'][part]['seconds']:.0f} s (cap {cap:.0f} s)")
            _free(dev)
        result["total_s"] = time.perf_counter() - t_start
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="toy models on CPU: checks the suite runs (about a minute)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole suite (default 480; --tiny 240)")
    ap.add_argument("--parts", nargs="+", choices=list(CAPS), default=None, help="run only these parts")
    ap.add_argument("--max-batch", type=int, default=64, help="largest training batch tried when filling the GPU")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the paper's 50; --tiny 4)")
    ap.add_argument("--keep-going", action="store_true", help="run every part even after the budget is spent")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_suite(args.tiny, args.device, args.budget, args.parts, args.max_batch, args.steps,
                       keep_going=args.keep_going)
    print_table(result)
    if args.out:
        atomic_write_json(args.out, json.loads(json.dumps(result, default=str)))
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
