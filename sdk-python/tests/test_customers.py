"""The customer registry and subscription lifecycle (meterd.v1.Customers) against a real meterd agent."""

from __future__ import annotations

import asyncio
import json

import pytest

import meterd
from conftest import Agent

ACCOUNT = "111122223333"
LICENSE = "arn:aws:license-manager::111122223333:license:l-0123456789abcdef"
AGREEMENT = "agmt-1111111111111111111111111"
EVENT_ID = "2e72b7e1-0000-4f77-9e57-5a8bd2f7e1e5"


def license_deprovisioned(arn: str = LICENSE) -> str:
    """An EventBridge `aws.agreement-marketplace` event as AWS delivers it."""
    return json.dumps(
        {
            "version": "0",
            "id": EVENT_ID,
            "detail-type": "License Deprovisioned - Manufacturer",
            "source": "aws.agreement-marketplace",
            "account": "999988887777",
            "time": "2026-11-27T12:00:00Z",
            "region": "us-east-1",
            "resources": [],
            "detail": {
                "requestId": "e3b0c442",
                "agreement": {"id": AGREEMENT},
                "license": {"arn": arn},
                "product": {"id": "prod-abcdefgh12345", "code": "abc123xyz"},
                "acceptor": {"accountId": ACCOUNT},
                "proposer": {"accountId": "999988887777"},
                "offer": {"id": "offer-1111111111111"},
            },
        }
    )


def test_put_get_list_remove_round_trip(own_agent: Agent, tenant: str) -> None:
    with meterd.Client(own_agent.target) as c:
        c.record_usage(customer=tenant, dimension="api_calls", quantity=2)  # held under the tenant id
        aws = meterd.AwsCustomer(ACCOUNT, LICENSE)
        put = c.put_customer(tenant, aws, agreement_id=AGREEMENT)
        assert isinstance(put, meterd.CustomerInfo)
        assert (put.tenant_id, put.product, put.status, put.buckets_moved) == (tenant, "demo", "active", 1)
        assert put.customer == aws and put.agreement_id == AGREEMENT and put.not_subscribed_at is None

        got = c.get_customer(tenant)
        assert got.customer == aws and got.buckets_moved == 0 and got.agreement_id == AGREEMENT
        assert [i.tenant_id for i in c.list_customers()] == [tenant]

        assert c.remove_customer(tenant) is True
        assert c.remove_customer(tenant) is False
        assert c.list_customers() == []
        with pytest.raises(meterd.NotFound) as e:
            c.get_customer(tenant)
        assert e.value.code == "NOT_FOUND" and e.value.grpc_code == 5 and e.value.field == "tenant_id"
        with pytest.raises(TypeError, match="AwsCustomer or meterd.LegacyCustomer"):
            c.put_customer(tenant, "another-tenant")  # type: ignore[arg-type]


def test_license_deprovisioned_event_ends_metering(own_agent: Agent, tenant: str) -> None:
    with meterd.Client(own_agent.target) as c:
        c.put_customer(tenant, meterd.AwsCustomer(ACCOUNT, LICENSE), product="demo", agreement_id=AGREEMENT)
        c.record_usage(customer=tenant, dimension="api_calls", quantity=3)

        # meterd confirms end events with AWS (DescribeAgreement) before applying them.
        own_agent.end_agreement(AGREEMENT)
        outcome = c.apply_event(license_deprovisioned())
        assert isinstance(outcome, meterd.EventOutcome)
        assert outcome.applied and outcome.status == "deprovisioning", outcome
        assert outcome.records_sealed >= 1 and "License Deprovisioned" in outcome.summary
        assert not c.apply_event(license_deprovisioned()).applied, "a duplicate changes nothing"

        info = c.get_customer(tenant)
        assert info.status == "deprovisioning"
        # Not necessarily the last entry: the final hour's submission may already have added AWS's answer.
        entry = next(h for h in info.history if h.event_id == EVENT_ID and h.applied)
        assert isinstance(entry, meterd.StatusChange)
        assert entry.status == "deprovisioning" and entry.at.tzinfo is not None

        with pytest.raises(meterd.CustomerNotActive) as e:
            c.record_usage(customer=tenant, dimension="api_calls", quantity=1)
        assert isinstance(e.value, meterd.UsageRefused) and e.value.code == "CUSTOMER_NOT_ACTIVE"
        with pytest.raises(meterd.CustomerNotActive):
            c.record_usage(customer=meterd.AwsCustomer(ACCOUNT, LICENSE), dimension="api_calls", quantity=1)

        with pytest.raises(meterd.InvalidUsage):
            c.apply_event("{}")


def test_resolve_customer_with_a_bogus_token(client: meterd.Client, tenant: str) -> None:
    with pytest.raises(meterd.InvalidUsage) as e:
        client.resolve_customer("not-a-real-token", tenant)
    assert e.value.grpc_code == 3
    with pytest.raises(meterd.NotFound):
        client.get_customer(tenant)


def test_async_customer_calls(own_agent: Agent, tenant: str) -> None:
    async def main() -> None:
        async with meterd.AsyncClient(own_agent.target) as c:
            legacy = meterd.LegacyCustomer("X01EXAMPLEX")
            with pytest.raises(meterd.InvalidUsage):  # product demo is a license product
                await c.put_customer(tenant, legacy)
            aws = meterd.AwsCustomer(ACCOUNT, LICENSE)
            info = await c.put_customer(tenant, aws, agreement_id=AGREEMENT)
            assert info.customer == aws
            got, listed = await asyncio.gather(c.get_customer(tenant), c.list_customers())
            assert got.status == "active" and [i.tenant_id for i in listed] == [tenant]
            # An end event is applied only once AWS confirms the agreement ended.
            own_agent.end_agreement(AGREEMENT)
            outcome = await c.apply_event(license_deprovisioned())
            assert outcome.applied and outcome.status == "deprovisioning"
            with pytest.raises(meterd.CustomerNotActive):
                await c.record_usage(customer=tenant, dimension="api_calls", quantity=1)
            with pytest.raises(meterd.InvalidUsage):
                await c.resolve_customer("not-a-real-token", "other-tenant")
            assert await c.remove_customer(tenant) is True
            with pytest.raises(meterd.NotFound):
                await c.get_customer(tenant)

    asyncio.run(main())
