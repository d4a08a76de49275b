// The Helm chart and the kustomize manifests, checked as far as a machine
// without a cluster can (tests/k8s/README in CMakeLists): helm lint --strict;
// helm template (default values, the GPU multi-replica values) and kubectl
// kustomize (base, overlays cpu-dev and gpu) render; every object validates
// against the kubernetes-models / prometheus-operator schemas and has no
// field those schemas do not know; the invariants the mesh needs hold; values
// the schema must reject are rejected; every rendered ConfigMap loads in its
// own binary with --check-config; the alerts pass promtool.
//   env: LLMIR_SCHEDULER, LLMIR_SHARD_WORKER, LLMIR_COMPILER_SERVICE, PROMTOOL
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import YAML from 'yaml';

import { unknownFields } from './dts-fields.mjs';
import { baseRelease, helm, here, kubectl, ok, renderChart, repo } from './tools.mjs';
import { baseHeader } from './base-header.mjs';

const gpuValues = 'helm/llmir/values-gpu.yaml';

function parseDocs(text) {
  return YAML.parseAllDocuments(text).map((d) => {
    if (d.errors.length) throw new Error(d.errors.join('\n'));
    return d.toJS();
  }).filter((o) => o && typeof o === 'object');
}

const renders = {
  'helm default values': () => ok(renderChart(), 'helm template'),
  'helm GPU values': () => ok(renderChart([gpuValues]), 'helm template -f values-gpu.yaml'),
  'helm kv-store': () => ok(renderChart([], ['kvStore.enabled=true']), 'helm template --set kvStore.enabled=true'),
  'kustomize base': () => ok(kubectl(['kustomize', 'k8s/base']), 'kubectl kustomize k8s/base'),
  'kustomize cpu-dev': () => ok(kubectl(['kustomize', 'k8s/overlays/cpu-dev']), 'kubectl kustomize cpu-dev'),
  'kustomize gpu': () => ok(kubectl(['kustomize', 'k8s/overlays/gpu']), 'kubectl kustomize gpu'),
};
const gpuRenders = new Set(['helm GPU values', 'kustomize gpu']);
const rendered = {};
function objects(name) {
  rendered[name] ??= parseDocs(renders[name]());
  return rendered[name];
}

// --- schema validation --------------------------------------------------

function modelModule(apiVersion, kind) {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : ['', apiVersion];
  if (group === 'monitoring.coreos.com')
    return `@kubernetes-models/prometheus-operator/${group}/${version}/${kind}`;
  return `kubernetes-models/${group ? `${group}/` : ''}${version}/${kind}`;
}

async function validateObject(object) {
  const module = modelModule(object.apiVersion, object.kind);
  const file = path.join(here, 'node_modules', module + '.mjs');
  assert.ok(fs.existsSync(file), `${object.apiVersion} ${object.kind}: no schema (${module})`);
  const Model = (await import(file))[object.kind];
  const where = `${object.kind}/${object.metadata?.name}`;
  try {
    new Model(object).validate();
  } catch (e) {
    throw new Error(`${where} does not validate: ${e.message}`);
  }
  const unknown = unknownFields(object, path.join(here, 'node_modules', module + '.d.ts'),
                                `I${object.kind}`, here);
  assert.deepEqual(unknown, [], `${where} has fields its schema does not know`);
}

// --- helpers over rendered objects -----------------------------------------

const byKind = (objs, kind) => objs.filter((o) => o.kind === kind);
const named = (objs, kind, suffix) => {
  const found = objs.filter((o) => o.kind === kind && o.metadata.name.endsWith(suffix));
  assert.equal(found.length, 1, `exactly one ${kind} named *${suffix}`);
  return found[0];
};
const selects = (selector, labels) =>
  Object.entries(selector.matchLabels || {}).every(([k, v]) => labels?.[k] === v) &&
  (selector.matchExpressions || []).length === 0;
