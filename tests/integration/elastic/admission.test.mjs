// Refusals a client can act on (issue 15): the no-replica 503 and the
// load-shedding 429 carry Retry-After and an OpenAI error code, are counted
// in llmir:requests_refused_total, and a refused request retried later is
// served: nothing is lost.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Mesh, modelName, openaiInstalled, reference } from './mesh.mjs';

const skip = !openaiInstalled() && 'the openai npm client is not installed (npm ci --prefix tests/integration/openai)';

const prompt = reference.cases[0].prompt_ids;

async function complete(baseURL, maxTokens) {
  const response = await fetch(`${baseURL}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: modelName, prompt, max_tokens: maxTokens, temperature: 0,
                           ignore_eos: true }),
  });
  return { status: response.status, retryAfter: response.headers.get('retry-after'),
           body: await response.json() };
}

test('no replica: 503 with Retry-After, then served once a worker joins', { skip }, async () => {
  const mesh = new Mesh({ tp: 1, noReplicaTimeoutMs: 300,
                          schedulerArgs: ['--no-replica-retry-after-s', '7'] });
  try {
    await mesh.start();
    const refused = await complete(mesh.baseURL, 4);
    assert.equal(refused.status, 503);
    assert.equal(refused.retryAfter, '7');
    assert.equal(refused.body.error.code, 'no_replica');
    assert.match(refused.body.error.message, /retry after 7 s/);
    assert.equal((await mesh.metrics()).value('llmir:requests_refused_total', 'code="no_replica"'), 1);

    mesh.startWorker();
    await mesh.waitForReplicas(1);
    const served = await complete(mesh.baseURL, 4);
    assert.equal(served.status, 200);
    assert.equal(served.body.choices[0].text.length > 0, true);
  } finally {
    await mesh.stop();
  }
});

test('a full waiting queue: 429 with Retry-After; the queued requests and the retried one are served', { skip }, async () => {
  const mesh = new Mesh({ tp: 1, schedulerArgs: ['--max-num-seqs', '1', '--max-waiting-requests', '1',
                                                 '--shed-retry-after-s', '3'] });
  try {
    await mesh.start();
    mesh.startWorker();
    await mesh.waitForReplicas(1);
    const maxTokens = 1000 - prompt.length;
    let shed = null;
    const admitted = [];
    // One request runs (max-num-seqs 1), the next waits: the queue is at its
    // bound, so a third is shed. A request can finish between the scrape and
    // the third request's arrival; then the queue is not full and the third is
    // admitted: try again (a scheduler that never sheds fails all attempts).
    for (let attempt = 0; attempt < 3 && !shed; ++attempt) {
      const until = async (gauge) => {
        const deadline = Date.now() + 20000;
        while ((await mesh.metrics()).value(gauge) < 1 && Date.now() < deadline)
          await new Promise((r) => setTimeout(r, 5));
      };
      const running = complete(mesh.baseURL, maxTokens);
      admitted.push(running);
      await until('llmir:num_requests_running');
      const waiting = complete(mesh.baseURL, maxTokens);
      admitted.push(waiting);
      await until('llmir:num_requests_waiting');
      const third = await complete(mesh.baseURL, 4);
      if (third.status === 429) shed = third;
      else assert.equal(third.status, 200, JSON.stringify(third.body));
      await Promise.all([running, waiting]);
    }
    assert.ok(shed, 'a request arriving at a full queue is shed');
    assert.equal(shed.retryAfter, '3');
    assert.equal(shed.body.error.code, 'queue_full');
    assert.equal(shed.body.error.type, 'rate_limit_error');
    assert.ok((await mesh.metrics()).value('llmir:requests_refused_total', 'code="queue_full"') >= 1);
    for (const result of await Promise.all(admitted)) {
      assert.equal(result.status, 200, JSON.stringify(result.body));
      assert.equal(result.body.usage.completion_tokens, maxTokens);
    }
    // The shed request, retried after the queue drained.
    const retried = await complete(mesh.baseURL, 4);
    assert.equal(retried.status, 200);
  } finally {
    await mesh.stop();
  }
});
