"""The miniature world's object detector: a small CNN that says which of the ten shapes are present.

On the `tiny` profile MultiGen cannot use OWLv2 (too big, and it knows nothing of this world), so it
asks this multi-label classifier instead: one sigmoid per category, "present" at probability 0.5.
The shipped weights (``data/miniworld/world_detector.safetensors``) come from
``scripts/train_world_detector.py``; ``data/miniworld/detector.json`` records how they were made and the
held-out per-category accuracy the script measured.

Design choices:

* **Presence, not boxes.** MultiGen's MG-k only asks whether each prompted object was detected, so
  per-category presence is all the detector must provide.
* **Fully convolutional, max over space.** A per-location linear head gives a coarse logit map
  (stride 8) and presence is its maximum: presence of a shape anywhere is a max over space, and the
  head is independent of the image size.
* **Dense auxiliary supervision.** The world's masks are exact, so besides the presence loss each
  map cell is trained to say whether it holds a substantial part of an object (≥ ``DENSE_POSITIVE`` of
  the cell: positive; no pixel: negative; in between: ignored). Many labels per image instead of ten
  makes training several times more sample-efficient, which is what lets it finish on a CPU.
* **Robust to generated images.** Training uses infinite fresh renders (no sample is seen twice),
  per-image augmentation that mimics what small diffusion models produce (gaussian blur σ up to
  1.5 px, additive gaussian noise σ up to 0.08, brightness/contrast/saturation jitter; see
  :func:`augment`), object-free images (so blank generations score "nothing") and smooth random
  colour fields as background or on their own (:func:`random_fields`), so that blobs and texture
  are not taken for shapes; without these a detector trained on grey backgrounds fires on every
  smooth noise image. The script reports the false-positive rate on such object-free images.
* **Any input size.** Images whose side differs from the training size are resized (antialiased
  bilinear) before classification.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from .io import atomic_save
from .miniworld import CATEGORIES, Scene, presence_labels, render_scene, sample_scenes, stack_images

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "data" / "miniworld" / "world_detector.safetensors"
FORMAT = "reprolib.worlddetector/1"

#: Streams of scene seeds (``sample_scenes(seed=[tag, seed, ...])``) kept disjoint from integer seeds.
TRAIN_STREAM, EVAL_STREAM = 1, 2
#: Fraction of a logit-map cell an object must cover to be a positive of the dense loss.
DENSE_POSITIVE = 0.2
#: Weights of 1..5 objects in training scenes: crowded scenes are the hard ones (and carry more labels).
TRAIN_OBJECT_WEIGHTS = (1.0, 1.0, 2.0, 2.0, 2.0)
#: Grid sides of the smooth random colour fields used as clutter (bigger: finer blobs).
FIELD_GRIDS = (2, 3, 4, 6, 8, 12)


class WorldDetector(nn.Module):
    """Conv-BN-ReLU stages, a per-location linear head, max over locations (~117k parameters).

    Stage 0 is one 4×4 stride-2 conv (64 → 32 px: on a CPU the full-resolution activations cost most
    of the time, and a 4×4 kernel still sees every pixel); stage 1 runs at half resolution; each later
    stage starts with 2× max pooling. Stage i has ``depths[i]`` 3×3 convs of ``widths[i]`` channels.
    """

    def __init__(self, categories: Sequence[str] = CATEGORIES, widths: Sequence[int] = (16, 32, 64, 96),
                 depths: Sequence[int] = (1, 1, 2, 1), size: int = 64) -> None:
        super().__init__()
        if (not categories or len(widths) < 2 or len(widths) != len(depths) or min(depths) < 1
                or depths[0] != 1):
            raise ValueError(f"WorldDetector: bad categories/widths/depths {categories}, {widths}, {depths}")
        self.categories: tuple[str, ...] = tuple(categories)
        self.widths: tuple[int, ...] = tuple(int(w) for w in widths)
        self.depths: tuple[int, ...] = tuple(int(d) for d in depths)
        self.size = int(size)
        layers: list[nn.Module] = _conv(3, self.widths[0], kernel=4, stride=2)
        c_in = self.widths[0]
        for i, (w, d) in enumerate(zip(self.widths[1:], self.depths[1:]), start=1):
            if i > 1:
                layers.append(nn.MaxPool2d(2))
            for _ in range(d):
                layers += _conv(c_in, w)
                c_in = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(self.widths[-1], len(self.categories))

    def logit_map(self, x: torch.Tensor) -> torch.Tensor:
        """Per-location logits (N, C, H/8, W/8) of float images (N, 3, H, W) in [0, 1]."""
        h = self.features(x * 2.0 - 1.0)
        return self.head(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Presence logits (N, C): the maximum of :meth:`logit_map` over space."""
        return torch.amax(self.logit_map(x), dim=(2, 3))


