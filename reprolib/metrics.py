"""PIE-Bench metrics, computed as cure-lab/PnPInversion's ``evaluation/evaluate.py`` computes them.

==========================================  ============================================================  ========
column (the official metric name)           what                                                          paper
==========================================  ============================================================  ========
structure_distance                          MSE of DINO ViT-B/8 last-block key self-similarities          ×10³
psnr_unedit_part                            PSNR of the images × (1 − mask), data range 1                 —
lpips_unedit_part                           LPIPS (SqueezeNet) of the images × (1 − mask), [-1, 1]        ×10³
mse_unedit_part                             MSE of the images × (1 − mask)                                ×10⁴
ssim_unedit_part                            SSIM of the images × (1 − mask), data range 1                 ×10²
clip_similarity_source_image                CLIPScore(source image, source prompt)                        —
clip_similarity_target_image                CLIPScore(edited image, editing prompt)  ("Whole")            —
clip_similarity_target_image_edit_part      CLIPScore(edited image × mask, editing prompt) ("Edited")     —
==========================================  ============================================================  ========

Quirks of the original that are kept (each is documented where it happens):

* background metrics multiply both images by ``1 − mask`` and then average over the **full frame**
  (masked pixels count as equal zeros), so they are not means over the background alone;
* the decoded mask has its 1-pixel frame forced to 1 (:func:`reprolib.piebench.mask_decode`), so
  the frame is excluded from background metrics and kept in the "edited part" CLIP image;
* a background metric is NaN when the mask covers the whole frame (style edits), and
  :func:`summarise` skips NaN when averaging;
* structure distance feeds **0–255** pixels to ``Normalize(ImageNet mean, std)`` (the DINO inputs
  are ~255× larger than DINO was trained on), after a bilinear ``Resize(224, max_size=480)`` on a
  tensor *without* antialiasing (torchvision 0.13.1 of the official environment);
* CLIP images go through the PIL-based CLIP image processor (bicubic), as transformers 4.x did.

Models: the official code loads DINO with ``torch.hub.load('facebookresearch/dino:main', 'dino_vitb8')``
and reads the keys off the fused ``qkv`` projection of block 11. Here DINO is a transformers
``ViTModel`` (hub ``facebook/dino-vitb8`` holds the same weights, converted) and the keys come from a
forward hook on the last layer's key projection, which is the same slice of the same matrix.
CLIP is torchmetrics ``CLIPScore`` (``openai/clip-vit-large-patch14``) given a callable that
returns the model, so a local folder or a tiny random model works too. On the tiny profile all three
networks are small random models built in code (numbers are pipeline checks only).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .io import atomic_save
from .models import ModelLoadError, check_source, clip_tokenizer
from .piebench import EDIT_TYPES, PieRecord

DINO_ID = "facebook/dino-vitb8"
CLIP_ID = "openai/clip-vit-large-patch14"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: LayerNorm epsilon of facebookresearch/dino's ViT; HF's converted config keeps ViTConfig's 1e-12.
DINO_LAYER_NORM_EPS = 1e-6

BACKGROUND_METRICS = ("psnr_unedit_part", "lpips_unedit_part", "mse_unedit_part", "ssim_unedit_part")
CLIP_METRICS = ("clip_similarity_source_image", "clip_similarity_target_image",
                "clip_similarity_target_image_edit_part")
METRICS = ("structure_distance", *BACKGROUND_METRICS, *CLIP_METRICS)

#: Column label and multiplier of each metric in the PnP Inversion / TokenCompose tables.
PAPER_UNITS: dict[str, tuple[str, float]] = {
    "structure_distance": ("Structure distance ×10³", 1e3),
    "psnr_unedit_part": ("PSNR", 1.0),
    "lpips_unedit_part": ("LPIPS ×10³", 1e3),
    "mse_unedit_part": ("MSE ×10⁴", 1e4),
    "ssim_unedit_part": ("SSIM ×10²", 1e2),
    "clip_similarity_source_image": ("CLIP source", 1.0),
    "clip_similarity_target_image": ("CLIP whole", 1.0),
    "clip_similarity_target_image_edit_part": ("CLIP edited", 1.0),
}

#: Tiny random networks (tiny profile and tests): DINO keeps B/8's token layout at 224² (785 tokens).
TINY_VIT = dict(image_size=224, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, qkv_bias=True, layer_norm_eps=DINO_LAYER_NORM_EPS)
TINY_CLIP_TEXT = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, max_position_embeddings=77, bos_token_id=49406,
                      eos_token_id=49407, pad_token_id=49407)
TINY_CLIP_VISION = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=2)
TINY_CLIP_PROJECTION = 16


# --------------------------------------------------------------------------- model loading

@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch's CPU generator inside the block only (random init without touching global state)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _pretrained(cls, source: str, **kw):
    """``cls.from_pretrained`` with the hub's long errors folded into one line naming the source."""
    src = check_source(source)
    try:
        return cls.from_pretrained(src, **kw)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load {cls.__name__} from {source}: {first}") from None