const configOf = (objs, component) =>
  YAML.parse(named(objs, 'ConfigMap', `-${component}`).data['config.yaml']);
const componentOf = (deployment) => deployment.spec.template.metadata.labels['app.kubernetes.io/component'];

function checkInvariants(name, objs) {
  const deployments = byKind(objs, 'Deployment');
  assert.deepEqual(deployments.map(componentOf).sort(), ['compiler', 'scheduler', 'worker']);
  const statefulSets = byKind(objs, 'StatefulSet');
  const workloads = deployments.concat(statefulSets);
  for (const d of workloads) {
    const where = `${name}: ${d.kind} ${d.metadata.name}`;
    const pod = d.spec.template.spec;
    assert.ok(selects(d.spec.selector, d.spec.template.metadata.labels), `${where}: selector matches its pods`);
    assert.equal(pod.securityContext?.runAsNonRoot, true, `${where}: runAsNonRoot`);
    assert.ok(pod.securityContext?.runAsUser > 0, `${where}: a non-root uid`);
    assert.equal(pod.securityContext?.seccompProfile?.type, 'RuntimeDefault', `${where}: seccomp RuntimeDefault`);
    for (const c of pod.containers) {
      const cw = `${where} container ${c.name}`;
      const sc = c.securityContext || {};
      assert.equal(sc.allowPrivilegeEscalation, false, `${cw}: allowPrivilegeEscalation false`);
      assert.equal(sc.readOnlyRootFilesystem, true, `${cw}: read-only root filesystem`);
      assert.notEqual(sc.privileged, true, `${cw}: not privileged`);
      assert.ok(sc.capabilities?.drop?.includes('ALL'), `${cw}: drops ALL capabilities`);
      assert.deepEqual(sc.capabilities?.add || [], [], `${cw}: adds no capability`);
      assert.match(c.image, /^[^:]+:[^:]+$/, `${cw}: image with a tag`);
      assert.doesNotMatch(c.image, /:latest$/, `${cw}: no latest tag`);
      const ports = new Set((c.ports || []).map((p) => p.name));
      for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
        assert.ok(c[probe]?.httpGet, `${cw}: ${probe}`);
        assert.ok(ports.has(c[probe].httpGet.port), `${cw}: ${probe} on a declared port`);
      }
      assert.equal(c.readinessProbe.httpGet.path, '/readyz', `${cw}: readiness is /readyz`);
      assert.equal(c.livenessProbe.httpGet.path, '/healthz', `${cw}: liveness is /healthz`);
      assert.ok(c.resources?.requests?.cpu && c.resources?.requests?.memory, `${cw}: cpu and memory requests`);
      assert.ok(c.resources?.limits?.memory, `${cw}: a memory limit`);
      // A read-only root fs needs somewhere to write temporary files.
      assert.ok((c.volumeMounts || []).some((m) => m.mountPath === '/tmp'), `${cw}: writable /tmp`);
    }
  }

  // The scheduler: one replica, reachable by workers before it is ready.
  const scheduler = deployments.find((d) => componentOf(d) === 'scheduler');
  assert.equal(scheduler.spec.replicas, 1, `${name}: one scheduler`);
  const schedulerConfig = configOf(objs, 'scheduler');
  assert.equal(schedulerConfig['worker-host'], '0.0.0.0', `${name}: worker endpoint and store on all interfaces`);
  assert.equal(schedulerConfig.http.host, '0.0.0.0', `${name}: API on all interfaces`);
  assert.ok(schedulerConfig['store-port'] > 0, `${name}: the store on a fixed port`);
  assert.ok(schedulerConfig['compiler-url'], `${name}: mesh mode`);
  const schedulerPorts = Object.fromEntries(scheduler.spec.template.spec.containers[0].ports
    .map((p) => [p.name, p.containerPort]));
  assert.equal(schedulerPorts.workers, schedulerConfig['worker-port']);
  assert.equal(schedulerPorts.store, schedulerConfig['store-port']);
  assert.equal(schedulerPorts.http, schedulerConfig.http.port);
  const workerConfig = configOf(objs, 'worker');
  const workerService = byKind(objs, 'Service').find((s) => s.metadata.name === workerConfig.scheduler.host);
  assert.ok(workerService, `${name}: workers reach the scheduler through a Service (${workerConfig.scheduler.host})`);
  assert.equal(workerService.spec.publishNotReadyAddresses, true,
               `${name}: the workers' Service does not wait for the scheduler's readiness`);
  assert.ok(selects({ matchLabels: workerService.spec.selector }, scheduler.spec.template.metadata.labels));
  const servicePorts = Object.fromEntries(workerService.spec.ports.map((p) => [p.name, p]));
  assert.equal(servicePorts.workers?.port, workerConfig.scheduler.port, `${name}: worker port through the Service`);
  assert.equal(servicePorts.store?.port, schedulerConfig['store-port'], `${name}: store port through the Service`);
  assert.equal(servicePorts.store?.targetPort, 'store', `${name}: the store's named port`);
  assert.equal(schedulerConfig['store-host'], workerService.metadata.name, `${name}: store advertised as the Service`);
  const apiService = byKind(objs, 'Service').find((s) => s.spec.ports.some((p) => p.targetPort === 'http') &&
    selects({ matchLabels: s.spec.selector }, scheduler.spec.template.metadata.labels));
  assert.ok(apiService && !apiService.spec.publishNotReadyAddresses, `${name}: the API Service waits for readiness`);

  // Every Service selects pods and targets ports they declare.
  for (const s of byKind(objs, 'Service')) {
    const targets = workloads.filter((d) => selects({ matchLabels: s.spec.selector }, d.spec.template.metadata.labels));
    assert.equal(targets.length, 1, `${name}: Service ${s.metadata.name} selects one workload's pods`);
    const ports = new Set(targets[0].spec.template.spec.containers.flatMap((c) => (c.ports || []).map((p) => p.name)));
    for (const p of s.spec.ports) assert.ok(ports.has(p.targetPort), `${name}: ${s.metadata.name} port ${p.name} targets a declared port`);
  }

  // Workers: drain on stop, longer grace than the drain, shared memory.
  const worker = deployments.find((d) => componentOf(d) === 'worker');
  const workerPod = worker.spec.template.spec;
  const workerContainer = workerPod.containers[0];
  const preStop = workerContainer.lifecycle?.preStop?.exec?.command?.join(' ') || '';
  assert.match(preStop, /kill -TERM 1/, `${name}: the preStop hook starts the drain`);
  assert.match(preStop, /while kill -0 1/, `${name}: the preStop hook waits for the worker to leave`);
  const drainSeconds = workerConfig.timeouts['drain-grace-ms'] / 1000;
  assert.ok(workerPod.terminationGracePeriodSeconds > drainSeconds,
            `${name}: terminationGracePeriodSeconds (${workerPod.terminationGracePeriodSeconds}) > drain grace (${drainSeconds})`);
  assert.ok(schedulerConfig['drain-grace-ms'] < workerConfig.timeouts['drain-grace-ms'],
            `${name}: the scheduler moves sequences before the worker's grace ends`);
  assert.equal(workerConfig.http.host, '0.0.0.0', `${name}: worker metrics on all interfaces`);
  const shm = workerPod.volumes.find((v) => v.name === 'shm');
  assert.equal(shm?.emptyDir?.medium, 'Memory', `${name}: /dev/shm is a tmpfs`);
  assert.ok(workerContainer.volumeMounts.some((m) => m.name === 'shm' && m.mountPath === '/dev/shm'));
  const envNames = (workerContainer.env || []).map((e) => e.name);
  assert.ok(envNames.includes('LLMIR_WORKER_ADVERTISE_HOST'), `${name}: workers advertise their pod IP`);

  // GPU renders: a GPU per worker, the cuda device, GPU nodes.
  const gpus = Number(workerContainer.resources?.limits?.['nvidia.com/gpu'] || 0);
  if (gpuRenders.has(name)) {
    assert.ok(gpus >= 1, `${name}: workers request nvidia.com/gpu`);
    assert.match(workerConfig.worker.device, /^cuda(:\d+)?$/, `${name}: worker.device is cuda`);
    assert.ok(workerPod.tolerations?.some((t) => t.key === 'nvidia.com/gpu'), `${name}: tolerates GPU taints`);
    assert.match(workerContainer.image, /cuda/, `${name}: workers run the CUDA image`);
  } else {
    assert.equal(gpus, 0, `${name}: CPU workers request no GPU`);
    assert.equal(workerConfig.worker.device, 'cpu');
  }

  // PodDisruptionBudget over the workers.
  const pdbs = byKind(objs, 'PodDisruptionBudget');
  assert.ok(pdbs.some((p) => selects(p.spec.selector, worker.spec.template.metadata.labels)), `${name}: a PDB covers the workers`);

  // NetworkPolicies: each component's pods are selected by exactly one, and
  // who may reach them is what the mesh needs and no more.
  const policies = byKind(objs, 'NetworkPolicy');
  const policyFor = (d) => {
    const p = policies.filter((np) => selects(np.spec.podSelector, d.spec.template.metadata.labels));
    assert.equal(p.length, 1, `${name}: one NetworkPolicy selects the ${componentOf(d)} pods`);
    return p[0];
  };
  const peersOf = (rule) => (rule.from || []).map((peer) =>
    workloads.filter((d) => peer.podSelector && selects(peer.podSelector, d.spec.template.metadata.labels)).map(componentOf).join('+'));
  const compiler = deployments.find((d) => componentOf(d) === 'compiler');
  const workerPolicy = policyFor(worker);
  assert.deepEqual(peersOf(workerPolicy.spec.ingress[0]).sort(), ['scheduler', 'worker'],
                   `${name}: only the scheduler and workers reach workers`);
  assert.ok(workerPolicy.spec.ingress.slice(1).every((r) => r.ports?.every((p) => p.port === 'metrics')),
            `${name}: anything else reaches the worker's metrics port only`);
  const schedulerPolicy = policyFor(scheduler);
  const workerRule = schedulerPolicy.spec.ingress.find((r) => r.ports?.some((p) => p.port === 'workers'));
  assert.deepEqual(workerRule.ports.map((p) => p.port).sort(), ['store', 'workers']);
  assert.deepEqual(peersOf(workerRule), ['worker'], `${name}: only workers reach the worker endpoint and the store`);
  const compilerPolicy = policyFor(compiler);
  assert.deepEqual(peersOf(compilerPolicy.spec.ingress[0]).sort(), ['scheduler', 'worker'],
                   `${name}: only the scheduler and workers call the compiler`);
  for (const np of policies) assert.deepEqual(np.spec.policyTypes, ['Ingress']);

  // The KV-block store: a StatefulSet behind a headless Service, advertised
  // to the workers through the scheduler's config, reached by workers only.
  const kvStore = statefulSets.find((d) => componentOf(d) === 'kv-store');
  assert.equal(statefulSets.length, kvStore ? 1 : 0, `${name}: the kv store is the only StatefulSet`);
  if (!kvStore) {
    assert.equal(schedulerConfig['kv-store'], undefined, `${name}: no kv store configured without one`);
  } else {
    assert.equal(kvStore.spec.replicas, 1, `${name}: one kv store`);
    const service = byKind(objs, 'Service').find((sv) => sv.metadata.name === kvStore.spec.serviceName);
    assert.ok(service, `${name}: the StatefulSet's serviceName is a Service`);
    assert.equal(service.spec.clusterIP, 'None', `${name}: the kv store's Service is headless`);
    const kvConfig = configOf(objs, 'kv-store');
    const containerPorts = Object.fromEntries(kvStore.spec.template.spec.containers[0].ports
      .map((p) => [p.name, p.containerPort]));
    assert.equal(containerPorts.ucx, kvConfig.ucx.port);
    assert.equal(containerPorts.http, kvConfig.http.port);
    assert.equal(kvConfig.ucx.host, '0.0.0.0', `${name}: the kv store listens beyond loopback`);
    assert.equal(schedulerConfig['kv-store']?.host, service.metadata.name,
                 `${name}: workers are sent the kv store's Service`);
    assert.equal(schedulerConfig['kv-store'].port,
                 service.spec.ports.find((p) => p.targetPort === 'ucx')?.port);
    const kvPolicy = policyFor(kvStore);
    const ucxRule = kvPolicy.spec.ingress.find((r) => r.ports?.some((p) => p.port === 'ucx'));
    assert.deepEqual(ucxRule.ports.map((p) => p.port), ['ucx']);
    assert.deepEqual(peersOf(ucxRule), ['worker'], `${name}: only workers reach the kv store`);
    assert.ok(kvPolicy.spec.ingress.filter((r) => r !== ucxRule).every((r) => r.ports?.every((p) => p.port === 'http')),
              `${name}: anything else reaches the kv store's metrics port only`);
  }

  // An HPA scales the worker Deployment on the scheduler's waiting queue.
  for (const hpa of byKind(objs, 'HorizontalPodAutoscaler')) {
    assert.equal(hpa.spec.scaleTargetRef.name, worker.metadata.name);
    assert.equal(worker.spec.replicas, undefined, `${name}: the HPA owns the worker count`);
    assert.deepEqual(hpa.spec.metrics.map((m) => m.external?.metric?.name), ['llmir:num_requests_waiting']);
  }
}