def _conv(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


# --------------------------------------------------------------------------- weights

def save_world_detector(model: WorldDetector, path: str | os.PathLike) -> Path:
    """Write the weights (safetensors, atomically) with categories/widths/size in the metadata."""
    meta = {"format": FORMAT, "categories": json.dumps(list(model.categories)),
            "widths": json.dumps(list(model.widths)), "depths": json.dumps(list(model.depths)),
            "size": str(model.size)}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_save(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def load_world_detector(path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
                        ) -> WorldDetector:
    """The detector in eval mode; default: the shipped weights in ``data/miniworld/``."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"world detector weights not found: {path} "
                                f"(train them with scripts/train_world_detector.py)")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a world detector (metadata format {meta.get('format')!r})")
    model = WorldDetector(json.loads(meta["categories"]), json.loads(meta["widths"]),
                          json.loads(meta["depths"]), int(meta["size"]))
    model.load_state_dict(state)
    return model.to(device).eval()


# --------------------------------------------------------------------------- inference

def to_input(images: np.ndarray | torch.Tensor, size: int | None = None) -> torch.Tensor:
    """(N, H, W, 3) uint8, or float in [0, 1] → float (N, 3, size, size) in [0, 1]."""
    x = torch.as_tensor(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.is_floating_point():
        x = x.float()
    else:
        raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {x.dtype}")
    x = x.permute(0, 3, 1, 2).contiguous()
    if size is not None and x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


@torch.inference_mode()
def detect(model: WorldDetector, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Presence probabilities (N, C) as float32 numpy, columns in ``model.categories`` order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = to_input(images, model.size)
    out = [torch.sigmoid(model(x[i:i + batch_size].to(device))).float().cpu()
           for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, len(model.categories)), np.float32)


def present(model: WorldDetector, images: np.ndarray | torch.Tensor, threshold: float = 0.5,
            batch_size: int = 256) -> list[set[str]]:
    """The set of categories detected in each image (probability >= ``threshold``)."""
    probs = detect(model, images, batch_size)
    return [{c for c, p in zip(model.categories, row) if p >= threshold} for row in probs]


# --------------------------------------------------------------------------- training

def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None].clamp_min(1e-3)) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def augment(x: torch.Tensor, generator: torch.Generator, max_blur: float = 1.5, max_noise: float = 0.08,
            jitter: float = 0.2, p_blur: float = 0.7, p_noise: float = 0.7) -> torch.Tensor:
    """Per-image degradations resembling small diffusion models' output (x: (N, 3, H, W) in [0, 1]).

    Brightness, contrast and saturation factors in [1 - jitter, 1 + jitter]; with probability
    ``p_blur`` a gaussian blur with σ ~ U(0.3, max_blur) px; with probability ``p_noise`` additive
    gaussian noise with σ ~ U(0, max_noise). Hue is not jittered: object colours are already random.
    """
    n = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=generator)).to(x)

    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = gray + u(1 - jitter, 1 + jitter) * (x - gray)                          # saturation
    mean = gray.mean(dim=(2, 3), keepdim=True)
    x = mean + u(1 - jitter, 1 + jitter) * (x - mean)                          # contrast
    x = x * u(1 - jitter, 1 + jitter)                                          # brightness
    sigma = (0.3 + (max_blur - 0.3) * torch.rand(n, generator=generator)).to(x)
    blur = (torch.rand(n, generator=generator) < p_blur).to(x.device)
    radius = max(1, math.ceil(2 * max_blur))
    k = _gaussian_kernels(sigma, radius).repeat_interleave(3, dim=0)            # (3N, K)
    c, h, w = x.shape[1:]
    y = F.pad(x.reshape(1, n * c, h, w), (radius,) * 4, mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c).reshape(n, c, h, w)
    x = torch.where(blur[:, None, None, None], y, x)
    noise = u(0.0, max_noise) * (torch.rand(n, 1, 1, 1, generator=generator) < p_noise).to(x)
    x = x + noise * torch.randn(x.shape, generator=generator).to(x)
    return x.clamp(0.0, 1.0)


def mask_stack(scenes: Sequence[Scene], categories: Sequence[str] = CATEGORIES) -> np.ndarray:
    """(N, C, H, W) bool visible masks of each category (all False where absent)."""
    index = {c: i for i, c in enumerate(categories)}
    h, w = scenes[0].image.shape[:2]
    out = np.zeros((len(scenes), len(index), h, w), dtype=bool)
    for row, scene in enumerate(scenes):
        for c, m in scene.masks.items():
            out[row, index[c]] = m
    return out


def dense_targets(masks: torch.Tensor, grid: tuple[int, int], positive: float = 0.2
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell (target, weight) of (N, C, *grid): cells covered >= ``positive`` are 1, cells with
    no pixel of the category are 0, partly covered cells get weight 0 (ignored)."""
    frac = F.adaptive_avg_pool2d(masks.float(), grid)
    target = (frac >= positive).float()
    weight = ((frac >= positive) | (frac == 0)).float()
    return target, weight


def stream_seed(*key: int) -> int:
    """A torch seed drawn from numpy's ``SeedSequence(key)``: torch streams as disjoint as numpy's."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def random_fields(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(n, size, size, 3) uint8 smooth random colour fields: a k×k random grid (k in ``FIELD_GRIDS``)
    upsampled bicubically and blended toward a random grey; object-free clutter for training."""
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        k = int(rng.choice(FIELD_GRIDS))
        coarse = torch.from_numpy(rng.random((1, 3, k, k), dtype=np.float32))
        field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]
        grey, alpha = rng.uniform(0.3, 0.95), rng.uniform(0.3, 1.0)
        field = (grey + alpha * (field - grey)).clamp(0.0, 1.0)
        out[i] = (field.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return out


def with_background(images: np.ndarray, masks: np.ndarray, backgrounds: np.ndarray) -> np.ndarray:
    """Replace the background (pixels in no mask; masks (N, C, H, W)) of each image."""
    objects = masks.any(axis=1)[..., None]
    return np.where(objects, images, backgrounds)


def training_batch(seed: int, step: int, batch_size: int, empty_fraction: float = 0.1,
                   clutter_fraction: float = 0.3, n_objects: Sequence[float] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fresh renders for one step: uint8 images, multi-hot labels, (N, C, H, W) masks.

    About ``empty_fraction`` of the scenes have no object and, independently, about
    ``clutter_fraction`` get a :func:`random_fields` background instead of the plain grey (so blobs and
    texture are not mistaken for shapes, and shapes are found on messy backgrounds).
    Scenes come from the seed stream ``[TRAIN_STREAM, seed, step]``, disjoint from integer seeds.
    """
    scenes = sample_scenes(batch_size, [TRAIN_STREAM, seed, step], n_objects=n_objects, progress=False)
    rng = np.random.default_rng([TRAIN_STREAM, seed, step, 1])
    size = scenes[0].image.shape[0]
    for i in np.flatnonzero(rng.random(batch_size) < empty_fraction):
        scenes[i] = render_scene([], rng, size)
    images, labels, masks = stack_images(scenes), presence_labels(scenes), mask_stack(scenes)
    idx = np.flatnonzero(rng.random(batch_size) < clutter_fraction)
    if idx.size:
        images[idx] = with_background(images[idx], masks[idx], random_fields(idx.size, size, rng))
    return images, labels, masks


def train_world_detector(steps: int = 1000, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
                         device: str = "cpu", widths: Sequence[int] = (16, 32, 64, 96),
                         depths: Sequence[int] = (1, 1, 2, 1), augment_images: bool = True,
                         empty_fraction: float = 0.1, clutter_fraction: float = 0.3,
                         dense_weight: float = 1.0,
                         n_objects: Sequence[float] | None = TRAIN_OBJECT_WEIGHTS,
                         progress: bool = True) -> tuple[WorldDetector, list[float]]:
    """Train a detector from scratch on fresh renders; returns (model in eval mode, loss per step).

    Loss: BCE on presence + ``dense_weight`` × masked BCE on the logit map (``dense_weight=0``: presence
    only). AdamW with a one-cycle learning rate; seeded (weights, data and augmentation).
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"train_world_detector: steps and batch_size must be >= 1, got {steps}, {batch_size}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(stream_seed(TRAIN_STREAM, seed))
    model = WorldDetector(CATEGORIES, widths, depths).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    losses: list[float] = []
    bar = tqdm(range(steps), desc="world detector", disable=not progress)
    for step in bar:
        images, labels, masks = training_batch(seed, step, batch_size, empty_fraction, clutter_fraction,
                                               n_objects)
        x = to_input(images)
        if augment_images:
            x = augment(x, gen)
        logit_map = model.logit_map(x.to(device))
        presence = torch.amax(logit_map, dim=(2, 3))
        loss = F.binary_cross_entropy_with_logits(presence, torch.from_numpy(labels).to(device))
        if dense_weight:
            target, weight = dense_targets(torch.from_numpy(masks).to(device), tuple(logit_map.shape[-2:]),
                                           DENSE_POSITIVE)
            loss = loss + dense_weight * F.binary_cross_entropy_with_logits(logit_map, target, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    return model.eval(), losses


def per_category_accuracy(probs: np.ndarray, labels: np.ndarray, categories: Sequence[str],
                          threshold: float = 0.5) -> dict[str, float]:
    """Fraction of images where presence of each category is called right at ``threshold``."""
    if probs.shape != labels.shape or probs.shape[1] != len(categories):
        raise ValueError(f"per_category_accuracy: shapes {probs.shape} / {labels.shape} / {len(categories)} categories")
    correct = (probs >= threshold) == (labels >= 0.5)
    return {c: float(correct[:, i].mean()) for i, c in enumerate(categories)}


def evaluate(model: WorldDetector, n: int = 2000, seed: int = 0, n_objects: Sequence[float] | None = None,
             augment_images: bool = False, clutter: bool = False) -> dict[str, Any]:
    """Held-out accuracy on ``n`` fresh scenes from the evaluation stream ``[EVAL_STREAM, seed]``
    (optionally augmented as in training, or on :func:`random_fields` backgrounds): per category,
    its minimum, and the rate of images whose whole presence vector is right."""
    scenes = sample_scenes(n, [EVAL_STREAM, seed], n_objects=n_objects, progress=False)
    labels = presence_labels(scenes, model.categories)
    images = stack_images(scenes)
    if clutter:
        fields = random_fields(n, images.shape[1], np.random.default_rng([EVAL_STREAM, seed, 1]))
        images = with_background(images, mask_stack(scenes, model.categories), fields)
    if augment_images:
        gen = torch.Generator().manual_seed(stream_seed(EVAL_STREAM, seed))
        probs = detect(model, augment(to_input(images), gen).permute(0, 2, 3, 1))
    else:
        probs = detect(model, images)
    acc = per_category_accuracy(probs, labels, model.categories)
    exact = float(((probs >= 0.5) == (labels >= 0.5)).all(axis=1).mean())
    return {"n": n, "n_objects": None if n_objects is None else list(n_objects),
            "augmented": augment_images, "clutter": clutter, "per_category": acc,
            "min": min(acc.values()), "exact_match": exact}


def false_positive_rate(model: WorldDetector, n: int = 500, seed: int = 0) -> dict[str, float]:
    """Fraction of object-free images in which anything is detected: blank backgrounds under the
    training augmentation, and smooth random colour fields (what an untrained generator makes)."""
    rng = np.random.default_rng([EVAL_STREAM, seed, 2])
    gen = torch.Generator().manual_seed(stream_seed(EVAL_STREAM, seed, 2))
    blank = stack_images([render_scene([], rng, model.size) for _ in range(n)])
    sets = {"blank_augmented": augment(to_input(blank), gen).permute(0, 2, 3, 1),
            "random_field": random_fields(n, model.size, rng)}
    return {name: float((detect(model, x) >= 0.5).any(axis=1).mean()) for name, x in sets.items()}


def provenance(**fields: Any) -> dict[str, Any]:
    """Common provenance fields (time, library versions) plus the caller's."""
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch": torch.__version__,
            "numpy": np.__version__, **fields}
