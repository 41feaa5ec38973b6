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
# # Stage 05 — Blended Latent Diffusion with SD1.4 vs TokenCompose on PIE-Bench
#
# Local edits with Blended Latent Diffusion (the diffusers script the PIE-Bench authors ran, quirks kept:
# see `reprolib.editing`), once with SD1.4's UNet and once with a TokenCompose UNet plugged into the same
# pipeline, scored with PIE-Bench's metrics (`reprolib.metrics`). The `tiny` profile edits a small
# synthetic PIE-Bench-format set with the miniature world's base and stage 02's fine-tune (random models
# for the metrics): its numbers check the pipeline, nothing more.

# %% tags=["parameters"]
profile = "tiny"
overrides = None              # dict of extra profile overrides (the stage runner passes these)
piebench_root = None          # folder with mapping_file.json + annotation_images/ (tiny: synthetic set)
checkpoints = None            # e.g. ["sd14", "tokencompose_a"]; a local UNet folder works too
limit = None                  # first N records (after the category filter)
categories = None             # editing_type_id values, e.g. ["1", "6"]
num_inference_steps = None
guidance_scale = None
blending_start = None
start_from = None             # "noise" (official) | "noised_source"
blend_noise_at = None         # "t" (official) | "t_prev"
seed = None
precision = None              # "fp16" (official) | "fp32" | "bf16"
save_as = None                # "strip" (official JPEG strip, what evaluate.py reads) | "png" (the edit alone, lossless)
n_qualitative = None          # rows of the qualitative grid (default 4)
process_record = None         # index (into the edited records) shown in the editing-process figure
use_trained = None            # add stage 02's exported UNet when it exists (default)
out_dir = None

# %%
import gc
import textwrap
from dataclasses import asdict

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import display
from myst_nb import glue

from reprolib.config import apply_overrides, resolve_device, stage_profile
from reprolib.io import atomic_save
from reprolib.train import with_trained
from reprolib.editing import (BLDOptions, checkpoint_components, checkpoint_label, edit_checkpoints,
                              editing_process, load_base, load_image, method_label, repo_path, score_checkpoints,
                              world_edit_success, world_edit_summary)
from reprolib.metrics import EditMetrics, load_edited, summarise
from reprolib.piebench import load_piebench, load_world_edits, make_synthetic_piebench, make_world_piebench
from reprolib.report import glue_banner, glue_provenance, start_stage
from reprolib.reported import table2_measured, table2_side_by_side, table2_verdicts
from reprolib.tables import display_name, glue_note, glue_table
from reprolib.viz import CMAP, freeze_layout

params = dict(piebench_root=piebench_root, checkpoints=checkpoints, limit=limit, categories=categories,
              num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
              blending_start=blending_start, start_from=start_from, blend_noise_at=blend_noise_at,
              seed=seed, precision=precision, save_as=save_as, use_trained=use_trained)
P = stage_profile(profile, overrides, "editing", params)   # profile < runner overrides < parameters set here
if P.editing.use_trained:
    P = apply_overrides(P, {"editing.checkpoints": with_trained(P.editing.checkpoints, P)})
prov = start_stage("05", P, {**params, "profile": profile, "overrides": overrides, "n_qualitative": n_qualitative,
                             "process_record": process_record, "out_dir": out_dir})
E = P.editing
out = repo_path(out_dir or E.output_dir)
device = resolve_device(P)
options = BLDOptions.from_profile(P)
glue_banner("edit_", P)
labels = {c: f"BLD + {display_name(c, P)}" for c in E.checkpoints}     # row names: never a folder path
print(f"device {device}, precision {E.precision}, checkpoints {E.checkpoints}, options {options}")

# %% [markdown]
# ## Records
# The tiny profile writes a set in PIE-Bench's format: in the miniature world (the default) "change
# object" edits of world scenes, one shape replaced by another inside its box (`make_world_piebench`);
# with random models (`model.pretrained: tiny`) a synthetic set covering all ten editing types
# (`make_synthetic_piebench`). The paper profile needs the real benchmark, which its authors distribute
# on request.

# %%
if E.piebench_root:
    root = repo_path(E.piebench_root)
elif P.is_world:
    root = make_world_piebench(out / "piebench_world", n=max(E.limit or 10, 1), seed=P.seed,
                               size=options.resolution)
