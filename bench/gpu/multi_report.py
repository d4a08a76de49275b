#!/usr/bin/env python3
"""bench/gpu/multi.sh's tables, and the cost model calibrated to them.

usage: multi_report.py --bench BIN --spec BASE.yaml --fitted OUT.yaml MODEL_DIR=RUN.json...

RUN.json is the line llmir-gpu-bench printed for MODEL_DIR at some (tp, pp).
Prints, per model: every decode batch and the prefill of every layout
(tok/s, ms/step, the cost model's ms/step on BASE.yaml, predicted /
measured, speed-up vs TP=1), and the collectives (TP all-reduce, stage send)
beside the alpha-beta link. Then calibrates:
  - the link (interconnect.intra_node latency, bandwidth): a least-squares
    line through the all-reduce times, t = 2 (n-1) latency + 2 (n-1)/n bytes
    / bandwidth;
  - the device (memory_efficiency, matmul_efficiency, attention_efficiency,
    op_overhead, matmul_half_rows): least squares of log(predicted / measured)
    over the TP=1 steps of every model (every step with --fit-every-layout) (Gauss-Newton with damping, the Jacobian by finite
    differences of `llmir-gpu-bench --predict-only`; efficiencies capped at 1);
writes BASE.yaml with those values as OUT.yaml and prints every step again,
predicted on OUT.yaml: the TP=1 steps are what was fitted, the TP and PP steps
check the model's parallel structure.
BASE.yaml must be in the flat form of bench/gpu/h200.yaml (a `device:` block,
`intra_node: {...}` on one line when present).
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile

DEVICE_KEYS = ("memory_efficiency", "matmul_efficiency", "attention_efficiency", "op_overhead",
               "matmul_half_rows")
# The fit's bounds on each key's logarithm (the spec takes op_overhead below
# 1 s; matmul_half_rows from 1 row to 100k).
BOUNDS = [(math.log(1e-5), 0.0)] * 3 + [(math.log(1e-9), math.log(1e-2)),
                                         (0.0, math.log(1e5))]


def config(run):
    parts = [f"TP={run['tp']}"] if run["tp"] > 1 else []
    parts += [f"PP={run['pp']}"] if run["pp"] > 1 else []
    return " x ".join(parts) or "TP=1"


def prefill_key(run):
    return next(k for k in run if k.startswith("prefill_"))


def steps(run):
    """(label, measured ms, key of the prediction) of every timed step."""
    out = [(batch, ms, ("predicted_decode_ms", batch)) for batch, ms in run["decode_ms"].items()]
    key = prefill_key(run)
    out.append((f"prefill {key.split('_')[1]}", run[key], (f"predicted_{key}", None)))
    return out


def predicted_ms(prediction, key):
    field, batch = key
    return prediction[field][batch] if batch is not None else prediction[field]


def write_spec(base_text, device, link, path):
    """BASE with the device's calibration keys and the intra-node link set."""
    lines = [line for line in base_text.splitlines()
             if not re.match(r"\s+(%s):" % "|".join(DEVICE_KEYS), line)
             and not (link and re.match(r"\s+intra_node:.*\}\s*$", line))]
    out = []
    for line in lines:
        out.append(line)
        if line.strip() == "device:":
            out += [f"  memory_efficiency: {device['memory_efficiency']:.4g}",
                    f"  matmul_efficiency: {device['matmul_efficiency']:.4g}",
                    f"  attention_efficiency: {device['attention_efficiency']:.4g}",
                    f"  op_overhead: {device['op_overhead'] * 1e6:.4g}us",
                    f"  matmul_half_rows: {device['matmul_half_rows']:.4g}"]
        if link and line.strip() == "interconnect:":
            out.append(f"  intra_node: {{bandwidth: {link[1]:.4g}, latency: {link[0] * 1e6:.4g}us}}")
    if not any(line.strip() == "device:" for line in lines):
        sys.exit("multi_report: the base spec has no device: block to calibrate")
    if link and not any(line.strip() == "interconnect:" for line in lines):
        out += ["interconnect:",
                f"  intra_node: {{bandwidth: {link[1]:.4g}, latency: {link[0] * 1e6:.4g}us}}"]
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def write_fitted_spec(base_text, device, link, path, runs, every_layout=False):
    write_spec(base_text, device, link, path)
    fitted_to = ", ".join(f"{name} {config(run)}" for name, model_runs in runs.items()
                          for _, run in model_runs)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write("# Calibrated by bench/gpu/multi_report.py (bench/gpu/multi.sh) to the measured\n"
                f"# steps of {fitted_to}: the device to the "
                f"{'steps of every layout' if every_layout else 'TP=1 steps'}, the intra-node\n"
                "# link to the all-reduces (when they gave a line).\n" + text)


