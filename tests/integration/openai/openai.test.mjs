// llmir-scheduler as a real process on loopback, driven by the official
// `openai` client: greedy outputs equal Hugging Face's reference ids (decoded
// here by an independent byte-level decoder), batching of concurrent
// streams, OpenAI-style 4xx errors, and cancellation on client disconnect.
//
// node --test openai.test.mjs  (env: LLMIR_SCHEDULER = path of llmir-scheduler,
// LLMIR_MODEL = models/demo-llama-4m)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';

const here = path.dirname(new URL(import.meta.url).pathname);
const root = path.resolve(here, '../../..');
const binary = process.env.LLMIR_SCHEDULER ?? path.join(root, 'build/bin/llmir-scheduler');
const modelDir = process.env.LLMIR_MODEL ?? path.join(root, 'models/demo-llama-4m');
const modelName = path.basename(modelDir);
const reference = JSON.parse(fs.readFileSync(path.join(modelDir, 'reference.json')));

// --- an independent decoder: GPT-2 byte-level alphabet -> bytes -> UTF-8 ---
const tokenizerJson = JSON.parse(fs.readFileSync(path.join(modelDir, 'tokenizer.json')));
const idToToken = new Map(Object.entries(tokenizerJson.model.vocab).map(([t, id]) => [id, t]));
const specialIds = new Set();
for (const t of tokenizerJson.added_tokens ?? []) {
  idToToken.set(t.id, t.content);
  if (t.special) specialIds.add(t.id);
}
const unicodeToByte = (() => {
  const bs = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n++); }
  return new Map(cs.map((c, i) => [String.fromCodePoint(c), bs[i]]));
})();
function decode(ids) {
  const bytes = [];
  for (const id of ids) {
    if (specialIds.has(id)) continue;
    for (const ch of idToToken.get(id)) bytes.push(unicodeToByte.get(ch));
  }
  return new TextDecoder().decode(new Uint8Array(bytes));
}

// --- the server process ---
let server;
let baseURL;
let client;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmir-openai-'));

async function waitForFile(file, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (fs.existsSync(file)) return fs.readFileSync(file, 'utf8').trim();
    if (server.exitCode !== null) throw new Error(`llmir-scheduler exited with ${server.exitCode}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no ${file} after ${ms} ms`);
}

before(async () => {
  const portFile = path.join(tmp, 'port');
  server = spawn(binary, ['--model', modelDir, '--http.port', '0', '--http.port-file', portFile,
                          '--engine-threads', '2', '--max-num-seqs', '64'],
                 { stdio: ['ignore', 'inherit', 'inherit'] });
  const port = await waitForFile(portFile, 120000);
  console.log(`llmir-scheduler listening on port ${port}`);
  baseURL = `http://127.0.0.1:${port}`;
  client = new OpenAI({ baseURL: `${baseURL}/v1`, apiKey: 'unused', maxRetries: 0 });
});

after(async () => {
  if (server && server.exitCode === null) {
    const exited = new Promise((r) => server.once('exit', r));
    server.kill('SIGTERM');
    await exited;
    assert.equal(server.exitCode, 0, 'clean exit on SIGTERM');
  }
  fs.rmSync(tmp, { recursive: true, force: true });
});

async function metrics() {
  return (await fetch(`${baseURL}/metrics`)).text();
}
function metricValue(text, name, labelPart = '') {
  let total = 0;
  let found = false;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = line.match(/^([^{ ]+)(\{[^}]*\})? (\S+)$/);
    if (m && m[1] === name && (m[2] ?? '').includes(labelPart)) {
      total += Number(m[3]);
      found = true;
    }
  }
  assert.ok(found, `metric ${name}${labelPart} is exposed`);
  return total;
}

const greedy = { temperature: 0, max_tokens: 32, ignore_eos: true, return_token_ids: true };

test('GET /v1/models lists the served model', async () => {
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), [modelName]);
});

test('completions give the reference greedy text and ids', async () => {
  for (const c of reference.cases) {
    const r = await client.completions.create({ model: modelName, prompt: c.prompt_text, ...greedy });
    assert.equal(r.object, 'text_completion');
    assert.equal(r.choices.length, 1);
    assert.deepEqual(r.choices[0].prompt_token_ids, c.prompt_ids);
    assert.deepEqual(r.choices[0].token_ids, c.greedy_ids);
    assert.equal(r.choices[0].text, decode(c.greedy_ids));
    assert.equal(r.choices[0].finish_reason, 'length');
    assert.deepEqual(r.usage, { prompt_tokens: c.prompt_ids.length, completion_tokens: 32,
                                total_tokens: c.prompt_ids.length + 32 });
  }
});

test('a prompt of token ids and logprobs', async () => {
  const c = reference.cases[0];
  const r = await client.completions.create({ model: modelName, prompt: c.prompt_ids,
                                              ...greedy, max_tokens: 8, logprobs: 2 });
  assert.equal(r.choices[0].text, decode(c.greedy_ids.slice(0, 8)));
  const lp = r.choices[0].logprobs;
  assert.equal(lp.token_logprobs.length, 8);
  for (const [i, top] of lp.top_logprobs.entries()) {
    assert.equal(Object.keys(top).length <= 2, true);
    assert.ok(lp.token_logprobs[i] <= 0);
    // Greedy: the sampled token is the most likely one.
    assert.ok(Math.abs(Math.max(...Object.values(top)) - lp.token_logprobs[i]) < 1e-5);
  }
});

