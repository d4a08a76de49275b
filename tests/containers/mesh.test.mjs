// The mesh as containers (issue 15): localhost/llmir:TAG from
// scripts/images.sh run with podman (host network, loopback only) the way the
// chart runs it — non-root, read-only root filesystem, no capabilities, no
// privilege escalation, /tmp a tmpfs: compiler service, scheduler in mesh
// mode and tp=1 workers. The OpenAI smoke check against the reference ids,
// then, under load, a worker container stopped (SIGTERM: graceful drain) and
// another started: no failed request and every output unchanged.
//
// Slow (images and container starts): CTest label `containers`, not part of
// scripts/test.sh; run scripts/images.sh first. env: LLMIR_IMAGE, LLMIR_MODEL.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { Mesh, compare, modelDir, openaiInstalled, prompts, reference } from '../integration/elastic/mesh.mjs';

const image = process.env.LLMIR_IMAGE || 'localhost/llmir:0.1.0';
// vfs storage and runc with explicit ulimits: what runs without overlayfs
// and with this kernel's cgroups (crun fails there).
const podmanGlobal = ['--storage-driver', process.env.LLMIR_STORAGE_DRIVER || 'vfs', '--runtime', 'runc'];
const podman = (args) => spawnSync('podman', [...podmanGlobal, ...args], { encoding: 'utf8' });
const haveImage = () => spawnSync('podman', ['--version']).status === 0 &&
  podman(['image', 'exists', image]).status === 0;
const skip = !openaiInstalled() ? 'the openai npm client is not installed (npm ci --prefix tests/integration/openai)'
  : !haveImage() ? `podman or the image ${image} is missing (scripts/images.sh)` : false;

class ContainerMesh extends Mesh {
  constructor(options) {
    super(options);
    this.containers = [];
    fs.chmodSync(this.tmp, 0o777); // port files, written by uid 65532
  }

  // Each process of the mesh as `podman run` of the image; the podman client
  // proxies signals, so SIGTERM to it is SIGTERM to the service.
  spawnLogged(name, args) {
    const container = `llmir-test-${process.pid}-${name}`;
    this.containers.push(container);
    const log = fs.openSync(path.join(this.tmp, `${name}.log`), 'w');
    const child = spawn('podman', [...podmanGlobal, 'run', '--rm', '--name', container,
      '--network', 'host', '--ulimit', 'nofile=20000:20000', '--ulimit', 'nproc=32768:32768',
      '--user', '65532:65532', '--read-only', '--tmpfs', '/tmp', '--cap-drop', 'ALL',
      '--security-opt', 'no-new-privileges', '--shm-size', '256m',
      '-v', `${this.tmp}:${this.tmp}`, '-v', `${modelDir}:${modelDir}:ro`,
      image, ...args], { stdio: ['ignore', log, log] });
    child.container = container;
    child.exited = new Promise((r) => child.once('exit', (code, signal) => r(code ?? signal)));
    return child;
  }

  async stop() {
    await super.stop();
    for (const c of this.containers) podman(['rm', '-f', '--ignore', c]);
  }
}

const mesh = new ContainerMesh({ tp: 1, drainGraceMs: 2000 });
let expected;

before(async () => {
  if (skip) return;
  await mesh.start();
  mesh.startWorker();
  mesh.startWorker();
  await mesh.waitForReplicas(2, 180000);
}, { timeout: 300000 });

after(async () => {
  if (!skip) await mesh.stop();
});

test('OpenAI smoke against the reference ids, served by containers', { skip }, async () => {
  const models = await mesh.client.models.list();
  assert.equal(models.data[0].id, 'demo-llama-4m');
  for (const c of reference.cases) {
    const r = await mesh.client.completions.create({
      model: 'demo-llama-4m', prompt: c.prompt_ids, max_tokens: c.greedy_ids.length, temperature: 0,
      ignore_eos: true, return_token_ids: true });
    assert.deepEqual(r.choices[0].token_ids, c.greedy_ids, `prompt ${c.prompt_text}`);
  }
  const results = await mesh.load(16, 64);
  assert.deepEqual(results.filter((r) => r.error), []);
  expected = results.map((r) => r.text);
});

test('a worker container stopped (drain) and another started under load: no failed request', { skip, timeout: 240000 }, async () => {
  assert.ok(expected, 'the smoke test ran first');
  const leaving = mesh.alive()[0];
  let stopped;
  let fresh;
  const results = await mesh.load(16, 64, (tokens) => {
    if (tokens === 100) {
      // What the kubelet does on a scale-down: SIGTERM, wait for the exit.
      stopped = (async () => {
        const r = podman(['stop', '--time', '60', leaving.container]);
        assert.equal(r.status, 0, r.stderr);
        return leaving.exited;
      })();
      fresh = mesh.startWorker();
    }
  });
  assert.ok(stopped, 'the worker was stopped while streams were open');
  assert.equal(await stopped, 0, 'the drained worker exits 0');
  const r = compare(results, expected);
  assert.deepEqual(r.failed, [], 'no client-visible error');
  assert.equal(r.mismatched, 0, 'every greedy output unchanged');
  // The new worker forms a replica again: two ready.
  await mesh.waitForReplicas(2, 180000);
  assert.equal(fresh.exitCode, null, 'the new worker is serving');
  const after = await mesh.load(4, 16);
  assert.deepEqual(after.filter((x) => x.error), []);
});