def tiny_dino(seed: int = 0):
    """A small random transformers ViT with DINO ViT-B/8's patching at 224² (for tests and the tiny profile)."""
    from transformers import ViTConfig, ViTModel
    with _seeded(seed):
        return ViTModel(ViTConfig(**TINY_VIT), add_pooling_layer=False).eval()


def load_dino(source: str = DINO_ID, seed: int = 0, layer_norm_eps: float | None = DINO_LAYER_NORM_EPS):
    """DINO as a transformers ``ViTModel`` from a hub id or local folder, or ``"tiny"`` (random, in code).

    `layer_norm_eps` restores DINO's 1e-6 (HF's ``facebook/dino-vitb8`` config says 1e-12, the
    ViTConfig default left by the conversion script); pass None to keep the config's value.
    """
    if source == "tiny":
        return tiny_dino(seed)
    from transformers import ViTModel
    kw: dict[str, Any] = {"add_pooling_layer": False}
    if layer_norm_eps is not None:
        kw["layer_norm_eps"] = layer_norm_eps
    return _pretrained(ViTModel, source, **kw).eval()


def _pil_clip_image_processor_cls():
    """The PIL-backed CLIP image processor (``CLIPImageProcessorPil`` in transformers ≥ 5; the default before)."""
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
        return CLIPImageProcessorPil
    except ImportError:  # transformers 4.x: CLIPImageProcessor is the PIL one
        from transformers import CLIPImageProcessor
        return CLIPImageProcessor


class ClipFeatures(torch.nn.Module):
    """A ``CLIPModel`` whose ``get_*_features`` return tensors, as torchmetrics' CLIPScore expects.

    transformers ≥ 5 returns a model output whose ``pooler_output`` holds the projected embedding;
    torchmetrics 1.9 calls ``.norm`` on the result directly. The embedding is the same one.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(out) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, pixel_values: torch.Tensor, **kw) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(pixel_values=pixel_values, **kw))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          **kw) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask, **kw))


def tiny_clip(seed: int = 0):
    """A small random ``CLIPModel`` and a processor with SD1.4's (= CLIP's) tokenizer and 32² images."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    with _seeded(seed):
        model = CLIPModel(CLIPConfig(text_config=TINY_CLIP_TEXT, vision_config=TINY_CLIP_VISION,
                                     projection_dim=TINY_CLIP_PROJECTION)).eval()
    side = TINY_CLIP_VISION["image_size"]
    image_processor = _pil_clip_image_processor_cls()(size={"shortest_edge": side},
                                                      crop_size={"height": side, "width": side})
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer())


