"""benchmarks/gpu_suite.py runs every part on toy models on CPU and writes the JSON the GPU run would."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = mod                   # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _numbers(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _numbers(v)
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield x


def test_gpu_suite_runs_every_part_on_toy_models(tmp_path, capsys):
    suite = _load()
    out = tmp_path / "suite.json"
    suite.main(["--tiny", "--device", "cpu", "--budget", "30", "--keep-going", "--steps", "2",
                "--out", str(out)])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["mode"] == "tiny" and result["device"] == "cpu" and result["total_s"] > 0
    for part, keys in suite.PART_KEYS.items():
        r = result["parts"][part]
        assert "error" not in r and "skipped" not in r, (part, r)
        missing = [k for k in keys if k not in r]
        assert not missing, f"{part} lacks {missing}"
        assert all(math.isfinite(v) and v >= 0 for v in _numbers(r)), part
        assert part in printed
    t = result["parts"]["train"]
    assert t["retrain_steps"] == 24500 and t["paper_batch"] == 4 and t["b_paper_batch"]["batch"] == 4
    assert math.isclose(t["retrain_hours"]["fast_b_at_paper_batch"], 24500 * t["b_paper_batch"]["step_s"] / 3600)
    assert result["parts"]["multigen"]["fast"]["images"] >= result["parts"]["multigen"]["fast"]["batch"]
    assert "24,500 steps at batch 4" in printed


def test_gpu_suite_records_a_failing_part_and_runs_the_rest(tmp_path, monkeypatch):
    suite = _load()

    def broken(S, cap):
        raise RuntimeError("boom")

    monkeypatch.setattr(suite, "part_detection", broken)
    result = suite.run_suite(tiny=True, device="cpu", budget=10, parts=["detection", "bld"], steps=2,
                             log=lambda s: None, keep_going=True)
    assert result["parts"]["detection"]["error"] == "RuntimeError: boom"
    assert result["parts"]["bld"]["seconds_per_image"] > 0
