#!/usr/bin/env bash
# The multi-GPU tests (CTest label multi_gpu): one rank per GPU over NCCL at
# each layout of LAYOUTS (default "tp=2 pp=2 tp=4 tp=2,pp=2") that has a GPU
# per rank, against the Hugging Face references: llmir-generate
# (tests/integration/multi_gpu_generate_test.py: greedy ids and prompt
# logits) and the local mesh with GPU shard workers (scripts/mesh.sh
# --smoke on the demo model, tests/integration/mesh_fixtures_smoke.sh on the
# ../shared fixtures). Layouts needing more GPUs than visible are skipped.
# Before them, runtime_ipc_allreduce_test: the CUDA IPC all-reduce between
# one process per visible GPU against NCCL, eager and in a replayed graph.
#
#   scripts/test-multi-gpu.sh            build with CUDA, ctest -L multi_gpu
#   scripts/test-multi-gpu.sh --bin DIR  binaries from DIR, no build (a GPU
#                                        machine without the build's packages)
# PARTS="runtime generate mesh fault" (the default) chooses which parts run;
# "runtime" is the NCCL and IPC all-reduce tests; "fault" (4 GPUs or more) is
# tests/integration/mesh_fault_test.py: two tp=2 replicas, one GPU a worker,
# NCCL with the IPC all-reduce, a worker SIGKILLed mid-stream.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fixtures="${LLMIR_FIXTURES_DIR:-$root/../shared/fixtures}"
layouts="${LAYOUTS:-tp=2 pp=2 tp=4 tp=2,pp=2}"
. "$root/scripts/gpu-test-steps.sh"
gpu_tests_start multi_gpu 1800 "$@"
export NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}" # the lent machines need multicast off
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
parts="${PARTS:-runtime generate mesh fault}"
# The runtime's NCCL operations, blocking and stream-ordered (graph replays,
# a dead peer's collective failing the wait instead of hanging it), and the
# IPC all-reduce against NCCL.
if [[ " $parts " == *" runtime "* ]]; then
  step runtime_nccl_test "$bin/runtime_nccl_test"
  step "ipc all-reduce" "$bin/runtime_ipc_allreduce_test"
fi
[[ " $parts " == *" generate "* ]] &&
step "llmir-generate $layouts" python3 "$root/tests/integration/multi_gpu_generate_test.py" \
  --generate "$bin/llmir-generate" --models "$root/models" --fixtures "$fixtures" --layouts "$layouts"
for layout in $layouts; do
  [[ " $parts " == *" mesh "* ]] || break
  tp=1 pp=1
  for part in ${layout//,/ }; do
    case "$part" in tp=*) tp="${part#tp=}" ;; pp=*) pp="${part#pp=}" ;; esac
  done
  if [ $((tp * pp)) -gt "$gpus" ]; then
    echo "SKIPPED mesh $layout: $((tp * pp)) ranks, $gpus GPU(s) visible"
    continue
  fi
  opts=(--device cuda --kv-cache-dtype f32 --tp "$tp" --pp "$pp")
  step "mesh $layout demo" env LLMIR_BUILD_DIR="$(dirname "$bin")" \
    "$root/scripts/mesh.sh" --smoke "${opts[@]}"
  step "mesh $layout fixtures" env LLMIR_BUILD_DIR="$(dirname "$bin")" FIXTURES_ONLY=1 \
    "$root/tests/integration/mesh_fixtures_smoke.sh" "$fixtures" "${opts[@]}"
done
if [[ " $parts " == *" fault "* ]]; then
  if [ "$gpus" -ge 4 ]; then
    step "mesh fault (two tp=2 replicas, a worker killed)" python3 \
      "$root/tests/integration/mesh_fault_test.py" --bin "$bin" --device cuda
  else
    echo "SKIPPED mesh fault: two tp=2 replicas need 4 GPUs, $gpus visible"
  fi
fi
gpu_tests_finish test-multi-gpu
