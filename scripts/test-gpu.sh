#!/usr/bin/env bash
# The GPU tests (CTest label gpu): the CUDA kernels against the CPU kernels,
# the CUDA backend against the CPU backend instruction by instruction on
# compiled replicas, llmir-generate --device cuda against the Hugging Face
# references, replicas of GPU shard workers (the family and uneven-split
# layouts of mesh_test) and a GPU shard worker behind the scheduler.
#
#   scripts/test-gpu.sh            build with CUDA (scripts/build.sh), ctest -L gpu
#   scripts/test-gpu.sh --bin DIR  run the same tests with binaries from DIR,
#                                  no build and no CTest (a GPU machine without
#                                  the build's packages: see docs/cuda.md)
# Set COMPUTE_SANITIZER=1 to run the two gtest binaries under
# compute-sanitizer memcheck and racecheck as well.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fixtures="${LLMIR_FIXTURES_DIR:-$root/../shared/fixtures}"
. "$root/scripts/gpu-test-steps.sh"
gpu_tests_start gpu 900 "$@"
export LLMIR_SOURCE_DIR="$root"
step engine_backend_ops_test "$bin/engine_backend_ops_test"
step backend_consistency_test "$bin/backend_consistency_test"
# racecheck reports hazards inside cuBLAS's own Hopper GEMM kernels
# (nvjet_*: their TMA/mbarrier ordering is beyond its model; excluding them
# with --kernel-name-exclude makes the sanitizer fail on a hardware
# exception), so its step passes when every hazard it reports is in one of
# those and none is in a kernel of the project.
racecheck() {
  local out status
  out="$(timeout 600 compute-sanitizer --tool racecheck "$@" 2>&1)" && status=0 || status=$?
  [ "$status" != 124 ] || { echo "racecheck timed out"; return 1; }
  echo "$out" | grep -E '^=========|PASSED|FAILED' | head -40
  local ours
  ours="$(echo "$out" | grep -E 'Race reported' | grep -v 'nvjet_' || true)"
  [ -z "$ours" ] || { echo "hazards in the project's kernels:"; echo "$ours"; return 1; }
  echo "$out" | grep -q '\[  PASSED  \]' && ! echo "$out" | grep -q '\[  FAILED  \]'
}
# Every case of the consistency test (tp, pp, sp and their mixes, and the
# fast paths) under one tool, each case its own process, all at once on the
# GPU: one after another they take over ten minutes, together about three.
sanitize_consistency() { # TOOL
  local tool="$1" pids=() names=() rc=0 i
  for filter in '*/0' '*/1' '*/2' '*/3' '*/4' '*/5' 'BackendFastPaths.*'; do
    local log; log="$(mktemp)"
    if [ "$tool" = racecheck ]; then
      racecheck "$bin/backend_consistency_test" --gtest_filter="$filter" >"$log" 2>&1 &
    else
      timeout 600 compute-sanitizer --tool memcheck --error-exitcode 1 \
        "$bin/backend_consistency_test" --gtest_filter="$filter" >"$log" 2>&1 &
    fi
    pids+=($!) names+=("$filter:$log")
  done
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
      rc=1
      echo "-- ${names[$i]%%:*} failed:"; tail -20 "${names[$i]#*:}"
    fi
    grep -E 'SUMMARY' "${names[$i]#*:}" | sed "s|^|${names[$i]%%:*} |"
    rm -f "${names[$i]#*:}"
  done
  return $rc
}
if [ "${COMPUTE_SANITIZER:-0}" = 1 ]; then
  step "compute-sanitizer memcheck engine_backend_ops_test" \
    timeout 600 compute-sanitizer --tool memcheck --error-exitcode 1 "$bin/engine_backend_ops_test"
  step "compute-sanitizer memcheck backend_consistency_test" sanitize_consistency memcheck
  step "compute-sanitizer racecheck engine_backend_ops_test" \
    racecheck "$bin/engine_backend_ops_test"
  step "compute-sanitizer racecheck backend_consistency_test" sanitize_consistency racecheck
fi
step llmir_generate_gpu python3 "$root/tests/integration/gpu_generate_test.py" \
  --generate "$bin/llmir-generate" --models "$root/models" --fixtures "$fixtures"
step mesh_test_gpu env LLMIR_TEST_WORKER_DEVICE=cuda LLMIR_TEST_WORKER_COLLECTIVES=gloo \
  LLMIR_FIXTURES_DIR="$fixtures" LLMIR_BIN_DIR="$bin" "$bin/mesh_test" --gtest_filter='*Families*'
step mesh_smoke_fixtures_gpu env LLMIR_BUILD_DIR="$(dirname "$bin")" \
  "$root/tests/integration/mesh_fixtures_smoke.sh" "$fixtures" --tp 2 --device cuda --kv-cache-dtype f32 \
  --smoke-logprobs 1e-4
step mesh_smoke_fixtures_gpu_bf16_kv env LLMIR_BUILD_DIR="$(dirname "$bin")" FIXTURES_ONLY=1 \
  "$root/tests/integration/mesh_fixtures_smoke.sh" "$fixtures" --tp 1 --device cuda --kv-cache-dtype bf16 \
  --smoke-ids 8 --smoke-logprobs 2e-2
step mesh_smoke_gpu env LLMIR_BUILD_DIR="$(dirname "$bin")" \
  "$root/scripts/mesh.sh" --smoke --tp 1 --device cuda --kv-cache-dtype f32 --smoke-logprobs 1e-3
step mesh_smoke_gpu_bf16_kv env LLMIR_BUILD_DIR="$(dirname "$bin")" \
  "$root/scripts/mesh.sh" --smoke --tp 1 --device cuda --kv-cache-dtype bf16 --smoke-ids 8 --smoke-logprobs 2e-2
step mesh_smoke_gpu_pipelined env LLMIR_BUILD_DIR="$(dirname "$bin")" \
  "$root/scripts/mesh.sh" --smoke --tp 1 --device cuda --worker-arg --worker.pipeline-decodes=on \
  --smoke-launched-behind
gpu_tests_finish test-gpu
