"""The claims ledger: each measurable claim of the report, its test, and a verdict computed here.

The claims live in ``data/report/claims.yaml`` (section, our short wording, the evidence, a test id and
its arguments); the verdicts are never typed anywhere: :func:`evaluate` computes them from the
reported tables (:mod:`reprolib.reported`), the re-analysis (:mod:`reprolib.reanalysis`) and, when a
``paper``-profile run has produced them, our own measurements (:class:`Measured`). Each test is a
small function registered in :data:`TESTS` under the id the claims file names.

A verdict is one of :data:`VERDICTS`:

* **supported** — the test rejects "no difference" at 5 % (Holm-adjusted over the re-analysis family
  where the claim rests on it) in the claimed direction, or the table says what the claim says;
* **not supported at 5 %** — the test does not reject: the claim may hold, the numbers cannot show it;
* **contradicted** — the numbers show the opposite at 5 %;
* **table error** — the claim rests on a value that disagrees with its own source or table;
* **needs the paper profile** — only our measurements on the real weights can decide it (the book's
  ``tiny`` build never uses toy-world numbers for these), or no stage measures it yet.

Stage 06's miniature-world numbers never enter a verdict: :func:`load_measured` returns nothing on a
tiny profile, and it reads stages 03, 04 and 05 only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .io import REPO_ROOT, repo_path

CLAIMS_FILE = REPO_ROOT / "data" / "report" / "claims.yaml"

SUPPORTED = "supported"
NOT_SIGNIFICANT = "not supported at 5 %"
CONTRADICTED = "contradicted"
TABLE_ERROR = "table error"
NEEDS_PAPER = "needs the paper profile"
VERDICTS = (SUPPORTED, NOT_SIGNIFICANT, CONTRADICTED, TABLE_ERROR, NEEDS_PAPER)
NOT_MEASURED = "–"


class ClaimsError(ValueError):
    """A malformed claims file or entry; the message names the file and the claim id."""


@dataclass(frozen=True)
class Claim:
    id: str
    section: str
    claim: str
    evidence: str
    test: str
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """A test's result: the verdict, the p-value it rests on (None when none applies), the numbers in
    words, and what our own measurements say (``"–"`` until a paper-profile run provides them)."""
    verdict: str
    p: float | None
    numbers: str
    ours: str = NOT_MEASURED

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} is not one of {VERDICTS}")


@dataclass
class Measured:
    """Our measurements from a ``paper``-profile run (any of them may be missing).

    ``checkpoints`` maps the report's row keys (``A``, ``B``, ``retrained``, ``attend_and_excite``) and
    ``sd14`` to the checkpoint names stage 03/05 used; ``tokencompose`` is the checkpoint compared with
    SD1.4 in editing (checkpoint A when it was run, else the retrained one).
    """
    profile: str
    multigen_scores: pd.DataFrame | None = None
    multigen_paired: pd.DataFrame | None = None
    editing_scores: pd.DataFrame | None = None
    attention_diff: pd.DataFrame | None = None
    checkpoints: dict[str, str] = field(default_factory=dict)
    tokencompose: str | None = None
    prompt_sets: dict[str, str] = field(default_factory=dict)    # report's "coco" → our prompt-set name


@dataclass
class Evidence:
    """Everything the tests read."""
    report1: pd.DataFrame
    authors1: pd.DataFrame
    report2: pd.DataFrame
    piebench: pd.DataFrame
    results: pd.DataFrame             # reprolib.reanalysis.reanalyse
    alpha: float = 0.05
    measured: Measured | None = None


# --------------------------------------------------------------------------- loading

def load_claims(path: str | Path = CLAIMS_FILE) -> list[Claim]:
    """The claims file as :class:`Claim` objects; raises naming the file and the bad entry."""
    import yaml
    path = repo_path(path)
    if not path.is_file():
        raise ClaimsError(f"claims file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    items = raw.get("claims") if isinstance(raw, Mapping) else None
    if not isinstance(items, list) or not items:
        raise ClaimsError(f"{path}: expected a non-empty list under 'claims'")
    out, seen = [], set()
    for i, it in enumerate(items):
        where = f"{path}: claim {it.get('id', i) if isinstance(it, Mapping) else i}"
        if not isinstance(it, Mapping):
            raise ClaimsError(f"{where}: not a mapping")
        missing = [f for f in ("id", "section", "claim", "evidence", "test") if not str(it.get(f) or "").strip()]
        if missing:
            raise ClaimsError(f"{where}: missing field {missing[0]!r}")
        if it["id"] in seen:
            raise ClaimsError(f"{where}: duplicate id")
        if it["test"] not in TESTS:
            raise ClaimsError(f"{where}: unknown test {it['test']!r}; known: {', '.join(sorted(TESTS))}")
        seen.add(it["id"])
        out.append(Claim(str(it["id"]), str(it["section"]), str(it["claim"]), str(it["evidence"]),
                         str(it["test"]), dict(it.get("args") or {})))
    return out


def default_evidence(measured: Measured | None = None, alpha: float = 0.05) -> Evidence:
    """The shipped reported tables, their re-analysis and (optionally) our measurements."""
    from . import reanalysis, reported
    r1, a1 = reported.load_report_table1(), reported.load_authors_table1()
    return Evidence(r1, a1, reported.load_report_table2(), reported.load_piebench_paper(),
                    reanalysis.reanalyse(r1, a1, alpha=alpha), alpha, measured)


def load_measured(profile) -> Measured | None:
    """Our paper-profile measurements from stages 03, 04 and 05, or None on a tiny profile.

    Toy-world numbers (the tiny profile, stage 06) never feed a verdict about the report's claims.
    """
    if profile.is_tiny:
        return None
    from .train import trained_unet

    def read(p: Path) -> pd.DataFrame | None:
        return pd.read_csv(p) if p.is_file() else None

    mg_root, ed_root, at_root = (repo_path(profile.multigen.output_dir), repo_path(profile.editing.output_dir),
                                 repo_path(profile.attention.output_dir))
    unet = trained_unet(profile)
    checkpoints = {"A": "tokencompose_a", "B": "tokencompose_b", "attend_and_excite": "attend_and_excite",
                   "sd14": "sd14"}
    if unet is not None:
        checkpoints["retrained"] = str(Path(profile.train.output_dir) / "unet")
    editing = read(ed_root / "scores.csv")
    tc = None
    if editing is not None:
        have = set(editing["checkpoint"].astype(str))
        tc = next((c for c in ("tokencompose_a", checkpoints.get("retrained")) if c in have), None)
    return Measured(profile.name, read(mg_root / "multigen_scores.csv"), read(mg_root / "multigen_paired.csv"),
                    editing, read(at_root / "mass_diff.csv"), checkpoints, tc,
                    {"coco": "coco", "ade20k": "ade20k"})


# --------------------------------------------------------------------------- helpers

def _fmt(x: float, d: int = 2) -> str:
    return f"{x:.{d}f}"


def _p(p: float | None) -> str:
    from .tables import p_value
    return p_value(p)


def _col(ps: str, k: int) -> str:
    from .reported import PROMPT_SETS
    return f"{PROMPT_SETS.get(ps, ps)} MG{k}"


def _direction_verdict(sig: bool, diff: float, expect: str) -> str:
    """expect "a>b" or "a<b": significant in that direction → supported, the other → contradicted."""
    want = 1 if expect == "a>b" else -1
    if not sig:
        return NOT_SIGNIFICANT
    return SUPPORTED if np.sign(diff) == want else CONTRADICTED


def _ours_multigen(ev: Evidence, comparison: str, ps: str, k: int, expect: str | None) -> str:
    """Our paper-profile counterpart of a Table 1 comparison: a paired test, or the reported paper
    number against our 95 % interval."""
    from .reanalysis import REPORT_PAIRS
    m = ev.measured
    if m is None:
        return NOT_MEASURED
    pair = next(((a, b) for name, a, b in REPORT_PAIRS if name == comparison), None)
    if pair is None or m.multigen_scores is None:
        return "not measured (stage 03 has not run on this profile)"
    our_ps = m.prompt_sets.get(ps, ps)
    a, b = pair
    ca, cb = m.checkpoints.get(a), m.checkpoints.get(b)
    scores = m.multigen_scores
    if a == "paper" and cb is not None:
        r = scores[(scores["checkpoint"] == cb) & (scores["prompt_set"] == our_ps) & (scores["k"] == k)]
        if r.empty:
            return f"not measured ({cb} at {_col(ps, k)})"
        r = r.iloc[0]
        paper = float(ev.report1[(ev.report1["key"] == "paper") & (ev.report1["prompt_set"] == ps)
                                 & (ev.report1["k"] == k)]["mean"].iloc[0])
        inside = r["ci_low"] <= paper <= r["ci_high"]
        diff = paper - r["mean"]
        verdict = NOT_SIGNIFICANT if inside else _direction_verdict(True, diff, expect or "a>b")
        return (f"{verdict}: ours {_fmt(r['mean'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] vs paper "
                f"{_fmt(paper)}")
    paired = m.multigen_paired
    if ca is None or cb is None or paired is None:
        return "not measured (checkpoint missing from stage 03)"
    sel = paired[(paired["prompt_set"] == our_ps) & (paired["k"] == k)]
    row, sign = sel[(sel["checkpoint_a"] == ca) & (sel["checkpoint_b"] == cb)], 1.0
    if row.empty:
        row, sign = sel[(sel["checkpoint_a"] == cb) & (sel["checkpoint_b"] == ca)], -1.0
    if row.empty:
        return f"not measured ({ca} vs {cb} at {_col(ps, k)})"
    row = row.iloc[0]
    diff = sign * float(row["diff"])
    lo, hi = sorted((sign * float(row["ci_low"]), sign * float(row["ci_high"])))
    p = float(row["p_bootstrap"])
    verdict = _direction_verdict(p < ev.alpha, diff, expect) if expect else (
        NOT_SIGNIFICANT if p >= ev.alpha else CONTRADICTED)
    return f"{verdict}: Δ {_fmt(diff)} [{_fmt(lo)}, {_fmt(hi)}] points, paired p {_p(p)}"


# --------------------------------------------------------------------------- tests (one per test id)

def test_welch(c: Claim, ev: Evidence) -> Outcome:
    """One comparison of the re-analysis; Holm-adjusted p; direction given by ``expect``."""
    from .reanalysis import lookup
    a = c.args
    r = lookup(ev.results, a["comparison"], a["prompt_set"], a["k"])
    verdict = _direction_verdict(bool(r["significant"]), r["diff"], a["expect"])
    numbers = (f"{r['a']} {_fmt(r['mean_a'])} ± {_fmt(r['sd_a'])} vs {r['b']} {_fmt(r['mean_b'])} ± "
               f"{_fmt(r['sd_b'])} at {_col(a['prompt_set'], a['k'])}: Δ = {_fmt(r['diff'])} points, "
               f"t = {_fmt(r['t'])} (df {r['df']:.1f}), p = {_p(r['p'])}, Holm {_p(r['p_holm'])}; "
               f"smallest detectable Δ {_fmt(r['mdd'])}")
    return Outcome(verdict, float(r["p_holm"]), numbers,
                   _ours_multigen(ev, a["comparison"], a["prompt_set"], int(a["k"]), a["expect"]))


def test_welch_margin(c: Claim, ev: Evidence) -> Outcome:
    """One-sided Welch test that a − b exceeds ``margin`` (a single pre-stated test: not Holm-adjusted)."""
    from .reanalysis import lookup, welch_margin
    a = c.args
    r = lookup(ev.results, a["comparison"], a["prompt_set"], a["k"])
    w = welch_margin(r["mean_a"], r["sd_a"], r["mean_b"], r["sd_b"], float(a["margin"]))
    if w.p < ev.alpha:
        verdict = SUPPORTED
    else:
        below = welch_margin(r["mean_b"], r["sd_b"], r["mean_a"], r["sd_a"], -float(a["margin"]))
        verdict = CONTRADICTED if below.p < ev.alpha else NOT_SIGNIFICANT
    numbers = (f"Δ = {_fmt(r['diff'])} points at {_col(a['prompt_set'], a['k'])} (Δ/paper = "
               f"{100 * r['diff'] / r['mean_a']:.1f} %); one-sided Welch test of Δ > {a['margin']}: "
               f"t = {_fmt(w.t)}, p = {_p(w.p)}")
    return Outcome(verdict, w.p, numbers)


def _significant_rows(ev: Evidence, comparisons: Sequence[str]) -> pd.DataFrame:
    rows = ev.results[ev.results["comparison"].isin(list(comparisons))]
    if rows.empty:
        raise ClaimsError(f"no re-analysis rows for {list(comparisons)}")
    return rows


def _list_cells(rows: pd.DataFrame, with_pair: bool = False) -> str:
    return "; ".join(f"{(r.b + ' ') if with_pair else ''}{_col(r.prompt_set, r.k)} Δ {_fmt(r.diff)} "
                     f"(Holm p {_p(r.p_holm)})" for r in rows.itertuples())


def test_any_significant(c: Claim, ev: Evidence) -> Outcome:
    """At least one column of a comparison differs in the claimed direction (Holm)."""
    a = c.args
    rows = _significant_rows(ev, [a["comparison"]])
    want = 1 if a["expect"] == "a>b" else -1
    hits = rows[rows["significant"] & (np.sign(rows["diff"]) == want)]
    against = rows[rows["significant"] & (np.sign(rows["diff"]) == -want)]
    if len(hits):
        verdict, p = SUPPORTED, float(hits["p_holm"].min())
    elif len(against):
        verdict, p = CONTRADICTED, float(against["p_holm"].min())
    else:
        verdict, p = NOT_SIGNIFICANT, float(rows["p_holm"].min())
    numbers = f"{len(hits)} of {len(rows)} columns in the claimed direction at 5 % (Holm)"
    if len(hits):
        numbers += ": " + _list_cells(hits)
    if len(against):
        numbers += f"; {len(against)} the other way: " + _list_cells(against)
    return Outcome(verdict, p, numbers)


def test_none_significant(c: Claim, ev: Evidence) -> Outcome:
    """No column of the comparisons differs at 5 % (Holm): any difference contradicts the claim."""
    comps = list(c.args["comparisons"])
    rows = _significant_rows(ev, comps)
    sig = rows[rows["significant"]]
    many = len(comps) > 1
    if len(sig):
        numbers = (f"{len(sig)} of {len(rows)} cells differ at 5 % (Holm): " + _list_cells(sig, many)
                   + f"; the other {len(rows) - len(sig)} within noise")
        return Outcome(CONTRADICTED, float(sig["p_holm"].min()), numbers)
    return Outcome(SUPPORTED, float(rows["p_holm"].min()),
                   f"all {len(rows)} cells within noise (smallest Holm p {_p(rows['p_holm'].min())}; "
                   f"detectable Δ {_fmt(rows['mdd'].min())}–{_fmt(rows['mdd'].max())} points)")


def test_not_significant_count(c: Claim, ev: Evidence) -> Outcome:
    """At least ``min_columns`` columns where the comparison is not significant (Holm)."""
    a = c.args
    rows = _significant_rows(ev, [a["comparison"]])
    close = rows[~rows["significant"]]
    n_min = int(a["min_columns"])
    verdict = SUPPORTED if len(close) >= n_min else CONTRADICTED
    numbers = (f"{len(close)} of {len(rows)} columns within noise (rule: at least {n_min}): "
               + ("; ".join(f"{_col(r.prompt_set, r.k)} {r.a} {_fmt(r.mean_a)} vs {r.b} {_fmt(r.mean_b)} "
                            f"(Holm p {_p(r.p_holm)})" for r in close.itertuples()) or "none"))
    p = float(close["p_holm"].min()) if len(close) else float(rows["p_holm"].max())
    return Outcome(verdict, p, numbers)


def test_same_values(c: Claim, ev: Evidence) -> Outcome:
    """A report row against its source row in the authors' README: every mean and std equal."""
    a = c.args
    rep = ev.report1[ev.report1["key"] == a["report"]].set_index(["prompt_set", "k"])
    src = ev.authors1[ev.authors1["key"] == a["authors"]].set_index(["prompt_set", "k"])
    if rep.empty or src.empty:
        raise ClaimsError(f"claim {c.id}: no rows for {a['report']!r} or {a['authors']!r}")
    diffs = []
    for (ps, k), r in rep.iterrows():
        s = src.loc[(ps, k)]
        for col in ("mean", "std"):
            if not np.isclose(r[col], s[col], atol=1e-9):
                diffs.append((ps, int(k), col, float(r[col]), float(s[col])))
    n = 2 * len(rep)
    if not diffs:
        return Outcome(SUPPORTED, None, f"all {n} values equal the authors' README")
    parts = [f"{_col(ps, k)} {col} {_fmt(v)} (README {_fmt(s)})" for ps, k, col, v, s in diffs]
    numbers = f"{len(diffs)} of {n} values differ: " + "; ".join(parts)
    if a.get("copied_from"):
        other = ev.report1[ev.report1["key"] == a["copied_from"]].set_index(["prompt_set", "k"])
        same = [d for d in diffs if np.isclose(other.loc[(d[0], d[1]), d[2]], d[3])]
        if len(same) == len(diffs):
            from .reported import REPORT_NAMES
            numbers += f"; each equals {REPORT_NAMES[a['copied_from']]}'s value in that cell"
    if a.get("rerun"):
        from .reanalysis import welch
        rr = a["rerun"]
        row = ev.results[(ev.results["comparison"] == rr["comparison"]) & (ev.results["prompt_set"] == rr["prompt_set"])
                         & (ev.results["k"] == int(rr["k"]))].iloc[0]
        s = src.loc[(rr["prompt_set"], int(rr["k"])), "std"]
        w = welch(row["mean_a"], row["sd_a"], row["mean_b"], s)
        numbers += (f"; with the README's std, {rr['comparison']} at {_col(rr['prompt_set'], rr['k'])} gives "
                    f"p = {_p(w.p)} (printed std: {_p(row['p'])})")
    return Outcome(TABLE_ERROR, None, numbers)


