#!/usr/bin/env bash
# The compiler on the demo model, as a short tour: imports the Hugging Face
# checkpoint into the `llm` dialect, compiles it for a tensor-parallel pair of
# ranks and prints the partitioned IR of @decode. Expects built binaries
# (scripts/build.sh); scripts/run.sh runs it before starting the mesh.
# Usage: scripts/compile-demo.sh [MODEL_DIR]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="${1:-$root/models/demo-llama-4m}"
bin="${LLMIR_BUILD_DIR:-$root/build}/bin"
out="${LLMIR_BUILD_DIR:-$root/build}/demo"
mkdir -p "$out"

echo "== llmir-import $model"
"$bin/llmir-import" "$model" -o "$out/model.mlir"
echo "   $(grep -c 'llm.paged_attention' "$out/model.mlir") attention layers over 2 entry points -> $out/model.mlir"

echo "== llmir-compile --tp 2"
"$bin/llmir-compile" "$out/model.mlir" --tp 2 -o "$out/tp2"
echo "   wrote $(cd "$out/tp2" && ls | tr '\n' ' ')in $out/tp2"
echo "== partitioned IR (@decode, tp=2):"
sed -n '/func.func @decode/,/^  }/p' "$out/tp2/partitioned.mlir"
