"""Tests that kill mutmut survivors of reprolib.runner (see tests/MUTATION.md).

The cache logic runs in-process with a stand-in for papermill (``execute_stage`` writes the output
notebook and records the call): every cache decision is checked without starting a kernel.
"""
from __future__ import annotations

import json

import pytest

from reprolib import runner


@pytest.fixture()
def world(tmp_path, monkeypatch):
    """Stage notebooks 01, 02 (reads 01), 03 (reads 02), 06 (reads none); a fake executor; a source digest
    that the test can change."""
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    for name in ("01_a", "02_b", "03_c", "06_d"):
        (nbs / f"{name}.ipynb").write_text(json.dumps({"cells": [], "name": name}))
    (nbs / "10_not_a_stage.txt").write_text("")
    ran: list[tuple[str, dict]] = []

    def execute(stage, output, parameters, kernel="python3"):
        ran.append((stage.id, json.loads(json.dumps(parameters))))
        output.write_text("{}")
    monkeypatch.setattr(runner, "execute_stage", execute)
    code = {"digest": "code-1"}
    monkeypatch.setattr(runner, "source_digest", lambda root=None: code["digest"])
    out = tmp_path / "stages"
    quiet = dict(notebooks=nbs, stage_dir=out, log=lambda *_: None)
    return nbs, out, ran, code, quiet


def _ids(ran):
    return [s for s, _ in ran]


def test_cache_reruns_exactly_what_changed(world):
    nbs, out, ran, code, quiet = world
    assert runner.run_stages("tiny", {"seed": 1}, **quiet) == [("01", "ran"), ("02", "ran"), ("03", "ran"), ("06", "ran")]
    assert ran[0] == ("01", {"profile": "tiny", "overrides": {"seed": 1}})
    assert runner.run_stages("tiny", {"seed": 1}, **quiet) == [(s, "cached") for s in ("01", "02", "03", "06")]
    cache = json.loads((out / runner.CACHE_FILE).read_text())
    assert set(cache["01"]) == {"key", "profile", "overrides", "seconds", "finished"}
    assert cache["01"]["profile"] == "tiny" and cache["01"]["overrides"] == {"seed": 1} and cache["01"]["seconds"] >= 0
    # a deleted executed notebook is not "cached"
    (out / "02_b.ipynb").unlink()
    ran.clear()
    assert runner.run_stages("tiny", {"seed": 1}, **quiet) == [("01", "cached"), ("02", "ran"), ("03", "cached"),
                                                             ("06", "cached")]
    # a notebook's bytes change: it and its downstream stages re-run, the others not
    (nbs / "02_b.ipynb").write_text(json.dumps({"cells": [], "name": "02_b", "v": 2}))
    ran.clear()
    runner.run_stages("tiny", {"seed": 1}, **quiet)
    assert _ids(ran) == ["02", "03"]
    # reprolib's source changes: every stage re-runs
    code["digest"] = "code-2"
    ran.clear()
    runner.run_stages("tiny", {"seed": 1}, **quiet)
    assert _ids(ran) == ["01", "02", "03", "06"]
    # an override changes every key; force re-runs what is cached; only picks stages
    ran.clear()
    runner.run_stages("tiny", {"seed": 2}, only=["02"], **quiet)
    assert _ids(ran) == ["02"]
    ran.clear()
    runner.run_stages("tiny", {"seed": 2}, only=["03_c", "01"], force=True, **quiet)
    assert _ids(ran) == ["01", "03"]


def test_stage_key_depends_on_each_input(tmp_path):
    (tmp_path / "02_b.ipynb").write_text("{}")
    st = runner.Stage("02", "02_b", tmp_path / "02_b.ipynb")
    a = runner.stage_key(st, {"p": 1, "q": 2}, ["k1"], "c")
    assert a == runner.stage_key(st, {"q": 2, "p": 1}, ["k1"], "c")           # parameter order is irrelevant
    assert a != runner.stage_key(st, {"p": 1, "q": 2}, ["k2"], "c")
    assert a != runner.stage_key(st, {"p": 1, "q": 2}, ["k1"], "d")
    assert a != runner.stage_key(st, {"p": 1, "q": 3}, ["k1"], "c")
    assert runner.stage_key(st, {}, ["k1", "k2"], "c") != runner.stage_key(st, {}, ["k2", "k1"], "c")
    (tmp_path / "02_b.ipynb").write_text("{ }")
    assert a != runner.stage_key(st, {"p": 1, "q": 2}, ["k1"], "c")


