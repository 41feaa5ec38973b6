"""The miniature world of the `tiny` profile: procedurally rendered scenes of flat shapes with exact masks.

Stable Diffusion, COCO and OWLv2 are far too big for a CPU run, so the tiny profile replaces them with a
world whose ground truth is known exactly: small RGB images (64×64 by default) of 1–5 objects from a
vocabulary of ten shapes named by nouns that are each ONE token in SD1.4's CLIP tokenizer, captions in
MultiGen's wording, and per-object visible masks that are exact by construction (the image is painted
from the masks). :mod:`reprolib.worlddetector` is the matching detector.

Design choices (why the world looks the way it does):

* **Hard edges, flat colours.** Each object is one uniform colour painted without antialiasing, so a
  pixel belongs to exactly one object or to the background and the visible mask of an object is exactly
  the set of pixels painted in its colour that no later object covered. Tiny diffusion models learn
  flat shapes quickly; the detector is trained with blur/noise to cope with their softer output.
* **Shape, not colour, names the object.** Colours are random (saturated HSV, hues at least
  ``MIN_HUE_GAP`` apart within a scene so touching objects stay separable), the background is a random
  light grey, so "star" can only be learnt from the outline.
* **Vectorised inside tests.** Every shape is an analytic inside test on a coordinate grid in the
  object's own frame (unit half-extent, y up), evaluated on the object's bounding box only: thousands
  of scenes per second on one CPU core, no per-pixel Python.
* **Limited overlap.** Objects lie fully inside the image (each shape fits a disc of radius
  ``SHAPE_RADIUS`` × its half-extent), their centres are at least
  ``MIN_CENTER_GAP`` × (sum of half-extents) apart and every object keeps at least
  ``MIN_VISIBLE_FRACTION`` of its own area visible after occlusion: objects stay identifiable.
* **Painting order is independent of caption order**, so depth does not correlate with the position
  of a noun in the prompt.
* **Small rotations only** (±``MAX_ROTATION_DEG``): a square turned by 45° would be a diamond.
* **Captions follow MultiGen exactly** ("a photo of a book, a cup, a kite, a mouse, and a surfboard."
  in ``coco_obj_comp_5_1k.json``): article "a" even before vowels ("a arrow"), serial comma, final
  period. ``style="plain"`` gives the shorter "a photo of a star, a ring and a heart".
* **Seeds.** ``sample_scenes`` draws everything from ``np.random.default_rng(seed)``; a sequence seed
  such as ``[tag, seed, step]`` gives a stream independent of every integer seed, which the detector's
  training uses to keep its data disjoint from evaluation samples.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Literal, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

#: The ten nouns of the world; each is a single token of SD1.4's CLIP tokenizer (tested).
CATEGORIES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "heart", "ring", "cross", "diamond", "moon", "arrow",
)

MAX_OBJECTS = 5
SCALE_RANGE = (7.0, 12.0)        # object half-extent in pixels at size 64 (scaled with size)
MAX_ROTATION_DEG = 15.0
MIN_CENTER_GAP = 0.7             # centre distance >= gap * (s_i + s_j)
MIN_VISIBLE_FRACTION = 0.8       # of an object's own area, after all later objects are painted
MIN_HUE_GAP = 0.1                # circular distance of hues within one scene
SHAPE_RADIUS = 1.25              # every shape lies inside this disc of its unit frame (tested)
SATURATION_RANGE = (0.6, 1.0)
VALUE_RANGE = (0.6, 1.0)
BACKGROUND_RANGE = (205, 240)    # light grey level, inclusive
_TRIES_PER_OBJECT = 100
_TRIES_PER_SCENE = 50

ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- shapes (unit frame, y up)

def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.85


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Equilateral, apex up, circumradius 1, centroid at the origin."""
    return (v >= -0.5) & (v <= 1.0 - math.sqrt(3.0) * np.abs(u))


