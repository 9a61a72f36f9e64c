#!/usr/bin/env node
// Packs the prebuilt npm packages (the napi-rs v3 layout) into <repo>/dist/node, or --out DIR:
//   @meterd/meterd-<platform> (meterd-meterd-<platform>-<version>.tgz): the addon for one platform; its os/cpu/libc
//     fields make npm install only the matching one. Its package.json is npm/<platform>/package.json.
//   meterd (meterd-<version>.tgz): index.js (CJS), index.mjs (ESM), index.d.ts, errors.js, with optionalDependencies
//     on the platform packages packed here and no scripts at all: installing it runs nothing and needs no cargo.
// Steps: `napi build --platform --release` (cargo; skipped with --prebuilt DIR, which takes the
// meterd.<platform>.node files the release workflow built on each platform's runner), copies them into
// npm/<platform>/, then `npm pack` for each platform package and for a staged copy of the main one.
// Publishing is `npm publish <tarball>` for each, platform packages first (.github/workflows/release.yml).
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const here = path.resolve(__dirname, '..');
const repo = path.resolve(here, '..');

function usage(message) {
  console.error(`pack.js: ${message}\nusage: node scripts/pack.js [--out DIR] [--prebuilt DIR]`);
  process.exit(2);
}

const opts = { out: path.join(repo, 'dist', 'node'), prebuilt: null };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const key = argv[i].replace(/^--/, '');
  if (!(key in opts) || argv[i] === key) usage(`unknown argument ${JSON.stringify(argv[i])}`);
  if (i + 1 >= argv.length) usage(`${argv[i]} needs a value`);
  opts[key] = path.resolve(argv[++i]);
}

function run(cmd, args, cwd) {
  const r = spawnSync(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
  if (r.error) throw new Error(`cannot run ${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (exit ${r.status})`);
  return r.stdout;
}

const napi = path.join(here, 'node_modules', '.bin', 'napi');
if (!fs.existsSync(napi)) usage('@napi-rs/cli is not installed: run `npm ci` in sdk-node first');

const pkg = JSON.parse(fs.readFileSync(path.join(here, 'package.json'), 'utf8'));
const artifacts = opts.prebuilt || path.join(here, 'artifacts');
if (!opts.prebuilt) {
  fs.rmSync(artifacts, { recursive: true, force: true });
  // --no-js and a throwaway --dts: index.js and index.d.ts are the hand-written facade, not napi's generated ones.
  run(napi, ['build', '--platform', '--release', '--no-js', '--dts', 'native.d.ts', '--output-dir', artifacts], here);
}
const built = fs.readdirSync(artifacts).filter((f) => f.endsWith('.node'));
if (built.length === 0) usage(`no ${pkg.napi.binaryName}.<platform>.node in ${artifacts}`);
// What `napi artifacts` does, which refuses to run unless every configured target was built: meterd.<platform>.node
// into npm/<platform>/. A local build has only the host's.
for (const file of built) {
  const platform = file.slice(pkg.napi.binaryName.length + 1, -'.node'.length);
  const dir = path.join(here, 'npm', platform);
  if (!fs.existsSync(path.join(dir, 'package.json'))) usage(`${file}: no npm/${platform}/package.json (napi create-npm-dirs)`);
  fs.copyFileSync(path.join(artifacts, file), path.join(dir, file));
}

fs.mkdirSync(opts.out, { recursive: true });
const pack = (dir) => {
  const out = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', opts.out], dir));
  return path.join(opts.out, out[0].filename);
};

const optionalDependencies = {};
const tarballs = [];
for (const platform of fs.readdirSync(path.join(here, 'npm')).sort()) {
  const dir = path.join(here, 'npm', platform);
  const p = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
  const addon = path.join(dir, p.main);
  if (!fs.existsSync(addon)) continue; // not built in this run
  if (p.version !== pkg.version) usage(`${p.name} is version ${p.version}, the package ${pkg.version}: run \`npx napi version\``);
  tarballs.push(pack(dir));
  fs.rmSync(addon); // the copy made above; the tarball has it
  optionalDependencies[p.name] = p.version;
}
if (tarballs.length === 0) usage(`none of ${built.join(', ')} matches a package in npm/`);

// The main package as published: what `napi pre-publish` would write, without publishing anything.
const stage = fs.mkdtempSync(path.join(os.tmpdir(), 'meterd-pack-'));
try {
  const files = ['index.js', 'index.mjs', 'index.d.ts', 'errors.js'];
  for (const f of [...files, 'README.md', 'LICENSE']) fs.copyFileSync(path.join(here, f), path.join(stage, f));
  const published = { ...pkg, files, optionalDependencies };
  delete published.scripts; // no install script: the addon comes from the platform package
  delete published.devDependencies;
  fs.writeFileSync(path.join(stage, 'package.json'), `${JSON.stringify(published, null, 2)}\n`);
  tarballs.push(pack(stage));
} finally {
  fs.rmSync(stage, { recursive: true, force: true });
}
if (!opts.prebuilt) fs.rmSync(artifacts, { recursive: true, force: true });
for (const t of tarballs) console.log(t);