test("streamed logprobs carry the text_offset of a whole response; chat logprob bytes are each token's own", async () => {
  const c = reference.cases[0];
  const request = { model: modelName, prompt: c.prompt_text, ...greedy, max_tokens: 12, logprobs: 1 };
  const whole = (await client.completions.create(request)).choices[0].logprobs;
  const offsets = [];
  const tokens = [];
  for await (const chunk of await client.completions.create({ ...request, stream: true }))
    for (const ch of chunk.choices)
      if (ch.logprobs) { offsets.push(...ch.logprobs.text_offset); tokens.push(...ch.logprobs.tokens); }
  assert.deepEqual(tokens, whole.tokens);
  assert.deepEqual(offsets, whole.text_offset, 'offsets count from the start of the choice');
  assert.ok(offsets.at(-1) > 0);

  // Chat: "bytes" are each token's own bytes (by the independent decoder),
  // so a character split over tokens joins again. logit_bias forces tokens
  // that are halves of "ä" (C3 A4), each alone not valid UTF-8.
  const byteToken = (b) => tokenizerJson.model.vocab[[...unicodeToByte].find(([, v]) => v === b)[0]];
  const lead = byteToken(0xC3);
  const trail = byteToken(0xA4);
  for (const logit_bias of [{}, { [lead]: 100 }, { [lead]: 50, [trail]: 50 }]) {
    const r = await client.chat.completions.create({
      model: modelName, messages: [{ role: 'user', content: c.prompt_text }], temperature: 1, seed: 3,
      max_tokens: 8, ignore_eos: true, logprobs: true, top_logprobs: 1, return_token_ids: true, logit_bias });
    const ids = r.choices[0].token_ids;
    const entries = r.choices[0].logprobs.content;
    assert.equal(entries.length, ids.length);
    for (const [i, e] of entries.entries()) {
      const own = [...idToToken.get(ids[i])].map((ch) => unicodeToByte.get(ch));
      assert.deepEqual(e.bytes, own, `token ${ids[i]}`);
      if (Object.keys(logit_bias).length) assert.ok(ids[i] === lead || ids[i] === trail);
    }
  }
});

test('chat completions use the default template', async () => {
  const messages = [{ role: 'user', content: 'def main(' }];
  const chat = await client.chat.completions.create({ model: modelName, messages, ...greedy });
  assert.equal(chat.object, 'chat.completion');
  assert.equal(chat.choices[0].message.role, 'assistant');
  const templated = '<|user|>\ndef main(\n<|assistant|>\n';
  const plain = await client.completions.create({ model: modelName, prompt: templated, ...greedy });
  assert.equal(chat.choices[0].message.content, plain.choices[0].text);
  assert.equal(chat.usage.prompt_tokens, plain.usage.prompt_tokens);

  const stream = await client.chat.completions.create({ model: modelName, messages, ...greedy,
                                                        stream: true });
  let text = '';
  let role;
  let finish;
  for await (const chunk of stream) {
    role ??= chunk.choices[0]?.delta?.role;
    text += chunk.choices[0]?.delta?.content ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(role, 'assistant');
  assert.equal(text, plain.choices[0].text);
  assert.equal(finish, 'length');
});

async function streamCompletion(c, extra = {}) {
  const stream = await client.completions.create({ model: modelName, prompt: c.prompt_text,
                                                  ...greedy, stream: true, ...extra });
  let text = '';
  const ids = [];
  let usage;
  let finish;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      text += choice.text;
      ids.push(...(choice.token_ids ?? []));
      finish = choice.finish_reason ?? finish;
    }
  }
  return { text, ids, usage, finish };
}

test('streaming ends with the reference text and usage', async () => {
  const c = reference.cases[1];
  const r = await streamCompletion(c, { stream_options: { include_usage: true } });
  assert.equal(r.text, decode(c.greedy_ids));
  assert.deepEqual(r.ids, c.greedy_ids);
  assert.equal(r.finish, 'length');
  assert.equal(r.usage.completion_tokens, 32);
});

test('32 concurrent streams are batched and all correct', async () => {
  const cases = Array.from({ length: 32 }, (_, i) => reference.cases[i % reference.cases.length]);
  const results = await Promise.all(cases.map((c) => streamCompletion(c)));
  for (const [i, r] of results.entries()) {
    assert.deepEqual(r.ids, cases[i].greedy_ids, `stream ${i}`);
    assert.equal(r.text, decode(cases[i].greedy_ids), `stream ${i}`);
  }
  const text = await metrics();
  const steps = metricValue(text, 'llmir:batch_size_sequences_count');
  const single = metricValue(text, 'llmir:batch_size_sequences_bucket', 'le="1"');
  assert.ok(steps - single > 0, 'some steps carried more than one sequence');
  assert.ok(metricValue(text, 'llmir:generation_tokens_total') >= 32 * 32);
});

test('stop strings, n and seeded sampling', async () => {
  const c = reference.cases[1];
  const full = decode(c.greedy_ids);
  const stop = full.slice(12, 15);
  const stopped = await client.completions.create({ model: modelName, prompt: c.prompt_text,
                                                    ...greedy, stop: [stop] });
  assert.equal(stopped.choices[0].text, full.slice(0, full.indexOf(stop)));
  assert.equal(stopped.choices[0].finish_reason, 'stop');

  const sampled = { model: modelName, prompt: c.prompt_text, max_tokens: 16, temperature: 1,
                    top_p: 0.9, seed: 42, n: 3, return_token_ids: true };
  const a = await client.completions.create(sampled);
  const b = await client.completions.create(sampled);
  assert.equal(a.choices.length, 3);
  assert.deepEqual(a.choices.map((x) => x.token_ids), b.choices.map((x) => x.token_ids));
  assert.equal(a.usage.completion_tokens,
               a.choices.reduce((sum, x) => sum + x.token_ids.length, 0));
});

async function post(pathname, body, headers = {}) {
  const r = await fetch(`${baseURL}${pathname}`, {
    method: 'POST', headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body) });
  return { status: r.status, body: await r.json().catch(() => null) };
}

