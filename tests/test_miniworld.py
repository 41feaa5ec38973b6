"""The miniature world (exact masks, MultiGen captions, seeding) and its shipped detector."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from _require import SHARED_DATA, need_shared
from reprolib import miniworld as mw
from reprolib import worlddetector as wd
from reprolib.miniworld import CATEGORIES, caption_for, render_scene, sample_scenes

SHARED = SHARED_DATA


# --------------------------------------------------------------------------- vocabulary and captions

def test_categories_are_ten_distinct_single_clip_tokens():
    from reprolib.models import clip_tokenizer
    tok = clip_tokenizer()
    assert len(CATEGORIES) == 10 and len(set(CATEGORIES)) == 10
    assert set(mw.SHAPES) == set(CATEGORIES)
    for noun in CATEGORIES:
        assert tok.tokenize(noun) == [f"{noun}</w>"], noun
        assert f"{noun}</w>" in tok.tokenize(caption_for([noun]))      # also inside a caption


def test_caption_wording_by_hand():
    assert caption_for(["star"]) == "a photo of a star."
    assert caption_for(["star", "ring"]) == "a photo of a star and a ring."
    assert caption_for(["star", "ring", "heart"]) == "a photo of a star, a ring, and a heart."
    assert caption_for(["arrow", "moon"]) == "a photo of a arrow and a moon."     # MultiGen never says "an"
    assert caption_for(["star", "ring", "heart"], style="plain") == "a photo of a star, a ring and a heart"
    with pytest.raises(ValueError, match="empty"):
        caption_for([])
    with pytest.raises(ValueError, match="style"):
        caption_for(["star"], style="fancy")


@pytest.mark.parametrize("name", ["coco", "ade20k"])
def test_caption_reproduces_every_multigen_prompt(name):
    path = SHARED / f"{name}_obj_comp_5_1k.json"
    need_shared(path)
    records = json.loads(path.read_text())
    for r in records:
        nouns = [" ".join(r[f"obj_{i}_attributes"]) for i in range(1, r["num_objects"] + 1)]
        assert caption_for(nouns) == r["text"], r["unique_id"]


# --------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("cat", CATEGORIES)
def test_shapes_fit_their_disc_and_crop_does_not_clip(cat):
    g = np.linspace(-2, 2, 801)
    u, v = np.meshgrid(g, g)
    inside = mw.SHAPES[cat](u, v)
    assert inside.mean() > 0.05, "shape is (nearly) empty"
    assert np.hypot(u, v)[inside].max() <= mw.SHAPE_RADIUS
    # the bbox-cropped renderer equals a direct evaluation on the whole grid
    size, center, scale, angle = 48, (23.3, 24.9), 12.0, math.radians(13)
    rows, cols = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = (cols - center[1]) / scale, -(rows - center[0]) / scale
    uu = math.cos(angle) * dx + math.sin(angle) * dy
    vv = -math.sin(angle) * dx + math.cos(angle) * dy
    np.testing.assert_array_equal(mw.shape_mask(cat, center, scale, angle, size), mw.SHAPES[cat](uu, vv))


def test_square_and_diamond_differ_under_allowed_rotation():
    a = math.radians(mw.MAX_ROTATION_DEG)
    for angle in (-a, 0.0, a):
        sq = mw.shape_mask("square", (32, 32), 20, angle, 64)
        di = mw.shape_mask("diamond", (32, 32), 20, 0.0, 64)
        assert (sq ^ di).sum() > 0.3 * sq.sum()


# --------------------------------------------------------------------------- scenes

@pytest.fixture(scope="module")
def scenes():
    return sample_scenes(300, seed=11)


def test_masks_are_exact_disjoint_and_inside(scenes):
    for i, s in enumerate(scenes):
        assert s.image.dtype == np.uint8 and s.image.shape == (64, 64, 3)
        assert list(s.masks) == s.categories == list(s.colors)
        union = np.zeros((64, 64), dtype=int)
        for cat, mask in s.masks.items():
            assert mask.dtype == bool and mask.any(), (i, cat)
            # exact: the pixels painted in this object's colour are exactly its visible mask
            np.testing.assert_array_equal((s.image == s.colors[cat]).all(-1), mask, err_msg=f"{i} {cat}")
            union += mask
        assert union.max() <= 1, f"scene {i}: masks overlap"
        bg = s.image[union == 0]
        assert (bg == bg[0]).all() and mw.BACKGROUND_RANGE[0] <= bg[0, 0] <= mw.BACKGROUND_RANGE[1]
        border = np.concatenate([union[0], union[-1], union[:, 0], union[:, -1]])
        assert not border.any(), f"scene {i}: an object touches the border"


def test_occlusion_is_limited(scenes):
    for s in scenes:
        assert list(s.areas) == s.categories
        for cat, mask in s.masks.items():
            assert mw.MIN_VISIBLE_FRACTION * s.areas[cat] <= mask.sum() <= s.areas[cat], cat
    assert any(s.masks[c].sum() < s.areas[c] for s in scenes for c in s.categories), "no occlusion at all"


def test_captions_match_objects(scenes):
    for s in scenes:
        assert s.caption == caption_for(s.categories)
        assert len(set(s.categories)) == len(s.categories)
        assert set(s.categories) <= set(CATEGORIES)
        assert 1 <= len(s.categories) <= 5


def test_sampling_is_seeded_and_balanced():
    a, b, c = sample_scenes(40, seed=5), sample_scenes(40, seed=5), sample_scenes(40, seed=6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.image, y.image)
        assert x.caption == y.caption and x.masks.keys() == y.masks.keys()
        for k in x.masks:
            np.testing.assert_array_equal(x.masks[k], y.masks[k])
    assert any(not np.array_equal(x.image, z.image) for x, z in zip(a, c))
    t0 = time.perf_counter()
    many = sample_scenes(1000, seed=0)
    rate = len(many) / (time.perf_counter() - t0)
    print(f"miniworld: {rate:.0f} scenes/s")
    counts = np.bincount([len(s.categories) for s in many], minlength=6)[1:]
    assert counts.min() > 150                         # uniform 1..5 by default: ~200 each
    freq = mw.presence_labels(many).mean(0)           # each noun in ~30% of scenes (mean 3 of 10)
    assert ((freq > 0.25) & (freq < 0.35)).all(), freq


def test_object_count_weights_and_subsets():
    only3 = sample_scenes(30, seed=1, n_objects=[0, 0, 1, 0, 0], categories=["star", "ring", "moon", "heart"])
    assert all(len(s.categories) == 3 and set(s.categories) <= {"star", "ring", "moon", "heart"} for s in only3)
    big = sample_scenes(3, seed=1, size=128)
    assert big[0].image.shape == (128, 128, 3) and next(iter(big[0].masks.values())).shape == (128, 128)


def test_empty_scene_is_background():
    s = render_scene([], np.random.default_rng(0))
    assert s.masks == {} and s.caption == "" and (s.image == s.image[0, 0]).all()


@pytest.mark.parametrize("bad, match", [
    (["star", "star"], "distinct"), (["unicorn"], "unicorn"),
    (["circle", "square", "triangle", "star", "heart", "ring"], "at most"),
])
def test_render_rejects_bad_categories(bad, match):
    with pytest.raises(ValueError, match=match):
        render_scene(bad, np.random.default_rng(0))


def test_sample_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_objects"):
        sample_scenes(2, 0, n_objects=[1, 1])
    with pytest.raises(ValueError, match="distinct categories"):
        sample_scenes(2, 0, categories=["star", "ring"])
    with pytest.raises(ValueError, match="n must be"):
        sample_scenes(-1, 0)


# --------------------------------------------------------------------------- detector mechanics

def test_dense_targets_by_hand():
    masks = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    masks[0, 0, :8, :8] = True          # cell (0, 0) fully covered
    masks[0, 0, 8, 8] = True            # cell (1, 1): 1/64 covered -> ignored
    target, weight = wd.dense_targets(masks, (2, 2), positive=0.2)
    assert target[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert weight[0, 0].tolist() == [[1.0, 1.0], [1.0, 0.0]]


def test_augment_is_seeded_and_blur_keeps_flat_images_flat():
    x = torch.rand(4, 3, 64, 64)
    a = wd.augment(x, torch.Generator().manual_seed(1))
    b = wd.augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    flat = torch.full((2, 3, 64, 64), 0.6)
    out = wd.augment(flat, torch.Generator().manual_seed(0), max_noise=0.0, jitter=0.0, p_blur=1.0)
    torch.testing.assert_close(out, flat)
    edge = torch.zeros(1, 3, 64, 64)
    edge[..., 32:] = 1.0
    out = wd.augment(edge, torch.Generator().manual_seed(0), max_noise=0.0, jitter=0.0, p_blur=1.0)
    assert 0.0 < out[0, 0, 0, 31] < 1.0 and 0.0 < out[0, 0, 0, 32] < 1.0


def test_training_batch_background_clutter_keeps_objects():
    images, labels, masks = wd.training_batch(0, 0, 16, empty_fraction=0.0, clutter_fraction=1.0)
    scenes = sample_scenes(16, [wd.TRAIN_STREAM, 0, 0])
    for img, s in zip(images, scenes):
        for cat, m in s.masks.items():
            assert (img[m] == s.colors[cat]).all()
    np.testing.assert_array_equal(labels, mw.presence_labels(scenes))
    assert masks.shape == (16, 10, 64, 64)


def test_save_load_roundtrip_and_input_forms(tmp_path):
    torch.manual_seed(0)
    model = wd.WorldDetector().eval()
    path = wd.save_world_detector(model, tmp_path / "d.safetensors")
    loaded = wd.load_world_detector(path)
    imgs = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    p = wd.detect(model, imgs)
    assert p.shape == (3, 10) and p.dtype == np.float32
    np.testing.assert_allclose(wd.detect(loaded, imgs), p, atol=1e-6)
    np.testing.assert_allclose(wd.detect(loaded, torch.from_numpy(imgs).float() / 255), p, atol=1e-5)
    assert wd.detect(loaded, np.repeat(np.repeat(imgs, 2, 1), 2, 2)).shape == (3, 10)   # 128 px resized
    with pytest.raises(ValueError, match="shape"):
        wd.detect(loaded, imgs[..., :2])
    with pytest.raises(FileNotFoundError, match="nope"):
        wd.load_world_detector(tmp_path / "nope.safetensors")


def test_training_is_seeded():
    kw = dict(steps=3, batch_size=6, seed=3, widths=(4, 8, 8), depths=(1, 1, 1), progress=False)
    a, la = wd.train_world_detector(**kw)
    b, lb = wd.train_world_detector(**kw)
    assert len(la) == 3 and la == lb and all(math.isfinite(v) for v in la)
    assert not a.training and a.widths == (4, 8, 8)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


# --------------------------------------------------------------------------- the shipped detector

@pytest.fixture(scope="module")
def shipped():
    return wd.load_world_detector()


def test_shipped_provenance_matches_weights():
    meta = json.loads((wd.DEFAULT_WEIGHTS.parent / "detector.json").read_text())
    from reprolib.io import sha256_file
    assert meta["weights_sha256"] == sha256_file(wd.DEFAULT_WEIGHTS)
    assert meta["script"] == "scripts/train_world_detector.py"
    assert set(meta["held_out"]["all"]["per_category"]) == set(CATEGORIES)
    assert wd.DEFAULT_WEIGHTS.stat().st_size < 1_000_000


@pytest.mark.parametrize("n_objects, seed", [(None, 2024), ([0, 0, 0, 1, 1], 2025)])
def test_shipped_detector_is_accurate_on_fresh_scenes(shipped, n_objects, seed):
    scenes = sample_scenes(1000, seed=seed, n_objects=n_objects)
    probs = wd.detect(shipped, mw.stack_images(scenes))
    acc = wd.per_category_accuracy(probs, mw.presence_labels(scenes), shipped.categories)
    assert min(acc.values()) >= 0.99, acc
    sets = wd.present(shipped, mw.stack_images(scenes[:50]))
    assert sets == [{c for c, p in zip(shipped.categories, row) if p >= 0.5} for row in probs[:50]]


def test_shipped_detector_sees_nothing_in_object_free_images(shipped):
    rates = wd.false_positive_rate(shipped, n=200, seed=7)
    assert rates["blank_augmented"] <= 0.01 and rates["random_field"] <= 0.1, rates
