#!/usr/bin/env python3
"""llmir-gpu-bench with one process per rank, on CPU ranks over Gloo.

On the embedded demo model, at TP=2 and PP=2 (real rank processes on
loopback), the JSON rank 0 prints carries every field bench/gpu/multi.sh reads
with sane values: decode tok/s and ms/step per batch (consistent with each
other), the prefill, the cost model's predictions at that (tp, pp) (the same
as --predict-only's), the collectives at the model's message sizes (the TP
all-reduce of [tokens, hidden] f32, the stage send) beside their predictions.
No timing is asserted. The decode ids of the default loop (the host a step
ahead) and of --synchronous-decode agree, in one process and at TP=2. Then bench/gpu/multi.sh --device cpu end to end on the
same model: its table has a row per layout and batch, and the cost model
calibrated to the runs is written and used. Bad flags fail with a clear
message.
"""
import argparse
import json
import math
import os
import subprocess
import sys

failures = []


def check(condition, what):
    if not condition:
        failures.append(what)
        print(f"FAIL: {what}")


def positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


BATCHES = [1, 4]
PREFILL = 64
QUICK = ["--batches", ",".join(map(str, BATCHES)), "--prompt", "16", "--new-tokens", "8",
         "--prefill", str(PREFILL), "--threads", "1", "--timeout-s", "60"]


