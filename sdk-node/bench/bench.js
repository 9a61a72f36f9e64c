'use strict';
// Node SDK vs the stock @grpc/grpc-js + @grpc/proto-loader client, against the same running meterd agent.
//
//   (cd sdk-node && npm install && node bench/bench.js)     # npm install builds the addon in release
//
// Starts `meterd run --simulate` ($METERD_BIN, default target/release/meterd) on a temporary data dir unless
// --target ADDR names a running agent. Measures calls/s and p50/p99 for single events with 1 and 32
// concurrent callers, and events/s for batches of 1,000, for both clients, and prints the ratios. The caller's own
// cost of a call is its CPU time in this process (the agent and its fsync run in another one).
const { spawn } = require('node:child_process');
const { randomUUID } = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const meterd = require('..');

const REPO = path.resolve(__dirname, '../..');
const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : dflt;
};
const SECONDS = Number(opt('--seconds', '3'));

function startAgent() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'meterd-bench-'));
  const config = path.join(dir, 'meterd.toml');
  fs.writeFileSync(
    config,
    `[server]\nlisten = "127.0.0.1:0"\n[storage]\ndata_dir = "${path.join(dir, 'data')}"\n` +
      `[products.demo]\nidentity = "license"\ndimensions = ["api_calls", "storage_gb_hours"]\n`,
  );
  const bin = process.env.METERD_BIN || path.join(REPO, 'target/release/meterd');
  const proc = spawn(bin, ['run', '--simulate', '--speed', '1', '--config', config], {
    stdio: ['ignore', 'pipe', 'ignore'],
    env: { ...process.env, METERD_LOG: 'warn' },
  });
  return new Promise((resolve, reject) => {
    proc.once('exit', (c) => reject(new Error(`meterd exited ${c}`)));
    const rl = readline.createInterface({ input: proc.stdout });
    rl.once('line', (line) => resolve({ proc, target: /tcp=(\S+)/.exec(line)[1] }));
    rl.on('line', () => {});
  });
}

function stockClient(target) {
  const def = protoLoader.loadSync('meterd/v1/metering.proto', {
    includeDirs: [path.join(REPO, 'proto')],
    keepCase: true,
    longs: String,
    defaults: false,
  });
  const Metering = grpc.loadPackageDefinition(def).meterd.v1.Metering;
  const stub = new Metering(target, grpc.credentials.createInsecure());
  const unary = (method, req) =>
    new Promise((resolve, reject) =>
      stub[method](req, { deadline: Date.now() + 30_000 }, (err, res) => (err ? reject(err) : resolve(res))),
    );
  return { stub, unary };
}

async function runCallers(call, callers, seconds) {
  const stop = performance.now() + seconds * 1000;
  const lat = [];
  const started = performance.now();
  // The caller's own cost: this process's CPU time (every thread, the addon's native ones included) per call. The
  // agent's work and its fsync happen in another process; waiting costs no CPU.
  const cpuStarted = process.cpuUsage();
  await Promise.all(
    Array.from({ length: callers }, async () => {
      while (performance.now() < stop) {
        const t = performance.now();
        await call();
        lat.push(performance.now() - t);
      }
    }),
  );
  const cpu = process.cpuUsage(cpuStarted);
  const elapsed = (performance.now() - started) / 1000;
  lat.sort((a, b) => a - b);
  const pct = (p) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))];
  const cpuMs = (cpu.user + cpu.system) / 1000 / lat.length;
  return { rate: lat.length / elapsed, p50: pct(0.5), p99: pct(0.99), cpu: cpuMs, n: lat.length };
}

async function main() {
  let agent = null;
  let target = opt('--target');
  if (!target) {
    agent = await startAgent();
    target = agent.target;
  }
  try {
    const sdk = new meterd.Client(target);
    const { stub, unary } = stockClient(target);
    await sdk.status();

    const sdkOne = () => sdk.recordUsage({ customer: 'bench', dimension: 'api_calls', quantity: 1 });
    const event = () => ({
      idempotency_key: randomUUID(),
      customer: { tenant_id: 'bench' },
      dimension: 'api_calls',
      quantity: '1',
    });
    const stockOne = () => unary('RecordUsage', { event: event() });
    const batch = Array.from({ length: 1000 }, () => ({ customer: 'bench', dimension: 'api_calls', quantity: 1 }));
    const sdkBatch = async () => {
      const r = await sdk.recordUsageBatch(batch);
      if (r.length !== 1000) throw new Error('short batch');
    };
    const stockBatch = async () => {
      const r = await unary('RecordUsageBatch', { events: Array.from({ length: 1000 }, event) });
      if (r.results.length !== 1000) throw new Error('short batch');
    };
    for (const warm of [sdkOne, stockOne, sdkBatch, stockBatch]) await warm();

    const rows = [];
    for (const [name, callers, s, g, per] of [
      ['single event, 1 caller', 1, sdkOne, stockOne, 1],
      ['single event, 32 callers', 32, sdkOne, stockOne, 1],
      ['batch of 1,000, 1 caller', 1, sdkBatch, stockBatch, 1000],
    ]) {
      rows.push([name, per, await runCallers(s, callers, SECONDS), await runCallers(g, callers, SECONDS)]);
    }
    const f = (x, w, d = 0) => x.toFixed(d).padStart(w);
    console.log(`\nmeterd Node SDK vs @grpc/grpc-js — agent ${target}, ${SECONDS} s per cell`);
    console.log(
      `${'scenario'.padEnd(26)} ${'client'.padEnd(8)} ${'rate'.padStart(14)} ${'p50 ms'.padStart(9)} ${'p99 ms'.padStart(9)} ` +
        'caller CPU ms/call'.padStart(19),
    );
    for (const [name, per, s, g] of rows) {
      const unit = per > 1 ? 'events/s' : 'calls/s';
      for (const [label, r] of [['sdk', s], ['grpc-js', g]]) {
        console.log(
          `${name.padEnd(26)} ${label.padEnd(8)} ${f(r.rate * per, 10)} ${unit.padEnd(3)} ${f(r.p50, 9, 3)} ${f(r.p99, 9, 3)} ` +
            f(r.cpu, 19, 3),
        );
      }
      console.log(
        `${''.padEnd(26)} ${'ratio'.padEnd(8)} ${f(s.rate / g.rate, 13, 2)}x ${f(g.p50 / s.p50, 8, 2)}x ${f(g.p99 / s.p99, 8, 2)}x` +
          '   (sdk/grpc-js throughput; grpc-js/sdk latency: >1 = sdk better)',
      );
    }
    sdk.close();
    stub.close();
  } finally {
    if (agent) agent.proc.kill('SIGTERM');
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
