'use strict';
// recordUsageBatch crosses to the native addon packed (one string + one Float64Array each way, src/packed.rs):
// every field of every customer shape, non-ASCII and astral text, errors between receipts, and the field type
// checks that the per-event native objects used to make.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');

const meterd = require('..');
const { startAgent, recordedFor } = require('./agent');

const PRODUCTS =
  '[products.demo]\nidentity = "license"\ndimensions = ["api_calls", "storage_gb_hours"]\n' +
  '[products.old]\nidentity = "legacy"\nproduct_code = "old-code"\ndimensions = ["seats"]\n' +
  '[products.ami]\nidentity = "deployment"\nproduct_code = "ami-code"\ndimensions = ["vcpu_hours"]\n';
const ACCOUNT = '111122223333';
const LICENSE = 'arn:aws:license-manager::111122223333:license:l-demo-demo';

let agent;
let client;
before(async () => {
  agent = await startAgent(PRODUCTS);
  client = new meterd.Client(agent.target, { product: 'demo' }); // events without a product are demo's
});
after(async () => {
  client.close();
  await agent.stop();
});

test('a batch keeps every field of every event and result, in order, whatever the text', async () => {
  const id = randomUUID().slice(0, 8);
  const tenant = `t-𝔘ñé-${id}`; // astral (two UTF-16 units), accented and ASCII characters
  const lone = `\uD800-${id}`; // a lone surrogate: sent as U+FFFD, as the per-object conversion did
  const when = new Date(Date.now() - 3 * 60_000);
  const key = (i) => `batch-${id}-${i}`;
  const usages = [
    {
      customer: tenant,
      dimension: 'api_calls',
      quantity: '1.5',
      timestamp: when,
      tags: { team: 'a b', 'cost/center': 'x' }, // tags are AWS's ASCII set; the other strings carry the rest
      product: 'demo',
      idempotencyKey: key(0),
    },
    { customer: tenant, dimension: `dim-𝔡é-${id}`, quantity: 1, idempotencyKey: key(1) },
    { customer: meterd.awsCustomer(ACCOUNT, LICENSE), dimension: 'storage_gb_hours', quantity: 2n, idempotencyKey: key(2) },
    {
      customer: meterd.legacyCustomer(`CUST-${id}`, 'old-code'),
      dimension: 'seats',
      quantity: 3,
      product: 'old',
      idempotencyKey: key(3),
    },
    { customer: null, dimension: 'vcpu_hours', quantity: '0.25', product: 'ami', idempotencyKey: key(4) },
    { customer: lone, dimension: 'api_calls', quantity: 7 },
    { customer: meterd.legacyCustomer(`CUST-${id}`, 'other-code'), dimension: 'seats', quantity: 1, product: 'old' },
  ];
  const results = await client.recordUsageBatch(usages);
  assert.equal(results.length, usages.length);

  const receipts = [0, 2, 3, 4, 5].map((i) => results[i]);
  for (const r of receipts) assert.ok(!(r instanceof Error), String(r));
  assert.deepEqual(
    receipts.map((r) => [r.idempotencyKey, r.product, r.replayed]),
    [
      [key(0), 'demo', false],
      [key(2), 'demo', false],
      [key(3), 'old', false],
      [key(4), 'ami', false],
      [results[5].idempotencyKey, 'demo', false],
    ],
  );
  assert.match(results[5].idempotencyKey, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.deepEqual(Object.keys(results[0]), ['idempotencyKey', 'replayed', 'product', 'eventTime', 'usageHour', 'recordedAt']);
  assert.equal(results[0].eventTime.getTime(), when.getTime());
  assert.equal(results[0].usageHour.getTime(), Math.floor(when.getTime() / 3_600_000) * 3_600_000);
  assert.ok(Math.abs(results[2].recordedAt.getTime() - Date.now()) < 60_000);

  // Errors between receipts keep their class, field, message (with the astral text echoed) and gRPC code.
  assert.ok(results[1] instanceof meterd.InvalidUsage, String(results[1]));
  assert.equal(results[1].field, 'events[1].dimension');
  assert.match(results[1].message, new RegExp(`dim-𝔡é-${id}`));
  assert.equal(results[1].grpcCode, 3);
  assert.ok(results[6] instanceof meterd.InvalidUsage, String(results[6]));
  assert.equal(results[6].field, 'events[6].customer.legacy.product_code');

  // The same events one at a time (the per-object path) with the same keys are replays, not conflicts: the agent
  // fingerprints everything the caller said, so every field arrived as the caller wrote it.
  for (const i of [0, 2, 3, 4]) {
    const again = await client.recordUsage(usages[i]);
    assert.equal(again.replayed, true, `usages[${i}] crossed differently`);
  }
  const replays = await client.recordUsageBatch(usages.slice(0, 5));
  assert.deepEqual(
    replays.map((r) => (r instanceof Error ? r.field : [r.replayed, r.recordedAt.getTime()])),
    [
      [true, results[0].recordedAt.getTime()],
      'events[1].dimension',
      [true, results[2].recordedAt.getTime()],
      [true, results[3].recordedAt.getTime()],
      [true, results[4].recordedAt.getTime()],
    ],
  );
  assert.equal(await recordedFor(client, tenant), '1.5');
  assert.equal(await recordedFor(client, `\uFFFD-${id}`), '7');
});

test('fields the native layer cannot take are a TypeError naming the field', async () => {
  const u = (extra) => ({ customer: 't-types', dimension: 'api_calls', quantity: 1, ...extra });
  await assert.rejects(client.recordUsageBatch([u(), u({ product: 5 })]), {
    name: 'TypeError',
    message: 'usages[1].product must be a string',
  });
  await assert.rejects(client.recordUsageBatch([u({ idempotencyKey: {} })]), {
    name: 'TypeError',
    message: 'usages[0].idempotencyKey must be a string',
  });
  await assert.rejects(client.recordUsage(u({ customer: meterd.legacyCustomer('C1', 7) })), {
    name: 'TypeError',
    message: 'usage.customer.productCode must be a string',
  });
  await assert.rejects(client.recordUsageBatch([]), meterd.InvalidUsage);
});
