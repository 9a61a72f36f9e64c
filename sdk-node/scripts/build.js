#!/usr/bin/env node
// Builds the native addon from source with cargo and copies it to ./meterd.node. It runs on `npm install`
// (no prebuilt binaries are downloaded) and needs only cargo: no node-gyp, no C++ toolchain, no @napi-rs/cli.
// METERD_NODE_PROFILE=debug builds the debug profile (what tests/run uses; it shares the workspace build).
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const here = path.resolve(__dirname, '..');
const profile = process.env.METERD_NODE_PROFILE === 'debug' ? 'debug' : 'release';
const args = ['build', '-p', 'meterd-node', '--message-format=json-render-diagnostics'];
if (profile === 'release') args.push('--release');

const cargo = process.env.CARGO || 'cargo';
const run = spawnSync(cargo, args, {
  cwd: here,
  stdio: ['ignore', 'pipe', 'inherit'],
  encoding: 'utf8',
  maxBuffer: 256 * 1024 * 1024,
});
if (run.error) {
  console.error(`meterd: cannot run ${cargo} (${run.error.message}); the addon is built from source: install Rust (https://rustup.rs)`);
  process.exit(1);
}
if (run.status !== 0) process.exit(run.status || 1);

let library = null;
for (const line of run.stdout.split('\n')) {
  if (!line.startsWith('{')) continue;
  const msg = JSON.parse(line);
  if (msg.reason === 'compiler-artifact' && msg.target && msg.target.name === 'meterd_node') {
    library = msg.filenames.find((f) => /\.(so|dylib|dll)$/.test(f)) || library;
  }
}
if (!library) {
  console.error('meterd: cargo did not report the meterd_node library');
  process.exit(1);
}
const out = path.join(here, 'meterd.node');
fs.rmSync(out, { force: true }); // a new inode: a running process keeps the old mapping
fs.copyFileSync(library, out);
console.error(`meterd: built ${path.relative(process.cwd(), out) || out} (${profile}) from ${library}`);
