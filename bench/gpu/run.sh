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
# tok/s per batch and prefill of 2,048 tokens, LLMIR beside the peer, their
# ratio, and LLMIR's batch-1 decode as a fraction of the copy-bandwidth
# roofline measured in the run.
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
for shape in "${shapes[@]}"; do
  model="$work/$shape"
  [ -f "$model/model.safetensors" ] ||
    python3 "$root/scripts/make-bench-model.py" "$model" --dtype bf16 --shape "$shape" >&2
  "$bin/llmir-gpu-bench" --batches "$batches" --model "$model" >"$work/llmir-$shape.json"
  SHAPE="$shape" BATCHES="$batches" MODES=reduce-overhead SKIP_HF=1 \
    TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 python3 "$peer" "$work/peer-$shape.json" >&2
  python3 - "$work/llmir-$shape.json" "$work/peer-$shape.json" "$shape" <<'PY'
import json, sys
ours = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
peer = json.load(open(sys.argv[2]))
shape = sys.argv[3]
roof = ours["roofline_batch1_tok_s"]
print(f"## {shape} shape on {ours['gpu']}: copy bandwidth {ours['copy_bandwidth_gbs']:.0f} GB/s "
      f"(peer's own measure {peer.get('copy_GBps')}), {ours['weight_bytes'] / 1e9:.2f} GB read per "
      f"decode step, batch-1 roofline {roof:.0f} tok/s")
print("| row | LLMIR | peer (torch.compile, CUDA graphs) | LLMIR / peer |")
print("|---|---|---|---|")
for batch, tok in ours["decode_tok_s"].items():
    theirs = peer.get(f"reduce-overhead_decode_b{batch}_tok_s")
    ratio = f"{tok / theirs:.2f}x" if theirs else "-"
    print(f"| decode batch {batch} (tok/s) | {tok:.0f} | {theirs if theirs else '-'} | {ratio} |")
ours_pre = next(v for k, v in ours.items() if k.startswith("prefill_"))
theirs_pre = peer.get("eager_prefill_2048_ms")
print(f"| prefill 2048 (ms, lower is better) | {ours_pre:.1f} | {theirs_pre} | "
      f"{(theirs_pre / ours_pre if theirs_pre else 0):.2f}x |")
b1 = ours["decode_tok_s"].get("1")
if b1:
    print(f"\nLLMIR batch-1 decode: {100 * b1 / roof:.1f}% of the roofline measured in this run.")
PY
done
