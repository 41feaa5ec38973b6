#!/usr/bin/env python
"""Train the miniature world's detector and ship it: weights (safetensors) + provenance JSON.

    python scripts/train_world_detector.py                 # writes data/miniworld/
    python scripts/train_world_detector.py --steps 50 --out /tmp/wd   # quick smoke run

Seeded (weights, data, augmentation), CPU by default. After training it measures held-out
per-category accuracy on fresh scenes from an evaluation seed stream disjoint from the training
data: all object counts, 4–5 objects only, all object counts under the training augmentation and
on random-field backgrounds;
and the false-positive rate on object-free images (blank backgrounds, smooth random colour fields).
All measured numbers go to ``detector.json``; nothing is typed in by hand.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reprolib.io import atomic_write_json, sha256_file  # noqa: E402
from reprolib.worlddetector import (  # noqa: E402
    DEFAULT_WEIGHTS, evaluate, false_positive_rate, provenance, save_world_detector, train_world_detector,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-augment", action="store_true", help="train on clean renders only")
    p.add_argument("--dense-weight", type=float, default=1.0, help="0: presence loss only")
    p.add_argument("--eval-n", type=int, default=3000, help="held-out scenes per evaluation")
    p.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS.parent)
    return p.parse_args(argv)


def print_accuracy(name: str, result: dict) -> None:
    cats = result["per_category"]
    print(f"{name}: n={result['n']} min={result['min']:.4f} exact-match={result['exact_match']:.4f}")
    print("  " + "  ".join(f"{c}={a:.4f}" for c, a in cats.items()))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, losses = train_world_detector(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                         seed=args.seed, device=args.device,
                                         augment_images=not args.no_augment, dense_weight=args.dense_weight)
    train_s = time.perf_counter() - t0
    model = model.cpu()
    held_out = {
        "all": evaluate(model, args.eval_n, seed=args.seed),
        "objects_4_5": evaluate(model, args.eval_n, seed=args.seed + 1, n_objects=[0, 0, 0, 1, 1]),
        "all_augmented": evaluate(model, args.eval_n, seed=args.seed + 2, augment_images=True),
        "all_clutter": evaluate(model, args.eval_n, seed=args.seed + 3, clutter=True),
    }
    for name, result in held_out.items():
        print_accuracy(f"held-out {name}", result)
    negatives = false_positive_rate(model, n=500, seed=args.seed)
    print("false-positive rate on object-free images: "
          + "  ".join(f"{k}={v:.4f}" for k, v in negatives.items()))
    weights = save_world_detector(model, args.out / "world_detector.safetensors")
    record = provenance(
        script="scripts/train_world_detector.py", argv=sys.argv[1:] if argv is None else argv,
        seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        augment=not args.no_augment, dense_weight=args.dense_weight, device=args.device, threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(), train_wall_time_s=round(train_s, 1),
        total_wall_time_s=round(time.perf_counter() - t0, 1),
        final_loss_mean_last_50=sum(losses[-50:]) / len(losses[-50:]),
        parameters=sum(p.numel() for p in model.parameters()),
        categories=list(model.categories), widths=list(model.widths), depths=list(model.depths),
        weights=weights.name, weights_sha256=sha256_file(weights),
        held_out_threshold=0.5, held_out=held_out, false_positive_rate=negatives,
    )
    atomic_write_json(args.out / "detector.json", record)
    print(f"wrote {weights} and {args.out / 'detector.json'} in {record['total_wall_time_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
