"""Grounded-SAM on the authors' own packages: ``groundingdino-py`` boxes, ``segment-anything-hq`` masks.

TokenCompose's ``preprocess_data/gen_mask.py`` (adapted from Grounded-Segment-Anything's demo) made the
training masks with IDEA's GroundingDINO (Swin-T OGC, ``groundingdino_swint_ogc.pth``) and SAM-HQ ViT-H
(``sam_hq_vit_h.pth``). This backend runs that code path from the PyPI packages:

* boxes: ``groundingdino.models.build_model`` on the package's ``GroundingDINO_SwinT_OGC.py`` config
  (:class:`~groundingdino.util.slconfig.SLConfig`), the image through the package's transforms
  (``RandomResize([800], max_size=1333)``, ``ToTensor``, ImageNet ``Normalize``), the caption
  lower-cased with a final ``"."``, boxes whose best token logit passes the box threshold, each named by
  :func:`~groundingdino.util.utils.get_phrases_from_posmap` over tokens above the text threshold;
  boxes cxcywh → xyxy scaled to the image exactly as the original (scale, subtract half, add);
* masks: ``SamPredictor`` (``segment_anything_hq``; ``segment_anything`` for plain SAM) with
  ``set_image`` on the RGB array, ``apply_boxes_torch`` and ``predict_torch(multimask_output=False)``;
  for SAM-HQ ``hq_token_only`` keeps its default ``False`` (SAM's and the HQ token's logits summed),
  which is what ``gen_mask.py`` ran.

Differences from the original, each with a reason: the boxes of one image go to SAM in chunks of at
most ``max_boxes`` (one call with 810 boxes took 22.5 GB; each box is decoded independently, so the masks
do not change); an image with no box gets empty masks (the original then called SAM with zero boxes);
``groundingdino-py`` 0.4.0 always uses the pure-PyTorch deformable attention (the original's CUDA
kernel computes the same bilinear sampling; results agree to float rounding); activation checkpointing
(a training-time memory saving, ``use_checkpoint`` in the config) is off; and, with transformers >= 5,
GroundingDINO's BERT wrapper is replaced while the model is built (:class:`_BertForGroundingDINO`: same
weights, same maths; the package's wrapper calls BERT methods that transformers 5 removed).
Checkpoints are downloaded from ``data/gsam/checkpoints.json`` (URLs + sha256) and loaded with ``torch.load(weights_only=True)``; a checkpoint missing any of the model's
weights is an error (the original's ``strict=False`` would have left them random).
"""
from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .io import REPO_ROOT, atomic_save, atomic_write_json, download, sha256_file, verify_sha256
from .report import package_versions