// --- the tests ------------------------------------------------------------

test('helm lint --strict passes for the default, the GPU and the kv-store values', () => {
  ok(helm(['lint', '--strict', 'helm/llmir']), 'helm lint --strict');
  ok(helm(['lint', '--strict', 'helm/llmir', '-f', gpuValues]), 'helm lint --strict -f values-gpu.yaml');
  ok(helm(['lint', '--strict', 'helm/llmir', '--set', 'kvStore.enabled=true']),
     'helm lint --strict --set kvStore.enabled=true');
});

for (const name of Object.keys(renders)) {
  test(`${name}: every object validates, has only known fields, and the invariants hold`, async () => {
    const objs = objects(name);
    assert.ok(objs.length >= 10, `${name}: rendered ${objs.length} objects`);
    for (const o of objs) await validateObject(o);
    checkInvariants(name, objs);
  });
}

test('the GPU values turn on autoscaling, monitoring, alerts and the dashboard', () => {
  const kinds = new Set(objects('helm GPU values').map((o) => o.kind));
  for (const kind of ['HorizontalPodAutoscaler', 'PodMonitor', 'PrometheusRule'])
    assert.ok(kinds.has(kind), kind);
  const dashboard = objects('helm GPU values').find((o) => o.kind === 'ConfigMap' && o.metadata.labels?.grafana_dashboard);
  assert.ok(dashboard, 'a ConfigMap with the Grafana sidecar label');
  const json = JSON.parse(dashboard.data['llmir.json']);
  assert.ok(json.panels.length >= 10);
});

