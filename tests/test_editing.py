"""Blended Latent Diffusion: the official script's schedule, mask, blending and noise, UNet swaps, runs, Table 2."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from reprolib.editing import (BLDOptions, EditingError, attention_for_tokens, bld_scheduler,
                              blended_latent_diffusion, blending_timesteps, checkpoint_components,
                              edit_records, latent_mask, load_reported_table2, run_signature, table2,
                              target_word)

SIZE = 32            # tiny VAE halves: 16² latents, cheap on CPU
STEPS = 4            # int(4 · 0.25) = 1 skipped → 3 UNet steps


@pytest.fixture(scope="module")
def base():
    from reprolib.models import load_components
    return load_components("tiny", seed=0)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE))
    mask[8:24, 4:20] = 1
    return image, mask


def _abar() -> torch.Tensor:
    """SD's scaled-linear schedule by hand: betas = linspace(√0.00085, √0.012, 1000)², ᾱ = cumprod(1 − β)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


# --------------------------------------------------------------------------- schedule and mask

def test_scheduler_and_timesteps_are_the_official_scripts():
    s = bld_scheduler()
    assert (s.config.steps_offset, s.config.clip_sample, s.config.set_alpha_to_one) == (0, False, False)
    assert math.isclose(float(s.final_alpha_cumprod), 1 - 0.00085, rel_tol=1e-6)
    ts = blending_timesteps(s, BLDOptions())
    # 50 steps of 20 from 980 down to 0; int(50 · 0.25) = 12 skipped → 38 steps from 740.
    assert len(ts) == 38 and int(ts[0]) == 740 and int(ts[-1]) == 0
    assert [int(t) for t in blending_timesteps(s, BLDOptions(num_inference_steps=6))] == [664, 498, 332, 166, 0]


def test_latent_mask_samples_cell_centres_and_thresholds():
    m = np.zeros((8, 8))
    m[1, 1] = 1                                   # PIL nearest 8→4 samples pixel 2i+1: hit
    got = latent_mask(m, (4, 4))
    assert got.shape == (1, 1, 4, 4) and got[0, 0, 0, 0] == 1 and got.sum() == 1
    m = np.zeros((8, 8))
    m[0, 0] = m[2, 2] = 1                         # even pixels are never sampled
    assert latent_mask(m, (4, 4)).sum() == 0


def test_forced_piebench_border_never_reaches_the_latent_mask():
    from reprolib.piebench import mask_decode
    border_only = mask_decode([], (64, 64))       # the official decode forces the 1-pixel frame to 1
    assert border_only.sum() > 0
    assert latent_mask(border_only, (8, 8)).sum() == 0


def test_options_are_validated_by_name():
    with pytest.raises(EditingError, match="start_from"):
        BLDOptions(start_from="source")
    with pytest.raises(EditingError, match="blend_noise_at"):
        BLDOptions(blend_noise_at="t+1")
    with pytest.raises(EditingError, match="blending_start"):
        BLDOptions(blending_start=1.0)


# --------------------------------------------------------------------------- blending

def _run(base, inputs, keep_steps=True, **kw):
    """One edit (seed 7) and the first latents the UNet saw (the start of the reverse process)."""
    image, mask = inputs
    opts = BLDOptions(num_inference_steps=STEPS, resolution=SIZE, seed=7, **kw)
    first_input = []
    handle = base.unet.register_forward_pre_hook(
        lambda mod, args: first_input.append(args[0][:1].clone()) if not first_input else None)
    try:
        res = blended_latent_diffusion(base, image, mask, "a blue square", opts, keep_steps=keep_steps)
    finally:
        handle.remove()
    return res, first_input[0]


@pytest.fixture(scope="module")
def reference(base, inputs):
    """The official settings' edit, shared by the tests below (CPU time is scarce)."""
    return _run(base, inputs)