class Predictor:
    """llmir-gpu-bench --predict-only for a run's steps on a spec."""

    def __init__(self, bench):
        self.bench = bench
        self.calls = 0

    def __call__(self, model_dir, run, spec_path):
        self.calls += 1
        key = prefill_key(run)
        cmd = [self.bench, "--model", model_dir, "--predict-only", "--cluster-spec", spec_path,
               "--tp", str(run["tp"]), "--pp", str(run["pp"]),
               "--batches", ",".join(run["decode_ms"]), "--prefill", key.split("_")[1],
               "--prompt", str(run.get("prompt", 128)),
               "--new-tokens", str(run.get("new_tokens", 128))]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"multi_report: {' '.join(cmd)} failed:\n{proc.stderr}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def print_steps(runs, predictions, title):
    """One table per model; returns (label, predicted / measured) of every step."""
    ratios = []
    for name, model_runs in runs.items():
        base = next((r for _, r in model_runs if r["tp"] == 1 and r["pp"] == 1), None)
        first = model_runs[0][1]
        print(f"\n## {name} on {first.get('gpu', first['device'])}: {title}\n")
        print("| config | batch | tok/s | ms/step | predicted ms/step | predicted / measured "
              "| speed-up vs TP=1 |")
        print("|---|---|---|---|---|---|---|")
        for (model_dir, run), prediction in zip(model_runs, predictions[name]):
            for label, ms, key in steps(run):
                predicted = predicted_ms(prediction, key)
                ratios.append((f"{name} {config(run)} {label}", predicted / ms))
                if label.startswith("prefill"):
                    tokens = int(label.split()[1])
                    tok_s = 1e3 * tokens / ms
                    base_ms = base[prefill_key(run)] if base and prefill_key(run) in base else None
                else:
                    tok_s = run["decode_tok_s"][label]
                    base_ms = base["decode_ms"].get(label) if base else None
                speedup = f"{base_ms / ms:.2f}x" if base_ms else "-"
                print(f"| {config(run)} | {label} | {tok_s:,.1f} | {ms:.3f} | {predicted:.3f} "
                      f"| {predicted / ms:.2f} | {speedup} |")
    bad = [(label, r) for label, r in ratios if not 0.75 <= r <= 1.25]
    print(f"\nPredicted within 25% of the measured step ({title}): {len(ratios) - len(bad)} of "
          f"{len(ratios)}" + ("" if not bad else "; not: " +
                              ", ".join(f"{label} ({r:.2f})" for label, r in bad)))
    return ratios


def print_collectives(runs):
    rows = [(name, run, kind) for name, model_runs in runs.items() for _, run in model_runs
            for kind in ("all_reduce", "send") if run.get(f"{kind}_us")]
    if not rows:
        return
    print("\n| model | config | collective | bytes | measured us | predicted us "
          "| predicted / measured |")
    print("|---|---|---|---|---|---|---|")
    for name, run, kind in rows:
        label = "all-reduce (TP group)" if kind == "all_reduce" else "send (next stage)"
        for size, us in run[f"{kind}_us"].items():
            predicted = run[f"predicted_{kind}_us"][size]
            print(f"| {name} | {config(run)} | {label} | {int(size):,} | {us:.1f} "
                  f"| {predicted:.1f} | {predicted / us:.2f} |")