test('k8s/base is what the chart renders with its default values', () => {
  const committed = fs.readFileSync(path.join(repo, 'k8s/base/llmir.yaml'), 'utf8');
  assert.equal(committed, baseHeader + ok(renderChart(), 'helm template'),
               'k8s/base/llmir.yaml is stale: run node tests/k8s/update-k8s-base.mjs');
  // kustomize orders objects by kind; the objects themselves are the same.
  const key = (o) => `${o.kind}/${o.metadata.name}`;
  const sorted = (objs) => [...objs].sort((x, y) => key(x).localeCompare(key(y)));
  assert.deepEqual(sorted(objects('kustomize base')), sorted(parseDocs(ok(renderChart(), 'helm template'))));
});

test('the gpu overlay changes the worker config only in worker.device', () => {
  const base = configOf(objects('kustomize base'), 'worker');
  const gpu = configOf(objects('kustomize gpu'), 'worker');
  assert.match(gpu.worker.device, /^cuda/);
  gpu.worker.device = base.worker.device;
  assert.deepEqual(gpu, base, 'k8s/overlays/gpu/gpu-workers.yaml is stale against the chart');
});

test('an API key comes from a Secret, never from the ConfigMap', () => {
  for (const sets of [['apiKey.value=sk-test'], ['apiKey.existingSecret=my-llmir-key']]) {
    const objs = parseDocs(ok(renderChart([], sets), 'helm template'));
    const scheduler = objs.find((o) => o.kind === 'Deployment' && componentOf(o) === 'scheduler');
    const env = scheduler.spec.template.spec.containers[0].env.find((e) => e.name === 'LLMIR_API_KEY');
    assert.ok(env?.valueFrom?.secretKeyRef, `${sets}: LLMIR_API_KEY from a secretKeyRef`);
    const secretName = env.valueFrom.secretKeyRef.name;
    if (sets[0].startsWith('apiKey.value')) {
      const secret = named(objs, 'Secret', '-api-key');
      assert.equal(secret.metadata.name, secretName);
      assert.equal(secret.stringData[env.valueFrom.secretKeyRef.key], 'sk-test');
    } else {
      assert.equal(secretName, 'my-llmir-key');
      assert.equal(byKind(objs, 'Secret').length, 0);
    }
    for (const cm of byKind(objs, 'ConfigMap'))
      assert.doesNotMatch(cm.data['config.yaml'] || '', /sk-test|api-key/);
  }
});

