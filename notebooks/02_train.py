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
# # Stage 02 — TokenCompose fine-tuning
#
# Fine-tunes SD1.4's UNet on the stage 01 records with the denoising loss plus TokenCompose's token
# loss (Eq. 1) and pixel loss (Eq. 2) on the cross-attention maps of the decoder layers
# (`reprolib.train`, `reprolib.losses`). The `paper` profile is the authors' recipe (lr 5e-6 constant,
# effective batch 4, 24,500 steps, λ_token = 1e-3, λ_pixel = 5e-5, layers mid_8 and up_16/32/64) on the
# fast path (bf16, the whole effective batch in one forward, cached VAE posteriors); `faithful = True`
# runs the original fp32, batch 1 × 4 accumulation instead (same maths, tested). Setting both λ to 0
# gives the plain fine-tuning control. Runs resume from the latest checkpoint in the output folder.
#
# The `tiny` profile fine-tunes the miniature world's base (`data/miniworld/base`) for a couple of dozen
# steps on CPU on world scenes with exact masks (layers mid_2, up_4/8/16: the world UNet's analogues of
# SD1.4's): its curves show that the pipeline runs end to end; stage 06 runs the controlled experiment.

# %% tags=["parameters"]
profile = "tiny"
steps = None                  # optimizer steps (paper: 24,500)
lr = None
token_loss_scale = None       # λ_token (paper: 1e-3; 0 with pixel_loss_scale 0: plain fine-tune)
pixel_loss_scale = None       # λ_pixel (paper: 5e-5)
precision = None              # mixed precision of the fast path: "no", "fp16", "bf16"
batch_size = None             # effective batch: batch_size x grad_accum (paper: 1 x 4)
grad_accum = None
faithful = None               # True: fp32, batch 1 x accumulation, VAE at every step (the original)
gradient_checkpointing = None
use_ema = None
checkpointing_steps = None
num_workers = None
resume = True                 # continue from the latest checkpoint-N in the output folder
overrides = None              # any other profile overrides {"section.field": value} (the runner passes these)
out_dir = None

# %%
from pathlib import Path

from IPython.display import display
from myst_nb import glue

from reprolib import train as T
from reprolib.config import resolve_device, stage_profile
from reprolib.report import glue_banner, glue_provenance, start_stage
from reprolib.tables import glue_table

params = dict(steps=steps, lr=lr, token_loss_scale=token_loss_scale, pixel_loss_scale=pixel_loss_scale,
              mixed_precision=precision, batch_size=batch_size, grad_accum=grad_accum, faithful=faithful,
              gradient_checkpointing=gradient_checkpointing, use_ema=use_ema,
              checkpointing_steps=checkpointing_steps, num_workers=num_workers)
P = stage_profile(profile, overrides, "train", params)   # profile < runner overrides < parameters set here
prov = start_stage("02", P, {**params, "profile": profile, "resume": resume, "overrides": overrides,
                             "out_dir": out_dir})
out = Path(out_dir or P.train.output_dir)
glue_banner("train_", P)

# %% [markdown]
# ## Training

# %%
result = T.train(P, out_dir=out, resume=resume)
print(f"{result.summary['steps']} steps, completed: {result.completed}, UNet: {result.unet_dir}")

# %% [markdown]
# ## Loss curves and run summary
#
# Per optimizer step (the mean over its samples): the denoising loss and the token and pixel losses
# summed over the trained layer groups (unscaled; the per-group columns are in `log.csv`).

# %%
fig = T.plot_losses(result.log)
glue("train_loss_figure", fig, display=False)

# %%
changes = T.loss_change_table(result.log)
glue_table("train_loss_change", changes.rename_axis("loss"))

# %%
summary = T.summary_table(result.summary)
glue_table("train_summary", summary)

# %%
glue_provenance("train_", prov, out)