def test_text_value(c: Claim, ev: Evidence) -> Outcome:
    """A number the text attributes to a row: which row of the table actually holds it?"""
    from .reported import REPORT_NAMES
    a = c.args
    col = ev.report1[(ev.report1["prompt_set"] == a["prompt_set"]) & (ev.report1["k"] == int(a["k"]))]
    holders = col[np.isclose(col["mean"], float(a["value"]))]["key"].tolist()
    named = col[col["key"] == a["attributed_to"]]["mean"].iloc[0]
    where = ", ".join(REPORT_NAMES[h] for h in holders) or "no row"
    numbers = (f"{a['value']} at {_col(a['prompt_set'], int(a['k']))} is the value of {where}; "
               f"{REPORT_NAMES[a['attributed_to']]} has {_fmt(named)}")
    return Outcome(SUPPORTED if a["attributed_to"] in holders else TABLE_ERROR, None, numbers)


def test_quoted_row(c: Claim, ev: Evidence) -> Outcome:
    """A row the report quotes from a paper, against the values checked in that paper."""
    from .reported import TABLE2_HEADERS, TABLE2_SHORT
    a = c.args
    rep = ev.report2[ev.report2["key"] == a["report"]].iloc[0]
    src = ev.piebench[ev.piebench["method"] == a["paper"]].iloc[0]
    via_report = set(str(src.get("via_report", "")).split())
    checked = [m for m in TABLE2_HEADERS if m not in via_report and pd.notna(src[m])]
    bad = [m for m in checked if not np.isclose(rep[m], src[m])]
    if not bad:
        return Outcome(SUPPORTED, None, f"all {len(checked)} independently checked values match")
    numbers = (f"{len(checked) - len(bad)} of {len(checked)} independently checked values match; "
               + "; ".join(f"{TABLE2_SHORT[m]}: report {_fmt(rep[m])}, paper {_fmt(src[m])}" for m in bad))
    return Outcome(TABLE_ERROR, None, numbers)


