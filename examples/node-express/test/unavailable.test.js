'use strict';
// The app must survive the meterd agent being down: every metered route answers 503 and the process keeps
// serving. It runs the real server.js as a child process (an unhandled rejection would kill that process,
// which is what happened before the routes caught the SDK's errors).
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const net = require('node:net');
const path = require('node:path');
const readline = require('node:readline');

/** A loopback port nothing listens on: bind one, note it, close it. */
function closedPort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

let app;
let base;
let exited = null;

before(async () => {
  const agentPort = await closedPort();
  app = spawn(process.execPath, [path.join(__dirname, '..', 'server.js')], {
    env: { ...process.env, METERD_TARGET: `127.0.0.1:${agentPort}`, PORT: '0' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  app.once('exit', (code, signal) => {
    exited = { code, signal };
  });
  const lines = readline.createInterface({ input: app.stdout });
  base = await new Promise((resolve, reject) => {
    app.once('exit', (code) => reject(new Error(`server.js exited (${code}) before listening`)));
    lines.once('line', (line) => {
      const m = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(line);
      if (m) resolve(m[1]);
      else reject(new Error(`unexpected first line: ${line}`));
    });
  });
  lines.on('line', () => {}); // keep draining stdout
});

after(() => {
  if (exited === null) app.kill('SIGKILL');
});

async function get(route, headers = {}) {
  const r = await fetch(base + route, { headers });
  return { status: r.status, body: await r.json() };
}

for (const route of ['/work', '/usage']) {
  test(`${route} answers 503 while the agent is down, and the app keeps serving`, async () => {
    const first = await get(route, { 'x-tenant': 'acme', 'x-request-id': `r-${route}` });
    assert.equal(first.status, 503);
    assert.equal(first.body.error, 'metering unavailable');
    assert.equal(typeof first.body.code, 'string');

    // The same process answers again: it did not crash on the first failure.
    const second = await get(route, { 'x-tenant': 'acme' });
    assert.equal(second.status, 503);
    assert.equal(exited, null, `server.js exited: ${JSON.stringify(exited)}`);
  });
}
