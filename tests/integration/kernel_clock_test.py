#!/usr/bin/env python3
"""bench/gpu/kernel_clock.py on real LLMIR_CUDA_KERNEL_CLOCK files: 1.1B
batch-1 decode on an H200 (tests/fixtures/kernel-clock, 256 steps, the
decode graph's 114 nodes replayed 255 times), its per-layer table, and its
refusals of files that are not a clock's; an 8B step's (its graph's nodes
only, with marks), whose first layer differs from the others.

usage: kernel_clock_test.py --root REPO
"""
import argparse
import importlib.util
import os
import subprocess
import sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    args = parser.parse_args()
    script = os.path.join(args.root, "bench/gpu/kernel_clock.py")
    spec = importlib.util.spec_from_file_location("kernel_clock", script)
    kc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kc)
    failures = []

    def check(condition, message):
        if not condition:
            failures.append(message)

    fixture = os.path.join(args.root, "tests/fixtures/kernel-clock/h200-1b-decode.tsv")
    nodes = kc.read_clock(open(fixture).read())
    check(len(nodes) == 1113, f"{len(nodes)} grids, expected 1113")
    graph, replays = kc.replayed_nodes(nodes)
    check((len(graph), replays) == (114, 255), f"graph: {len(graph)} nodes x {replays}")
    check(all(b.release >= a.release for a, b in zip(graph, graph[1:])), "nodes in order")
    step = sum(kc.added_times(graph))
    # The step ran 1.09 ms (the bench's own clock); the graph's span is most of it.
    check(900e3 < step < 1090e3, f"graph span {step / 1e3:.1f} us")
    table, shape_of, others = kc.layer_table(graph, ["qkv", "attention", "o", "gate-up", "down"])
    check(all(len(v) == 22 for v in table.values()), f"22 layers: {[len(v) for v in table.values()]}")
    check(shape_of["gate-up"] == (704, 256) and shape_of["qkv"] == (320, 256),
          f"shapes {shape_of}")
    mean = {k: sum(v) / len(v) for k, v in table.items()}
    check(max(mean, key=mean.get) == "gate-up", f"gate/up the heaviest: {mean}")
    check(abs(sum(sum(v) for v in table.values()) + others - step) < 1.0, "the parts sum to the span")

    proc = subprocess.run([sys.executable, script, fixture, "--names", "qkv,attention,o,gate-up,down"],
                          capture_output=True, text=True)
    check(proc.returncode == 0 and "114 graph nodes replayed 255 times" in proc.stdout and
          "\ngate-up | 704 x 256 | 15.88 | 22 | 349.4\n" in proc.stdout,
          f"the script's output: {proc.stdout[:300]} {proc.stderr}")

    # The same file as a build with marks writes it: the attention's (32
    # blocks) at 1 and 2.5 us past its release, no marks elsewhere.
    lines = open(fixture).read().splitlines()
    marked = ["\t".join(lines[0].split() + kc.MARKS)]
    for line in lines[1:]:
        grid = int(line.split()[3])
        marks = ["1000.0", "2500.0"] if grid == 32 else ["0.0", "0.0"]
        marked.append("\t".join(line.split() + marks + ["0.0"] * 6))
    marked_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"kernel-clock-marks-{os.getpid()}.tsv")
    with open(marked_path, "w") as f:
        f.write("\n".join(marked) + "\n")
    try:
        names = ["qkv", "attention", "o", "gate-up", "down"]
        mgraph, _ = kc.replayed_nodes(kc.read_clock(open(marked_path).read()))
        mtable, _, _ = kc.layer_table(mgraph, names)
        marks = kc.layer_marks(mgraph, mtable, names)
        check(marks == {"attention": {0: 1.0, 1: 2.5}}, f"marks {marks}")
        proc = subprocess.run([sys.executable, script, marked_path, "--names", ",".join(names)],
                              capture_output=True, text=True)
        check(proc.returncode == 0 and "\nattention | 0: 1.00, 1: 2.50\n" in proc.stdout,
              f"the script's marks: {proc.stdout[-400:]} {proc.stderr}")
    finally:
        os.unlink(marked_path)

    # An 8B step (the same build with marks, c151): its first layer's Q/K/V
    # (384 blocks, after the first norm's own launch) differs from the later
    # ones' (264, a looped norm consumer), so the layers are whole periods
    # ending where the repeating shapes end (before the final norm), and
    # each label gets its own kernel: the attention is the 64-block grid.
    names = ["qkv", "attention", "o", "gate-up", "down"]
    fixture8 = os.path.join(args.root, "tests/fixtures/kernel-clock/h200-8b-decode.tsv")
    graph8, replays8 = kc.replayed_nodes(kc.read_clock(open(fixture8).read()))
    check((len(graph8), replays8) == (164, 255), f"8B graph: {len(graph8)} nodes x {replays8}")
    check(kc.layer_span(graph8, 5) == (7, 162), f"8B layers {kc.layer_span(graph8, 5)}")
    table8, shape8, others8 = kc.layer_table(graph8, names)
    check(all(len(v) == 31 for v in table8.values()), f"31 whole layers: {[len(v) for v in table8.values()]}")
    check([shape8[n] for n in names] == [(264, 256), (64, 256), (256, 256), (264, 256), (256, 256)],
          f"8B shapes {shape8}")
    check(abs(sum(sum(v) for v in table8.values()) + others8 - sum(kc.added_times(graph8))) < 1.0,
          "the 8B parts sum to the span")
    marks8 = kc.layer_marks(graph8, table8, names)
    check(sorted(marks8["attention"]) == [0, 1, 4, 5, 6, 7] and sorted(marks8["o"]) == [0, 1],
          f"8B marks {marks8}")
    proc = subprocess.run([sys.executable, script, fixture8, "--names", ",".join(names)],
                          capture_output=True, text=True)
    check(proc.returncode == 0 and "\nattention | 64 x 256 | 10.84 | 31 | 336.1\n" in proc.stdout,
          f"the script on the 8B file: {proc.stdout[:400]} {proc.stderr}")

    for bad, why in (("no header\n1 2 3\n", "not a kernel clock file"),
                     ("\t".join(kc.HEADER + kc.MARKS[:3]) + "\n", "not a kernel clock file"),
                     ("\t".join(kc.HEADER) + "\n1\t2\t3\n", "line 2: 3 fields"),
                     ("\t".join(kc.HEADER) + "\n1\t0.0\t1\t8\t256\n", "no replayed graph nodes")):
        try:
            kc.replayed_nodes(kc.read_clock(bad))
            failures.append(f"accepted input: {why}")
        except ValueError as e:
            check(why in str(e), f"error {e!r} does not say {why!r}")
    try:
        kc.layer_table(graph, ["a", "b", "c", "d", "e", "f", "g"])
        failures.append("accepted a period the shapes do not have")
    except ValueError as e:
        check("no period of 7" in str(e), f"error {e!r}")

    for f in failures:
        print("FAIL:", f)
    print(f"{len(failures)} failure(s)" if failures else "ok: kernel_clock on a real clock file")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
