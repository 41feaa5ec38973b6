"""Tests that kill mutmut survivors of reprolib.metrics (see tests/MUTATION.md).

The wiring tests use a stand-in metric set that records what it is asked (networks are not the point
there); the pixel metrics and helpers are checked on hand-made images.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from reprolib import metrics as mt
from reprolib import piebench as pb


class _Net(torch.nn.Module):
    """LPIPS stand-in: mean absolute difference per image."""

    def forward(self, a, b, normalize=False):
        return (a - b).abs().mean(dim=(1, 2, 3))


class FakeModels:
    """Duck-typed EditMetrics: CLIP 'similarity' = mean pixel value + prompt length; records the calls."""
    device = "cpu"

    def __init__(self):
        self.lpips = _Net()
        self.clip_calls: list[tuple[str, bool]] = []

    def structure_distance(self, a, b):
        return float(np.abs(a.astype(float) - b).mean())

    def clip_similarity(self, img, prompt, mask=None):
        self.clip_calls.append((prompt, mask is not None))
        if mask is not None:
            img = mt.blackout(img, mask)
        return float(np.asarray(img, float).mean() + len(prompt))


def _record_set(root, size=(16, 12)):
    """One PIE-Bench record with a (W=16, H=12) source and a 2-pixel mask at the top left."""
    w, h = size
    (root / "annotation_images" / "a").mkdir(parents=True)
    src = np.full((h, w, 3), 100, np.uint8)
    Image.fromarray(src).save(root / "annotation_images" / "a" / "x.png")
    rec = dict(image_path="a/x.png", original_prompt="a [cat]", editing_prompt="a [dog]", editing_instruction="i",
               editing_type_id="1", blended_word="cat dog", mask=[0, 2])
    (root / "mapping_file.json").write_text(json.dumps({"r1": rec}))
    return pb.load_piebench(root), src


def _strip(edited_panel: np.ndarray, width: int) -> np.ndarray:
    """A strip of panels as the official editors save it, the edited panel last (bottom-right)."""
    h, w, _ = edited_panel.shape
    out = np.zeros((h, width, 3), np.uint8)
    out[:, width - w:] = edited_panel
    return out


def test_score_records_columns_source_prompt_switch_csv_and_strip_crop(tmp_path):
    records, src = _record_set(tmp_path / "pie")
    edited = src.copy()
    edited[6:, :] = 160                                            # the bottom half changed
    (tmp_path / "ed" / "a").mkdir(parents=True)
    Image.fromarray(_strip(edited, 40)).save(tmp_path / "ed" / "a" / "x.png")
    models = FakeModels()
    df = mt.score_records(records, tmp_path / "ed", models, csv_path=tmp_path / "s.csv", progress=False)
    assert list(df.columns) == ["id", "editing_type_id", "category", "image_path", *mt.METRICS]
    assert df.loc[0, ["id", "editing_type_id", "category", "image_path"]].tolist() == [
        "r1", "1", pb.EDIT_TYPES["1"], "a/x.png"]
    # the edited panel was cut at the source's (W, H) = (16, 12): half its pixels differ by 60
    assert df.loc[0, "structure_distance"] == pytest.approx(30.0)
    assert df.loc[0, "clip_similarity_source_image"] == pytest.approx(100 + len("a cat"))
    assert df.loc[0, "clip_similarity_target_image"] == pytest.approx(130 + len("a dog"))
    # edit part: the mask is its run (inside the top row) plus the forced 1-pixel frame; only the frame
    # survives the blackout: top row 16 × 100, bottom row 16 × 160, side columns 5 × 2 × 100 and 5 × 2 × 160
    frame = 16 * 100 + 16 * 160 + 10 * 100 + 10 * 160
    assert df.loc[0, "clip_similarity_target_image_edit_part"] == pytest.approx(frame / 192 + len("a dog"))
    assert models.clip_calls == [("a cat", False), ("a dog", False), ("a dog", True)]
    assert pd.read_csv(tmp_path / "s.csv", dtype={"editing_type_id": str}).columns.tolist() == list(df.columns)
    models = FakeModels()
    no_src = mt.score_records(records, tmp_path / "ed", models, source_clip=False, progress=False)
    assert "clip_similarity_source_image" not in no_src.columns and len(no_src.columns) == len(df.columns) - 1
    assert models.clip_calls == [("a dog", False), ("a dog", True)]


def test_score_records_shows_a_progress_bar_by_default(tmp_path, capsys):
    records, src = _record_set(tmp_path / "pie")
    (tmp_path / "ed" / "a").mkdir(parents=True)
    Image.fromarray(src).save(tmp_path / "ed" / "a" / "x.png")
    seen = []
    orig = mt.tqdm

    def spy(*a, **kw):
        seen.append(kw)
        return orig(*a, **kw)
    try:
        mt.tqdm = spy
        mt.score_records(records, tmp_path / "ed", FakeModels())
        mt.score_records(records, tmp_path / "ed", FakeModels(), progress=False)
    finally:
        mt.tqdm = orig
    assert seen == [{"desc": "PIE-Bench metrics", "disable": False}, {"desc": "PIE-Bench metrics", "disable": True}]


def test_load_edited_prefers_the_named_file_and_crops_width_and_height(tmp_path):
    jpg = tmp_path / "x.jpg"
    Image.new("RGB", (4, 4), (9, 9, 9)).save(jpg)
    Image.new("RGB", (4, 4), (200, 0, 0)).save(tmp_path / "x.png")
    assert mt.load_edited(jpg, (4, 4))[0, 0].tolist() == [9, 9, 9]          # the .png beside it is not read
    strip = np.zeros((3, 8, 3), np.uint8)
    strip[1:, 6:] = 255                                                    # bottom-right 2 wide, 2 high
    Image.fromarray(strip).save(tmp_path / "s.png")
    cut = mt.load_edited(tmp_path / "s.png", (2, 2))
    assert cut.shape == (2, 2, 3) and (cut == 255).all()
    Image.new("L", (2, 2), 7).save(tmp_path / "g.png")
    assert mt.load_edited(tmp_path / "g.png", (2, 2)).shape == (2, 2, 3)


def test_as_image_converts_pil_and_names_bad_input():
    gray = Image.new("L", (3, 2), 5)
    arr = mt._as_image(gray, "src")
    assert arr.shape == (2, 3, 3) and arr.dtype == np.uint8 and (arr == 5).all()
    with pytest.raises(ValueError, match=r"^edited: expected an \(H, W, 3\) uint8 image, got shape \(2, 3, 3\) "
                                         "dtype float64$"):
        mt._as_image(np.zeros((2, 3, 3)), "edited")
    with pytest.raises(ValueError, match="^edited: expected"):
        mt.score_pair(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 4), np.uint8), np.zeros((2, 2)), "p",
                      FakeModels())
    with pytest.raises(ValueError, match=r"^mask: shape \(3, 2\) differs from the images' \(2, 2\)$"):
        mt.score_pair(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 3), np.uint8), np.zeros((3, 2)), "p",
                      FakeModels())


def test_blackout_keeps_the_mask_and_multiplies():
    img = np.full((1, 3, 3), 200, np.uint8)
    assert mt.blackout(img, np.array([[1, 0, 0.5]])).tolist() == [[[200] * 3, [0] * 3, [100] * 3]]


def test_cosine_self_similarity_of_short_vectors_and_of_a_zero_row():
    keys = torch.tensor([[0.1, 0.0], [0.0, 0.1], [0.0, 0.0]])
    assert mt.cosine_self_similarity(keys).tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]


def test_masked_ssim_uses_data_range_1():
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(2))
    keep = np.ones((16, 16))
    want = float(ssim(mt._masked(a, keep), mt._masked(b, keep), data_range=1.0))
    assert mt.masked_ssim(a, b, keep) == pytest.approx(want, rel=1e-6)
    assert want != pytest.approx(float(ssim(mt._masked(a, keep), mt._masked(b, keep), data_range=2.0)), rel=1e-3)


def test_structure_distance_passes_the_resize_settings(monkeypatch):
    seen = []

    def fake(model, img, **kw):
        seen.append(kw)
        return torch.full((2, 2), float(img.mean()))
    monkeypatch.setattr(mt, "keys_self_similarity", fake)
    m = mt.EditMetrics(dino=None, clip=None, lpips=None, device="cpu", dino_size=96, dino_max_size=160,
                       dino_antialias=True)
    d = m.structure_distance(np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 3, np.uint8))
    assert d == pytest.approx(9.0)
    assert seen == [dict(device="cpu", size=96, max_size=160, antialias=True)] * 2


def _table():
    return pd.DataFrame({"editing_type_id": ["2", "1", "1", "42"], "checkpoint": ["a", "b", "a", "a"],
                         "seed": [0, 0, 1, 0], "structure_distance": [0.001, 0.002, 0.004, 0.003],
                         "psnr_unedit_part": [20.0, 30.0, 40.0, math.nan]})


def test_summarise_categories_units_and_errors():
    s = mt.summarise(_table())
    assert s.index.name == "category"
    assert s.index.tolist() == ["1 " + pb.EDIT_TYPES["1"], "2 " + pb.EDIT_TYPES["2"], "42 type 42", "all"]
    assert s["Structure distance ×10³"].tolist() == pytest.approx([3.0, 1.0, 3.0, 2.5])
    assert s["PSNR"].iloc[:2].tolist() == [35.0, 20.0] and s["PSNR"].iloc[3] == pytest.approx(30.0)
    assert s["n"].tolist() == [2, 1, 1, 4] and s["n"].dtype.kind == "i"
    with pytest.raises(ValueError, match=r"^no metric columns in the table \(expected some of structure_distance, "):
        mt.summarise(pd.DataFrame({"editing_type_id": ["1"]}))
    with pytest.raises(ValueError, match="^the table has no 'editing_type_id' column$"):
        mt.summarise(_table().drop(columns="editing_type_id"))


def test_summarise_by_one_or_two_columns_keeps_their_order():
    one = mt.summarise(_table(), by="checkpoint")
    assert one.index.names == ["checkpoint", "category"]
    assert [k[0] for k in one.index] == ["a"] * 4 + ["b"] * 2          # first-seen order, not sorted
    assert one.loc[("a", "all"), "n"] == 3 and one.loc[("b", "all"), "n"] == 1
    two = mt.summarise(_table(), by=["checkpoint", "seed"])
    assert two.index.names == ["checkpoint", "seed", "category"]
    assert list(dict.fromkeys(k[:2] for k in two.index)) == [("a", 0), ("b", 0), ("a", 1)]
    assert two.loc[("a", 1, "all"), "Structure distance ×10³"] == pytest.approx(4.0)
    assert mt.summarise(_table(), by=("checkpoint",)).index.names == ["checkpoint", "category"]


def test_score_records_reads_grey_sources_as_rgb_and_keeps_its_columns_when_empty(tmp_path):
    root = tmp_path / "pie"
    records, src = _record_set(root)
    Image.fromarray(src[..., 0]).save(records[0].source_path)                  # an 8-bit grey source
    (tmp_path / "ed" / "a").mkdir(parents=True)
    Image.fromarray(src).save(tmp_path / "ed" / "a" / "x.png")
    df = mt.score_records(records, tmp_path / "ed", FakeModels(), progress=False)
    assert df.loc[0, "structure_distance"] == 0.0
    empty = mt.score_records([], tmp_path / "ed", FakeModels(), progress=False)
    assert empty.empty and list(empty.columns) == list(df.columns)
    with pytest.raises(ValueError, match="^src: expected an"):
        mt.score_pair(np.zeros((2, 2)), src, np.zeros((2, 2)), "p", FakeModels())


def test_summarise_columns_are_the_paper_labels_then_n():
    assert list(mt.summarise(_table()).columns) == ["Structure distance ×10³", "PSNR", "n"]


def test_dino_keys_names_a_model_that_never_ran_its_last_key_projection():
    class Silent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Module()])
            self.layers[0].attention = torch.nn.Module()
            self.layers[0].attention.k_proj = torch.nn.Linear(2, 2)

        def forward(self, pixel_values):
            return pixel_values
    with pytest.raises(mt.ModelLoadError, match="^the key projection hook did not fire$"):
        mt.dino_keys(Silent(), torch.zeros(1, 3, 2, 2))
