#!/usr/bin/env python3
"""A shard worker SIGKILLed mid-stream, with real processes on loopback.

The scheduler in mesh mode with two tp=2 replicas (four llmir-shard-worker
processes), the demo model's reference prompts first answered one at a time
(their greedy ids must equal the reference's), then streamed several times
over at once; once the streams are under way one worker is killed with
SIGKILL. Every stream must finish, with the text the single requests gave:
the killed replica's sequences continue on the other one. Then a fresh
worker pairs with the killed one's survivor and both replicas are ready
again. That fresh worker fails its first step on purpose
(--debug.fail-step=1: before its collectives, while its peer waits in
theirs): the ranks' answers to that step disagree, the scheduler re-forms
the replica from the same two workers, and the streams sent then all finish
with the single-request text.

The node test tests/integration/elastic/elastic.test.mjs covers the same on
CPUs (with the official openai client); this one needs only Python's
standard library, so that it runs on the lent GPU machines too (no node
there), where `--device cuda` puts worker i on GPU i % count and the
replicas' collectives on NCCL (with the IPC all-reduce by default) when
every worker has a GPU of its own: what a peer dying mid-step does to the
survivor's collectives there (it gives the group up after
--collective-ms and rejoins).

usage: mesh_fault_test.py --bin DIR [--model DIR] [--device cpu|cuda]
                          [--tp 2] [--streams 12] [--collective-ms 3000]
Exit 0 when every check passed; the processes' logs are kept in the printed
folder on failure.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate_reference import visible_gpus  # noqa: E402


class Mesh:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="llmir-mesh-fault.")
        secret = os.path.join(self.work, "cluster.secret")
        with open(os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(os.urandom(32).hex())
        self.env = dict(os.environ, LLMIR_CLUSTER_SECRET_FILE=secret)
        self.processes = []
        self.workers = []
        self.gpus = 0
        if args.device == "cuda":
            self.gpus = visible_gpus()
            if self.gpus == 0:
                sys.exit("mesh_fault_test: --device cuda but nvidia-smi lists no GPU")

    def spawn(self, name, argv):
        log = open(os.path.join(self.work, name + ".log"), "w")
        p = subprocess.Popen([os.path.join(self.args.bin, argv[0])] + argv[1:],
                             stdout=log, stderr=subprocess.STDOUT, env=self.env)
        p.name = name
        self.processes.append(p)
        return p

    def wait_for(self, what, seconds, check, process=None):
        deadline = time.time() + seconds
        while time.time() < deadline:
            value = check()
            if value:
                return value
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{process.name} exited before {what}")
            time.sleep(0.1)
        raise RuntimeError(f"{what}: not within {seconds} s")

    def start(self):
        compiler = self.spawn("compiler", ["llmir-compiler-service", "--http.host=127.0.0.1",
                                           "--http.port=0"])
        log = os.path.join(self.work, "compiler.log")
        port = self.wait_for("the compiler service's port", 30, lambda: next(
            iter(re.findall(r'"msg":"listening".*?"port":(\d+)', open(log).read())), None),
            compiler)
        compiler_url = f"http://127.0.0.1:{port}"
        port_file = os.path.join(self.work, "port")
        worker_port_file = os.path.join(self.work, "worker-port")
        scheduler = self.spawn("scheduler", [
            "llmir-scheduler", "--model", self.args.model, "--compiler-url", compiler_url,
            "--http.host=127.0.0.1", "--http.port=0", "--http.port-file", port_file,
            "--worker-port=0", "--worker-port-file", worker_port_file,
            "--tp", str(self.args.tp), "--kv-blocks", "512", "--max-num-seqs", "64",
            "--heartbeat-timeout-ms", "2000", "--no-replica-timeout-ms", "20000",
            "--drain-grace-ms", "500"])
        self.base = "http://127.0.0.1:" + self.wait_for("the scheduler's port", 120,
                                                        lambda: read_port(port_file), scheduler)
        self.worker_port = self.wait_for("the workers' port", 30,
                                         lambda: read_port(worker_port_file), scheduler)

    def start_worker(self, device_index, extra=()):
        device, collectives = "cpu", "gloo"
        if self.args.device == "cuda":
            device = f"cuda:{device_index % self.gpus}"
            collectives = "nccl" if self.gpus >= 2 * self.args.tp else "gloo"
        worker = self.spawn(f"worker-{len(self.workers)}", [
            "llmir-shard-worker", "--scheduler.host=127.0.0.1",
            f"--scheduler.port={self.worker_port}", "--http.host=127.0.0.1", "--http.port=0",
            "--worker.threads=1", f"--worker.device={device}",
            f"--worker.collectives={collectives}", "--worker.kv-cache-dtype=f32",
            "--timeouts.heartbeat-ms=200", f"--timeouts.collective-ms={self.args.collective_ms}",
            "--timeouts.drain-grace-ms=20000", *extra])
        self.workers.append(worker)
        return worker

    def metric(self, name):
        """The sum of the labelled metric `name`'s samples."""
        text = urllib.request.urlopen(self.base + "/metrics", timeout=10).read().decode()
        return sum(float(v) for v in re.findall(
            r'^%s\{[^}]*\} ([0-9.e+]+)$' % re.escape(name), text, re.M))

    def wait_for_replicas(self, ready, seconds):
        def settled():
            text = urllib.request.urlopen(self.base + "/metrics", timeout=10).read().decode()
            state = dict(re.findall(r'^llmir:replicas\{[^}]*state="(\w+)"[^}]*\} ([0-9.e+]+)$',
                                    text, re.M))
            return float(state.get("ready", 0)) == ready and float(state.get("joining", 0)) == 0
        self.wait_for(f"{ready} ready replicas", seconds, settled)

    def stop(self, keep):
        for p in reversed(self.processes):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.processes):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if keep:
            print(f"mesh_fault_test: logs kept in {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def read_port(path):
    """A port file's content once it has been written, else None."""
    try:
        with open(path) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def post(base, body, timeout=120):
    request = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=timeout)


