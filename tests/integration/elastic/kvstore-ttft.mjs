// Time to first token with and without the KV-block store: replica A computes
// R distinct prompts of L tokens (the store is empty), then A goes and a
// fresh replica B answers the same prompts, loading their full blocks from
// the store. Prints the median TTFT of each and checks the first tokens are
// equal. A measurement tool, not a test (timings depend on the machine):
//
//   LLMIR_BIN_DIR=build/bin node tests/integration/elastic/kvstore-ttft.mjs --prompt-len 512 --repeats 5
//
// Needs `npm ci --prefix tests/integration/openai`. tp=1, one worker thread.
import { Mesh, modelName } from './mesh.mjs';
import { freePort } from '../../support/ports.mjs';
import fs from 'node:fs';
import path from 'node:path';

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const promptLen = arg('prompt-len', 512);
const repeats = arg('repeats', 5);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];


async function firstToken(mesh, prompt) {
  const started = performance.now();
  const stream = await mesh.client.completions.create({
    model: modelName, prompt, max_tokens: 1, temperature: 0, ignore_eos: true, stream: true,
    return_token_ids: true });
  let ttft = null;
  let ids = [];
  for await (const chunk of stream) {
    const c = chunk.choices[0];
    if (c?.token_ids?.length && ttft === null) ttft = performance.now() - started;
    if (c?.token_ids) ids = ids.concat(c.token_ids);
  }
  return { ttft, ids };
}

const mesh = new Mesh({ tp: 1 });
const ucxPort = await freePort();
const httpPort = await freePort();
mesh.options.schedulerArgs = ['--kv-store.host', '127.0.0.1', '--kv-store.port', String(ucxPort),
  '--max-batch-tokens', String(Math.max(512, promptLen))];
const store = mesh.spawnLogged('kv-store', ['llmir-kv-store', '--ucx.host=127.0.0.1',
  `--ucx.port=${ucxPort}`, '--http.host=127.0.0.1', `--http.port=${httpPort}`]);
try {
  for (let i = 0; i < 200; ++i) {
    if ((await fetch(`http://127.0.0.1:${httpPort}/readyz`).catch(() => null))?.ok) break;
    await sleep(50);
  }
  await mesh.start();
  // Distinct prompts (a fixed LCG over the vocabulary, no special ids).
  let x = 12345;
  const prompts = Array.from({ length: repeats }, () => Array.from({ length: promptLen }, () => {
    x = (x * 1103515245 + 12345) % 2147483648;
    return 2 + (x % 2000);
  }));
  const a = mesh.startWorker();
  await mesh.waitForReplicas(1);
  await firstToken(mesh, prompts[0].slice(0, 8)); // warm-up
  const computed = [];
  for (const p of prompts) computed.push(await firstToken(mesh, p));
  await sleep(2000); // the write-through drains
  mesh.startWorker();
  await mesh.waitForReplicas(2);
  a.kill('SIGKILL');
  await a.exited;
  await mesh.waitForReplicas(1);
  await firstToken(mesh, [5, 6, 7, 8]); // warm-up of B
  const loaded = [];
  for (const p of prompts) loaded.push(await firstToken(mesh, p));
  const same = computed.every((c, i) => JSON.stringify(c.ids) === JSON.stringify(loaded[i].ids));
  const m = await mesh.metrics();
  console.log(`prompt ${promptLen} tokens, ${repeats} prompts: median TTFT computed ` +
              `${median(computed.map((c) => c.ttft)).toFixed(1)} ms, loaded from the store ` +
              `${median(loaded.map((c) => c.ttft)).toFixed(1)} ms; first tokens equal: ${same}; ` +
              `prefill tokens skipped: ${m.value('llmir:kv_store_prefill_tokens_skipped_total')}`);
  if (!same) process.exitCode = 1;
} finally {
  await mesh.stop();
  store.kill('SIGKILL');
  fs.rmSync(path.join(mesh.tmp), { recursive: true, force: true });
}
