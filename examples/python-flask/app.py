"""A Flask app that records one `api_calls` unit per request through the meterd Python SDK.

    meterd run --simulate                      # the agent; note the tcp=127.0.0.1:PORT it prints
    METERD_TARGET=127.0.0.1:PORT flask --app app run --port 8000
    curl -H 'x-tenant: acme' localhost:8000/work

Under gunicorn (`gunicorn -w 4 -b 127.0.0.1:8000 app:app`) the client below is created once in the master
and inherited by every forked worker; the SDK notices the fork and opens the worker's own connection.
"""

from __future__ import annotations

import os

from flask import Flask, jsonify, request

import meterd

app = Flask(__name__)
meter = meterd.Client(os.environ.get("METERD_TARGET", "127.0.0.1:7171"), timeout=2.0)


@app.errorhandler(meterd.MeterdError)
def metering_failed(e: meterd.MeterdError):
    """Every route's metering failure, in one place (an unhandled one would be a bare 500)."""
    if isinstance(e, meterd.InvalidUsage):  # a bug in this app: say so loudly
        return jsonify(error="metering bug", field=e.field, detail=str(e)), 500
    # Agent down (or refusing) for longer than the retry budget: do not give the work away; the app keeps serving.
    return jsonify(error="metering unavailable", code=e.code), 503


@app.get("/work")
def work():
    tenant = request.headers.get("x-tenant", "anonymous")
    # ... the billable work happens here ...
    # One line per billable unit. Passing the request id as the key makes a client retry of this HTTP
    # request count once, too. A failure is answered by `metering_failed` above.
    receipt = meter.record_usage(
        customer=tenant,
        dimension="api_calls",
        quantity=1,
        idempotency_key=request.headers.get("x-request-id"),
    )
    return jsonify(tenant=tenant, usage_key=receipt.idempotency_key, hour=receipt.usage_hour.isoformat())


@app.get("/usage")
def usage():
    t = meter.report().totals
    return jsonify(recorded=t.recorded, accepted=t.accepted, open=t.open, reconciled=t.reconciled)
