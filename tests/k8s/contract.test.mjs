// The model-server contract (issue 15): every PromQL expression the chart
// ships — Grafana dashboard panels and variables, PrometheusRule alerts, the
// HPA's metric — parses (promtool), names only metrics the services export,
// with the type the expression needs (rate() over counters and histogram
// buckets, histogram_quantile over buckets, the HPA over a gauge), and returns
// data from a real Prometheus scraping a local mesh under load: a panel that
// would show "No data" fails here.
//   env: LLMIR_SCHEDULER, LLMIR_SHARD_WORKER, LLMIR_COMPILER_SERVICE,
//        PROMTOOL, PROMETHEUS, LLMIR_MODEL
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { freePort } from '../support/ports.mjs';
import YAML from 'yaml';

import { ok, renderChart, repo } from './tools.mjs';

const env = process.env;
const missing = ['LLMIR_SCHEDULER', 'LLMIR_SHARD_WORKER', 'LLMIR_COMPILER_SERVICE', 'PROMTOOL',
                 'PROMETHEUS'].filter((k) => !env[k] || !fs.existsSync(env[k]));
const modelDir = env.LLMIR_MODEL || path.join(repo, 'models/demo-llama-4m');
// Grafana's variables, as a dashboard with one model selected would send them.
const rateWindow = '20s';
const grafanaVariables = (expr) => expr.replaceAll('$__rate_interval', rateWindow).replaceAll('$model', '.*');

/// Every expression the chart ships, with where it comes from.
function shippedExpressions() {
  const out = [];
  const dashboard = JSON.parse(fs.readFileSync(path.join(repo, 'helm/llmir/files/dashboard.json'), 'utf8'));
  for (const panel of dashboard.panels)
    for (const target of panel.targets || [])
      out.push({ where: `dashboard panel "${panel.title}" ${target.refId}`, expr: grafanaVariables(target.expr),
                 panel: true });
  for (const variable of dashboard.templating.list.filter((v) => v.type === 'query')) {
    const m = /^label_values\((.+),\s*(\w+)\)$/.exec(variable.definition);
    assert.ok(m, `dashboard variable ${variable.name}: label_values(metric, label)`);
    out.push({ where: `dashboard variable ${variable.name}`, expr: m[1], panel: true, label: m[2] });
  }
  const objs = YAML.parseAllDocuments(ok(renderChart(['helm/llmir/values-gpu.yaml']), 'helm template'))
    .map((d) => d.toJS()).filter(Boolean);
  const rule = objs.find((o) => o.kind === 'PrometheusRule');
  for (const group of rule.spec.groups)
    for (const r of group.rules)
      out.push({ where: `alert ${r.alert}`, expr: String(r.expr), alert: true });
  const hpa = objs.find((o) => o.kind === 'HorizontalPodAutoscaler');
  for (const metric of hpa.spec.metrics)
    out.push({ where: 'HPA external metric', expr: metric.external.metric.name, gauge: true });
  return out;
}

const metricNames = (expr) => [...new Set(expr.match(/\bllmir:[A-Za-z0-9_:]+/g) || [])];

/// # TYPE lines of a /metrics body.
function exportedTypes(text) {
  const types = new Map();
  for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) types.set(m[1], m[2]);
  return types;
}

