#!/usr/bin/env bash
# Multi-rank scaling beside the cost model, in one invocation: for each
# model, llmir-gpu-bench at TP=1, TP=2, PP=2 (and TP=2 x PP=2 when 4 GPUs are
# visible), decode at batch 1 and 64 (128 prompt + 128 new tokens per
# sequence) and a 2,048-token prefill, one process per rank; then one table:
# config, batch, measured tok/s and ms/step, the cost model's predicted
# ms/step, predicted / measured, speed-up vs TP=1; and the all-reduce (TP)
# and stage-send (PP) times at the model's message sizes beside the model's
# alpha-beta link. Then the cost model calibrated to these runs
# (bench/gpu/multi_report.py: the link fitted to the all-reduces, the device
# to the TP=1 steps of every model, written to
# ${TMPDIR:-/tmp}/llmir-gpu-bench/fitted-cluster-spec.yaml) and the table
# again with its predictions.
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
#                 bench/gpu/h200-x4-calibrated.yaml on cuda, examples/laptop-cpu.yaml on cpu)
#   BENCH_ARGS    more llmir-gpu-bench flags (e.g. "--prompt 16 --new-tokens 8
#                 --prefill 64 --threads 1" for a quick CPU run)
#   REUSE=1       a layout whose JSON is already in the work folder is not run
#                 again (a second call that adds a model to the report)
# Each run's JSON stays in the work folder (multi-MODEL-tpN-ppM.json).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
device=cuda
models=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    -h|--help) sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
  spec="${CLUSTER_SPEC:-$root/bench/gpu/h200-x4-calibrated.yaml}"
  # (the test inside `if`: a failed test in a plain $(...) ended the script under set -e)
  layouts="${LAYOUTS:-tp=1 tp=2 pp=2$(if [ "$gpus" -ge 4 ]; then echo ' tp=2,pp=2'; fi)}"
else
  spec="${CLUSTER_SPEC:-$root/examples/laptop-cpu.yaml}"
  layouts="${LAYOUTS:-tp=1 tp=2 pp=2}"
fi
read -r -a extra <<<"${BENCH_ARGS:-}"
results=()

for model in "${models[@]}"; do
  if [ -d "$model" ]; then
    dir="$model"
  else
    dir="$work/$model"
    [ -f "$dir/model.safetensors" ] ||
      python3 "$root/scripts/make-bench-model.py" "$dir" --dtype bf16 --shape "$model" >&2
  fi
  name="$(basename "$dir")"
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
    if [ "${REUSE:-0}" = 1 ] && [ -s "$out" ]; then
      echo "multi.sh: $name $layout: reusing $out" >&2
    else
      echo "multi.sh: $name $layout" >&2
      "$bin/llmir-gpu-bench" --model "$dir" --device "$device" --tp "$tp" --pp "$pp" \
        --batches "$batches" --cluster-spec "$spec" "${extra[@]}" >"$out.part"
      mv "$out.part" "$out"
    fi
    results+=("$dir=$out")
  done
done
[ ${#results[@]} -gt 0 ] || { echo "multi.sh: no layout ran" >&2; exit 1; }
python3 "$root/bench/gpu/multi_report.py" --bench "$bin/llmir-gpu-bench" --spec "$spec" --fit-every-layout \
  --fitted "$work/fitted-cluster-spec.yaml" "${results[@]}"
