"""Stage 02 trainer: fast/faithful parity, resume, export, λ = 0, data order, bad inputs.

Everything runs on a micro UNet (SD1.4's block layout, 16² latents from 32² images) so that a
training step takes a fraction of a second on CPU.
"""
from __future__ import annotations

import copy
import functools
import json
import math

import numpy as np
import pytest
import torch

from _floats import assert_close_scaled, assert_update_close
from reprolib import train as T
from reprolib.config import load_profile
from reprolib.losses import GroundingTargets, grounding_losses
from reprolib.models import Components, ModelLoadError, load_unet, sd14_scheduler, tiny_text_encoder, tiny_vae
from reprolib.tokens import word_token_indices

RES = 32                                               # image side; latents are 16²
LAYERS = ["mid_2", "up_4", "up_8", "up_16"]            # SD1.4's mid_8, up_16/32/64 at this size
MICRO_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 16, 32, 32),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
)
CAPTIONS = [("a photo of a cat and a dog", ["cat", "dog"]), ("a red star above a blue moon", ["star", "moon"]),
            ("a teddy bear on a chair", ["teddy bear", "chair"]), ("a ring", ["ring"]),
            ("two arrows and a heart", ["arrows", "heart"]), ("a diamond next to a cross", ["diamond", "cross"])]



@functools.lru_cache(maxsize=1)
def _micro_parts(seed: int = 0):
    from diffusers import UNet2DConditionModel
    torch.manual_seed(seed)
    return UNet2DConditionModel(**MICRO_UNET), tiny_vae(seed), tiny_text_encoder(seed)


def micro_components(tokenizer) -> Components:
    """Fresh copies of the same micro models (the trainer moves and modifies the ones it gets)."""
    unet, vae, text = (copy.deepcopy(m) for m in _micro_parts())
    return Components(unet, vae, text, tokenizer, sd14_scheduler("ddpm"), "micro")


