#!/usr/bin/env node
// Runs the compiled CLI (npm install builds dist/ through the prepare script).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const compiled = fileURLToPath(new URL('../dist/main.js', import.meta.url));
if (!existsSync(compiled)) {
  process.stderr.write('runner-fleet: dist/ is missing; run `npm install` (or `npm run build`) first\n');
  process.exit(1);
}
await import('../dist/main.js');