def test_source_digest_covers_names_and_bytes_of_py_files_only(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "notes.txt").write_text("n")
    d0 = runner.source_digest(tmp_path / "pkg")
    (tmp_path / "pkg" / "notes.txt").write_text("changed")
    assert runner.source_digest(tmp_path / "pkg") == d0
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    d1 = runner.source_digest(tmp_path / "pkg")
    assert d1 != d0
    (tmp_path / "pkg" / "a.py").rename(tmp_path / "pkg" / "b.py")
    assert runner.source_digest(tmp_path / "pkg") != d1                       # same bytes, other name
    (tmp_path / "pkg" / "sub").mkdir()
    (tmp_path / "pkg" / "sub" / "c.py").write_text("")
    assert runner.source_digest(tmp_path / "pkg") != d1
    assert len(runner.source_digest(tmp_path / "pkg")) == 64


def test_select_stages_by_id_or_name_in_stage_order_and_unknown_names(world):
    nbs, *_ = world
    stages = runner.discover_stages(nbs)
    assert [s.id for s in runner.select_stages(stages, ["06", "01_a"])] == ["01", "06"]
    assert runner.select_stages(stages, None) == stages and runner.select_stages(stages, []) == stages
    with pytest.raises(ValueError, match="^unknown stage '09'; stages: 01, 02, 03, 06$"):
        runner.select_stages(stages, ["01", "09"])