def _table2_changes(ev: Evidence, a: str, b: str) -> pd.DataFrame:
    from .reported import TABLE2_HEADERS
    ra = ev.report2[ev.report2["key"] == a].iloc[0]
    rb = ev.report2[ev.report2["key"] == b].iloc[0]
    rows = [dict(metric=m, a=float(ra[m]), b=float(rb[m]), diff=float(ra[m] - rb[m]),
                 rel=100 * float(ra[m] - rb[m]) / abs(float(rb[m])), higher_is_better=TABLE2_HEADERS[m][2])
            for m in TABLE2_HEADERS]
    return pd.DataFrame(rows)


def test_table2_directions(c: Claim, ev: Evidence) -> Outcome:
    """Signs of the Table 2 differences against the claim's "better on all but ``worse``"."""
    from .reported import TABLE2_SHORT
    a = c.args
    ch = _table2_changes(ev, a["a"], a["b"])
    ch["better"] = np.where(ch["higher_is_better"], ch["diff"] > 0, ch["diff"] < 0)
    worse = set(a.get("worse", ()))
    wrong = ch[ch["better"] == ch["metric"].isin(worse)]
    numbers = ("the table's signs: " + ", ".join(f"{TABLE2_SHORT[r.metric]} {'better' if r.better else 'worse'} "
                                                 f"({r.diff:+.2f})" for r in ch.itertuples())
               + "; point values only: no std was reported, so no test of significance is possible")
    if len(wrong):
        numbers = f"{len(wrong)} metric(s) disagree with the claim; " + numbers
        return Outcome(CONTRADICTED, None, numbers)
    return Outcome(SUPPORTED, None, numbers)


