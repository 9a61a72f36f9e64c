'use strict';
// Starts real `meterd` agents (with the embedded AWS emulator) for the SDK tests.
// The binary comes from $METERD_BIN (default: <repo>/target/debug/meterd).
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const METERD_BIN = process.env.METERD_BIN || path.resolve(__dirname, '../../target/debug/meterd');

const DEMO_PRODUCTS = `[products.demo]\nidentity = "license"\ndimensions = ["api_calls", "storage_gb_hours"]\n`;

class Agent {
  constructor(products = DEMO_PRODUCTS) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'meterd-node-test-'));
    this.unixSocket = path.join(this.dir, 'meterd.sock');
    this.config = path.join(this.dir, 'meterd.toml');
    fs.writeFileSync(
      this.config,
      `[server]\nlisten = "127.0.0.1:0"\nunix_socket = "${this.unixSocket}"\n\n` +
        `[storage]\ndata_dir = "${path.join(this.dir, 'data')}"\n\n[pipeline]\nlate_usage = "reject"\n\n` +
        products,
    );
    this.port = null;
    this.proc = null;
  }

  get target() {
    return `127.0.0.1:${this.port}`;
  }

  /** Starts (or restarts, on the same port and data dir) the agent; resolves when it is ready. */
  start() {
    const env = { ...process.env, METERD_LOG: process.env.METERD_LOG || 'warn' };
    if (this.port !== null) env.METERD_LISTEN = this.target;
    const log = fs.openSync(path.join(this.dir, 'agent.log'), 'a');
    this.proc = spawn(METERD_BIN, ['run', '--simulate', '--speed', '1', '--config', this.config], {
      env,
      stdio: ['ignore', 'pipe', log],
    });
    fs.closeSync(log);
    const proc = this.proc;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`meterd did not get ready; see ${this.dir}/agent.log`)), 30_000);
      proc.once('exit', (code) => reject(new Error(`meterd exited (${code}); see ${this.dir}/agent.log`)));
      const lines = readline.createInterface({ input: proc.stdout });
      lines.once('line', (line) => {
        clearTimeout(timer);
        const tcp = /tcp=127\.0\.0\.1:(\d+)/.exec(line);
        if (!tcp) return reject(new Error(`unexpected first line: ${line}`));
        this.port = Number(tcp[1]);
        const emu = /emulator=(\S+)/.exec(line);
        this.emulator = emu ? emu[1] : null;
        resolve(this);
      });
      lines.on('line', () => {}); // keep draining stdout
    });
  }

  /** Tells the embedded emulator the agreement ended, so DescribeAgreement confirms an end event. */
  async endAgreement(agreementId) {
    const r = await fetch(`${this.emulator}/_emulator/agreements`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ agreement_id: agreementId, status: 'TERMINATED' }),
    });
    if (r.status !== 200) throw new Error(`emulator answered ${r.status}: ${await r.text()}`);
  }

  signal(sig) {
    this.proc.kill(sig);
  }

  /** SIGKILL; resolves when the process is gone. */
  kill() {
    return new Promise((resolve) => {
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) return resolve();
      this.proc.once('exit', () => resolve());
      this.proc.kill('SIGKILL');
    });
  }

  async stop() {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill('SIGCONT');
    const gone = new Promise((resolve) => this.proc.once('exit', resolve));
    this.proc.kill('SIGTERM');
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 15_000);
    await gone;
    clearTimeout(timer);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

async function startAgent(products) {
  return new Agent(products).start();
}

/** Exact sum of a tenant's recorded amounts in the report, as a string (decimals via BigInt micro-units). */
async function recordedFor(client, tenant) {
  let micros = 0n;
  for (const row of (await client.report()).rows) {
    if (row.customer !== `tenant:${tenant}`) continue;
    const [whole, frac = ''] = row.recorded.split('.');
    micros += BigInt(whole) * 1_000_000n + BigInt((frac + '000000').slice(0, 6));
  }
  const whole = micros / 1_000_000n;
  const frac = (micros % 1_000_000n).toString().padStart(6, '0').replace(/0+$/, '');
  return frac ? `${whole}.${frac}` : `${whole}`;
}

module.exports = { Agent, startAgent, recordedFor, METERD_BIN };