test('bad inputs get OpenAI-style 4xx and the server keeps serving', async () => {
  const prompt = 'def main(';
  const cases = [
    ['{"prompt": ', 400, null],
    [{ model: modelName }, 400, 'prompt'],
    [{ prompt, temperature: -1 }, 400, 'temperature'],
    [{ prompt, temperature: 'hot' }, 400, 'temperature'],
    [{ prompt, top_p: 0 }, 400, 'top_p'],
    [{ prompt, max_tokens: 0 }, 400, 'max_tokens'],
    [{ prompt, max_tokens: 5000 }, 400, 'max_tokens'],
    [{ prompt: 'x '.repeat(3000) }, 400, 'prompt'],
    [{ prompt, n: 0 }, 400, 'n'],
    [{ prompt, logprobs: 99 }, 400, 'logprobs'],
    // Issue 14: ranges are checked on the value sent, and errors show it.
    [{ prompt, top_k: 2 ** 32 + 1 }, 400, 'top_k', String(2 ** 32 + 1)],
    [{ prompt, n: 2 ** 40 }, 400, 'n', String(2 ** 40)],
    [{ prompt, logprobs: 5000 }, 400, 'logprobs', '5000'],
    [{ prompt, stop: [1] }, 400, 'stop'],
    [{ prompt, model: 'no-such-model' }, 404, 'model'],
  ];
  for (const [body, status, param, shown] of cases) {
    const r = await post('/v1/completions', body);
    assert.equal(r.status, status, JSON.stringify(body).slice(0, 80));
    assert.equal(typeof r.body.error.message, 'string');
    assert.ok(r.body.error.message.length > 0);
    assert.equal(r.body.error.param, param);
    if (shown)
      assert.ok(r.body.error.message.endsWith(`got ${shown}`), r.body.error.message);
    assert.ok('type' in r.body.error && 'code' in r.body.error);
  }
  const chat = await post('/v1/chat/completions', { messages: [] });
  assert.equal(chat.status, 400);
  assert.equal(chat.body.error.param, 'messages');
  const messages = [{ role: 'user', content: 'hi' }];
  const zero = await post('/v1/chat/completions', { messages, max_completion_tokens: 0 });
  assert.equal(zero.status, 400);
  assert.equal(zero.body.error.param, 'max_completion_tokens', 'named as sent');
  const topLogprobs = await post('/v1/chat/completions', { messages, logprobs: true, top_logprobs: 21 });
  assert.equal(topLogprobs.status, 400);
  assert.equal(topLogprobs.body.error.param, 'top_logprobs');

  const huge = await fetch(`${baseURL}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'a'.repeat(2 << 20) }) });
  assert.equal(huge.status, 413);

  // Through the client too: a typed error with the status.
  await assert.rejects(client.completions.create({ model: modelName, prompt, temperature: 5 }),
                       (e) => e.status === 400);
  // Unknown fields are ignored; the server still answers correctly.
  const c = reference.cases[0];
  const ok = await post('/v1/completions', { model: modelName, prompt: c.prompt_text, ...greedy,
                                             frobnicate: { x: 1 } });
  assert.equal(ok.status, 200);
  assert.deepEqual(ok.body.choices[0].token_ids, c.greedy_ids);
});

test('a client that disconnects mid-stream frees its sequence', async () => {
  const before = await metrics();
  const aborted = metricValue(before, 'llmir:request_success_total', 'finished_reason="abort"');
  const controller = new AbortController();
  const stream = await client.completions.create(
    { model: modelName, prompt: 'def main(', temperature: 0, max_tokens: 1000, ignore_eos: true,
      stream: true }, { signal: controller.signal });
  let chunks = 0;
  try {
    for await (const _ of stream) {
      // Chunks already buffered would still be yielded after abort(): stop
      // reading too, as a client that goes away does.
      if (++chunks === 3) {
        controller.abort();
        break;
      }
    }
  } catch {
    // the client reports the abort as an error or just ends the stream
  }
  assert.equal(chunks, 3);
  const deadline = Date.now() + 10000;
  let text;
  for (;;) {
    text = await metrics();
    const done = metricValue(text, 'llmir:request_success_total', 'finished_reason="abort"');
    if (done > aborted) break;
    assert.ok(Date.now() < deadline, 'the aborted request is counted within 10 s');
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(metricValue(text, 'llmir:num_requests_running'), 0);
  assert.equal(metricValue(text, 'llmir:kv_cache_usage_perc'), 0);
  assert.ok(metricValue(text, 'llmir:generation_tokens_total') > 0);
});

test('/healthz, /readyz and /metrics', async () => {
  assert.equal((await fetch(`${baseURL}/healthz`)).status, 200);
  assert.equal((await fetch(`${baseURL}/readyz`)).status, 200);
  const text = await metrics();
  for (const name of ['llmir:time_to_first_token_seconds_count', 'llmir:inter_token_latency_seconds_count',
                      'llmir:e2e_request_latency_seconds_count', 'llmir:num_requests_waiting',
                      'llmir:prefix_cache_queries_total', 'llmir:prefix_cache_hits_total',
                      'llmir:prompt_tokens_total', 'llmir:num_preemptions_total'])
    metricValue(text, name);
  assert.ok(metricValue(text, 'llmir:prefix_cache_hits_total') > 0, 'repeated prompts hit the cache');
});

// --- a model whose tokenizer_config.json carries a Jinja chat_template ---

const chatMl =
  "{% if messages[0]['role'] == 'tool' %}{{ raise_exception('a chat cannot start with a tool " +
  "message') }}{% endif %}{% for message in messages %}{{'<|im_start|>' + message['role'] + " +
  "'\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

// The demo model with its files linked and tokenizer_config.json rewritten.
function modelWithChatTemplate(chatTemplate) {
  const dir = fs.mkdtempSync(path.join(tmp, 'model-'));
  for (const f of fs.readdirSync(modelDir))
    if (f !== 'tokenizer_config.json') fs.symlinkSync(path.join(modelDir, f), path.join(dir, f));
  const config = JSON.parse(fs.readFileSync(path.join(modelDir, 'tokenizer_config.json')));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'),
                   JSON.stringify({ ...config, chat_template: chatTemplate }));
  return dir;
}

function startScheduler(dir, extraArgs = []) {
  const portFile = path.join(dir, 'port');
  const proc = spawn(binary, ['--model', dir, '--served-model-name', modelName, '--http.port', '0',
                              '--http.port-file', portFile, '--engine-threads', '2', ...extraArgs],
                     { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  proc.stdout.on('data', (d) => { log += d; process.stdout.write(d); });
  proc.stderr.on('data', (d) => { log += d; process.stderr.write(d); });
  const exited = new Promise((r) => proc.once('exit', (code) => r(code)));
  return { proc, portFile, exited, log: () => log };
}

test("chat uses the model's chat_template; its raise_exception is a 400", async () => {
  const s = startScheduler(modelWithChatTemplate(chatMl));
  try {
    const deadline = Date.now() + 120000;
    while (!fs.existsSync(s.portFile)) {
      assert.equal(s.proc.exitCode, null, 'the scheduler keeps running');
      assert.ok(Date.now() < deadline, 'the scheduler starts');
      await new Promise((r) => setTimeout(r, 50));
    }
    const port = fs.readFileSync(s.portFile, 'utf8').trim();
    const templated = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'unused',
                                   maxRetries: 0 });
    const messages = [{ role: 'system', content: 'Be brief.' },
                      { role: 'user', content: 'def main(' },
                      { role: 'assistant', content: 'pass' }];
    const chat = await templated.chat.completions.create({ model: modelName, messages,
                                                           ...greedy });
    const rendered = '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\ndef main(' +
                     '<|im_end|>\n<|im_start|>assistant\npass<|im_end|>\n<|im_start|>assistant\n';
    const plain = await client.completions.create({ model: modelName, prompt: rendered,
                                                    ...greedy });
    assert.equal(chat.usage.prompt_tokens, plain.usage.prompt_tokens);
    assert.equal(chat.choices[0].message.content, plain.choices[0].text);

    await assert.rejects(
      templated.chat.completions.create({ model: modelName, ...greedy,
                                          messages: [{ role: 'tool', content: 'x' }] }),
      (e) => e.status === 400 && e.message.includes('a chat cannot start with a tool message') &&
             e.param === 'messages');
  } finally {
    s.proc.kill('SIGTERM');
    assert.equal(await s.exited, 0, 'clean exit on SIGTERM');
  }
});

test('a chat_template with a syntax error stops the start with its line', async () => {
  const s = startScheduler(modelWithChatTemplate("{% for m in messages %}\n{{ m.content }"));
  assert.equal(await s.exited, 1);
  assert.match(s.log(), /chat template, line 2: unexpected '}'/);
});

// A real template (Llama 3.1's, one of tests/fixtures/chat-templates) and
// the renders of Jinja2 as transformers configures it (goldens/, see
// scripts/gen-chat-goldens.py): /tokenize of a conversation equals the
// tokens of the oracle's text, tools included; its raise_exception is a 400.
test("/tokenize of a chat equals the oracle's rendering tokenized (Llama 3.1's template)", async () => {
  const fixtures = path.join(root, 'tests/fixtures/chat-templates');
  const name = 'meta-llama-Llama-3.1-8B-Instruct';
  const source = fs.readFileSync(path.join(fixtures, `${name}.jinja`), 'utf8');
  const goldens = JSON.parse(fs.readFileSync(path.join(fixtures, 'goldens', `${name}.json`)));
  const spec = JSON.parse(fs.readFileSync(path.join(fixtures, 'conversations.json')));
  const s = startScheduler(modelWithChatTemplate(source));
  try {
    const deadline = Date.now() + 120000;
    while (!fs.existsSync(s.portFile)) {
      assert.equal(s.proc.exitCode, null, 'the scheduler starts with the template');
      assert.ok(Date.now() < deadline, 'the scheduler starts');
      await new Promise((r) => setTimeout(r, 50));
    }
    const port = fs.readFileSync(s.portFile, 'utf8').trim();
    const url = `http://127.0.0.1:${port}`;
    const post = async (route, body) => {
      const r = await fetch(`${url}${route}`, { method: 'POST', body: JSON.stringify(body),
                                                 headers: { 'Content-Type': 'application/json' } });
      return { status: r.status, body: await r.json() };
    };
    let compared = 0;
    for (const [i, conv] of spec.conversations.entries()) {
      const golden = goldens[i];
      // Text parts reach the template joined into one string (as vLLM does
      // for templates that print content), not as the list the oracle got.
      if (conv.messages.some((m) => Array.isArray(m.content))) continue;
      // tools and documents are request fields; other template variables
      // travel in chat_template_kwargs.
      const { tools, documents, ...kwargs } = conv.extra ?? {};
      const request = { model: modelName, messages: conv.messages,
                        add_generation_prompt: conv.add_generation_prompt ?? true,
                        tools, documents, chat_template_kwargs: kwargs };
      const chat = await post('/tokenize', request);
      if (golden.error !== undefined) {
        assert.equal(chat.status, 400, `${conv.name}: the oracle rejects it`);
        assert.equal(chat.body.error.param, 'messages');
        if (golden.error.includes('single tool-calls'))
          assert.match(chat.body.error.message, /This model only supports single tool-calls at once!/);
        continue;
      }
      assert.equal(chat.status, 200, `${conv.name}: ${JSON.stringify(chat.body)}`);
      const oracle = await post('/tokenize', { model: modelName, prompt: golden.text });
      assert.equal(oracle.status, 200);
      assert.deepEqual(chat.body.tokens, oracle.body.tokens, conv.name);
      assert.equal(chat.body.count, chat.body.tokens.length);
      assert.equal(chat.body.max_model_len, oracle.body.max_model_len);
      assert.ok(chat.body.max_model_len > 0);
      const back = await post('/detokenize', { model: modelName, tokens: chat.body.tokens });
      assert.equal(back.status, 200);
      assert.equal(back.body.prompt, golden.text, `${conv.name}: /detokenize gives the text back`);
      ++compared;
    }
    assert.ok(compared >= 12, `compared ${compared} conversations`);

    // The chat endpoint renders the same prompt: its usage counts those tokens.
    const templated = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
    const conv = spec.conversations[5]; // tools offered
    const chat = await templated.chat.completions.create({ model: modelName, messages: conv.messages,
                                                           tools: conv.extra.tools, ...greedy,
                                                           max_tokens: 4 });
    const tokens = await post('/tokenize', { messages: conv.messages, tools: conv.extra.tools });
    assert.equal(chat.usage.prompt_tokens, tokens.body.count);

    const bad = await post('/detokenize', { tokens: [1, -2] });
    assert.equal(bad.status, 400);
    assert.equal(bad.body.error.param, 'tokens');
    const none = await post('/tokenize', { model: modelName });
    assert.equal(none.status, 400);
  } finally {
    s.proc.kill('SIGTERM');
    assert.equal(await s.exited, 0, 'clean exit on SIGTERM');
  }
});

