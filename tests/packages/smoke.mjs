// Smoke test of the installed npm tarballs through the ESM entry point (named and default exports).
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import meterd, { Client, MeterdError, InvalidUsage } from 'meterd';

assert.equal(meterd.Client, Client);
const tenant = `smoke-esm-${randomUUID().slice(0, 12)}`;
const client = new Client(process.env.METERD_TARGET);
try {
  await client.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: '0.25' });
  await assert.rejects(client.recordUsage({ customer: tenant, dimension: 'no_such_dimension', quantity: 1 }), (e) => {
    assert.ok(e instanceof InvalidUsage && e instanceof MeterdError, String(e));
    return true;
  });
  const rows = (await client.report()).rows.filter((r) => r.customer === `tenant:${tenant}`);
  assert.deepEqual(rows.map((r) => r.recorded), ['0.25'], JSON.stringify(rows));
  console.log(`node (import): recorded 0.25 for ${tenant}, read back from the report`);
} finally {
  client.close();
}
