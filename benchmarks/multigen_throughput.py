"""Throughput of MultiGen's two heavy steps, original-style vs our fast path, on one device.

Generation: images/s of the original's settings (fp32, one image per call, the classic non-fused
``AttnProcessor``) against ours (fp16 on GPU / fp32 on CPU unless ``--precision``, ``--batch-size``
prompts per call, SDPA). Detection: OWLv2 images/s one image per call (the original) against batched.
Same prompts, seeds and images for every variant; one warm-up call each is not timed.

    python benchmarks/multigen_throughput.py --tiny                 # tiny random models, CPU, ~1 min
    python benchmarks/multigen_throughput.py --device cuda          # SD1.4 + OWLv2-large (weights cached)

Prints one line per variant, then the speed-up ratios.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reprolib import detection as det  # noqa: E402
from reprolib import multigen as mg  # noqa: E402
from reprolib.models import SD14  # noqa: E402


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_generation(pipe, items: list[mg.WorkItem], settings: mg.GenSettings, device: str) -> tuple[float, list]:
    """(images per second, images) over ``items`` in batches of ``settings.batch_size``, after one warm-up batch."""
    bs = settings.batch_size
    mg._pipe_call(pipe, items[:bs], settings)
    _sync(device)
    t = time.perf_counter()
    images = []
    for s in range(0, len(items), bs):
        images += mg._pipe_call(pipe, items[s:s + bs], settings)
    _sync(device)
    return len(images) / (time.perf_counter() - t), images


def time_detection(detector: det.Detector, images, categories, batch_size: int, device: str) -> float:
    """Images per second of preprocessing + OWLv2 + post-processing (after one warm-up batch)."""
    detector.predict(images[:batch_size], categories[:batch_size])
    _sync(device)
    t = time.perf_counter()
    for s in range(0, len(images), batch_size):
        detector.predict(images[s:s + batch_size], categories[s:s + batch_size])
    _sync(device)
    return len(images) / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny random models (CPU-friendly)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n-images", type=int, default=None, help="images per variant (default 8 tiny, 32 real)")
    ap.add_argument("--batch-size", type=int, default=None, help="fast-path batch (default 4 tiny, 16 real)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default 4 tiny, 50 real)")
    ap.add_argument("--precision", default=None, help="fast-path precision (default fp16 on GPU, fp32 on CPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tiny, dev = args.tiny, args.device
    n = args.n_images or (8 if tiny else 32)
    bs = args.batch_size or (4 if tiny else 16)
    steps = args.steps or (4 if tiny else 50)
    fast_prec = args.precision or ("fp16" if torch.device(dev).type == "cuda" else "fp32")
    res = 64 if tiny else 512
    base = "tiny" if tiny else SD14

    records = mg.sample_prompts(mg.category_list("coco"), (n + 1) // 2, seed=0)
    items = mg.work_items(records, 2)[:n]
    variants = {
        "original": mg.GenSettings(steps, 7.5, res, 1, "fp32", False, 0, attention="classic"),
        "fast": mg.GenSettings(steps, 7.5, res, bs, fast_prec, False, 0, attention="sdpa"),
    }
    print(f"device {dev} ({torch.cuda.get_device_name(0) if torch.device(dev).type == 'cuda' else 'CPU'}), "
          f"{'tiny' if tiny else 'SD1.4'} {res}², {steps} steps, {n} images, torch threads {torch.get_num_threads()}")
    rates, images = {}, None
    for name, s in variants.items():
        pipe = mg.load_pipeline("sd14", base, s, dev)
        rates[name], imgs = time_generation(pipe, items, s, dev)
        images = images or imgs
        print(f"generation {name:9s} {s.precision} batch={s.batch_size:<3d} attention={s.attention:8s}"
              f" {rates[name]:8.3f} images/s")
        del pipe
    detector = det.load_detector(det.TINY_OWLV2 if tiny else det.OWLV2_LARGE, device=dev,
                                 precision="fp32" if torch.device(dev).type == "cpu" else fast_prec)
    cats = [list(it.categories) for it in items]
    d1 = time_detection(detector, images, cats, 1, dev)
    print(f"detection  one-by-one batch=1  {d1:8.3f} images/s")
    db = time_detection(detector, images, cats, bs, dev)
    print(f"detection  batched    batch={bs:<3d}{db:8.3f} images/s")
    print(f"ratio generation fast/original: {rates['fast'] / rates['original']:.2f}x")
    print(f"ratio detection batched/one-by-one: {db / d1:.2f}x")


if __name__ == "__main__":
    main()