// --- completions for evaluation harnesses (lm-evaluation-harness's
// local-completions): batched prompts, echo with prompt logprobs, max_tokens
// 0, logit_bias and penalties ---

function readSafetensors(file) {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString());
  const out = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [a, b] = info.data_offsets;
    const bytes = buf.subarray(8 + n + a, 8 + n + b);
    out[name] = { shape: info.shape,
                  data: new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length)) };
  }
  return out;
}

// log_softmax of row `row` of a [len, vocab] logits tensor, in float64.
function logSoftmaxRow(tensor, row) {
  const vocab = tensor.shape[1];
  const r = tensor.data.subarray(row * vocab, (row + 1) * vocab);
  let max = -Infinity;
  for (const v of r) max = Math.max(max, v);
  let sum = 0;
  for (const v of r) sum += Math.exp(v - max);
  const logZ = max + Math.log(sum);
  return Array.from(r, (v) => v - logZ);
}

// A batch of 8 token-id prompts (the reference prompts, then prefixes of
// them: a causal model's logits at a prefix's rows are the same rows) with
// echo, logprobs and max_tokens 0: every prompt token after the first has
// the logprob log_softmax(reference logits)[row][token], within `tol(x)`.
async function checkEchoBatch(api, dir, tol) {
  const ref = JSON.parse(fs.readFileSync(path.join(dir, 'reference.json')));
  const logits = readSafetensors(path.join(dir, 'reference_logits.safetensors'));
  const prompts = [];
  for (const [i, c] of ref.cases.entries()) prompts.push({ ids: c.prompt_ids, ref: i });
  for (const [i, c] of ref.cases.entries())
    prompts.push({ ids: c.prompt_ids.slice(0, Math.max(2, c.prompt_ids.length - 1 - i)), ref: i });
  while (prompts.length < 8) prompts.push({ ids: ref.cases[0].prompt_ids.slice(0, 2 + prompts.length), ref: 0 });
  prompts.length = 8;
  const r = await api.completions.create({ model: modelName, prompt: prompts.map((p) => p.ids),
                                           echo: true, logprobs: 1, max_tokens: 0, temperature: 0 });
  assert.equal(r.choices.length, 8);
  let worst = 0;
  for (const [i, p] of prompts.entries()) {
    const choice = r.choices.find((c) => c.index === i);
    assert.ok(choice, `choice ${i}`);
    assert.equal(choice.finish_reason, 'length');
    const lp = choice.logprobs;
    assert.equal(lp.tokens.length, p.ids.length);
    assert.equal(lp.token_logprobs[0], null, "the first prompt token's logprob is null");
    assert.equal(lp.top_logprobs[0], null);
    assert.equal(lp.text_offset[0], 0);
    const tensor = logits[`prompt${p.ref}.logits`];
    for (let j = 1; j < p.ids.length; j++) {
      const row = logSoftmaxRow(tensor, j - 1);
      const want = row[p.ids[j]];
      const diff = Math.abs(lp.token_logprobs[j] - want);
      worst = Math.max(worst, diff);
      assert.ok(diff <= tol(want), `prompt ${i} token ${j}: ${lp.token_logprobs[j]} vs ${want}`);
      // Alternatives (keyed by text, so tokens spelled alike share a key)
      // hold the token itself and nothing likelier than the row's maximum.
      const values = Object.values(lp.top_logprobs[j]);
      const rowMax = Math.max(...row);
      assert.ok(values.length >= 1 && values.length <= 2, `prompt ${i} token ${j}: top_logprobs`);
      assert.ok(Math.max(...values) <= rowMax + tol(rowMax), `prompt ${i} token ${j}: top`);
      assert.ok(Math.max(...values) >= lp.token_logprobs[j] - tol(want), `prompt ${i} token ${j}: top`);
    }
  }
  const promptTokens = prompts.reduce((n, p) => n + p.ids.length, 0);
  assert.deepEqual(r.usage, { prompt_tokens: promptTokens, completion_tokens: 0, total_tokens: promptTokens });
  return worst;
}

