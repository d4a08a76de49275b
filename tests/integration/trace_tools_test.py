#!/usr/bin/env python3
"""bench/gpu/trace/ readers on cupti_trace.c's CSV format: kernel names out of
mangled ones as an H200 run printed them, one decode step's timeline between
graphs (step_timeline.py) and a prefill's gaps and idle time
(prefill_gaps.py), on a trace written here with known times.

usage: trace_tools_test.py --root REPO
"""
import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile

# Mangled names as cupti_trace.c recorded them on an H200 (c204, c209).
EMBEDDING = ("_ZN5llmir6engine4cuda6detail47_GLOBAL__N__acb932dc_14_Elementwise_cu_35a681ed"
             "15embeddingKernelEPKilPKvNS2_7StorageEliliPfS5_S5_")
LINEAR = ("_ZN5llmir6engine4cuda6detail41_GLOBAL__N__cbe90390_9_Matmul_cu_7137ea19"
          "14linear16KernelILi1ELb0ELi8ELi8ELi1ELi0EEEvPKfllbbNS2_14LinearSegmentsE")
ATTENTION = ("_ZN5llmir6engine4cuda6detail45_GLOBAL__N__e8e3c184_12_Attention_cu_ce8e1fa3"
             "16warpDecodeKernelILi64ELi1EEEvNS2_17AttentionGeometryEPfNS2_9FusedRopeEb")
ARGMAX = ("_ZN5llmir6engine4cuda6detail47_GLOBAL__N__acb932dc_14_Elementwise_cu_35a681ed"
          "17argmaxSplitKernelEPKflPiS5_")
NVJET = "nvjet_sm90_tss_176x64_64x7_1x2_h_bz_TNN"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    args = parser.parse_args()
    tools = os.path.join(args.root, "bench/gpu/trace")
    spec = importlib.util.spec_from_file_location("trace_csv", os.path.join(tools, "trace_csv.py"))
    tc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tc)
    failures = []

    def check(condition, message):
        if not condition:
            failures.append(message)

    names = [tc.kernel_name(n) for n in (EMBEDDING, LINEAR, ATTENTION, ARGMAX, NVJET)]
    check(names == ["embeddingKernel", "linear16Kernel", "warpDecodeKernel", "argmaxSplitKernel",
                    NVJET], f"names {names}")

    # A prefill (eager: graph 0) of 2 layers, then 4 decode steps replayed
    # from graph 7, each followed by the argmax, a 4-byte memcpy and the
    # upload outside the graph. Times in ns from 10 ms.
    lines, t = [], 10_000_000

    def kernel(name, duration, graph, gap=1000):
        nonlocal t
        t += gap
        lines.append(f"{t},{t + duration},1x1x1,1,32,{graph},{name}")
        t += duration

    def memcpy(size, duration, gap):
        nonlocal t
        t += gap
        lines.append(f"{t},{t + duration},memcpy,{size},0,0,[memcpy]")
        t += duration

    kernel(EMBEDDING, 8000, 0)
    for _ in range(2):
        kernel(NVJET, 100_000, 0, gap=2000)
        kernel(ATTENTION, 90_000, 0, gap=500)
    kernel(LINEAR, 40_000, 0)
    t += 1_000_000  # the host between the prefill and the decodes
    for _ in range(4):
        kernel(EMBEDDING, 2000, 7, gap=1500)
        for _ in range(3):
            kernel(LINEAR, 10_000, 7, gap=1000)
        kernel(ATTENTION, 8000, 7, gap=1000)
        kernel(LINEAR, 40_000, 7, gap=1000)  # the LM head
        kernel(ARGMAX, 6000, 0, gap=2000)
        memcpy(4, 1500, gap=5000)
        memcpy(6208, 2500, gap=8500)
    lines.append("1,2,api,5,0,99,[api]cudaGraphLaunch")  # API records are left out
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, "trace.csv")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        rows = tc.records(path)
        check(len(rows) == len(lines) - 1, f"{len(rows)} records")
        check(sum(r[2] == "memcpy 6208 B" for r in rows) == 4, "the uploads by size")

        proc = subprocess.run([sys.executable, os.path.join(tools, "step_timeline.py"), path, "1"],
                              capture_output=True, text=True)
        out = proc.stdout
        # Embedding start to embedding start: 2 + 3 x 11 + 9 + 41 + 8 + 6.5 + 11 + 1.5 = 112 us.
        check(proc.returncode == 0 and out.startswith("step 1: 112.00 us from embedding to embedding"),
              f"the step's span: {out[:200]} {proc.stderr}")
        check("gap    5.00 us,    1.50 us: memcpy 4 B (graph 0)" in out and
              "gap    8.50 us,    2.50 us: memcpy 6208 B (graph 0)" in out and
              "gap    1.50 us,    2.00 us: embeddingKernel (graph 7)" in out,
              f"the gaps between graphs: {out}")
        check("   3 x    10.00 us: linear16Kernel" not in out and "   4 x    17.50 us: linear16Kernel" in out,
              f"time by name: {out}")

        proc = subprocess.run([sys.executable, os.path.join(tools, "prefill_gaps.py"), path, "1"],
                              capture_output=True, text=True)
        out = proc.stdout
        # The prefill: 8 + 2 x (2 + 100 + 0.5 + 90) + 1 + 40 = 434 us span, 6 us idle.
        check(proc.returncode == 0 and
              "segment: 6 kernels, span 0.434 ms, kernel time 0.428 ms, idle (no kernel running) 0.006 ms" in out,
              f"the prefill's segment: {out[:300]} {proc.stderr}")
        check("gap       2.0 us over    1 (  2.00 each): warpDecodeKernel -> " + NVJET in out and
              "gap       2.0 us over    1 (  2.00 each): embeddingKernel -> " + NVJET in out,
              f"gaps by pair: {out}")

        proc = subprocess.run([sys.executable, os.path.join(tools, "step_timeline.py"), path + ".none"],
                              capture_output=True, text=True)
        check(proc.returncode != 0, "a missing trace fails")

    if failures:
        print("\n".join(failures))
        return 1
    print("trace tools: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
