'use strict';
// Smoke test of the installed npm tarballs through the CommonJS entry point: records usage against a running
// agent ($METERD_TARGET) and reads it back from the report. Run by tests/packages/run.sh without cargo.
const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const path = require('node:path');
const meterd = require('meterd');

async function main() {
  const pkg = require('meterd/package.json');
  assert.equal(pkg.version, process.env.METERD_VERSION);
  // The addon must come from the prebuilt platform package, not from a build on this machine.
  const addons = Object.keys(require.cache).filter((f) => f.endsWith('.node'));
  const platformPkg = `@meterd/meterd-${process.platform}-${process.arch}`;
  assert.ok(
    addons.length === 1 && addons[0].includes(`${path.sep}node_modules${path.sep}${platformPkg.replace('/', path.sep)}`),
    `addon loaded from ${addons.join(', ')}`,
  );
  const tenant = `smoke-cjs-${randomUUID().slice(0, 12)}`;
  const client = new meterd.Client(process.env.METERD_TARGET);
  try {
    const first = await client.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: '2.5', idempotencyKey: tenant });
    const again = await client.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: '2.5', idempotencyKey: tenant });
    assert.ok(again.replayed && !first.replayed);
    await client.recordUsage({ customer: tenant, dimension: 'api_calls', quantity: 1n });
    const rows = (await client.report()).rows.filter((r) => r.customer === `tenant:${tenant}`);
    const recorded = rows.map((r) => r.recorded);
    assert.deepEqual(recorded, ['3.5'], `report rows for ${tenant}: ${JSON.stringify(rows)}`);
    console.log(`node (require): meterd ${pkg.version} from ${path.basename(addons[0])}: recorded ${recorded[0]} for ${tenant}, read back from the report`);
  } finally {
    client.close();
  }
}
main().catch((e) => {
  console.error(e);
  process.exit(1);
});