elif P.is_tiny:
    root = make_synthetic_piebench(out / "piebench_synthetic", n=max(E.limit or 10, 1), seed=P.seed,
                                   size=options.resolution)
else:
    raise ValueError("editing.piebench_root is not set: point it at the PIE-Bench folder "
                     "(mapping_file.json + annotation_images/), e.g. -p piebench_root /data/PIE-Bench")
records = load_piebench(root, limit=E.limit, categories=E.categories)
if not records:
    raise ValueError(f"no PIE-Bench records selected from {root} (limit={E.limit}, categories={E.categories})")
print(f"{len(records)} records from {root}")

# %% [markdown]
# ## Edits
# Every checkpoint edits every record with the same seed, so the backgrounds receive the same noise and
# only the UNet differs. Images are written once (resumable) under `<out_dir>/edits/<checkpoint>/`.

# %%
base = load_base(P.model.pretrained, P.model.seed, E.precision, device)
edits = edit_checkpoints(records, base, P.model.pretrained, E.checkpoints, options, out / "edits", device,
                         E.precision, seed=P.model.seed)
display(edits.groupby(["checkpoint", "status"]).size().rename("images").to_frame())

# %% [markdown]
# ## Editing process (Fig. 8 style)
# One record re-edited with every step kept: the predicted clean image x̂₀ and the cross-attention of
# the edited word at a few steps, per checkpoint.

# %%
group = P.attention.layers[0]
if process_record is None:
    candidates = [i for i, r in enumerate(records) if r.mask().mean() < 0.999]
    pick = candidates[0] if candidates else 0
else:
    pick = int(process_record)
rec = records[pick]
processes = {}
for ckpt in E.checkpoints:
    comps = checkpoint_components(base, ckpt, P.model.pretrained, P.model.seed)
    processes[ckpt] = editing_process(comps, rec, options, device, group)
    del comps
del base
gc.collect()
if torch.cuda.is_available():
    torch.cuda.empty_cache()

rec_mask = rec.mask()
first = next(iter(processes.values()))
n_cols = len(first.timesteps)
fig, axes = plt.subplots(2 * len(processes), n_cols, figsize=(2.0 * n_cols + 0.8, 4.2 * len(processes)),
                         squeeze=False, layout="constrained")
for r, (ckpt, proc) in enumerate(processes.items()):
    word = proc.word or "all prompt tokens"
    vmax = max(float(a.max()) for a in proc.attention) or 1.0     # one colour scale per attention row
    for c, t in enumerate(proc.timesteps):
        ax = axes[2 * r, c]
        ax.imshow(proc.pred_x0[c])
        if rec_mask.shape == proc.pred_x0[c].shape[:2]:
            ax.contour(rec_mask, levels=[0.5], colors="white", linewidths=0.6)
        ax.set_title(f"t = {t}", fontsize=8)
        ax = axes[2 * r + 1, c]
        im = ax.imshow(proc.attention[c].numpy(), cmap=CMAP, vmin=0.0, vmax=vmax)
    fig.colorbar(im, ax=list(axes[2 * r + 1, :]), fraction=0.025, pad=0.01).set_label("attention", fontsize=7)
    axes[2 * r, 0].set_ylabel(f"{textwrap.fill(labels[ckpt], 24)}\nx̂₀", fontsize=7)
    axes[2 * r + 1, 0].set_ylabel(f"attention: {word}\n({group})", fontsize=7)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle(f"“{rec.target_prompt}”", fontsize=9)
freeze_layout(fig)                  # the glued PNG and the displayed one must be the same pixels
glue("edit_process", fig, display=False)

# %% [markdown]
# ## Scores
# PIE-Bench's metrics, as its `evaluate.py` computes them (background metrics over the full frame with the
# edited region zeroed; NaN when the mask covers everything, left out of the means).

# %%
metrics = EditMetrics.from_profile(P, device=device)
scores = score_checkpoints(records, E.checkpoints, out / "edits", metrics)
atomic_save(out / "scores.csv", lambda p: scores.to_csv(p, index=False))
summary = summarise(scores, by="checkpoint")
del metrics
gc.collect()

world = " (miniature world: toy numbers, not comparable with the reported values)" if P.is_world else (
    " (random tiny models: a pipeline check)" if P.is_tiny else "")
