// A local mesh as real processes (compiler service, llmir-scheduler in mesh
// mode, shard workers) and load from the official `openai` client: shared by
// the elastic test and the chaos tool.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort } from '../../support/ports.mjs';
import { createRequire } from 'node:module';

const here = path.dirname(new URL(import.meta.url).pathname);
const root = path.resolve(here, '../../..');
// The openai client is installed next to the openai test (npm ci there).
const requireOpenai = createRequire(path.join(root, 'tests/integration/openai/package.json'));
export const openaiInstalled = () => {
  try { requireOpenai.resolve('openai'); return true; } catch { return false; }
};

export const bin = process.env.LLMIR_BIN_DIR ?? path.join(root, 'build/bin');
export const modelDir = process.env.LLMIR_MODEL ?? path.join(root, 'models/demo-llama-4m');
export const modelName = path.basename(modelDir);
export const reference = JSON.parse(fs.readFileSync(path.join(modelDir, 'reference.json')));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));


async function waitFor(what, ms, probe) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(50);
  }
}

/// 16+ distinct prompts: the reference cases first (HF greedy ids known),
/// then variations of them.
export function prompts(count) {
  const cases = reference.cases;
  return Array.from({ length: count }, (_, i) =>
    cases[i % cases.length].prompt_ids.concat(
      cases[(i + 1) % cases.length].prompt_ids.slice(0, Math.floor(i / cases.length))));
}

export class Mesh {
  constructor(options = {}) {
    this.options = { tp: 2, noReplicaTimeoutMs: 2000, drainGraceMs: 500,
                     heartbeatTimeoutMs: 2000, ...options };
    this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmir-elastic-'));
    this.workers = [];
    this.serial = 0;
  }

  spawnLogged(name, args) {
    const log = fs.openSync(path.join(this.tmp, `${name}.log`), 'w');
    const child = spawn(path.join(bin, args[0]), args.slice(1), { stdio: ['ignore', log, log] });
    child.exited = new Promise((r) => child.once('exit', (code, signal) => r(code ?? signal)));
    return child;
  }

  async start() {
    const compilerPort = await freePort();
    this.compiler = this.spawnLogged('compiler', ['llmir-compiler-service',
      '--http.host=127.0.0.1', `--http.port=${compilerPort}`]);
    const compilerUrl = `http://127.0.0.1:${compilerPort}`;
    await waitFor('the compiler service', 30000, async () =>
      (await fetch(`${compilerUrl}/readyz`).catch(() => null))?.ok);
    const portFile = path.join(this.tmp, 'port');
    const workerPortFile = path.join(this.tmp, 'worker-port');
    this.scheduler = this.spawnLogged('scheduler', ['llmir-scheduler', '--model', modelDir,
      '--compiler-url', compilerUrl, '--http.port', '0', '--http.port-file', portFile,
      '--worker-port', '0', '--worker-port-file', workerPortFile,
      '--tp', String(this.options.tp), '--kv-blocks', '512', '--max-num-seqs', '64',
      '--http.threads', '48',
      '--heartbeat-timeout-ms', String(this.options.heartbeatTimeoutMs),
      '--no-replica-timeout-ms', String(this.options.noReplicaTimeoutMs),
      '--drain-grace-ms', String(this.options.drainGraceMs),
      ...(this.options.schedulerArgs ?? [])]); // later flags win
    const read = (f) => (fs.existsSync(f) ? fs.readFileSync(f, 'utf8').trim() : null);
    this.port = await waitFor('the scheduler', 60000, async () => {
      if (this.scheduler.exitCode !== null) throw new Error('llmir-scheduler exited');
      return read(portFile);
    });
    this.workerPort = read(workerPortFile);
    this.baseURL = `http://127.0.0.1:${this.port}`;
    const { default: OpenAI } = await import(requireOpenai.resolve('openai'));
    this.client = new OpenAI({ baseURL: `${this.baseURL}/v1`, apiKey: 'unused', maxRetries: 0 });
  }

  startWorker() {
    const worker = this.spawnLogged(`worker-${++this.serial}`, ['llmir-shard-worker',
      '--scheduler.host=127.0.0.1', `--scheduler.port=${this.workerPort}`,
      '--http.host=127.0.0.1', '--http.port=0', '--worker.threads=1',
      '--timeouts.heartbeat-ms=200', '--timeouts.collective-ms=3000',
      '--timeouts.drain-grace-ms=20000']);
    this.workers.push(worker);
    return worker;
  }

  alive() { return this.workers.filter((w) => w.exitCode === null && w.signalCode === null); }

  async metrics() {
    const text = await (await fetch(`${this.baseURL}/metrics`)).text();
    const value = (name, labels = '') => {
      let sum = 0;
      for (const line of text.split('\n'))
        if (line.startsWith(name + '{') && line.includes(labels))
          sum += Number(line.slice(line.lastIndexOf(' ') + 1));
      return sum;
    };
    return { text, value };
  }

  async waitForReplicas(ready, ms = 60000) {
    await waitFor(`${ready} ready replicas`, ms, async () => {
      const m = await this.metrics();
      return m.value('llmir:replicas', 'state="ready"') === ready &&
             m.value('llmir:replicas', 'state="joining"') === 0 &&
             m.value('llmir:replicas', 'state="draining"') === 0;
    });
  }

  /// `count` concurrent greedy streams; resolves to [{text, error}].
  /// onProgress(total tokens so far) runs on every chunk.
  async load(count, maxTokens, onProgress = () => {}) {
    let tokens = 0;
    const one = async (prompt) => {
      try {
        const stream = await this.client.completions.create({
          model: modelName, prompt, max_tokens: maxTokens, temperature: 0,
          ignore_eos: true, stream: true });
        let text = '';
        for await (const chunk of stream) {
          text += chunk.choices[0]?.text ?? '';
          onProgress(++tokens);
        }
        return { text, error: null };
      } catch (e) {
        return { text: null, error: `${e.status ?? ''} ${e.message}` };
      }
    };
    return Promise.all(prompts(count).map(one));
  }

  async stop() {
    const all = [...this.workers, this.scheduler, this.compiler].filter(Boolean);
    for (const p of all) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    await Promise.all(all.map((p) => p.exited));
  }
}

/// Failures and mismatches of `results` against `expected` texts.
export function compare(results, expected) {
  const failed = results.filter((r) => r.error).map((r) => r.error);
  const mismatched = results.filter((r, i) => !r.error && r.text !== expected[i]).length;
  return { sent: results.length, succeeded: results.length - failed.length, failed, mismatched };
}