def load_clip(source: str = CLIP_ID, seed: int = 0):
    """``(CLIPModel, CLIPProcessor)`` from a hub id or local folder, or ``"tiny"``; PIL image processing."""
    if source == "tiny":
        return tiny_clip(seed)
    from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer
    model = _pretrained(CLIPModel, source).eval()
    processor = CLIPProcessor(image_processor=_pretrained(_pil_clip_image_processor_cls(), source),
                              tokenizer=_pretrained(CLIPTokenizer, source))
    return model, processor


def clip_score_metric(source: str = CLIP_ID, seed: int = 0):
    """torchmetrics ``CLIPScore`` (100 · max(cos, 0)) over :func:`load_clip`'s model."""
    from torchmetrics.multimodal import CLIPScore

    def build():
        model, processor = load_clip(source, seed)
        return ClipFeatures(model), processor
    return CLIPScore(model_name_or_path=build)


def lpips_net(pretrained_backbone: bool = True, seed: int = 0) -> torch.nn.Module:
    """The SqueezeNet LPIPS network torchmetrics' ``LearnedPerceptualImagePatchSimilarity('squeeze')`` wraps.

    The linear heads always come from torchmetrics' shipped LPIPS weights; the backbone is torchvision's
    ImageNet SqueezeNet 1.1 (downloaded once into the torch hub cache), or random when
    `pretrained_backbone` is False (tiny profile: no download).
    """
    from torchmetrics.functional.image.lpips import _NoTrainLpips
    with _seeded(seed):
        return _NoTrainLpips(net="squeeze", pnet_rand=not pretrained_backbone).eval()


# --------------------------------------------------------------------------- structure distance

def _last_key_projection(model) -> torch.nn.Module:
    """The last ViT layer's key projection (transformers ≥ 5 ``layers[-1].attention.k_proj``, else 4.x names)."""
    layers = getattr(model, "layers", None)
    if layers is not None and hasattr(layers[-1].attention, "k_proj"):
        return layers[-1].attention.k_proj
    encoder = getattr(model, "encoder", None)
    if encoder is not None:
        return encoder.layer[-1].attention.attention.key
    raise ModelLoadError(f"cannot find the last attention key projection in {type(model).__name__}")


def dino_preprocess(img: torch.Tensor, size: int = 224, max_size: int = 480, antialias: bool = False) -> torch.Tensor:
    """The official ``global_transform`` on a (3, H, W) float tensor of **0–255** pixels.

    ``Resize(size, max_size)`` (bilinear, shorter side to `size`) then ImageNet ``Normalize`` — on
    unscaled pixels, the official quirk. `antialias=False` is what torchvision 0.13.1 did to tensors;
    True is the modern default.
    """
    from torchvision.transforms import functional as TF
    x = TF.resize(img, [size], max_size=max_size, antialias=antialias)
    return TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)


def dino_keys(model, x: torch.Tensor) -> torch.Tensor:
    """Last-block keys of a preprocessed (1, 3, H, W) batch as (tokens, heads·head_dim), CLS token first.

    The official extractor reshapes the fused qkv output to (heads, tokens, head_dim), takes the keys
    and concatenates heads back per token; that equals the key projection's output row by row.
    """
    captured: list[torch.Tensor] = []
    handle = _last_key_projection(model).register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        model(pixel_values=x)
    finally:
        handle.remove()
    if not captured:
        raise ModelLoadError("the key projection hook did not fire")
    return captured[-1][0]


