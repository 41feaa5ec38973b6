"""Mutation testing of the product's maths and logic with mutmut (``pip install -e ".[mutation]"``).

    python scripts/mutation.py                 every module below, then the table of survivors per module
    python scripts/mutation.py losses runner   those modules only
    python scripts/mutation.py --all losses    re-test every mutant, killed ones too
    python scripts/mutation.py --report        the table of the last runs, running nothing
    python scripts/mutation.py --baseline runner   the runner without tests/test_mut_* (its "before" count)

Not in CI: it takes tens of minutes on 2 cores. Results are kept in ``build/mutation/mutants``; a rerun
tests only the mutants not yet killed (mutmut resets those of a function whose source changed).
``cd build/mutation && mutmut show <name>`` prints one mutant's diff (``build/mutation-runner`` for the
runner, which has a root and tests of its own: see ``OWN_TESTS``). tests/MUTATION.md explains every
survivor. Which functions are mutated is the table ``FUNCS``: whole modules where all of it is maths or
logic; elsewhere the scoring, statistics and cache logic. Model loading, plotting, book tables and GPU
orchestration are left out: their tests load models or run notebooks for seconds per mutant and check wiring,
not numbers.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutation"
LINKED = ["reprolib", "tests", "data", "notebooks", "book", "_config.yml", "_toc.yml", "pyproject.toml"]


def _f(module: str, *names: str) -> list[str]:
    """mutmut name globs: ``x_f`` is function f, ``xǁCǁf`` method C.f (mutants are ``<name>__mutmut_<n>``)."""
    return [f"reprolib.{module}.{n}__mutmut_*" for n in names]


FUNCS: dict[str, list[str]] = {
    "losses": ["reprolib.losses.*"],
    "tokens": ["reprolib.tokens.*"],
    "attention": ["reprolib.attention.*"],
    "multigen": _f("multigen", "x_prompt_text", "x_make_record", "x_prompt_categories", "x_validate_records",
                   "x_sample_prompts", "x_image_id", "x_image_seed", "x_category_token_indices", "x_is_blacked_out",
                   "x_count_blacked_out", "x_multigen_original", "x_found_count", "x_cell_table", "x__per_prompt",
                   "x_bootstrap_ci", "x_mcnemar_exact", "x_paired_test", "x_score_run", "x_counterparts",
                   "x_verdicts"),
    "piebench": _f("piebench", "x_mask_decode", "x_mask_encode", "x_clean_prompt", "xǁPieRecordǁ*", "x__record",
                   "x_load_piebench", "x_caption_for_marked", "x_load_world_edits", "x__box_mask"),
    "metrics": _f("metrics", "x_dino_preprocess", "x_dino_keys", "x_cosine_self_similarity",
                  "x_keys_self_similarity", "x__as_image", "x__masked", "x_masked_psnr", "x_masked_mse",
                  "x_masked_ssim", "x_masked_lpips", "x_blackout", "xǁEditMetricsǁstructure_distance",
                  "xǁEditMetricsǁclip_similarity", "x_score_pair", "x_load_edited", "x_score_records",
                  "x_summarise"),
    "editing": _f("editing", "x_latent_scale", "xǁBLDOptionsǁ__post_init__", "x_blending_timesteps",
                  "x_official_strip", "x_edited_path", "x_save_edit", "x_latent_mask", "x_noised_source",
                  "x_blended_latent_diffusion", "x_run_signature", "x_target_word", "x_edit_records",
                  "x_world_edit_success", "x_world_edit_summary", "x_table2", "x_attention_for_tokens"),
    "runner": _f("runner", "x_select_stages", "x_source_digest", "x_stage_key", "x_load_cache", "x_parse_params",
                 "x_death_cause", "x_run_stages", "x_last_run", "x_stage_states", "x_ensure_stages"),
}


#: Modules mutated in a scratch root of their own, with their own tests: the runner's tests that execute
#: notebooks take 3-10 s each (a survivor would cost a minute); its cache logic is tested in-process.
OWN_TESTS: dict[str, dict[str, list[str]]] = {
    "runner": {"tests": ["tests/test_runner.py", "tests/test_mut_runner.py"],
               "deselect": [f"tests/test_runner.py::{t}" for t in (
                   "test_runs_in_order_then_caches", "test_parameter_or_upstream_change_reruns_downstream",
                   "test_failing_stage_names_partial_notebook_and_keeps_earlier",
                   "test_glued_figures_carry_png_even_with_mplbackend_agg",
                   "test_dead_kernel_names_stage_cause_and_honest_partial_notebook",
                   "test_book_check_names_missing_then_stale_stages_and_the_command",
                   "test_book_runs_missing_or_stale_stages_through_the_cache",
                   "test_book_stops_rather_than_start_a_real_weights_run")]},
}


def work_dir(module: str) -> Path:
    return WORK.with_name(f"mutation-{module}") if module in OWN_TESTS else WORK


def own_config(module: str, baseline: bool) -> str:
    """pyproject.toml for a module with its own tests: the project's, with [tool.mutmut] narrowed to it."""
    import json
    import tomllib
    text = (ROOT / "pyproject.toml").read_text()
    cfg = tomllib.loads(text)["tool"]["mutmut"]
    spec = OWN_TESTS[module]
    tests = [t for t in spec["tests"] if not (baseline and Path(t).name.startswith("test_mut_"))]
    cfg.update(only_mutate=[f"reprolib/{module}.py"], pytest_add_cli_args_test_selection=tests,
               pytest_add_cli_args=cfg["pytest_add_cli_args"] + [a for t in spec["deselect"] for a in ("--deselect", t)])
    head = text[:text.index("[tool.mutmut]")]
    tail = text[text.index("[tool.mutmut]"):].split("\n[", 1)
    rest = "\n[" + tail[1] if len(tail) > 1 else ""
    body = "".join(f"{k} = {json.dumps(v, ensure_ascii=False)}\n" for k, v in cfg.items())
    return head + "[tool.mutmut]\n" + body + rest


