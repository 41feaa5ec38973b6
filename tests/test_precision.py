"""One precision policy for every stage (reprolib.config.effective_precision): the request on an
accelerator, fp32 on CPU with a warning naming the profile field. Each stage's precision choice is
checked here on CPU with a half-precision request."""
from __future__ import annotations

import warnings

import pytest
import torch

from reprolib.config import ConfigError, effective_precision, load_profile, precision_dtype


@pytest.mark.parametrize("requested", ["fp16", "bf16"])
def test_half_precision_on_cpu_runs_fp32_with_a_warning(requested):
    with pytest.warns(UserWarning, match=f"editing.precision = {requested} on CPU: running in fp32"):
        assert precision_dtype(requested, "cpu", "editing.precision") == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert effective_precision(requested, "cuda", "k") == requested          # accelerators: the request
        assert effective_precision(requested, torch.device("cuda", 1), "k") == requested
        assert effective_precision("no", "cpu", "train.mixed_precision") == "fp32"
        assert precision_dtype("fp32", "cpu", "k") == torch.float32
    assert precision_dtype("bf16", "cuda", "k") == torch.bfloat16
    assert precision_dtype("fp16", "cuda", "k") == torch.float16
    with pytest.raises(ConfigError, match="multigen.precision must be one of fp32, fp16, bf16, got 'fp8'"):
        effective_precision("fp8", "cuda", "multigen.precision")


def test_editing_base_on_cpu_is_fp32_whatever_the_request():
    from reprolib.editing import load_base
    with pytest.warns(UserWarning, match="editing.precision = fp16 on CPU"):
        comps = load_base("tiny", 0, "fp16", "cpu")
    assert {m.dtype for m in (comps.unet, comps.vae, comps.text_encoder)} == {torch.float32}


def test_edit_signature_records_the_precision_the_edits_are_made_in(monkeypatch, tmp_path):
    from reprolib import editing
    seen = {}

    def fake_edit_records(records, comps, out_root, options, device, signature, progress):
        seen.update(signature)
        return __import__("pandas").DataFrame({"id": []})
    monkeypatch.setattr(editing, "edit_records", fake_edit_records)
    monkeypatch.setattr(editing, "checkpoint_components", lambda base, ckpt, name, seed: base)
    monkeypatch.setattr(editing, "run_signature", lambda options, ckpt, base, precision: {"precision": precision})
    with pytest.warns(UserWarning, match="editing.precision = fp16 on CPU"):
        editing.edit_checkpoints([], object(), "tiny", ["sd14"], editing.BLDOptions(), tmp_path, "cpu", "fp16")
    assert seen["precision"] == "fp32"


def test_multigen_generation_and_detection_on_cpu_are_fp32(monkeypatch):
    from reprolib import detection, multigen
    P = load_profile("paper", {"device": "cpu", "multigen.precision": "bf16"})
    with pytest.warns(UserWarning, match="multigen.precision = bf16 on CPU"):
        assert multigen.gen_settings(P).precision == "fp32"
    assert multigen.gen_settings(load_profile("paper", {"multigen.precision": "bf16"}), "cuda").precision == "bf16"
    seen = {}
    monkeypatch.setattr(detection, "owlv2_detector", lambda model, proc, device, dtype, name: seen.update(dtype=dtype))
    with pytest.warns(UserWarning, match="multigen.precision = fp16 on CPU"):
        detection.load_detector(detection.TINY_OWLV2, device="cpu", precision="fp16")
    assert seen["dtype"] == torch.float32


def test_training_on_cpu_runs_without_mixed_precision(tokenizer, tmp_path):
    from test_train import make_examples, micro_components, profile

    from reprolib import train as T
    P = profile(faithful=False, steps=1, mixed_precision="bf16")
    with pytest.warns(UserWarning, match="train.mixed_precision = bf16 on CPU"):
        res = T.train(P, make_examples(tokenizer, 4), tmp_path / "run", components=micro_components(tokenizer),
                      progress=False)
    assert res.summary["plan"]["mixed_precision"] == "no"
    from reprolib.models import load_unet
    assert {p.dtype for p in load_unet(str(res.unet_dir)).parameters()} == {torch.float32}