def cosine_self_similarity(keys: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(T, T) cosine similarities of the rows of `keys`, denominators clamped at `eps` (``attn_cosine_sim``)."""
    norm = keys.norm(dim=-1, keepdim=True)
    return (keys @ keys.T) / torch.clamp(norm @ norm.T, min=eps)


@torch.no_grad()
def keys_self_similarity(model, img: np.ndarray, device: str | torch.device = "cpu", size: int = 224,
                         max_size: int = 480, antialias: bool = False) -> torch.Tensor:
    """DINO key self-similarity of an (H, W, 3) uint8 image fed as 0–255 floats (official quirk)."""
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1).to(device)
    x = dino_preprocess(x, size=size, max_size=max_size, antialias=antialias)
    return cosine_self_similarity(dino_keys(model, x[None]))


# --------------------------------------------------------------------------- masked pixel metrics

def _as_image(img: Any, name: str) -> np.ndarray:
    """PIL image or (H, W, 3) uint8 array → (H, W, 3) uint8 array; other shapes name the argument."""
    arr = np.asarray(img.convert("RGB")) if hasattr(img, "convert") else np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"{name}: expected an (H, W, 3) uint8 image, got shape {arr.shape} dtype {arr.dtype}")
    return arr


def _masked(img: np.ndarray, keep: np.ndarray) -> torch.Tensor:
    """(1, 3, H, W) float32 tensor of ``img / 255 * keep`` (the official multiplication order)."""
    x = img.astype(np.float32) / 255 * keep.astype(np.float32)[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]


def masked_psnr(src: np.ndarray, edited: np.ndarray, keep: np.ndarray) -> float:
    """PSNR (data range 1) of both images × `keep`, over the full frame; NaN if `keep` is all zero."""
    from torchmetrics.functional.image import peak_signal_noise_ratio
    if keep.sum() == 0:
        return math.nan
    return float(peak_signal_noise_ratio(_masked(src, keep), _masked(edited, keep), data_range=1.0))


def masked_mse(src: np.ndarray, edited: np.ndarray, keep: np.ndarray) -> float:
    """Mean squared error of both images × `keep`, over the full frame (all 3·H·W values); NaN if empty."""
    from torchmetrics.functional import mean_squared_error
    if keep.sum() == 0:
        return math.nan
    return float(mean_squared_error(_masked(src, keep)[0].contiguous(), _masked(edited, keep)[0].contiguous()))


def masked_ssim(src: np.ndarray, edited: np.ndarray, keep: np.ndarray) -> float:
    """SSIM (torchmetrics defaults: Gaussian 11, σ 1.5; data range 1) of both images × `keep`; NaN if empty."""
    from torchmetrics.functional.image import structural_similarity_index_measure
    if keep.sum() == 0:
        return math.nan
    return float(structural_similarity_index_measure(_masked(src, keep), _masked(edited, keep), data_range=1.0))


@torch.no_grad()
def masked_lpips(net: torch.nn.Module, src: np.ndarray, edited: np.ndarray, keep: np.ndarray,
                 device: str | torch.device = "cpu") -> float:
    """LPIPS of both images × `keep`, mapped to [-1, 1] (masked pixels become -1, i.e. black); NaN if empty."""
    from torchmetrics.functional.image.lpips import _lpips_update
    if keep.sum() == 0:
        return math.nan
    a, b = (_masked(x, keep).to(device) * 2 - 1 for x in (src, edited))
    return float(_lpips_update(a, b, net, normalize=False).mean())


def blackout(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``uint8(img * mask)``: keep the edited region, black out the rest (CLIP "edited part")."""
    return np.uint8(img * np.asarray(mask, dtype=np.float64)[:, :, None])


# --------------------------------------------------------------------------- the metric set

@dataclass
class EditMetrics:
    """The loaded networks and settings of the PIE-Bench metrics (build with :meth:`load`)."""
    dino: Any
    clip: Any                               # torchmetrics CLIPScore
    lpips: torch.nn.Module
    device: str = "cpu"
    dino_size: int = 224
    dino_max_size: int = 480
    dino_antialias: bool = False            # False: torchvision 0.13.1 (official); True: modern resize

    @classmethod
    def load(cls, dino: str = DINO_ID, clip: str = CLIP_ID, device: str = "cpu", tiny: bool = False,
             seed: int = 0, dino_antialias: bool = False) -> "EditMetrics":
        """Real networks from hub ids / folders, or (``tiny=True``) small random ones built in code."""
        return cls(dino=load_dino("tiny" if tiny else dino, seed).to(device),
                   clip=clip_score_metric("tiny" if tiny else clip, seed).to(device),
                   lpips=lpips_net(pretrained_backbone=not tiny, seed=seed).to(device),
                   device=device, dino_antialias=dino_antialias)

    @classmethod
    def from_profile(cls, profile, device: str | None = None) -> "EditMetrics":
        """Networks named by ``profile.editing`` (tiny random ones on the tiny profile)."""
        from .config import resolve_device
        return cls.load(profile.editing.dino_id, profile.editing.clip_id,
                        device=device or resolve_device(profile), tiny=profile.is_tiny, seed=profile.seed)

    def structure_distance(self, src: np.ndarray, edited: np.ndarray) -> float:
        """MSE between the DINO key self-similarity matrices of the whole images (no mask, as official)."""
        kw = dict(device=self.device, size=self.dino_size, max_size=self.dino_max_size, antialias=self.dino_antialias)
        a = keys_self_similarity(self.dino, src, **kw)
        b = keys_self_similarity(self.dino, edited, **kw)
        return float(F.mse_loss(b, a))

    @torch.no_grad()
    def clip_similarity(self, img: np.ndarray, prompt: str, mask: np.ndarray | None = None) -> float:
        """CLIPScore of `img` (× `mask` when given) and `prompt`; NaN when `mask` is all zero."""
        if mask is not None:
            if np.asarray(mask).sum() == 0:
                return math.nan
            img = blackout(img, mask)
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).to(self.device)
        self.clip.reset()
        self.clip.update(x, prompt)
        score = float(self.clip.compute())
        self.clip.reset()
        return score