test('a batch of 8 prompts with echo and logprobs: prompt logprobs are the reference log-softmax', async () => {
  // demo-llama-4m's reference logits carry up to 3.4e-4 of relative error
  // (HfReferenceTest says why), so this checks 2e-3 * max(1, |x|); the
  // tiny fixtures below hold 1e-4.
  const worst = await checkEchoBatch(client, modelDir, (x) => 2e-3 * Math.max(1, Math.abs(x)));
  console.log(`demo-llama-4m: worst prompt logprob difference ${worst.toExponential(2)}`);

  // Text prompts, echo and generation: the prompt text, then the greedy
  // continuation; logprobs for both.
  const r = await client.completions.create({ model: modelName, prompt: reference.cases.map((c) => c.prompt_text),
                                              echo: true, logprobs: 1, max_tokens: 4, temperature: 0,
                                              ignore_eos: true, return_token_ids: true });
  assert.equal(r.choices.length, reference.cases.length);
  for (const [i, c] of reference.cases.entries()) {
    const choice = r.choices.find((x) => x.index === i);
    assert.equal(choice.text, c.prompt_text + decode(c.greedy_ids.slice(0, 4)));
    assert.deepEqual(choice.prompt_token_ids, c.prompt_ids);
    assert.equal(choice.logprobs.tokens.length, c.prompt_ids.length + 4);
    assert.equal(choice.logprobs.token_logprobs[0], null);
    for (const v of choice.logprobs.token_logprobs.slice(1)) assert.ok(v <= 0);
  }
  // Streamed: the first chunk of each choice starts with its prompt.
  const stream = await client.completions.create({ model: modelName, prompt: [reference.cases[0].prompt_text, reference.cases[1].prompt_text],
                                                   echo: true, max_tokens: 3, temperature: 0, ignore_eos: true, stream: true });
  const texts = ['', ''];
  for await (const chunk of stream) for (const ch of chunk.choices) texts[ch.index] += ch.text;
  for (const i of [0, 1])
    assert.equal(texts[i], reference.cases[i].prompt_text + decode(reference.cases[i].greedy_ids.slice(0, 3)));
});

