#!/usr/bin/env python3
"""The cost model against steps measured on GPUs, without a GPU.

usage: cost_model_calibration_test.py --bench llmir-gpu-bench --root REPO

For every run recorded in bench/gpu/results (a bench/gpu/multi.sh line:
shape, tp, pp, measured decode and prefill milliseconds), writes a
header-only checkpoint of that shape (the safetensors header and a sparse
file of the full size: the predictions read only the headers), asks
`llmir-gpu-bench --predict-only` for the same steps on the calibrated spec
the run names, and checks every prediction is within 25% of the measured
step (the multi-GPU issue's bound). A change to the cost model that moves a
prediction out of it fails here; a new measurement goes in bench/gpu/results
with its spec refitted (bench/gpu/multi_report.py --fit-every-layout).
"""
import argparse
import glob
import importlib.util
import json
import os
import struct
import subprocess
import sys
import tempfile


def header_only_checkpoint(root, shape, out):
    spec = importlib.util.spec_from_file_location("make_bench_model",
                                                  os.path.join(root, "scripts/make-bench-model.py"))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    m.HIDDEN, m.LAYERS, m.HEADS, m.KV_HEADS, m.FFN, m.VOCAB, m.TIED = m.SHAPES[shape]
    m.HEAD_DIM = m.HIDDEN // m.HEADS
    os.makedirs(out, exist_ok=True)
    header, offset = {}, 0
    for name, dims in m.tensor_shapes():
        n = 1
        for d in dims:
            n *= d
        header[name] = {"dtype": "BF16", "shape": dims, "data_offsets": [offset, offset + 2 * n]}
        offset += 2 * n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.truncate(8 + len(text) + offset)  # sparse: no data blocks written
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(m.config("bfloat16"), f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", required=True)
    parser.add_argument("--root", required=True)
    args = parser.parse_args()
    runs = sorted(glob.glob(os.path.join(args.root, "bench/gpu/results/*.json")))
    if not runs:
        sys.exit("no recorded runs in bench/gpu/results")
    failures, checked = [], 0
    with tempfile.TemporaryDirectory() as scratch:
        for path in runs:
            run = json.loads(open(path).read().strip().splitlines()[-1])
            model = os.path.join(scratch, run["shape"])
            if not os.path.isdir(model):
                header_only_checkpoint(args.root, run["shape"], model)
            prefill = next(k for k in run if k.startswith("prefill_") and k.endswith("_ms"))
            cmd = [args.bench, "--model", model, "--predict-only",
                   "--cluster-spec", os.path.join(args.root, run["calibrated_spec"]),
                   "--tp", str(run["tp"]), "--pp", str(run["pp"]),
                   "--batches", ",".join(run["decode_ms"]), "--prefill", prefill.split("_")[1]]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
            predicted = json.loads(proc.stdout.strip().splitlines()[-1])
            steps = [(f"batch {b}", ms, predicted["predicted_decode_ms"][b])
                     for b, ms in run["decode_ms"].items()]
            steps.append((prefill[:-3].replace("_", " "), run[prefill],
                          predicted[f"predicted_{prefill}"]))
            for label, measured, model_ms in steps:
                ratio = model_ms / measured
                checked += 1
                line = (f"{os.path.basename(path)} {label}: measured {measured:.3f} ms, "
                        f"predicted {model_ms:.3f} ms ({ratio:.2f})")
                print(("ok: " if 0.75 <= ratio <= 1.25 else "FAIL: ") + line)
                if not 0.75 <= ratio <= 1.25:
                    failures.append(line)
    if failures:
        sys.exit(f"{len(failures)} of {checked} predictions beyond 25% of the measured step")
    print(f"all {checked} predictions within 25% of the measured steps")


if __name__ == "__main__":
    main()
