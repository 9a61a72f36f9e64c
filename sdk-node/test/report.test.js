'use strict';
// The streamed report (Admin.ReportStream) through the Node SDK against a real agent: groups by default, rows on
// request, the totals as `trailer`, filters, and a bad filter refused with its field.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');

const meterd = require('..');
const { startAgent } = require('./agent');

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

/** Sums exact decimal strings with 6 decimals (what meterd keeps) as micro-units. */
const micros = (s) => {
  const [i, f = ''] = s.split('.');
  return BigInt(i) * 1_000_000n + BigInt(f.padEnd(6, '0'));
};

test('reportStream: the summary, rows on request, the totals last', async () => {
  const tenant = `t-${randomUUID().slice(0, 12)}`;
  for (let i = 0; i < 3; i++) await client.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: '1.5' });
  await client.recordUsage({ customer: tenant, dimension: 'storage_gb_hours', quantity: 2 });
  const who = `tenant:${tenant}`;

  const stream = await client.reportStream({ customer: who });
  assert.equal(stream.trailer, null, 'the totals come last');
  const groups = [];
  for await (const g of stream) groups.push(g);
  assert.ok(groups.length >= 2);
  const sum = (dim) => groups.filter((g) => g.dimension === dim).reduce((a, g) => a + micros(g.recorded), 0n);
  assert.equal(sum('api_calls'), 4_500_000n);
  assert.equal(sum('storage_gb_hours'), 2_000_000n);
  assert.ok(groups.every((g) => g.customers === 1 && g.product === 'demo' && g.hour instanceof Date));
  const t = stream.trailer;
  assert.ok(t.totals.reconciled);
  assert.equal(t.groupsSent, groups.length);
  assert.equal(micros(t.selected.recorded), 6_500_000n);

  const rowStream = await client.reportStream({ rows: true, customer: who, dimension: 'api_calls' });
  const rows = [];
  for await (const r of rowStream) rows.push(r);
  assert.ok(rows.length >= 1 && rows.every((r) => r.customer === who && typeof r.state === 'string'));
  assert.equal(rows.reduce((a, r) => a + micros(r.recorded), 0n), 4_500_000n);
  assert.equal(rowStream.trailer.rowsSent, rows.length);
});

test('reportStream: a bad filter is refused with its field', async () => {
  await assert.rejects(client.reportStream({ state: 'pending' }), (e) => e instanceof meterd.InvalidUsage && e.field === 'state');
  await assert.rejects(client.reportStream({ since: 'yesterday' }), TypeError);
  await assert.rejects(client.reportStream({ colour: 'red' }), TypeError);
});
