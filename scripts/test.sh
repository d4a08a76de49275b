#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, runs every test
# that runs without a GPU (CTest labels gpu / multi_gpu are excluded here and
# run on a GPU machine with scripts/test-gpu.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh"
cd "${LLMIR_BUILD_DIR:-$root/build}"
ctest --output-on-failure -j "$(nproc)" -LE "gpu|multi_gpu" --timeout 600
