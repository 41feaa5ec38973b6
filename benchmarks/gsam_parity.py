"""How far apart the two Grounded-SAM backends are on the same weights (stage 01).

The official backend (``groundingdino-py`` + ``segment-anything-hq`` / ``segment-anything``, the authors' code)
and the transformers backend are given the very same checkpoints: a folder of official ``.pth`` files is
loaded by the first and converted into transformers' models for the second
(:func:`reprolib.gsam_official.transformers_twin`). Printed, per segmenter, over ``--images`` images:

* detector, same pixels in: max |Δ| of the token probabilities and of the normalised boxes;
* detector, each backend's own preprocessing: max |Δ| of the pixel boxes, and phrases that differ;
* segmenter, the official backend's boxes given to both: share of mask pixels that disagree, mean IoU;
* SAM-HQ only: the same with transformers' mask decoder made to upsample the two-way transformer's output
  (as the original does) — patched in this script only, to show where the difference comes from.

Default: small random checkpoints (``write_random_checkpoints``) on miniature-world images, CPU::

    python benchmarks/gsam_parity.py                                   # a minute on CPU
    python benchmarks/gsam_parity.py --checkpoints runs/checkpoints/gsam --resize 800 1333 --device cuda
"""
from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import textwrap
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reprolib import gsam, gsam_official as go  # noqa: E402
from reprolib.miniworld import CATEGORIES, sample_scenes  # noqa: E402


def decoder_using_transformer_output(model) -> None:
    """Make transformers' SAM-HQ mask decoder upsample the two-way transformer's image output (as SAM and
    the original SAM-HQ do) instead of its input: a measurement aid, not used by the library."""
    import transformers.models.sam_hq.modeling_sam_hq as M
    dec = model.segmenter.mask_decoder
    src = textwrap.dedent(inspect.getsource(type(dec).forward))
    old = "point_embedding, iou_token_out = self.transformer("
    if old not in src:
        raise RuntimeError("transformers' SamHQMaskDecoder changed; this patch no longer applies")
    ns: dict = {}
    exec(src.replace(old, "point_embedding, image_embeddings = self.transformer("), M.__dict__, ns)
    dec.forward = types.MethodType(ns["forward"], dec)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", default=None, help="folder of official checkpoints (default: small random ones)")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--size", type=int, default=160, help="side of the miniature-world test images")
    ap.add_argument("--resize", type=int, nargs=2, default=(128, 128), help="GroundingDINO's shortest/longest side")
    ap.add_argument("--boxes", type=int, default=8, help="boxes per image given to both segmenters")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    tmp = None
    folder = args.checkpoints
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="gsam_parity_")
        folder = tmp.name
        go.write_random_checkpoints(folder, "small", ("sam", "sam_hq"), seed=args.seed)
    scenes = sample_scenes(args.images, seed=[7, args.seed], size=args.size)
    images = [Image.fromarray(s.image) for s in scenes]
    prompts = [gsam.grounding_prompt(list(s.masks)) for s in scenes]
    print(f"checkpoints: {folder if args.checkpoints else 'small random (write_random_checkpoints)'}; "
          f"{len(images)} images of {args.size}²; GroundingDINO resize {tuple(args.resize)}; device {args.device}")
    print("packages:", go.package_versions())
    det_done = False
    for seg in ("sam", "sam_hq"):
        kw = dict(box_threshold=0.0, text_threshold=0.25, resize=tuple(args.resize), device=args.device)
        off = go.load_official(folder, seg, progress=False, **kw)
        twin = go.transformers_twin(folder, seg, **kw)
        if not det_done:
            dl = db = dpx = 0.0
            phr = tot = 0
            example = None
            for im, p in zip(images, prompts):
                lo, bo, _ = off.detect_logits(im, p)
                pixels, _ = off._transform()(im, None)
                enc = twin.detector_processor.tokenizer([p.lower()], return_tensors="pt").to(args.device)
                with torch.no_grad():
                    hf = twin.detector(pixel_values=pixels[None].to(args.device), **enc)
                n = enc["input_ids"].shape[1]
                dl = max(dl, (hf.logits.sigmoid()[0, :, :n].cpu() - lo[:, :n]).abs().max().item())
                db = max(db, (hf.pred_boxes[0].cpu() - bo).abs().max().item())
                a, b = off.detect([im], [p])[0], twin.detect([im], [p])[0]
                dpx = max(dpx, (a.boxes - b.boxes).abs().max().item())
                diff = [(x, y) for x, y in zip(a.phrases, b.phrases) if x != y]
                phr += len(diff)
                example = example or (diff[0] if diff else None)
                tot += len(a.phrases)
            print(f"GroundingDINO, same pixels: max |Δ prob| {dl:.2e}, max |Δ box| {db:.2e} (normalised)")
            print(f"GroundingDINO, own preprocessing: max |Δ box| {dpx:.3f} px; phrases differing {phr}/{tot}"
                  + (f" (e.g. official {example[0]!r} vs transformers {example[1]!r})" if example else ""))
            det_done = True
        rows = [("as shipped", twin)]
        if seg == "sam_hq":
            fixed = go.transformers_twin(folder, seg, **kw)
            decoder_using_transformer_output(fixed)
            rows.append(("decoder on the transformer's output (patched here)", fixed))
        for label, model in rows:
            flips, ious = [], []
            for im, p in zip(images, prompts):
                boxes = off.detect([im], [p])[0].boxes[: args.boxes]
                a, b = off.segment([im], [boxes])[0], model.segment([im], [boxes])[0]
                flips.append((a != b).mean())
                ious += [iou(x, y) for x, y in zip(a, b)]
            nouns = [list(sc.masks) for sc in scenes]
            fa, fb = off.masks_for(images, nouns), model.masks_for(images, nouns)
            same = sum(set(x) == set(y) for x, y in zip(fa, fb))
            nious = [iou(x[k], y[k]) for x, y in zip(fa, fb) for k in set(x) & set(y)]
            print(f"{seg:6s} {label}: end to end (masks_for), images with the same nouns masked {same}/{len(fa)}, "
                  f"mean IoU of a noun's mask {np.mean(nious) if nious else float('nan'):.4f}")
            print(f"{seg:6s} {label}: mask pixels disagreeing {100 * np.mean(flips):.3f} % "
                  f"(max {100 * np.max(flips):.3f} %), mean IoU {np.mean(ious):.4f}, min IoU {np.min(ious):.4f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
