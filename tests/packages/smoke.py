"""Smoke test of an installed `meterd` wheel: records usage through it against a running agent ($METERD_TARGET)
and reads it back from the agent's report. Run by tests/packages/run.sh in a fresh virtualenv without cargo."""

import importlib.metadata
import os
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import meterd

target = os.environ["METERD_TARGET"]
version = os.environ["METERD_VERSION"]

native = Path(meterd._native.__file__).resolve()
assert native.is_relative_to(Path(sys.prefix).resolve()), f"meterd._native loaded from {native}, not the venv"
assert (native.parent / "py.typed").exists(), "py.typed missing from the wheel"
assert meterd.__version__ == version, (meterd.__version__, version)
assert importlib.metadata.version("meterd") == version, importlib.metadata.version("meterd")

tenant = f"smoke-py-{uuid.uuid4().hex[:12]}"
with meterd.Client(target) as client:
    first = client.record_usage(customer=tenant, dimension="api_calls", quantity="2.5", idempotency_key=tenant)
    again = client.record_usage(customer=tenant, dimension="api_calls", quantity="2.5", idempotency_key=tenant)
    assert again.replayed and not first.replayed, (first, again)
    client.record_usage(customer=tenant, dimension="api_calls", quantity=Decimal("1"))
    rows = [r for r in client.report().rows if r.customer == f"tenant:{tenant}"]
    recorded = sum((Decimal(r.recorded) for r in rows), Decimal(0))
assert recorded == Decimal("3.5"), f"report shows {recorded} recorded for {tenant}: {rows}"
print(f"python: meterd {meterd.__version__}: recorded {recorded} for {tenant}, read back from the report")