def test_parse_params_file_then_pairs_typed(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("train.steps: 5\nseed: 1\n")
    assert runner.parse_params([["seed", "3"], ["name", "x"], ["on", "true"]], str(f)) == {
        "train.steps": 5, "seed": 3, "name": "x", "on": True}
    (tmp_path / "empty.yaml").write_text("")
    assert runner.parse_params(None, str(tmp_path / "empty.yaml")) == {}
    with pytest.raises(FileNotFoundError, match="^params file not found: nope.yaml$"):
        runner.parse_params(None, "nope.yaml")


def test_death_cause_exact_words():
    gib = 2 ** 30
    assert runner.death_cause(-9, 20 * gib, gib // 4, total=24 * gib) == (
        "killed by signal 9 (SIGKILL): out of memory (kernel peak memory 20.0 GiB of 24.0 GiB); "
        "lower the batch or chunk sizes")
    assert runner.death_cause(-9, 20 * gib, None, total=24 * gib).endswith("lower the batch or chunk sizes")
    # starved: less than 5 % available (1.2 of 24 GiB) or a peak above 80 % (19.2 GiB)
    assert runner.death_cause(-9, gib, int(1.1 * gib), total=24 * gib).endswith("; lower the batch or chunk sizes")
    assert runner.death_cause(-9, gib, int(1.3 * gib), total=24 * gib) == (
        "killed by signal 9 (SIGKILL): by the out-of-memory killer or by hand (kernel peak memory 1.0 GiB of 24.0 GiB)")
    assert runner.death_cause(-9, int(19.3 * gib), None, total=24 * gib).endswith("; lower the batch or chunk sizes")
    assert runner.death_cause(-9, int(19.1 * gib), None, total=24 * gib).endswith("or by hand (kernel peak memory "
                                                                                 "19.1 GiB of 24.0 GiB)")
    assert runner.death_cause(-999, 0, None, total=gib) == (
        "killed by signal 999 (unknown signal); kernel peak memory 0.0 GiB of 1.0 GiB")
    assert runner.death_cause(-11, 0, None, total=gib) == "killed by signal 11 (SIGSEGV); kernel peak memory 0.0 GiB of 1.0 GiB"
    assert runner.death_cause(0, 0, None, total=gib) == "exited with code 0; kernel peak memory 0.0 GiB of 1.0 GiB"
    assert runner.death_cause(None, 0, None, total=gib) == "cause unknown; kernel peak memory 0.0 GiB of 1.0 GiB"
    assert runner.death_cause(None).startswith("cause unknown; kernel peak memory 0.0 GiB of ")


def test_stage_states_and_last_run(world):
    nbs, out, ran, code, quiet = world
    assert runner.last_run(out) == ("tiny", {})
    states = runner.stage_states("tiny", {}, out, nbs)
    assert [(s.stage.id, s.state) for s in states] == [("01", "missing"), ("02", "missing"), ("03", "missing"),
                                                        ("06", "missing")]
    runner.run_stages("tiny", {"seed": 1}, only=["01", "02"], **quiet)
    runner.run_stages("tiny", {"seed": 2}, only=["06"], **quiet)
    cache = json.loads((out / runner.CACHE_FILE).read_text())
    cache["06"]["finished"] = "2099-01-01T00:00:00"          # the runs above may share one clock second
    (out / runner.CACHE_FILE).write_text(json.dumps(cache))
    assert runner.last_run(out) == ("tiny", {"seed": 2})
    cache["06"]["finished"] = "2000-01-01T00:00:00"
    (out / runner.CACHE_FILE).write_text(json.dumps(cache))
    assert runner.last_run(out) == ("tiny", {"seed": 1})
    states = runner.stage_states("tiny", {"seed": 1}, out, nbs)
    assert [s.state for s in states] == ["fresh", "fresh", "missing", "stale"]
    (out / "01_a.ipynb").unlink()
    assert [s.state for s in runner.stage_states("tiny", {"seed": 1}, out, nbs)] == ["missing", "fresh", "missing",
                                                                                  "stale"]
    cache = json.loads((out / runner.CACHE_FILE).read_text())
    cache["02"] = {}
    (out / runner.CACHE_FILE).write_text(json.dumps(cache))
    assert runner.stage_states("tiny", {"seed": 1}, out, nbs)[1].state == "missing"


def test_ensure_stages_runs_only_the_stale_ones_or_names_the_command(world, monkeypatch):
    nbs, out, ran, code, quiet = world
    runner.run_stages("tiny", {"seed": 1}, **quiet)
    assert runner.ensure_stages("auto", out, nbs, log=lambda *_: None) == []
    (out / "03_c.ipynb").unlink()
    ran.clear()
    logs = []
    assert runner.ensure_stages(" RUN ", out, nbs, log=logs.append) == [("03", "ran")]
    assert _ids(ran) == ["03"] and ran[0][1] == {"profile": "tiny", "overrides": {"seed": 1}}
    assert logs[0] == "book: running the missing or stale stages first (03_c (missing)), profile 'tiny'"
    (out / "03_c.ipynb").unlink()
    code["digest"] = "code-3"
    with pytest.raises(runner.StagesNotReady, match=r"^the book needs stage notebooks that are missing or stale: "
                       r"01_a \(stale\), 02_b \(stale\), 03_c \(missing\), 06_d \(stale\); "
                       r"run `python -m reprolib run --profile tiny -p seed 1` first$"):
        runner.ensure_stages("check", out, nbs)
    monkeypatch.setenv(runner.BOOK_STAGES_ENV, "check")
    with pytest.raises(runner.StagesNotReady):
        runner.ensure_stages(None, out, nbs)
    monkeypatch.setenv(runner.BOOK_STAGES_ENV, "")
    ran.clear()
    assert [s for s, _ in runner.ensure_stages(None, out, nbs, log=lambda *_: None)] == ["01", "02", "03", "06"]
    with pytest.raises(ValueError, match=f"^{runner.BOOK_STAGES_ENV}='later': expected one of "):
        runner.ensure_stages("later", out, nbs)


def test_load_cache_of_an_empty_folder_is_empty(tmp_path):
    assert runner.load_cache(tmp_path) == {}
    (tmp_path / runner.CACHE_FILE).write_text('{"01": {"key": "k"}}')
    assert runner.load_cache(tmp_path) == {"01": {"key": "k"}}


def test_run_stages_logs_times_kernel_and_progress_bar(world, monkeypatch):
    import time as real_time
    from types import SimpleNamespace
    nbs, out, ran, code, quiet = world
    kernels = []
    monkeypatch.setattr(runner, "execute_stage", lambda st, o, p, kernel="?": (kernels.append(kernel), o.write_text("{}")))
    clock = iter([100.0])                                          # each stage starts at 100 s and ends at 112.345 s
    monkeypatch.setattr(runner, "time", SimpleNamespace(time=lambda: next(clock, 112.345), strftime=real_time.strftime))
    bars = []
    orig = runner.tqdm
    monkeypatch.setattr(runner, "tqdm", lambda *a, **kw: bars.append(kw) or orig(*a, **kw))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    logs = []
    deep = out / "a" / "b"
    runner.run_stages("tiny", {}, only=["01"], notebooks=nbs, stage_dir=deep, log=logs.append)
    assert "MPLBACKEND" not in __import__("os").environ
    assert kernels == ["python3"] and bars == [{"desc": "stages", "unit": "stage", "disable": None}]
    assert logs == ["[01] 01_a: running with profile 'tiny'", f"[01] 01_a: done in 12 s → {deep / '01_a.ipynb'}"]
    entry = json.loads((deep / runner.CACHE_FILE).read_text())["01"]
    assert entry["seconds"] == 12.3
    assert __import__("re").fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", entry["finished"])
    logs.clear()
    runner.run_stages("tiny", {}, only=["01"], notebooks=nbs, stage_dir=deep, log=logs.append)
    assert logs == ["[01] 01_a: up to date (cached)"]


def test_run_stages_bad_profile_no_notebooks_and_a_crash_forgets_the_stage(world, monkeypatch, tmp_path):
    nbs, out, ran, code, quiet = world
    with pytest.raises(Exception, match="nope"):
        runner.run_stages("nope", {}, **quiet)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"^no stage notebooks \(0\*_\*\.ipynb\) in "):
        runner.run_stages("tiny", {}, notebooks=tmp_path / "empty", stage_dir=out, log=lambda *_: None)
    runner.run_stages("tiny", {}, only=["01"], **quiet)
    code["digest"] = "changed"

    def crash(*a, **kw):
        raise RuntimeError("kernel died")
    monkeypatch.setattr(runner, "execute_stage", crash)
    with pytest.raises(RuntimeError):
        runner.run_stages("tiny", {}, only=["01"], **quiet)
    assert json.loads((out / runner.CACHE_FILE).read_text()) == {}     # the stale entry is gone before the run