def fit_link(runs):
    """(latency s, bandwidth B/s) through every all-reduce time, or None."""
    points = [(run["tp"], int(size), us * 1e-6) for model_runs in runs.values()
              for _, run in model_runs for size, us in run.get("all_reduce_us", {}).items()]
    if len({p[1] for p in points}) < 2:
        return None
    xs = [2 * (n - 1) / n * b for n, b, _ in points]  # bytes a ring moves per rank
    zs = [2 * (n - 1) for n, _, _ in points]          # latencies per all-reduce
    ys = [t for _, _, t in points]
    sxx = sum(x * x for x in xs)
    szz = sum(z * z for z in zs)
    sxz = sum(x * z for x, z in zip(xs, zs))
    sxy = sum(x * y for x, y in zip(xs, ys))
    szy = sum(z * y for z, y in zip(zs, ys))
    det = sxx * szz - sxz * sxz
    if det <= 0:
        return None
    inverse_bandwidth = (sxy * szz - szy * sxz) / det
    latency = (szy * sxx - sxy * sxz) / det
    if latency <= 0 or inverse_bandwidth <= 0:
        print(f"\nThe all-reduce times give no positive alpha-beta line (latency "
              f"{latency * 1e6:.2f} us, 1/bandwidth {inverse_bandwidth:.3g}): the link is kept.")
        return None
    print(f"\nThe all-reduces fit interconnect.intra_node {{latency: {latency * 1e6:.2f}us, "
          f"bandwidth: {1e-9 / inverse_bandwidth:.1f}G}} ({len(points)} points).")
    return latency, 1 / inverse_bandwidth


def fit_device(runs, predict, base_text, link, start, scratch, every_layout=False):
    """The device calibration minimising sum of log(predicted / measured)^2
    over the TP=1 steps (every step with every_layout), or None without
    them."""
    fitted = [(model_dir, run) for model_runs in runs.values() for model_dir, run in model_runs
              if every_layout or (run["tp"] == 1 and run["pp"] == 1)]
    if not fitted:
        return None
    spec_path = os.path.join(scratch, "trial.yaml")

    def unpack(x):
        return {"memory_efficiency": min(1.0, math.exp(x[0])),
                "matmul_efficiency": min(1.0, math.exp(x[1])),
                "attention_efficiency": min(1.0, math.exp(x[2])),
                "op_overhead": math.exp(x[3]),
                "matmul_half_rows": math.exp(x[4])}

    def residuals(x):
        write_spec(base_text, unpack(x), link, spec_path)
        out = []
        for model_dir, run in fitted:
            prediction = predict(model_dir, run, spec_path)
            out += [math.log(predicted_ms(prediction, key) / ms) for _, ms, key in steps(run)]
        return out

    x = [max(lo, min(hi, math.log(start[k]))) for (lo, hi), k in zip(BOUNDS, DEVICE_KEYS)]
    r = residuals(x)
    cost = sum(v * v for v in r)
    damping = 1e-2
    for _ in range(12):
        # Backward differences: an efficiency at its cap of 1 can only go down.
        h = 0.02
        columns = []
        for j in range(len(x)):
            xj = list(x)
            xj[j] -= h
            columns.append([(b - a) / h for a, b in zip(residuals(xj), r)])
        # (J^T J + damping diag) dx = -J^T r, five unknowns: Gaussian elimination.
        n = len(x)
        a = [[sum(columns[i][k] * columns[j][k] for k in range(len(r))) for j in range(n)]
             for i in range(n)]
        g = [-sum(columns[i][k] * r[k] for k in range(len(r))) for i in range(n)]
        for i in range(n):
            a[i][i] += damping * (a[i][i] + 1e-9)
        # A step changes a parameter at most e^2-fold, and stays within its
        # bounds (efficiencies in [1e-5, 1], op_overhead in [1 ns, 10 ms]).
        dx = [max(-2.0, min(2.0, d)) for d in solve(a, g)]
        candidate = [max(lo, min(hi, xi + d))
                     for (lo, hi), xi, d in zip(BOUNDS, x, dx)]
        r_new = residuals(candidate)
        cost_new = sum(v * v for v in r_new)
        if cost_new < cost:
            improvement = cost - cost_new
            x, r, cost = candidate, r_new, cost_new
            damping /= 3
            if improvement < 1e-6:
                break
        else:
            damping *= 10
    device = unpack(x)
    print(f"\nThe {'' if every_layout else 'TP=1 '}steps ({len(r)} of {len(fitted)} run(s)) "
          "fit the device: "
          + ", ".join(f"{k} {device[k]:.4g}" if k != "op_overhead"
                      else f"op_overhead {device[k] * 1e6:.3g}us" for k in DEVICE_KEYS)
          + f" (rms log error {math.sqrt(cost / len(r)):.3f}).")
    return device


