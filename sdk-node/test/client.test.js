'use strict';
// The Node SDK against a real meterd agent: happy path, every error class, retries across an agent restart
// without double counting, idempotent replays and concurrent use.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const { randomUUID } = require('node:crypto');

const meterd = require('..');
const { startAgent, recordedFor } = require('./agent');

const DEMO_ACCOUNT = '111122223333';
const DEMO_LICENSE = 'arn:aws:license-manager::111122223333:license:l-demo-demo';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const newTenant = () => `t-${randomUUID().slice(0, 12)}`;

let agent;
let client;
before(async () => {
  agent = await startAgent();
  client = new meterd.Client(agent.target);
});
after(async () => {
  client.close();
  await agent.stop();
});

test('happy path: quantities, customers, receipts and the report', async () => {
  const tenant = newTenant();
  const r1 = await client.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: 3 });
  const r2 = await client.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: '0.25', tags: { team: 'a' } });
  const r3 = await client.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: 10n });
  assert.equal(new Set([r1, r2, r3].map((r) => r.idempotencyKey)).size, 3, 'one generated key per logical event');
  assert.match(r1.idempotencyKey, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(r1.replayed, false);
  assert.equal(r1.product, 'demo');
  assert.ok(r1.usageHour instanceof Date && r1.usageHour.getTime() % 3_600_000 === 0);
  assert.ok(Math.abs(r1.eventTime.getTime() - Date.now()) < 60_000);
  assert.equal(await recordedFor(client, tenant), '13.25');

  const aws = meterd.awsCustomer(DEMO_ACCOUNT, DEMO_LICENSE);
  const r4 = await client.recordUsage({ customer: aws, dimension: 'storage_gb_hours', quantity: '2', product: 'demo' });
  assert.equal(r4.product, 'demo');
  const report = await client.report();
  assert.equal(report.totals.reconciled, true);
  assert.ok(report.rows.some((r) => r.customer.startsWith(`aws:${DEMO_ACCOUNT}`) && r.dimension === 'storage_gb_hours'));
  assert.ok(report.rows[0].hour instanceof Date);
});

test('explicit timestamps are Dates; the receipt echoes them', async () => {
  const tenant = newTenant();
  const when = new Date(Date.now() - 3 * 60_000);
  const r = await client.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: 1, timestamp: when });
  assert.equal(r.eventTime.getTime(), when.getTime());
  assert.equal(r.usageHour.getTime(), Math.floor(when.getTime() / 3_600_000) * 3_600_000);
});

test('unix socket target and the ESM entry point', async () => {
  const esm = await import('../index.mjs');
  assert.equal(esm.Client, meterd.Client);
  assert.equal(esm.default.MeterdError, meterd.MeterdError);
  const c = new esm.Client(`unix:${agent.unixSocket}`);
  const tenant = newTenant();
  await c.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: 2 });
  assert.equal(await recordedFor(c, tenant), '2');
  c.close();
});

test('status and flush', async () => {
  const s = await client.status();
  assert.equal(typeof s.version, 'string');
  assert.deepEqual(
    s.products.map((p) => [p.name, p.dimensions]),
    [['demo', ['api_calls', 'storage_gb_hours']]],
  );
  assert.ok(s.startedAt instanceof Date);
  // A standalone agent: no fleet part, nothing forwarded, nothing waited for.
  assert.equal(s.fleet ?? null, null);
  const f = await client.flush();
  assert.equal(typeof f.recordsSealed, 'number');
  assert.equal(f.eventsForwarded, 0);
  assert.deepEqual(f.waitingFor, []);
  assert.equal((await client.report()).totals.conflicts, 0);
});

test('InvalidUsage names the field and nothing is stored', async () => {
  const tenant = newTenant();
  await assert.rejects(client.recordUsage({ customer: tenant, dimension: 'nope', quantity: 1 }), (e) => {
    assert.ok(e instanceof meterd.InvalidUsage && e instanceof meterd.MeterdError && e instanceof Error);
    assert.equal(e.code, 'INVALID_USAGE');
    assert.equal(e.field, 'event.dimension');
    assert.equal(e.grpcCode, 3);
    assert.equal(e.retryable, false);
    return true;
  });
  await assert.rejects(client.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: '1.1234567' }), {
    code: 'INVALID_USAGE',
    field: 'event.quantity',
  });
  await assert.rejects(client.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: -1 }), {
    field: 'event.quantity',
  });
  const future = new Date(Date.now() + 2 * 3_600_000);
  await assert.rejects(client.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: 1, timestamp: future }), {
    field: 'event.timestamp',
  });
  assert.equal(await recordedFor(client, tenant), '0');
});

