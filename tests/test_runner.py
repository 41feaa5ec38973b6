"""The stage runner: order, caching like dvc repro, --only, --force, failures that keep earlier outputs."""
from __future__ import annotations

import json

import nbformat
import pytest

from reprolib import runner


def _notebook(path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "tiny"\noverrides = None')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


@pytest.fixture()
def stages(tmp_path):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    log = tmp_path / "log.txt"
    for name in ("01_first", "02_second"):
        _notebook(nbs / f"{name}.ipynb",
                  f"open({str(log)!r}, 'a').write('{name} ' + profile + ' ' + repr(overrides) + '\\n')")
    return nbs, tmp_path / "out", log


def test_runs_in_order_then_caches(stages):
    nbs, out, log = stages
    r1 = runner.run_stages("tiny", {}, notebooks=nbs, stage_dir=out, log=lambda *_: None)
    assert r1 == [("01", "ran"), ("02", "ran")]
    assert log.read_text().splitlines() == ["01_first tiny {}", "02_second tiny {}"]
    assert (out / "01_first.ipynb").is_file()
    r2 = runner.run_stages("tiny", {}, notebooks=nbs, stage_dir=out, log=lambda *_: None)
    assert r2 == [("01", "cached"), ("02", "cached")]
    r3 = runner.run_stages("tiny", {}, notebooks=nbs, stage_dir=out, force=True, only=["02"], log=lambda *_: None)
    assert r3 == [("02", "ran")]


def test_parameter_or_upstream_change_reruns_downstream(stages):
    nbs, out, log = stages
    runner.run_stages("tiny", {}, notebooks=nbs, stage_dir=out, log=lambda *_: None)
    r = runner.run_stages("tiny", {"train.steps": 3}, notebooks=nbs, stage_dir=out, log=lambda *_: None)
    assert r == [("01", "ran"), ("02", "ran")]
    assert log.read_text().splitlines()[-1] == "02_second tiny {'train.steps': 3}"
    nb = nbformat.read(str(nbs / "01_first.ipynb"), as_version=4)     # edit stage 01 only
    nb.cells[1].source += "\nx = 1"
    nbformat.write(nb, str(nbs / "01_first.ipynb"))
    r = runner.run_stages("tiny", {"train.steps": 3}, notebooks=nbs, stage_dir=out, log=lambda *_: None)
    assert r == [("01", "ran"), ("02", "ran")]                       # 02 reads 01: re-runs too


def test_source_change_invalidates_every_stage(stages, tmp_path, monkeypatch):
    """reprolib's source is part of every key: editing, adding or renaming a library file re-runs all
    stages (dvc's "dependency changed"), while an untouched source keeps them cached."""
    import shutil
    nbs, out, log = stages
    src = tmp_path / "src"
    shutil.copytree(runner.SOURCE, src, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(runner, "SOURCE", src)
    quiet = dict(notebooks=nbs, stage_dir=out, log=lambda *_: None)
    assert runner.run_stages("tiny", {}, **quiet) == [("01", "ran"), ("02", "ran")]
    assert runner.run_stages("tiny", {}, **quiet) == [("01", "cached"), ("02", "cached")]
    digests = {runner.source_digest()}
    for change in (lambda: (src / "losses.py").write_text((src / "losses.py").read_text() + "\n# edited\n"),
                   lambda: (src / "extra.py").write_text("X = 1\n"),
                   lambda: (src / "extra.py").rename(src / "extra2.py")):
        change()
        digests.add(runner.source_digest())
        assert runner.stage_states("tiny", {}, out, nbs)[0].state == "stale"
        assert runner.run_stages("tiny", {}, **quiet) == [("01", "ran"), ("02", "ran")]
    assert len(digests) == 4 and len(log.read_text().splitlines()) == 8


def test_deleted_executed_notebook_reruns_that_stage(stages):
    """A cache entry whose executed notebook is gone is not "cached": that stage runs again (its
    upstream, still present and unchanged, stays cached), and the book's check calls it missing."""
    nbs, out, log = stages
    quiet = dict(notebooks=nbs, stage_dir=out, log=lambda *_: None)
    runner.run_stages("tiny", {}, **quiet)
    (out / "02_second.ipynb").unlink()
    assert [s.state for s in runner.stage_states("tiny", {}, out, nbs)] == ["fresh", "missing"]
    assert runner.run_stages("tiny", {}, **quiet) == [("01", "cached"), ("02", "ran")]
    (out / "01_first.ipynb").unlink()
    assert runner.run_stages("tiny", {}, only=["01"], **quiet) == [("01", "ran")]
    assert (out / "01_first.ipynb").is_file()
    assert log.read_text().splitlines() == ["01_first tiny {}", "02_second tiny {}", "02_second tiny {}",
                                            "01_first tiny {}"]


def test_failing_stage_names_partial_notebook_and_keeps_earlier(stages):
    nbs, out, _ = stages
    runner.run_stages("tiny", {}, notebooks=nbs, stage_dir=out, log=lambda *_: None)
    _notebook(nbs / "02_second.ipynb", "raise ValueError('boom in stage two')")
    with pytest.raises(runner.StageFailed, match=r"stage 02_second failed: ValueError: boom in stage two "
                                                 r"\(partial notebook: .*02_second.ipynb\)"):
        runner.run_stages("tiny", {}, notebooks=nbs, stage_dir=out, log=lambda *_: None)
    cache = json.loads((out / runner.CACHE_FILE).read_text())
    assert "01" in cache and "02" not in cache and (out / "01_first.ipynb").is_file()


def test_bad_inputs_fail_fast(stages):
    nbs, out, _ = stages
    with pytest.raises(ValueError, match="unknown stage '07'"):
        runner.run_stages("tiny", {}, only=["07"], notebooks=nbs, stage_dir=out)
    with pytest.raises(ValueError, match="unknown profile field: train.nope"):
        runner.run_stages("tiny", {"train.nope": 1}, notebooks=nbs, stage_dir=out)


def test_params_parsing(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("train.steps: 5\nmultigen.checkpoints: [sd14]\n")
    parsed = runner.parse_params([["train.steps", "7"], ["lr", "1e-4"]], str(f))
    assert parsed["train.steps"] == 7 and parsed["multigen.checkpoints"] == ["sd14"]
    from reprolib.config import load_profile
    assert load_profile("tiny", parsed).train.lr == 1e-4      # YAML keeps 1e-4 as text; the profile types it
    with pytest.raises(FileNotFoundError, match="params file not found: nope.yaml"):
        runner.parse_params(None, "nope.yaml")


def test_glued_figures_carry_png_even_with_mplbackend_agg(tmp_path, monkeypatch):
    """MPLBACKEND=Agg in the caller's environment must not strip the PNGs the book glues."""
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _notebook(nbs / "01_fig.ipynb", "import matplotlib.pyplot as plt\nfrom myst_nb import glue\n"
                                    "fig, ax = plt.subplots()\nax.plot([0, 1])\nglue('x_fig', fig, display=False)")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    runner.run_stages("tiny", {}, notebooks=nbs, stage_dir=tmp_path / "out", log=lambda *_: None)
    nb = nbformat.read(str(tmp_path / "out" / "01_fig.ipynb"), as_version=4)
    glued = [o for c in nb.cells for o in c.get("outputs", [])
             if o.get("metadata", {}).get("scrapbook", {}).get("name") == "x_fig"]
    assert glued and any("image/png" in k for k in glued[0]["data"])


def test_dead_kernel_names_stage_cause_and_honest_partial_notebook(stages):
    """A kernel killed mid-stage (as the out-of-memory killer does) is reported with the stage, the
    signal and the kernel's peak memory, and the partial notebook shows what did not run as pending."""
    nbs, out, _ = stages
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "tiny"\noverrides = None')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"),
                nbformat.v4.new_code_cell("y = 2")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(nbs / "02_second.ipynb"))
    with pytest.raises(runner.StageFailed, match=r"stage 02_second failed: kernel died, killed by signal 9 \(SIGKILL\)"
                                                 r".*kernel peak memory \d+\.\d GiB of \d+\.\d GiB.*"
                                                 r"\(partial notebook: .*02_second.ipynb\)"):
        runner.run_stages("tiny", {}, notebooks=nbs, stage_dir=out, log=lambda *_: None)
    done = nbformat.read(str(out / "02_second.ipynb"), as_version=4)
    status = [c.metadata.papermill["status"] for c in done.cells]
    # papermill's injected-parameters cell comes after the parameters cell
    assert status == ["completed", "completed", "completed", "failed", "pending"], status
    assert done.cells[3].outputs[-1]["ename"] == "DeadKernelError"
    assert "SIGKILL" in done.cells[3].outputs[-1]["evalue"]
    cache = json.loads((out / runner.CACHE_FILE).read_text())
    assert "01" in cache and "02" not in cache and (out / "01_first.ipynb").is_file()


@pytest.mark.parametrize("code, peak, avail, expected", [
    (-9, 20 * 2 ** 30, 2 ** 28, "killed by signal 9 (SIGKILL): out of memory (kernel peak memory 20.0 GiB of 24.0 GiB)"),
    (-9, 2 ** 30, 10 * 2 ** 30, "killed by signal 9 (SIGKILL): by the out-of-memory killer or by hand"),
    (-11, 2 ** 30, 10 * 2 ** 30, "killed by signal 11 (SIGSEGV); kernel peak memory 1.0 GiB"),
    (3, 0, None, "exited with code 3"),
    (None, 0, None, "cause unknown"),
])
def test_death_cause_in_words(code, peak, avail, expected):
    assert expected in runner.death_cause(code, peak, avail, total=24 * 2 ** 30)


# --------------------------------------------------------------------------- the book's own check

def test_book_check_names_missing_then_stale_stages_and_the_command(stages):
    """What ``jupyter-book build book`` does with REPROLIB_BOOK_STAGES=check: one line naming each missing or
    stale stage and the command that (re)produces them with the last run's profile and overrides."""
    nbs, out, _ = stages
    with pytest.raises(runner.StagesNotReady) as e:
        runner.ensure_stages("check", stage_dir=out, notebooks=nbs)
    assert "01_first (missing), 02_second (missing)" in str(e.value)
    assert "`python -m reprolib run --profile tiny` first" in str(e.value) and "\n" not in str(e.value)
    runner.run_stages("tiny", {"train.steps": 3}, notebooks=nbs, stage_dir=out, log=lambda *_: None)
    assert runner.last_run(out) == ("tiny", {"train.steps": 3})
    assert runner.ensure_stages("check", stage_dir=out, notebooks=nbs) == []        # all fresh: nothing to do
    nb = nbformat.read(str(nbs / "02_second.ipynb"), as_version=4)
    nb.cells[1].source += "\ny = 2"
    nbformat.write(nb, str(nbs / "02_second.ipynb"))
    with pytest.raises(runner.StagesNotReady, match=r"02_second \(stale\); run `python -m reprolib run --profile "
                                                    r"tiny -p train.steps 3` first"):
        runner.ensure_stages("check", stage_dir=out, notebooks=nbs)


def test_book_runs_missing_or_stale_stages_through_the_cache(stages):
    """On a tiny profile (``auto``) the book build runs what is missing, through the cache, then nothing."""
    nbs, out, log = stages
    ran = runner.ensure_stages("auto", stage_dir=out, notebooks=nbs, log=lambda *_: None)
    assert ran == [("01", "ran"), ("02", "ran")]
    assert runner.ensure_stages("auto", stage_dir=out, notebooks=nbs, log=lambda *_: None) == []
    (out / "02_second.ipynb").unlink()                                   # an executed notebook lost
    assert runner.ensure_stages("run", stage_dir=out, notebooks=nbs, log=lambda *_: None) == [("02", "ran")]
    assert log.read_text().splitlines() == ["01_first tiny {}", "02_second tiny {}", "02_second tiny {}"]
    with pytest.raises(ValueError, match="REPROLIB_BOOK_STAGES='later'"):
        runner.ensure_stages("later", stage_dir=out, notebooks=nbs)


def test_book_stops_rather_than_start_a_real_weights_run(stages, monkeypatch):
    """``auto`` never starts a paper-profile run from a docs build: it stops and says what to run."""
    nbs, out, _ = stages
    runner.run_stages("tiny", {}, notebooks=nbs, stage_dir=out, log=lambda *_: None)
    cache = json.loads((out / runner.CACHE_FILE).read_text())
    cache["02"].update(profile="paper", finished="9999-01-01T00:00:00")    # the last run was the paper profile
    (out / runner.CACHE_FILE).write_text(json.dumps(cache))
    with pytest.raises(runner.StagesNotReady, match=r"run `python -m reprolib run --profile paper` first"):
        runner.ensure_stages("auto", stage_dir=out, notebooks=nbs)
