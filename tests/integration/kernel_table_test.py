#!/usr/bin/env python3
"""bench/gpu/kernel_table.py on a real Nsight Compute CSV: 24 kernels of an
8B batch-1 decode on an H200 (tests/fixtures/ncu, both metrics, the
program's own output and ncu's notes before the header), and its refusals.

usage: kernel_table_test.py --root REPO
"""
import argparse
import importlib.util
import os
import sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location(
        "kernel_table", os.path.join(args.root, "bench/gpu/kernel_table.py"))
    kt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kt)
    failures = []

    def check(condition, message):
        if not condition:
            failures.append(message)

    text = open(os.path.join(args.root, "tests/fixtures/ncu/h200-8b-decode-excerpt.csv")).read()
    kernels = kt.kernel_rows(text)
    check(len(kernels) == 24, f"{len(kernels)} kernels, expected 24")
    rows = kt.table(kernels)
    by = {(r["kernel"], r["grid"]): r for r in rows}
    gate_up = by.get(("linear16Kernel<1, 1>", "(1792, 1, 1)"))
    check(gate_up is not None and gate_up["count"] == 3, f"gate/up rows: {gate_up}")
    if gate_up:
        # 234.96 MB in ~63 us: bytes from "byte", time from "ns".
        check(abs(gate_up["mean_mb"] - 234.96) < 0.01, f"gate/up MB {gate_up['mean_mb']}")
        check(3600 < gate_up["gb_s"] < 3900, f"gate/up GB/s {gate_up['gb_s']}")
    check(rows[0]["kernel"] == "linear16Kernel<1, 1>", f"heaviest first: {rows[0]['kernel']}")
    check(("addRmsNormKernel", "(1, 1, 1)") in by, "short names: " + ", ".join(k for k, _ in by))
    total = sum(r["total_us"] for r in rows)
    half = sum(r["total_us"] for r in kt.table(kernels, steps=2))
    check(abs(half - total / 2) < 1e-6, f"--steps 2: {half} vs {total}")

    for bad, why in (("no header here\n", "no ncu CSV header"),
                     (text.replace('"ns"', '"fortnight"'), "time unit")):
        try:
            kt.kernel_rows(bad)
            failures.append(f"accepted input with {why}")
        except ValueError as e:
            check(why in str(e), f"error {e!r} does not say {why!r}")

    for f in failures:
        print("FAIL:", f)
    print(f"{len(failures)} failure(s)" if failures else "ok: kernel_table on a real ncu CSV")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