test('values the schema must reject are rejected', () => {
  const mustFail = [
    ['scheduler.replicas=2', /scheduler\.replicas/],
    ['scheduler.replicas=0', /scheduler\.replicas/],
    ['worker.device=gpu', /worker\.device/],
    ['worker.gpus=1', /worker/],                       // a GPU without the cuda device
    ['worker.device=cuda', /worker/],                   // the cuda device without a GPU
    ['worker.replicsa=3', /replicsa/],                  // a typo is not silently ignored
    ['image.tag=', /image\.tag/],
    ['scheduler.tp=0', /scheduler\.tp/],
    ['logLevel=verbose', /logLevel/],
    ['models.mountPath=models', /mountPath/],
    ['metrics.prometheusRule.errorRatio=2', /errorRatio/],
    ['kvStore.ucxPort=0', /ucxPort/],
    ['kvStore.capacityBytes=0', /capacityBytes/],
    ['kvStore.enabeld=true', /enabeld/],
    ['scheduler.limits.maxConcurrentRequestsPerKey=-1', /maxConcurrentRequestsPerKey/],
    ['scheduler.limits.concurrencyRetryAfterSeconds=0', /concurrencyRetryAfterSeconds/],
    ['apiKeysFile.secretKey=', /apiKeysFile\.secretKey/],
  ];
  for (const [set, message] of mustFail) {
    const r = renderChart([], [set]);
    assert.notEqual(r.status, 0, `--set ${set} must fail`);
    assert.match(r.stderr, message, `--set ${set}: the error names the value`);
  }
  // And the accepted forms of the same keys.
  for (const set of ['worker.device=cuda:1,worker.gpus=1', 'scheduler.tp=2', 'logLevel=debug'])
    ok(renderChart([], set.split(/,(?=[a-z])/)), `--set ${set}`);
});

