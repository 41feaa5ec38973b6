"""reprolib — the small library behind the executable TokenCompose reproducibility report.

One module per concern; data flows profile → stage notebook → reprolib → artifacts on disk → book.

=============  ==============================================================================
module         what it holds
=============  ==============================================================================
config         profiles (``data/profiles/*.yaml``) as typed dataclasses, overrides
io             atomic writes, killed writers' temp files cleaned, checksum-verified downloads
models         SD pipeline parts from hub/folder, UNet swap, tiny random models, SD1.4 tokenizer
tokens         noun phrase → token positions in a prompt (as the original training code)
attention      attention processor that captures cross-attention probabilities; the store
losses         TokenCompose token loss (Eq. 1) and pixel loss (Eq. 2), batched
data           training records (metadata.jsonl + masks), COCO download, nouns, the tiny dataset
gsam           Grounded-SAM (GroundingDINO boxes + SAM / SAM-HQ masks): the original's logic, backends, runs, QA
gsam_official  the official backend: groundingdino-py + segment-anything-hq, checkpoints, random ones
train          fine-tuning with accelerate (fast and faithful paths), checkpoints, logs
distributed    launched processes: the process state for a device, whole-batch shards
multigen       MultiGen prompt sets, generation, MG-k scores (original) and statistics (CIs, paired tests)
detection      OWLv2 (or the miniature world's detector) over generated images, per-image JSON
viz            per-token attention maps over time, figures
editing        Blended Latent Diffusion (the official script's maths, quirks and switches)
piebench       PIE-Bench mapping_file.json loader, RLE masks, a synthetic PIE-Bench-format set
metrics        PIE-Bench metrics (structure distance, PSNR, LPIPS, MSE, SSIM, CLIP)
miniworld      the procedural world of the tiny profile (shapes, captions, exact masks)
worlddetector  the exact detector of the miniature world (stands in for OWLv2 there)
miniexp        the miniature replication: TokenCompose vs plain fine-tune, MultiGen-mini, gates, committed runs
reported       reported numbers with their sources: the report's Tables 1-2, the authors' README, PIE-Bench
reanalysis     Welch tests of the reported Table 1 from its summary statistics, Holm, detectable differences
claims         the claims ledger: the report's claims (data/report/claims.yaml), their tests and verdicts
tables         the book's one table helper (great-tables): cells, bold, spanners, checkpoint display names
report         provenance, banners and glue helpers for the book
runner         the one-command run: stage notebooks with papermill (cached), then the book; its stage check
smoke          the paper profile at full size without weights: real architectures (data/archs), random models, a hub cache, the smoke run
=============  ==============================================================================
"""
__version__ = "0.1.0"
