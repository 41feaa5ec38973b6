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
# # Stage 06 — a miniature replication in the miniworld
#
# Does token-level supervision improve multi-category composition when everything is small enough to
# run on a laptop? The shipped base model (`data/miniworld/base`, trained from scratch by
# `scripts/train_world_base.py` on world scenes that mostly show one or two shapes; its provenance is
# in `data/miniworld/base.json`) is fine-tuned twice on the same multi-object scenes with exact masks,
# same steps, data order, noise and seed (`reprolib.miniexp`):
#
# * **(a) `tokencompose`**: denoising loss + TokenCompose's token and pixel losses on the base UNet's
#   mid and up cross-attention layers (`mid_2`, `up_4`, `up_8`, `up_16`: the analogues of SD1.4's
#   `mid_8`, `up_16/32/64`), with the profile's loss scales (the paper's by default);
# * **(b) `finetune`**: the same with λ = 0, the fair control.
#
# **MultiGen-mini** then generates a fixed set of 5-category prompts over the world's ten nouns
# (several images per prompt, initial noise fixed per image id and shared by all models), asks the
# world detector (held-out accuracy in `data/miniworld/detector.json`) which shapes are present, and
# scores MG1–MG5 with MultiGen's own scorer, with 95 % bootstrap CIs over prompts and paired tests
# between models on the same (prompt, image) cells. The **attention mass inside the mask** runs
# SDEdit from held-out world scenes whose masks are exact (`reprolib.viz.sdedit_mass`).
#
# These are small models in a toy world: the numbers say whether the *mechanism* helps composition
# here, not what it does for Stable Diffusion.

# %% tags=["parameters"]
profile = "tiny"
experiment = "tiny"         # size preset of reprolib.miniexp.SIZES: "toy" (seconds), "tiny" (minutes), "long"
steps = None                # fine-tune steps (None: the preset's)
n_prompts = None            # MultiGen-mini prompts (None: the preset's)
images_per_prompt = None
num_inference_steps = None
guidance_scale = None
token_loss_scale = None     # None: the profile's (the paper's 1e-3)
pixel_loss_scale = None     # None: the profile's (the paper's 5e-5)
base = None                 # base model folder (None: data/miniworld/base)
threads = None              # torch CPU threads (None: the profile's cpu_threads, else torch's default)
overrides = None            # any other profile overrides {"section.field": value}
out_dir = None

# %%
from pathlib import Path

import pandas as pd
import torch
from IPython.display import display
from myst_nb import glue

from reprolib import miniexp
from reprolib.config import stage_profile
from reprolib.report import glue_banner, glue_provenance, start_stage, world_banner_html

params = dict(profile=profile, experiment=experiment, steps=steps, n_prompts=n_prompts,
              images_per_prompt=images_per_prompt, num_inference_steps=num_inference_steps,
              guidance_scale=guidance_scale, token_loss_scale=token_loss_scale,
              pixel_loss_scale=pixel_loss_scale, base=base, threads=threads, out_dir=out_dir, overrides=overrides)
P = stage_profile(profile, overrides, "train",            # profile < runner overrides < parameters set here
                  dict(token_loss_scale=token_loss_scale, pixel_loss_scale=pixel_loss_scale, cpu_threads=threads))
size = miniexp.experiment_size(experiment, steps=steps, n_prompts=n_prompts, images_per_prompt=images_per_prompt,
                               num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
prov = start_stage("06", P, params)
out = Path(out_dir or Path(P.train.output_dir).parent / "miniworld")
glue_banner("world_", P, world_banner_html())   # trained in the world, not random: its own banner
print(prov.short())
pd.DataFrame([size.__dict__]).T.rename(columns={0: "value"})

# %% [markdown]
# ## The base model's sanity check
#
# Recorded by `scripts/train_world_base.py` when the base was made (world detector on its samples).
# If the base cannot draw single shapes, MultiGen-mini cannot show a composition effect, whatever the
# fine-tunes do: read the results below in that light. In particular, a high MG1 next to a low
# single-object rate means the detector fires on generated blobs unlike anything it was trained on
# (false positives), so MG-k then measures the detector rather than composition.

# %%
check = miniexp.base_check(base or miniexp.BASE_DIR)
glue("world_base_check", check, display=False)
display(check)

# %% [markdown]
# ## Run: two fine-tunes, MultiGen-mini, attention mass

# %%
res = miniexp.run_experiment(P, size, out, base=base or miniexp.BASE_DIR)
timings = pd.DataFrame([res.timings]).T.rename(columns={0: "seconds"}).round(1)
glue("world_timings", timings, display=False)
display(timings)

# %% [markdown]
# ## MultiGen-mini: MG1–MG5 (%) with 95 % CIs over prompts

# %%
table = miniexp.mg_table(res.scores)
glue("world_mg_table", table, display=False)
glue("world_scores", res.scores, display=False)
display(table)

# %%
fig = miniexp.mg_curves(res)
glue("world_mg_curves", fig, display=False)

# %% [markdown]
# ## Paired tests
#
# `diff` = MG_k(a) − MG_k(b) in points over the same (prompt, image) cells, with its paired-bootstrap
# CI over prompts and two p-values (bootstrap over prompts; exact McNemar over cells, which ignores
# the clustering by prompt and is the optimistic one).

# %%
paired = res.paired.round(4)
glue("world_paired", paired, display=False)
display(paired)
summary_line = miniexp.verdict(res.paired)
glue("world_verdict", summary_line, display=False)
print(summary_line)

# %% [markdown]
# ## Samples (same initial noise for every model)

# %%
fig = miniexp.sample_grid(res, n_prompts=min(4, size.n_prompts))
glue("world_samples", fig, display=False)

# %% [markdown]
# ## Attention mass inside the mask over denoising steps
#
# SDEdit from held-out 4–5-object world scenes (exact masks), `up_16` maps; dashed: chance (the
# mask's area fraction).

# %%
fig = miniexp.mass_curves(res)
glue("world_mass", fig, display=False)
from reprolib.viz import paired_difference  # noqa: E402

mass_diff = pd.concat([paired_difference(res.mass, b, a, by=("layer", "step"), n_boot=size.n_boot)
                       .assign(a=a, b=b) for a, b in (("tokencompose", "finetune"), ("tokencompose", "base"))],
                      ignore_index=True).round(4)
glue("world_mass_diff", mass_diff, display=False)
display(mass_diff)

# %% [markdown]
# ## Training losses of the two fine-tunes

# %%
logs = pd.concat([log.assign(arm=arm) for arm, log in res.train_logs.items()], ignore_index=True)
cols = [c for c in ("arm", "step", "loss", "denoise", "token", "pixel") if c in logs.columns]
last = logs[cols].groupby("arm").tail(5).groupby("arm").mean(numeric_only=True).round(4)
glue("world_train_last", last, display=False)
display(last)

# %%
glue_provenance("world_", prov, out)