// --- each ConfigMap in its own binary ----------------------------------------

const binaries = {
  compiler: process.env.LLMIR_COMPILER_SERVICE,
  scheduler: process.env.LLMIR_SCHEDULER,
  worker: process.env.LLMIR_SHARD_WORKER,
  'kv-store': process.env.LLMIR_KV_STORE,
};

function checkConfig(component, text) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmir-config-'));
  const file = path.join(dir, 'config.yaml');
  fs.writeFileSync(file, text);
  // The environment a pod gets from the chart is not the test's: clear LLMIR_*.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('LLMIR_')));
  const r = spawnSync(binaries[component], ['--check-config', `--config=${file}`], { encoding: 'utf8', env });
  fs.rmSync(dir, { recursive: true, force: true });
  return r;
}

test('every rendered ConfigMap is accepted by its own binary (--check-config)', { skip: !binaries.scheduler && 'LLMIR_* binaries not set' }, () => {
  for (const name of Object.keys(renders)) {
    const configMaps = byKind(objects(name), 'ConfigMap').filter((c) => c.data?.['config.yaml']);
    const kvStore = byKind(objects(name), 'StatefulSet').length > 0;
    assert.deepEqual(configMaps.map((c) => c.metadata.labels['app.kubernetes.io/component']).sort(),
                     ['compiler', ...(kvStore ? ['kv-store'] : []), 'scheduler', 'worker']);
    for (const cm of configMaps) {
      const component = cm.metadata.labels['app.kubernetes.io/component'];
      const r = checkConfig(component, cm.data['config.yaml']);
      assert.equal(r.status, 0, `${name}: ${cm.metadata.name} rejected by its binary:\n${r.stderr}`);
      assert.match(r.stdout, /configuration is valid/);
    }
  }
});

