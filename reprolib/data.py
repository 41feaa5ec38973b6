"""Training records: the original on-disk layout, its loader for training, downloads, nouns, the tiny dataset.

Layout (the authors'; ``train/data/coco_gsam_img/train`` in their repository)::

    <root>/metadata.jsonl            one JSON object per line:
                                     {"file_name": "000000000142.jpg", "text": caption,
                                      "attn_list": [[noun phrase, "seg/<id>/mask_<id>_<noun>.png" or null], ...]}
    <root>/<file_name>               the image (``image_dir`` may hold the images elsewhere)
    <root>/seg/<id>/mask_<id>_<noun with spaces as _>.png

``<id>`` is the file name up to its first dot. Masks are PNG images of the image's size whose first
channel is > 0 on the object (the authors saved them with ``plt.imsave(cmap=gray)``: RGBA, white on
black; :func:`save_mask` writes the same). A null path means the detector found nothing for the noun.
The original loader also looked for masks under ``<root>/../coco_gsam_seg``; so does :func:`load_records`.

Sections: records and their loader (:func:`load_records`, :func:`load_example`, used by stage 02), the
tiny synthetic dataset (:func:`write_records`, :func:`make_tiny_dataset`), downloads of the authors'
metadata and of the COCO images it lists, and nouns of new captions (:func:`extract_nouns`,
:func:`best_caption`). Grounded-SAM and the QA of masks live in :mod:`reprolib.gsam`.
"""
from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .io import atomic_save, atomic_write_json, atomic_write_text, download
from .tokens import TokenNotFoundError, word_token_indices

METADATA = "metadata.jsonl"
SEG_DIR = "seg"
ORIGINAL_SEG_DIR = "../coco_gsam_seg"      # the original loader's fallback (``segment_dir_relative_path``)
COCO_SOURCES = Path(__file__).resolve().parent.parent / "data" / "coco" / "sources.json"
TINY_MANIFEST = "dataset.json"


class DataError(ValueError):
    """A record, image or mask that cannot be used; the one-line message names the file or record."""


# --------------------------------------------------------------------------- records

@dataclass(frozen=True)
class Noun:
    """A noun phrase of a caption and its mask file (None: no detection, skipped in training)."""
    phrase: str
    mask: Path | None


@dataclass(frozen=True)
class Record:
    """One training example as listed in ``metadata.jsonl``, paths resolved."""
    file_name: str
    image: Path
    text: str
    nouns: tuple[Noun, ...]

    @property
    def image_id(self) -> str:
        return image_id(self.file_name)

    @property
    def grounded(self) -> list[Noun]:
        """Nouns that have a mask (the ones the grounding losses use)."""
        return [n for n in self.nouns if n.mask is not None]


def image_id(file_name: str) -> str:
    """``000000000142.jpg`` → ``000000000142`` (basename up to the first dot, as the original)."""
    return Path(file_name).name.split(".")[0]


def mask_relpath(img_id: str, noun: str) -> str:
    """``seg/<id>/mask_<id>_<noun with spaces as _>.png``; a '/' in the noun becomes '_' (as the original)."""
    name = f"mask_{img_id}_{noun.replace(' ', '_')}.png".replace("/", "_")
    return f"{SEG_DIR}/{img_id}/{name}"


def _check_row(row: Any, where: str) -> dict:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key, tp in (("file_name", str), ("text", str), ("attn_list", list)):
        if not isinstance(row.get(key), tp):
            raise DataError(f"{where}: field {key!r} missing or not a {tp.__name__}")
    for item in row["attn_list"]:
        if (not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[0], str)
                or not (item[1] is None or isinstance(item[1], str))):
            raise DataError(f"{where}: attn_list item {item!r} is not [noun, mask path or null]")
    return row


