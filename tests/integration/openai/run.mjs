// Runs the node tests, or exits 77 (CTest: skipped) when `npm ci` has not
// installed the openai client next to them.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const here = path.dirname(new URL(import.meta.url).pathname);
if (!fs.existsSync(path.join(here, 'node_modules', 'openai'))) {
  console.log(`SKIPPED: the openai npm client is not installed; run: npm ci --prefix ${here}`);
  process.exit(77);
}
const result = spawnSync(process.execPath, ['--test', ...process.argv.slice(2)],
                         { stdio: 'inherit', cwd: here });
process.exit(result.status ?? 1);