def bench(args, extra):
    cmd = [args.bench, "--model", args.model, "--device", "cpu", "--cluster-spec",
           args.cluster_spec, *QUICK, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        print(proc.stderr)
        check(False, f"{' '.join(extra)}: exit {proc.returncode}")
        return None
    lines = proc.stdout.strip().splitlines()
    check(len(lines) == 1, f"{' '.join(extra)}: one JSON line on stdout, got {len(lines)}")
    return json.loads(lines[-1])


def check_run(args, tp, pp, hidden):
    label = f"tp={tp} pp={pp}"
    run = bench(args, ["--tp", str(tp), "--pp", str(pp)])
    if run is None:
        return
    print(f"{label}: {json.dumps(run)}")
    check(run["engine"] == "llmir" and run["device"] == "cpu", f"{label}: engine and device")
    check((run["tp"], run["pp"], run["world_size"]) == (tp, pp, tp * pp), f"{label}: degrees")
    check(run["collectives"] == "gloo", f"{label}: CPU ranks over Gloo")
    keys = {str(b) for b in BATCHES}
    for field in ("decode_tok_s", "decode_ms", "predicted_decode_ms"):
        check(set(run[field]) == keys, f"{label}: {field} has every batch")
        check(all(positive(v) for v in run[field].values()), f"{label}: {field} positive")
    for b in BATCHES:
        tok, ms = run["decode_tok_s"][str(b)], run["decode_ms"][str(b)]
        check(abs(tok * ms / 1e3 / b - 1) < 1e-2, f"{label}: batch {b} tok/s = batch / step")
    check(positive(run[f"prefill_{PREFILL}_ms"]), f"{label}: prefill timed")
    check(positive(run[f"predicted_prefill_{PREFILL}_ms"]), f"{label}: prefill predicted")
    check(positive(run["weight_bytes"]), f"{label}: weight bytes")

    # The predictions are the cost model's at this (tp, pp): --predict-only's.
    alone = bench(args, ["--tp", str(tp), "--pp", str(pp), "--predict-only"])
    if alone:
        check(alone["predicted_decode_ms"] == run["predicted_decode_ms"],
              f"{label}: predictions equal --predict-only's")

    # Collectives at the model's message sizes: [tokens, hidden] f32 for each
    # decode batch and the prefill's chunk (pp chunks of the prompt).
    sizes = {str(t * hidden * 4) for t in BATCHES + [PREFILL // pp]}
    per_step = run["collectives_per_step"]
    if tp > 1:
        check(set(run["all_reduce_us"]) == sizes, f"{label}: all-reduce sizes {sorted(sizes)}")
        check(set(run["predicted_all_reduce_us"]) == sizes, f"{label}: all-reduce predicted")
        check(all(positive(v) for v in run["all_reduce_us"].values()), f"{label}: all-reduce us")
        check(all(positive(v) for v in run["predicted_all_reduce_us"].values()),
              f"{label}: predicted all-reduce us")
        check(per_step["all_reduce"] >= 2 * 4, f"{label}: two all-reduces a layer")
    else:
        check(run["all_reduce_us"] == {} and per_step["all_reduce"] == 0,
              f"{label}: no TP all-reduce")
    if pp > 1:
        check(set(run["send_us"]) == sizes, f"{label}: send sizes {sorted(sizes)}")
        check(all(positive(v) for v in run["send_us"].values()), f"{label}: send us")
        check(set(run["predicted_send_us"]) == sizes, f"{label}: send predicted")
        check(per_step["send"] >= 1, f"{label}: rank 0 sends to the next stage")
    else:
        check(run["send_us"] == {}, f"{label}: no stage send")


def check_decode_loops_agree(args, tp):
    """The host a step ahead (Executor::launchStep, the default loop) feeds
    each step the ids of the one before it: the ids (their hash) must be
    those of --synchronous-decode, batch by batch."""
    label = f"tp={tp}"
    ahead = bench(args, ["--tp", str(tp)])
    synchronous = bench(args, ["--tp", str(tp), "--synchronous-decode"])
    if ahead is None or synchronous is None:
        return
    keys = {str(b) for b in BATCHES}
    check(set(ahead["decode_ids_hash"]) == keys, f"{label}: an ids hash for every batch")
    check(ahead["decode_ids_hash"] == synchronous["decode_ids_hash"],
          f"{label}: the decode ids a step ahead equal the synchronous loop's: "
          f"{ahead['decode_ids_hash']} vs {synchronous['decode_ids_hash']}")


def check_bad_flags(args):
    for extra, expected in ((["--tp", "0"], "tp and pp must be >= 1"),
                            (["--batches", "1,x"], "expects a list of positive integers, got '1,x'"),
                            (["--pp", "2", "--prefill", "1"], "one token per pipeline stage")):
        cmd = [args.bench, "--model", args.model, "--device", "cpu", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        check(proc.returncode == 2 and expected in proc.stderr,
              f"{' '.join(extra)}: exit 2 naming the problem, got {proc.returncode}: {proc.stderr}")
    # A model directory that does not exist: the launcher says so, no rank starts.
    proc = subprocess.run([args.bench, "--model", "/nonexistent/model", "--device", "cpu",
                           "--tp", "2"], capture_output=True, text=True, timeout=60)
    check(proc.returncode == 1 and "/nonexistent/model" in proc.stderr,
          f"missing model: exit 1 naming it, got {proc.returncode}: {proc.stderr}")


def check_multi_script(args):
    env = dict(os.environ, LLMIR_BIN=os.path.dirname(args.bench), BATCHES="1,4",
               LAYOUTS="tp=1 tp=2 pp=2", BENCH_ARGS=" ".join(QUICK[2:]),
               TMPDIR=args.work)
    proc = subprocess.run([args.multi, "--device", "cpu", args.model], capture_output=True,
                          text=True, timeout=900, env=env)
    print(proc.stdout)
    if proc.returncode != 0:
        print(proc.stderr)
    check(proc.returncode == 0, f"multi.sh exit {proc.returncode}")
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    for config in ("TP=1", "TP=2", "PP=2"):
        for batch in ("1", "4", f"prefill {PREFILL}"):
            check(any(line.startswith(f"| {config} | {batch} |") for line in rows),
                  f"multi.sh: a row for {config} batch {batch}")
    check(any(line.startswith("| TP=2 | 1 |") and line.rstrip().endswith("x |") for line in rows),
          "multi.sh: TP=2 has a speed-up against TP=1")
    check(any("all-reduce (TP group)" in line for line in rows), "multi.sh: all-reduce rows")
    check(any("send (next stage)" in line for line in rows), "multi.sh: send rows")
    check("Predicted within 25% of the measured step (cost model on" in proc.stdout,
          "multi.sh: the summary on the given spec")
    # The calibration: a spec the bench accepts (the second table's
    # predictions come from it), with the fitted device keys.
    fitted = os.path.join(args.work, "llmir-gpu-bench", "fitted-cluster-spec.yaml")
    check("cost model calibrated to these runs" in proc.stdout, "multi.sh: the calibrated table")
    check(os.path.exists(fitted) and "memory_efficiency:" in open(fitted).read(),
          "multi.sh: the fitted cluster spec")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench", required=True)
    parser.add_argument("--multi", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--cluster-spec", required=True)
    parser.add_argument("--work", required=True)
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    hidden = json.load(open(os.path.join(args.model, "config.json")))["hidden_size"]
    check_bad_flags(args)
    check_run(args, 2, 1, hidden)
    check_run(args, 1, 2, hidden)
    for tp in (1, 2):
        check_decode_loops_agree(args, tp)
    check_multi_script(args)
    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