def test_paired_editing(c: Claim, ev: Evidence) -> Outcome:
    """Table 2 claims that need per-image scores: paired t-tests, SD1.4 vs TokenCompose, on our stage 05
    (paper profile), Holm over the claim's metrics. From the reported table alone: needs the paper profile."""
    from scipy.stats import ttest_rel
    from statsmodels.stats.multitest import multipletests

    from .reported import TABLE2_SHORT
    a = c.args
    metrics = list(a["metrics"])
    ch = _table2_changes(ev, "bld_tokencompose", "bld_sd14").set_index("metric")
    numbers = "reported: " + "; ".join(
        f"{TABLE2_SHORT[m]} {_fmt(ch.loc[m, 'b'])} → {_fmt(ch.loc[m, 'a'])} ({ch.loc[m, 'rel']:+.1f} %)"
        for m in metrics)
    if a.get("jump"):
        others = ch.drop(index=metrics)
        numbers += (f"; every other column moves by at most {others['diff'].abs().max():.2f} in the papers' units "
                    f"({others['rel'].abs().max():.1f} %)")
    numbers += "; no std reported: a paired test on per-image scores is needed"
    m = ev.measured
    if m is None or m.editing_scores is None or m.tokencompose is None:
        ours = NOT_MEASURED if m is None else "not measured (stage 05 has not run SD1.4 and TokenCompose)"
        return Outcome(NEEDS_PAPER, None, numbers, ours)
    from .metrics import PAPER_UNITS
    s = m.editing_scores
    wide = {ck: s[s["checkpoint"].astype(str) == ck].set_index("id") for ck in ("sd14", m.tokencompose)}
    ps, parts = [], []
    for met in metrics:
        x = pd.concat([wide["sd14"][met], wide[m.tokencompose][met]], axis=1, keys=["sd", "tc"]).dropna()
        x = x[np.isfinite(x).all(axis=1)]
        d = (x["tc"] - x["sd"]) * PAPER_UNITS[met][1]
        p = float(ttest_rel(x["tc"], x["sd"]).pvalue) if len(x) > 1 and d.std() > 0 else 1.0
        ps.append(p)
        parts.append((met, float(d.mean()), len(x)))
    p_holm = multipletests(ps, method="holm")[1]
    sig = p_holm < ev.alpha
    if a["expect"] == "none":
        verdict = SUPPORTED if not sig.any() else CONTRADICTED
    else:
        up = [s_ and dm > 0 for s_, (_, dm, _) in zip(sig, parts)]
        down = [s_ and dm < 0 for s_, (_, dm, _) in zip(sig, parts)]
        verdict = SUPPORTED if all(up) else CONTRADICTED if any(down) else NOT_SIGNIFICANT
    ours = f"{verdict}: " + "; ".join(f"{TABLE2_SHORT[met]} Δ {dm:+.3f} (n = {n}, Holm p {_p(ph)})"
                                      for (met, dm, n), ph in zip(parts, p_holm))
    return Outcome(verdict, float(np.min(p_holm)), numbers, ours)


