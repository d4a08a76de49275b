#!/usr/bin/env bash
# Where a decode step's time goes, per kernel: Nsight Compute over one run of
# llmir-gpu-bench at one batch size, then bench/gpu/kernel_table.py (kernels
# grouped by name and grid: count, mean time, DRAM bytes read, GB/s, total).
# Each kernel runs alone under ncu (clocks left as they are, as the GPU
# machine requires), so a short kernel's time includes ~2 us of its launch;
# compare kernels with each other and with the bytes they must read.
#
#   bench/gpu/profile.sh MODEL_DIR [BATCH]          (default batch 1)
#
# Environment: LLMIR_BIN (default build/bin; on the lent GPU machine
# /tmp/gpu-bundle/bin through .gpu-bundle/run.sh), NCU (default: ncu on the
# PATH, else /usr/local/cuda/bin/ncu), SKIP (kernel launches to skip before
# profiling: past the prompt's prefill into the decode steps; default 3000),
# COUNT (kernels to profile: default 300, about one 8B step at batch 1),
# PRECISION (default medium), OUT (keep ncu's CSV there).
# For stalls by source line (ncu --set full, its source page) build with
# `cmake -DLLMIR_CUDA_LINEINFO=ON` (off by default: larger binaries).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
model="${1:?usage: bench/gpu/profile.sh MODEL_DIR [BATCH]}"
batch="${2:-1}"
bin="${LLMIR_BIN:-$root/build/bin}"
ncu="${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}"
csv="${OUT:-$(mktemp "${TMPDIR:-/tmp}/llmir-profile.XXXXXX.csv")}"
"$ncu" --clock-control none --graph-profiling node \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum \
  --launch-skip "${SKIP:-3000}" --launch-count "${COUNT:-300}" --csv \
  "$bin/llmir-gpu-bench" --model "$model" --batches "$batch" --prefill 16 --new-tokens 64 \
  --matmul-precision "${PRECISION:-medium}" >"$csv"
python3 "$root/bench/gpu/kernel_table.py" "$csv"
echo "ncu's CSV: $csv"
