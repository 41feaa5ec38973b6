#!/usr/bin/env bash
# The GPU benchmark suite in one command (<= 8 minutes on one H100/H200; random SD1.4-size weights, no network).
# Results: runs/benchmarks/gpu_suite-<date>.json and a table on stdout; copy the table into benchmarks/RESULTS.md.
# Extra arguments go to benchmarks/gpu_suite.py (e.g. --budget 600, --parts train multigen, --tiny).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs/benchmarks
exec python benchmarks/gpu_suite.py --out "runs/benchmarks/gpu_suite-$(date +%Y%m%d-%H%M%S).json" "$@"
