#!/usr/bin/env bash
# The multi-GPU tests (CTest label multi_gpu): one rank per GPU over NCCL at
# each layout of LAYOUTS (default "tp=2 pp=2 tp=4 tp=2,pp=2") that has a GPU
# per rank, against the Hugging Face references: llmir-generate
# (tests/integration/multi_gpu_generate_test.py: greedy ids and prompt
# logits) and the local mesh with GPU shard workers (scripts/mesh.sh
# --smoke on the demo model, tests/integration/mesh_fixtures_smoke.sh on the
# ../shared fixtures). Layouts needing more GPUs than visible are skipped.
#
#   scripts/test-multi-gpu.sh            build with CUDA, ctest -L multi_gpu
#   scripts/test-multi-gpu.sh --bin DIR  binaries from DIR, no build (a GPU
#                                        machine without the build's packages)
# PARTS="generate mesh" (the default) chooses which halves run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fixtures="${LLMIR_FIXTURES_DIR:-$root/../shared/fixtures}"
layouts="${LAYOUTS:-tp=2 pp=2 tp=4 tp=2,pp=2}"
if [ "${1:-}" != "--bin" ]; then
  "$root/scripts/install-deps.sh"
  "$root/scripts/build.sh"
  cd "${LLMIR_BUILD_DIR:-$root/build}"
  exec ctest --output-on-failure -L multi_gpu --timeout 1800
fi
bin="$(cd "$2" && pwd)"
export NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}" # the lent machines need multicast off
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
failed=()
step() {
  local name="$1"; shift
  echo "== $name"
  if "$@"; then echo "-- $name: passed"; else echo "-- $name: FAILED"; failed+=("$name"); fi
}
parts="${PARTS:-generate mesh}"
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
if [ ${#failed[@]} -gt 0 ]; then
  echo "test-multi-gpu: ${#failed[@]} failed: ${failed[*]}"
  exit 1
fi
echo "test-multi-gpu: all passed"