MANIFEST = REPO_ROOT / "data" / "gsam" / "checkpoints.json"   # the official files: URLs, sha256, sizes
LOCAL_MANIFEST = "gsam_checkpoints.json"                       # in a folder of other (e.g. random) checkpoints
PACKAGES = ("groundingdino-py", "segment-anything-hq", "segment-anything", "transformers", "torch")
INSTALL_HINT = 'pip install -e ".[gsam]"   (groundingdino-py, segment-anything-hq, segment-anything)'
SAM_ARCHS = {  # segment_anything(_hq).build_sam's ViTs: embed dim, depth, heads, global-attention blocks
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
}


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit the model it is loaded into (names the file and the keys)."""


def require_packages() -> None:
    """Import the packages once, with an install instruction instead of a bare ImportError."""
    import warnings
    try:
        with warnings.catch_warnings():     # timm's deprecated import paths, SAM-HQ re-registering TinyViT
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            import groundingdino.models  # noqa: F401
            import segment_anything_hq  # noqa: F401
    except ImportError as e:
        raise ImportError(f"the official Grounded-SAM backend needs {e.name}: {INSTALL_HINT}") from None


# --------------------------------------------------------------------------- compatibility shims

class _BertForGroundingDINO(nn.Module):
    """GroundingDINO's ``BertModelWarper`` for transformers 5.

    The warper copies ``get_extended_attention_mask`` / ``get_head_mask`` from the ``BertModel`` and calls
    its embeddings with ``past_key_values_length``; transformers 5 removed those. This module keeps the
    same submodules (so the checkpoint's ``bert.*`` weights load unchanged) and computes what the warper
    computed: BERT over the caption with GroundingDINO's (batch, L, L) sub-sentence mask, turned into the
    additive mask ``(1 - m) * finfo.min`` broadcast over heads.
    """

    def __init__(self, bert_model: nn.Module):
        super().__init__()
        self.config = bert_model.config
        self.embeddings = bert_model.embeddings
        self.encoder = bert_model.encoder
        self.pooler = bert_model.pooler

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                **_: Any) -> dict[str, torch.Tensor]:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        hidden = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids)
        mask = attention_mask[:, None, :, :] if attention_mask.dim() == 3 else attention_mask[:, None, None, :]
        mask = (1.0 - mask.to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        out = self.encoder(hidden, attention_mask=mask)
        seq = out[0]
        return {"last_hidden_state": seq, "pooler_output": self.pooler(seq) if self.pooler is not None else None}


@contextlib.contextmanager
def _bert_for_transformers5() -> Iterator[None]:
    """While GroundingDINO is built, swap in :class:`_BertForGroundingDINO` when the installed transformers
    lacks what ``BertModelWarper`` needs (transformers >= 5); the package module is restored afterwards."""
    from transformers import BertModel
    from groundingdino.models.GroundingDINO import groundingdino as gd
    old = gd.BertModelWarper
    if not hasattr(BertModel, "get_head_mask"):
        gd.BertModelWarper = _BertForGroundingDINO
    try:
        yield
    finally:
        gd.BertModelWarper = old


# --------------------------------------------------------------------------- building and loading

def _config_path(config: str | Path | None) -> Path:
    if config is not None:
        return Path(config)
    import groundingdino
    return Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py"


def build_groundingdino(config: str | Path | None = None, text_encoder: str | None = None,
                        device: str = "cpu") -> nn.Module:
    """GroundingDINO from an SLConfig file (default: the package's Swin-T OGC config), random weights.

    ``text_encoder``: hub id or local folder of the BERT (tokenizer + config + weights) that the config's
    ``text_encoder_type`` names (default there: ``bert-base-uncased``, read from the Hugging Face hub as in
    the original; its weights are then replaced by the checkpoint's ``bert.*``).
    """
    require_packages()
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig
    args = SLConfig.fromfile(str(_config_path(config)))
    args.device = device
    args.use_checkpoint = False            # activation checkpointing: training only, no effect on outputs
    args.use_transformer_ckpt = False
    if text_encoder is not None:
        args.text_encoder_type = str(text_encoder)
    with _bert_for_transformers5(), contextlib.redirect_stdout(None):   # the package prints its BERT path
        try:
            model = build_model(args)
        except OSError as e:
            raise OSError(f"GroundingDINO's text encoder {args.text_encoder_type!r} cannot be loaded ({e}); "
                          "it comes from the Hugging Face hub, or give a local folder") from None
    return model.eval()


def _sam_modules(hq: bool):
    if hq:
        import segment_anything_hq as pkg
        from segment_anything_hq.modeling import (ImageEncoderViT, MaskDecoderHQ as Decoder, PromptEncoder, Sam,
                                                  TwoWayTransformer)
    else:
        try:
            import segment_anything as pkg
            from segment_anything.modeling import (ImageEncoderViT, MaskDecoder as Decoder, PromptEncoder, Sam,
                                                   TwoWayTransformer)
        except ImportError:
            raise ImportError(f"segmenter 'sam' needs segment_anything: {INSTALL_HINT}") from None
    return pkg, ImageEncoderViT, Decoder, PromptEncoder, Sam, TwoWayTransformer


def build_sam(hq: bool = True, arch: str | Mapping[str, Any] = "vit_h") -> nn.Module:
    """SAM-HQ (``segment_anything_hq``) or SAM (``segment_anything``) with random weights.

    ``arch``: ``"vit_h"``/``"vit_l"``/``"vit_b"`` (the packages' own registry builders) or a dict of a small
    variant (``embed_dim, depth, num_heads, global_attn_indexes, img_size, prompt_dim, window_size,
    mlp_dim, decoder_heads``) built from the same modules, for tests.
    """
    require_packages()
    pkg, ImageEncoderViT, Decoder, PromptEncoder, Sam, TwoWayTransformer = _sam_modules(hq)
    if isinstance(arch, str):
        if arch not in SAM_ARCHS:
            raise ValueError(f"SAM arch must be one of {sorted(SAM_ARCHS)} or a dict, got {arch!r}")
        return pkg.sam_model_registry[arch](checkpoint=None).eval()
    from functools import partial
    a = dict(arch)
    img, dim, patch = a["img_size"], a["prompt_dim"], a.get("patch_size", 16)
    dec_kw = {"vit_dim": a["embed_dim"]} if hq else {}
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=a["depth"], embed_dim=a["embed_dim"], img_size=img, mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=a["num_heads"], patch_size=patch,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=tuple(a["global_attn_indexes"]),
            window_size=a["window_size"], out_chans=dim),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(img // patch, img // patch),
                                     input_image_size=(img, img), mask_in_chans=16),
        mask_decoder=Decoder(num_multimask_outputs=3,
                             transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=a["mlp_dim"],
                                                           num_heads=a["decoder_heads"]),
                             transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=dim, **dec_kw),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    return sam.eval()


def load_weights(model: nn.Module, path: str | Path, key: str | None = None,
                 allow_unexpected: Sequence[str] = ()) -> dict[str, list[str]]:
    """Load ``path`` with ``torch.load(weights_only=True)`` (``key``: the state dict's entry, e.g.
    ``"model"``; a leading ``module.`` is stripped as the package's ``clean_state_dict`` does).

    Raises :class:`CheckpointError` when a weight of the model is missing or has another shape, or when
    the file has a key that is not the model's and does not end with one of ``allow_unexpected``
    (old transformers saved BERT's ``position_ids`` buffer, which newer ones no longer keep).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:       # pickle errors, truncated files: name the file
        raise CheckpointError(f"{path}: cannot be read as a weights-only checkpoint ({e})") from None
    if key is not None:
        if not isinstance(state, Mapping) or key not in state:
            raise CheckpointError(f"{path}: no {key!r} entry (is this the right checkpoint?)")
        state = state[key]
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and not k.endswith(tuple(allow_unexpected))]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        def few(xs):
            return ", ".join(xs[:4]) + (f" (+{len(xs) - 4} more)" if len(xs) > 4 else "")
        parts = [f"{n} {few(xs)}" for n, xs in (("missing", missing), ("unexpected", unexpected),
                                                 ("shape mismatch", shapes)) if xs]
        raise CheckpointError(f"{path}: does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    return {"missing": missing, "unexpected": unexpected}


# --------------------------------------------------------------------------- which files

def read_manifest(folder: str | Path | None = None) -> dict[str, Any]:
    """The checkpoint manifest of ``folder`` (its ``gsam_checkpoints.json``, e.g. random checkpoints), else
    the official one shipped in ``data/gsam/checkpoints.json``."""
    local = Path(folder) / LOCAL_MANIFEST if folder is not None else None
    path = local if local is not None and local.is_file() else MANIFEST
    return json.loads(path.read_text())


def fetch_checkpoints(folder: str | Path, segmenter: str = "sam_hq", progress: bool = True) -> dict[str, Any]:
    """The detector's and the segmenter's checkpoint in ``folder``, downloaded when absent, sha256-verified.

    Returns ``{"detector": entry, "segmenter": entry, "random": bool}``, each entry the manifest's plus
    ``path`` (absolute) and the verified ``sha256``. A file whose hash differs from the manifest stops the
    run, naming it (a corrupt download is discarded by :func:`reprolib.io.download`).
    """
    if segmenter not in ("sam", "sam_hq"):
        raise ValueError(f"segmenter must be 'sam' or 'sam_hq', got {segmenter!r}")
    folder = Path(folder)
    man = read_manifest(folder)
    out: dict[str, Any] = {"random": bool(man.get("random", False))}
    for role, name in (("detector", "groundingdino"), ("segmenter", segmenter)):
        if name not in man:
            raise FileNotFoundError(f"{folder / LOCAL_MANIFEST}: no {name!r} checkpoint listed")
        entry = dict(man[name])
        path = folder / entry["file"]
        if not entry.get("sha256"):
            raise ValueError(f"{MANIFEST}: no sha256 for {entry['file']}; add the published one before downloading")
        if not path.is_file() and entry.get("urls"):
            errors = []
            for url in entry["urls"]:
                try:
                    download(url, path, entry["sha256"], progress=progress)
                    break
                except OSError as e:
                    errors.append(str(e))
            else:
                raise OSError(f"{entry['file']}: every download failed ({'; '.join(errors)}); put the file in "
                              f"{folder} by hand (sha256 {entry['sha256']})")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found")
        verify_sha256(path, entry["sha256"])
        entry["path"] = str(path.resolve())
        for k in ("config", "text_encoder"):
            if entry.get(k):
                entry[k] = str((folder / entry[k]).resolve())
        out[role] = entry
    return out


# --------------------------------------------------------------------------- random checkpoints

SMALL_DINO = {"enc_layers": 1, "dec_layers": 2, "dim_feedforward": 64, "num_queries": 20}  # d_model stays 256 (hard-wired in its text position encoding)
SMALL_SAM = {"embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": [1], "img_size": 256,
             "prompt_dim": 32, "window_size": 4, "mlp_dim": 64, "decoder_heads": 2}
SMALL_BERT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
FULL_BERT = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
# Token ids that GroundingDINO's transformers port hard-codes (bert-base-uncased's [CLS], [SEP], ".", "?"; the
# package looks them up in the tokenizer): the made-up vocabulary keeps bert-base-uncased's ids for them.
BERT_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ",": 1010, ".": 1012, "?": 1029}


def bert_vocabulary(words: Sequence[str], size: int | None = None) -> list[str]:
    """A WordPiece vocabulary: ``[unusedN]`` fillers with bert-base-uncased's ids for the special tokens and
    punctuation (:data:`BERT_IDS`), then the lower-cased words of ``words``; padded to ``size`` entries."""
    vocab = [f"[unused{i}]" for i in range(max(BERT_IDS.values()) + 1)]
    for tok, i in BERT_IDS.items():
        vocab[i] = tok
    vocab += sorted({w.lower() for text in words for w in text.replace("-", " ").split()} - set(vocab))
    if size is not None:
        if len(vocab) > size:
            raise ValueError(f"{len(vocab)} tokens do not fit a vocabulary of {size}")
        vocab += [f"[unused{i}]" for i in range(len(vocab), size)]
    return vocab


def write_bert(folder: str | Path, words: Sequence[str], size: str = "small", seed: int = 0) -> Path:
    """A random BERT with a made-up vocabulary (:func:`bert_vocabulary`; bert-base-uncased's 30,522 entries
    for ``size="full"``), saved as a folder that ``BertModel.from_pretrained`` / ``AutoTokenizer.from_pretrained``
    read offline."""
    from transformers import BertConfig, BertModel, BertTokenizer
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = bert_vocabulary(words, 30522 if size == "full" else None)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    dims = FULL_BERT if size == "full" else SMALL_BERT
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        BertModel(BertConfig(vocab_size=len(vocab), max_position_embeddings=512, **dims)).save_pretrained(folder)
    return folder


def _dino_config_text(overrides: Mapping[str, Any]) -> str:
    base = _config_path(None).read_text()
    lines = [f"{k} = {v!r}" for k, v in overrides.items()]
    return base.rstrip() + "\n\n# small random variant (reprolib.gsam_official.write_random_checkpoints)\n" + "\n".join(lines) + "\n"


def write_random_checkpoints(folder: str | Path, size: str = "small", segmenters: Sequence[str] = ("sam_hq",),
                             vocabulary: Sequence[str] | None = None, seed: int = 0) -> dict[str, Any]:
    """Random-weight checkpoints in the official files' format, and a ``gsam_checkpoints.json`` listing them.

    ``size="full"``: ``groundingdino_swint_ogc.pth`` of the package's Swin-T OGC config (BERT-base sized
    text encoder) and ``sam_hq_vit_h.pth`` / ``sam_vit_h_4b8939.pth`` of ViT-H — the official shapes
    (about 0.7 and 2.5 GB each), for a paper-size smoke run. ``size="small"``: the same Swin-T backbone with
    a one-layer transformer and a small BERT, and a 2-block ViT at 256 px (a few MB besides Swin-T's
    110 MB), for tests. The GroundingDINO file is ``{"model": state_dict}`` as IDEA's; the SAM files are
    bare state dicts as Meta's and SysCV's. The text encoder (``bert/``, made-up vocabulary of
    ``vocabulary``; default the miniature world's nouns) and, for ``small``, the config file are written
    beside them, so :func:`load_official` needs nothing from the network.
    """
    if size not in ("small", "full"):
        raise ValueError(f"size must be 'small' or 'full', got {size!r}")
    bad = [s for s in segmenters if s not in ("sam", "sam_hq")]
    if bad:
        raise ValueError(f"segmenters must be 'sam' or 'sam_hq', got {bad}")
    if vocabulary is None:
        from .miniworld import CATEGORIES
        vocabulary = CATEGORIES
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    official = read_manifest(None)
    bert = write_bert(folder / "bert", vocabulary, size, seed)
    config = None
    if size == "small":
        config = "GroundingDINO_SwinT_OGC_small.py"
        (folder / config).write_text(_dino_config_text(SMALL_DINO))
    manifest: dict[str, Any] = {"random": True, "size": size, "seed": seed,
                                "source": "random weights written by reprolib.gsam_official.write_random_checkpoints"}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        dino = build_groundingdino(folder / config if config else None, text_encoder=str(bert))
        state = {"model": dino.state_dict()}
        name = official["groundingdino"]["file"]
        atomic_save(folder / name, lambda p: torch.save(state, p))
        manifest["groundingdino"] = {"file": name, "sha256": sha256_file(folder / name), "config": config,
                                     "text_encoder": "bert"}
        del dino, state
        for seg in segmenters:
            arch = "vit_h" if size == "full" else dict(SMALL_SAM)
            sam = build_sam(seg == "sam_hq", arch)
            name = official[seg]["file"]
            sd = sam.state_dict()
            atomic_save(folder / name, lambda p: torch.save(sd, p))
            manifest[seg] = {"file": name, "sha256": sha256_file(folder / name), "arch": arch}
            del sam, sd
    atomic_write_json(folder / LOCAL_MANIFEST, manifest)
    return manifest


# --------------------------------------------------------------------------- the backend

def cxcywh_to_xyxy_pixels(boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """GroundingDINO's normalised (cx, cy, w, h) → pixel (x0, y0, x1, y1), in the original's order of
    operations (scale by W, H; subtract half the size; add the size), so the floats match it bit for bit."""
    b = boxes.clone() * torch.tensor([width, height, width, height], dtype=boxes.dtype)
    b[:, :2] -= b[:, 2:] / 2
    b[:, 2:] += b[:, :2]
    return b


@dataclass
class OfficialGroundedSAM:
    """GroundingDINO (``groundingdino-py``) + ``SamPredictor`` (``segment-anything-hq`` / ``segment-anything``).

    One image at a time through the detector, as the original (``batch_size`` of :func:`reprolib.gsam.annotate`
    then only sets how many images are read per chunk). ``identity``: what made the masks (for provenance).
    """
    detector: Any
    predictor: Any
    hq: bool = True
    device: str = "cpu"
    box_threshold: float = 0.25
    text_threshold: float = 0.25
    max_boxes: int = 64
    resize: tuple[int, int] = (800, 1333)       # RandomResize([800], max_size=1333) of the original
    identity: dict[str, Any] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=lambda: {"detect_images": 0, "segment_images": 0, "sam_calls": 0})

    def __post_init__(self):
        if self.max_boxes < 1:
            raise ValueError(f"max_boxes (data.sam_max_boxes) must be >= 1, got {self.max_boxes}")

    def _transform(self):
        import groundingdino.datasets.transforms as T
        return T.Compose([T.RandomResize([self.resize[0]], max_size=self.resize[1]), T.ToTensor(),
                          T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    @torch.no_grad()
    def detect_logits(self, image: Image.Image, prompt: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Sigmoid token logits (queries, max_text_len) and normalised cxcywh boxes of one image, and the
        tokenised caption — the model's raw output, before any threshold."""
        caption = prompt.lower().strip()
        caption = caption if caption.endswith(".") else caption + "."
        pixels, _ = self._transform()(image, None)
        out = self.detector(pixels[None].to(self.device), captions=[caption])
        return (out["pred_logits"].float().cpu().sigmoid()[0], out["pred_boxes"].float().cpu()[0],
                self.detector.tokenizer(caption))

    def detect(self, images: Sequence[Image.Image], prompts: Sequence[str]):
        """Boxes above the box threshold, named by tokens above the text threshold (see module docstring)."""
        from groundingdino.util.utils import get_phrases_from_posmap
        from .gsam import Detections
        out = []
        for image, prompt in zip(images, prompts):
            self.calls["detect_images"] += 1
            logits, boxes, tokenized = self.detect_logits(image, prompt)
            keep = logits.max(dim=1)[0] > self.box_threshold
            logits, boxes = logits[keep], boxes[keep]
            phrases = [get_phrases_from_posmap(lg > self.text_threshold, tokenized, self.detector.tokenizer)
                       for lg in logits]
            out.append(Detections(cxcywh_to_xyxy_pixels(boxes, image.width, image.height),
                                  logits.max(dim=1)[0], phrases))
        return out

    @torch.no_grad()
    def segment(self, images: Sequence[Image.Image], boxes: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """Bool masks (n, H, W), one per pixel box, from ``predict_torch(multimask_output=False)``, at most
        ``max_boxes`` boxes per call."""
        out = []
        for image, b in zip(images, boxes):
            if not len(b):
                out.append(np.zeros((0, image.height, image.width), dtype=bool))
                continue
            self.calls["segment_images"] += 1
            arr = np.asarray(image.convert("RGB"))
            self.predictor.set_image(arr)
            tb = self.predictor.transform.apply_boxes_torch(b.float().cpu(), arr.shape[:2])
            parts = []
            for start in range(0, len(tb), self.max_boxes):
                self.calls["sam_calls"] += 1
                masks, _, _ = self.predictor.predict_torch(point_coords=None, point_labels=None,
                                                           boxes=tb[start:start + self.max_boxes].to(self.device),
                                                           multimask_output=False)
                parts.append(masks[:, 0].cpu().numpy())
            self.predictor.reset_image()
            out.append(np.concatenate(parts).astype(bool))
        return out

    def masks_for(self, images: Sequence[Image.Image], noun_lists: Sequence[Sequence[str]]) -> list[dict[str, np.ndarray]]:
        """Noun → bool (H, W) mask for each image; nouns without a detection are absent."""
        from .gsam import masks_from
        return masks_from(self, images, noun_lists)


def load_official(checkpoints: str | Path, segmenter: str = "sam_hq", device: str = "cpu",
                  box_threshold: float = 0.25, text_threshold: float = 0.25, max_boxes: int = 64,
                  resize: tuple[int, int] | None = None, vocabulary: Sequence[str] | None = None,
                  seed: int = 0, progress: bool = True) -> OfficialGroundedSAM:
    """The official backend from a checkpoint folder (downloaded into it when absent, sha256-verified), or
    ``"tiny"``: small random checkpoints written to a temporary folder and loaded through the same path.

    ``resize`` (shortest side, longest side) defaults to the original's (800, 1333); ``"tiny"`` uses
    (128, 128).
    """
    require_packages()
    if checkpoints == "tiny":
        import tempfile
        with tempfile.TemporaryDirectory(prefix="gsam_tiny_") as tmp:
            write_random_checkpoints(tmp, "small", (segmenter,), vocabulary, seed)
            model = load_official(tmp, segmenter, device, box_threshold, text_threshold, max_boxes,
                                  resize or (128, 128), progress=False)
        model.identity["checkpoints"] = f"tiny (small random weights of seed {seed}, written and loaded in a temporary folder)"
        for role in ("detector", "segmenter"):     # torch.save stamps a random id into each file: the seed identifies them
            model.identity[role]["sha256"] = None
        model.identity["text_encoder"] = "small random BERT, made-up vocabulary"
        return model
    ck = fetch_checkpoints(checkpoints, segmenter, progress=progress)
    det, seg = ck["detector"], ck["segmenter"]
    detector = build_groundingdino(det.get("config"), det.get("text_encoder"))
    load_weights(detector, det["path"], key="model", allow_unexpected=("embeddings.position_ids",))
    sam = build_sam(segmenter == "sam_hq", seg.get("arch", "vit_h"))
    load_weights(sam, seg["path"])
    pkg = _sam_modules(segmenter == "sam_hq")[0]
    predictor = pkg.SamPredictor(sam.to(device))
    identity = {"backend": "official", "packages": package_versions(PACKAGES), "random_weights": ck["random"],
                "checkpoints": str(Path(checkpoints)),
                "detector": {"file": Path(det["path"]).name, "sha256": det["sha256"]},
                "segmenter": {"file": Path(seg["path"]).name, "sha256": seg["sha256"], "kind": segmenter},
                "text_encoder": det.get("text_encoder") or "bert-base-uncased (Hugging Face hub)"}
    return OfficialGroundedSAM(detector.to(device), predictor, hq=segmenter == "sam_hq", device=device,
                               box_threshold=box_threshold, text_threshold=text_threshold, max_boxes=max_boxes,
                               resize=tuple(resize or (800, 1333)), identity=identity)


# --------------------------------------------------------------------------- the same weights in transformers

_SWIN = "model.backbone.conv_encoder.model.swin."
_DINO_RULES = [  # (regex on the official key, replacement): transformers 5's names; qkv/in_proj are split below
    (r"^bert\.", "model.text_backbone."),
    (r"^backbone\.0\.patch_embed\.proj\.", _SWIN + "embeddings.patch_embeddings.projection."),
    (r"^backbone\.0\.patch_embed\.norm\.", _SWIN + "embeddings.norm."),
    (r"^backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.norm1\.", _SWIN + r"encoder.layers.\1.blocks.\2.layernorm_before."),
    (r"^backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.norm2\.", _SWIN + r"encoder.layers.\1.blocks.\2.layernorm_after."),
    (r"^backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.attn\.proj\.", _SWIN + r"encoder.layers.\1.blocks.\2.attention.o_proj."),
    (r"^backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table",
     _SWIN + r"encoder.layers.\1.blocks.\2.attention.relative_position_bias.relative_position_bias_table"),
    (r"^backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.", _SWIN + r"encoder.layers.\1.blocks.\2.attention.qkv."),
    (r"^backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.mlp\.", _SWIN + r"encoder.layers.\1.blocks.\2.mlp."),
    (r"^backbone\.0\.layers\.(\d+)\.downsample\.", _SWIN + r"encoder.layers.\1.downsample."),
    (r"^backbone\.0\.norm(\d)\.", lambda m: f"model.backbone.conv_encoder.model.hidden_states_norms.stage{int(m[1]) + 1}."),
    (r"^transformer\.encoder\.layers\.(\d+)\.self_attn\.", r"model.encoder.layers.\1.deformable_layer.self_attn."),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm1\.", r"model.encoder.layers.\1.deformable_layer.self_attn_layer_norm."),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm2\.", r"model.encoder.layers.\1.deformable_layer.final_layer_norm."),
    (r"^transformer\.encoder\.layers\.(\d+)\.linear(\d)\.", r"model.encoder.layers.\1.deformable_layer.fc\2."),
    (r"^transformer\.encoder\.text_layers\.(\d+)\.self_attn\.", r"model.encoder.layers.\1.text_enhancer_layer.self_attn."),
    (r"^transformer\.encoder\.text_layers\.(\d+)\.norm1\.", r"model.encoder.layers.\1.text_enhancer_layer.layer_norm_before."),
    (r"^transformer\.encoder\.text_layers\.(\d+)\.norm2\.", r"model.encoder.layers.\1.text_enhancer_layer.layer_norm_after."),
    (r"^transformer\.encoder\.text_layers\.(\d+)\.linear(\d)\.", r"model.encoder.layers.\1.text_enhancer_layer.fc\2."),
    (r"^transformer\.encoder\.fusion_layers\.(\d+)\.gamma_v$", r"model.encoder.layers.\1.fusion_layer.vision_param"),
    (r"^transformer\.encoder\.fusion_layers\.(\d+)\.gamma_l$", r"model.encoder.layers.\1.fusion_layer.text_param"),
    (r"^transformer\.encoder\.fusion_layers\.(\d+)\.layer_norm_v\.", r"model.encoder.layers.\1.fusion_layer.layer_norm_vision."),
    (r"^transformer\.encoder\.fusion_layers\.(\d+)\.layer_norm_l\.", r"model.encoder.layers.\1.fusion_layer.layer_norm_text."),
    (r"^transformer\.encoder\.fusion_layers\.(\d+)\.attn\.(out_)?(values_)?v_proj\.",
     r"model.encoder.layers.\1.fusion_layer.attn.\2\3vision_proj."),
    (r"^transformer\.encoder\.fusion_layers\.(\d+)\.attn\.(out_)?(values_)?l_proj\.",
     r"model.encoder.layers.\1.fusion_layer.attn.\2\3text_proj."),
    (r"^transformer\.decoder\.layers\.(\d+)\.cross_attn\.", r"model.decoder.layers.\1.encoder_attn."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm1\.", r"model.decoder.layers.\1.encoder_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.ca_text\.", r"model.decoder.layers.\1.encoder_attn_text."),
    (r"^transformer\.decoder\.layers\.(\d+)\.catext_norm\.", r"model.decoder.layers.\1.encoder_attn_text_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm2\.", r"model.decoder.layers.\1.self_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm3\.", r"model.decoder.layers.\1.final_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.linear(\d)\.", r"model.decoder.layers.\1.fc\2."),
    (r"^transformer\.decoder\.layers\.(\d+)\.self_attn\.", r"model.decoder.layers.\1.self_attn."),
    (r"^transformer\.decoder\.ref_point_head\.", "model.decoder.reference_points_head."),
    (r"^transformer\.decoder\.bbox_embed\.", "model.decoder.bbox_embed."),
    (r"^transformer\.decoder\.norm\.", "model.decoder.layer_norm."),
    (r"^transformer\.enc_out_bbox_embed\.", "model.encoder_output_bbox_embed."),
    (r"^transformer\.enc_output", "model.enc_output"),
    (r"^transformer\.level_embed$", "model.level_embed"),
    (r"^transformer\.tgt_embed\.", "model.query_position_embeddings."),
    (r"^input_proj\.", "model.input_proj_vision."),
    (r"^feat_map\.", "model.text_projection."),
    (r"^bbox_embed\.", "bbox_embed."),
]
_DROP = re.compile(r"(relative_position_index|embeddings\.position_ids)$")


def _rename(key: str, rules) -> str | None:
    for pat, rep in rules:
        new, n = re.subn(pat, rep, key)
        if n:
            return new
    return None


def _split_fused(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fused q/k/v (Swin's ``attn.qkv``, ``nn.MultiheadAttention``'s ``in_proj_*``) → separate projections."""
    out = {}
    for k, v in state.items():
        m = re.match(r"(.*)\.(qkv\.(weight|bias)|in_proj_(weight|bias))$", k)
        if m is None:
            out[k] = v
            continue
        kind = m[3] or m[4]
        names = ("q_proj", "k_proj", "v_proj") if ".attention.qkv" in k else ("query", "key", "value")
        for name, part in zip(names, v.chunk(3, dim=0)):
            out[f"{m[1]}.{name}.{kind}"] = part.clone()
    return out


def groundingdino_to_transformers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official GroundingDINO state dict (``checkpoint["model"]``) under transformers 5's names, as
    ``convert_grounding_dino_to_hf.py`` does for older ones."""
    renamed = {}
    for k, v in state.items():
        k = k[7:] if k.startswith("module.") else k
        if _DROP.search(k):
            continue
        new = _rename(k, _DINO_RULES)
        if new is None:
            raise CheckpointError(f"groundingdino_to_transformers: no rule for {k}")
        renamed[new] = v
    return _split_fused(renamed)


_SAM_RULES = [  # applied in order to every key (several may apply), as convert_sam(hq)_to_hf.py
    (r"^image_encoder\.", "vision_encoder."),
    (r"\.blocks\.", ".layers."),
    (r"patch_embed\.proj\.", "patch_embed.projection."),
    (r"\.norm", ".layer_norm"),
    (r"neck\.0\.", "neck.conv1."), (r"neck\.1\.", "neck.layer_norm1."),
    (r"neck\.2\.", "neck.conv2."), (r"neck\.3\.", "neck.layer_norm2."),
    (r"mask_downscaling\.0\.", "mask_embed.conv1."), (r"mask_downscaling\.1\.", "mask_embed.layer_norm1."),
    (r"mask_downscaling\.3\.", "mask_embed.conv2."), (r"mask_downscaling\.4\.", "mask_embed.layer_norm2."),
    (r"mask_downscaling\.6\.", "mask_embed.conv3."),
    (r"point_embeddings", "point_embed"),
    (r"pe_layer\.positional_encoding_gaussian_matrix", "shared_embedding.positional_embedding"),
    (r"output_upscaling\.0\.", "upscale_conv1."), (r"output_upscaling\.1\.", "upscale_layer_norm."),
    (r"output_upscaling\.3\.", "upscale_conv2."),
    (r"(iou_prediction_head|output_hypernetworks_mlps\.\d+|hf_mlp)\.layers\.0\.", r"\1.proj_in."),
    (r"(iou_prediction_head|output_hypernetworks_mlps\.\d+|hf_mlp)\.layers\.1\.", r"\1.layers.0."),
    (r"(iou_prediction_head|output_hypernetworks_mlps\.\d+|hf_mlp)\.layers\.2\.", r"\1.proj_out."),
    (r"hf_token", "hq_token"), (r"hf_mlp", "hq_mask_mlp"),
    (r"compress_vit_feat\.0\.", "compress_vit_conv1."), (r"compress_vit_feat\.1\.", "compress_vit_norm."),
    (r"compress_vit_feat\.3\.", "compress_vit_conv2."),
    (r"embedding_encoder\.0\.", "encoder_conv1."), (r"embedding_encoder\.1\.", "encoder_norm."),
    (r"embedding_encoder\.3\.", "encoder_conv2."),
    (r"embedding_maskfeature\.0\.", "mask_conv1."), (r"embedding_maskfeature\.1\.", "mask_norm."),
    (r"embedding_maskfeature\.3\.", "mask_conv2."),
]


def sam_to_transformers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A SAM / SAM-HQ state dict under transformers' ``SamModel`` / ``SamHQModel`` names (as
    ``convert_sam_to_hf.py`` / ``convert_samhq_to_hf.py``)."""
    out = {}
    for k, v in state.items():
        if k in ("pixel_mean", "pixel_std"):
            continue
        for pat, rep in _SAM_RULES:
            k = re.sub(pat, rep, k)
        out[k] = v
    out["shared_image_embedding.positional_embedding"] = out["prompt_encoder.shared_embedding.positional_embedding"]
    return out


def transformers_twin(checkpoints: str | Path, segmenter: str = "sam_hq", device: str = "cpu",
                      box_threshold: float = 0.25, text_threshold: float = 0.25, max_boxes: int = 64,
                      resize: tuple[int, int] = (800, 1333)):
    """The transformers backend (:class:`reprolib.gsam.GroundedSAM`) holding the very weights of a folder of
    official checkpoints, converted by :func:`groundingdino_to_transformers` / :func:`sam_to_transformers`;
    architectures follow the folder's GroundingDINO config and SAM ``arch``. For measuring how far the two
    backends are apart on the same weights (``benchmarks/gsam_parity.py``, ``tests/test_gsam.py``)."""
    from transformers import (AutoTokenizer, BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor, SamImageProcessor, SwinConfig)
    from groundingdino.util.slconfig import SLConfig
    from .gsam import GroundedSAM
    ck = fetch_checkpoints(checkpoints, segmenter, progress=False)
    det, seg = ck["detector"], ck["segmenter"]
    a = SLConfig.fromfile(str(_config_path(det.get("config"))))
    if a.backbone != "swin_T_224_1k":
        raise ValueError(f"transformers_twin: only the Swin-T backbone is mapped, not {a.backbone}")
    text = det.get("text_encoder") or a.text_encoder_type
    cfg = GroundingDinoConfig(
        backbone_config=SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                                   image_size=224, out_indices=[2, 3, 4]),
        text_config=BertConfig.from_pretrained(text), d_model=a.hidden_dim, encoder_layers=a.enc_layers,
        decoder_layers=a.dec_layers, encoder_ffn_dim=a.dim_feedforward, decoder_ffn_dim=a.dim_feedforward,
        num_queries=a.num_queries, max_text_len=a.max_text_len, encoder_attention_heads=a.nheads,
        decoder_attention_heads=a.nheads, num_feature_levels=a.num_feature_levels,
        encoder_n_points=a.enc_n_points, decoder_n_points=a.dec_n_points)
    dino = GroundingDinoForObjectDetection(cfg).eval()
    state = torch.load(det["path"], map_location="cpu", weights_only=True)["model"]
    res = dino.load_state_dict(groundingdino_to_transformers(state), strict=False)
    # transformers' Swin keeps a final LayerNorm that its backbone output never uses; its text backbone has no pooler
    if [k for k in res.missing_keys if ".swin.layernorm." not in k] or \
            [k for k in res.unexpected_keys if ".text_backbone.pooler." not in k]:
        raise CheckpointError(f"transformers_twin: {det['path']}: missing {res.missing_keys}, "
                              f"unexpected {res.unexpected_keys}")
    dproc = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(
        size={"shortest_edge": resize[0], "longest_edge": resize[1]}), tokenizer=AutoTokenizer.from_pretrained(text))
    hq = segmenter == "sam_hq"
    if hq:
        from transformers import (SamHQConfig as Cfg, SamHQMaskDecoderConfig as Dec, SamHQModel as Model,
                                  SamHQProcessor as Proc, SamHQPromptEncoderConfig as Prompt, SamHQVisionConfig as Vis)
    else:
        from transformers import (SamConfig as Cfg, SamMaskDecoderConfig as Dec, SamModel as Model,
                                  SamProcessor as Proc, SamPromptEncoderConfig as Prompt, SamVisionConfig as Vis)
    arch = seg.get("arch", "vit_h")
    if isinstance(arch, str):
        dim, depth, heads, glob = SAM_ARCHS[arch]
        arch = {"embed_dim": dim, "depth": depth, "num_heads": heads, "global_attn_indexes": list(glob),
                "img_size": 1024, "prompt_dim": 256, "window_size": 14, "mlp_dim": 2048, "decoder_heads": 8}
    patch = arch.get("patch_size", 16)
    scfg = Cfg(vision_config=Vis(hidden_size=arch["embed_dim"], output_channels=arch["prompt_dim"],
                                 num_hidden_layers=arch["depth"], num_attention_heads=arch["num_heads"],
                                 image_size=arch["img_size"], patch_size=patch, window_size=arch["window_size"],
                                 global_attn_indexes=list(arch["global_attn_indexes"]),
                                 num_pos_feats=arch["prompt_dim"] // 2, mlp_dim=4 * arch["embed_dim"]),
               prompt_encoder_config=Prompt(hidden_size=arch["prompt_dim"], image_size=arch["img_size"], patch_size=patch),
               mask_decoder_config=Dec(hidden_size=arch["prompt_dim"], mlp_dim=arch["mlp_dim"], num_hidden_layers=2,
                                       num_attention_heads=arch["decoder_heads"], iou_head_hidden_dim=arch["prompt_dim"],
                                       **({"vit_dim": arch["embed_dim"]} if hq else {})))
    sam = Model(scfg).eval()
    sam.load_state_dict(sam_to_transformers(torch.load(seg["path"], map_location="cpu", weights_only=True)), strict=True)
    side = arch["img_size"]
    sproc = Proc(image_processor=SamImageProcessor(size={"longest_edge": side}, pad_size={"height": side, "width": side}))
    return GroundedSAM(dino.to(device), dproc, sam.to(device), sproc, device=device, box_threshold=box_threshold,
                       text_threshold=text_threshold, max_boxes=max_boxes,
                       identity={"backend": "transformers", "converted_from": str(checkpoints)})
