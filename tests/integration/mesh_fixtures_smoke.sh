#!/usr/bin/env bash
# Every reference fixture served by the whole local mesh (compiler service,
# scheduler in mesh mode, shard workers): scripts/mesh.sh --smoke against
# each checkpoint's reference greedy ids, prompts sent as token ids.
#
#   tests/integration/mesh_fixtures_smoke.sh FIXTURES_DIR [mesh.sh options...]
#
# The fixtures ship no tokenizer and the scheduler needs one to start (it
# detokenizes what it streams), so each runs from a temporary folder with
# the checkpoint's files linked and the demo model's tokenizer.json beside
# them; the ids are what is compared, the text is never looked at. Skips
# (exit 0) when FIXTURES_DIR is absent (CI has no ../shared).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
fixtures="${1:?usage: mesh_fixtures_smoke.sh FIXTURES_DIR [mesh.sh options...]}"
shift
if [ ! -d "$fixtures" ]; then
  echo "SKIPPED: $fixtures not found (../shared absent)"
  exit 0
fi
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
echo "mesh_fixtures_smoke: $count fixture(s) served with their reference ids"