_STAR_INNER = 0.45               # inner/outer radius (regular pentagram: 0.38; fatter reads better small)
_STAR_SECTOR = 2.0 * math.pi / 5.0
_STAR_EDGE = (_STAR_INNER * math.cos(_STAR_SECTOR / 2) - 1.0, _STAR_INNER * math.sin(_STAR_SECTOR / 2))


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Five-pointed star, one tip up: fold the angle into half a sector, then one half-plane test."""
    rho = np.hypot(u, v)
    phi = np.mod(np.arctan2(u, v), _STAR_SECTOR)
    phi = np.minimum(phi, _STAR_SECTOR - phi)
    qx, qy = rho * np.cos(phi) - 1.0, rho * np.sin(phi)
    return _STAR_EDGE[0] * qy - _STAR_EDGE[1] * qx >= 0.0


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The classic implicit heart (x²+y²-1)³ - x²y³ <= 0, rescaled to the unit box."""
    x, y = 1.14 * u, 1.14 * v + 0.12
    r = x * x + y * y - 1.0
    return r * r * r - x * x * y * y * y <= 0.0


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.5 * 0.5)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))


def _diamond(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Tall rhombus (width 0.62 of height), so that it never looks like a slightly turned square."""
    return np.abs(u) / 0.62 + np.abs(v) <= 1.0


def _moon(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Crescent: the unit disc minus a disc of radius 0.85 shifted up-right."""
    du, dv = u - 0.45, v - 0.2
    return (u * u + v * v <= 1.0) & (du * du + dv * dv > 0.85 * 0.85)


def _arrow(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Arrow pointing right: a shaft and a triangular head."""
    shaft = (np.abs(v) <= 0.22) & (u >= -1.0) & (u <= 0.0)
    head = (u >= -0.05) & (np.abs(v) <= 0.65 * (1.0 - u) / 1.05)
    return shaft | head


SHAPES: Mapping[str, ShapeFn] = MappingProxyType({
    "circle": _circle, "square": _square, "triangle": _triangle, "star": _star, "heart": _heart,
    "ring": _ring, "cross": _cross, "diamond": _diamond, "moon": _moon, "arrow": _arrow,
})


# --------------------------------------------------------------------------- scenes

@dataclass
class Scene:
    """One rendered scene. ``masks`` are the VISIBLE pixels of each object (occlusion applied),
    keyed by noun in caption order; ``colors`` are the RGB colours the objects were painted with and
    ``areas`` their unoccluded areas in pixels (visible / area = how much is not hidden)."""
    image: np.ndarray                                   # (H, W, 3) uint8
    masks: dict[str, np.ndarray]                        # noun -> bool (H, W)
    caption: str
    categories: list[str]
    colors: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    areas: dict[str, int] = field(default_factory=dict)


def caption_for(categories: Sequence[str], style: Literal["multigen", "plain"] = "multigen") -> str:
    """MultiGen's prompt wording for a list of nouns.

    ``"multigen"`` (default) matches ``coco_obj_comp_5_1k.json`` exactly: "a photo of a star, a ring,
    and a heart." (always "a", serial comma, final period; two nouns: "a star and a ring.").
    ``"plain"``: "a photo of a star, a ring and a heart" (no serial comma, no period).
    """
    if not categories:
        raise ValueError("caption_for: categories is empty")
    if style not in ("multigen", "plain"):
        raise ValueError(f"caption_for: unknown style {style!r}")
    objs = [f"a {c}" for c in categories]
    if len(objs) == 1:
        body = objs[0]
    elif len(objs) == 2:
        body = f"{objs[0]} and {objs[1]}"
    else:
        sep = ", and " if style == "multigen" else " and "
        body = ", ".join(objs[:-1]) + sep + objs[-1]
    return f"a photo of {body}." if style == "multigen" else f"a photo of {body}"


def shape_mask(category: str, center: tuple[float, float], scale: float, angle: float,
               size: int) -> np.ndarray:
    """Full (unoccluded) bool mask (size, size) of one object; ``center`` is (row, col) in pixels,
    ``scale`` the half-extent in pixels, ``angle`` a counter-clockwise rotation in radians."""
    if category not in SHAPES:
        raise ValueError(f"unknown category {category!r}; known: {', '.join(SHAPES)}")
    mask = np.zeros((size, size), dtype=bool)
    box = _bbox(center, scale, size)
    if box is None:
        return mask
    r0, r1, c0, c1 = box
    mask[r0:r1, c0:c1] = _local_mask(category, center, scale, angle, box)
    return mask


def _bbox(center: tuple[float, float], scale: float, size: int) -> tuple[int, int, int, int] | None:
    cy, cx = center
    ext = SHAPE_RADIUS * scale
    r0, r1 = max(0, math.floor(cy - ext)), min(size, math.ceil(cy + ext) + 1)
    c0, c1 = max(0, math.floor(cx - ext)), min(size, math.ceil(cx + ext) + 1)
    return None if r0 >= r1 or c0 >= c1 else (r0, r1, c0, c1)


def _local_mask(category: str, center: tuple[float, float], scale: float, angle: float,
                box: tuple[int, int, int, int]) -> np.ndarray:
    """Inside test at pixel centres of the box, in the object's frame (unit half-extent, y up)."""
    r0, r1, c0, c1 = box
    cy, cx = center
    dy = -(np.arange(r0, r1, dtype=np.float64)[:, None] + 0.5 - cy) / scale
    dx = (np.arange(c0, c1, dtype=np.float64)[None, :] + 0.5 - cx) / scale
    cos, sin = math.cos(angle), math.sin(angle)
    u = cos * dx + sin * dy          # rotate the grid by -angle == rotate the shape by +angle
    v = -sin * dx + cos * dy
    return SHAPES[category](u, v)


def _sample_colors(n: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    hues: list[float] = []
    while len(hues) < n:
        h = float(rng.random())
        if all(min(abs(h - g), 1.0 - abs(h - g)) >= MIN_HUE_GAP for g in hues):
            hues.append(h)
    out = []
    for h in hues:
        s, v = rng.uniform(*SATURATION_RANGE), rng.uniform(*VALUE_RANGE)
        out.append(tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v)))
    return out  # type: ignore[return-value]


def _place(categories: Sequence[str], rng: np.random.Generator, size: int
           ) -> list[tuple[str, np.ndarray, int]] | None:
    """Rejection-sample positions in painting order; returns (noun, visible mask, unoccluded area)
    per object, or None when an object found no place."""
    lo, hi = (s * size / 64.0 for s in SCALE_RANGE)
    max_angle = math.radians(MAX_ROTATION_DEG)
    placed: list[list] = []         # [noun, cy, cx, s, visible mask, own area]
    for cat in categories:
        for _ in range(_TRIES_PER_OBJECT):
            s = rng.uniform(lo, hi)
            margin = SHAPE_RADIUS * s
            cy, cx = rng.uniform(margin, size - margin, size=2)
            angle = rng.uniform(-max_angle, max_angle)
            dists = [math.hypot(cy - p[1], cx - p[2]) for p in placed]
            if any(d < MIN_CENTER_GAP * (s + p[3]) for d, p in zip(dists, placed)):
                continue
            full = shape_mask(cat, (cy, cx), s, angle, size)
            # only objects whose bounding discs meet can lose pixels to the new one
            near = [i for i, (d, p) in enumerate(zip(dists, placed)) if d < SHAPE_RADIUS * (s + p[3]) + 1.5]
            kept = {i: placed[i][4] & ~full for i in near}
            if all(np.count_nonzero(kept[i]) >= MIN_VISIBLE_FRACTION * placed[i][5] for i in near):
                for i in near:
                    placed[i][4] = kept[i]
                placed.append([cat, cy, cx, s, full, int(np.count_nonzero(full))])
                break
        else:
            return None
    return [(p[0], p[4], p[5]) for p in placed]


def render_scene(categories: Sequence[str], rng: np.random.Generator, size: int = 64,
                 style: Literal["multigen", "plain"] = "multigen") -> Scene:
    """Render distinct ``categories`` (caption order) at random size/position/colour with exact masks.

    An empty list renders the bare background with caption "" (a negative for the detector).
    """
    cats = list(categories)
    unknown = [c for c in cats if c not in SHAPES]
    if unknown:
        raise ValueError(f"render_scene: unknown category {unknown[0]!r}; known: {', '.join(SHAPES)}")
    if len(set(cats)) != len(cats):
        raise ValueError(f"render_scene: categories must be distinct, got {cats}")
    if len(cats) > MAX_OBJECTS:
        raise ValueError(f"render_scene: at most {MAX_OBJECTS} objects, got {len(cats)}")
    if size < 16:
        raise ValueError(f"render_scene: size must be >= 16, got {size}")
    background = int(rng.integers(BACKGROUND_RANGE[0], BACKGROUND_RANGE[1] + 1))
    colors = dict(zip(cats, _sample_colors(len(cats), rng)))
    order = [cats[i] for i in rng.permutation(len(cats))]
    for _ in range(_TRIES_PER_SCENE):
        placed = _place(order, rng, size)
        if placed is not None:
            break
    else:
        raise RuntimeError(f"render_scene: could not place {cats} in a {size}x{size} image")
    image = np.full((size, size, 3), background, dtype=np.uint8)
    visible = {cat: mask for cat, mask, _ in placed}
    areas = {cat: area for cat, _, area in placed}
    for cat in order:                   # visible masks are disjoint, so painting them is exact
        image[visible[cat]] = colors[cat]
    return Scene(image=image, masks={c: visible[c] for c in cats},
                 caption=caption_for(cats, style) if cats else "", categories=cats, colors=colors,
                 areas={c: areas[c] for c in cats})


def _object_count_probs(n_objects: Sequence[float] | None) -> np.ndarray:
    if n_objects is None:
        return np.full(MAX_OBJECTS, 1.0 / MAX_OBJECTS)
    p = np.asarray(n_objects, dtype=np.float64)
    if p.shape != (MAX_OBJECTS,) or (p < 0).any() or not np.isfinite(p).all() or p.sum() <= 0:
        raise ValueError(f"n_objects must be {MAX_OBJECTS} non-negative weights for 1..{MAX_OBJECTS} "
                         f"objects, got {list(n_objects)}")
    return p / p.sum()


def sample_scenes(n: int, seed: int | Sequence[int], n_objects: Sequence[float] | None = None,
                  size: int = 64, categories: Sequence[str] = CATEGORIES,
                  progress: bool | None = None) -> list[Scene]:
    """``n`` random scenes; ``n_objects`` weights 1..5 objects (default uniform), nouns drawn without
    replacement from ``categories`` in random caption order. Same arguments, same scenes."""
    if n < 0:
        raise ValueError(f"sample_scenes: n must be >= 0, got {n}")
    probs = _object_count_probs(n_objects)
    cats = list(categories)
    need = int(np.flatnonzero(probs)[-1]) + 1
    if len(set(cats)) < need:
        raise ValueError(f"sample_scenes: {need} objects need {need} distinct categories, got {cats}")
    rng = np.random.default_rng(seed)
    show = n >= 2000 if progress is None else progress
    out = []
    for _ in tqdm(range(n), desc="miniworld", disable=not show, leave=False):
        k = int(rng.choice(MAX_OBJECTS, p=probs)) + 1
        chosen = [cats[i] for i in rng.choice(len(cats), size=k, replace=False)]
        out.append(render_scene(chosen, rng, size))
    return out


# --------------------------------------------------------------------------- arrays

def stack_images(scenes: Sequence[Scene]) -> np.ndarray:
    """(N, H, W, 3) uint8 batch of the scenes' images."""
    if not scenes:
        raise ValueError("stack_images: no scenes")
    return np.stack([s.image for s in scenes])


def presence_labels(scenes: Sequence[Scene], categories: Sequence[str] = CATEGORIES) -> np.ndarray:
    """(N, C) float32 multi-hot presence of each category (the detector's target)."""
    index = {c: i for i, c in enumerate(categories)}
    y = np.zeros((len(scenes), len(index)), dtype=np.float32)
    for row, scene in enumerate(scenes):
        for c in scene.categories:
            if c not in index:
                raise ValueError(f"presence_labels: scene category {c!r} not in {list(categories)}")
            y[row, index[c]] = 1.0
    return y
