"""Grounded-SAM: a mask for every noun phrase of a training caption, and the QA of those masks.

The authors' segmentation masks cannot be downloaded any more, so stage 01 regenerates them the way
their ``preprocess_data/gen_mask.py`` made them: GroundingDINO boxes for the prompt
``"noun1 . noun2 . noun3."`` (lower-cased), each box named by the caption tokens whose score passes
the text threshold, SAM (or SAM-HQ, what the authors ran) masks from the boxes with
``multimask_output=False``, masks of one detected phrase united, each phrase matched back to a noun
of the record by the original's rules (:func:`match_phrase`), one PNG per noun, null where nothing
was found.

Two backends, chosen by ``data.gsam_backend``:

* ``official`` (the paper profile): the packages the authors ran, ``groundingdino-py`` and
  ``segment-anything-hq`` / ``segment-anything``, with their checkpoints ``groundingdino_swint_ogc.pth`` and
  ``sam_hq_vit_h.pth`` (URLs + sha256 in ``data/gsam/checkpoints.json``); see :mod:`reprolib.gsam_official`.
  Needs ``pip install -e ".[gsam]"``.
* ``transformers``: transformers' ``GroundingDinoForObjectDetection``, ``SamModel`` and ``SamHQModel``
  (hub weights; ``IDEA-Research/grounding-dino-tiny`` is the converted SwinT-OGC, ``syscv-community/sam-hq-vit-huge``
  the converted ``sam_hq_vit_h``), images batched. Both load the same weights; how far their boxes and
  masks are apart, and why, is measured by ``benchmarks/gsam_parity.py``.

Both send at most ``data.sam_max_boxes`` boxes of an image to SAM per call (an image with 810 boxes
took 22.5 GB in one call); each box is decoded on its own, so the bound does not change the masks.

Thresholds: the authors' ``run_pipeline.sh`` passed ``--box_threshold 0.25 --text_threshold 0.25``
(``gen_mask.py``'s argparse defaults were 0.3 and 0.25); :data:`BOX_THRESHOLD`/:data:`TEXT_THRESHOLD`
and the paper profile use 0.25/0.25. Differences from the original, each with the original's behaviour
noted: images can be batched by the transformers backend (``batch_size=1`` is the original; padding in a batch may move scores
slightly); an image on which SAM fails is an error, not silently dropped from the records; GroundingDINO
and SAM see the same PIL-decoded pixels (the original decoded the JPEG twice, with PIL and OpenCV).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .data import (METADATA, SEG_DIR, DataError, Record, image_id, mask_relpath, open_image, read_mask,
                   save_mask, write_metadata)
from .report import package_versions
from .io import atomic_write_json, remove_stale_temps, reset_if_changed

BOX_THRESHOLD = 0.25        # authors' run_pipeline.sh
TEXT_THRESHOLD = 0.25
DONE_FILE = "attn_list.json"   # per image, written last: its presence marks the image finished


# --------------------------------------------------------------------------- the original's text logic

def grounding_prompt(nouns: Sequence[str]) -> str:
    """The detector prompt of the original: nouns joined by ``" . "``, lower-cased, ending in ``"."``."""
    caption = " . ".join(nouns).lower().strip()
    return caption if caption.endswith(".") else caption + "."


def match_phrase(phrase: str, words: Sequence[str]) -> str | None:
    """The noun of ``words`` that a detected phrase stands for, by the original's rules, quirks included.

    In order: exact; upper-, lower-cased; ``" - "`` → ``"-"`` (BERT splits hyphens). Otherwise, scan for a
    noun that is one of the phrase's words or vice versa, then let a substring match in either direction
    override it (so an empty phrase matches the first noun); failing both, the first noun that contains
    every word of the phrase as a substring. None when nothing matches.
    """
    if phrase in words:
        return phrase
    if phrase.upper() in words:
        return phrase.upper()
    if phrase.lower() in words:
        return phrase.lower()
    if phrase.replace(" - ", "-") in words:
        return phrase.replace(" - ", "-")
    found = None
    p = phrase.lower()
    for word in words:
        if word.lower() in p.split(" ") or p in word.lower().split(" "):
            found = word
            break
    for word in words:
        if word.lower() in p or p in word.lower():
            found = word
            break
    if found is None:
        for word in words:
            if all(tok.lower() in word.lower() for tok in phrase.split(" ")):
                return word
    return found


def aggregate_masks(masks: np.ndarray | Sequence[np.ndarray], phrases: Sequence[str]) -> dict[str, np.ndarray]:
    """Union of the masks of each detected phrase, in order of first appearance (as the original)."""
    out: dict[str, np.ndarray] = {}
    for mask, phrase in zip(masks, phrases):
        key = phrase.split("(")[0]          # the original stripped its "(score)" suffix this way
        m = np.asarray(mask, dtype=bool)
        out[key] = out[key] | m if key in out else m.copy()
    return out


def assign_masks(phrased: Mapping[str, np.ndarray], words: Sequence[str]) -> dict[str, np.ndarray]:
    """Noun → mask. Phrases matching no noun are dropped; when two phrases match one noun the later one
    wins (the original wrote both to the same file)."""
    out: dict[str, np.ndarray] = {}
    for phrase, mask in phrased.items():
        word = match_phrase(phrase, words)
        if word is not None:
            out[word] = mask
    return out


# --------------------------------------------------------------------------- models

@dataclass
class Detections:
    """Boxes of one image: ``boxes`` (n, 4) x0, y0, x1, y1 in pixels, ``scores`` (n,), one phrase per box."""
    boxes: torch.Tensor
    scores: torch.Tensor
    phrases: list[str]


@dataclass
class GroundedSAM:
    """A GroundingDINO detector and a SAM / SAM-HQ segmenter (transformers models and processors)."""
    detector: Any
    detector_processor: Any
    segmenter: Any
    segmenter_processor: Any
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    box_threshold: float = BOX_THRESHOLD
    text_threshold: float = TEXT_THRESHOLD
    max_boxes: int = 64                 # boxes per segmenter call (bounds memory; masks do not change)
    identity: dict[str, Any] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=lambda: {"detect_images": 0, "segment_images": 0, "sam_calls": 0})

    def __post_init__(self):
        if self.max_boxes < 1:
            raise ValueError(f"max_boxes (data.sam_max_boxes) must be >= 1, got {self.max_boxes}")

    @torch.no_grad()
    def detect(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[Detections]:
        """Boxes scoring above the box threshold, named by tokens above the text threshold, per image."""
        self.calls["detect_images"] += len(images)
        inp = self.detector_processor(images=list(images), text=list(prompts), padding=True, return_tensors="pt")
        inp = {k: (v.to(self.device, self.dtype) if k == "pixel_values" else v.to(self.device)) for k, v in inp.items()}
        out = self.detector(**inp)
        out.logits, out.pred_boxes = out.logits.float(), out.pred_boxes.float()
        res = self.detector_processor.post_process_grounded_object_detection(
            out, inp["input_ids"], threshold=self.box_threshold, text_threshold=self.text_threshold,
            target_sizes=[(im.height, im.width) for im in images])
        return [Detections(r["boxes"].cpu(), r["scores"].cpu(), list(r["text_labels"])) for r in res]

    @torch.no_grad()
    def segment(self, images: Sequence[Image.Image], boxes: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """Bool masks (n, H, W), one per box, single-mask output thresholded at 0 (as SamPredictor), at most
        ``max_boxes`` boxes per call."""
        out: list[np.ndarray] = [np.zeros((0, im.height, im.width), dtype=bool) for im in images]
        todo = [i for i, b in enumerate(boxes) if len(b)]
        if not todo:
            return out
        self.calls["segment_images"] += len(todo)
        proc = self.segmenter_processor
        pv = proc(images=[images[i] for i in todo], return_tensors="pt")["pixel_values"]
        emb = self.segmenter.get_image_embeddings(pv.to(self.device, self.dtype))
        for j, i in enumerate(todo):
            if isinstance(emb, tuple):          # SAM-HQ: also the ViT's early features
                kw = {"image_embeddings": emb[0][j:j + 1], "intermediate_embeddings": [t[j:j + 1] for t in emb[1]]}
            else:
                kw = {"image_embeddings": emb[j:j + 1]}
            parts = []
            for start in range(0, len(boxes[i]), self.max_boxes):
                self.calls["sam_calls"] += 1
                chunk = boxes[i][start:start + self.max_boxes].tolist()
                inp = proc(images=[images[i]], input_boxes=[chunk], return_tensors="pt")
                pred = self.segmenter(input_boxes=inp["input_boxes"].to(self.device, self.dtype),
                                      multimask_output=False, **kw).pred_masks
                masks = proc.post_process_masks(pred.float().cpu(), inp["original_sizes"],
                                                inp["reshaped_input_sizes"])[0]
                parts.append(masks[:, 0].numpy().astype(bool))
            out[i] = np.concatenate(parts)
        return out

    def masks_for(self, images: Sequence[Image.Image], noun_lists: Sequence[Sequence[str]]) -> list[dict[str, np.ndarray]]:
        """Noun → bool (H, W) mask for each image; nouns without a detection are absent."""
        return masks_from(self, images, noun_lists)


def masks_from(model: Any, images: Sequence[Image.Image], noun_lists: Sequence[Sequence[str]]) -> list[dict[str, np.ndarray]]:
    """The original's steps on any backend with ``detect`` and ``segment``: prompt, boxes, masks, union per
    phrase, phrase → noun."""
    dets = model.detect(images, [grounding_prompt(n) for n in noun_lists])
    segs = model.segment(images, [d.boxes for d in dets])
    return [assign_masks(aggregate_masks(s, d.phrases), nouns) for s, d, nouns in zip(segs, dets, noun_lists)]


def tiny_grounding_dino(vocabulary: Iterable[str], seed: int = 0):
    """A small random GroundingDINO (Swin + BERT) and its processor, built offline; inputs resized to 128²
    (at 64² the coarsest feature level is 1×1, which GroupNorm rejects for a single image).

    The BERT vocabulary is the given words plus punctuation, so detected phrases decode to nouns.
    """
    from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","]
    words += sorted({w.lower() for v in vocabulary for w in v.split()} - set(words))
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    proc = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(
        size={"shortest_edge": 128, "longest_edge": 128}), tokenizer=tok)
    cfg = GroundingDinoConfig(
        backbone_config=SwinConfig(image_size=128, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                                   num_heads=[1, 1, 2, 2], window_size=4, out_features=["stage2", "stage3", "stage4"]),
        text_config=BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64),
        num_queries=20, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, d_model=32,
        encoder_attention_heads=2, decoder_attention_heads=2, max_text_len=64, encoder_n_points=2,
        decoder_n_points=2)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(cfg).eval()
    return model, proc


def tiny_sam(kind: str = "sam", seed: int = 0):
    """A small random SAM or SAM-HQ and its processor, built offline; inputs resized to 64²."""
    from transformers import SamImageProcessor
    if kind == "sam_hq":
        from transformers import (SamHQConfig as Cfg, SamHQMaskDecoderConfig as Dec, SamHQModel as Model,
                                  SamHQProcessor as Proc, SamHQPromptEncoderConfig as Prompt, SamHQVisionConfig as Vis)
        dec_kw = {"vit_dim": 32}
    elif kind == "sam":
        from transformers import (SamConfig as Cfg, SamMaskDecoderConfig as Dec, SamModel as Model,
                                  SamProcessor as Proc, SamPromptEncoderConfig as Prompt, SamVisionConfig as Vis)
        dec_kw = {}
    else:
        raise ValueError(f"segmenter must be 'sam' or 'sam_hq', got {kind!r}")
    cfg = Cfg(vision_config=Vis(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                                image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1],
                                num_pos_feats=8, mlp_dim=64),
              prompt_encoder_config=Prompt(hidden_size=16, image_size=64, patch_size=8),
              mask_decoder_config=Dec(hidden_size=16, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2,
                                      iou_head_hidden_dim=16, **dec_kw))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Model(cfg).eval()
    proc = Proc(image_processor=SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}))
    return model, proc


def load_grounded_sam(detector_id: str, segmenter: str = "sam_hq", sam_id: str = "tiny", device: str = "cpu",
                      box_threshold: float = BOX_THRESHOLD, text_threshold: float = TEXT_THRESHOLD,
                      vocabulary: Iterable[str] | None = None, seed: int = 0,
                      dtype: torch.dtype = torch.float32, max_boxes: int = 64) -> GroundedSAM:
    """Detector and segmenter from hub ids / folders, or ``"tiny"`` random ones (vocabulary: the nouns)."""
    if segmenter not in ("sam", "sam_hq"):
        raise ValueError(f"segmenter must be 'sam' or 'sam_hq', got {segmenter!r}")
    if detector_id == "tiny":
        if vocabulary is None:
            from .miniworld import CATEGORIES
            vocabulary = CATEGORIES
        det, det_proc = tiny_grounding_dino(vocabulary, seed)
    else:
        from transformers import AutoProcessor, GroundingDinoForObjectDetection
        try:
            det = GroundingDinoForObjectDetection.from_pretrained(detector_id).eval()
            det_proc = AutoProcessor.from_pretrained(detector_id)
        except OSError as e:
            raise OSError(f"cannot load detector {detector_id!r}: {e}") from None
    if sam_id == "tiny":
        seg, seg_proc = tiny_sam(segmenter, seed)
    else:
        if segmenter == "sam_hq":
            from transformers import SamHQModel as Model, SamHQProcessor as Proc
        else:
            from transformers import SamModel as Model, SamProcessor as Proc
        try:
            seg, seg_proc = Model.from_pretrained(sam_id).eval(), Proc.from_pretrained(sam_id)
        except OSError as e:
            raise OSError(f"cannot load segmenter {sam_id!r}: {e}") from None
    identity = {"backend": "transformers", "detector": detector_id, "segmenter": {"id": sam_id, "kind": segmenter},
                "random_weights": "tiny" in (detector_id, sam_id), "packages": package_versions(("transformers", "torch"))}
    return GroundedSAM(det.to(device, dtype), det_proc, seg.to(device, dtype), seg_proc, device=device,
                       dtype=dtype, box_threshold=box_threshold, text_threshold=text_threshold, max_boxes=max_boxes,
                       identity=identity)


BACKENDS = ("official", "transformers")


def load_from_profile(data_cfg: Any, device: str = "cpu", seed: int = 0):
    """Stage 01's (and stage 04's) Grounded-SAM from the profile's ``data`` section: ``gsam_backend``
    ``official`` (``gsam_checkpoints``: folder or ``"tiny"``) or ``transformers`` (``detector_id``,
    ``sam_id``); thresholds, segmenter and ``sam_max_boxes`` apply to both."""
    d = data_cfg
    if d.gsam_backend == "official":
        from .gsam_official import load_official
        from .io import repo_path
        ck = d.gsam_checkpoints if d.gsam_checkpoints == "tiny" else repo_path(d.gsam_checkpoints)
        return load_official(ck, d.segmenter, device, d.box_threshold, d.text_threshold, d.sam_max_boxes, seed=seed)
    if d.gsam_backend == "transformers":
        return load_grounded_sam(d.detector_id, d.segmenter, d.sam_id, device=device, box_threshold=d.box_threshold,
                                 text_threshold=d.text_threshold, seed=seed, max_boxes=d.sam_max_boxes)
    raise ValueError(f"data.gsam_backend must be one of {BACKENDS}, got {d.gsam_backend!r}")


# --------------------------------------------------------------------------- the resumable run

@dataclass
class AnnotateResult:
    rows: list[dict]
    processed: int          # images run through the models in this call
    skipped: int            # images already finished by an earlier call


def _done_path(out_root: Path, file_name: str) -> Path:
    return out_root / SEG_DIR / image_id(file_name) / DONE_FILE


def signature(model: Any) -> dict[str, Any]:
    """What decides a model's masks (backend, weights, thresholds; not the box bound, which does not change
    them): a resumed run whose signature differs redoes every image (:func:`annotate`)."""
    ident = dict(getattr(model, "identity", {}) or {})
    ident.pop("packages", None)
    return {"identity": ident, "box_threshold": getattr(model, "box_threshold", None),
            "text_threshold": getattr(model, "text_threshold", None), "resize": getattr(model, "resize", None)}


def identity_table(model: Any) -> "pd.DataFrame":  # noqa: F821
    """Which code and weights made the masks, one row per fact (for the book and the provenance)."""
    import pandas as pd
    ident = getattr(model, "identity", {}) or {}
    rows = [("backend", ident.get("backend", "–"))]
    for role in ("detector", "segmenter"):
        v = ident.get(role)
        if isinstance(v, Mapping):
            rows.append((role, " ".join(str(v[k]) for k in ("file", "id", "kind") if v.get(k))))
            if v.get("sha256"):
                rows.append((f"{role} sha256", v["sha256"]))
        elif v is not None:
            rows.append((role, str(v)))
    rows.append(("random weights", "yes" if ident.get("random_weights") else "no"))
    if ident.get("text_encoder"):
        rows.append(("text encoder", str(ident["text_encoder"])))
    rows += [("thresholds (box, text)", f"{getattr(model, 'box_threshold', '–')}, {getattr(model, 'text_threshold', '–')}"),
             ("boxes per SAM call (max)", str(getattr(model, "max_boxes", "–")))]
    rows += [(f"package {k}", v or "not installed") for k, v in (ident.get("packages") or {}).items()]
    return pd.DataFrame(rows, columns=["what", "value"])


def annotate(rows: Sequence[Mapping], image_dir: str | Path, out_root: str | Path, gsam: GroundedSAM,
             batch_size: int = 4, limit: int | None = None, progress: bool = True) -> AnnotateResult:
    """Regenerate the masks of ``rows`` (their nouns; any mask paths in them are ignored) into ``out_root``.

    Writes ``seg/<id>/mask_*.png`` and, last for each image, ``seg/<id>/attn_list.json``: an image with
    that file is finished and is skipped when the run is resumed. At the end ``<out_root>/metadata.jsonl``
    lists every row in input order (file names as given; images stay in ``image_dir``). When the model's
    :func:`signature` differs from the one recorded in ``seg/signature.json`` by an earlier run, every image
    is redone, so one output never mixes two models' masks.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = list(rows)[:limit] if limit is not None else list(rows)
    image_dir, out_root = Path(image_dir), Path(out_root)
    remove_stale_temps(out_root)                          # masks and records half-written by a killed run
    reset_if_changed(out_root / SEG_DIR, signature(gsam), pattern="*/*")   # seg/<id>/ files of another model
    todo = [r for r in rows if not _done_path(out_root, r["file_name"]).is_file()]
    bar = tqdm(total=len(todo), desc="Grounded-SAM", disable=not progress)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        nouns = [[n for n, _ in r["attn_list"]] for r in batch]
        run = [k for k, ns in enumerate(nouns) if ns]
        images = {k: open_image(image_dir / batch[k]["file_name"]).convert("RGB") for k in run}
        found = dict(zip(run, gsam.masks_for([images[k] for k in run], [nouns[k] for k in run]))) if run else {}
        for k, row in enumerate(batch):
            iid = image_id(row["file_name"])
            attn = [[n, None] for n in nouns[k]]
            for word, mask in found.get(k, {}).items():
                rel = mask_relpath(iid, word)
                save_mask(out_root / rel, mask)
                next(item for item in attn if item[0] == word)[1] = rel     # first noun of that name
            atomic_write_json(_done_path(out_root, row["file_name"]),
                              {"file_name": row["file_name"], "text": row["text"], "attn_list": attn})
        bar.update(len(batch))
    bar.close()
    out_rows = [json.loads(_done_path(out_root, r["file_name"]).read_text()) for r in rows]
    write_metadata(out_root / METADATA, out_rows)
    return AnnotateResult(out_rows, processed=len(todo), skipped=len(rows) - len(todo))


