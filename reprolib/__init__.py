"""reprolib — the small library behind the executable TokenCompose reproducibility report.

One module per concern; data flows profile → stage notebook → reprolib → artifacts on disk → book.

=============  ==============================================================================
module         what it holds
=============  ==============================================================================
config         profiles (``data/profiles/*.yaml``) as typed dataclasses, overrides
io             atomic writes, checksum-verified downloads
models         SD pipeline parts from hub/folder, UNet swap, tiny random models, SD1.4 tokenizer
tokens         noun phrase → token positions in a prompt (as the original training code)
attention      attention processor that captures cross-attention probabilities; the store
losses         TokenCompose token loss (Eq. 1) and pixel loss (Eq. 2), batched
data           training records (metadata.jsonl + masks), COCO download, nouns, Grounded-SAM
train          fine-tuning with accelerate (fast and faithful paths), checkpoints, logs
multigen       MultiGen prompt sets, generation, OWLv2 detection, MG-k scores and statistics
viz            per-token attention maps over time, figures
editing        Blended Latent Diffusion, PIE-Bench loader
metrics        PIE-Bench metrics (structure distance, PSNR, LPIPS, MSE, SSIM, CLIP)
miniworld      the procedural world of the tiny profile
report         provenance, tables and glue helpers for the book
=============  ==============================================================================
"""
__version__ = "0.1.0"