def make_examples(tokenizer, n: int, seed: int = 0) -> list[dict]:
    """Random images, blob masks, real captions with their nouns' token positions."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(RES), torch.arange(RES), indexing="ij")
    out = []
    for i in range(n):
        text, nouns = CAPTIONS[i % len(CAPTIONS)]
        masks = []
        for _ in nouns:
            cy, cx, r = torch.randint(4, RES - 4, (3,), generator=g).tolist()
            masks.append(((yy - cy) ** 2 + (xx - cx) ** 2 < (r % 9 + 3) ** 2).float())
        out.append({"pixel_values": torch.rand(3, RES, RES, generator=g) * 2 - 1, "text": text,
                    "token_indices": [word_token_indices(tokenizer, text, w) for w in nouns],
                    "masks": torch.stack(masks)})
    return out


def profile(**train):
    over = {"model.resolution": RES, "train.train_layers": LAYERS, "train.lr": 1e-3, "train.batch_size": 1,
            "train.grad_accum": 4, "train.steps": 2, "train.checkpointing_steps": 0, "train.num_workers": 0,
            "train.mixed_precision": "no", "train.token_loss_scale": 1.0, "train.pixel_loss_scale": 0.1}
    over.update({f"train.{k}": v for k, v in train.items()})
    return load_profile("tiny", over)


def grads_of(store: dict):
    def hook(step, unet):
        store[step] = {k: p.grad.detach().clone() for k, p in unet.named_parameters() if p.grad is not None}
    return hook


# --------------------------------------------------------------------------- small pure pieces

def test_plan_batches_paths_and_errors():
    fast = T.plan_batches(profile(faithful=False, mixed_precision="bf16").train)
    assert (fast.per_device_batch, fast.grad_accum, fast.mixed_precision, fast.cache_latents) == (4, 1, "bf16", True)
    slow = T.plan_batches(profile(faithful=True, mixed_precision="bf16").train)
    assert (slow.per_device_batch, slow.grad_accum, slow.mixed_precision, slow.cache_latents) == (1, 4, "no", False)
    assert fast.effective_batch == slow.effective_batch == 4
    assert T.plan_batches(profile(faithful=False).train, num_processes=2).per_device_batch == 2
    with pytest.raises(T.TrainError, match="not divisible by 3 processes"):
        T.plan_batches(profile().train, num_processes=3)
    with pytest.raises(T.TrainError, match="mixed_precision"):
        T.plan_batches(profile(mixed_precision="fp8").train)


def test_sampler_and_noise_are_pure_functions_of_seed_and_position():
    s = T.EpochSampler(10, seed=3, effective_batch=4)
    e0 = list(s)
    assert e0 == list(T.EpochSampler(10, seed=3, effective_batch=4))
    assert sorted(i for _, i in e0) == list(range(10)) and [p for p, _ in e0] == list(range(10))
    s.set_epoch(1)
    e1 = list(s)
    assert [p for p, _ in e1] == list(range(10, 20)) and [i for _, i in e1] != [i for _, i in e0]
    assert len(T.EpochSampler(10, 0, 4, tail="drop")) == 8
    a = T.draw_sample_noise(0, 7, (4, 2, 2), 1000)
    b = T.draw_sample_noise(0, 7, (4, 2, 2), 1000)
    c = T.draw_sample_noise(0, 8, (4, 2, 2), 1000)
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["noise"], c["noise"])
    assert 0 <= int(a["timestep"]) < 1000 and not torch.equal(a["noise"], a["posterior_eps"])


@pytest.mark.parametrize("antialias", [False, True])
def test_binary_masks_per_resolution_give_identical_losses(antialias):
    """Masks shipped as bool at each loss resolution equal the loss on the original float masks."""
    g = torch.Generator().manual_seed(0)
    masks = [torch.rand(2, 64, 64, generator=g) * (torch.rand(2, 64, 64, generator=g) > 0.7),
             torch.rand(1, 64, 64, generator=g).round()]
    idx = [[[2], [5, 6]], [[3]]]
    maps = {f"up_{r}": [torch.rand(2, 2, r * r, 77, generator=g).softmax(-1) for _ in range(2)] for r in (8, 16)}
    layers = list(maps)
    ref = grounding_losses(maps, GroundingTargets(idx, masks), layers, antialias)
    per_res = [T.masks_by_resolution(m, [8, 16], antialias) for m in masks]
    ours = T.grounding_terms(maps, idx, per_res, layers, antialias)
    for k in ref:
        assert torch.equal(ref[k], ours[k]), k


# --------------------------------------------------------------------------- the trainer

def test_fast_and_faithful_paths_match_in_fp32(tokenizer, tmp_path):
    """Same losses and (clipped) gradients per optimizer step: batch 1 × 4 accumulation vs batch 4,
    VAE at every step vs cached posterior, with a short last step at the epoch end (6 = 4 + 2).

    The paths sum in different orders, so results agree to float rounding scaled to each tensor's
    magnitude. Adam's eps is 1 here: with the default 1e-8 the first update is lr·sign(g), which turns
    a rounding-level difference in a near-zero gradient entry into a full ±lr weight difference and
    step 2 would compare that chaos, not the maths (the optimizer is the same in both paths)."""
    data = make_examples(tokenizer, 6)
    runs = {}
    for name, over in {"faithful": dict(faithful=True), "fast": dict(faithful=False),
                       "fast_ckpt": dict(faithful=False, gradient_checkpointing=True)}.items():
        grads: dict = {}
        res = T.train(profile(adam_epsilon=1.0, **over), data, tmp_path / name,
                      components=micro_components(tokenizer), grad_hook=grads_of(grads), progress=False)
        runs[name] = (res, grads)
    (slow, g_slow), (fast, g_fast) = runs["faithful"], runs["fast"]
    assert slow.summary["plan"]["grad_accum"] == 4 and fast.summary["plan"]["per_device_batch"] == 4
    assert list(slow.log["samples"]) == list(fast.log["samples"]) == [4, 2]
    cols = ["loss", "denoise", "token", "pixel", "grad_norm"] + [f"token/{g}" for g in LAYERS]
    for c in cols:                                     # grad_norm is the norm before clipping
        assert_close_scaled(fast.log[c].to_numpy(), slow.log[c].to_numpy(), rtol=1e-5, msg=c)
    assert (slow.log["token"] > 0).all() and (slow.log["pixel"] > 0).all()
    for other in (g_fast, runs["fast_ckpt"][1]):
        for step in (1, 2):
            assert set(other[step]) == set(g_slow[step])
            for k, ref in g_slow[step].items():        # measured worst: 1e-5 (1 or 2 threads, AMD EPYC)
                assert_close_scaled(other[step][k], ref, rtol=1e-4, msg=f"step {step} {k}")


def test_short_last_batch_weighs_as_in_batch_one_accumulation(tokenizer, tmp_path):
    """The epoch's short last step (6 = 4 + 2) sums its 2 samples' gradients, each divided by 4, on both
    paths. Clipping is off (max_grad_norm huge), so a weight of 2/4 vs 1 cannot hide behind a clipped norm."""
    data = make_examples(tokenizer, 6, seed=3)
    grads: dict = {}
    logs = {}
    for name, faithful in (("faithful", True), ("fast", False)):
        grads[name] = {}
        res = T.train(profile(faithful=faithful, max_grad_norm=1e9, adam_epsilon=1.0), data, tmp_path / name,
                      components=micro_components(tokenizer), grad_hook=grads_of(grads[name]), progress=False)
        logs[name] = res.log
    assert logs["fast"]["samples"].tolist() == [4, 2]
    assert_close_scaled(logs["fast"]["grad_norm"], logs["faithful"]["grad_norm"], rtol=1e-5, msg="grad_norm")
    for step in (1, 2):
        for k, ref in grads["faithful"][step].items():
            assert_close_scaled(grads["fast"][step][k], ref, rtol=1e-4, msg=f"step {step} {k}")


def test_resume_after_a_stop_matches_uninterrupted_run_and_exports(tokenizer, tmp_path):
    """A clean stop at a step boundary (``stop_at``), resumed; the real SIGKILL is the ``sigkilled`` test."""
    data = make_examples(tokenizer, 6, seed=1)
    P = profile(faithful=False, steps=4, checkpointing_steps=2, checkpoints_total_limit=1)
    full = T.train(P, data, tmp_path / "full", components=micro_components(tokenizer), progress=False)
    part = T.train(P, data, tmp_path / "killed", components=micro_components(tokenizer), stop_at=3, progress=False)
    assert not part.completed and part.unet_dir is None and len(part.log) == 3
    assert [s for s, _ in T.list_checkpoints(tmp_path / "killed")] == [2]
    again = T.train(P, data, tmp_path / "killed", components=micro_components(tokenizer), progress=False)
    assert again.summary["resumed_from"].endswith("checkpoint-2") and again.summary["steps_this_call"] == 2
    cols = [c for c in full.log.columns if c not in ("grad_norm",)]
    np.testing.assert_allclose(again.log[cols].to_numpy(float), full.log[cols].to_numpy(float), rtol=1e-6)
    assert len(full.log) == 4 and full.log["epoch"].tolist() == [0, 0, 1, 1]
    assert full.log["samples"].tolist() == [4, 2, 4, 2]          # 6 examples: a short step ends each epoch
    # only the newest `checkpoints_total_limit` checkpoints are kept
    assert [s for s, _ in T.list_checkpoints(tmp_path / "full")] == [4]
    # export: a diffusers folder with safetensors, loadable by reprolib and by plain diffusers
    from diffusers import UNet2DConditionModel
    unet_dir = full.unet_dir
    assert (unet_dir / "diffusion_pytorch_model.safetensors").is_file() and (unet_dir / "config.json").is_file()
    u1, u2 = load_unet(str(unet_dir)), UNet2DConditionModel.from_pretrained(str(unet_dir))
    u3 = load_unet(str(again.unet_dir))
    for k, v in u1.state_dict().items():
        assert torch.equal(v, u2.state_dict()[k]) and torch.equal(v, u3.state_dict()[k]), k
    start = micro_components(tokenizer).unet.state_dict()
    assert any(not torch.equal(start[k], v) for k, v in u1.state_dict().items())   # it trained
    # logs and summary
    log = __import__("pandas").read_csv(tmp_path / "full" / T.LOG_FILE)
    assert {"denoise", "token", "pixel", "token/up_16", "pixel/mid_2", "lr", "grad_norm"} <= set(log.columns)
    summary = json.loads((tmp_path / "full" / T.SUMMARY_FILE).read_text())
    assert summary["steps"] == 4 and summary["completed"] and summary["images_per_s"] > 0
    assert "sha" in summary["git"] and summary["hardware"]["cpu_count"] >= 1
    fig = T.plot_losses(full.log)
    assert len(fig.axes) == 3
    # a checkpoint from other settings is refused, naming the setting
    with pytest.raises(T.TrainError, match="lr=0.001"):
        T.train(profile(faithful=False, steps=5, lr=2e-3), data, tmp_path / "full",
                components=micro_components(tokenizer), progress=False)


_KILLED_TRAINING = """
import torch
torch.set_num_threads({threads})
import _kill
_kill.hang_in_write("*/.checkpoint-3.tmp/log.csv", 1, {marker!r})    # SIGKILLed while checkpoint 3 is written
import test_train as tt
from reprolib import train as T
from reprolib.models import clip_tokenizer
tok = clip_tokenizer()
T.train(tt.KILL_PROFILE(), tt.make_examples(tok, 6, seed=1), {out!r}, components=tt.micro_components(tok),
        progress=False)