glue_table("edit_table2", table2_measured(scores, labels, title=f"Table 2, our measurements — {P.name} profile{world}",
                                          notes=[f"{len(records)} edited images per checkpoint."]))
beside = table2_verdicts(scores) if not P.is_tiny else pd.DataFrame()
if len(beside):
    glue_table("edit_verdict", table2_side_by_side(beside, labels, P.name))
else:
    glue_note("edit_verdict", f"No verdict per cell on the {P.name} profile: its backbones are not the report's "
                              "(the tiny profile edits the miniature world). On the paper profile this section sets "
                              "BLD + SD1.4 and BLD + TokenCompose (checkpoint A) beside the report's rows, cell by cell.")
category_table = summary.drop(index="all", level="category").round(2)
shown_categories = category_table.reset_index()
shown_categories["checkpoint"] = shown_categories["checkpoint"].map(labels)
glue_table("edit_category_table", shown_categories.rename(columns={"checkpoint": "Method", "category": "Editing type",
                                                                   "n": "images"}),
           title=f"Per editing type — {P.name} profile")
glue("edit_n_images", len(records), display=False)
settings = pd.Series({**asdict(options), "precision": E.precision, "base": P.model.pretrained,
                      "checkpoints": ", ".join(labels[c] for c in E.checkpoints)}, name="value").to_frame()
glue_table("edit_settings", settings.reset_index(names="setting"), display=False)

# %% [markdown]
# ## Edit success in the miniature world
# PIE-Bench scores how well the background is kept and how well the edit matches its prompt (CLIP); in
# the miniature world the exact detector can also say whether the edit happened: the requested shape is
# found and the replaced one is gone. `source` rows score the unedited images (the detector's own error).

# %%
if P.is_world and not E.piebench_root:
    success = world_edit_success(records, E.checkpoints, out / "edits", load_world_edits(root))
    atomic_save(out / "world_edit_success.csv", lambda p: success.to_csv(p, index=False))
    world_table = world_edit_summary(success).round(1)
    world_table.index = [c if c == "source" else labels.get(c, method_label(c)) for c in world_table.index]
    world_table.index.name = "Images"
else:
    world_table = pd.DataFrame({"note": ["only the miniature world has an exact detector of edit success"]})
glue_table("edit_world_success", world_table)

# %% [markdown]
# ## Per-category breakdown

# %%
shown = ["Structure distance ×10³", "PSNR", "LPIPS ×10³", "CLIP edited"]
long = (category_table.reset_index()
        .assign(method=lambda d: d["checkpoint"].map(labels))
        .melt(id_vars=["method", "category"], value_vars=[c for c in shown if c in category_table.columns],
              var_name="metric", value_name="value"))
g = sns.catplot(data=long, x="value", y="category", hue="method", col="metric", kind="bar",
                col_wrap=2, sharex=False, height=2.6, aspect=1.4)
g.set_titles("{col_name}")
fig = g.figure
glue("edit_categories", fig, display=False)

# %% [markdown]
# ## Qualitative grid (Figs. 6 and 9 style)

# %%
n_rows = min(n_qualitative or 4, len(records))
cols = ["source", "mask", *[labels[c] for c in E.checkpoints]]
fig, axes = plt.subplots(n_rows, len(cols), figsize=(2.2 * len(cols), 2.4 * n_rows), squeeze=False)
for i, rec in enumerate(records[:n_rows]):
    src = load_image(rec.source_path, options.resolution)
    mask = rec.mask((src.shape[0], src.shape[1]))
    panels = [src, (src * (0.35 + 0.65 * mask[..., None])).astype(np.uint8)]
    for ckpt in E.checkpoints:
        panels.append(load_edited(out / "edits" / checkpoint_label(ckpt) / rec.image_path,
                                  (src.shape[1], src.shape[0])))
    for j, (panel, name) in enumerate(zip(panels, cols)):
        ax = axes[i, j]
        ax.imshow(panel)
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0:
            ax.set_title(textwrap.fill(name, 22), fontsize=7)
    axes[i, 0].set_ylabel(f"{rec.category}\n{rec.target_prompt[:40]}", fontsize=7)
fig.tight_layout()
glue("edit_qualitative", fig, display=False)

# %%
glue_provenance("edit_", prov, out)
