"""Every parameter reaches the value its stage uses: each ``-p section.field`` the runner passes (as the
notebooks' ``overrides``) and each papermill parameter of every stage notebook.

The test runs what papermill runs, minus the work: each notebook's ``parameters`` cell, an injected
cell of parameters, then the statements of the next cell up to the last one that (re)assigns the
stage's profile ``P``; then it reads the value off ``P``. A static pass over the rest of the notebook
checks that the stage reads a profile-backed parameter only through ``P`` (a notebook that kept using
its raw local would ignore the runner) and that every notebook-only parameter is used at all.
"""
from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path
from typing import Any

import nbformat
import pytest
import torch

from reprolib.config import Profile

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = {p.stem[:2]: p for p in sorted(NB_DIR.glob("0*_*.ipynb"))}

#: The profile section a stage's bare parameter names refer to.
SECTION = {"01": "data", "02": "train", "03": "multigen", "04": "attention", "05": "editing", "06": "train",
           "07": "report"}
#: Parameters whose name is not the field's.
RENAMED = {"02": {"precision": "train.mixed_precision"}, "03": {"out_dir": "multigen.output_dir"},
           "07": {"out_dir": "report.output_dir"},
           "06": {"threads": "cpu_threads"}}
#: Parameters that are not profile fields, on purpose: what the runner passes, output folders of a
#: single papermill run, and display or experiment-size knobs of one notebook.
NOTEBOOK_ONLY = {"profile", "overrides", "out_dir"}
NOTEBOOK_ONLY_BY_STAGE = {
    "02": {"resume"},
    "05": {"n_qualitative", "process_record"},
    # the miniature replication's size preset (reprolib.miniexp.SIZES) and its overrides
    "06": {"experiment", "steps", "n_prompts", "images_per_prompt", "num_inference_steps", "guidance_scale",
           "seeds", "base"},
}


# --------------------------------------------------------------------------- notebook plumbing

