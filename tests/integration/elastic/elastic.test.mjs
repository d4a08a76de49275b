// Elastic serving with real processes on loopback (issue 8): the scheduler in
// mesh mode with tp=2 replicas of shard workers, 16 concurrent greedy streams
// from the official openai client per scenario, every output compared with
// the single-replica output (whose first 32 tokens are Hugging Face's).
//
// node --test elastic.test.mjs  (env: LLMIR_BIN_DIR, LLMIR_MODEL)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Mesh, compare, openaiInstalled, prompts, reference } from './mesh.mjs';

const kStreams = 16;
const kMaxTokens = 96;
const mesh = new Mesh();
let expected;

/// Runs the load; calls `action` once the streams have produced `after` tokens.
async function loadWith(after, action) {
  let fired;
  const results = await mesh.load(kStreams, kMaxTokens, (tokens) => {
    if (!fired && tokens >= after) fired = action();
  });
  assert.ok(fired, 'the action ran while streams were open');
  await fired;
  return results;
}

function assertClean(results) {
  const r = compare(results, expected);
  assert.deepEqual(r.failed, [], 'no client-visible error');
  assert.equal(r.mismatched, 0, 'every greedy output equals the single-replica output');
}

before(async () => {
  if (!openaiInstalled()) return;
  await mesh.start();
  mesh.startWorker();
  mesh.startWorker();
  await mesh.waitForReplicas(1);
});

after(async () => {
  await mesh.stop();
});

test('single replica output is the reference, and batched', { skip: !openaiInstalled() }, async () => {
  const results = await mesh.load(kStreams, kMaxTokens);
  assert.deepEqual(results.filter((r) => r.error), []);
  expected = results.map((r) => r.text);
  // The reference prompts' first 32 greedy tokens are HF's: compare their ids.
  const first = await mesh.client.completions.create({
    model: 'demo-llama-4m', prompt: prompts(1)[0], max_tokens: 32, temperature: 0,
    ignore_eos: true, return_token_ids: true });
  assert.deepEqual(first.choices[0].token_ids, reference.cases[0].greedy_ids);
  assert.ok(expected[0].startsWith(first.choices[0].text));
});

test('SIGKILL of a worker mid-stream: 0 client-visible errors', { skip: !openaiInstalled() }, async () => {
  mesh.startWorker();
  mesh.startWorker();
  await mesh.waitForReplicas(2);
  const before = await mesh.metrics();
  const results = await loadWith(kStreams * 8, async () => {
    mesh.alive()[0].kill('SIGKILL');
  });
  assertClean(results);
  const m = await mesh.metrics();
  assert.ok(m.value('llmir:replica_failures_total') > before.value('llmir:replica_failures_total'));
  assert.ok(m.value('llmir:requeued_sequences_total') > 0, 'sequences were re-queued');
  assert.ok(m.value('llmir:workers_lost_total') >= 1);
  assert.ok(m.value('llmir:lb_decisions_total', 'reason="requeue"') > 0);
});

test('drain (SIGTERM) of a worker under load: 0 errors, exit 0', { skip: !openaiInstalled() }, async () => {
  mesh.startWorker(); // pairs with the survivor of the killed replica
  await mesh.waitForReplicas(2);
  let drained;
  const results = await loadWith(kStreams * 8, async () => {
    drained = mesh.alive()[0];
    drained.kill('SIGTERM');
  });
  assertClean(results);
  assert.equal(await drained.exited, 0, 'a drained worker exits 0');
  const m = await mesh.metrics();
  assert.ok(m.value('llmir:replica_drains_total') >= 1);
});

test('scale 1 -> 2 -> 1 replicas under load: 0 failed requests', { skip: !openaiInstalled() }, async () => {
  await mesh.waitForReplicas(1);
  // Up: a worker joins the idle one while streams run on the first replica.
  const up = await loadWith(kStreams * 4, async () => {
    mesh.startWorker();
    await mesh.waitForReplicas(2);
  });
  assertClean(up);
  const during = await mesh.load(kStreams, kMaxTokens);
  assertClean(during);
  const m = await mesh.metrics();
  const replicasUsed = new Set([...m.text.matchAll(/lb_decisions_total\{[^}]*replica="([^"]+)"/g)]
    .map((x) => x[1]));
  assert.ok(replicasUsed.size >= 2, 'requests were balanced over several replicas');
  // Down: one replica drains away while streams run.
  const down = await loadWith(kStreams * 8, async () => {
    const worker = mesh.alive()[0];
    worker.kill('SIGTERM');
    assert.equal(await worker.exited, 0);
  });
  assertClean(down);
  await mesh.waitForReplicas(1);
});

test('every worker killed: 503 within the configured wait, then serving again', { skip: !openaiInstalled() }, async () => {
  for (const w of mesh.alive()) w.kill('SIGKILL');
  await Promise.all(mesh.workers.map((w) => w.exited));
  await mesh.waitForReplicas(0);
  const start = Date.now();
  const status = await mesh.client.completions
    .create({ model: 'demo-llama-4m', prompt: 'Hello', max_tokens: 4 })
    .then(() => 200, (e) => e.status);
  const waited = Date.now() - start;
  assert.equal(status, 503);
  assert.ok(waited >= mesh.options.noReplicaTimeoutMs - 100 &&
            waited < mesh.options.noReplicaTimeoutMs + 2000, `answered after ${waited} ms`);
  mesh.startWorker();
  mesh.startWorker();
  await mesh.waitForReplicas(1);
  assertClean(await mesh.load(kStreams, kMaxTokens));
});
