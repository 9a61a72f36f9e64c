"""The Python SDK against a real meterd agent: happy path, every error class, retries across an agent restart
without double counting, idempotent replays, threads, asyncio and fork()."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

import meterd
from conftest import DEMO_ACCOUNT, DEMO_LICENSE, Agent, recorded_for


def test_happy_path_quantities_customers_and_report(client: meterd.Client, tenant: str) -> None:
    r1 = client.record_usage(customer=tenant, dimension="api_calls", quantity=3)
    r2 = client.record_usage(customer=tenant, dimension="api_calls", quantity="0.25", tags={"team": "a"})
    r3 = client.record_usage(customer=tenant, dimension="api_calls", quantity=Decimal("1.000001"))
    r4 = client.record_usage(customer=tenant, dimension="api_calls", quantity=Decimal("1E+1"))  # positional: "10"
    assert isinstance(r1, meterd.Receipt)
    assert len({r.idempotency_key for r in (r1, r2, r3, r4)}) == 4, "one generated key per logical event"
    assert str(uuid.UUID(r1.idempotency_key)) == r1.idempotency_key
    assert not r1.replayed and r1.product == "demo"
    now = datetime.now(timezone.utc)
    assert r1.usage_hour.tzinfo is not None and r1.usage_hour <= now
    assert abs(r1.event_time - now) < timedelta(minutes=1)
    assert recorded_for(client, tenant) == Decimal("14.250001")

    aws = meterd.AwsCustomer(DEMO_ACCOUNT, DEMO_LICENSE)
    same = meterd.AwsCustomer(DEMO_ACCOUNT, DEMO_LICENSE)
    assert aws == same and hash(aws) == hash(same) and aws.account_id == DEMO_ACCOUNT
    assert client.record_usage(customer=aws, dimension="storage_gb_hours", quantity=2, product="demo").product == "demo"
    report = client.report()
    assert report.totals.reconciled
    assert any(r.customer.startswith(f"aws:{DEMO_ACCOUNT}") and r.dimension == "storage_gb_hours" for r in report.rows)


def test_explicit_timestamp_in_any_zone(client: meterd.Client, tenant: str) -> None:
    when = datetime.now(timezone(timedelta(hours=-7))) - timedelta(minutes=3)
    r = client.record_usage(customer=tenant, dimension="api_calls", quantity=1, timestamp=when)
    assert abs(r.event_time - when) < timedelta(milliseconds=1)
    assert r.usage_hour == when.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def test_unix_socket_target(agent: Agent, tenant: str) -> None:
    with meterd.Client(f"unix:{agent.unix_socket}") as c:
        c.record_usage(customer=tenant, dimension="api_calls", quantity=2)
        assert recorded_for(c, tenant) == 2


def test_status_and_flush(client: meterd.Client) -> None:
    s = client.status()
    assert s.version and s.events_stored >= 0
    assert [p.name for p in s.products] == ["demo"]
    assert s.products[0].dimensions == ["api_calls", "storage_gb_hours"]
    # A standalone agent: no fleet part, nothing forwarded, nothing waited for.
    assert s.fleet is None
    f = client.flush()
    assert isinstance(f, meterd.FlushResult) and f.records_sealed >= 0
    assert f.events_forwarded == 0 and f.waiting_for == []
    assert client.report().totals.conflicts == 0


def test_invalid_usage_names_the_field_and_stores_nothing(client: meterd.Client, tenant: str) -> None:
    with pytest.raises(meterd.InvalidUsage) as e:
        client.record_usage(customer=tenant, dimension="nope", quantity=1)
    assert e.value.field == "event.dimension" and e.value.code == "INVALID_USAGE" and e.value.grpc_code == 3
    assert isinstance(e.value, ValueError) and isinstance(e.value, meterd.MeterdError)
    with pytest.raises(meterd.InvalidUsage, match=r"^event\.quantity: "):
        client.record_usage(customer=tenant, dimension="api_calls", quantity="1.1234567")
    with pytest.raises(meterd.InvalidUsage) as e:
        client.record_usage(customer=tenant, dimension="api_calls", quantity=-1)
    assert e.value.field == "event.quantity"
    with pytest.raises(meterd.InvalidUsage) as e:
        client.record_usage(customer=tenant, dimension="api_calls", quantity=1, tags={"": "x"})
    assert e.value.field.startswith("event.tags")
    future = datetime.now(timezone.utc) + timedelta(hours=2)
    with pytest.raises(meterd.InvalidUsage) as e:
        client.record_usage(customer=tenant, dimension="api_calls", quantity=1, timestamp=future)
    assert e.value.field == "event.timestamp"
    assert recorded_for(client, tenant) == 0


def test_client_side_conversions_are_exact_or_refused(client: meterd.Client, tenant: str) -> None:
    with pytest.raises(TypeError, match="not float"):
        client.record_usage(customer=tenant, dimension="api_calls", quantity=0.1)
    with pytest.raises(TypeError, match="not bool"):
        client.record_usage(customer=tenant, dimension="api_calls", quantity=True)
    with pytest.raises(TypeError, match="customer must be"):
        client.record_usage(customer=42, dimension="api_calls", quantity=1)  # type: ignore[arg-type]
    with pytest.raises(meterd.InvalidUsage, match="naive datetime") as e:
        client.record_usage(customer=tenant, dimension="api_calls", quantity=1, timestamp=datetime.now())
    assert e.value.field == "timestamp"
    with pytest.raises(TypeError, match="timezone-aware"):
        client.record_usage(customer=tenant, dimension="api_calls", quantity=1, timestamp=1700000000)  # type: ignore[arg-type]
    with pytest.raises(meterd.InvalidUsage):
        client.record_usage(customer=tenant, dimension="api_calls", quantity=Decimal("NaN"))
    with pytest.raises(meterd.InvalidTarget):
        meterd.Client("no-port-here")
    with pytest.raises(ValueError):
        meterd.Client("127.0.0.1:1", timeout=0)
    assert recorded_for(client, tenant) == 0


def test_idempotent_replay_returns_the_first_receipt(client: meterd.Client, tenant: str) -> None:
    key = f"req-{uuid.uuid4()}"
    first = client.record_usage(customer=tenant, dimension="api_calls", quantity="2.5", idempotency_key=key)
    again = client.record_usage(customer=tenant, dimension="api_calls", quantity="2.5", idempotency_key=key)
    assert (first.replayed, again.replayed) == (False, True)
    assert again.idempotency_key == key and again.usage_hour == first.usage_hour
    assert again.recorded_at == first.recorded_at
    assert recorded_for(client, tenant) == Decimal("2.5")


def test_conflict_same_key_different_content(client: meterd.Client, tenant: str) -> None:
    key = f"req-{uuid.uuid4()}"
    client.record_usage(customer=tenant, dimension="api_calls", quantity=1, idempotency_key=key)
    with pytest.raises(meterd.Conflict) as e:
        client.record_usage(customer=tenant, dimension="api_calls", quantity=2, idempotency_key=key)
    assert e.value.code == "CONFLICT" and e.value.field == "event.idempotency_key"
    assert recorded_for(client, tenant) == 1


def test_late_usage_rejected_by_policy(client: meterd.Client, tenant: str) -> None:
    client.flush()  # seals every ended hour now
    hour_ago = datetime.now(timezone.utc) - timedelta(hours=2)
    with pytest.raises(meterd.LateUsageRejected) as e:
        client.record_usage(customer=tenant, dimension="api_calls", quantity=1, timestamp=hour_ago)
    assert isinstance(e.value, meterd.UsageRefused)
    assert e.value.code == "LATE_USAGE_REJECTED" and e.value.field == "event.timestamp" and e.value.grpc_code == 9


def test_batch_results_in_order_with_per_event_errors(client: meterd.Client, tenant: str) -> None:
    key = f"b-{uuid.uuid4()}"
    results = client.record_usage_batch(
        [
            {"customer": tenant, "dimension": "api_calls", "quantity": 1, "idempotency_key": key},
            meterd.Usage(customer=tenant, dimension="bad", quantity=1),
            {"customer": tenant, "dimension": "api_calls", "quantity": "0.5", "tags": {"k": "v"}},
            {"customer": tenant, "dimension": "api_calls", "quantity": 9, "idempotency_key": key},
        ]
    )
    assert isinstance(results[0], meterd.Receipt) and results[0].idempotency_key == key
    assert isinstance(results[1], meterd.InvalidUsage) and results[1].field == "events[1].dimension"
    assert isinstance(results[2], meterd.Receipt)
    assert isinstance(results[3], meterd.Conflict)
    assert recorded_for(client, tenant) == Decimal("1.5")
    again = client.record_usage_batch(
        [{"customer": tenant, "dimension": "api_calls", "quantity": 1, "idempotency_key": key}]
    )
    assert again[0].replayed
    with pytest.raises(meterd.InvalidUsage):
        client.record_usage_batch([])
    with pytest.raises(TypeError, match="unknown key"):
        client.record_usage_batch([{"customer": tenant, "dimension": "api_calls", "quantity": 1, "qty": 2}])
    with pytest.raises(TypeError, match="not float"):
        client.record_usage_batch([{"customer": tenant, "dimension": "api_calls", "quantity": 1.0}])


def test_large_batch_is_split_and_joined_in_order(agent: Agent, tenant: str) -> None:
    with meterd.Client(agent.target, max_batch_events=7) as c:
        usages = [meterd.Usage(customer=tenant, dimension="api_calls", quantity=i) for i in range(1, 51)]
        results = c.record_usage_batch(usages)
        assert len(results) == 50 and all(isinstance(r, meterd.Receipt) for r in results)
        assert recorded_for(c, tenant) == sum(range(1, 51))


def test_agent_unavailable_after_retries() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    c = meterd.Client(f"127.0.0.1:{port}", max_attempts=3, timeout=5)
    started = time.monotonic()
    with pytest.raises(meterd.AgentUnavailable) as e:
        c.record_usage(customer="x", dimension="api_calls", quantity=1)
    assert e.value.retryable and e.value.code == "AGENT_UNAVAILABLE"
    assert time.monotonic() - started < 3
    with pytest.raises(meterd.AgentUnavailable):
        c.status()
    assert pickle.loads(pickle.dumps(e.value)).message == e.value.message


def test_timeout_releases_the_gil_and_is_retryable(own_agent: Agent) -> None:
    c = meterd.Client(own_agent.target, timeout=1.0)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    c.record_usage(customer=tenant, dimension="api_calls", quantity=1)  # connected
    own_agent.signal(signal.SIGSTOP)
    ticks = 0
    done = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    spinner = threading.Thread(target=spin)
    spinner.start()
    key = str(uuid.uuid4())
    try:
        with pytest.raises(meterd.Timeout) as e:
            c.record_usage(customer=tenant, dimension="api_calls", quantity=5, idempotency_key=key)
        assert e.value.retryable and e.value.code == "TIMEOUT"
    finally:
        done.set()
        spinner.join()
        own_agent.signal(signal.SIGCONT)
    assert ticks > 100, "other Python threads ran while the call waited"
    # The caller retries the same logical event with the same key: counted once, whatever the first attempt did.
    r = c.record_usage(customer=tenant, dimension="api_calls", quantity=5, idempotency_key=key)
    assert r.idempotency_key == key
    assert recorded_for(c, tenant) == 6


def test_retry_across_agent_restart_mid_call_counts_once(own_agent: Agent) -> None:
    c = meterd.Client(own_agent.target, timeout=20, max_attempts=50)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    c.record_usage(customer=tenant, dimension="api_calls", quantity=1)
    own_agent.signal(signal.SIGSTOP)  # the next request reaches the agent, which never answers
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(c.record_usage, customer=tenant, dimension="api_calls", quantity=7)
        time.sleep(0.3)
        assert not pending.done()
        own_agent.kill()  # the call's connection dies mid-call
        time.sleep(0.5)
        own_agent.start()  # same port, same data dir
        receipt = pending.result(timeout=30)
    assert isinstance(receipt, meterd.Receipt)
    assert recorded_for(c, tenant) == 8
    # The key the client generated is durable across the restart: a replay is recognised, not counted.
    replay = c.record_usage(customer=tenant, dimension="api_calls", quantity=7, idempotency_key=receipt.idempotency_key)
    assert replay.replayed
    assert recorded_for(c, tenant) == 8


class DropOneReply:
    """A TCP proxy in front of the agent that, once armed, lets a request through but swallows the reply and
    drops the connection: the event is stored, the caller never hears it. The retry must not count it again."""

    def __init__(self, upstream_port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.upstream_port = upstream_port
        self.armed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            down, _ = self.listener.accept()
            up = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(down, up, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, down, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        try:
            while data := src.recv(65536):
                if replies and self.armed.is_set():
                    self.armed.clear()
                    time.sleep(0.3)  # the agent has finished storing and answering by now
                    for s in (src, dst):
                        s.shutdown(socket.SHUT_RDWR)
                        s.close()
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass


def test_lost_reply_is_retried_with_the_same_key_and_counted_once(agent: Agent, tenant: str) -> None:
    proxy = DropOneReply(agent.port)
    with meterd.Client(f"127.0.0.1:{proxy.port}") as c:
        c.status()  # the connection is up and idle
        proxy.armed.set()
        receipt = c.record_usage(customer=tenant, dimension="api_calls", quantity=4)
        assert receipt.replayed, "the first attempt was stored; the retry found it under the same key"
        assert not proxy.armed.is_set()
        assert recorded_for(c, tenant) == 4


def test_threads_share_one_client(client: meterd.Client, tenant: str) -> None:
    def work(i: int) -> meterd.Receipt:
        return client.record_usage(customer=tenant, dimension="api_calls", quantity=1, tags={"worker": str(i % 4)})

    with ThreadPoolExecutor(16) as pool:
        receipts = list(pool.map(work, range(320)))
    assert len({r.idempotency_key for r in receipts}) == 320
    assert recorded_for(client, tenant) == 320


def test_async_client_concurrent_calls(agent: Agent, tenant: str) -> None:
    async def main() -> None:
        async with meterd.AsyncClient(agent.target) as c:
            receipts = await asyncio.gather(
                *[c.record_usage(customer=tenant, dimension="api_calls", quantity="0.5") for _ in range(200)]
            )
            assert len({r.idempotency_key for r in receipts}) == 200
            batch = await c.record_usage_batch(
                [{"customer": tenant, "dimension": "api_calls", "quantity": 1} for _ in range(100)]
            )
            assert all(isinstance(r, meterd.Receipt) for r in batch)
            with pytest.raises(meterd.InvalidUsage):
                await c.record_usage(customer=tenant, dimension="nope", quantity=1)
            with pytest.raises(TypeError):
                await c.record_usage(customer=tenant, dimension="api_calls", quantity=1.5)
            status, report = await asyncio.gather(c.status(), c.report())
            assert status.events_stored >= 300 and report.totals.reconciled
            await c.flush()
            rows = [r for r in (await c.report()).rows if r.customer == f"tenant:{tenant}"]
            assert sum(Decimal(r.recorded) for r in rows) == 200

    asyncio.run(main())


def test_async_timeout_and_cancellation(own_agent: Agent) -> None:
    async def main() -> None:
        c = meterd.AsyncClient(own_agent.target, timeout=0.5)
        await c.status()
        own_agent.signal(signal.SIGSTOP)
        try:
            with pytest.raises(meterd.Timeout):
                await c.record_usage(customer="x", dimension="api_calls", quantity=1)
            task = asyncio.ensure_future(c.record_usage(customer="x", dimension="api_calls", quantity=1))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.6)  # the abandoned call completes in the background without harm
        finally:
            own_agent.signal(signal.SIGCONT)
        await c.close()

    asyncio.run(main())


def _child(fn) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            fn()
            code = 0
        except BaseException as e:  # noqa: BLE001
            os.write(2, f"child failed: {e!r}\n".encode())
        finally:
            os._exit(code)
    return pid


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads (the runtime's) warns on 3.12+
def test_fork_safety_like_a_prefork_server(agent: Agent, tenant: str) -> None:
    client = meterd.Client(agent.target)
    aclient = meterd.AsyncClient(agent.target)
    client.record_usage(customer=tenant, dimension="api_calls", quantity=1)  # runtime and connection in the parent

    def worker() -> None:
        for _ in range(5):
            client.record_usage(customer=tenant, dimension="api_calls", quantity=1)

        async def more() -> None:
            await aclient.record_usage(customer=tenant, dimension="api_calls", quantity=1)

        asyncio.run(more())

    pids = [_child(worker) for _ in range(3)]
    client.record_usage(customer=tenant, dimension="api_calls", quantity=1)  # the parent keeps working meanwhile
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert recorded_for(client, tenant) == 1 + 3 * 6 + 1


def test_a_deployment_product_records_usage_without_a_customer(tmp_path) -> None:
    """identity = "deployment" (AMI and container products): customer=None sends no customer; naming one is refused."""
    products = '[products.ami]\nidentity = "deployment"\nproduct_code = "ami-prod"\ndimensions = ["vcpu_hours"]\n'
    agent = Agent(tmp_path, products=products)
    try:
        with meterd.Client(agent.target) as client:
            r = client.record_usage(customer=None, dimension="vcpu_hours", quantity=2)
            assert r.product == "ami"
            results = client.record_usage_batch(
                [
                    {"customer": None, "dimension": "vcpu_hours", "quantity": "0.5"},
                    meterd.Usage(customer=None, dimension="vcpu_hours", quantity=1),
                    {"customer": "tenant-1", "dimension": "vcpu_hours", "quantity": 1},
                ]
            )
            assert isinstance(results[0], meterd.Receipt) and isinstance(results[1], meterd.Receipt)
            assert isinstance(results[2], meterd.InvalidUsage) and results[2].field.startswith("events[2].customer")
            with pytest.raises(meterd.InvalidUsage, match="deployment"):
                client.record_usage(customer="tenant-1", dimension="vcpu_hours", quantity=1)
            rows = [r for r in client.report().rows if r.dimension == "vcpu_hours"]
            assert sum((Decimal(r.recorded) for r in rows), Decimal(0)) == Decimal("3.5")
    finally:
        agent.stop()
