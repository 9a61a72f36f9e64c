'use strict';
// An Express app that records one `api_calls` unit per request through the meterd Node SDK.
const express = require('express');
const meterd = require('meterd');

const meter = new meterd.Client(process.env.METERD_TARGET || '127.0.0.1:7171', { timeoutMs: 2_000 });
const app = express();

// Express 4 does not catch a rejected promise from an async handler: an unhandled rejection ends the whole
// process. Every async route goes through `route`, which hands any failure to the error handler below.
const route = (handler) => (req, res, next) => handler(req, res).catch(next);

app.get(
  '/work',
  route(async (req, res) => {
    const tenant = req.get('x-tenant') || 'anonymous';
    // ... the billable work happens here ...
    // One line per billable unit. The request id as the key makes a client retry of this request count once.
    const receipt = await meter.recordUsage({
      customer: tenant,
      dimension: 'api_calls',
      quantity: 1,
      idempotencyKey: req.get('x-request-id'),
    });
    res.json({ tenant, usageKey: receipt.idempotencyKey, hour: receipt.usageHour });
  }),
);

app.get(
  '/usage',
  route(async (_req, res) => {
    const { totals } = await meter.report();
    res.json({ recorded: totals.recorded, accepted: totals.accepted, open: totals.open, reconciled: totals.reconciled });
  }),
);

// Express recognises an error handler by its four parameters, so `_next` stays although it is unused.
app.use((err, _req, res, _next) => {
  // The event breaks a rule: a bug in this app, say so loudly.
  if (err instanceof meterd.InvalidUsage) return res.status(500).json({ error: 'metering bug', field: err.field, detail: err.message });
  // Agent down (or refusing) for longer than the retry budget: fail the request rather than give the work away.
  if (err instanceof meterd.MeterdError) return res.status(503).json({ error: 'metering unavailable', code: err.code });
  console.error(err);
  res.status(500).json({ error: 'internal error' });
});

const port = Number(process.env.PORT || 3000);
const server = app.listen(port, '127.0.0.1', () => {
  // The bound port, not the requested one: PORT=0 (the tests) picks a free port.
  console.log(`listening on http://127.0.0.1:${server.address().port} (meterd at ${meter.target})`);
});