test('client-side conversions are exact or refused', async () => {
  const tenant = newTenant();
  const u = (extra) => ({ customer: tenant, dimension: 'api_calls', quantity: 1, ...extra });
  await assert.rejects(client.recordUsage(u({ quantity: 0.1 })), TypeError);
  await assert.rejects(client.recordUsage(u({ quantity: 2 ** 60 })), /not a safe integer/);
  await assert.rejects(client.recordUsage(u({ quantity: null })), TypeError);
  await assert.rejects(client.recordUsage(u({ timestamp: 1_700_000_000_000 })), /must be a valid Date/);
  await assert.rejects(client.recordUsage(u({ timestamp: new Date('nope') })), /must be a valid Date/);
  await assert.rejects(client.recordUsage(u({ customer: 42 })), /customer must be/);
  await assert.rejects(client.recordUsage(u({ qty: 2 })), /unknown key "qty"/);
  await assert.rejects(client.recordUsage(u({ tags: { a: 1 } })), /must be a string/);
  assert.throws(() => new meterd.Client('no-port-here'), (e) => e instanceof meterd.InvalidTarget && e.code === 'INVALID_TARGET');
  assert.throws(() => new meterd.Client('127.0.0.1:1', { timeoutMs: 0 }), /positive/);
  assert.throws(() => new meterd.Client('127.0.0.1:1', { retries: 3 }), /unknown option/);
  const big = await client.recordUsage(u({ quantity: 2147483647n }));
  assert.equal(big.replayed, false);
  assert.equal(await recordedFor(client, tenant), '2147483647');
});

test('idempotent replay returns the first receipt and counts once', async () => {
  const tenant = newTenant();
  const idempotencyKey = `req-${randomUUID()}`;
  const usage = { customer: tenant, dimension: 'api_calls', quantity: '2.5', idempotencyKey };
  const first = await client.recordUsage(usage);
  const again = await client.recordUsage(usage);
  assert.deepEqual([first.replayed, again.replayed], [false, true]);
  assert.equal(again.recordedAt.getTime(), first.recordedAt.getTime());
  assert.equal(await recordedFor(client, tenant), '2.5');
});

test('Conflict: same key, different content', async () => {
  const tenant = newTenant();
  const idempotencyKey = `req-${randomUUID()}`;
  await client.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: 1, idempotencyKey });
  await assert.rejects(client.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: 2, idempotencyKey }), (e) => {
    assert.ok(e instanceof meterd.Conflict);
    assert.equal(e.code, 'CONFLICT');
    assert.equal(e.field, 'event.idempotency_key');
    return true;
  });
  assert.equal(await recordedFor(client, tenant), '1');
});

test('LateUsageRejected when the hour is sealed and the policy rejects', async () => {
  const tenant = newTenant();
  await client.flush();
  const twoHoursAgo = new Date(Date.now() - 2 * 3_600_000);
  await assert.rejects(client.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: 1, timestamp: twoHoursAgo }), (e) => {
    assert.ok(e instanceof meterd.LateUsageRejected && e instanceof meterd.UsageRefused);
    assert.equal(e.code, 'LATE_USAGE_REJECTED');
    assert.equal(e.grpcCode, 9);
    return true;
  });
  assert.equal(await recordedFor(client, tenant), '0');
});

test('batches: per-event results in order, splitting, replays', async () => {
  const tenant = newTenant();
  const idempotencyKey = `b-${randomUUID()}`;
  const results = await client.recordUsageBatch([
    { customer: tenant, dimension: 'api_calls', quantity: 1, idempotencyKey },
    { customer: tenant, dimension: 'bad', quantity: 1 },
    { customer: tenant, dimension: 'api_calls', quantity: '0.5', tags: { k: 'v' } },
    { customer: tenant, dimension: 'api_calls', quantity: 9, idempotencyKey },
  ]);
  assert.equal(results[0].idempotencyKey, idempotencyKey);
  assert.ok(results[1] instanceof meterd.InvalidUsage);
  assert.equal(results[1].field, 'events[1].dimension');
  assert.equal(results[2].replayed, false);
  assert.ok(results[3] instanceof meterd.Conflict);
  assert.equal(await recordedFor(client, tenant), '1.5');
  const [again] = await client.recordUsageBatch([{ customer: tenant, dimension: 'api_calls', quantity: 1, idempotencyKey }]);
  assert.equal(again.replayed, true);
  await assert.rejects(client.recordUsageBatch([]), meterd.InvalidUsage);
  await assert.rejects(client.recordUsageBatch([{ customer: tenant, dimension: 'api_calls', quantity: 1.5 }]), /usages\[0\]/);

  const small = new meterd.Client(agent.target, { maxBatchEvents: 7 });
  const other = newTenant();
  const many = Array.from({ length: 50 }, (_, i) => ({ customer: other, dimension: 'api_calls', quantity: i + 1 }));
  const split = await small.recordUsageBatch(many);
  assert.equal(split.length, 50);
  assert.ok(split.every((r) => r.replayed === false));
  assert.equal(await recordedFor(small, other), String((50 * 51) / 2));
});