test('the same within 1e-4 on the tiny fixtures of ../shared', async (t) => {
  const fixtures = process.env.LLMIR_FIXTURES ?? path.join(root, '../shared/fixtures');
  if (!fs.existsSync(path.join(fixtures, 'tiny-llama-gqa', 'reference_logits.safetensors'))) {
    t.skip('../shared/fixtures absent');
    return;
  }
  for (const name of ['tiny-llama-gqa', 'tiny-llama-mha']) {
    // The fixture's weights and references; the demo tokenizer only names
    // tokens (the fixture's ids are a prefix of its vocabulary).
    const dir = fs.mkdtempSync(path.join(tmp, `${name}-`));
    for (const f of fs.readdirSync(path.join(fixtures, name)))
      fs.symlinkSync(path.join(fixtures, name, f), path.join(dir, f));
    for (const f of ['tokenizer.json', 'tokenizer_config.json'])
      fs.symlinkSync(path.join(modelDir, f), path.join(dir, f));
    const s = startScheduler(dir);
    try {
      const deadline = Date.now() + 120000;
      while (!fs.existsSync(s.portFile)) {
        assert.equal(s.proc.exitCode, null, `the scheduler starts with ${name}`);
        assert.ok(Date.now() < deadline);
        await new Promise((r) => setTimeout(r, 50));
      }
      const port = fs.readFileSync(s.portFile, 'utf8').trim();
      const api = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'unused', maxRetries: 0 });
      const worst = await checkEchoBatch(api, dir, () => 1e-4);
      console.log(`${name}: worst prompt logprob difference ${worst.toExponential(2)}`);
    } finally {
      s.proc.kill('SIGTERM');
      assert.equal(await s.exited, 0);
    }
  }
});

test('logit_bias and penalties', async () => {
  const c = reference.cases[0];
  const forced = await client.completions.create({ model: modelName, prompt: c.prompt_ids, max_tokens: 3,
                                                   temperature: 0, ignore_eos: true, return_token_ids: true,
                                                   logit_bias: { 42: 100 } });
  assert.deepEqual(forced.choices[0].token_ids, [42, 42, 42]);
  const banned = await client.completions.create({ model: modelName, prompt: c.prompt_ids, max_tokens: 1,
                                                   temperature: 0, return_token_ids: true,
                                                   logit_bias: { [c.greedy_ids[0]]: -100 } });
  assert.notEqual(banned.choices[0].token_ids[0], c.greedy_ids[0]);
  const penalized = await client.chat.completions.create({ model: modelName, messages: [{ role: 'user', content: 'def f(' }],
                                                           max_tokens: 8, temperature: 0, presence_penalty: 1.5,
                                                           frequency_penalty: 1.0, repetition_penalty: 1.3 });
  assert.equal(penalized.choices[0].finish_reason.length > 0, true);
  for (const [param, body] of [['logit_bias', { logit_bias: { 999999: 1 } }],
                               ['logit_bias', { logit_bias: { 5: 1000 } }],
                               ['presence_penalty', { presence_penalty: 3 }],
                               ['frequency_penalty', { frequency_penalty: -2.5 }],
                               ['repetition_penalty', { repetition_penalty: 0 }],
                               ['max_tokens', { max_tokens: 0 }],
                               ['n', { prompt: Array(600).fill('x'), n: 2 }]]) {
    const r = await fetch(`${baseURL}/v1/completions`, { method: 'POST', headers: { 'Content-Type': 'application/json' },
                                                          body: JSON.stringify({ prompt: 'x', ...body }) });
    assert.equal(r.status, 400, JSON.stringify(body));
    assert.equal((await r.json()).error.param, param);
  }
});

// --- tools: Qwen2.5's template with --tool-call-parser hermes ---

test('a tool round trip reaches the template as the oracle renders it; the hermes parser leaves plain output as content', async () => {
  const fixtures = path.join(root, 'tests/fixtures/chat-templates');
  const name = 'Qwen-Qwen2.5-7B-Instruct';
  const goldens = JSON.parse(fs.readFileSync(path.join(fixtures, 'goldens', `${name}.json`)));
  const spec = JSON.parse(fs.readFileSync(path.join(fixtures, 'conversations.json')));
  const s = startScheduler(modelWithChatTemplate(fs.readFileSync(path.join(fixtures, `${name}.jinja`), 'utf8')),
                           ['--tool-call-parser', 'hermes']);
  try {
    const deadline = Date.now() + 120000;
    while (!fs.existsSync(s.portFile)) {
      assert.equal(s.proc.exitCode, null, 'the scheduler starts');
      assert.ok(Date.now() < deadline);
      await new Promise((r) => setTimeout(r, 50));
    }
    const url = `http://127.0.0.1:${fs.readFileSync(s.portFile, 'utf8').trim()}`;
    const api = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
    const post = async (route, body) => {
      const r = await fetch(`${url}${route}`, { method: 'POST', body: JSON.stringify(body),
                                                 headers: { 'Content-Type': 'application/json' } });
      return { status: r.status, body: await r.json() };
    };
    // The round trip as a client sends it: the assistant's tool_calls with
    // arguments as a JSON string (OpenAI's wire format), then role "tool".
    const conv = spec.conversations[6]; // tool call and tool result
    const messages = conv.messages.map((m) => m.tool_calls
      ? { ...m, tool_calls: m.tool_calls.map((c) => ({ ...c, function: { ...c.function, arguments: JSON.stringify(c.function.arguments) } })) }
      : m);
    const tools = conv.extra.tools;
    const chatTokens = await post('/tokenize', { messages, tools });
    const oracleTokens = await post('/tokenize', { prompt: goldens[6].text });
    assert.equal(chatTokens.status, 200, JSON.stringify(chatTokens.body));
    assert.deepEqual(chatTokens.body.tokens, oracleTokens.body.tokens,
                     'rendered as the oracle renders the conversation with arguments as objects');

    const request = { model: modelName, messages, tools, temperature: 0, max_tokens: 12, ignore_eos: true };
    const chat = await api.chat.completions.create(request);
    assert.equal(chat.usage.prompt_tokens, chatTokens.body.count);
    // The demo model writes Python, not <tool_call> blocks: content it stays.
    assert.equal(typeof chat.choices[0].message.content, 'string');
    assert.equal(chat.choices[0].message.tool_calls, undefined);
    assert.equal(chat.choices[0].finish_reason, 'length');
    const stream = await api.chat.completions.create({ ...request, stream: true });
    let text = '';
    for await (const chunk of stream) {
      assert.equal(chunk.choices[0].delta.tool_calls, undefined);
      text += chunk.choices[0].delta.content ?? '';
    }
    assert.equal(text, chat.choices[0].message.content, 'streamed content equals the whole');

    await assert.rejects(api.chat.completions.create({ ...request, tool_choice: { type: 'function', function: { name: 'nope' } } }),
                         (e) => e.status === 400 && e.param === 'tool_choice');
    const none = await api.chat.completions.create({ ...request, tool_choice: 'none' });
    assert.equal(none.choices[0].message.content, chat.choices[0].message.content);
  } finally {
    s.proc.kill('SIGTERM');
    assert.equal(await s.exited, 0, 'clean exit on SIGTERM');
  }
  const bad = startScheduler(modelWithChatTemplate('{{ messages[0].content }}'), ['--tool-call-parser', 'pythonic']);
  assert.equal(await bad.exited, 2);
  assert.match(bad.log(), /unknown tool call parser 'pythonic'/);
});

