#!/usr/bin/env bash
# Multi-rank scaling beside the cost model, in one invocation: for each
# model, llmir-gpu-bench at TP=1, TP=2, PP=2 (and TP=2 x PP=2 when 4 GPUs are
# visible), decode at batch 1 and 64 (128 prompt + 128 new tokens per
# sequence) and a 2,048-token prefill, one process per rank; then one table:
# config, batch, measured tok/s and ms/step, the cost model's predicted
# ms/step, predicted / measured, speed-up vs TP=1; and the all-reduce (TP)
# and stage-send (PP) times at the model's message sizes beside the model's
# alpha-beta link, with the link fitted to the all-reduces.
#
#   bench/gpu/multi.sh [--device cuda|cpu] [MODEL...]     (default: 8b 1b)
#
# MODEL is a shape of scripts/make-bench-model.py (8b, 1b, smollm: a random
# bf16 checkpoint written under ${TMPDIR:-/tmp}/llmir-gpu-bench when missing)
# or a checkpoint directory. Binaries come from $LLMIR_BIN (default
# build/bin; on the lent GPU machine /tmp/gpu-bundle/bin through
# .gpu-bundle/run.sh). Environment:
#   BATCHES       decode batch sizes (default 1,64)
#   LAYOUTS       e.g. "tp=1 tp=2 pp=2 tp=2,pp=2" (default: the first three,
#                 the fourth with 4 GPUs; layouts needing more GPUs than
#                 visible are skipped; tp=1 is the speed-up's base)
#   CLUSTER_SPEC  the cost model's device and link (default
#                 bench/gpu/h200.yaml on cuda, examples/laptop-cpu.yaml on cpu)
#   BENCH_ARGS    more llmir-gpu-bench flags (e.g. "--prompt 16 --new-tokens 8
#                 --prefill 64 --threads 1" for a quick CPU run)
# Each run's JSON stays in the work folder (multi-MODEL-LAYOUT.json).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
device=cuda
models=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) models+=("$1"); shift ;;
  esac
done
[ ${#models[@]} -gt 0 ] || models=(8b 1b)
case "$device" in
  cuda|cpu) ;;
  *) echo "multi.sh: --device is cuda or cpu, not '$device'" >&2; exit 2 ;;
esac
bin="${LLMIR_BIN:-$root/build/bin}"
batches="${BATCHES:-1,64}"
work="${TMPDIR:-/tmp}/llmir-gpu-bench"
mkdir -p "$work"
export NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}" # the lent machines need multicast off
gpus=0
if [ "$device" = cuda ]; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  spec="${CLUSTER_SPEC:-$root/bench/gpu/h200.yaml}"
  layouts="${LAYOUTS:-tp=1 tp=2 pp=2$([ "$gpus" -ge 4 ] && echo ' tp=2,pp=2')}"
else
  spec="${CLUSTER_SPEC:-$root/examples/laptop-cpu.yaml}"
  layouts="${LAYOUTS:-tp=1 tp=2 pp=2}"
fi
read -r -a extra <<<"${BENCH_ARGS:-}"

for model in "${models[@]}"; do
  if [ -d "$model" ]; then
    dir="$model"
  else
    dir="$work/$model"
    [ -f "$dir/model.safetensors" ] ||
      python3 "$root/scripts/make-bench-model.py" "$dir" --dtype bf16 --shape "$model" >&2
  fi
  name="$(basename "$dir")"
  results=()
  for layout in $layouts; do
    tp=1 pp=1
    for part in ${layout//,/ }; do
      case "$part" in
        tp=*) tp="${part#tp=}" ;;
        pp=*) pp="${part#pp=}" ;;
        *) echo "multi.sh: layout '$layout' is not tp=N[,pp=M]" >&2; exit 2 ;;
      esac
    done
    if [ "$device" = cuda ] && [ $((tp * pp)) -gt "$gpus" ]; then
      echo "multi.sh: skipping $layout: $((tp * pp)) ranks, $gpus GPU(s) visible" >&2
      continue
    fi
    out="$work/multi-$name-tp$tp-pp$pp.json"
    echo "multi.sh: $name $layout" >&2
    "$bin/llmir-gpu-bench" --model "$dir" --device "$device" --tp "$tp" --pp "$pp" \
      --batches "$batches" --cluster-spec "$spec" "${extra[@]}" >"$out"
    results+=("$out")
  done
  python3 - "$name" "$spec" "${results[@]}" <<'PY'
