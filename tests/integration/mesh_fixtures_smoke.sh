#!/usr/bin/env bash
# Every reference fixture served by the whole local mesh (compiler service,
# scheduler in mesh mode, shard workers): scripts/mesh.sh --smoke against
# each checkpoint's reference greedy ids, prompts sent as token ids; then
# replicated KV heads, uneven heads, tp x pp and a padded vocabulary.
#
#   tests/integration/mesh_fixtures_smoke.sh FIXTURES_DIR [mesh.sh options...]
#
# The fixtures ship no tokenizer and the scheduler needs one to start (it
# detokenizes what it streams), so each runs from a temporary folder with
# the checkpoint's files linked and the demo model's tokenizer.json beside
# them; the ids are what is compared, the text is never looked at. Without
# FIXTURES_DIR (CI has no ../shared) only the padded-vocabulary demo runs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
fixtures="${1:?usage: mesh_fixtures_smoke.sh FIXTURES_DIR [mesh.sh options...]}"
shift
[ -d "$fixtures" ] || echo "SKIPPED the fixtures: $fixtures not found (../shared absent)"
work="$(mktemp -d "${TMPDIR:-/tmp}/llmir-fixtures.XXXXXX")"
trap 'rm -rf "$work"' EXIT
count=0
for dir in "$fixtures"/tiny-llama-gqa "$fixtures"/tiny-llama-mha "$fixtures"/families/*; do
  [ -f "$dir/config.json" ] || continue
  name="$(basename "$dir")"
  mkdir -p "$work/$name"
  for f in "$dir"/*; do ln -s "$f" "$work/$name/"; done
  cp "$root/models/demo-llama-4m/tokenizer.json" "$work/$name/"
  echo "== $name"
  "$root/scripts/mesh.sh" --smoke --model "$work/$name" "$@"
  count=$((count + 1))
done
# FIXTURES_ONLY=1 stops here (a caller choosing its own layouts, such as
# scripts/test-multi-gpu.sh).
if [ "${FIXTURES_ONLY:-0}" = 1 ]; then
  echo "mesh_fixtures_smoke: $count replica(s) served their reference ids"
  exit 0
fi
# The partitioner's harder layouts through the same mesh: replicated KV heads
# (2 KV heads over tp=4), uneven heads (8 over tp=3), the sliding window over
# tp x pp, and a vocabulary tp does not divide (the demo model cut to 2045
# tokens: its reference ids all stay below that).
layout() {
  local dir="$1"; shift
  [ -f "$dir/config.json" ] || return 0
  echo "== $(basename "$dir") $*"
  "$root/scripts/mesh.sh" --smoke --model "$dir" "${extra[@]}" "$@"
  count=$((count + 1))
}
extra=("$@")
layout "$work/tiny-llama-gqa" --tp 4
layout "$work/tiny-llama-gqa" --tp 3
layout "$work/tiny-mistral-swa" --tp 2 --pp 2
demo="$root/models/demo-llama-4m"
python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); from parallel_generate_test import truncated_vocabulary; truncated_vocabulary(sys.argv[2], 2045, sys.argv[3])' \
  "$root/tests/integration" "$demo" "$work/demo-vocab-2045"
cp "$demo/reference.json" "$demo/tokenizer.json" "$work/demo-vocab-2045/"
layout "$work/demo-vocab-2045" --tp 2
echo "mesh_fixtures_smoke: $count replica(s) served their reference ids"