test('named chat templates (tool_use for requests with tools) and chat_template.jinja', async () => {
  const named = [{ name: 'default', template: "{% for m in messages %}D:{{ m.content }}|{% endfor %}" },
                 { name: 'tool_use', template: "{% for t in tools %}T:{{ t.function.name }}|{% endfor %}" +
                                              "{% for m in messages %}{{ m.content }}|{% endfor %}" }];
  const withJinjaFile = modelWithChatTemplate(undefined);
  fs.writeFileSync(path.join(withJinjaFile, 'chat_template.jinja'), "J:{{ messages[0]['content'] }}\n");
  for (const [dir, cases] of [
    [modelWithChatTemplate(named), [[{}, 'D:hi|'], [{ tools: [{ type: 'function', function: { name: 'f' } }] }, 'T:f|hi|']]],
    [withJinjaFile, [[{}, 'J:hi']]]]) {
    const s = startScheduler(dir);
    try {
      const deadline = Date.now() + 120000;
      while (!fs.existsSync(s.portFile)) {
        assert.equal(s.proc.exitCode, null, 'the scheduler starts');
        assert.ok(Date.now() < deadline);
        await new Promise((r) => setTimeout(r, 50));
      }
      const url = `http://127.0.0.1:${fs.readFileSync(s.portFile, 'utf8').trim()}`;
      for (const [extra, want] of cases) {
        const tokens = await (await fetch(`${url}/tokenize`, {
          method: 'POST', headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], ...extra }) })).json();
        const text = await (await fetch(`${url}/detokenize`, {
          method: 'POST', headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ tokens: tokens.tokens }) })).json();
        assert.equal(text.prompt, want);
      }
    } finally {
      s.proc.kill('SIGTERM');
      assert.equal(await s.exited, 0);
    }
  }
});

test('text parts reach a template that loops over them as parts (Kimi K2), as the oracle renders them', async () => {
  const fixtures = path.join(root, 'tests/fixtures/chat-templates');
  const name = 'moonshotai-Kimi-K2';
  const goldens = JSON.parse(fs.readFileSync(path.join(fixtures, 'goldens', `${name}.json`)));
  const spec = JSON.parse(fs.readFileSync(path.join(fixtures, 'conversations.json')));
  const s = startScheduler(modelWithChatTemplate(fs.readFileSync(path.join(fixtures, `${name}.jinja`), 'utf8')));
  try {
    const deadline = Date.now() + 120000;
    while (!fs.existsSync(s.portFile)) {
      assert.equal(s.proc.exitCode, null, 'the scheduler starts');
      assert.ok(Date.now() < deadline);
      await new Promise((r) => setTimeout(r, 50));
    }
    const url = `http://127.0.0.1:${fs.readFileSync(s.portFile, 'utf8').trim()}`;
    const tokenize = async (body) => (await (await fetch(`${url}/tokenize`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) })).json()).tokens;
    for (const i of [0, 2, 9]) {
      const conv = spec.conversations[i];
      assert.deepEqual(await tokenize({ messages: conv.messages }), await tokenize({ prompt: goldens[i].text }), conv.name);
    }
  } finally {
    s.proc.kill('SIGTERM');
    assert.equal(await s.exited, 0);
  }
});

// --- structured output ---