test('--check-config fails on a key the binary does not know', { skip: !binaries.scheduler && 'LLMIR_* binaries not set' }, () => {
  // What the chart rendered before issue 15 (log: {level}) is fine now; the
  // old scheduler spelling and the worker's old snake_case keys are not.
  const cases = [
    ['scheduler', ['scheduler.config.log-level=info'], /unknown llmir-scheduler config key 'log-level'/],
    ['scheduler', ['scheduler.config.lb-policy=random'], /lb-policy/],
    ['worker', ['worker.config.timeouts.drain_grace_ms=5'], /did you mean 'timeouts.drain-grace-ms'/],
    ['compiler', ['compiler.config.http.max_body_bytes=5'], /did you mean 'http.max-body-bytes'/],
    ['kv-store', ['kvStore.enabled=true', 'kvStore.config.store.capacity_bytes=5'],
     /did you mean 'store.capacity-bytes'/],
    ['scheduler', ['kvStore.enabled=true', 'scheduler.config.kv-store.timeout-ms=0'], /kv-store.timeout-ms/],
  ];
  for (const [component, sets, message] of cases) {
    const objs = parseDocs(ok(renderChart([], sets), 'helm template'));
    const r = checkConfig(component, named(objs, 'ConfigMap', `-${component}`).data['config.yaml']);
    assert.notEqual(r.status, 0, `${sets}: must be rejected`);
    assert.match(r.stderr, message);
  }
});

// --- API keys file and per-key limits -----------------------------------------

const apiKeysSets = ['apiKeysFile.existingSecret=my-llmir-keys', 'apiKeysFile.secretKey=keys',
                     'scheduler.limits.maxConcurrentRequestsPerKey=4',
                     'scheduler.limits.concurrencyRetryAfterSeconds=3'];

test('by default the scheduler gets no keys file and no per-key limit', () => {
  const objs = objects('helm default values');
  const config = configOf(objs, 'scheduler');
  assert.equal(config['api-keys-file'], undefined);
  assert.deepEqual(config.limits, { 'max-concurrent-requests-per-key': 0, 'concurrency-retry-after-s': 1 });
  const scheduler = objs.find((o) => o.kind === 'Deployment' && componentOf(o) === 'scheduler');
  assert.ok(!scheduler.spec.template.spec.volumes.some((v) => v.secret), 'no Secret volume');
});

