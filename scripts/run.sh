#!/usr/bin/env bash
# The README's main command: installs what is missing, builds, then runs the
# main job on the embedded demo model (models/demo-llama-4m):
#   1. imports the Hugging Face checkpoint into the `llm` dialect,
#   2. compiles it for a tensor-parallel pair of ranks and prints the
#      partitioned IR's summary and the plan,
#   3. generates a continuation of a prompt on the CPU engine.
# The serving mesh (scheduler + workers + compiler service) replaces step 3
# once it exists (issue 7).
# Usage: scripts/run.sh [MODEL_DIR] [PROMPT]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="${1:-$root/models/demo-llama-4m}"
prompt="${2:-def fibonacci(n):}"
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" >/dev/null
bin="${LLMIR_BUILD_DIR:-$root/build}/bin"
out="${LLMIR_BUILD_DIR:-$root/build}/demo"
mkdir -p "$out"

echo "== llmir-import $model"
"$bin/llmir-import" "$model" -o "$out/model.mlir"
echo "   $(grep -c 'llm.paged_attention' "$out/model.mlir") attention layers over 2 entry points -> $out/model.mlir"

if [ -x "$bin/llmir-compile" ]; then
  echo "== llmir-compile --tp 2"
  "$bin/llmir-compile" "$out/model.mlir" --tp 2 -o "$out/tp2"
  echo "   wrote $(cd "$out/tp2" && ls | tr '\n' ' ')in $out/tp2"
  echo "== partitioned IR (@decode, tp=2):"
  sed -n '/func.func @decode/,/^  }/p' "$out/tp2/partitioned.mlir"
fi

echo "== llmir-generate --prompt $(printf '%q' "$prompt")"
"$bin/llmir-generate" --model "$model" --prompt "$prompt" --max-tokens 64
