#!/usr/bin/env bash
# Runs one libFuzzer target for a while: scripts/fuzz.sh TARGET SECONDS [RUNS]
# (RUNS: also stop after that many executions, e.g. 1000000; issue 14 asks
# for 10 minutes or 1M executions per target, whichever comes first)
#   TARGET: safetensors, model_config, tokenizer, cluster_spec,
#           openai_request, framed, store_wire, jinja, mlir_parse
# Builds build-fuzz/ (LLMIR_FUZZ=ON: coverage, ASan, UBSan; no CUDA, no
# tests) on first use. The corpus starts from fuzz/seeds/TARGET and the
# matching files of models/ and tests/, grows in build-fuzz/corpus/TARGET, and
# crashes land in build-fuzz/findings/TARGET (reproduce: the binary with the
# file as its argument). Exit status: libFuzzer's (0 = nothing found).
# One process: the machine is shared.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${1:?usage: scripts/fuzz.sh TARGET SECONDS}"
seconds="${2:?usage: scripts/fuzz.sh TARGET SECONDS [RUNS]}"
runs=()
[ -n "${3:-}" ] && runs=(-runs="$3")
build="${LLMIR_FUZZ_BUILD_DIR:-$root/build-fuzz}"
case "$target" in
  safetensors|model_config|tokenizer|cluster_spec|openai_request|framed|store_wire|jinja|mlir_parse) ;;
  *) echo "fuzz.sh: unknown target '$target' (see the header of $0)" >&2; exit 2 ;;
esac
if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DLLMIR_FUZZ=ON -DLLMIR_ENABLE_CUDA=OFF -DLLMIR_BUILD_TESTS=OFF >/dev/null
fi
cmake --build "$build" --target "fuzz_$target" -j "${LLMIR_JOBS:-2}"

corpus="$build/corpus/$target"
findings="$build/findings/$target"
mkdir -p "$corpus" "$findings"
seed() { for f in "$@"; do [ -f "$f" ] && cp -n "$f" "$corpus/" 2>/dev/null || true; done; }
seed "$root/fuzz/seeds/$target"/*
case "$target" in
  model_config) seed "$root"/models/*/config.json ;;
  tokenizer) # mode byte odd: text for the demo tokenizer (its reference prompts)
    python3 - "$corpus" "$root"/models/*/reference.json <<'PY'
import json, sys
for path in sys.argv[2:]:
    for i, case in enumerate(json.load(open(path)).get("cases", [])):
        with open(f"{sys.argv[1]}/seed-prompt-{i}", "wb") as out:
            out.write(b"\x01" + case["prompt_text"].encode())
PY
    ;;
  cluster_spec) seed "$root"/tests/lit/Passes/Inputs/*.yaml "$root"/examples/*.yaml ;;
  jinja) seed "$root"/tests/fixtures/chat-templates/* ;;
  mlir_parse) # one seed per `// -----` split of each lit .mlir file
    find "$root/tests/lit" -name '*.mlir' -print0 | python3 -c '
import os, sys
out = sys.argv[1]
for path in sys.stdin.read().split("\0"):
    if not path:
        continue
    name = os.path.relpath(path, sys.argv[2]).replace("/", "-")
    for i, part in enumerate(open(path).read().split("// -----")):
        with open(os.path.join(out, f"seed-{name}-{i}"), "w") as f:
            f.write(part)
' "$corpus" "$root/tests/lit"
    ;;
esac
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$root/fuzz/lsan.supp:print_suppressions=0}"
seeds=()
[ -d "$root/fuzz/seeds/$target" ] && seeds=("$root/fuzz/seeds/$target")
exec "$build/bin/fuzz_$target" "$corpus" "${seeds[@]}" \
  -max_total_time="$seconds" "${runs[@]}" -timeout=10 -rss_limit_mb=2048 -max_len=1048576 \
  -artifact_prefix="$findings/" \
  -print_final_stats=1
