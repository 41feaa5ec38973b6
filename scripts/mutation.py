"""Mutation testing of the product's maths and logic with mutmut (``pip install -e ".[mutation]"``).

    python scripts/mutation.py                 every module below, then the table of survivors per module
    python scripts/mutation.py losses runner   those modules only
    python scripts/mutation.py --all losses    re-test every mutant, killed ones too
    python scripts/mutation.py --report        the table of the last runs, running nothing

Not in CI: it takes tens of minutes on 2 cores. Results are kept in ``build/mutation/mutants``; a rerun
tests only the mutants not yet killed (mutmut resets those of a function whose source changed).
``cd build/mutation && mutmut show <name>`` prints one mutant's diff. tests/MUTATION.md explains every
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
    "losses": [f"reprolib.losses.*"],
    "tokens": [f"reprolib.tokens.*"],
    "attention": [f"reprolib.attention.*"],
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


def module_of(name: str) -> str | None:
    """The module (key of FUNCS) whose selected functions include mutant ``name``, else None."""
    return next((m for m, globs in FUNCS.items() if any(fnmatch.fnmatchcase(name, g) for g in globs)), None)


def results() -> dict[str, str]:
    """mutant name → status (killed, survived, no tests, timeout, not checked, ...), from mutmut itself."""
    out = subprocess.run(["mutmut", "results", "--all", "true"], cwd=WORK, check=True, capture_output=True,
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


def prepare() -> None:
    """A scratch root of links (mutmut writes ``mutants/`` beside the sources; the conftest finds the shared
    data two folders above ``tests/``, so ``build/mutation/shared`` is linked to the checkout's ``../shared``)."""
    WORK.mkdir(parents=True, exist_ok=True)
    links = LINKED + (["shared"] if (ROOT.parent / "shared").is_dir() else [])
    for p in links:
        target = ROOT / p if p != "shared" else (ROOT.parent / "shared").resolve()
        link = WORK / p
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    shutil.rmtree(WORK / "mutants" / "tests", ignore_errors=True)   # copied afresh: new tests, no stale ones


def run(module: str, rerun_all: bool, jobs: int) -> None:
    """Test the module's mutants: all of them the first time (or with --all), else those not yet killed."""
    names = FUNCS[module]
    if not rerun_all and (WORK / "mutants" / "reprolib" / f"{module}.py.meta").is_file():
        names = [n for n, s in results().items() if module_of(n) == module and s != "killed"]
        if not names:
            print(f"{module}: every mutant already killed")
            return
    env = dict(os.environ, PYTHONPATH=str(WORK / "mutants"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    print(f"{module}: testing {'its' if names is FUNCS[module] else len(names)} mutants", flush=True)
    cmd = ["mutmut", "run", "--max-children", str(jobs), *names]
    code = subprocess.run(cmd, cwd=WORK, env=env).returncode
    if code and not (WORK / "mutants" / "mutmut-stats.json").is_file():
        # mutmut 3.8 found no test for any mutant whenever it had generated the mutants in the same run
        # (every time on this project); run again on the generated mutants, which collects the stats.
        print(f"{module}: mutmut found no tests on its first run; running it again", flush=True)
        code = subprocess.run(cmd, cwd=WORK, env=env).returncode
    if code:
        sys.exit(f"mutation.py: mutmut failed on {module} (exit {code})")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help=f"modules to mutate (default: all of {', '.join(FUNCS)})")
    ap.add_argument("--all", action="store_true", help="re-test killed mutants too")
    ap.add_argument("--report", action="store_true", help="print the table of the last runs only")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("MUTATION_JOBS", "2")))
    a = ap.parse_args(argv)
    unknown = [m for m in a.modules if m not in FUNCS]
    if unknown:
        sys.exit(f"mutation.py: unknown module {unknown[0]!r} (known: {', '.join(FUNCS)})")
    if shutil.which("mutmut") is None:
        sys.exit('mutation.py: mutmut is not installed: pip install -e ".[mutation]"')
    prepare()
    if not a.report:
        for m in a.modules or FUNCS:
            run(m, a.all, a.jobs)
    print(table(results()))


if __name__ == "__main__":
    main()
