# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Stage 07 — The report, checked: its tables, a re-analysis, the claims ledger
#
# The reproducibility report's Table 1 and Table 2 as printed (with the authors' README and the PIE-Bench
# paper beside them), re-analysed from their summary statistics (`reprolib.reanalysis`: Welch tests from
# mean, std and n = 10 image indices, Holm over the family, smallest detectable differences), and every
# measurable claim of the report tested (`reprolib.claims`, claims listed in `data/report/claims.yaml`).
# Needs no GPU and runs on every profile. On the `paper` profile the ledger also reads our measurements of
# stages 03, 04 and 05; on the `tiny` profile it never does (toy-world numbers say nothing about the report).

# %% tags=["parameters"]
profile = "tiny"
alpha = None                  # significance level of every test (profile: report.alpha, 0.05)
power = None                  # power of the smallest-detectable-difference computation (report.power, 0.8)
claims_file = None            # the claims ledger's source (report.claims_file, data/report/claims.yaml)
overrides = None              # any other profile overrides {"section.field": value} (the runner passes these)
out_dir = None                # default: report.output_dir (runs/<profile>/report)

# %%

from IPython.display import HTML, display
from myst_nb import glue

from reprolib import claims as C
from reprolib import reanalysis as RA
from reprolib import reported as R
from reprolib.config import stage_profile
from reprolib.io import atomic_save, repo_path
from reprolib.report import glue_banner, glue_provenance, start_stage
from reprolib.tables import glue_table, p_value

params = dict(alpha=alpha, power=power, claims_file=claims_file, output_dir=out_dir)
P = stage_profile(profile, overrides, "report", params)
prov = start_stage("07", P, {"profile": profile, **params, "overrides": overrides})
ALPHA, POWER = P.report.alpha, P.report.power
out = repo_path(P.report.output_dir)
measured = C.load_measured(P)
if P.is_tiny:
    banner = ("<strong>Reported numbers, checked.</strong> Every verdict on this page is computed from the "
              "report's own tables and their sources. This book was built from the tiny profile: its toy-world "
              "measurements never enter a verdict, so the claims that need our measurements on the real "
              "weights say so.")
else:
    banner = (f"<strong>Reported numbers and our measurements.</strong> Verdicts on reported numbers, and, in "
              f"the last column, our measurements from the <code>{P.name}</code> profile.")
glue_banner("rep_", P, f'<div class="repro-banner {"tiny" if P.is_tiny else "paper"}">{banner}</div>')
print(f"alpha {ALPHA}, power {POWER}; measurements: {'none (tiny profile)' if measured is None else measured.profile}")

# %% [markdown]
# ## The reported tables

# %%
report1, authors1 = R.load_report_table1(), R.load_authors_table1()
report2, piebench = R.load_report_table2(), R.load_piebench_paper()
glue_table("rep_table1", R.table1(report1, authors1))
glue_table("rep_table2", R.table2(report2, piebench))

# %% [markdown]
# ## Re-analysis of Table 1
#
# Welch's t-test per comparison and column from the printed mean and std (np.std, ddof = 0, converted to
# the sample std) with n = 10 image indices, Holm over all tests together; the smallest difference each
# test could detect at α with the chosen power.

# %%
results = RA.reanalyse(report1, authors1, alpha=ALPHA, power=POWER)
atomic_save(out / "reanalysis.csv", lambda p: results.to_csv(p, index=False))
shown = RA.display_frame(results)
glue_table("rep_reanalysis", shown, group="Comparison", bold=None,
           title="Re-analysis of the reported Table 1",
           subtitle=f"Two-sided Welch tests, n = {RA.N_INDICES} per row; Holm over all {len(results)} tests; "
                    f"detectable: smallest Δ found with power {POWER:.0%} at α = {ALPHA}.",
           notes=["std converted from np.std (ddof = 0) to the sample std: s = sd·√(n/(n−1)). The std is over "
                  "image indices only: it carries no training-seed variance."])
key_rows = [("paper vs retrained", "coco", 3), ("retrained vs Attend-and-Excite", "coco", 4),
            ("retrained vs Attend-and-Excite", "coco", 5)]
key = results.set_index(["comparison", "prompt_set", "k"]).loc[key_rows].reset_index()
glue_table("rep_reanalysis_key", RA.display_frame(key, compact=True),
           title="The three comparisons the report's text makes",
           notes=["A − B in points of MG-k; Welch tests from the printed mean, std and n = 10, Holm over the whole "
                  "re-analysis (see the claims ledger)."])
for name, (comp, ps, k) in zip(("mg3", "mg4", "mg5"), key_rows):
    r = RA.lookup(results, comp, ps, k)
    glue(f"rep_{name}_diff", f"{r['diff']:.2f}", display=False)
    glue(f"rep_{name}_p", p_value(r["p"]), display=False)
    glue(f"rep_{name}_p_holm", p_value(r["p_holm"]), display=False)
    glue(f"rep_{name}_mdd", f"{r['mdd']:.2f}", display=False)
glue("rep_n_tests", len(results), display=False)
glue("rep_n_significant", int(results["significant"].sum()), display=False)
glue("rep_alpha", f"{ALPHA:g}", display=False)
glue("rep_power", f"{POWER:g}", display=False)
glue("rep_mdd_range", f"{results['mdd'].min():.2f}–{results['mdd'].max():.2f}", display=False)
fig = RA.plot_differences(results)
atomic_save(out / "reanalysis.png", lambda p: fig.savefig(p, format="png", dpi=120, bbox_inches="tight"))
glue("rep_forest", fig, display=False)

# %% [markdown]
# ## The claims ledger

# %%
claims = C.load_claims(P.report.claims_file)
evidence = C.Evidence(report1, authors1, report2, piebench, results, ALPHA, measured)
ledger = C.evaluate(claims, evidence)
atomic_save(out / "claims_ledger.csv", lambda p: ledger.to_csv(p, index=False))
profile_label = P.name if measured is not None else None      # tiny: no column of our measurements
glue_table("rep_ledger", C.ledger_table(ledger, profile_label, title="The claims ledger",
           subtitle=f"{len(ledger)} claims of the report; verdicts computed by reprolib.claims at α = {ALPHA}. "
                    "p: Holm-adjusted where the test is part of the re-analysis.",
           notes=["Claims worded by us; the report's sections in the first column. Source of the claims: "
                  "data/report/claims.yaml."]
                 + ([] if measured is not None else ["Built from the tiny profile: on the paper profile a last column "
                                                     "gives our measurements for each claim."]), font_size="12px"))
counts = C.verdict_counts(ledger)
glue("rep_n_claims", len(ledger), display=False)
glue("rep_counts", "; ".join(f"{v}: {n}" for v, n in counts.items()), display=False)
for row in ledger.itertuples():                  # each verdict, for the chapter's prose
    glue(f"rep_verdict_{C.glue_id(row.id)}", row.verdict, display=False)
display(ledger[["id", "verdict", "p"]])

# %%
_ = glue_provenance("rep_", prov, out)
