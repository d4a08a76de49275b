#!/usr/bin/env bash
# The GPU speed table: LLMIR and the compiled-PyTorch peer (gpt-fast's
# approach) in the same invocation, on the same GPU, same shape.
#
#   bench/gpu/run.sh PEER_SCRIPT [SHAPE...]      (shapes: 1b 8b; default 1b)
#
# PEER_SCRIPT is ../shared/peers/compiled_torch_decoder.py copied into a
# carried folder (../shared does not travel to the GPU machine). Binaries
# come from $LLMIR_BIN (default build/bin; on the lent GPU machine
# /tmp/gpu-bundle/bin through .gpu-bundle/run.sh). BATCHES (default
# 1,8,32,128) applies to both. Writes random bf16 checkpoints under
# ${TMPDIR:-/tmp}/llmir-gpu-bench, then prints one table per shape: decode
# tok/s per batch and prefill of 2,048 tokens, LLMIR at both matmul
# precisions (highest: within f32 rounding; medium: bf16 activations for the
# tensor cores, as the peer) beside the peer, their ratios, and LLMIR's
# batch-1 decode as a fraction of the copy-bandwidth roofline measured in the
# run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
peer="${1:?usage: bench/gpu/run.sh PEER_SCRIPT [SHAPE...]}"
shift
shapes=("${@:-1b}")
[ ${#shapes[@]} -gt 0 ] || shapes=(1b)
bin="${LLMIR_BIN:-$root/build/bin}"
batches="${BATCHES:-1,8,32,128}"
work="${TMPDIR:-/tmp}/llmir-gpu-bench"
mkdir -p "$work"
. "$root/scripts/cudnn-path.sh" # a prompt's attention on cuDNN where it loads
for shape in "${shapes[@]}"; do
  model="$work/$shape"
  [ -f "$model/model.safetensors" ] ||
    python3 "$root/scripts/make-bench-model.py" "$model" --dtype bf16 --shape "$shape" >&2
  # Both matmul precisions: highest (LLMIR's default, products within f32
  # rounding) and medium (activations rounded to bf16, as the peer's bf16
  # model computes).
  for precision in highest medium; do
    "$bin/llmir-gpu-bench" --batches "$batches" --model "$model" --matmul-precision "$precision" \
      >"$work/llmir-$shape-$precision.json"
  done
  SHAPE="$shape" BATCHES="$batches" MODES=reduce-overhead SKIP_HF=1 \
    TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 python3 "$peer" "$work/peer-$shape.json" >&2
  python3 - "$work/llmir-$shape-highest.json" "$work/llmir-$shape-medium.json" \
    "$work/peer-$shape.json" "$shape" <<'PY'
import json, sys
def last_json(path):
    return json.loads(open(path).read().strip().splitlines()[-1])
high, medium = last_json(sys.argv[1]), last_json(sys.argv[2])
peer = json.load(open(sys.argv[3]))
shape = sys.argv[4]
roof = high["roofline_batch1_tok_s"]
print(f"## {shape} shape on {high['gpu']}: copy bandwidth {high['copy_bandwidth_gbs']:.0f} GB/s "
      f"(peer's own measure {peer.get('copy_GBps')}), {high['weight_bytes'] / 1e9:.2f} GB read per "
      f"decode step, batch-1 roofline {roof:.0f} tok/s")
print("| row | LLMIR highest | LLMIR medium | peer (torch.compile, CUDA graphs) "
      "| highest / peer | medium / peer |")
print("|---|---|---|---|---|---|")
def ratio(ours, theirs, lower_is_better=False):
    if not theirs or not ours:
        return "-"
    return f"{(theirs / ours if lower_is_better else ours / theirs):.2f}x"
for batch, tok in high["decode_tok_s"].items():
    med = medium["decode_tok_s"].get(batch)
    theirs = peer.get(f"reduce-overhead_decode_b{batch}_tok_s")
    print(f"| decode batch {batch} (tok/s) | {tok:.0f} | {med:.0f} | {theirs if theirs else '-'} "
          f"| {ratio(tok, theirs)} | {ratio(med, theirs)} |")
def prefill(result):
    return next(v for k, v in result.items() if k.startswith("prefill_"))
theirs_pre = peer.get("eager_prefill_2048_ms")
print(f"| prefill 2048 (ms, lower is better) | {prefill(high):.1f} | {prefill(medium):.1f} | "
      f"{theirs_pre} | {ratio(prefill(high), theirs_pre, True)} "
      f"| {ratio(prefill(medium), theirs_pre, True)} |")
for name, result in (("highest", high), ("medium", medium)):
    b1 = result["decode_tok_s"].get("1")
    if b1:
        print(f"\nLLMIR batch-1 decode ({name}): {100 * b1 / roof:.1f}% of the roofline measured "
              "in this run.")
PY
done
