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
# # Stage 03 — MultiGen
#
# Multi-category instance composition (the paper's Table 1): each checkpoint draws 10 images for each of
# the 1,000 prompts "a photo of a A, a B, a C, a D, and a E." of the official COCO and ADE20K sets; OWLv2
# looks for the five categories in every image; MG_k is the percentage of images in which at least k of
# the five were found (score > 0.1), with the original's std over the image index. We add 95 % bootstrap
# CIs over prompts and paired tests between checkpoints on the same (prompt, image) cells, which share
# their initial noise (`reprolib.multigen`, `reprolib.detection`).
#
# The official prompt files are downloaded and sha256-checked (`multigen.prompt_mirror` or
# `$REPROLIB_MULTIGEN_MIRROR` point at a local copy or another URL). The `tiny` profile reads the shared
# copy; if it is missing it falls back to a seeded sample of the same categories and says so below.

# %% tags=["parameters"]
profile = "tiny"
checkpoints = None          # sd14, tokencompose_a, tokencompose_b, attend_and_excite, hub ids or UNet folders
prompt_sets = None          # coco, ade20k (official) or a category list name (sampled)
n_prompts = None            # first n prompts of each set (None: the profile's; paper: all 1,000)
images_per_prompt = None
num_inference_steps = None
guidance_scale = None
detection_threshold = None  # MG scoring threshold (original: 0.1)
save_threshold = None       # detections kept on disk (original: 0.01)
precision = None            # fp32 (original), fp16, bf16
batch_size = None
faithful = None             # True: fp32, batch 1 (generation and detection), the original's JSON content
safety_checker = None
detector_id = None
prompt_mirror = None        # folder or base URL holding the official prompt files
n_bootstrap = None
use_trained = None          # add stage 02's exported UNet (Table 1's "ours, retrained") when it exists (default)
overrides = None            # any other profile overrides {"section.field": value} (the runner passes these)
out_dir = None

# %%
from IPython.display import display
from myst_nb import glue

from reprolib import multigen as mg
from reprolib.config import apply_overrides, resolve_device, stage_profile
from reprolib.report import glue_banner, glue_provenance, start_stage
from reprolib.reported import load_multigen_reported
from reprolib.tables import display_name, glue_note, glue_table
from reprolib.train import with_trained

params = dict(checkpoints=checkpoints, prompt_sets=prompt_sets, n_prompts=n_prompts,
              images_per_prompt=images_per_prompt, num_inference_steps=num_inference_steps,
              guidance_scale=guidance_scale, detection_threshold=detection_threshold, save_threshold=save_threshold,
              precision=precision, batch_size=batch_size, faithful=faithful, safety_checker=safety_checker,
              detector_id=detector_id, prompt_mirror=prompt_mirror, n_bootstrap=n_bootstrap, use_trained=use_trained,
              output_dir=out_dir)
P = stage_profile(profile, overrides, "multigen", params)   # profile < runner overrides < parameters set here
if P.multigen.use_trained:
    P = apply_overrides(P, {"multigen.checkpoints": with_trained(P.multigen.checkpoints, P)})
prov = start_stage("03", P, {"profile": profile, **params, "overrides": overrides})
M = P.multigen
paths = mg.stage_paths(P)
device = resolve_device(P)
glue_banner("mg_", P)
labels = {c: display_name(c, P) for c in M.checkpoints}      # what a reader sees, never a folder path
print(f"checkpoints: {M.checkpoints}; {M.images_per_prompt} images per prompt; {M.num_inference_steps} steps; "
      f"precision {'fp32 (faithful)' if M.faithful else M.precision}; artifacts in {paths.root}")

# %% [markdown]
# ## Prompt sets

# %%
sets = mg.load_prompt_sets(P)
for ps in sets.values():
    print(ps.describe())
fallback = any(ps.fallback for ps in sets.values())
if fallback:
    print("NOTE: at least one official prompt file was unavailable; its prompts were sampled instead.")
glue("mg_prompt_sources", "; ".join(ps.describe() for ps in sets.values()), display=False)
glue("mg_fallback", fallback, display=False)
glue("mg_detector", f"{M.detector_id}, a category counts above {M.detection_threshold}", display=False)

# %% [markdown]
# ## Generation
#
# Image `j` of prompt `p` is seeded from `(seed, p, j)`: any single image can be regenerated with
# `mg.regenerate_image`, and a killed run resumes where it stopped. The safety checker, when on, blacks
# out flagged images as in the original; they stay in the denominators and are counted here.

# %%
generation = mg.run_generation(P, sets)
display(generation)
glue("mg_blacked_out", int(generation["blacked_out"].sum()), display=False)
glue("mg_n_images", int(M.images_per_prompt * sum(len(ps.records) for ps in sets.values()) * len(M.checkpoints)),
     display=False)

# %% [markdown]
# ## Detection

# %%
detection = mg.run_detection(P, sets)
display(detection)

# %% [markdown]
# ## Scores
#
# `mean` and `std` are the original's (`gen_multigen_scores.py`); `ci_low`/`ci_high` a 95 % bootstrap
# interval over prompts. Everything is also in `multigen_tidy.csv`.

# %%
res = mg.run_scoring(P, sets)
reported = load_multigen_reported()
pairs = mg.counterparts(M.checkpoints, P)       # our checkpoint → its reported row (none on a tiny profile)
glue_table("mg_scores", mg.scores_display(res.scores, labels), title=f"All MG-k scores — {P.name} profile")

# %% [markdown]
# ### Table 1 (ours)
#
# Our measurements only, labelled with the profile; the reported Table 1 (the authors' README and the
# report) is stage 07's and opens the chapter. Reported rows are never mixed in here.

# %%
world = " (miniature world: toy numbers, not comparable with the reported values)" if P.is_tiny else ""
glue_table("mg_table1", mg.table1_gt(res.scores[res.scores["k"] > 1], labels,
                                     title=f"Table 1, our measurements — {P.name} profile{world}",
                                     notes=[f"Prompt sets: {', '.join(sets)}; {M.images_per_prompt} images per prompt; "
                                            f"detector {M.detector_id}."]))

# %% [markdown]
# ### Verdict per cell
#
# Is the reported value inside our 95 % bootstrap interval over prompts? ("consistent"), or outside it
# ("ours higher" / "ours lower"). Only checkpoints with a reported counterpart get a verdict, and only on
# a profile with real weights.

# %%
verdict = mg.verdicts(res.scores, reported, pairs)
if len(verdict):
    glue_table("mg_verdict", mg.side_by_side(verdict, labels, P.name))
else:
    glue_note("mg_verdict", f"No verdict per cell on the {P.name} profile: its checkpoints have no reported "
                            "counterpart (the tiny profile's numbers come from the miniature world). On the paper "
                            "profile this section sets each of our cells beside the report's, with its verdict.")

# %% [markdown]
# ### Paired comparisons
#
# For each pair of checkpoints and each k: the difference in MG_k (points), its paired-bootstrap 95 % CI
# and p-value (prompts resampled), and McNemar's exact p-value on the cells (treats images as independent).

# %%
glue_table("mg_paired", mg.paired_display(res.paired, labels), title=f"Paired comparisons — {P.name} profile")

# %%
fig = mg.plot_mg_curves(res.scores, reported, pairs, labels)
glue("mg_curves", fig, display=False)

# %%
first = next(iter(sets.values()))
grid = mg.image_grid(paths, first, M.checkpoints, [r["unique_id"] for r in first.records[:4]], labels=labels)
glue("mg_grid", grid, display=False)

# %%
_ = glue_provenance("mg_", prov, paths.root)