def test_attention_mass(c: Claim, ev: Evidence) -> Outcome:
    """Figs 3–4: TokenCompose − SD1.4 attention mass inside each noun's mask (stage 04, paired, CI over
    prompts): supported when the CI is above 0 at more than half of the recorded steps."""
    numbers = "one prompt's maps shown, no measure of grounding in the report"
    m = ev.measured
    if m is None or m.attention_diff is None or m.attention_diff.empty:
        ours = NOT_MEASURED if m is None else "not measured (stage 04 has not run)"
        return Outcome(NEEDS_PAPER, None, numbers, ours)
    d = m.attention_diff
    comps = list(dict.fromkeys(d["comparison"]))
    tc = [x for x in comps if x.startswith(m.tokencompose or "tokencompose_a")]
    d = d[d["comparison"] == (tc or comps)[0]]
    layer = d["layer"].iloc[0]
    d = d[d["layer"] == layer]
    above, below = int((d["lo"] > 0).sum()), int((d["hi"] < 0).sum())
    verdict = (SUPPORTED if above > len(d) / 2 else CONTRADICTED if below > len(d) / 2 else NOT_SIGNIFICANT)
    ours = (f"{verdict}: mass difference {d['comparison'].iloc[0]} ({layer}) above 0 at {above} of {len(d)} "
            f"steps, below at {below}; mean Δ {d['diff'].mean():+.3f}")
    return Outcome(verdict, None, numbers, ours)