test('the API keys file is a Secret mounted as a file; the per-key limits reach the scheduler config', async () => {
  const objs = parseDocs(ok(renderChart([], apiKeysSets), 'helm template'));
  for (const o of objs) await validateObject(o);
  checkInvariants('helm API keys file', objs);
  const config = configOf(objs, 'scheduler');
  assert.deepEqual(config.limits, { 'max-concurrent-requests-per-key': 4, 'concurrency-retry-after-s': 3 });
  const pod = objs.find((o) => o.kind === 'Deployment' && componentOf(o) === 'scheduler').spec.template.spec;
  const volume = pod.volumes.find((v) => v.secret?.secretName === 'my-llmir-keys');
  assert.ok(volume, 'a volume from the named Secret');
  assert.equal(volume.secret.items.length, 1, 'only the keys file is projected');
  assert.equal(volume.secret.items[0].key, 'keys', 'the Secret key apiKeysFile.secretKey');
  assert.equal(volume.secret.defaultMode, 0o440, 'readable by its owner and the pod group (fsGroup) only');
  const mount = pod.containers[0].volumeMounts.find((m) => m.name === volume.name);
  assert.equal(mount?.readOnly, true, 'mounted read-only');
  assert.equal(config['api-keys-file'], `${mount.mountPath}/${volume.secret.items[0].path}`,
               'the config names the mounted file');
  const configMount = pod.containers[0].volumeMounts.find((m) => m.name === 'config');
  assert.ok(!mount.mountPath.startsWith(`${configMount.mountPath}/`),
            'not inside the read-only ConfigMap mount (kubelet could not create the mount point)');
  assert.equal(byKind(objs, 'Secret').length, 0, 'the chart creates no Secret for an existing one');
  for (const cm of byKind(objs, 'ConfigMap')) assert.doesNotMatch(cm.data['config.yaml'] || '', /my-llmir-keys/);
});

test('the rendered keys-file config loads in llmir-scheduler with a keys file where the Secret would be', { skip: !binaries.scheduler && 'LLMIR_* binaries not set' }, () => {
  const objs = parseDocs(ok(renderChart([], apiKeysSets), 'helm template'));
  const config = configOf(objs, 'scheduler');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmir-api-keys-'));
  try {
    // The pod's path does not exist here: the same config with the file here.
    const keys = path.join(dir, 'api-keys');
    config['api-keys-file'] = keys;
    fs.writeFileSync(keys, '# team keys\nsk-team-a 8\nsk-team-b\n');
    let r = checkConfig('scheduler', YAML.stringify(config));
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /configuration is valid/);
    fs.writeFileSync(keys, 'sk-team-a eight\n');
    r = checkConfig('scheduler', YAML.stringify(config));
    assert.notEqual(r.status, 0, 'a malformed keys file is refused');
    assert.match(r.stderr, /api-keys-file.*line 1/);
    assert.doesNotMatch(r.stderr, /sk-team-a/, 'the error never shows the key');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// --- alerts --------------------------------------------------------------

test('the PrometheusRule passes promtool check rules and its unit tests', { skip: !process.env.PROMTOOL && 'promtool not found' }, () => {
  const rule = objects('helm GPU values').find((o) => o.kind === 'PrometheusRule');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmir-rules-'));
  const rules = path.join(dir, 'llmir-rules.yaml');
  fs.writeFileSync(rules, YAML.stringify(rule.spec));
  fs.copyFileSync(path.join(here, 'alerts.test.yaml'), path.join(dir, 'alerts.test.yaml'));
  const check = spawnSync(process.env.PROMTOOL, ['check', 'rules', rules], { encoding: 'utf8' });
  assert.equal(check.status, 0, check.stdout + check.stderr);
  const unit = spawnSync(process.env.PROMTOOL, ['test', 'rules', 'alerts.test.yaml'], { encoding: 'utf8', cwd: dir });
  assert.equal(unit.status, 0, unit.stdout + unit.stderr);
  fs.rmSync(dir, { recursive: true, force: true });
});