/// The type a name in an expression has: X_bucket / _sum / _count of a histogram X.
function typeOf(name, types) {
  if (types.has(name)) return types.get(name);
  for (const suffix of ['_bucket', '_sum', '_count'])
    if (name.endsWith(suffix) && types.get(name.slice(0, -suffix.length)) === 'histogram')
      return `histogram${suffix}`;
  return undefined;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFor(what, ms, probe) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe().catch(() => null);
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

test('every shipped PromQL expression parses with promtool', { skip: missing.includes('PROMTOOL') && 'promtool not found' }, () => {
  const expressions = shippedExpressions();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmir-promql-'));
  const file = path.join(dir, 'expressions.yaml');
  fs.writeFileSync(file, YAML.stringify({ groups: [{ name: 'contract', rules: expressions.map((e, i) => ({
    record: `llmir_contract_${i}`, expr: e.expr })) }] }));
  const r = spawnSync(env.PROMTOOL, ['check', 'rules', file], { encoding: 'utf8' });
  fs.rmSync(dir, { recursive: true, force: true });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.ok(expressions.filter((e) => e.panel).length >= 20, 'the dashboard has its panels');
});

test('every shipped expression names exported metrics of the right type and shows data from a live mesh',
     { skip: missing.length > 0 && `not available: ${missing.join(', ')}`, timeout: 280000 }, async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmir-contract-'));
  const children = [];
  const start = (name, argv) => {
    const log = fs.openSync(path.join(tmp, `${name}.log`), 'w');
    const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', log, log] });
    child.exited = new Promise((r) => child.once('exit', r));
    child.logPath = path.join(tmp, `${name}.log`);
    children.push(child);
    return child;
  };
  const logOf = (child) => fs.readFileSync(child.logPath, 'utf8').slice(-2000);
  try {
    // The mesh: compiler, scheduler (tp=2, so collectives run), two workers.
    const compilerPort = await freePort(), schedulerPort = await freePort(), workerPort = await freePort();
    start('compiler', [env.LLMIR_COMPILER_SERVICE, '--http.host=127.0.0.1', `--http.port=${compilerPort}`]);
    await waitFor('the compiler', 30000, async () => (await fetch(`http://127.0.0.1:${compilerPort}/readyz`)).ok);
    const scheduler = start('scheduler', [env.LLMIR_SCHEDULER, `--model=${modelDir}`,
      `--compiler-url=http://127.0.0.1:${compilerPort}`, '--http.host=127.0.0.1', `--http.port=${schedulerPort}`,
      `--worker-port=${workerPort}`, '--tp=2', '--kv-blocks=256']);
    const workerPorts = [await freePort(), await freePort()];
    workerPorts.forEach((port, i) => start(`worker-${i}`, [env.LLMIR_SHARD_WORKER, '--scheduler.host=127.0.0.1',
      `--scheduler.port=${workerPort}`, '--http.host=127.0.0.1', `--http.port=${port}`, '--worker.threads=1']));
    const api = `http://127.0.0.1:${schedulerPort}`;
    await waitFor('a ready replica', 120000, async () => {
      if (scheduler.exitCode !== null) throw new Error(`scheduler exited: ${logOf(scheduler)}`);
      return (await fetch(`${api}/readyz`)).ok;
    });

    const targets = { scheduler: schedulerPort, compiler: compilerPort,
                      'worker-0': workerPorts[0], 'worker-1': workerPorts[1] };
    // A real Prometheus scraping all four, while the mesh serves load.
    const promPort = await freePort();
    const config = path.join(tmp, 'prometheus.yml');
    fs.writeFileSync(config, YAML.stringify({ global: { scrape_interval: '1s', scrape_timeout: '1s' },
      scrape_configs: Object.entries(targets).map(([job, port]) => ({ job_name: job,
        static_configs: [{ targets: [`127.0.0.1:${port}`] }] })) }));
    start('prometheus', [env.PROMETHEUS, `--config.file=${config}`, `--storage.tsdb.path=${path.join(tmp, 'tsdb')}`,
                         `--web.listen-address=127.0.0.1:${promPort}`]);
    const prom = `http://127.0.0.1:${promPort}/api/v1`;
    await waitFor('Prometheus scraping every target', 90000, async () => {
      const active = (await (await fetch(`${prom}/targets`)).json()).data.activeTargets;
      return active.length === 4 && active.every((t) => t.health === 'up');
    });
    const prompts = ['def fibonacci(n):', 'import numpy as np', 'class Node:', 'def fibonacci(n):'];
    const deadline = Date.now() + 12000;
    let served = 0;
    while (Date.now() < deadline) {
      const answers = await Promise.all(prompts.map((prompt) => fetch(`${api}/v1/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt, max_tokens: 16, temperature: 0, ignore_eos: true }) })));
      for (const a of answers) assert.equal(a.status, 200, await a.text());
      served += answers.length;
    }
    await sleep(3000); // the last scrape sees the end of the load

    // Types from each service's own /metrics, after the load (a labelled
    // family appears with its first child).
    const types = new Map();
    for (const port of Object.values(targets))
      for (const [name, type] of exportedTypes(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()))
        types.set(name, type);

    const expressions = shippedExpressions();
    for (const e of expressions) {
      for (const name of metricNames(e.expr)) {
        const type = typeOf(name, types);
        assert.ok(type, `${e.where}: ${name} is not exported by any service`);
        const inRate = new RegExp(`\\b(?:rate|irate|increase)\\(\\s*${name.replaceAll(':', '\\:')}\\b`).test(e.expr);
        if (inRate)
          assert.ok(type === 'counter' || type === 'histogram_bucket' || type === 'histogram_sum' || type === 'histogram_count',
                    `${e.where}: rate() over ${name}, a ${type}`);
        if (e.expr.includes('histogram_quantile') && name.endsWith('_bucket'))
          assert.equal(type, 'histogram_bucket', `${e.where}: histogram_quantile over ${name}`);
        if (!inRate && (type === 'counter'))
          assert.fail(`${e.where}: counter ${name} used without rate()/increase()`);
        if (e.gauge) assert.equal(type, 'gauge', `${e.where}: ${name} must be a gauge`);
      }
    }

    const noData = [];
    for (const e of expressions) {
      // An alert is a condition (empty while it holds not); its left-hand
      // side is what must have data.
      const expr = e.alert ? e.expr.replace(/\s*(>|<|==|>=|<=)\s*[0-9.]+\s*$/, '') : e.expr;
      const body = await (await fetch(`${prom}/query?${new URLSearchParams({ query: expr })}`)).json();
      assert.equal(body.status, 'success', `${e.where}: ${expr}: ${JSON.stringify(body)}`);
      const values = body.data.result.map((r) => Number(r.value[1]));
      if (values.length === 0 || values.every((v) => Number.isNaN(v))) noData.push(`${e.where}: ${expr}`);
      if (e.label) assert.ok(body.data.result.some((r) => r.metric[e.label]), `${e.where}: series carry ${e.label}`);
    }
    assert.deepEqual(noData, [], `expressions with no data after ${served} requests`);
  } catch (error) {
    for (const child of children) console.log(`--- ${child.logPath}\n${logOf(child)}`);
    throw error;
  } finally {
    for (const child of children.reverse()) if (child.exitCode === null) child.kill('SIGTERM');
    await Promise.all(children.map((c) => Promise.race([c.exited, sleep(10000)])));
    for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
