'use strict';
// An Express app that records one `api_calls` unit per request through the meterd Node SDK.
const express = require('express');
const meterd = require('meterd');

const meter = new meterd.Client(process.env.METERD_TARGET || '127.0.0.1:7171', { timeoutMs: 2_000 });
const app = express();

app.get('/work', async (req, res) => {
  const tenant = req.get('x-tenant') || 'anonymous';
  // ... the billable work happens here ...
  try {
    // One line per billable unit. The request id as the key makes a client retry of this request count once.
    const receipt = await meter.recordUsage({
      customer: tenant,
      dimension: 'api_calls',
      quantity: 1,
      idempotencyKey: req.get('x-request-id'),
    });
    res.json({ tenant, usageKey: receipt.idempotencyKey, hour: receipt.usageHour });
  } catch (e) {
    if (e instanceof meterd.InvalidUsage) return res.status(500).json({ error: 'metering bug', field: e.field, detail: e.message });
    if (e instanceof meterd.MeterdError) return res.status(503).json({ error: 'metering unavailable', code: e.code });
    throw e;
  }
});

app.get('/usage', async (_req, res) => {
  const { totals } = await meter.report();
  res.json({ recorded: totals.recorded, accepted: totals.accepted, open: totals.open, reconciled: totals.reconciled });
});

const port = Number(process.env.PORT || 3000);
app.listen(port, '127.0.0.1', () => console.log(`listening on http://127.0.0.1:${port} (meterd at ${meter.target})`));
