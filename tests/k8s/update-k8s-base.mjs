// Regenerates k8s/base/llmir.yaml from the Helm chart's default values:
//   node tests/k8s/update-k8s-base.mjs
// tests/k8s checks that the committed file is what the chart renders.
import fs from 'node:fs';
import path from 'node:path';
import { baseHeader } from './base-header.mjs';
import { ok, renderChart, repo } from './tools.mjs';

const rendered = ok(renderChart(), 'helm template');
fs.writeFileSync(path.join(repo, 'k8s/base/llmir.yaml'), baseHeader + rendered);
console.log('wrote k8s/base/llmir.yaml');