def test_a_missing_upstream_notebook_still_gives_consistent_keys(tmp_path, monkeypatch):
    nbs = tmp_path / "nb"
    nbs.mkdir()
    for name in ("02_b", "03_c"):                                        # 01 absent: 02's upstream key is ""
        (nbs / f"{name}.ipynb").write_text(name)
    monkeypatch.setattr(runner, "execute_stage", lambda st, o, p, kernel="python3": o.write_text("{}"))
    runner.run_stages("tiny", {}, notebooks=nbs, stage_dir=tmp_path / "out", log=lambda *_: None)
    assert [s.state for s in runner.stage_states("tiny", {}, tmp_path / "out", nbs)] == ["fresh", "fresh"]
    st = runner.discover_stages(nbs)[0]
    assert runner.stage_key(st, {}, [""], "c") == runner.stage_key(st, {}, [""], "c")


def test_last_run_ignores_junk_and_entries_without_a_time(tmp_path):
    (tmp_path / runner.CACHE_FILE).write_text(json.dumps({
        "01": {"profile": "paper", "overrides": {"seed": 4}, "finished": "2026-01-01T00:00:00"},
        "02": {"profile": "tiny"}, "03": "junk", "04": {}}))
    assert runner.last_run(tmp_path) == ("paper", {"seed": 4})


def test_stage_key_hashes_non_json_parameters_by_their_text(tmp_path):
    from pathlib import Path
    (tmp_path / "01_a.ipynb").write_text("{}")
    st = runner.Stage("01", "01_a", tmp_path / "01_a.ipynb")
    assert runner.stage_key(st, {"p": Path("x")}, [], "c") == runner.stage_key(st, {"p": "x"}, [], "c")


def test_death_cause_thresholds_are_strict():
    # exactly 5 % available or exactly 80 % peak is not yet "out of memory"
    assert "or by hand" in runner.death_cause(-9, 0, 5, total=100)
    assert "or by hand" in runner.death_cause(-9, 80, None, total=100)


def test_auto_mode_checks_instead_of_running_a_real_weights_profile(world):
    nbs, out, ran, code, quiet = world
    runner.run_stages("paper", {}, **quiet)
    (out / "03_c.ipynb").unlink()
    ran.clear()
    with pytest.raises(runner.StagesNotReady, match="run `python -m reprolib run --profile paper` first"):
        runner.ensure_stages("auto", out, nbs)
    assert ran == []
    with pytest.raises(ValueError, match=f"^{runner.BOOK_STAGES_ENV}='x': expected one of auto, run, check$"):
        runner.ensure_stages("x", out, nbs)


def test_ensure_stages_passes_its_log_on(world):
    nbs, out, ran, code, quiet = world
    runner.run_stages("tiny", {}, **quiet)
    (out / "06_d.ipynb").unlink()
    logs = []
    runner.ensure_stages("run", out, nbs, log=logs.append)
    assert logs[1] == "[06] 06_d: running with profile 'tiny'"


def test_auto_mode_runs_a_real_profile_overridden_to_tiny_models_and_tiny_is_the_default(world):
    nbs, out, ran, code, quiet = world
    assert runner.run_stages(only=["01"], **quiet) == [("01", "ran")] and ran[0][1]["profile"] == "tiny"
    runner.run_stages("paper", {"model.pretrained": "tiny"}, **quiet)
    (out / "03_c.ipynb").unlink()
    ran.clear()
    assert runner.ensure_stages("auto", out, nbs, log=lambda *_: None) == [("03", "ran")]