# --------------------------------------------------------------------------- QA

def coverage_table(records: Sequence[Record], top: int | None = 20) -> "pd.DataFrame":  # noqa: F821
    """Per noun (lower-cased): occurrences, how many got a mask, and the share; last row all nouns."""
    import pandas as pd
    rows = [(n.phrase.lower(), n.mask is not None) for r in records for n in r.nouns]
    df = pd.DataFrame(rows, columns=["noun", "has_mask"])
    if df.empty:
        return pd.DataFrame(columns=["noun", "count", "with_mask", "coverage"])
    t = df.groupby("noun").agg(count=("has_mask", "size"), with_mask=("has_mask", "sum")).reset_index()
    t = t.sort_values(["count", "noun"], ascending=[False, True])
    if top is not None:
        t = t.head(top)
    total = pd.DataFrame([{"noun": "(all nouns)", "count": len(df), "with_mask": int(df.has_mask.sum())}])
    t = pd.concat([t, total], ignore_index=True)
    t["with_mask"] = t["with_mask"].astype(int)
    t["coverage"] = t["with_mask"] / t["count"]
    return t


def summary_table(sets: Mapping[str, Sequence[Record]]) -> "pd.DataFrame":  # noqa: F821
    """One row per named set of records: records, nouns, nouns with a mask, coverage, nouns per record."""
    import pandas as pd
    out = []
    for name, recs in sets.items():
        nouns = sum(len(r.nouns) for r in recs)
        masked = sum(len(r.grounded) for r in recs)
        out.append({"set": name, "records": len(recs), "nouns": nouns, "with_mask": masked,
                    "coverage": masked / nouns if nouns else float("nan"),
                    "nouns_per_record": nouns / len(recs) if recs else float("nan")})
    return pd.DataFrame(out, columns=["set", "records", "nouns", "with_mask", "coverage", "nouns_per_record"])


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks of one size (NaN when both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise DataError(f"mask_iou: shapes differ {a.shape} vs {b.shape}")
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def mask_iou_table(records: Sequence[Record], reference: Sequence[Record], iou: bool = True) -> "pd.DataFrame":  # noqa: F821
    """Per (image, noun) of records present in both: whether each side has a mask, and their IoU.

    With ``iou=False`` only the has-a-mask flags are compared (reference masks need not exist, e.g. the
    authors' metadata without their masks)."""
    import pandas as pd
    ref = {r.file_name: {n.phrase: n.mask for n in r.nouns} for r in reference}
    out = []
    for rec in records:
        if rec.file_name not in ref:
            continue
        for n in rec.nouns:
            if n.phrase not in ref[rec.file_name]:
                continue
            rm = ref[rec.file_name][n.phrase]
            both = iou and n.mask is not None and rm is not None
            out.append({"file_name": rec.file_name, "noun": n.phrase, "regenerated": n.mask is not None,
                        "reference": rm is not None,
                        "iou": mask_iou(read_mask(n.mask), read_mask(rm)) if both else float("nan")})
    return pd.DataFrame(out, columns=["file_name", "noun", "regenerated", "reference", "iou"])


def iou_summary(table: "pd.DataFrame") -> "pd.DataFrame":  # noqa: F821
    """One row: pairs compared, agreement on which nouns have a mask, mean and median IoU where both do."""
    import pandas as pd
    both = table[table.regenerated & table.reference]
    return pd.DataFrame([{
        "nouns": len(table), "both_masked": len(both),
        "only_regenerated": int((table.regenerated & ~table.reference).sum()),
        "only_reference": int((~table.regenerated & table.reference).sum()),
        "neither": int((~table.regenerated & ~table.reference).sum()),
        "mean_iou": float(both.iou.mean()) if len(both) else float("nan"),
        "median_iou": float(both.iou.median()) if len(both) else float("nan"),
    }])


def qa_figure(records: Sequence[Record], n: int = 8, ncols: int = 4, title: str | None = None):
    """Grid of images with each noun's mask tinted and outlined in its colour, the nouns in a legend
    below (grey: no mask)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    recs = list(records)[:n]
    if not recs:
        raise DataError("qa_figure: no records")
    ncols = min(ncols, len(recs))
    nrows = -(-len(recs) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 3.7 * nrows), squeeze=False)
    palette = plt.get_cmap("tab10").colors
    for ax in axes.flat:
        ax.axis("off")
    for ax, rec in zip(axes.flat, recs):
        img = np.asarray(open_image(rec.image).convert("RGB"), dtype=np.float32) / 255.0
        over, handles, outlines = img.copy(), [], []
        for noun in rec.nouns:
            if noun.mask is None:
                handles.append(Patch(facecolor="none", edgecolor=(0.6, 0.6, 0.6), label=f"{noun.phrase} (none)"))
                continue
            color = palette[len(outlines) % len(palette)]
            m = read_mask(noun.mask)
            if m.shape != img.shape[:2]:
                raise DataError(f"{noun.mask}: mask is {m.shape[1]}x{m.shape[0]}, image {rec.image} is "
                                f"{img.shape[1]}x{img.shape[0]}")
            over[m] = 0.5 * over[m] + 0.5 * np.asarray(color)
            outlines.append((m, color))
            handles.append(Patch(color=color, label=noun.phrase))
        ax.imshow(over)
        for m, color in outlines:
            if m.any() and not m.all():
                ax.contour(m.astype(float), levels=[0.5], colors=[color], linewidths=1.0)
        ax.set_title(rec.image_id, fontsize=8)
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=7,
                  frameon=False, handlelength=1.0, columnspacing=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