@pytest.mark.parametrize("blend_noise_at", ["t", "t_prev"])
def test_background_is_the_noised_source_at_every_step(base, inputs, reference, blend_noise_at):
    res, start = reference if blend_noise_at == "t" else _run(base, inputs, blend_noise_at=blend_noise_at)
    abar = _abar()
    gen = torch.Generator("cpu").manual_seed(7)             # on CPU one generator serves both draws
    shape = res.source_latents.shape
    assert torch.equal(start, torch.randn(shape, generator=gen))   # official start: pure noise
    m = res.mask.bool().expand(shape)
    assert 0 < m.float().mean() < 1
    assert len(res.steps) == len(res.timesteps) == 3
    for step in res.steps:
        noise = torch.randn(shape, generator=gen)
        level = step.t if blend_noise_at == "t" else max(step.t - 1000 // STEPS, 0)
        a = abar[level]
        expected = (a.sqrt() * res.source_latents.double() + (1 - a).sqrt() * noise.double()).float()
        torch.testing.assert_close(step.latents[~m], expected[~m], atol=1e-5, rtol=1e-5)
        assert torch.equal(step.latents[m], step.denoised[m])     # inside the mask: the DDIM step's output
    assert torch.equal(res.latents, res.steps[-1].latents)


@torch.no_grad()
def _official_loop(comps, image, mask, prompt, steps, seed):
    """The official script's edit_image, operation for operation, as it would run on CPU (global RNG)."""
    from diffusers import DDIMScheduler
    from PIL import Image
    torch.manual_seed(seed)                                    # PnPInversion's setup_seed before each image
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False)
    x = torch.from_numpy(image).float() / 127.5 - 1
    source = comps.vae.encode(x.permute(2, 0, 1).unsqueeze(0))["latent_dist"].mean * 0.18215
    side = source.shape[-1]
    lm = np.array(Image.fromarray(np.uint8(mask[:, :, None].repeat(3, 2))).convert("L").resize((side, side), Image.NEAREST))
    lm[lm < 0.5] = 0
    lm[lm >= 0.5] = 1
    lm = torch.from_numpy(lm[None, None]).float()
    tok = comps.tokenizer
    ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    emb = comps.text_encoder(ids.input_ids)[0]
    un = tok([""], padding="max_length", max_length=ids.input_ids.shape[-1], return_tensors="pt")
    emb = torch.cat([comps.text_encoder(un.input_ids)[0], emb])
    latents = torch.randn((1, comps.unet.config.in_channels, side, side), generator=torch.default_generator)
    sched.set_timesteps(steps)
    for t in sched.timesteps[int(len(sched.timesteps) * 0.25):]:
        inp = sched.scale_model_input(torch.cat([latents] * 2), timestep=t)
        eps = comps.unet(inp, t, encoder_hidden_states=emb).sample
        u, c = eps.chunk(2)
        latents = sched.step(u + 7.5 * (c - u), t, latents).prev_sample
        bg = sched.add_noise(source, torch.randn_like(latents), t)
        latents = latents * lm + bg * (1 - lm)
    img = comps.vae.decode(1 / 0.18215 * latents).sample
    img = (img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return (img * 255).round().astype("uint8")[0]


def test_matches_the_official_loop_bit_for_bit_on_cpu(base, inputs, reference):
    image, mask = inputs
    expected = _official_loop(base, image, mask, "a blue square", STEPS, seed=7)
    assert np.array_equal(reference[0].image, expected)


def test_start_from_noised_source_variant(base, inputs):
    res, start = _run(base, inputs, keep_steps=False, start_from="noised_source")
    gen = torch.Generator("cpu").manual_seed(7)
    noise = torch.randn(res.source_latents.shape, generator=gen)
    a = _abar()[res.timesteps[0]]
    expected = (a.sqrt() * res.source_latents.double() + (1 - a).sqrt() * noise.double()).float()
    torch.testing.assert_close(start, expected, atol=1e-5, rtol=1e-5)


def test_same_seed_same_edit(base, inputs, reference):
    again, _ = _run(base, inputs, keep_steps=False)
    assert reference[0].image.shape == (SIZE, SIZE, 3) and reference[0].image.dtype == np.uint8
    assert np.array_equal(again.image, reference[0].image)


def test_attention_is_recorded_per_step_and_processors_restored(base, inputs, reference):
    from diffusers.models.attention_processor import AttnProcessor2_0
    image, mask = inputs
    opts = BLDOptions(num_inference_steps=STEPS, resolution=SIZE, seed=7)
    a = blended_latent_diffusion(base, image, mask, "a blue square", opts, attention_layers=["up_32"])
    # explicit fp32 softmax instead of fused SDPA: the same edit up to rounding
    assert np.abs(a.image.astype(int) - reference[0].image.astype(int)).max() <= 2
    assert len(a.attention) == len(a.timesteps)
    full = attention_for_tokens(a.attention, "up_32", range(77))
    assert full.shape == (len(a.timesteps), SIZE // 2, SIZE // 2)
    torch.testing.assert_close(full, torch.ones_like(full), atol=1e-4, rtol=0)   # softmax rows sum to 1
    assert all(isinstance(p, AttnProcessor2_0) for p in base.unet.attn_processors.values())
    with pytest.raises(EditingError, match="down_32"):
        attention_for_tokens(a.attention, "down_32", [1])


def test_unet_swap_changes_only_the_unet(base, inputs, reference):
    tc = checkpoint_components(base, "tokencompose_a", "tiny")
    assert checkpoint_components(base, "sd14", "tiny") is base
    assert tc.vae is base.vae and tc.text_encoder is base.text_encoder and tc.tokenizer is base.tokenizer
    assert tc.unet is not base.unet
    assert any(not torch.equal(p, q) for p, q in zip(tc.unet.parameters(), base.unet.parameters()))
    r1 = reference[0]
    r2, _ = _run(tc, inputs, keep_steps=False)
    m = r1.mask.bool().expand(r1.latents.shape)
    assert torch.equal(r1.source_latents, r2.source_latents)        # same VAE
    assert torch.equal(r1.latents[~m], r2.latents[~m])              # same background (source + same noise)
    assert not torch.equal(r1.latents[m], r2.latents[m])            # the UNet edits the masked part


# --------------------------------------------------------------------------- runs and tables

def test_edit_records_writes_resumes_and_redoes_on_new_options(base, tmp_path):
    from reprolib.metrics import load_edited
    from reprolib.piebench import load_piebench, make_synthetic_piebench
    records = load_piebench(make_synthetic_piebench(tmp_path / "pie", n=1, size=SIZE))
    opts = BLDOptions(num_inference_steps=3, resolution=SIZE)
    out = tmp_path / "edits"
    df = edit_records(records, base, out, opts, signature=run_signature(opts, "sd14", "tiny", "fp32"), progress=False)
    assert list(df["status"]) == ["edited"]
    edited = load_edited(out / records[0].image_path, (SIZE, SIZE))
    assert edited.shape == (SIZE, SIZE, 3)
    df = edit_records(records, base, out, opts, signature=run_signature(opts, "sd14", "tiny", "fp32"), progress=False)
    assert list(df["status"]) == ["kept"]
    new = BLDOptions(num_inference_steps=3, resolution=SIZE, blend_noise_at="t_prev")
    df = edit_records(records, base, out, new, signature=run_signature(new, "sd14", "tiny", "fp32"), progress=False)
    assert list(df["status"]) == ["edited"]


def test_editing_process_frames(base, tmp_path):
    from reprolib.editing import editing_process
    from reprolib.piebench import load_piebench, make_synthetic_piebench
    (rec,) = load_piebench(make_synthetic_piebench(tmp_path / "pie", n=1, size=SIZE))
    proc = editing_process(base, rec, BLDOptions(num_inference_steps=STEPS, resolution=SIZE), "cpu", "up_32")
    assert proc.word == target_word(rec) and proc.word in rec.target_prompt
    assert proc.timesteps == [500, 250, 0]                     # 3 steps run, all shown (n_frames=5)
    assert [x.shape for x in proc.pred_x0] == [(SIZE, SIZE, 3)] * 3
    assert proc.attention.shape == (3, SIZE // 2, SIZE // 2)
    assert float(proc.attention.min()) >= 0 and float(proc.attention.max()) <= 1 + 1e-6


def test_target_word_from_blended_word_or_marks():
    from reprolib.piebench import PieRecord
    from pathlib import Path

    def rec(blended, editing):
        return PieRecord("0", Path("."), "a.jpg", "a cat", editing, "", "1", blended, ())
    assert target_word(rec("cat dog", "a [dog]")) == "dog"
    assert target_word(rec("", "[a watercolor painting of] a cat")) == "watercolor"
    assert target_word(rec("flowers", "a cat [and flowers]")) == "flowers"
    assert target_word(rec("", "a cat")) is None


def test_table2_puts_reported_rows_beside_ours():
    from reprolib.metrics import PAPER_UNITS, summarise
    reported = load_reported_table2()
    assert (reported["source"].str.len() > 0).all()
    rows = []
    for ck, sd in (("sd14", 0.010), ("tokencompose_a", 0.020)):
        for i, t in enumerate(("1", "9")):
            rows.append({"checkpoint": ck, "editing_type_id": t, "structure_distance": sd + i * 0.002,
                         "psnr_unedit_part": 20.0 if t == "1" else np.nan})
    summary = summarise(pd.DataFrame(rows), by="checkpoint")
    tab = table2(reported, summary, labels={"tokencompose_a": "BLD + TC"})
    sd_col, psnr_col = PAPER_UNITS["structure_distance"][0], PAPER_UNITS["psnr_unedit_part"][0]
    assert list(tab.index) == [*reported["method"], "BLD + SD1.4", "BLD + TC"]
    assert tab.loc["BLD + SD1.4", sd_col] == pytest.approx(11.0)        # mean(10, 12) ×10³
    assert tab.loc["BLD + TC", psnr_col] == pytest.approx(20.0)   # NaN (style) left out
    assert tab.loc["Direct Inversion + P2P", "source"].startswith("reported: ")
    assert tab.loc["BLD + SD1.4", "source"] == "ours"


def test_latent_scale_is_sd14s_constant_for_sd14_and_the_vaes_own_otherwise():
    """The official script hard-codes 0.18215, SD1.4's scaling_factor: identical there; the world VAE's
    factor must be used for its images (else the background comes back washed out)."""
    import types
    from reprolib.editing import LATENT_SCALE, latent_scale
    from reprolib.models import load_components
    assert LATENT_SCALE == 0.18215
    sd14_config = types.SimpleNamespace(config=types.SimpleNamespace(scaling_factor=0.18215))
    assert latent_scale(sd14_config) == 0.18215
    world = load_components("miniworld").vae
    assert latent_scale(world) == world.config.scaling_factor != 0.18215


# --------------------------------------------------------------------------- what evaluate.py reads

def _jpeg(strip: np.ndarray) -> np.ndarray:
    """PIL's default JPEG (quality 75, 4:2:0), decoded: what the official script writes and evaluate.py opens."""
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(strip).save(buf, format="JPEG")
    buf.seek(0)
    return np.asarray(Image.open(buf))


def _evaluate_py_crop(image: np.ndarray, side: int) -> np.ndarray:
    """PIE-Bench evaluate.py: a non-square target is cropped to its bottom-right side² (512 there)."""
    from PIL import Image
    im = Image.fromarray(image)
    if im.size[0] != im.size[1]:
        im = im.crop((im.size[0] - side, im.size[1] - side, im.size[0], im.size[1]))
    return np.asarray(im)


def test_strip_crop_depends_on_the_edit_only_and_differs_from_a_lone_jpeg():
    """The pixels evaluate.py reads from the official strip: whatever the text and source panels hold, the
    crop is the same (its left neighbour is always black), and it is not a JPEG of the edit alone, whose
    first column JPEG's chroma upsampling fills from the edit's own edge instead of the black panel."""
    from reprolib.editing import official_strip
    side = 64
    y, x = np.mgrid[0:side, 0:side]
    edit = np.stack([x * 4, y * 4, 255 - (x + y) * 2], -1).astype(np.uint8)
    edit[:, :5] = (30, 200, 60)                                      # a saturated left edge
    rng = np.random.default_rng(0)
    strips = [official_strip(rng.integers(0, 256, edit.shape, dtype=np.uint8), edit, p) for p in ("a cat", "a dog")]
    assert strips[0].shape == (side, 4 * side, 3)
    assert np.array_equal(strips[0][:, 2 * side:3 * side], np.zeros_like(edit))
    assert np.array_equal(strips[0][:, 3 * side:], edit)
    assert strips[0][:, :side].min() < 128 and not np.array_equal(strips[0][:, :side], strips[1][:, :side])  # text
    crops = [_evaluate_py_crop(_jpeg(s), side) for s in strips]
    assert np.array_equal(crops[0], crops[1])
    two_panel = _evaluate_py_crop(_jpeg(np.concatenate([np.zeros_like(edit), edit], 1)), side)
    assert np.array_equal(crops[0], two_panel)
    lone = _jpeg(edit).astype(int)
    cols = np.nonzero(np.abs(lone - crops[0]).max(axis=(0, 2)))[0]
    assert cols.tolist() == [0] and np.abs(lone - crops[0]).max() >= 10


def test_edits_are_saved_as_the_official_strip_and_read_as_evaluate_py_reads_them(base, tmp_path):
    from PIL import Image

    from reprolib.editing import load_image
    from reprolib.metrics import load_edited
    from reprolib.piebench import load_piebench, make_synthetic_piebench
    (rec,) = load_piebench(make_synthetic_piebench(tmp_path / "pie", n=1, size=SIZE))
    opts = BLDOptions(num_inference_steps=3, resolution=SIZE)
    assert opts.save_as == "strip"                                   # faithful by default
    out = tmp_path / "edits"
    edit_records([rec], base, out, opts, signature=run_signature(opts, "sd14", "tiny", "fp32"), progress=False)
    with Image.open(out / rec.image_path) as im:
        assert im.format == "JPEG" and im.size == (4 * SIZE, SIZE)
        saved = np.asarray(im)
    source = load_image(rec.source_path, SIZE)
    edit = blended_latent_diffusion(base, source, rec.mask(), rec.target_prompt, opts).image   # same seed: same edit
    got = load_edited(out / rec.image_path, (SIZE, SIZE))
    assert np.array_equal(got, _evaluate_py_crop(saved, SIZE))
    assert np.array_equal(got, _evaluate_py_crop(_jpeg(np.concatenate([np.zeros_like(edit), edit], 1)), SIZE))
    assert np.abs(saved[:, SIZE:2 * SIZE].astype(int) - source).mean() < 8         # the source panel (JPEG)

    # the switch: the edit alone, lossless, beside the strip's path; switching formats drops the other file
    png = BLDOptions(num_inference_steps=3, resolution=SIZE, save_as="png")
    edit_records([rec], base, out, png, signature=run_signature(png, "sd14", "tiny", "fp32"), progress=False)
    assert not (out / rec.image_path).exists() and (out / rec.image_path).with_suffix(".png").is_file()
    assert np.array_equal(load_edited(out / rec.image_path, (SIZE, SIZE)), edit)
    with pytest.raises(EditingError, match="editing.save_as must be one of"):
        BLDOptions(save_as="gif")
