#!/usr/bin/env python3
"""Every service's /metrics through promtool, and a real Prometheus scraping them.

Starts on loopback: llmir-compiler-service (after one compile), llmir-scheduler
(after one completion) and llmir-shard-worker (registered with a stub
scheduler endpoint that accepts its connection and stays silent: the worker
serves /metrics while it waits for a rank). Then:

1. `promtool check metrics` on each /metrics body. The metric names follow
   vLLM's (`llmir:` where vLLM has `vllm:`), and promtool's linter flags every
   ':' in a name ("metric names should not contain ':'"), as it does for vLLM.
   So the body must parse and have no other problem, and the same body with
   `llmir:` spelled `llmir_` must lint clean.
2. A Prometheus server scrapes the three services; the test waits until
   /api/v1/targets reports all of them up, then queries series through
   /api/v1/query (the scheduler's generation counter must show the completion).

Exits 77 (skipped) when promtool or prometheus is not installed.
"""
import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

COLON_PROBLEM = "metric names should not contain ':'"


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def http(url, body=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORT_LOW, _PORT_HIGH = 10000, min(_ephemeral_low(), 32768)
_next_port = [_PORT_LOW + random.randrange(max(_PORT_HIGH - _PORT_LOW, 1))]


def free_port():
    """A loopback port below the kernel's ephemeral range, where a test running
    beside this one cannot take it by an outgoing connection or its own bind to
    port 0 before our service binds it (the rule of tests/support/ports.mjs)."""
    for _ in range(1000 if _PORT_HIGH - _PORT_LOW >= 100 else 0):
        port = _next_port[0]
        _next_port[0] = port + 1 if port + 1 < _PORT_HIGH else _PORT_LOW
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Started processes, stopped (SIGTERM, then SIGKILL) in reverse order."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.procs = []

    def start(self, name, argv):
        log_path = os.path.join(self.workdir, name + ".log")
        proc = subprocess.Popen(argv, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
        self.procs.append((name, proc, log_path))
        return proc, log_path

    def log_tail(self, log_path):
        return open(log_path).read()[-2000:]

    def wait_for(self, name, proc, log_path, found, timeout=180):
        """Polls found() until it returns a value; fails if the process exits."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = found()
            if value is not None:
                return value
            if proc.poll() is not None:
                raise Failure(f"{name} exited with {proc.returncode}: {self.log_tail(log_path)}")
            time.sleep(0.1)
        raise Failure(f"{name} not ready within {timeout} s: {self.log_tail(log_path)}")

    def stop_all(self):
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _, proc, _ in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def logged_field(log_path, msg, field):
    """`field` of the first JSON log line whose msg is `msg`, else None."""
    for line in open(log_path):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == msg and field in entry:
            return entry[field]
    return None


def start_compiler(procs, args):
    proc, log = procs.start("compiler", [args.compiler_service, "--http.port=0",
                                         "--http.host=127.0.0.1"])
    port = procs.wait_for("llmir-compiler-service", proc, log,
                          lambda: logged_field(log, "listening", "port"))
    status, body = http(f"http://127.0.0.1:{port}/v1/compile",
                        {"model_dir": args.model, "tp": 2}, timeout=300)
    check(status == 200, f"compile answered {status}: {body[:500]}")
    return port


def start_scheduler(procs, args):
    port_file = os.path.join(procs.workdir, "scheduler.port")
    proc, log = procs.start("scheduler", [args.scheduler, f"--model={args.model}", "--http.port=0",
                                          f"--http.port-file={port_file}", "--engine-threads=1"])
    port = procs.wait_for("llmir-scheduler", proc, log,
                          lambda: int(open(port_file).read()) if os.path.exists(port_file) else None)
    status, body = http(f"http://127.0.0.1:{port}/v1/completions",
                        {"model": os.path.basename(args.model), "prompt": "def fibonacci(n):",
                         "max_tokens": 8, "ignore_eos": True})
    check(status == 200, f"completion answered {status}: {body[:500]}")
    return port


def start_worker(procs, args, stub):
    proc, log = procs.start("worker", [
        args.worker, "--scheduler.host=127.0.0.1",
        f"--scheduler.port={stub.getsockname()[1]}", "--http.host=127.0.0.1", "--http.port=0",
        "--worker.threads=1"])
    stub.settimeout(60)
    try:
        conn, _ = stub.accept()  # kept open: the worker waits for its rank
    except socket.timeout:
        raise Failure("the worker did not connect: " + procs.log_tail(log))
    port = procs.wait_for("llmir-shard-worker", proc, log,
                          lambda: logged_field(log, "connected", "http_port"))
    return port, conn


def promtool_problems(promtool, text):
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)
    problems = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return done.returncode, problems


def lint(promtool, name, text):
    check("llmir:" in text, f"{name}: no llmir: metric in /metrics")
    rc, problems = promtool_problems(promtool, text)
    other = [p for p in problems if not p.endswith(COLON_PROBLEM)]
    check(rc in (0, 3) and not other,
          f"{name}: promtool check metrics exit {rc}, problems other than ':' in names: {other}")
    renamed = re.sub(r"\bllmir:", "llmir_", text)
    rc, problems = promtool_problems(promtool, renamed)
    check(rc == 0 and not problems,
          f"{name}: promtool check metrics (llmir: as llmir_) exit {rc}: {problems}")
    print(f"promtool: {name} /metrics ok ({len(text.splitlines())} lines; "
          f"only the vLLM-style ':' names flagged)")


def run_prometheus(procs, args, targets):
    port = free_port()
    config = os.path.join(procs.workdir, "prometheus.yml")
    with open(config, "w") as f:
        f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n")
        for job, target_port in targets.items():
            f.write(f"  - job_name: {job}\n    static_configs:\n"
                    f"      - targets: ['127.0.0.1:{target_port}']\n")
    proc, log = procs.start("prometheus", [
        args.prometheus, f"--config.file={config}",
        f"--storage.tsdb.path={os.path.join(procs.workdir, 'tsdb')}",
        f"--web.listen-address=127.0.0.1:{port}"])
    api = f"http://127.0.0.1:{port}/api/v1"

    def all_up():
        try:
            status, body = http(api + "/targets", timeout=5)
        except (urllib.error.URLError, OSError):
            return None
        if status != 200:
            return None
        active = json.loads(body)["data"]["activeTargets"]
        health = {t["labels"]["job"]: (t["health"], t.get("lastError", "")) for t in active}
        return health if all(h == "up" for h, _ in health.values()) and \
            set(health) == set(targets) else None

    health = procs.wait_for("prometheus", proc, log, all_up, timeout=90)
    print(f"prometheus: targets up: {sorted(health)}")

    def query(expr):
        status, body = http(api + "/query?" + urllib.parse.urlencode({"query": expr}))
        check(status == 200, f"query {expr} answered {status}: {body[:300]}")
        return json.loads(body)["data"]["result"]

    def series_by_job(expr, predicate):
        def found():
            result = query(expr)
            jobs = {r["metric"].get("job"): float(r["value"][1]) for r in result}
            return jobs if predicate(jobs) else None
        return procs.wait_for("prometheus", proc, log, found, timeout=30)

    running = series_by_job("llmir:num_requests_running", lambda j: "scheduler" in j)
    check(running["scheduler"] == 0, f"no request runs after the completion: {running}")
    generated = series_by_job("llmir:generation_tokens_total",
                              lambda j: j.get("scheduler", 0) >= 8)
    print(f"prometheus: llmir:num_requests_running={running}, "
          f"llmir:generation_tokens_total={generated}")
    series_by_job("llmir:compile_cache_hits_total", lambda j: "compiler" in j)
    series_by_job("llmir:worker_loaded_bytes", lambda j: "worker" in j)
    up = series_by_job("up", lambda j: len(j) == len(targets))
    check(all(v == 1 for v in up.values()), f"up: {up}")


def main():
    parser = argparse.ArgumentParser()
    for flag in ("--compiler-service", "--scheduler", "--worker", "--model"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--promtool", default=shutil.which("promtool"))
    parser.add_argument("--prometheus", default=shutil.which("prometheus"))
    args = parser.parse_args()
    if not args.promtool or not args.prometheus:
        print("SKIP: promtool/prometheus not installed (Debian package 'prometheus'; "
              "scripts/install-deps.sh installs it)")
        return 77

    with tempfile.TemporaryDirectory() as workdir, socket.socket() as stub:
        stub.bind(("127.0.0.1", 0))
        stub.listen(1)
        procs = Processes(workdir)
        try:
            targets = {
                "compiler": start_compiler(procs, args),
                "scheduler": start_scheduler(procs, args),
            }
            targets["worker"], worker_conn = start_worker(procs, args, stub)
            for job, port in targets.items():
                status, text = http(f"http://127.0.0.1:{port}/metrics")
                check(status == 200, f"{job} /metrics answered {status}")
                lint(args.promtool, job, text)
            run_prometheus(procs, args, targets)
            worker_conn.close()
        finally:
            procs.stop_all()
    print("prometheus scrape test: ok")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failure as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
