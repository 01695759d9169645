#!/usr/bin/env bash
# ViT-B/16 at 224 px in bfloat16 on one lent accelerator (written for an NVIDIA H200).
#
# Command, from the repository root:
#   bash benchmarks/gpu_h200.sh [OUT_JSON] [BATCH]
# It runs the CLIP, MAE and MAE-CLIP (and every other registered model's) ViT-B/16 rows of
# benchmarks/train_step.py in bf16 compute (float32 parameters and optimizer state), batch 256
# per device by default, and prints per row: compile time, median step time, examples/s, XLA
# FLOPs per step, the fraction of a 4096^2 bf16 matmul measured in the same process
# (frac_matmul_bf16) and MFU against the chip's dense bf16 peak (mfu_vs_peak: 989 TFLOP/s on an
# H100/H200, from maeclip_jax/perf.py PEAK_FLOPS), plus the MAE-CLIP / CLIP time vs FLOP ratio.
# Target (README, "Performance targets"): MAE-CLIP ViT-B/16 bf16 >= 50% MFU.  About 3-5 minutes
# on an H200. Needs JAX with CUDA on that machine: pip install -e . "jax[cuda13]==0.10.2".
set -euo pipefail
OUT="${1:-${OUT:-/tmp}/bench_gpu_h200.json}"
BATCH="${2:-256}"
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
# Let XLA take most of the memory at once (fewer allocator stalls), keep the default autotuning.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python benchmarks/train_step.py \
  --vit_b16 --widths= --b16_batch="$BATCH" --steps=10 --sections=steps \
  --matmul_n=8192 --out="$OUT"