def score_pair(src: Any, edited: Any, mask: np.ndarray, prompt: str, models: EditMetrics,
               source_prompt: str | None = None) -> dict[str, float]:
    """All PIE-Bench metrics of one (source, edited) pair; `mask` is (H, W), 1 = edited region.

    `prompt` is the editing prompt without ``[ ]`` marks; `source_prompt` (optional) adds
    ``clip_similarity_source_image``. Background metrics are NaN when the mask covers everything.
    """
    a, b = _as_image(src, "src"), _as_image(edited, "edited")
    m = np.asarray(mask, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"edited: shape {b.shape} differs from the source's {a.shape}")
    if m.shape != a.shape[:2]:
        raise ValueError(f"mask: shape {m.shape} differs from the images' {a.shape[:2]}")
    keep = 1.0 - m
    out = {
        "structure_distance": models.structure_distance(a, b),
        "psnr_unedit_part": masked_psnr(a, b, keep),
        "lpips_unedit_part": masked_lpips(models.lpips, a, b, keep, models.device),
        "mse_unedit_part": masked_mse(a, b, keep),
        "ssim_unedit_part": masked_ssim(a, b, keep),
    }
    if source_prompt is not None:
        out["clip_similarity_source_image"] = models.clip_similarity(a, source_prompt)
    out["clip_similarity_target_image"] = models.clip_similarity(b, prompt)
    out["clip_similarity_target_image_edit_part"] = models.clip_similarity(b, prompt, m)
    return out


