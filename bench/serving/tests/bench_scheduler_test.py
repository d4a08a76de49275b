#!/usr/bin/env python3
"""llmir-bench against a real llmir-scheduler on loopback.

Checks that a run completes every request and that its JSON numbers are
consistent (tokens from the server's usage, latencies ordered), that the
Poisson path works, and that a rejected request (wrong API key) fails the
run with the server's message. No timing asserts.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

API_KEY = "bench-secret"


def start_scheduler(args, workdir):
    port_file = os.path.join(workdir, "port")
    log = open(os.path.join(workdir, "scheduler.log"), "w")
    proc = subprocess.Popen(
        [args.scheduler, f"--model={args.model}", "--http.port=0", f"--http.port-file={port_file}",
         f"--api-key={API_KEY}", "--engine-threads=1", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llmir-scheduler exited with {proc.returncode}; log: "
                               + open(log.name).read()[-2000:])
        if os.path.exists(port_file):
            return proc, int(open(port_file).read())
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("llmir-scheduler wrote no port file within 180 s")


def run_bench(args, base_url, json_path, *extra):
    cmd = [args.bench, f"--base-url={base_url}", f"--json={json_path}", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def check_report(report, num_prompts, output_len):
    check(report["completed"] == num_prompts and report["failed"] == 0,
          f"expected {num_prompts} completed, 0 failed: {report}")
    # --ignore-eos: the server generates exactly output_len tokens per request.
    check(report["total_output_tokens"] == num_prompts * output_len,
          f"total_output_tokens {report['total_output_tokens']} != {num_prompts * output_len}")
    check(report["total_input_tokens"] >= num_prompts, "prompt tokens come from usage")
    check(report["duration"] > 0 and report["request_throughput"] > 0
          and report["output_throughput"] > 0, "throughputs are positive")
    check(report["total_token_throughput"] > report["output_throughput"],
          "total tokens include the prompts")
    for name in ("ttft", "tpot", "itl", "e2el"):
        mean, median, p90, p99 = (report[f"{s}_{name}_ms"] for s in ("mean", "median", "p90", "p99"))
        check(mean > 0 and 0 < median <= p90 <= p99, f"{name} percentiles: {report}")
    check(report["p99_ttft_ms"] <= report["p99_e2el_ms"], "first token before the end")
    check(report["errors"] == [], f"no errors: {report['errors']}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench", required=True)
    parser.add_argument("--scheduler", required=True)
    parser.add_argument("--model", required=True)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        proc, port = start_scheduler(args, workdir)
        try:
            base_url = f"http://127.0.0.1:{port}/v1"
            out = os.path.join(workdir, "result.json")

            done = run_bench(args, base_url, out, f"--api-key={API_KEY}", "--num-prompts=8",
                             "--concurrency=4", "--prompt-len=16", "--output-len=6",
                             "--ignore-eos")
            check(done.returncode == 0, f"llmir-bench failed: {done.stdout}{done.stderr}")
            check("Successful requests:" in done.stdout, "the table is printed")
            check_report(json.load(open(out)), 8, 6)

            done = run_bench(args, base_url, out, f"--api-key={API_KEY}", "--num-prompts=6",
                             "--request-rate=20", "--seed=3", "--prompt-len=8",
                             "--output-len=4", "--ignore-eos")
            check(done.returncode == 0, f"Poisson run failed: {done.stdout}{done.stderr}")
            check_report(json.load(open(out)), 6, 4)

            done = run_bench(args, base_url, out, "--api-key=wrong", "--num-prompts=2",
                             "--output-len=2")
            check(done.returncode == 1 and "401" in done.stderr,
                  f"a wrong key fails the run with the server's status: {done.stderr}")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print("llmir-bench against llmir-scheduler: ok")


if __name__ == "__main__":
    try:
        main()
    except (AssertionError, RuntimeError) as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
