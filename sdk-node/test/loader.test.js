'use strict';
// Where index.js finds the native addon when installed from the published tarballs: the prebuilt platform
// package (@meterd/meterd-<platform>, laid out as npm/<platform>/ describes it), or a precise error when it is
// missing. Uses the addon this checkout built (meterd.node) in place of a release build.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const here = path.resolve(__dirname, '..');
const platform = 'linux-x64-gnu'; // the platform tests/run runs on; the published set is in package.json napi.targets
const onPlatform = process.platform === 'linux' && process.arch === 'x64' && process.report.getReport().header.glibcVersionRuntime;

/** An app dir with node_modules/meterd holding only what the published main package holds. */
function appWithMainPackage() {
  const app = fs.mkdtempSync(path.join(os.tmpdir(), 'meterd-loader-'));
  const main = path.join(app, 'node_modules', 'meterd');
  fs.mkdirSync(main, { recursive: true });
  for (const f of ['index.js', 'index.mjs', 'index.d.ts', 'errors.js', 'package.json']) {
    fs.copyFileSync(path.join(here, f), path.join(main, f));
  }
  return app;
}

function node(cwd, code) {
  return spawnSync(process.execPath, ['-e', code], { cwd, encoding: 'utf8' });
}

test('without its platform package the main package names the package to install', { skip: !onPlatform }, () => {
  const app = appWithMainPackage();
  try {
    const r = node(app, "require('meterd')");
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /no native addon for linux-x64: the prebuilt package @meterd\/meterd-linux-x64-gnu is not installed/);
    assert.doesNotMatch(r.stderr, /building it now with cargo/);
  } finally {
    fs.rmSync(app, { recursive: true, force: true });
  }
});

test('the addon is loaded from the platform package, for require and import', { skip: !onPlatform }, () => {
  const app = appWithMainPackage();
  try {
    const layout = JSON.parse(fs.readFileSync(path.join(here, 'npm', platform, 'package.json'), 'utf8'));
    const dir = path.join(app, 'node_modules', ...layout.name.split('/'));
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify(layout));
    fs.copyFileSync(path.join(here, 'meterd.node'), path.join(dir, layout.main));
    const cjs = node(
      app,
      "const m = require('meterd'); new m.Client('127.0.0.1:1').close();" +
        "console.log(Object.keys(require.cache).filter((f) => f.endsWith('.node')).join())",
    );
    assert.equal(cjs.status, 0, cjs.stderr);
    assert.equal(cjs.stdout.trim(), fs.realpathSync(path.join(dir, layout.main)));
    fs.writeFileSync(path.join(app, 'esm.mjs'), "import { Client } from 'meterd'; new Client('127.0.0.1:1').close();");
    const esm = spawnSync(process.execPath, ['esm.mjs'], { cwd: app, encoding: 'utf8' });
    assert.equal(esm.status, 0, esm.stderr);
  } finally {
    fs.rmSync(app, { recursive: true, force: true });
  }
});