test('response_format json_schema: 20 seeds at temperature 1 parse and validate', async () => {
  const schema = {
    type: 'object',
    properties: {
      name: { type: 'string', maxLength: 10 },
      age: { type: 'integer' },
      likes_python: { type: 'boolean' },
      color: { enum: ['red', 'green', 'blue'] },
      tags: { type: 'array', items: { type: 'string', maxLength: 5 }, maxItems: 3 },
    },
    required: ['name', 'age', 'likes_python', 'color', 'tags'],
    additionalProperties: false,
  };
  const results = await Promise.all(Array.from({ length: 20 }, (_, seed) =>
    client.chat.completions.create({
      model: modelName, messages: [{ role: 'user', content: 'Describe a person as JSON.' }],
      temperature: 1, seed, max_tokens: 200,
      response_format: { type: 'json_schema', json_schema: { name: 'person', schema, strict: true } } })));
  for (const [seed, r] of results.entries()) {
    const text = r.choices[0].message.content;
    assert.equal(r.choices[0].finish_reason, 'stop', `seed ${seed}: ${text}`);
    const v = JSON.parse(text);
    assert.deepEqual(Object.keys(v), ['name', 'age', 'likes_python', 'color', 'tags'], text);
    assert.equal(typeof v.name, 'string');
    assert.ok([...v.name].length <= 10, text);
    assert.ok(Number.isInteger(v.age), text);
    assert.equal(typeof v.likes_python, 'boolean');
    assert.ok(['red', 'green', 'blue'].includes(v.color), text);
    assert.ok(Array.isArray(v.tags) && v.tags.length <= 3 && v.tags.every((t) => typeof t === 'string' && [...t].length <= 5), text);
  }
  // Streamed: the chunks join into the same kind of document.
  const stream = await client.chat.completions.create({
    model: modelName, messages: [{ role: 'user', content: 'x' }], temperature: 1, seed: 7, max_tokens: 200, stream: true,
    response_format: { type: 'json_schema', json_schema: { name: 'person', schema } } });
  let text = '';
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
  assert.equal(typeof JSON.parse(text).age, 'number');

  // vLLM's guided_choice, and completions too.
  const choice = await client.completions.create({ model: modelName, prompt: 'def f(', max_tokens: 8,
                                                   temperature: 1, seed: 3, guided_choice: ['alpha', 'beta'] });
  assert.ok(['alpha', 'beta'].includes(choice.choices[0].text), choice.choices[0].text);
  for (const [param, body] of [['response_format', { response_format: { type: 'json_schema', json_schema: { schema: { anyOf: [] } } } }],
                               ['response_format', { response_format: { type: 'yaml' } }],
                               ['guided_regex', { guided_regex: 'a+' }]]) {
    const r = await fetch(`${baseURL}/v1/completions`, { method: 'POST', headers: { 'Content-Type': 'application/json' },
                                                          body: JSON.stringify({ prompt: 'x', ...body }) });
    assert.equal(r.status, 400, JSON.stringify(body));
    assert.equal((await r.json()).error.param, param);
  }
});

test('a tool-calling round trip: a forced call comes back as tool_calls (streamed and not), then the answer', async () => {
  const fixtures = path.join(root, 'tests/fixtures/chat-templates');
  const source = fs.readFileSync(path.join(fixtures, 'Qwen-Qwen2.5-7B-Instruct.jinja'), 'utf8');
  const s = startScheduler(modelWithChatTemplate(source), ['--tool-call-parser', 'hermes']);
  try {
    const deadline = Date.now() + 120000;
    while (!fs.existsSync(s.portFile)) {
      assert.equal(s.proc.exitCode, null, 'the scheduler starts');
      assert.ok(Date.now() < deadline);
      await new Promise((r) => setTimeout(r, 50));
    }
    const url = `http://127.0.0.1:${fs.readFileSync(s.portFile, 'utf8').trim()}`;
    const api = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
    const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Weather in a city.',
                     parameters: { type: 'object', properties: { city: { type: 'string', maxLength: 12 },
                                                                  unit: { enum: ['celsius', 'fahrenheit'] } },
                                   required: ['city', 'unit'] } } }];
    const messages = [{ role: 'user', content: 'What is the weather in Paris?' }];
    const base = { model: modelName, messages, tools, max_tokens: 200, temperature: 0 };
    // The demo model writes Python; tool_choice forces a well-formed call.
    for (const tool_choice of [{ type: 'function', function: { name: 'get_weather' } }, 'required']) {
      const r = await api.chat.completions.create({ ...base, tool_choice });
      const m = r.choices[0].message;
      assert.equal(r.choices[0].finish_reason, 'tool_calls', JSON.stringify(m));
      assert.equal(m.content, null);
      assert.equal(m.tool_calls.length, 1);
      const call = m.tool_calls[0];
      assert.equal(call.type, 'function');
      assert.match(call.id, /^call_/);
      assert.equal(call.function.name, 'get_weather');
      const args = JSON.parse(call.function.arguments);
      assert.equal(typeof args.city, 'string');
      assert.ok([...args.city].length <= 12);
      assert.ok(['celsius', 'fahrenheit'].includes(args.unit));

      // Streamed: the same call, as a tool_calls delta with its index.
      const stream = await api.chat.completions.create({ ...base, tool_choice, stream: true });
      const calls = [];
      let finish = null;
      for await (const chunk of stream) {
        const c = chunk.choices[0];
        if (!c) continue;
        for (const d of c.delta.tool_calls ?? []) calls[d.index] = d;
        finish = c.finish_reason ?? finish;
      }
      assert.equal(finish, 'tool_calls');
      assert.equal(calls.length, 1);
      assert.equal(calls[0].function.name, 'get_weather');
      assert.deepEqual(JSON.parse(calls[0].function.arguments), args);

      // The round trip: the call and its result go back; the model answers.
      const followUp = [...messages, m,
                        { role: 'tool', tool_call_id: call.id, content: '{"temperature": 21, "sky": "clear"}' }];
      const answer = await api.chat.completions.create({ model: modelName, messages: followUp, tools,
                                                         max_tokens: 8, temperature: 0, ignore_eos: true });
      assert.equal(typeof answer.choices[0].message.content, 'string');
      const tokens = await (await fetch(`${url}/tokenize`, { method: 'POST', headers: { 'Content-Type': 'application/json' },
                                                              body: JSON.stringify({ messages: followUp, tools }) })).json();
      assert.equal(answer.usage.prompt_tokens, tokens.count);
      const text = await (await fetch(`${url}/detokenize`, { method: 'POST', headers: { 'Content-Type': 'application/json' },
                                                              body: JSON.stringify({ tokens: tokens.tokens }) })).json();
      assert.ok(text.prompt.includes('<tool_call>\n{"name": "get_weather", "arguments": '), text.prompt);
      assert.ok(text.prompt.includes('<tool_response>\n{"temperature": 21, "sky": "clear"}\n</tool_response>'), text.prompt);
    }
  } finally {
    s.proc.kill('SIGTERM');
    assert.equal(await s.exited, 0, 'clean exit on SIGTERM');
  }
});
