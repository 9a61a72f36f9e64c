'use strict';
// The customer registry and subscription lifecycle (meterd.v1.Customers) against a real meterd agent.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');

const meterd = require('..');
const { startAgent } = require('./agent');

const ACCOUNT = '111122223333';
const LICENSE = 'arn:aws:license-manager::111122223333:license:l-0123456789abcdef';
const AGREEMENT = 'agmt-1111111111111111111111111';
const EVENT_ID = '2e72b7e1-0000-4f77-9e57-5a8bd2f7e1e5';
const newTenant = () => `t-${randomUUID().slice(0, 12)}`;

/** An EventBridge `aws.agreement-marketplace` event as AWS delivers it. */
function licenseDeprovisioned(arn = LICENSE) {
  return JSON.stringify({
    version: '0',
    id: EVENT_ID,
    'detail-type': 'License Deprovisioned - Manufacturer',
    source: 'aws.agreement-marketplace',
    account: '999988887777',
    time: '2026-11-27T12:00:00Z',
    region: 'us-east-1',
    resources: [],
    detail: {
      requestId: 'e3b0c442',
      agreement: { id: AGREEMENT },
      license: { arn },
      product: { id: 'prod-abcdefgh12345', code: 'abc123xyz' },
      acceptor: { accountId: ACCOUNT },
      proposer: { accountId: '999988887777' },
      offer: { id: 'offer-1111111111111' },
    },
  });
}

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

test('putCustomer → getCustomer → listCustomers → removeCustomer', async () => {
  const tenant = newTenant();
  await client.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: 2 }); // held under the tenant id
  const aws = meterd.awsCustomer(ACCOUNT, LICENSE);
  const put = await client.putCustomer(tenant, aws, { agreementId: AGREEMENT });
  assert.equal(put.tenantId, tenant);
  assert.equal(put.product, 'demo');
  assert.equal(put.status, 'active');
  assert.equal(put.bucketsMoved, 1);
  assert.deepEqual(put.customer, aws);
  assert.equal(put.agreementId, AGREEMENT);
  assert.equal(put.notSubscribedAt, null);

  const got = await client.getCustomer(tenant);
  assert.deepEqual(got.customer, aws);
  assert.equal(got.bucketsMoved, 0);
  assert.deepEqual(
    (await client.listCustomers()).map((c) => c.tenantId),
    [tenant],
  );
  assert.equal(await client.removeCustomer(tenant), true);
  assert.equal(await client.removeCustomer(tenant), false);
  assert.deepEqual(await client.listCustomers(), []);

  await assert.rejects(client.getCustomer(tenant), (e) => {
    assert.ok(e instanceof meterd.NotFound && e instanceof meterd.MeterdError);
    assert.equal(e.code, 'NOT_FOUND');
    assert.equal(e.grpcCode, 5);
    assert.equal(e.field, 'tenant_id');
    return true;
  });
  await assert.rejects(client.putCustomer(tenant, 'another-tenant'), TypeError);
  await assert.rejects(client.putCustomer(tenant, aws, { agreementID: 'x' }), TypeError);
  await assert.rejects(client.putCustomer(tenant, meterd.legacyCustomer('X01EXAMPLEX')), meterd.InvalidUsage);
});

test('applyEvent: License Deprovisioned ends metering for the customer', async () => {
  const tenant = newTenant();
  await client.putCustomer(tenant, meterd.awsCustomer(ACCOUNT, LICENSE), { product: 'demo', agreementId: AGREEMENT });
  await client.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: 3 });

  // meterd confirms end events with AWS (DescribeAgreement) before applying them.
  await agent.endAgreement(AGREEMENT);
  const outcome = await client.applyEvent(licenseDeprovisioned());
  assert.equal(outcome.applied, true);
  assert.equal(outcome.status, 'deprovisioning');
  assert.ok(outcome.recordsSealed >= 1, JSON.stringify(outcome));
  assert.match(outcome.summary, /License Deprovisioned/);
  assert.equal((await client.applyEvent(licenseDeprovisioned())).applied, false, 'a duplicate changes nothing');

  const info = await client.getCustomer(tenant);
  assert.equal(info.status, 'deprovisioning');
  // Not necessarily the last entry: the final hour's submission may already have added AWS's answer.
  const entry = info.history.find((h) => h.eventId === EVENT_ID && h.applied);
  assert.ok(entry, JSON.stringify(info.history));
  assert.equal(entry.status, 'deprovisioning');
  assert.ok(entry.at instanceof Date);

  await assert.rejects(client.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: 1 }), (e) => {
    assert.ok(e instanceof meterd.CustomerNotActive && e instanceof meterd.UsageRefused);
    assert.equal(e.code, 'CUSTOMER_NOT_ACTIVE');
    return true;
  });
  await assert.rejects(client.applyEvent('{}'), meterd.InvalidUsage);
});

test('resolveCustomer with a bogus token is InvalidUsage', async () => {
  const tenant = newTenant();
  await assert.rejects(client.resolveCustomer('not-a-real-token', tenant), (e) => {
    assert.ok(e instanceof meterd.InvalidUsage);
    assert.equal(e.grpcCode, 3);
    return true;
  });
  await assert.rejects(client.getCustomer(tenant), meterd.NotFound);
});
