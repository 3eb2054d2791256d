#!/usr/bin/env node
// Copies the contract (../../proto/voice, the repository's .proto files) into ./proto/voice, so that the package
// carries its own copy: `npm pack` runs this as `prepack`, and `make setup` runs it for the in-repository client.
// ./proto/ is generated (gitignored); the repository's proto/ stays the only source.
'use strict';

const fs = require('node:fs');
const path = require('node:path');

const source = path.resolve(__dirname, '..', '..', 'proto', 'voice');
const target = path.join(__dirname, 'proto', 'voice');

if (!fs.existsSync(path.join(source, 'v1'))) {
  process.stderr.write(`copy-protos: ${source} not found (run this inside the repository)\n`);
  process.exit(1);
}
fs.rmSync(target, { recursive: true, force: true });
fs.mkdirSync(target, { recursive: true });
fs.cpSync(source, target, { recursive: true, filter: (p) => fs.statSync(p).isDirectory() || p.endsWith('.proto') });
const copied = fs.readdirSync(path.join(target, 'v1')).filter((name) => name.endsWith('.proto'));
process.stderr.write(`copy-protos: ${copied.length} files into ${path.relative(process.cwd(), target) || '.'}\n`);