def _code_cells(path: Path) -> tuple[str, list[str]]:
    nb = nbformat.read(str(path), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    i = next(i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", []))
    return code[i].source, [c.source for c in code[i + 1:]]


def _assigns_p(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "P" and isinstance(n.ctx, ast.Store) for n in ast.walk(node))


def _setup(stage: str) -> tuple[str, ast.Module, list[ast.AST]]:
    """(parameters cell, statements that build P, every later statement of the notebook)."""
    params_src, rest = _code_cells(NOTEBOOKS[stage])
    tree = ast.parse(rest[0])
    last = max(i for i, s in enumerate(tree.body) if _assigns_p(s))
    setup = ast.Module(body=tree.body[: last + 1], type_ignores=[])
    later = tree.body[last + 1:] + [s for src in rest[1:] for s in ast.parse(src).body]
    return params_src, setup, later


def _parameters(stage: str) -> dict[str, Any]:
    ns: dict[str, Any] = {}
    exec(_code_cells(NOTEBOOKS[stage])[0], ns)
    return {k: v for k, v in ns.items() if not k.startswith("__")}


def stage_profile(stage: str, **injected: Any) -> Profile:
    """P as the stage builds it when papermill injects `injected` after its parameters cell."""
    params_src, setup, _ = _setup(stage)
    ns: dict[str, Any] = {}
    threads = torch.get_num_threads()
    try:
        exec(params_src, ns)
        ns.update(injected)
        exec(compile(setup, f"<{NOTEBOOKS[stage].name} setup>", "exec"), ns)
    finally:
        torch.set_num_threads(threads)
    return ns["P"]


# --------------------------------------------------------------------------- probe values

def _fields() -> dict[str, Any]:
    """Every overridable profile field, dotted, with its type."""
    out = {}
    for sec, tp in typing.get_type_hints(Profile).items():
        if dataclasses.is_dataclass(tp):
            out.update({f"{sec}.{k}": t for k, t in typing.get_type_hints(tp).items()})
        elif sec != "name":
            out[sec] = tp
    return out


FIELDS = _fields()


def _get(P: Profile, path: str) -> Any:
    obj = P
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _probe(tp: Any, current: Any, tmp: Path, salt: int = 0) -> Any:
    """A valid value of type `tp` that differs from `current` (salt gives a second, different one)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType")):
        return _probe(args[0], current, tmp, salt)
    if typing.get_origin(tp) is list:
        item = _probe(args[0], None, tmp, salt)
        return [item, _probe(args[0], item, tmp, salt + 1)]
    if tp is bool:                                           # the second bool is the current value itself
        return (not current) if salt == 0 else bool(current)
    if tp is int:
        return (current or 0) + 3 + salt
    if tp is float:
        return (current or 0.0) * 2 + 0.375 + salt
    if tp is str:
        return str(tmp / f"probe-{salt}-not-there")          # also a path that does not exist
    raise AssertionError(f"no probe for type {tp}")


# --------------------------------------------------------------------------- the tests

@pytest.mark.parametrize("stage", sorted(NOTEBOOKS))
def test_every_runner_override_reaches_the_stage(stage, tmp_path):
    """``python -m reprolib run -p section.field value`` → ``P.section.field == value`` in every stage."""
    base = stage_profile(stage, profile="tiny", overrides={})
    lost = []
    for path, tp in FIELDS.items():
        value = _probe(tp, _get(base, path), tmp_path)
        overrides = {"train.output_dir": str(tmp_path / "no-train"), path: value}   # no stage-02 UNet to add
        got = _get(stage_profile(stage, profile="tiny", overrides=overrides), path)
        if got != value:
            lost.append(f"{path}: passed {value!r}, stage uses {got!r}")
    assert not lost, f"stage {stage} drops runner overrides:\n" + "\n".join(lost)


def _field_of(stage: str, name: str) -> str | None:
    if name in RENAMED.get(stage, {}):
        return RENAMED[stage][name]
    path = f"{SECTION[stage]}.{name}"
    return path if path in FIELDS else None


@pytest.mark.parametrize("stage", sorted(NOTEBOOKS))
def test_every_papermill_parameter_reaches_the_stage(stage, tmp_path):
    """``papermill … -p name value`` → the profile field the stage reads; an explicit parameter wins over
    the runner's override of the same field, a parameter left at None never hides it."""
    params = _parameters(stage)
    only = NOTEBOOK_ONLY | NOTEBOOK_ONLY_BY_STAGE.get(stage, set())
    unmapped = [n for n in params if n not in only and _field_of(stage, n) is None]
    assert not unmapped, (f"stage {stage}: parameters {unmapped} reach no profile field: add the field, "
                          f"or list them as notebook-only here")
    no_train = str(tmp_path / "no-train")
    base = stage_profile(stage, profile="tiny", overrides={"train.output_dir": no_train})
    for name in params:
        if name in only:
            continue
        path = _field_of(stage, name)
        tp, current = FIELDS[path], _get(base, path)
        value, other = _probe(tp, current, tmp_path), _probe(tp, current, tmp_path, salt=1)
        got = _get(stage_profile(stage, profile="tiny", overrides={"train.output_dir": no_train}, **{name: value}),
                   path)
        assert got == value, f"stage {stage}: -p {name} {value!r} → {path} = {got!r}"
        both = stage_profile(stage, profile="tiny", overrides={"train.output_dir": no_train, path: other},
                             **{name: value})
        assert _get(both, path) == value, f"stage {stage}: the parameter {name} must win over the override {path}"
        unset = stage_profile(stage, profile="tiny", overrides={"train.output_dir": no_train, path: other})
        assert _get(unset, path) == other, f"stage {stage}: {name} = None hides the override {path}"


def _loaded_names(nodes: list[ast.AST]) -> set[str]:
    """Names read by `nodes`, outside the provenance record (``start_stage(...)``)."""
    skip: set[int] = set()
    for node in nodes:
        for n in ast.walk(node):
            if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "start_stage":
                skip.update(id(m) for m in ast.walk(n))
    return {n.id for node in nodes for n in ast.walk(node)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and id(n) not in skip}


@pytest.mark.parametrize("stage", sorted(NOTEBOOKS))
def test_stages_read_parameters_through_the_profile(stage):
    """After ``P`` is built, a profile-backed parameter is read only through ``P`` (the raw local is None
    when the runner sets the field), and every notebook-only parameter is used somewhere."""
    params = _parameters(stage)
    _, _, later = _setup(stage)
    read = _loaded_names(later)
    only = NOTEBOOK_ONLY | NOTEBOOK_ONLY_BY_STAGE.get(stage, set())
    bypass = sorted(n for n in params if n not in only and n in read)
    assert not bypass, f"stage {stage} reads {bypass} directly instead of through P"
    _, setup, _ = _setup(stage)
    used = read | _loaded_names(list(setup.body))
    unused = sorted(n for n in params if n in only - {"profile", "overrides"} and n not in used)
    assert not unused, f"stage {stage}: parameters {unused} are never used"
