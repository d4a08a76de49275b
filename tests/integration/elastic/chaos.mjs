// Chaos tool: drives greedy streams with the official openai client against a
// local mesh (compiler service, llmir-scheduler in mesh mode, tp=2 workers)
// while it starts, drains (SIGTERM) and kills (SIGKILL) workers on a seeded
// schedule; reports requests sent / succeeded / failed and whether every
// greedy output matched the output of an undisturbed single replica.
//
// node tests/integration/elastic/chaos.mjs [--seconds 60] [--streams 16]
//   [--workers 4] [--every-ms 1500] [--seed 1]
// (env: LLMIR_BIN_DIR, LLMIR_MODEL). Exit 0 only with 0 failed, 0 mismatched.
import { Mesh, compare, openaiInstalled } from './mesh.mjs';

const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, a, i, all) =>
  (a.startsWith('--') ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), []));
const seconds = Number(args.seconds ?? 60);
const streams = Number(args.streams ?? 16);
const minWorkers = 2, maxWorkers = Number(args.workers ?? 4);
const everyMs = Number(args['every-ms'] ?? 1500);
let seed = Number(args.seed ?? 1);
const random = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
const kMaxTokens = 64;

if (!openaiInstalled()) {
  console.log('SKIPPED: run npm ci --prefix tests/integration/openai');
  process.exit(77);
}
const mesh = new Mesh();
await mesh.start();
mesh.startWorker();
mesh.startWorker();
await mesh.waitForReplicas(1);
const baseline = await mesh.load(streams, kMaxTokens);
const expected = baseline.map((r) => r.text);
if (baseline.some((r) => r.error)) throw new Error('baseline failed: ' + baseline[0].error);

const events = { start: 0, drain: 0, kill: 0 };
const deadline = Date.now() + seconds * 1000;
const chaos = (async () => {
  while (Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, everyMs));
    const alive = mesh.alive();
    const r = random();
    if (alive.length < maxWorkers && (alive.length < minWorkers + 1 || r < 0.4)) {
      mesh.startWorker();
      events.start++;
    } else if (r < 0.7) {
      alive[Math.floor(random() * alive.length)].kill('SIGTERM');
      events.drain++;
    } else {
      alive[Math.floor(random() * alive.length)].kill('SIGKILL');
      events.kill++;
    }
  }
})();

const totals = { sent: 0, succeeded: 0, failed: [], mismatched: 0 };
while (Date.now() < deadline) {
  const r = compare(await mesh.load(streams, kMaxTokens), expected);
  totals.sent += r.sent;
  totals.succeeded += r.succeeded;
  totals.failed.push(...r.failed);
  totals.mismatched += r.mismatched;
}
await chaos;
const m = await mesh.metrics();
const report = {
  seconds, streams, workers: `${minWorkers}..${maxWorkers}`, events,
  sent: totals.sent, succeeded: totals.succeeded, failed: totals.failed.length,
  all_greedy_outputs_matched: totals.mismatched === 0 && totals.failed.length === 0,
  mismatched: totals.mismatched,
  requeued_sequences: m.value('llmir:requeued_sequences_total'),
  replica_failures: m.value('llmir:replica_failures_total'),
  replica_drains: m.value('llmir:replica_drains_total'),
  first_errors: totals.failed.slice(0, 3),
  logs: mesh.tmp,
};
console.log(JSON.stringify(report, null, 2));
await mesh.stop();
process.exit(report.failed === 0 && report.mismatched === 0 ? 0 : 1);