def load_edited(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Read an edited image as (H, W, 3) uint8; a non-square one is cut to its bottom-right `size` (W, H) panel.

    The official editors save ``[instruction | source | … | edited]`` strips and ``evaluate.py``
    crops the last 512×512 panel; here the panel takes the source's size (512² on PIE-Bench). `path` is
    ``<edits>/<image_path>``; an edit saved losslessly (``editing.save_as: png``) is read from the ``.png``
    beside it (a run keeps one of the two: a change of format deletes the other).
    """
    from PIL import Image
    path = Path(path)
    if not path.is_file() and path.with_suffix(".png").is_file():
        path = path.with_suffix(".png")
    if not path.is_file():
        raise FileNotFoundError(f"edited image not found: {path}")
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        if w != h:
            im = im.crop((w - size[0], h - size[1], w, h))
        return np.asarray(im)


def score_records(records: Sequence[PieRecord], edited_root: str | Path, models: EditMetrics,
                  csv_path: str | Path | None = None, source_clip: bool = True,
                  progress: bool = True) -> pd.DataFrame:
    """Score every record's edited image ``<edited_root>/<image_path>`` against its source; one row per image.

    Masks are decoded at the source image's size. The per-image table is written atomically to
    `csv_path` when given.
    """
    from PIL import Image
    edited_root = Path(edited_root)
    rows: list[dict[str, Any]] = []
    for rec in tqdm(records, desc="PIE-Bench metrics", disable=not progress):
        with Image.open(rec.source_path) as im:
            src = np.asarray(im.convert("RGB"))
        edited = load_edited(edited_root / rec.image_path, (src.shape[1], src.shape[0]))
        scores = score_pair(src, edited, rec.mask(src.shape[:2]), rec.target_prompt, models,
                            source_prompt=rec.source_prompt if source_clip else None)
        rows.append({"id": rec.id, "editing_type_id": rec.editing_type_id, "category": rec.category,
                     "image_path": rec.image_path, **scores})
    df = pd.DataFrame(rows, columns=["id", "editing_type_id", "category", "image_path",
                                     *(m for m in METRICS if source_clip or m != "clip_similarity_source_image")])
    if csv_path is not None:
        atomic_save(csv_path, lambda p: df.to_csv(p, index=False))
    return df


def summarise(df: pd.DataFrame, by: str | Sequence[str] | None = None) -> pd.DataFrame:
    """Per-category and overall means in the papers' units (×10³ …); NaN values are left out of each mean.

    Rows are ``"<id> <category>"`` for each editing type present plus ``"all"`` (the mean over all
    images, not over categories); `by` (e.g. a ``checkpoint`` column) adds outer index levels.
    Columns are :data:`PAPER_UNITS` labels for the metrics present, plus ``n`` (images).
    An infinite PSNR (background identical to the source) is kept and makes its means infinite.
    """
    metrics = [m for m in METRICS if m in df.columns]
    if not metrics:
        raise ValueError(f"no metric columns in the table (expected some of {', '.join(METRICS)})")
    if "editing_type_id" not in df.columns:
        raise ValueError("the table has no 'editing_type_id' column")
    outer = [] if by is None else ([by] if isinstance(by, str) else list(by))
    missing = [c for c in outer if c not in df.columns]
    if missing:
        raise ValueError(f"summarise: no column {missing[0]!r} to group by")
    work = df.copy()
    ids = work["editing_type_id"].astype(str)
    work["category"] = ids + " " + ids.map(lambda t: EDIT_TYPES.get(t, f"type {t}"))
    values = work[metrics].apply(pd.to_numeric, errors="coerce")
    values = values.mul(pd.Series({m: PAPER_UNITS[m][1] for m in metrics}))
    values["n"] = 1
    values[outer + ["category"]] = work[outer + ["category"]]

    def table(group: pd.DataFrame) -> pd.DataFrame:
        per = group.groupby("category", sort=True)
        res = per[metrics].mean()
        res["n"] = per["n"].sum()
        overall = group[metrics].mean().to_frame("all").T
        overall["n"] = len(group)
        return pd.concat([res, overall])

    if outer:
        parts = {key if isinstance(key, tuple) else (key,): table(g)
                 for key, g in values.groupby(outer if len(outer) > 1 else outer[0], sort=False)}
        out = pd.concat(parts, names=[*outer, "category"])
    else:
        out = table(values).rename_axis("category")
    out["n"] = out["n"].astype(int)
    return out.rename(columns={m: PAPER_UNITS[m][0] for m in metrics})