def read_metadata(path: str | Path) -> list[dict]:
    """Rows of a ``metadata.jsonl`` (checked: file_name, text, attn_list of [noun, path|null])."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: metadata file not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None
            rows.append(_check_row(row, f"{path}:{n}"))
    return rows


def write_metadata(path: str | Path, rows: Iterable[Mapping]) -> Path:
    """Write rows as JSON lines, atomically (key order file_name, text, attn_list as the original)."""
    lines = [json.dumps({"file_name": r["file_name"], "text": r["text"],
                         "attn_list": [[n, p] for n, p in r["attn_list"]]}) for r in rows]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


def resolve_mask(root: Path, rel: str) -> Path:
    """``<root>/<rel>``, or where the original loader looked next (``seg`` → ``../coco_gsam_seg``)."""
    path = root / rel
    if not path.exists():
        alt = root / rel.replace(SEG_DIR, ORIGINAL_SEG_DIR)
        if alt.exists():
            return alt
    return path


def row_to_record(row: Mapping, root: Path, image_dir: Path) -> Record:
    nouns = tuple(Noun(n, None if p is None else resolve_mask(root, p)) for n, p in row["attn_list"])
    return Record(file_name=row["file_name"], image=image_dir / row["file_name"], text=row["text"], nouns=nouns)


def load_records(root: str | Path, metadata: str = METADATA, image_dir: str | Path | None = None,
                 check_files: bool = False) -> list[Record]:
    """Records of ``<root>/<metadata>``; images under ``image_dir`` (default ``root``).

    With ``check_files`` every image and mask must exist (raises naming the first missing one);
    otherwise missing files surface in :func:`load_example`.
    """
    root = Path(root)
    img_dir = Path(image_dir) if image_dir is not None else root
    records = [row_to_record(r, root, img_dir) for r in read_metadata(root / metadata)]
    if check_files:
        for rec in records:
            if not rec.image.is_file():
                raise DataError(f"{rec.image}: image not found (record {rec.file_name})")
            for noun in rec.grounded:
                if not noun.mask.is_file():
                    raise DataError(f"{noun.mask}: mask not found (noun {noun.phrase!r} of {rec.file_name})")
    return records


def record_to_row(record: Record, root: str | Path) -> dict:
    """Inverse of :func:`row_to_record`: mask paths relative to ``root``."""
    root = Path(root)

    def rel(p: Path | None) -> str | None:
        return None if p is None else Path(p).relative_to(root).as_posix()
    return {"file_name": record.file_name, "text": record.text,
            "attn_list": [[n.phrase, rel(n.mask)] for n in record.nouns]}


# --------------------------------------------------------------------------- loading for training

def image_transform(resolution: int):
    """The original ``train_transforms``: Resize(R, bilinear) + CenterCrop(R) + ToTensor + Normalize(0.5, 0.5)."""
    from torchvision import transforms
    return transforms.Compose([
        transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(resolution), transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])


def mask_transform(resolution: int):
    """The original ``attn_transforms``: Resize(R, bilinear) + CenterCrop(R) + ToTensor."""
    from torchvision import transforms
    return transforms.Compose([
        transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(resolution), transforms.ToTensor()])


def open_image(path: str | Path, what: str = "image") -> Image.Image:
    """Open and fully decode an image file; a missing or unreadable file raises naming the path."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable {what} ({type(e).__name__}: {e})") from None
    return img


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as a bool (H, W) array: first channel > 0."""
    arr = np.asarray(open_image(path, "mask"))
    return (arr[..., 0] if arr.ndim == 3 else arr) > 0


def load_mask(path: str | Path, resolution: int, image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """A mask as the original training loader made it: (1, R, R) float in [0, 1].

    The PNG is transformed as opened (no mode conversion, as the original); a 4-channel mask keeps
    channel 0, then the mask is divided by its max when that is > 0. Difference: 2- and 3-channel
    masks also keep channel 0 (the original passed them on whole and the loss broke on them).
    ``image_size`` (W, H): a mask of another size raises (the original silently misaligned it).
    """
    img = open_image(path, "mask")
    if image_size is not None and img.size != tuple(image_size):
        raise DataError(f"{path}: mask is {img.size[0]}x{img.size[1]} but its image is "
                        f"{image_size[0]}x{image_size[1]}")
    m = mask_transform(resolution)(img)
    if m.shape[0] > 1:
        m = m[0:1]
    m = m.float()
    mx = m.max()
    return m / mx if mx > 0 else m


def load_example(record: Record, resolution: int, tokenizer, max_length: int | None = None) -> dict[str, Any]:
    """One training example, exactly as the original loader and training loop prepared it.

    Returns ``pixel_values`` (3, R, R) in [-1, 1]; ``input_ids`` (77,) padded/truncated as the original;
    ``text``; ``nouns`` and ``token_indices`` (one token list per grounded noun); ``masks`` (n, R, R)
    in [0, 1]; ``skipped`` (nouns whose tokens are not in the caption) and ``n_skipped``.
    Nouns with a null mask are left out (as the original). Difference: a noun that is not found in
    the caption is skipped and counted (the original's assertion stopped training), and so is one
    whose tokens lie past the 77-token window (the original indexed out of range).
    """
    img = open_image(record.image).convert("RGB")
    pixel_values = image_transform(resolution)(img)
    max_length = max_length or tokenizer.model_max_length
    input_ids = tokenizer(record.text, max_length=max_length, padding="max_length", truncation=True,
                          return_tensors="pt").input_ids[0]
    masks, nouns, indices, skipped = [], [], [], []
    for noun in record.grounded:
        m = load_mask(noun.mask, resolution, img.size)       # as the original: every listed mask is read
        try:
            idx = word_token_indices(tokenizer, record.text, noun.phrase)
        except TokenNotFoundError:
            skipped.append(noun.phrase)
            continue
        if max(idx) >= max_length - 1:
            skipped.append(noun.phrase)
            continue
        masks.append(m[0])
        nouns.append(noun.phrase)
        indices.append(idx)
    mask_t = torch.stack(masks) if masks else torch.zeros(0, resolution, resolution)
    return {"pixel_values": pixel_values, "input_ids": input_ids, "text": record.text, "nouns": nouns,
            "token_indices": indices, "masks": mask_t, "skipped": skipped, "n_skipped": len(skipped)}


class RecordDataset(torch.utils.data.Dataset):
    """Map-style dataset of :func:`load_example` over records (use :func:`collate_examples`)."""

    def __init__(self, records: Sequence[Record], resolution: int, tokenizer):
        self.records, self.resolution, self.tokenizer = list(records), resolution, tokenizer

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return load_example(self.records[i], self.resolution, self.tokenizer)


def collate_examples(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack pixel_values and input_ids; keep per-example lists for the ragged fields."""
    out: dict[str, Any] = {"pixel_values": torch.stack([b["pixel_values"] for b in batch]),
                           "input_ids": torch.stack([b["input_ids"] for b in batch])}
    for key in ("text", "nouns", "token_indices", "masks", "skipped", "n_skipped"):
        out[key] = [b[key] for b in batch]
    return out


# --------------------------------------------------------------------------- writing records

def save_mask(path: str | Path, mask: np.ndarray, rgba: bool = True) -> Path:
    """Save a bool mask as PNG, atomically. ``rgba`` (default): white on black RGBA, the format of the
    authors' ``plt.imsave(cmap=gray)``; otherwise 8-bit grey."""
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise DataError(f"{path}: a mask must be 2-D, got shape {m.shape}")
    g = m.astype(np.uint8) * 255
    img = Image.fromarray(np.dstack([g, g, g, np.full_like(g, 255)]), "RGBA") if rgba else Image.fromarray(g, "L")
    return atomic_save(path, lambda p: img.save(p, format="PNG"))


def _save_image(path: Path, image: np.ndarray) -> Path:
    fmt = {"jpg": "JPEG", "jpeg": "JPEG"}.get(path.suffix[1:].lower(), path.suffix[1:].upper())
    img = Image.fromarray(image)
    return atomic_save(path, lambda p: img.save(p, format=fmt))


def _as_triple(item: Any) -> tuple[np.ndarray, str, Mapping[str, np.ndarray]]:
    """A miniworld Scene (or anything with image/caption/masks) or an (image, caption, masks) triple."""
    if all(hasattr(item, a) for a in ("image", "caption", "masks")):
        return np.asarray(item.image), item.caption, item.masks
    image, caption, masks = item
    return np.asarray(image), caption, masks


def write_records(root: str | Path, items: Iterable[Any], start: int = 0, ext: str = "png",
                  progress: bool = True) -> list[dict]:
    """Write images, masks and ``metadata.jsonl`` in the original layout; return the rows.

    ``items`` are (image uint8 HxWx3, caption, {noun: bool HxW mask}) triples or miniworld scenes.
    Images are named ``<start + i, 12 digits>.<ext>`` like COCO's; an empty mask is written as null.
    """
    root = Path(root)
    items = list(items)
    rows = []
    for i, item in enumerate(tqdm(items, desc="write records", disable=not progress, leave=False)):
        image, caption, masks = _as_triple(item)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(f"item {i}: image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        file_name = f"{start + i:012d}.{ext}"
        _save_image(root / file_name, image)
        attn_list = []
        for noun, mask in masks.items():
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != image.shape[:2]:
                raise DataError(f"item {i}: mask of {noun!r} is {mask.shape}, image is {image.shape[:2]}")
            if not mask.any():
                attn_list.append([noun, None])
                continue
            rel = mask_relpath(image_id(file_name), noun)
            save_mask(root / rel, mask)
            attn_list.append([noun, rel])
        rows.append({"file_name": file_name, "text": caption, "attn_list": attn_list})
    write_metadata(root / METADATA, rows)
    return rows


def make_tiny_dataset(root: str | Path, n: int, seed: int = 0, size: int = 64,
                      n_objects: Sequence[float] = (1, 1, 1, 1, 0), progress: bool = True) -> list[Record]:
    """The tiny profile's training set: ``n`` miniworld scenes (1–4 objects, exact masks) in the layout.

    Resumable: a manifest with the same arguments means the set is already there and it is reused.
    """
    from . import miniworld

    root = Path(root)
    manifest = {"kind": "miniworld", "n": int(n), "seed": int(seed), "size": int(size),
                "n_objects": [float(x) for x in n_objects]}
    man_path = root / TINY_MANIFEST
    if man_path.is_file() and (root / METADATA).is_file():
        try:
            if json.loads(man_path.read_text()) == manifest:
                return load_records(root, check_files=True)
        except (json.JSONDecodeError, DataError):
            pass
    scenes = miniworld.sample_scenes(n, seed, n_objects=list(n_objects), size=size)
    write_records(root, scenes, progress=progress)
    atomic_write_json(man_path, manifest)
    return load_records(root, check_files=True)


def training_records(profile: Any, root: str | Path | None = None) -> list[Record]:
    """The records stage 02 trains on: the tiny set (written now if missing, same arguments as stage 01)
    or the records stage 01 wrote for the paper profile (``<data.root>/metadata.jsonl``)."""
    root = Path(root or profile.data.root)
    if profile.data.source == "synthetic":
        return make_tiny_dataset(root, profile.data.n_images, seed=profile.seed, size=profile.model.resolution,
                                 progress=False)
    if profile.data.source == "coco":
        if not (root / METADATA).is_file():
            raise DataError(f"{root / METADATA}: no training records; run stage 01 (notebooks/01_preprocess) first")
        return load_records(root, check_files=True)
    raise DataError(f"data.source must be 'synthetic' or 'coco', got {profile.data.source!r}")


# --------------------------------------------------------------------------- downloads (paper profile)

def coco_sources(path: str | Path = COCO_SOURCES) -> dict:
    """URL and sha256 of the authors' metadata.jsonl and the COCO image URL pattern (``data/coco``)."""
    with open(path) as f:
        return json.load(f)


def fetch_metadata(dest: str | Path, url: str | None = None, sha256: str | None = None) -> Path:
    """Download the authors' ``metadata.jsonl`` once, checked against its sha256 (``data/coco``)."""
    src = coco_sources()["metadata"]
    return download(url or src["url"], dest, sha256 or src["sha256"])


def _fetch_image(url: str, dest: Path, sha256: str | None) -> str:
    if dest.exists():
        return "present"
    download(url, dest, sha256, progress=False)
    try:
        open_image(dest)
    except DataError:
        dest.unlink(missing_ok=True)
        raise
    return "downloaded"


def download_images(file_names: Sequence[str], image_dir: str | Path, url_pattern: str | None = None,
                    sha256: Mapping[str, str] | None = None, workers: int = 8,
                    progress: bool = True) -> dict[str, int]:
    """Fetch each listed COCO image by itself (no 18 GB zip), skipping files already present.

    Each file is written atomically, checked against ``sha256[file_name]`` when given, and must
    decode as an image (else it is deleted). Returns counts ``downloaded``/``present``; raises a
    :class:`DataError` naming the first failing file after trying all.
    """
    image_dir = Path(image_dir)
    pattern = url_pattern or coco_sources()["images"]["url_pattern"]
    counts = {"downloaded": 0, "present": 0}
    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futs = {pool.submit(_fetch_image, pattern.format(file_name=fn), image_dir / fn,
                            (sha256 or {}).get(fn)): fn for fn in file_names}
        for fut in tqdm(as_completed(futs), total=len(futs), desc="COCO images", disable=not progress):
            try:
                counts[fut.result()] += 1
            except Exception as e:  # noqa: BLE001 - collected and reported with the file name
                failures.append(f"{futs[fut]}: {e}")
    if failures:
        raise DataError(f"{len(failures)} of {len(file_names)} images failed; first: {sorted(failures)[0]}")
    return counts


# --------------------------------------------------------------------------- nouns of new captions

Tagger = Callable[[str], list[tuple[str, str]]]
CaptionScorer = Callable[[Image.Image, Sequence[str]], np.ndarray]


def merge_nouns(tagged: Sequence[tuple[str, str]]) -> list[str]:
    """Noun phrases from (word, tag) pairs, merged as the original ``get_nouns``.

    A tag counts as a noun when it contains ``"NN"`` (Penn Treebank NN, NNS, NNP, NNPS). A noun right
    after a noun extends the current phrase: a ``##`` word piece is glued on, a previous piece ending
    in ``@@`` is glued to it, anything else is joined with a space ("teddy" + "bear" → "teddy bear").
    Duplicates and order are kept here (see :func:`extract_nouns`).
    """
    phrases: list[str] = []
    for i, (word, tag) in enumerate(tagged):
        if "NN" not in tag:
            continue
        if i > 0 and phrases and "NN" in tagged[i - 1][1]:
            if word.startswith("##"):
                phrases[-1] = phrases[-1] + word.replace("##", "")
            elif tagged[i - 1][0].endswith("@@"):
                phrases[-1] = phrases[-1].replace("@@", "") + word
            else:
                phrases[-1] = phrases[-1] + " " + word
        else:
            phrases.append(word)
    return phrases


def extract_nouns(caption: str, tagger: Tagger) -> list[str]:
    """Distinct noun phrases of a caption. Difference: first-occurrence order (the original's
    ``list(set(...))`` order depended on Python's string hashing, so it cannot be reproduced)."""
    return list(dict.fromkeys(merge_nouns(tagger(caption))))


_WORD_RE = re.compile(r"\w+(?:[-']\w+)*|[^\w\s]")


def lexicon_tagger(nouns: Iterable[str]) -> Tagger:
    """Tags a word ``NN`` when it (lower-cased) is in ``nouns``, else ``X``: the tiny profile's tagger,
    exact for the miniworld's captions, whose nouns are known (no model can be downloaded offline)."""
    vocab = {n.lower() for n in nouns}

    def tag(text: str) -> list[tuple[str, str]]:
        return [(w, "NN" if w.lower() in vocab else "X") for w in _WORD_RE.findall(text)]
    return tag


def hf_tagger(model: Any, tokenizer: Any = None, device: str | int | None = None) -> Tagger:
    """A Penn-Treebank POS tagger from a transformers token-classification model (hub id or model).

    Word pieces come out as ``##piece`` with their own tags, the format whose merge the original
    ``get_nouns`` was written for. The model must predict PTB tags (NN, NNS, ...), not UPOS (NOUN).
    """
    from transformers import pipeline
    pipe = pipeline("token-classification", model=model, tokenizer=tokenizer, device=device,
                    aggregation_strategy="none")

    def tag(text: str) -> list[tuple[str, str]]:
        return [(t["word"], t["entity"]) for t in pipe(text)]
    return tag


def flair_tagger(model_id: str = "flair/pos-english") -> Tagger:
    """The original's tagger: flair's ``flair/pos-english`` (Penn Treebank tags).

    The paper profile uses it because it is what the authors used; it needs ``pip install flair`` and
    the hub (like the SD weights). Offline runs use :func:`lexicon_tagger` or :func:`hf_tagger`.
    """
    try:
        from flair.data import Sentence
        from flair.models import SequenceTagger
    except ImportError:
        raise ImportError(f"data.pos_tagger {model_id!r} (the authors' noun tagger) needs flair: pip install flair "
                          f"(or pip install -e '.[pos]'); -p data.pos_tagger none skips the noun check") from None
    try:
        tagger = SequenceTagger.load(model_id)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise OSError(f"data.pos_tagger {model_id!r} could not be loaded: {first}; "
                      f"-p data.pos_tagger none skips the noun check") from None

    def tag(text: str) -> list[tuple[str, str]]:
        sentence = Sentence(text)
        tagger.predict(sentence)
        return [(tok.text, tok.get_label(tagger.label_type).value) for tok in sentence.tokens]
    return tag


NO_TAGGER = "none"


def make_tagger(spec: str, vocabulary: Iterable[str] | None = None, device: str | int | None = None) -> Tagger | None:
    """``"lexicon"`` (needs ``vocabulary``; default: the miniworld's nouns), ``"hf:<model id>"``, a flair model id,
    or ``"none"``: the explicit opt-out of the noun check (returns None). A tagger that cannot be built
    raises a one-line error saying what to install; it is never skipped silently."""
    if spec == NO_TAGGER:
        return None
    if spec == "lexicon":
        if vocabulary is None:
            from .miniworld import CATEGORIES
            vocabulary = CATEGORIES
        return lexicon_tagger(vocabulary)
    if spec.startswith("hf:"):
        return hf_tagger(spec[3:], device=device)
    return flair_tagger(spec)


def best_caption(image: Image.Image, captions: str | Sequence[str], scorer: CaptionScorer) -> str:
    """The caption the scorer ranks highest (first on ties); a single caption is returned as is.

    The original took the argmax of CLIP ViT-L/14@336px image-text probabilities (= of the logits).
    """
    if isinstance(captions, str):
        return captions
    if not captions:
        raise DataError("best_caption: no captions given")
    scores = np.asarray(scorer(image, list(captions)), dtype=np.float64).reshape(-1)
    if scores.shape[0] != len(captions):
        raise DataError(f"best_caption: scorer returned {scores.shape[0]} scores for {len(captions)} captions")
    return list(captions)[int(np.argmax(scores))]


def tiny_clip(seed: int = 0):
    """A small random CLIPModel and processor built in code (SD1.4's tokenizer, 32² images)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor
    from .models import clip_tokenizer
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                            crop_size={"height": 32, "width": 32}),
                         tokenizer=clip_tokenizer())
    return CLIPModel(cfg).eval(), proc


def clip_scorer(model_id: str = "openai/clip-vit-large-patch14-336", device: str = "cpu",
                seed: int = 0) -> CaptionScorer:
    """Image-caption CLIP logits; ``"tiny"`` builds a random small CLIP (pipeline check only)."""
    from transformers import CLIPModel, CLIPProcessor
    if model_id == "tiny":
        model, proc = tiny_clip(seed)
    else:
        model, proc = CLIPModel.from_pretrained(model_id).eval(), CLIPProcessor.from_pretrained(model_id)
    model = model.to(device)

    @torch.no_grad()
    def score(image: Image.Image, captions: Sequence[str]) -> np.ndarray:
        inp = proc(text=list(captions), images=image.convert("RGB"), return_tensors="pt", padding="max_length",
                   truncation=True, max_length=77)
        out = model(**{k: v.to(device) for k, v in inp.items()})
        return out.logits_per_image[0].float().cpu().numpy()
    return score


def records_from_captions(items: Iterable[tuple[str | Path, str | Sequence[str]]], tagger: Tagger,
                          scorer: CaptionScorer | None = None, progress: bool = True) -> list[dict]:
    """Rows (nouns without masks yet) for new (image path, caption or captions) pairs, as the authors'
    ``gen_noun_tgt.py``: best caption by CLIP when there are several, then its noun phrases."""
    rows = []
    for path, caps in tqdm(list(items), desc="nouns", disable=not progress, leave=False):
        if not isinstance(caps, str):
            if scorer is None:
                raise DataError(f"{path}: several captions need a scorer to pick one")
            caps = best_caption(open_image(path).convert("RGB"), caps, scorer)
        rows.append({"file_name": Path(path).name, "text": caps,
                     "attn_list": [[n, None] for n in extract_nouns(caps, tagger)]})
    return rows


def noun_agreement(rows: Sequence[Mapping], tagger: Tagger, progress: bool = True) -> "pd.DataFrame":  # noqa: F821
    """Per record: the nouns it lists vs the nouns the tagger extracts from its caption.

    On the authors' records with flair this measures how closely a rerun of their noun step matches
    what they shipped; on the tiny set it checks the lexicon tagger.
    """
    import pandas as pd
    out = []
    for r in tqdm(rows, desc="nouns", disable=not progress, leave=False):
        listed = [n for n, _ in r["attn_list"]]
        found = extract_nouns(r["text"], tagger)
        common = set(listed) & set(found)
        out.append({"file_name": r["file_name"], "listed": listed, "extracted": found,
                    "n_listed": len(set(listed)), "n_extracted": len(set(found)), "n_common": len(common),
                    "exact": set(listed) == set(found)})
    return pd.DataFrame(out, columns=["file_name", "listed", "extracted", "n_listed", "n_extracted",
                                      "n_common", "exact"])


def noun_agreement_summary(table: "pd.DataFrame") -> "pd.DataFrame":  # noqa: F821
    """One row: records, share with the same noun set, recall and precision of extracted nouns."""
    import pandas as pd
    listed, extracted, common = table.n_listed.sum(), table.n_extracted.sum(), table.n_common.sum()
    return pd.DataFrame([{
        "records": len(table), "same_nouns": float(table.exact.mean()) if len(table) else float("nan"),
        "recall": float(common / listed) if listed else float("nan"),
        "precision": float(common / extracted) if extracted else float("nan")}])