def solve(a, b):
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for c in range(n):
        p = max(range(c, n), key=lambda i: abs(m[i][c]))
        m[c], m[p] = m[p], m[c]
        if abs(m[c][c]) < 1e-30:
            continue
        for i in range(n):
            if i != c:
                f = m[i][c] / m[c][c]
                m[i] = [u - f * v for u, v in zip(m[i], m[c])]
    return [m[i][n] / m[i][i] if abs(m[i][i]) > 1e-30 else 0.0 for i in range(n)]


def base_device(text):
    """The base spec's calibration (1, 1, 1, a small overhead to start from)."""
    values = {"memory_efficiency": 1.0, "matmul_efficiency": 1.0, "attention_efficiency": 1.0,
              "op_overhead": 1e-6, "matmul_half_rows": 1.0}
    for key in DEVICE_KEYS:
        match = re.search(r"^\s+%s:\s*([0-9.eE+-]+)\s*(us|ms|ns|s)?\s*$" % key, text, re.M)
        if match:
            scale = {"us": 1e-6, "ms": 1e-3, "ns": 1e-9, "s": 1.0, None: 1.0}[match.group(2)]
            values[key] = max(float(match.group(1)) * scale, 1e-9)
    return values


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--fitted", required=True)
    parser.add_argument("--fit-every-layout", action="store_true",
                        help="fit the device to the steps of every layout, not only TP=1's "
                             "(with one decode batch TP=1 alone cannot tell the weight "
                             "reads from the time per op: TP halves one, not the other)")
    parser.add_argument("runs", nargs="+", help="MODEL_DIR=RUN.json")
    args = parser.parse_args()
    runs = {}
    for item in args.runs:
        model_dir, _, path = item.rpartition("=")
        run = json.loads(open(path).read().strip().splitlines()[-1])
        runs.setdefault(os.path.basename(os.path.normpath(model_dir)), []).append((model_dir, run))
    predict = Predictor(args.bench)
    # The predictions each run printed (on the base spec).
    printed = {name: [run for _, run in model_runs] for name, model_runs in runs.items()}
    print_steps(runs, printed, f"cost model on {args.spec}")
    print_collectives(runs)

    base_text = open(args.spec).read()
    link = fit_link(runs)
    with tempfile.TemporaryDirectory() as scratch:
        device = fit_device(runs, predict, base_text, link, base_device(base_text), scratch,
                            args.fit_every_layout)
    if device is None:
        print("\nNo TP=1 run: the device is not calibrated.")
        return
    write_fitted_spec(base_text, device, link, args.fitted, runs, args.fit_every_layout)
    recalibrated = {name: [predict(d, run, args.fitted) for d, run in model_runs]
                    for name, model_runs in runs.items()}
    print_steps(runs, recalibrated, f"cost model calibrated to these runs ({args.fitted})")


if __name__ == "__main__":
    main()
