"""The streamed report (Admin.ReportStream) through the Python SDK against a real agent: groups by default, rows
on request, the totals as the trailer, filters, and a bad filter refused with its field."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

import meterd


def test_report_stream_summary_rows_and_trailer(client: meterd.Client, tenant: str) -> None:
    for _ in range(3):
        client.record_usage(customer=tenant, dimension="api_calls", quantity="1.5")
    client.record_usage(customer=tenant, dimension="storage_gb_hours", quantity=2)
    who = f"tenant:{tenant}"

    stream = client.report_stream(customer=who)
    assert stream.trailer is None, "the totals come last"
    groups = list(stream)
    assert groups and all(isinstance(g, meterd.ReportGroup) for g in groups)
    recorded = {
        d: sum(Decimal(g.recorded) for g in groups if g.dimension == d) for d in ("api_calls", "storage_gb_hours")
    }
    assert recorded == {"api_calls": Decimal("4.5"), "storage_gb_hours": Decimal(2)}
    assert all(g.customers == 1 and g.product == "demo" for g in groups)
    t = stream.trailer
    assert isinstance(t, meterd.ReportTrailer)
    assert t.totals.reconciled and t.groups_sent == len(groups)
    assert Decimal(t.selected.recorded) == Decimal("6.5")
    assert Decimal(t.totals.recorded) >= Decimal("6.5"), "the totals are the whole ledger's"

    stream = client.report_stream(rows=True, customer=who, dimension="api_calls")
    rows = list(stream)
    assert rows and all(isinstance(r, meterd.ReportRow) and r.customer == who for r in rows)
    assert sum(Decimal(r.recorded) for r in rows) == Decimal("4.5")
    assert stream.trailer.rows_sent == len(rows)
    assert list(stream) == [], "an ended stream stays ended"


def test_report_stream_refuses_a_bad_filter_naming_it(client: meterd.Client) -> None:
    with pytest.raises(meterd.InvalidUsage) as e:
        client.report_stream(state="pending")
    assert e.value.field == "state"
    assert "in_flight" in str(e.value)


def test_async_report_stream(agent, tenant: str) -> None:
    async def main() -> None:
        async with meterd.AsyncClient(agent.target) as client:
            await client.record_usage(customer=tenant, dimension="api_calls", quantity="2.5")
            stream = await client.report_stream(rows=True, customer=f"tenant:{tenant}")
            rows = [r async for r in stream]
            assert [(r.dimension, r.recorded) for r in rows] == [("api_calls", "2.5")]
            assert stream.trailer.rows_sent == 1 and stream.trailer.totals.reconciled
            groups = [g async for g in await client.report_stream(customer=f"tenant:{tenant}")]
            assert [(g.dimension, g.customers) for g in groups] == [("api_calls", 1)]
            with pytest.raises(meterd.InvalidUsage):
                await client.report_stream(state="nope")

    asyncio.run(main())