def test_needs_measurement(c: Claim, ev: Evidence) -> Outcome:
    """A claim no reported number can decide and no stage measures yet; ``measure`` says what would."""
    return Outcome(NEEDS_PAPER, None, f"to measure: {c.args.get('measure', 'not specified')}")


TESTS: dict[str, Callable[[Claim, Evidence], Outcome]] = {
    "welch": test_welch, "welch_margin": test_welch_margin, "any_significant": test_any_significant,
    "none_significant": test_none_significant, "not_significant_count": test_not_significant_count,
    "same_values": test_same_values, "text_value": test_text_value, "quoted_row": test_quoted_row,
    "table2_directions": test_table2_directions, "paired_editing": test_paired_editing,
    "attention_mass": test_attention_mass, "needs_measurement": test_needs_measurement,
}
#: What each test does, in the ledger's "test" column.
TEST_LABELS = {
    "welch": "Welch t-test from mean, std, n = 10; Holm over the re-analysis",
    "welch_margin": "one-sided Welch test against the stated margin",
    "any_significant": "Welch per column, Holm; ≥ 1 column in the claimed direction",
    "none_significant": "Welch per column, Holm; no column may differ",
    "not_significant_count": "Welch per column, Holm; count of columns within noise",
    "same_values": "every value against its source",
    "text_value": "the number against the table",
    "quoted_row": "the row against the quoted paper",
    "table2_directions": "signs of the table's differences",
    "paired_editing": "paired t-test on per-image scores (paper profile), Holm over metrics",
    "attention_mass": "paired attention mass inside noun masks (stage 04, paper profile)",
    "needs_measurement": "not yet measured by any stage",
}