test('AgentUnavailable after retries', async () => {
  const port = await new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
  const c = new meterd.Client(`127.0.0.1:${port}`, { maxAttempts: 3, timeoutMs: 5_000 });
  const started = Date.now();
  await assert.rejects(c.recordUsage({ customer: 'x', dimension: 'api_calls', quantity: 1 }), (e) => {
    assert.ok(e instanceof meterd.AgentUnavailable);
    assert.equal(e.code, 'AGENT_UNAVAILABLE');
    assert.equal(e.retryable, true);
    return true;
  });
  assert.ok(Date.now() - started < 3_000);
});

test('Timeout when the agent hangs; the retry with the same key counts once', async () => {
  const own = await startAgent();
  try {
    const c = new meterd.Client(own.target, { timeoutMs: 1_000 });
    const tenant = newTenant();
    await c.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: 1 });
    own.signal('SIGSTOP');
    const idempotencyKey = randomUUID();
    try {
      await assert.rejects(c.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: 5, idempotencyKey }), (e) => {
        assert.ok(e instanceof meterd.Timeout);
        assert.equal(e.code, 'TIMEOUT');
        assert.equal(e.retryable, true);
        return true;
      });
    } finally {
      own.signal('SIGCONT');
    }
    const r = await c.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: 5, idempotencyKey });
    assert.equal(r.idempotencyKey, idempotencyKey);
    assert.equal(await recordedFor(c, tenant), '6');
  } finally {
    await own.stop();
  }
});

test('a call survives an agent restart mid-call and counts once', async () => {
  const own = await startAgent();
  try {
    const c = new meterd.Client(own.target, { timeoutMs: 20_000, maxAttempts: 50 });
    const tenant = newTenant();
    await c.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: 1 });
    own.signal('SIGSTOP'); // the next request reaches the agent, which never answers
    let settled = false;
    const pending = c.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: 7 }).finally(() => {
      settled = true;
    });
    await sleep(300);
    assert.equal(settled, false);
    await own.kill(); // the call's connection dies mid-call
    await sleep(500);
    await own.start(); // same port, same data dir
    const receipt = await pending;
    assert.equal(await recordedFor(c, tenant), '8');
    const replay = await c.recordUsage({
      customer: tenant,
      dimension: 'api_calls',
      quantity: 7,
      idempotencyKey: receipt.idempotencyKey,
    });
    assert.equal(replay.replayed, true);
    assert.equal(await recordedFor(c, tenant), '8');
  } finally {
    await own.stop();
  }
});

test('concurrent calls share one client', async () => {
  const tenant = newTenant();
  const receipts = await Promise.all(
    Array.from({ length: 500 }, (_, i) =>
      client.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: 1, tags: { worker: String(i % 4) } }),
    ),
  );
  assert.equal(new Set(receipts.map((r) => r.idempotencyKey)).size, 500);
  const [s, r] = await Promise.all([client.status(), client.report()]);
  assert.ok(s.eventsStored >= 500);
  assert.equal(r.totals.reconciled, true);
  assert.equal(await recordedFor(client, tenant), '500');
});

test('a deployment product (identity = "deployment") records usage with customer: null', async () => {
  const own = await startAgent('[products.ami]\nidentity = "deployment"\nproduct_code = "ami-prod"\ndimensions = ["vcpu_hours"]\n');
  const c = new meterd.Client(own.target);
  try {
    const r = await c.recordUsage({ customer: null, dimension: 'vcpu_hours', quantity: 2 });
    assert.equal(r.product, 'ami');
    const results = await c.recordUsageBatch([
      { customer: null, dimension: 'vcpu_hours', quantity: '0.5' },
      { customer: 'tenant-1', dimension: 'vcpu_hours', quantity: 1 },
    ]);
    assert.equal(results[0].product, 'ami');
    assert.ok(results[1] instanceof meterd.InvalidUsage, String(results[1]));
    assert.match(results[1].field, /^events\[1\]\.customer/);
    await assert.rejects(c.recordUsage({ customer: 'tenant-1', dimension: 'vcpu_hours', quantity: 1 }), meterd.InvalidUsage);
    // Leaving the key out is still an error: only an explicit null means "no customer".
    await assert.rejects(c.recordUsage({ dimension: 'vcpu_hours', quantity: 1 }), TypeError);
    let micros = 0n;
    for (const row of (await c.report()).rows) {
      if (row.dimension !== 'vcpu_hours') continue;
      const [whole, frac = ''] = row.recorded.split('.');
      micros += BigInt(whole) * 1_000_000n + BigInt((frac + '000000').slice(0, 6));
    }
    assert.equal(micros, 2_500_000n);
  } finally {
    c.close();
    await own.stop();
  }
});