def streams(mesh, texts, count):
    """Starts `count` streamed completions of the reference prompts at once
    (check_streams waits for them): their progress, outcomes and threads."""
    progress, out, threads = [], [None] * count, []
    for i in range(count):
        body = dict(texts[i % len(texts)][0])
        body.pop("return_token_ids")
        t = threading.Thread(target=stream, args=(mesh.base, body, progress, out, i))
        t.start()
        threads.append(t)
    return progress, out, threads


def check_streams(texts, out, threads):
    """Raises unless every stream finished with its prompt's single-request text."""
    for t in threads:
        t.join(timeout=300)
    errors = [o for o in out if o is None or o[0] != "ok"]
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(out)} streams failed: {errors[:3]}")
    differ = [i for i, o in enumerate(out) if o[1] != texts[i % len(texts)][1]]
    if differ:
        raise RuntimeError(f"streams {differ} differ from the single-request text")


def stream(base, body, progress, out, index):
    """One streamed completion: its text, or the error, into out[index]."""
    try:
        text = []
        with post(base, dict(body, stream=True)) as reply:
            for raw in reply:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(json.dumps(chunk["error"]))
                for choice in chunk.get("choices", []):
                    if choice.get("text"):
                        text.append(choice["text"])
                        progress.append(1)
        out[index] = ("ok", "".join(text))
    except Exception as e:  # every failure is a client-visible error
        out[index] = ("error", str(e))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default=os.path.join(ROOT, "build", "bin"))
    parser.add_argument("--model", default=os.path.join(ROOT, "models", "demo-llama-4m"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--streams", type=int, default=12)
    parser.add_argument("--collective-ms", type=int, default=3000)
    args = parser.parse_args()
    args.model = os.path.abspath(args.model)
    name = os.path.basename(args.model)
    cases = json.load(open(os.path.join(args.model, "reference.json")))["cases"]
    mesh = Mesh(args)
    failed = True
    try:
        mesh.start()
        for i in range(2 * args.tp):
            mesh.start_worker(i)
        mesh.wait_for_replicas(2, 180)
        print(f"mesh_fault_test: two tp={args.tp} replicas ready ({args.device})")

        # One at a time first: the reference greedy ids, and each prompt's text.
        texts = []
        for case in cases:
            body = {"model": name, "prompt": case.get("prompt_text", case.get("prompt_ids")),
                    "max_tokens": len(case["greedy_ids"]), "temperature": 0,
                    "ignore_eos": True, "return_token_ids": True}
            choice = json.load(post(mesh.base, body))["choices"][0]
            if choice.get("token_ids") != case["greedy_ids"]:
                raise RuntimeError(f"ids {choice.get('token_ids')} differ from the reference "
                                   f"{case['greedy_ids']}")
            texts.append((body, choice["text"]))
        print(f"mesh_fault_test: {len(cases)} reference completions equal their greedy ids")

        # The streams, and a worker killed once they are under way.
        progress, out, threads = streams(mesh, texts, args.streams)
        mesh.wait_for("streams under way", 60, lambda: len(progress) >= 2 * args.streams)
        victim = mesh.workers[0]
        victim.send_signal(signal.SIGKILL)
        print(f"mesh_fault_test: SIGKILL to {victim.name} after {len(progress)} streamed chunks")
        check_streams(texts, out, threads)
        moved = mesh.metric("llmir:requeued_tokens_total")
        if moved <= 0:
            raise RuntimeError("no sequence was moved off the killed replica "
                               "(llmir:requeued_tokens_total is 0): the kill hit nothing")
        print(f"mesh_fault_test: {args.streams} of {args.streams} streams finished with the "
              f"single-request text ({moved:.0f} tokens of moved sequences)")

        # The survivor of the killed replica pairs with a fresh worker, which
        # fails its first step before its collectives.
        failures = mesh.metric("llmir:replica_failures_total")
        mesh.start_worker(0, ["--debug.fail-step=1"])
        mesh.wait_for_replicas(2, 180)
        progress, out, threads = streams(mesh, texts, args.streams)
        check_streams(texts, out, threads)
        log = open(os.path.join(mesh.work, "scheduler.log")).read()
        if "the ranks disagree" not in log:
            raise RuntimeError("the injected step failure was not seen as the ranks disagreeing")
        mesh.wait_for_replicas(2, 180)
        if mesh.metric("llmir:replica_failures_total") <= failures:
            raise RuntimeError("the replica whose ranks disagreed was not torn down")
        body, text = texts[0]
        choice = json.load(post(mesh.base, body))["choices"][0]
        if choice.get("token_ids") != cases[0]["greedy_ids"]:
            raise RuntimeError("after the rejoin the ids differ from the reference")
        print(f"mesh_fault_test: a fresh worker joined the survivor and failed its first step; "
              f"its replica was re-formed, {args.streams} streams finished with the "
              f"single-request text, two replicas ready, reference ids again")
        failed = False
    except Exception as e:
        print(f"mesh_fault_test: FAILED: {e}", file=sys.stderr)
    finally:
        mesh.stop(keep=failed)
    print("mesh_fault_test: ok" if not failed else "mesh_fault_test: FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
