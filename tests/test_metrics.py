"""PIE-Bench metrics: masked pixel metrics vs direct formulas, NaN rules, DINO keys, CLIP formula, tables."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from reprolib import metrics as M
from reprolib import piebench as pb
from reprolib.config import load_profile
from reprolib.models import ModelLoadError

MEAN = np.array(M.IMAGENET_MEAN)
STD = np.array(M.IMAGENET_STD)


@pytest.fixture(scope="module")
def tiny() -> M.EditMetrics:
    em = M.EditMetrics.from_profile(load_profile("tiny"), device="cpu")
    assert em.dino.config.hidden_size == M.TINY_VIT["hidden_size"]
    return em


def _img(seed: int, h: int = 24, w: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- masked pixel metrics

def test_masked_mse_and_psnr_equal_hand_values_on_constant_images():
    src = np.full((10, 10, 3), 100, np.uint8)
    edited = np.full((10, 10, 3), 110, np.uint8)
    mask = np.zeros((10, 10))
    mask[:4, :5] = 1                       # 20 of 100 pixels edited -> 80 % of the frame kept
    mse = 0.8 * (10 / 255) ** 2            # masked pixels are equal zeros, still counted (full frame)
    assert M.masked_mse(src, edited, 1 - mask) == pytest.approx(mse, rel=1e-5)
    assert M.masked_psnr(src, edited, 1 - mask) == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)


def test_masked_mse_and_psnr_equal_direct_formula_on_random_arrays():
    a, b = _img(0), _img(1)
    keep = (np.random.default_rng(2).random((24, 24)) > 0.3).astype(float)
    x = a / 255.0 * keep[..., None]
    y = b / 255.0 * keep[..., None]
    mse = ((x - y) ** 2).mean()
    assert M.masked_mse(a, b, keep) == pytest.approx(mse, rel=1e-5)
    assert M.masked_psnr(a, b, keep) == pytest.approx(10 * np.log10(1 / mse), rel=1e-5)
    # the quirk: this is the background-only mean scaled by the kept fraction
    bg = ((a / 255.0 - b / 255.0) ** 2)[keep > 0].mean()
    assert M.masked_mse(a, b, keep) == pytest.approx(bg * keep.mean(), rel=1e-5)


def test_masked_ssim_equals_formula_on_constant_images():
    a, b = 100 / 255, 110 / 255
    c1 = (0.01 * 1.0) ** 2                 # sigma terms are 0 for constant images: the second factor is 1
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    src = np.full((16, 16, 3), 100, np.uint8)
    edited = np.full((16, 16, 3), 110, np.uint8)
    # float32 (as the official) leaves ~1e-4 of rounding in the variance terms
    assert M.masked_ssim(src, edited, np.ones((16, 16))) == pytest.approx(expected, rel=5e-4)
    assert M.masked_ssim(src, src, np.ones((16, 16))) == pytest.approx(1.0, abs=1e-6)


def test_changes_inside_the_mask_do_not_touch_background_metrics(tiny):
    src = _img(3)
    mask = np.zeros((24, 24))
    mask[5:15, 6:18] = 1
    edited = src.copy()
    edited[mask > 0] = 255 - edited[mask > 0]
    keep = 1 - mask
    assert M.masked_mse(src, edited, keep) == 0
    assert M.masked_psnr(src, edited, keep) == math.inf
    assert M.masked_ssim(src, edited, keep) == pytest.approx(1.0, abs=1e-6)
    assert M.masked_lpips(tiny.lpips, src, edited, keep) == pytest.approx(0.0, abs=1e-7)
    outside = edited.copy()
    outside[0:3] = 0
    assert M.masked_mse(src, outside, keep) > 0
    assert M.masked_lpips(tiny.lpips, src, outside, keep) > 0
    assert M.masked_ssim(src, outside, keep) < 1


def test_background_metrics_are_nan_when_the_mask_covers_everything(tiny):
    a, b, keep = _img(4), _img(5), np.zeros((24, 24))
    assert math.isnan(M.masked_psnr(a, b, keep))
    assert math.isnan(M.masked_mse(a, b, keep))
    assert math.isnan(M.masked_ssim(a, b, keep))
    assert math.isnan(M.masked_lpips(tiny.lpips, a, b, keep))
    out = M.score_pair(a, b, np.ones((24, 24)), "a cat", tiny)
    assert all(math.isnan(out[k]) for k in M.BACKGROUND_METRICS)
    assert not math.isnan(out["structure_distance"]) and not math.isnan(out["clip_similarity_target_image"])


def test_blackout_keeps_only_the_edit_region():
    img = _img(6, 4, 4)
    mask = np.zeros((4, 4))
    mask[1:3, 2:] = 1
    got = M.blackout(img, mask)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got[1:3, 2:], img[1:3, 2:])
    assert got[mask == 0].sum() == 0


# --------------------------------------------------------------------------- structure distance

def test_cosine_self_similarity_hand_case_and_eps():
    keys = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    expected = torch.tensor([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8], [0.6, 0.8, 1.0]])
    torch.testing.assert_close(M.cosine_self_similarity(keys), expected)
    zero = M.cosine_self_similarity(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    torch.testing.assert_close(zero, torch.tensor([[0.0, 0.0], [0.0, 1.0]]))  # clamped, not NaN


def test_dino_preprocess_feeds_unscaled_pixels_to_imagenet_normalize():
    x = torch.full((3, 64, 64), 255.0)
    out = M.dino_preprocess(x)
    assert out.shape == (3, 224, 224)
    expected = torch.tensor((255 - MEAN) / STD, dtype=torch.float32)
    torch.testing.assert_close(out[:, 100, 7], expected)


def test_dino_preprocess_resize_is_bilinear_without_antialias_by_default():
    x = torch.from_numpy(_img(7, 300, 300).astype(np.float32)).permute(2, 0, 1)
    ref = F.interpolate(x[None], size=(224, 224), mode="bilinear", align_corners=False, antialias=False)[0]
    ref = (ref - torch.tensor(MEAN, dtype=torch.float32)[:, None, None]) / torch.tensor(STD, dtype=torch.float32)[:, None, None]
    torch.testing.assert_close(M.dino_preprocess(x), ref, rtol=1e-4, atol=1e-3)
    assert not torch.allclose(M.dino_preprocess(x, antialias=True), ref, atol=1.0)


def test_dino_preprocess_caps_the_long_side():
    # shorter side 100 -> 224 would make the long side 672 > 480: the long side is capped to 480.
    out = M.dino_preprocess(torch.zeros(3, 100, 300))
    assert tuple(out.shape) == (3, 160, 480)


def test_dino_keys_hook_equals_manual_last_layer_keys(tiny):
    model = tiny.dino
    x = M.dino_preprocess(torch.from_numpy(_img(8, 32, 32).astype(np.float32)).permute(2, 0, 1))[None]
    with torch.no_grad():
        got = M.dino_keys(model, x)
        h = model.embeddings(x)
        for layer in model.layers[:-1]:
            h = layer(h)
        last = model.layers[-1]
        expected = last.attention.k_proj(last.layernorm_before(h))[0]
    assert got.shape == (1 + (224 // 8) ** 2, M.TINY_VIT["hidden_size"])   # CLS + 28×28 patches
    torch.testing.assert_close(got, expected)


def test_structure_distance_zero_for_identical_and_positive_otherwise(tiny):
    a, b = _img(9, 32, 32), _img(10, 32, 32)
    assert tiny.structure_distance(a, a) == 0.0
    d = tiny.structure_distance(a, b)
    sa = M.keys_self_similarity(tiny.dino, a)
    sb = M.keys_self_similarity(tiny.dino, b)
    assert d > 0 and d == pytest.approx(float(((sa - sb) ** 2).mean()), rel=1e-6)


# --------------------------------------------------------------------------- CLIP

def test_clip_similarity_is_100_times_clamped_cosine(tiny):
    raw, proc = tiny.clip.model.model, tiny.clip.processor
    img = _img(11, 40, 48)
    prompt = "a red circle on a blue background"

    def by_hand() -> float:
        with torch.no_grad():
            pix = proc(images=[torch.from_numpy(img).permute(2, 0, 1)], return_tensors="pt")["pixel_values"]
            fi = raw.get_image_features(pixel_values=pix)
            txt = proc(text=[prompt], return_tensors="pt", padding=True)
            ft = raw.get_text_features(input_ids=txt["input_ids"], attention_mask=txt["attention_mask"])
        fi = fi if isinstance(fi, torch.Tensor) else fi.pooler_output
        ft = ft if isinstance(ft, torch.Tensor) else ft.pooler_output
        return F.cosine_similarity(fi, ft).item()

    cos = by_hand()
    assert tiny.clip_similarity(img, prompt) == pytest.approx(100 * max(cos, 0.0), abs=1e-4)
    with torch.no_grad():
        raw.text_projection.weight.neg_()           # flips the cosine's sign: the other branch of max(·, 0)
    try:
        cos2 = by_hand()
        assert cos2 == pytest.approx(-cos, abs=1e-6) and cos != 0
        assert tiny.clip_similarity(img, prompt) == pytest.approx(100 * max(cos2, 0.0), abs=1e-4)
    finally:
        with torch.no_grad():
            raw.text_projection.weight.neg_()


def test_clip_edit_part_blacks_out_background_and_nan_for_empty_mask(tiny):
    img = _img(12, 32, 32)
    mask = np.zeros((32, 32))
    assert math.isnan(tiny.clip_similarity(img, "a cat", mask))
    mask[8:20, 4:30] = 1
    assert tiny.clip_similarity(img, "a cat", mask) == pytest.approx(
        tiny.clip_similarity(M.blackout(img, mask), "a cat"), abs=1e-5)


# --------------------------------------------------------------------------- loaders

def test_load_dino_from_local_folder_restores_dino_layernorm_eps(tmp_path):
    from transformers import ViTConfig, ViTModel
    cfg = ViTConfig(**{**M.TINY_VIT, "layer_norm_eps": 1e-12})   # as HF's converted facebook/dino-vitb8
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(tmp_path)
    model = M.load_dino(str(tmp_path))
    assert model.layernorm.eps == 1e-6 and model.layers[0].layernorm_before.eps == 1e-6
    assert M.load_dino(str(tmp_path), layer_norm_eps=None).layernorm.eps == 1e-12
    with pytest.raises(ModelLoadError, match="nope"):
        M.load_dino(str(tmp_path / "nope"))


def test_load_clip_from_local_folder(tmp_path):
    model, proc = M.tiny_clip(seed=5)
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    loaded, lproc = M.load_clip(str(tmp_path))
    x = [torch.from_numpy(_img(13, 32, 32)).permute(2, 0, 1)]
    p1 = proc(images=x, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(lproc(images=x, return_tensors="pt")["pixel_values"], p1)
    # uint8 tensors take the PIL (bicubic) route, as transformers 4.x's CLIPImageProcessor did
    pil = Image.fromarray(x[0].permute(1, 2, 0).numpy())
    torch.testing.assert_close(lproc(images=[pil], return_tensors="pt")["pixel_values"], p1)
    for name, t in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], t, msg=name)


# --------------------------------------------------------------------------- records and tables

def test_score_pair_rejects_mismatched_shapes(tiny):
    with pytest.raises(ValueError, match="edited"):
        M.score_pair(_img(0, 8, 8), _img(0, 8, 9), np.zeros((8, 8)), "x", tiny)
    with pytest.raises(ValueError, match="mask"):
        M.score_pair(_img(0, 8, 8), _img(0, 8, 8), np.zeros((8, 9)), "x", tiny)
    with pytest.raises(ValueError, match="src"):
        M.score_pair(np.zeros((8, 8)), _img(0, 8, 8), np.zeros((8, 8)), "x", tiny)


def test_score_records_on_synthetic_set_with_unchanged_edits(tiny, tmp_path):
    root = pb.make_synthetic_piebench(tmp_path / "pie", n=10, seed=0, size=32)
    recs = pb.load_piebench(root, categories=["0", "9"])
    edited = tmp_path / "edited"
    # record 0: an editor-style strip [noise | source] (cropped back to the source panel); record 9: a copy.
    (edited / recs[0].image_path).parent.mkdir(parents=True)
    src0 = np.asarray(Image.open(recs[0].source_path).convert("RGB"))
    strip = np.concatenate([_img(1, 32, 32), src0], axis=1)
    Image.fromarray(strip).save(edited / recs[0].image_path, format="PNG")
    (edited / recs[1].image_path).parent.mkdir(parents=True)
    shutil.copy(recs[1].source_path, edited / recs[1].image_path)

    df = M.score_records(recs, edited, tiny, csv_path=tmp_path / "scores.csv", progress=False)
    assert list(df["id"]) == [r.id for r in recs] and list(df.columns[4:]) == list(M.METRICS)
    row0, row9 = df.iloc[0], df.iloc[1]
    assert row0["structure_distance"] == 0 and row0["mse_unedit_part"] == 0
    assert row0["psnr_unedit_part"] == math.inf and row0["ssim_unedit_part"] == pytest.approx(1.0, abs=1e-6)
    assert row9["structure_distance"] == 0 and row9[list(M.BACKGROUND_METRICS)].isna().all()
    assert row0["clip_similarity_target_image"] >= 0
    back = pd.read_csv(tmp_path / "scores.csv", dtype={"id": str, "editing_type_id": str})
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    with pytest.raises(FileNotFoundError, match="edited image not found"):
        M.score_records(recs, tmp_path / "none", tiny, progress=False)


def test_summarise_units_category_means_and_nan_skipping():
    df = pd.DataFrame({
        "editing_type_id": ["1", "1", "9"],
        "structure_distance": [0.002, 0.004, 0.006],
        "psnr_unedit_part": [20.0, 30.0, "nan"],          # the official CSV writes "nan"
        "mse_unedit_part": [0.001, np.nan, np.nan],
        "ssim_unedit_part": [0.5, 0.7, np.nan],
        "clip_similarity_target_image": [20.0, 22.0, 30.0],
    })
    s = M.summarise(df)
    assert list(s.index) == ["1 change object", "9 change style", "all"]
    assert s.loc["1 change object", "Structure distance ×10³"] == pytest.approx(3.0)
    assert s.loc["1 change object", "PSNR"] == pytest.approx(25.0)
    assert s.loc["1 change object", "MSE ×10⁴"] == pytest.approx(10.0)
    assert s.loc["1 change object", "SSIM ×10²"] == pytest.approx(60.0)
    assert math.isnan(s.loc["9 change style", "PSNR"])
    assert s.loc["all", "Structure distance ×10³"] == pytest.approx(4.0)      # mean over images
    assert s.loc["all", "PSNR"] == pytest.approx(25.0)                        # NaN left out
    assert s.loc["all", "CLIP whole"] == pytest.approx(24.0)
    assert list(s["n"]) == [2, 1, 3]
    assert "LPIPS ×10³" not in s.columns


def test_summarise_by_checkpoint():
    df = pd.DataFrame({"checkpoint": ["sd14", "sd14", "tc"], "editing_type_id": ["0", "2", "0"],
                       "psnr_unedit_part": [10.0, 20.0, 40.0]})
    s = M.summarise(df, by="checkpoint")
    assert s.loc[("sd14", "all"), "PSNR"] == pytest.approx(15.0)
    assert s.loc[("tc", "0 random editing"), "PSNR"] == pytest.approx(40.0)
    assert s.index.names == ["checkpoint", "category"]
    with pytest.raises(ValueError, match="method"):
        M.summarise(df, by="method")
    with pytest.raises(ValueError, match="no metric columns"):
        M.summarise(df[["checkpoint", "editing_type_id"]])