def evaluate(claims: Sequence[Claim], evidence: Evidence) -> pd.DataFrame:
    """One row per claim: id, section, claim, evidence, test, verdict, p, numbers, ours."""
    rows = []
    for c in claims:
        try:
            o = TESTS[c.test](c, evidence)
        except (KeyError, IndexError) as e:
            raise ClaimsError(f"claim {c.id}: its test {c.test!r} could not read its evidence ({e})") from None
        rows.append(dict(id=c.id, section=c.section, claim=c.claim, evidence=c.evidence,
                         test=TEST_LABELS[c.test], verdict=o.verdict, p=o.p, numbers=o.numbers, ours=o.ours))
    return pd.DataFrame(rows)


#: Background of each verdict in the book's ledger (colour-blind-safe light tints).
VERDICT_COLOURS = {SUPPORTED: "#d9f0d3", NOT_SIGNIFICANT: "#eeeeee", CONTRADICTED: "#f4cccc",
                   TABLE_ERROR: "#fde6c8", NEEDS_PAPER: "#dbe9f6"}
#: Text columns of the ledger that wrap, with their minimum width (em).
LEDGER_WRAP = {"§": 6, "Claim (our words)": 12, "Evidence": 11, "Test": 9, "The numbers": 20}


def ledger_table(ledger: pd.DataFrame, profile_name: str | None, **kwargs: Any):
    """The ledger as a book table: wrapped text columns, verdicts tinted. ``profile_name`` None (a tiny
    build, no measurements of ours can apply) leaves out the column of our measurements."""
    from .tables import table
    shown = display_frame(ledger, profile_name)
    wrap = {**LEDGER_WRAP, **({shown.columns[-1]: 12} if profile_name else {})}
    return table(shown, wrap=wrap, fills={"Verdict": VERDICT_COLOURS}, table_id="rep_ledger", **kwargs)


def display_frame(ledger: pd.DataFrame, profile_name: str | None) -> pd.DataFrame:
    """The ledger as the book shows it (with a column of our measurements when ``profile_name`` is given)."""
    from .tables import p_value
    out = pd.DataFrame({
        "§": ledger["section"], "Claim (our words)": ledger["claim"], "Evidence": ledger["evidence"],
        "Test": ledger["test"], "Verdict": ledger["verdict"], "p": [p_value(p) for p in ledger["p"]],
        "The numbers": ledger["numbers"]})
    if profile_name:
        out[f"Our measurements ({profile_name} profile)"] = ledger["ours"]
    return out


def glue_id(claim_id: str) -> str:
    """A claim id as a glue key part (letters, digits and underscores)."""
    import re
    return re.sub(r"[^A-Za-z0-9]+", "_", claim_id)


def verdict_counts(ledger: pd.DataFrame) -> dict[str, int]:
    """How many claims got each verdict (every verdict of the vocabulary, zeros included)."""
    counts = ledger["verdict"].value_counts()
    return {v: int(counts.get(v, 0)) for v in VERDICTS}