def module_of(name: str) -> str | None:
    """The module (key of FUNCS) whose selected functions include mutant ``name``, else None."""
    return next((m for m, globs in FUNCS.items() if any(fnmatch.fnmatchcase(name, g) for g in globs)), None)


def results(work: Path = WORK) -> dict[str, str]:
    """mutant name → status (killed, survived, no tests, timeout, not checked, ...), from mutmut itself."""
    if not (work / "mutants").is_dir():
        return {}
    out = subprocess.run(["mutmut", "results", "--all", "true"], cwd=work, check=True, capture_output=True,
                         text=True).stdout
    pairs = (line.strip().rsplit(": ", 1) for line in out.splitlines() if ": " in line)
    return {name: status for name, status in pairs}


def table(res: dict[str, str]) -> str:
    """Per module: mutants, killed, survived (and any other status), as a Markdown table."""
    by = {m: Counter() for m in FUNCS}
    for name, status in res.items():
        m = module_of(name)
        if m:
            by[m][status] += 1
    others = sorted({s for c in by.values() for s in c} - {"killed", "survived"})
    head = ["module", "mutants", "killed", "survived", *others]
    rows = [[m, sum(c.values()), c["killed"], c["survived"], *(c[s] for s in others)] for m, c in by.items()]
    rows.append(["all", *(sum(r[i] for r in rows) for i in range(1, len(head)))])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(x) for x in r) + " |" for r in rows])


def prepare(work: Path = WORK, config: str | None = None) -> None:
    """A scratch root of links (mutmut writes ``mutants/`` beside the sources; the conftest finds the shared
    data two folders above ``tests/``, so ``build/mutation/shared`` is linked to the checkout's ``../shared``)."""
    work.mkdir(parents=True, exist_ok=True)
    links = LINKED + (["shared"] if (ROOT.parent / "shared").is_dir() else [])
    for p in links:
        target = ROOT / p if p != "shared" else (ROOT.parent / "shared").resolve()
        link = work / p
        if link.is_symlink() or link.exists():
            link.unlink()
        if p == "pyproject.toml" and config is not None:
            link.write_text(config)
        else:
            link.symlink_to(target)
    shutil.rmtree(work / "mutants" / "tests", ignore_errors=True)   # copied afresh: new tests, no stale ones


def run(module: str, rerun_all: bool, jobs: int, baseline: bool = False) -> None:
    """Test the module's mutants: all of them the first time (or with --all), else those not yet killed."""
    work = work_dir(module)
    prepare(work, own_config(module, baseline) if module in OWN_TESTS else None)
    names = FUNCS[module]
    if not rerun_all and (work / "mutants" / "reprolib" / f"{module}.py.meta").is_file():
        names = [n for n, s in results(work).items() if module_of(n) == module and s != "killed"]
        if not names:
            print(f"{module}: every mutant already killed")
            return
    env = dict(os.environ, PYTHONPATH=str(work / "mutants"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    print(f"{module}: testing {'its' if names is FUNCS[module] else len(names)} mutants", flush=True)
    cmd = ["mutmut", "run", "--max-children", str(jobs), *names]
    code = subprocess.run(cmd, cwd=work, env=env).returncode
    if code and not (work / "mutants" / "mutmut-stats.json").is_file():
        # mutmut 3.8 found no test for any mutant whenever it had generated the mutants in the same run
        # (every time on this project); run again on the generated mutants, which collects the stats.
        print(f"{module}: mutmut found no tests on its first run; running it again", flush=True)
        code = subprocess.run(cmd, cwd=work, env=env).returncode
    if code:
        sys.exit(f"mutation.py: mutmut failed on {module} (exit {code})")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help=f"modules to mutate (default: all of {', '.join(FUNCS)})")
    ap.add_argument("--all", action="store_true", help="re-test killed mutants too")
    ap.add_argument("--report", action="store_true", help="print the table of the last runs only")
    ap.add_argument("--baseline", action="store_true",
                    help="modules with their own tests (runner): leave out tests/test_mut_* (the count before them)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("MUTATION_JOBS", "2")))
    a = ap.parse_args(argv)
    unknown = [m for m in a.modules if m not in FUNCS]
    if unknown:
        sys.exit(f"mutation.py: unknown module {unknown[0]!r} (known: {', '.join(FUNCS)})")
    if shutil.which("mutmut") is None:
        sys.exit('mutation.py: mutmut is not installed: pip install -e ".[mutation]"')
    if not a.report:
        for m in a.modules or FUNCS:
            run(m, a.all, a.jobs, a.baseline)
    res = results()
    for m in OWN_TESTS:                          # their own roots hold their results
        res = {k: v for k, v in res.items() if module_of(k) != m} | {
            k: v for k, v in results(work_dir(m)).items() if module_of(k) == m}
    print(table(res))


if __name__ == "__main__":
    main()
