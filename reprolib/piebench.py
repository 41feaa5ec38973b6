"""PIE-Bench (Ju et al., ICLR 2024): the editing benchmark's mapping file, its RLE masks, and a synthetic stand-in.

PIE-Bench is distributed by its authors on request, so the user supplies the folder::

    <root>/mapping_file.json
    <root>/annotation_images/<image_path>      (e.g. 0_random_140/000000000000.jpg)

``mapping_file.json`` maps a 12-digit id to a record with ``image_path``, ``original_prompt`` and
``editing_prompt`` (``[ ]`` mark the words that differ), ``editing_instruction``, ``editing_type_id``
(``"0"``…``"9"``), ``blended_word`` (``"source_word target_word"`` or ``""``) and ``mask``: run-length
pairs ``[start, length, start, length, …]`` over the row-major flattened 512×512 array, 1 = the
region to edit. Decoding follows the official ``mask_decode`` of cure-lab/PnPInversion exactly
(see :func:`mask_decode`). The tiny profile uses :func:`make_synthetic_piebench`, which writes a
small set in the same format so the whole editing stage runs on CPU.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .io import atomic_save, atomic_write_json

MAPPING_FILE = "mapping_file.json"
IMAGE_DIR = "annotation_images"

#: Editing types (``editing_type_id``) as named in the PnPInversion README.
EDIT_TYPES: dict[str, str] = {
    "0": "random editing", "1": "change object", "2": "add object", "3": "delete object",
    "4": "change content", "5": "change pose", "6": "change color", "7": "change material",
    "8": "change background", "9": "change style",
}

#: The benchmark's top-level image folders (the number is the images per type in the full set).
TYPE_FOLDERS: dict[str, str] = {
    "0": "0_random_140", "1": "1_change_object_80", "2": "2_add_object_80", "3": "3_delete_object_80",
    "4": "4_change_attribute_content_40", "5": "5_change_attribute_pose_40",
    "6": "6_change_attribute_color_40", "7": "7_change_attribute_material_40",
    "8": "8_change_background_80", "9": "9_change_style_80",
}

_TEXT_FIELDS = ("image_path", "original_prompt", "editing_prompt", "editing_instruction", "blended_word")


class PieBenchError(ValueError):
    """A missing or malformed PIE-Bench folder, mapping file, record or mask; the message names it."""


# --------------------------------------------------------------------------- masks

def mask_decode(encoded: Sequence[int], shape: tuple[int, int] = (512, 512)) -> np.ndarray:
    """Decode PIE-Bench run-length pairs into a float64 0/1 array of `shape` (1 = region to edit).

    Matches the official ``mask_decode`` (evaluation/evaluate.py, run_editing_*.py), quirks included:

    * each ``(start, length)`` run is cut at the end of the flattened array (a run that overflows
      is truncated, a run that starts past the end adds nothing);
    * after decoding, the first/last rows and columns are forced to 1 ("to avoid annotation errors
      in boundary"), so a decoded mask is never empty and its 1-pixel frame always counts as edited;
    * the result is float64, as ``np.zeros`` gives in the original.

    Unlike the original (which fails with an IndexError, or wraps negative starts around to the end
    of the array), an odd-length list or a negative start/length raises :class:`PieBenchError`.
    """
    h, w = (int(shape[0]), int(shape[1]))
    if h < 1 or w < 1:
        raise PieBenchError(f"mask shape must be positive, got {tuple(shape)}")
    runs = np.asarray(list(encoded), dtype=np.int64)
    if runs.ndim != 1 or runs.size % 2:
        raise PieBenchError(f"mask RLE must hold (start, length) pairs, got {runs.size} numbers")
    length = h * w
    flat = np.zeros(length, dtype=np.float64)
    starts, lengths = runs[0::2], runs[1::2]
    if (starts < 0).any() or (lengths < 0).any():
        raise PieBenchError("mask RLE has a negative start or length")
    ends = np.minimum(starts + lengths, length)
    # Mark run boundaries with +1/-1 and integrate: O(pixels + runs) instead of a Python loop.
    delta = np.zeros(length + 1, dtype=np.int64)
    live = starts < ends
    np.add.at(delta, starts[live], 1)
    np.add.at(delta, ends[live], -1)
    flat[np.cumsum(delta[:-1]) > 0] = 1.0
    mask = flat.reshape(h, w)
    mask[0, :] = 1
    mask[-1, :] = 1
    mask[:, 0] = 1
    mask[:, -1] = 1
    return mask


def mask_encode(mask: np.ndarray) -> list[int]:
    """Run-length encode a 2-D 0/1 mask as PIE-Bench does: ``[start, length, …]`` over row-major pixels.

    ``mask_decode(mask_encode(m), m.shape)`` gives back `m` with its border forced to 1.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise PieBenchError(f"mask must be 2-D, got shape {m.shape}")
    flat = np.concatenate([[0], (m.reshape(-1) > 0.5).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))
    starts, ends = edges[0::2], edges[1::2]
    return [int(v) for pair in zip(starts, ends - starts) for v in pair]


# --------------------------------------------------------------------------- records

def clean_prompt(prompt: str) -> str:
    """Drop the ``[ ]`` difference marks exactly as the official scripts do (no whitespace clean-up)."""
    return prompt.replace("[", "").replace("]", "")


@dataclass(frozen=True)
class PieRecord:
    """One PIE-Bench entry; prompts keep their ``[ ]`` marks (use :attr:`source_prompt`/:attr:`target_prompt`)."""
    id: str
    root: Path
    image_path: str
    original_prompt: str
    editing_prompt: str
    editing_instruction: str
    editing_type_id: str
    blended_word: str
    mask_rle: tuple[int, ...]

    @property
    def source_path(self) -> Path:
        """The source image, ``<root>/annotation_images/<image_path>``."""
        return self.root / IMAGE_DIR / self.image_path

    @property
    def source_prompt(self) -> str:
        return clean_prompt(self.original_prompt)

    @property
    def target_prompt(self) -> str:
        """The editing prompt without marks: what the editor is conditioned on and CLIP is scored against."""
        return clean_prompt(self.editing_prompt)

    @property
    def blended_words(self) -> tuple[str, ...]:
        """``blended_word.split(" ")``, or nothing when empty (as the official scripts)."""
        return tuple(self.blended_word.split(" ")) if self.blended_word != "" else ()

    @property
    def category(self) -> str:
        """Human name of the editing type (``"change color"``)."""
        return EDIT_TYPES.get(self.editing_type_id, f"type {self.editing_type_id}")

    def mask(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Decoded edit mask (H, W). `shape` defaults to the source image's size.

        The official code always decodes at 512×512; PIE-Bench images are all 512×512, so reading the
        size from the image gives the same array there and lets the synthetic set use small images.
        """
        if shape is None:
            from PIL import Image
            with Image.open(self.source_path) as im:
                shape = (im.height, im.width)
        return mask_decode(self.mask_rle, shape)


def _record(key: str, item: Any, root: Path, where: Path) -> PieRecord:
    """Validate one mapping-file entry; errors name the file, the id and the field."""
    if not isinstance(item, dict):
        raise PieBenchError(f"{where}: record {key}: expected an object, got {type(item).__name__}")
    fields: dict[str, Any] = {}
    for name in (*_TEXT_FIELDS, "editing_type_id", "mask"):
        if name not in item:
            raise PieBenchError(f"{where}: record {key}: missing field {name!r}")
    for name in _TEXT_FIELDS:
        if not isinstance(item[name], str):
            raise PieBenchError(f"{where}: record {key}: field {name!r} must be text, got {item[name]!r:.60}")
        fields[name] = item[name]
    type_id = item["editing_type_id"]
    if isinstance(type_id, bool) or not isinstance(type_id, (str, int)):
        raise PieBenchError(f"{where}: record {key}: field 'editing_type_id' must be text, got {type_id!r}")
    mask = item["mask"]
    if (not isinstance(mask, list) or len(mask) % 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in mask)):
        raise PieBenchError(f"{where}: record {key}: field 'mask' must be a list of (start, length) "
                            "pairs of non-negative integers")
    if not fields["image_path"]:
        raise PieBenchError(f"{where}: record {key}: field 'image_path' is empty")
    rec = PieRecord(id=str(key), root=root, editing_type_id=str(type_id), mask_rle=tuple(mask), **fields)
    if not rec.source_path.is_file():
        raise PieBenchError(f"{where}: record {key}: image not found: {rec.source_path}")
    return rec


def load_piebench(root: str | Path, limit: int | None = None,
                  categories: Iterable[str | int] | None = None) -> list[PieRecord]:
    """Read ``<root>/mapping_file.json`` into records, in file order (as the official loop).

    `categories` keeps only those ``editing_type_id`` values (the official ``--edit_category_list``);
    `limit` then keeps the first records. Every kept record is validated and its image must exist.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise PieBenchError(f"PIE-Bench folder not found: {root} (it is distributed by its authors on request)")
    path = root / MAPPING_FILE
    if not path.is_file():
        raise PieBenchError(f"PIE-Bench mapping file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PieBenchError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise PieBenchError(f"{path}: expected an object mapping ids to records, got {type(data).__name__}")
    if limit is not None and limit < 0:
        raise PieBenchError(f"limit must be >= 0, got {limit}")
    keep = None if categories is None else {str(c) for c in categories}
    records: list[PieRecord] = []
    for key, item in data.items():
        if limit is not None and len(records) >= limit:
            break
        if keep is not None and isinstance(item, dict) and str(item.get("editing_type_id")) not in keep:
            continue
        records.append(_record(key, item, root, path))
    return records


# --------------------------------------------------------------------------- synthetic set

_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40), "green": (40, 170, 60), "blue": (50, 70, 200), "yellow": (230, 210, 40),
    "purple": (140, 60, 170), "orange": (240, 140, 30),
}
_SHAPES = ("circle", "square")
_MATERIALS = ("wooden", "glass", "metal")
_STYLES = ("watercolor painting", "pencil sketch", "oil painting")


def _shape_mask(size: int, shape: str, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if shape == "circle":
        return ((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r
    return (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)


def _synthetic_item(i: int, size: int, rng: np.random.Generator) -> tuple[dict[str, Any], np.ndarray]:
    """One synthetic PIE-Bench record and its RGB image: a coloured shape on a textured background."""
    type_id = str(i % 10)
    names = list(_COLORS)
    fg, bg, other = (names[j] for j in rng.choice(len(names), size=3, replace=False))
    shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
    new_shape = _SHAPES[1 - _SHAPES.index(shape)]
    r = size * rng.uniform(0.15, 0.25)
    cy, cx = rng.uniform(r + 2, size - r - 2, size=2)

    # Background: a smooth two-colour gradient plus mild noise, so SSIM/LPIPS see texture.
    t = np.linspace(0.0, 1.0, size)[None, :, None]
    base = np.asarray(_COLORS[bg], dtype=np.float64)
    img = base * (0.75 + 0.25 * t) + rng.normal(0, 6, size=(size, size, 3))
    obj = _shape_mask(size, shape, cy, cx, r)
    img[obj] = np.asarray(_COLORS[fg], dtype=np.float64)
    img = np.clip(img, 0, 255).astype(np.uint8)

    src = f"a {fg} {shape} on a {bg} background"
    # (original prompt, editing prompt, instruction, blended word, mask) per editing type.
    if type_id == "0":
        item = (src, f"a [{other}] [{new_shape}] on a {bg} background",
                f"Make the {shape} a {other} {new_shape}", f"{shape} {new_shape}", obj)
    elif type_id == "1":
        item = (f"a {fg} [{shape}] on a {bg} background", f"a {fg} [{new_shape}] on a {bg} background",
                f"Change the {shape} into a {new_shape}", f"{shape} {new_shape}", obj)
    elif type_id == "2":
        cy2, cx2 = size - cy, size - cx
        spot = _shape_mask(size, new_shape, cy2, cx2, r * 0.8) & ~obj
        item = (src, f"a {fg} {shape} [and a {other} {new_shape}] on a {bg} background",
                f"Add a {other} {new_shape}", f"{new_shape}", spot)
    elif type_id == "3":
        item = (f"[a {fg} {shape} on] a {bg} background", f"a {bg} background",
                f"Remove the {shape}", f"{shape}", obj)
    elif type_id == "4":
        item = (src, f"a [striped] {fg} {shape} on a {bg} background",
                f"Give the {shape} stripes", f"{shape} {shape}", obj)
    elif type_id == "5":
        item = (src, f"a [tilted] {fg} {shape} on a {bg} background",
                f"Tilt the {shape}", f"{shape} {shape}", obj)
    elif type_id == "6":
        item = (f"a [{fg}] {shape} on a {bg} background", f"a [{other}] {shape} on a {bg} background",
                f"Make the {shape} {other}", f"{shape} {shape}", obj)
    elif type_id == "7":
        mat = _MATERIALS[int(rng.integers(len(_MATERIALS)))]
        item = (src, f"a [{mat}] {fg} {shape} on a {bg} background",
                f"Make the {shape} {mat}", f"{shape} {shape}", obj)
    elif type_id == "8":
        item = (f"a {fg} {shape} on a [{bg}] background", f"a {fg} {shape} on a [{other}] background",
                f"Change the background to {other}", "background background", ~obj)
    else:  # "9": style edits cover the whole frame, as in PIE-Bench (background metrics are NaN).
        style = _STYLES[int(rng.integers(len(_STYLES)))]
        item = (f"[a photo of] {src}", f"[a {style} of] {src}",
                f"Make it a {style}", "", np.ones((size, size), dtype=bool))
    original, editing, instruction, blended, mask = item
    record = dict(image_path=f"{TYPE_FOLDERS[type_id]}/{type_id}{i:011d}.jpg", original_prompt=original,
                  editing_prompt=editing, editing_instruction=instruction, editing_type_id=type_id,
                  blended_word=blended, mask=mask_encode(mask))
    return record, img


def make_synthetic_piebench(root: str | Path, n: int = 8, seed: int = 0, size: int = 64) -> Path:
    """Write a small PIE-Bench-format set (``mapping_file.json`` + ``annotation_images/``) and return `root`.

    Record ``i`` has editing type ``i % 10``; images are `size`² JPEGs of a coloured shape on a
    textured background, masks cover the shape (or the background / the whole frame for background
    and style edits). Deterministic in `seed`; files are written atomically. Only for pipeline checks.
    """
    if n < 1:
        raise PieBenchError(f"n must be >= 1, got {n}")
    if size < 16:
        raise PieBenchError(f"size must be >= 16 pixels, got {size}")
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    mapping: dict[str, dict[str, Any]] = {}
    for i in range(n):
        record, img = _synthetic_item(i, size, rng)
        key = Path(record["image_path"]).stem
        mapping[key] = record
        pil = Image.fromarray(img)
        atomic_save(root / IMAGE_DIR / record["image_path"], lambda p, im=pil: im.save(p, format="JPEG", quality=95))
    atomic_write_json(root / MAPPING_FILE, mapping)
    return root


# --------------------------------------------------------------------------- miniature-world edits

#: Sidecar of :func:`make_world_piebench`: per record id, the scene's nouns and the replaced/new noun.
WORLD_EDITS_FILE = "world_edits.json"


def _box_mask(mask: np.ndarray, pad: int) -> np.ndarray:
    """The bounding box of ``mask`` grown by ``pad`` pixels (clipped): room for the new shape."""
    ys, xs = np.nonzero(mask)
    out = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    out[max(0, ys.min() - pad):min(h, ys.max() + pad + 1), max(0, xs.min() - pad):min(w, xs.max() + pad + 1)] = True
    return out


def make_world_piebench(root: str | Path, n: int = 8, seed: int = 0, size: int = 64, pad: int = 3) -> Path:
    """A PIE-Bench-format "change object" set from miniature-world scenes (3–4 shapes each).

    Record ``i`` replaces one shape by a category absent from the scene: "a photo of a star, a [ring], and
    a heart." → "… a [moon] …", blended words "ring moon", mask = the shape's bounding box grown by ``pad``
    pixels (exact masks make the region known; the box leaves room for a differently shaped object).
    ``world_edits.json`` records each scene's nouns and the old/new noun, so the world detector can say
    whether an edit succeeded (:func:`reprolib.editing.world_edit_success`). Deterministic in ``seed``.
    """
    from PIL import Image

    from .miniworld import CATEGORIES, render_scene

    if n < 1:
        raise PieBenchError(f"n must be >= 1, got {n}")
    root = Path(root)
    rng = np.random.default_rng([31, seed])
    mapping: dict[str, dict[str, Any]] = {}
    sidecar: dict[str, dict[str, Any]] = {}
    for i in range(n):
        k = int(rng.integers(3, 5))
        cats = [CATEGORIES[j] for j in rng.choice(len(CATEGORIES), size=k, replace=False)]
        scene = render_scene(cats, rng, size)
        j = int(rng.integers(k))
        old = scene.categories[j]
        new = str(rng.choice([c for c in CATEGORIES if c not in scene.categories]))
        marked = lambda word: caption_for_marked(scene.categories, j, word)  # noqa: E731
        record = dict(image_path=f"{TYPE_FOLDERS['1']}/1{i:011d}.jpg", original_prompt=marked(old),
                      editing_prompt=marked(new), editing_instruction=f"Change the {old} into a {new}",
                      editing_type_id="1", blended_word=f"{old} {new}",
                      mask=mask_encode(_box_mask(scene.masks[old], pad)))
        key = Path(record["image_path"]).stem
        mapping[key] = record
        sidecar[key] = {"categories": list(scene.categories), "old": old, "new": new}
        pil = Image.fromarray(scene.image)
        atomic_save(root / IMAGE_DIR / record["image_path"], lambda p, im=pil: im.save(p, format="JPEG", quality=95))
    atomic_write_json(root / MAPPING_FILE, mapping)
    atomic_write_json(root / WORLD_EDITS_FILE, sidecar)
    return root


def caption_for_marked(categories: Sequence[str], index: int, word: str) -> str:
    """MultiGen-style caption of ``categories`` with noun ``index`` replaced by ``[word]`` (PIE-Bench's marks)."""
    from .miniworld import caption_for
    nouns = list(categories)
    nouns[index] = f"[{word}]"
    return caption_for(nouns)


def load_world_edits(root: str | Path) -> dict[str, dict[str, Any]]:
    """The sidecar of a world edit set (id → categories, old, new); one-line error when it is missing."""
    path = Path(root) / WORLD_EDITS_FILE
    if not path.is_file():
        raise PieBenchError(f"{path}: not found (only sets made by make_world_piebench have it)")
    return json.loads(path.read_text())