import json, sys

name, spec, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
runs = [json.loads(open(p).read().strip().splitlines()[-1]) for p in paths]
if not runs:
    sys.exit(f"multi.sh: no layout of {name} ran")

def config(run):
    parts = [f"TP={run['tp']}"] if run["tp"] > 1 else []
    parts += [f"PP={run['pp']}"] if run["pp"] > 1 else []
    return " x ".join(parts) or "TP=1"

base = next((r for r in runs if r["tp"] == 1 and r["pp"] == 1), None)
first = runs[0]
where = first.get("gpu", first["device"])
print(f"\n## {name} on {where} (cost model: {spec})\n")
print("| config | batch | tok/s | ms/step | predicted ms/step | predicted / measured "
      "| speed-up vs TP=1 |")
print("|---|---|---|---|---|---|---|")
ratios = []
for run in runs:
    for batch, tok in run["decode_tok_s"].items():
        ms = run["decode_ms"][batch]
        predicted = run["predicted_decode_ms"][batch]
        ratios.append((f"{config(run)} batch {batch}", predicted / ms))
        speedup = tok / base["decode_tok_s"][batch] if base and batch in base["decode_tok_s"] else None
        print(f"| {config(run)} | {batch} | {tok:,.1f} | {ms:.3f} | {predicted:.3f} "
              f"| {predicted / ms:.2f} | {f'{speedup:.2f}x' if speedup else '-'} |")
    key = next(k for k in run if k.startswith("prefill_"))
    tokens = int(key.split("_")[1])
    ms, predicted = run[key], run[f"predicted_{key}"]
    ratios.append((f"{config(run)} prefill {tokens}", predicted / ms))
    speedup = base[key] / ms if base and key in base else None
    print(f"| {config(run)} | prefill {tokens} | {1e3 * tokens / ms:,.1f} | {ms:.3f} "
          f"| {predicted:.3f} | {predicted / ms:.2f} | {f'{speedup:.2f}x' if speedup else '-'} |")

links = [(run, kind) for run in runs for kind in ("all_reduce", "send") if run.get(f"{kind}_us")]
if links:
    print("\n| config | collective | bytes | measured us | predicted us | predicted / measured |")
    print("|---|---|---|---|---|---|")
    for run, kind in links:
        for size, us in run[f"{kind}_us"].items():
            predicted = run[f"predicted_{kind}_us"][size]
            label = "all-reduce (TP group)" if kind == "all_reduce" else "send (next stage)"
            print(f"| {config(run)} | {label} | {int(size):,} | {us:.1f} | {predicted:.1f} "
                  f"| {predicted / us:.2f} |")
    # The link the cost model would need: a least-squares line through the
    # all-reduce times, t = 2 (n - 1) latency + 2 (n - 1) / n * bytes / bandwidth.
    points = [(run["tp"], int(size), us * 1e-6) for run in runs
              for size, us in run.get("all_reduce_us", {}).items()]
    sizes = {p[1] for p in points}
    if len(sizes) >= 2:
        n = len(points)
        xs = [2 * (t - 1) / t * b for t, b, _ in points]  # bytes the ring moves per rank
        zs = [2 * (t - 1) for t, _, _ in points]          # latency terms
        ys = [s for _, _, s in points]
        # Two unknowns (latency, 1 / bandwidth): normal equations.
        sxx = sum(x * x for x in xs); szz = sum(z * z for z in zs); sxz = sum(x * z for x, z in zip(xs, zs))
        sxy = sum(x * y for x, y in zip(xs, ys)); szy = sum(z * y for z, y in zip(zs, ys))
        det = sxx * szz - sxz * sxz
        if det > 0:
            inverse_bw = (sxy * szz - szy * sxz) / det
            latency = (szy * sxx - sxy * sxz) / det
            bw = f"{1e-9 / inverse_bw:.1f}G" if inverse_bw > 0 else "unbounded (no size effect)"
            print(f"\nThe all-reduces fit interconnect.intra_node {{latency: {latency * 1e6:.2f}us, "
                  f"bandwidth: {bw}}} (alpha-beta, {n} points).")

bad = [(label, r) for label, r in ratios if not 0.75 <= r <= 1.25]
print(f"\nPredicted within 25% of the measured step: {len(ratios) - len(bad)} of {len(ratios)}"
      + ("" if not bad else "; not: " + ", ".join(f"{label} ({r:.2f})" for label, r in bad)))
PY
done