"""


def KILL_PROFILE():
    return profile(faithful=False, steps=5, checkpointing_steps=1, checkpoints_total_limit=2)


def test_training_sigkilled_mid_checkpoint_resumes_to_the_uninterrupted_result(tokenizer, tmp_path):
    """A training process SIGKILLed while writing checkpoint 3 (accelerate's state saved, its log half
    written, the folder not yet renamed), then resumed: the unfinished checkpoint is discarded, training
    restarts from checkpoint 2 (steps 3-5 only), and the log and exported weights equal an uninterrupted run's."""
    import _kill
    data = make_examples(tokenizer, 6, seed=1)
    full = T.train(KILL_PROFILE(), data, tmp_path / "full", components=micro_components(tokenizer), progress=False)
    out, marker = tmp_path / "killed", tmp_path / "marker"
    _kill.run_killed(_KILLED_TRAINING.format(threads=torch.get_num_threads(), marker=str(marker), out=str(out)),
                     marker.exists)
    assert [s for s, _ in T.list_checkpoints(out)] == [1, 2] and (out / ".checkpoint-3.tmp").is_dir()
    assert any(n.startswith(".checkpoint-3.tmp/.log.csv.") for n in _kill.leftovers(out))    # the half-written log
    again = T.train(KILL_PROFILE(), data, out, components=micro_components(tokenizer), progress=False)
    assert again.summary["resumed_from"].endswith("checkpoint-2") and again.summary["steps_this_call"] == 3
    assert _kill.leftovers(out) == [] and [s for s, _ in T.list_checkpoints(out)] == [4, 5]
    cols = [c for c in full.log.columns if c != "grad_norm"]
    np.testing.assert_array_equal(again.log[cols].to_numpy(float), full.log[cols].to_numpy(float))
    a, b = load_unet(str(full.unet_dir)).state_dict(), load_unet(str(again.unet_dir)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_clean_interrupted_restores_a_checkpoint_moved_aside_and_drops_unfinished_ones(tmp_path):
    """A kill between "move the old checkpoint-N aside" and "move the new one in" leaves only
    ``.checkpoint-N.old``: it is put back. Unfinished folders and dead writers' temporary files go."""
    old = tmp_path / ".checkpoint-4.old"
    old.mkdir()
    (old / T.STATE_FILE).write_text("{}")
    (tmp_path / ".checkpoint-5.tmp").mkdir()
    (tmp_path / ".unet.tmp").mkdir()
    kept = tmp_path / ".checkpoint-2.old"
    kept.mkdir()
    (tmp_path / "checkpoint-2").mkdir()                  # its replacement did arrive: the old copy goes
    from reprolib.io import HOST
    (tmp_path / f".log.csv.pid999999999@{HOST}.x1.tmp").write_text("half")
    done = T.clean_interrupted(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert (tmp_path / "checkpoint-4" / T.STATE_FILE).is_file()
    assert done == ["removed .checkpoint-2.old", "restored checkpoint-4", "removed .checkpoint-5.tmp",
                    "removed .unet.tmp", "removed 1 temporary files"]


def test_lambda_zero_is_a_plain_diffusion_fine_tune_step(tokenizer, tmp_path):
    """With λ = 0 nothing is captured and one step equals a hand-written SD fine-tuning step.

    Adam's eps is 1 (see the parity test above) so the update is a smooth function of the gradient and
    the two updates agree to rounding; the reference reads eps from the profile, so a trainer that
    ignored ``train.adam_epsilon`` would fail here. lr is 1 so that the update stands well above the
    rounding of the fp32 weights it is added to."""
    from diffusers.models.attention_processor import AttnProcessor2_0
    import torch.nn.functional as F

    data = make_examples(tokenizer, 4, seed=2)
    P = profile(faithful=False, steps=1, token_loss_scale=0.0, pixel_loss_scale=0.0, max_grad_norm=1e9,
                adam_epsilon=1.0, lr=1.0)
    comps = micro_components(tokenizer)
    grads: dict = {}
    res = T.train(P, data, tmp_path / "plain", components=comps, grad_hook=grads_of(grads), progress=False)
    assert all(isinstance(p, AttnProcessor2_0) for p in comps.unet.attn_processors.values())
    assert not res.summary["grounding_losses"] and "token" not in res.log.columns

    # the hand-written step, in float64: the comparisons then measure only the trainer's fp32 rounding
    ref = micro_components(tokenizer)
    f64 = torch.float64
    for m in (ref.unet, ref.vae, ref.text_encoder):
        m.to(f64)
    order = list(T.EpochSampler(len(data), P.train.seed, 4))[:4]
    sched = ref.scheduler
    px = torch.stack([data[i]["pixel_values"] for _, i in order]).to(f64)
    draws = [T.draw_sample_noise(P.train.seed, pos, (4, 16, 16), 1000) for pos, _ in order]
    with torch.no_grad():
        dist = ref.vae.encode(px).latent_dist
        latents = (dist.mean + dist.std * torch.stack([d["posterior_eps"] for d in draws]).to(f64)) * 0.18215
        ids = torch.stack([T.tokenize(tokenizer, data[i]["text"]) for _, i in order])
        enc = ref.text_encoder(ids)[0]
    noise = torch.stack([d["noise"] for d in draws]).to(f64)
    t = torch.stack([d["timestep"] for d in draws])
    noisy = sched.add_noise(latents, noise, t)
    assert noisy.dtype == f64
    pred = ref.unet(noisy, t, enc).sample
    loss = F.mse_loss(pred, noise)
    loss.backward()
    assert res.log["loss"].iloc[0] == pytest.approx(loss.item(), rel=1e-5)
    for k, p in ref.unet.named_parameters():         # measured worst: 0.05 of rtol (1 or 2 threads)
        assert_close_scaled(grads[1][k], p.grad, rtol=1e-4, msg=k)
    start = {k: v.clone() for k, v in ref.unet.state_dict().items()}
    c = P.train
    opt = torch.optim.AdamW(ref.unet.parameters(), lr=c.lr, betas=(c.adam_beta1, c.adam_beta2),
                            weight_decay=c.adam_weight_decay, eps=c.adam_epsilon)
    opt.step()
    trained = load_unet(str(res.unet_dir)).state_dict()
    for k, v in ref.unet.state_dict().items():
        assert_update_close(trained[k], start[k], v - start[k], rtol=1e-4, msg=f"update of {k}")


# --------------------------------------------------------------------------- bad inputs

def _write_records(root, tokenizer):
    from reprolib.data import write_records
    g = np.random.default_rng(0)
    items = []
    for text, nouns in CAPTIONS[:4]:
        masks = {}
        for w in nouns:
            m = np.zeros((RES, RES), bool)
            y, x = g.integers(0, RES - 8, 2)
            m[y:y + 8, x:x + 8] = True
            masks[w] = m
        items.append((g.integers(0, 255, (RES, RES, 3), dtype=np.uint8), text, masks))
    # a noun absent from its caption (skipped and counted, not fatal)
    items[0][2]["zebra"] = np.ones((RES, RES), bool)
    return write_records(root, items, progress=False)


def test_records_noun_missing_from_caption_is_skipped_and_counted(tokenizer, tmp_path):
    _write_records(tmp_path / "data", tokenizer)
    P = load_profile("tiny", {"model.resolution": RES, "data.root": str(tmp_path / "data"), "data.source": "coco",
                              "train.train_layers": LAYERS, "train.steps": 1, "train.faithful": False,
                              "train.checkpointing_steps": 0, "train.grad_accum": 2})
    res = T.train(P, None, tmp_path / "run", components=micro_components(tokenizer), progress=False)
    assert res.completed and res.summary["skipped_nouns"] == 1 and res.summary["examples_checked_for_skips"] == 4
    assert list(res.log["samples"]) == [2]
    # the records' fingerprint keys the latent cache on disk
    assert len(list((tmp_path / "run" / "cache").glob("latents-*.safetensors"))) == 1


def test_records_with_missing_mask_file_fail_naming_it(tokenizer, tmp_path):
    from reprolib.data import DataError
    rows = _write_records(tmp_path / "data", tokenizer)
    gone = tmp_path / "data" / rows[1]["attn_list"][0][1]
    gone.unlink()
    P = load_profile("tiny", {"model.resolution": RES, "data.root": str(tmp_path / "data"), "data.source": "coco",
                              "train.train_layers": LAYERS})
    with pytest.raises(DataError, match=str(gone.name)):
        T.train(P, None, tmp_path / "run", components=micro_components(tokenizer), progress=False)


def test_missing_model_path_fails_before_any_work(tmp_path):
    P = load_profile("tiny", {"model.pretrained": str(tmp_path / "no_such_model")})
    with pytest.raises(ModelLoadError, match="no_such_model"):
        T.train(P, [], tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_dataset_items_are_checked(tokenizer, tmp_path):
    bad = make_examples(tokenizer, 2)
    bad[1]["masks"] = bad[1]["masks"][:1]                       # 2 nouns, 1 mask
    with pytest.raises(T.TrainError, match="example 1: 2 grounded words but 1 masks"):
        T.train(profile(faithful=False, steps=1), bad, tmp_path / "run",
                components=micro_components(tokenizer), progress=False)
    with pytest.raises(T.TrainError, match="layer group"):
        T.layer_resolution("upper")
    assert math.isfinite(T.mix_seed("x", 1))


def test_benchmark_script_runs_at_tiny_size_on_cpu(capsys):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"
    spec = importlib.util.spec_from_file_location("train_step_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--tiny", "--device", "cpu", "--batch", "2", "--steps", "1", "--warmup", "0"])
    lines = capsys.readouterr().out.splitlines()
    assert [ln[:3] for ln in lines[1:4]] == ["(a)", "(b)", "(c)"] and lines[4].startswith("ratios:")
    assert out["a"]["batch"] == 1 and out["b"]["batch"] == out["c"]["batch"] == 2
    assert out["speedup_b_over_a"] > 0 and out["overhead_b_over_c"] > 0


def test_resume_refuses_a_base_whose_weights_changed_at_the_same_path(tmp_path):
    """A fine-tune resumed after the model at ``model.pretrained`` was replaced (same path, new weights)
    must not silently continue: the fingerprint holds the weights' sha256 and the check names the cause."""
    from safetensors.torch import save_file
    base = tmp_path / "base"
    (base / "unet").mkdir(parents=True)
    save_file({"w": torch.zeros(3)}, base / "unet" / "diffusion_pytorch_model.safetensors")
    P = load_profile("tiny", {"model.pretrained": str(base)})

    def fingerprint():
        return {"pretrained": P.model.pretrained, "pretrained_weights": T.weights_identity(P.model.pretrained)}

    old = fingerprint()
    T._check_resume({"fingerprint": old}, fingerprint(), tmp_path / "checkpoint-1")   # same weights: fine
    save_file({"w": torch.ones(3)}, base / "unet" / "diffusion_pytorch_model.safetensors")
    new = fingerprint()
    assert new["pretrained_weights"] != old["pretrained_weights"]
    with pytest.raises(T.TrainError, match="other weights at"):
        T._check_resume({"fingerprint": old}, new, tmp_path / "checkpoint-1")
