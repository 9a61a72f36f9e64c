"""Type stubs of the native extension (re-exported by ``meterd``)."""

import datetime
import decimal
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Literal, Optional, Union, final

from typing_extensions import Self, TypeAlias

from meterd.errors import MeterdError

__version__: str

#: A tenant id (``str``, mapped to the marketplace identity by the agent), or an explicit identity.
#: ``None``: no customer, for products with ``identity = "deployment"`` (AMI and container products).
CustomerLike: TypeAlias = Union[str, AwsCustomer, LegacyCustomer, None]
#: The identity a tenant id maps to (:meth:`Client.put_customer`).
IdentityLike: TypeAlias = Union[AwsCustomer, LegacyCustomer]
#: An exact quantity. ``float`` is refused with ``TypeError``.
QuantityLike: TypeAlias = Union[int, str, decimal.Decimal]
#: A batch item: a :class:`Usage`, or a dict with :meth:`Client.record_usage`'s keyword names.
UsageLike: TypeAlias = Union[Usage, Mapping[str, Any]]

@final
class AwsCustomer:
    """``CustomerAWSAccountId`` + ``LicenseArn`` (Concurrent Agreements; products with ``identity = "license"``)."""

    @property
    def account_id(self) -> str: ...
    @property
    def license_arn(self) -> str: ...
    def __init__(self, account_id: str, license_arn: str) -> None: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

@final
class LegacyCustomer:
    """``CustomerIdentifier`` of a legacy listing (products with ``identity = "legacy"``)."""

    @property
    def customer_identifier(self) -> str: ...
    @property
    def product_code(self) -> Optional[str]: ...
    def __init__(self, customer_identifier: str, product_code: Optional[str] = None) -> None: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

@final
class Usage:
    """One event for :meth:`Client.record_usage_batch`, converted and checked on construction."""

    def __init__(
        self,
        *,
        customer: CustomerLike,
        dimension: str,
        quantity: QuantityLike,
        timestamp: Optional[datetime.datetime] = None,
        tags: Optional[Mapping[str, str]] = None,
        idempotency_key: Optional[str] = None,
        product: Optional[str] = None,
    ) -> None: ...

@final
class Receipt:
    """What the agent stored for an event (on disk before the call returned)."""

    @property
    def idempotency_key(self) -> str: ...
    @property
    def replayed(self) -> bool:
        """True when the event was already stored under this key; it was counted once."""
    @property
    def product(self) -> str: ...
    @property
    def event_time(self) -> datetime.datetime: ...
    @property
    def usage_hour(self) -> datetime.datetime: ...
    @property
    def recorded_at(self) -> datetime.datetime: ...

@final
class ProductStatus:
    @property
    def name(self) -> str: ...
    @property
    def identity(self) -> Literal["license", "legacy"]: ...
    @property
    def dimensions(self) -> list[str]: ...

@final
class AccountStatus:
    @property
    def name(self) -> str: ...
    @property
    def last_successful_call(self) -> Optional[datetime.datetime]: ...
    @property
    def clock_skew_ms(self) -> Optional[int]: ...
    @property
    def calls_ok(self) -> int: ...
    @property
    def calls_throttled(self) -> int: ...
    @property
    def calls_failed(self) -> int: ...
    @property
    def records_accepted(self) -> int: ...
    @property
    def records_rejected(self) -> int: ...
    @property
    def records_expired(self) -> int: ...

@final
class AgentStatus:
    @property
    def version(self) -> str: ...
    @property
    def started_at(self) -> Optional[datetime.datetime]: ...
    @property
    def now(self) -> Optional[datetime.datetime]: ...
    @property
    def data_dir(self) -> str: ...
    @property
    def schema_version(self) -> int: ...
    @property
    def events_stored(self) -> int: ...
    @property
    def open_buckets(self) -> int: ...
    @property
    def store_size_bytes(self) -> int: ...
    @property
    def products(self) -> list[ProductStatus]: ...
    @property
    def pending_records(self) -> int: ...
    @property
    def oldest_pending_age_seconds(self) -> int: ...
    @property
    def most_urgent_deadline(self) -> Optional[datetime.datetime]: ...
    @property
    def sealed_through(self) -> Optional[datetime.datetime]: ...
    @property
    def accounts(self) -> list[AccountStatus]: ...
    @property
    def late_events(self) -> int: ...
    @property
    def records_at_risk(self) -> int:
        """Pending records held under a tenant id with no marketplace identity yet: lost at their deadline."""
    @property
    def customers_by_status(self) -> dict[str, int]:
        """Marketplace customers by lifecycle state ("active", "deprovisioning", "ended")."""
    @property
    def customers_not_subscribed(self) -> int:
        """Customers AWS last answered CustomerNotSubscribed for."""
    @property
    def records_lost(self) -> int:
        """Records AWS answered DuplicateRecord for on their first send (revenue lost)."""
    @property
    def units_lost(self) -> int:
        """Whole units of those records."""
    @property
    def disk_free_bytes(self) -> int:
        """Free bytes on the data dir's filesystem, as of the last ingest."""
    @property
    def disk_reserve_bytes(self) -> int:
        """Free space the agent keeps (storage.min_free)."""
    @property
    def disk_full(self) -> bool:
        """True while ingest is refused because free space is below the reserve."""
    @property
    def usage_drops(self) -> list[UsageDrop]:
        """Usage drops of the last ended hour."""
    @property
    def pending_in_flight(self) -> int:
        """Pending records marked InFlight (sent, answer not recorded yet)."""
    @property
    def pending_units(self) -> int:
        """Whole units of the pending records."""
    @property
    def units_at_risk(self) -> int:
        """Whole units of the records at risk."""
    @property
    def projected_drain_seconds(self) -> int:
        """Seconds to send every pending record at the submitters' current rates (0 when nothing is pending)."""
    @property
    def fleet(self) -> Optional[FleetStatus]:
        """Fleet mode only: the nodes sharing the ledger and the submitters (the queue figures are then the fleet's)."""

@final
class FleetStatus:
    """Fleet mode: the answering agent's spool, every node sharing the ledger, who submits for each account."""

    @property
    def node_id(self) -> str: ...
    @property
    def spool_events(self) -> int:
        """Events this agent acknowledged that are not yet in the shared ledger."""
    @property
    def spool_oldest_age_seconds(self) -> int: ...
    @property
    def ack(self) -> str:
        """Either "local" or "shared" (fleet.ack)."""
    @property
    def database_error(self) -> str:
        """Empty when the shared ledger answered; otherwise why not (the queue figures are then zero)."""
    @property
    def nodes(self) -> list[FleetNode]: ...
    @property
    def submitters(self) -> list[FleetSubmitter]: ...
    @property
    def conflicts(self) -> int:
        """Keys forwarded with other content than the event counted under them (recorded, never counted)."""

@final
class FleetNode:
    @property
    def node_id(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def last_heartbeat(self) -> Optional[datetime.datetime]: ...
    @property
    def live(self) -> bool:
        """Heartbeat within fleet.down_after: the seal waits for its forward."""
    @property
    def watermark(self) -> Optional[datetime.datetime]:
        """Everything the node acknowledged before this is in the shared ledger (None before its first forward)."""
    @property
    def forward_lag_seconds(self) -> int: ...
    @property
    def events_forwarded(self) -> int: ...
    @property
    def spool_events(self) -> Optional[int]:
        """Known for the answering agent only."""

@final
class FleetSubmitter:
    @property
    def account(self) -> str: ...
    @property
    def node_id(self) -> str:
        """The submitter lease holder: it seals and submits for the account."""
    @property
    def epoch(self) -> int: ...
    @property
    def lease_expires(self) -> Optional[datetime.datetime]: ...

@final
class UsageDrop:
    """An ended hour far below its own baseline (the same hour on previous days and weekdays)."""

    @property
    def hour(self) -> Optional[datetime.datetime]: ...
    @property
    def product(self) -> str: ...
    @property
    def dimension(self) -> str: ...
    @property
    def customer(self) -> str:
        """Empty for the product x dimension as a whole; otherwise one of its biggest customers."""
    @property
    def observed(self) -> str:
        """Usage recorded in the hour (exact decimal)."""
    @property
    def baseline(self) -> str:
        """The baseline it is compared with (exact decimal)."""

@final
class FlushResult:
    @property
    def records_sealed(self) -> int: ...
    @property
    def hours_carried_only(self) -> int: ...
    @property
    def sealed_through(self) -> Optional[datetime.datetime]: ...
    @property
    def events_forwarded(self) -> int:
        """Fleet mode: events forwarded from the agent's spool to the shared ledger by this flush."""
    @property
    def waiting_for(self) -> list[str]:
        """Fleet mode: live nodes whose forward the seal still waits for (empty when every ended hour is sealed)."""

@final
class ReportRow:
    """One hour x customer x dimension. Decimal amounts are exact decimal strings; whole units are ints."""

    @property
    def hour(self) -> Optional[datetime.datetime]: ...
    @property
    def product(self) -> str: ...
    @property
    def customer(self) -> str: ...
    @property
    def dimension(self) -> str: ...
    @property
    def state(self) -> Literal["open", "sealed", "in_flight", "accepted", "rejected", "expired", "carried"]: ...
    @property
    def recorded(self) -> str: ...
    @property
    def late(self) -> str: ...
    @property
    def carried_in(self) -> str: ...
    @property
    def carried_out(self) -> str: ...
    @property
    def sealed(self) -> int: ...
    @property
    def accepted(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def expired(self) -> int: ...
    @property
    def pending(self) -> int: ...
    @property
    def reason(self) -> str: ...
    @property
    def metering_record_id(self) -> str: ...
    @property
    def deadline(self) -> Optional[datetime.datetime]: ...

@final
class ReportTotals:
    """recorded = accepted + rejected + expired + pending + carried + open, exactly (decimal strings)."""

    @property
    def recorded(self) -> str: ...
    @property
    def late(self) -> str: ...
    @property
    def accepted(self) -> str: ...
    @property
    def rejected(self) -> str: ...
    @property
    def expired(self) -> str: ...
    @property
    def pending(self) -> str: ...
    @property
    def carried(self) -> str: ...
    @property
    def open(self) -> str: ...
    @property
    def rejected_by_reason(self) -> dict[str, int]: ...
    @property
    def expired_by_reason(self) -> dict[str, int]: ...
    @property
    def reconciled(self) -> bool: ...
    @property
    def compacted_records(self) -> int:
        """Terminal records older than storage.retention: gone from the rows, still counted in these totals."""
    @property
    def lost_records(self) -> int:
        """Records AWS answered DuplicateRecord for on their first send (revenue lost)."""
    @property
    def lost_units(self) -> int:
        """Whole units of those records."""
    @property
    def merged_units(self) -> int:
        """Units of held tenant records merged into their identity's next hour (their AWS key was taken)."""
    @property
    def conflicts(self) -> int:
        """Fleet mode: events whose key was already counted with other content (recorded, never counted)."""

@final
class Report:
    @property
    def rows(self) -> list[ReportRow]: ...
    @property
    def totals(self) -> ReportTotals: ...
    @property
    def usage_drops(self) -> list[UsageDrop]:
        """Usage drops of the last ended hour."""

@final
class ReportGroup:
    """The summary of one hour x product x dimension (decimal strings exact, whole units ints)."""

    @property
    def hour(self) -> Optional[datetime.datetime]: ...
    @property
    def product(self) -> str: ...
    @property
    def dimension(self) -> str: ...
    @property
    def customers(self) -> int:
        """Customers with usage in the group (0 in ``ReportTrailer.selected``)."""
    @property
    def rows(self) -> int: ...
    @property
    def recorded(self) -> str: ...
    @property
    def late(self) -> str: ...
    @property
    def open(self) -> str: ...
    @property
    def sealed(self) -> int: ...
    @property
    def accepted(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def expired(self) -> int: ...
    @property
    def pending(self) -> int: ...
    @property
    def states(self) -> dict[str, int]:
        """Rows by state."""

@final
class ReportTrailer:
    """The end of a report stream: the whole ledger's totals and the sum of what was streamed."""

    @property
    def totals(self) -> ReportTotals: ...
    @property
    def selected(self) -> ReportGroup: ...
    @property
    def rows_sent(self) -> int: ...
    @property
    def groups_sent(self) -> int: ...
    @property
    def consistent(self) -> bool:
        """False when a seal moved usage while rows streamed: read again."""
    @property
    def restarts(self) -> int: ...
    @property
    def usage_drops(self) -> list[UsageDrop]: ...

@final
class ReportStream:
    """Iterate for ``ReportGroup`` (summary) or ``ReportRow`` (``rows=True``); ``trailer`` is set at the end."""

    def __iter__(self) -> Self: ...
    def __next__(self) -> Union[ReportGroup, ReportRow]: ...
    @property
    def trailer(self) -> Optional[ReportTrailer]: ...

@final
class AsyncReportStream:
    """``async for`` over ``ReportGroup`` (summary) or ``ReportRow`` (``rows=True``); ``trailer`` is set at the end."""

    def __aiter__(self) -> Self: ...
    async def __anext__(self) -> Union[ReportGroup, ReportRow]: ...
    @property
    def trailer(self) -> Optional[ReportTrailer]: ...

@final
class StatusChange:
    """One lifecycle event in a customer's history."""

    @property
    def at(self) -> datetime.datetime: ...
    @property
    def status(self) -> Literal["active", "deprovisioning", "ended"]: ...
    @property
    def source(self) -> str: ...
    @property
    def event_id(self) -> Optional[str]: ...
    @property
    def applied(self) -> bool:
        """False when the event changed nothing (a duplicate, or older than the current status)."""

@final
class CustomerInfo:
    """A tenant's mapping to the marketplace identity AWS bills, and that identity's lifecycle."""

    @property
    def tenant_id(self) -> str: ...
    @property
    def product(self) -> str: ...
    @property
    def customer(self) -> Optional[IdentityLike]: ...
    @property
    def agreement_id(self) -> Optional[str]: ...
    @property
    def status(self) -> Literal["active", "deprovisioning", "ended"]: ...
    @property
    def history(self) -> list[StatusChange]: ...
    @property
    def not_subscribed_at(self) -> Optional[datetime.datetime]:
        """Last time AWS answered CustomerNotSubscribed for this customer's usage."""
    @property
    def buckets_moved(self) -> int:
        """Open hourly buckets moved from the tenant id to the identity by this call (put/resolve)."""

@final
class EventOutcome:
    """What :meth:`Client.apply_event` did."""

    @property
    def applied(self) -> bool:
        """False for duplicates, events older than the current status, and agreements meterd has never seen."""
    @property
    def status(self) -> str: ...
    @property
    def records_sealed(self) -> int: ...
    @property
    def summary(self) -> str: ...

@final
class Client:
    """A blocking client of one agent. Thread-safe; calls release the GIL while they wait; safe after fork()."""

    def __init__(
        self,
        target: str = "127.0.0.1:7171",
        *,
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
        max_attempts: int = 10,
        product: Optional[str] = None,
        max_batch_events: int = 10000,
    ) -> None: ...
    @property
    def target(self) -> str: ...
    def record_usage(
        self,
        *,
        customer: CustomerLike,
        dimension: str,
        quantity: QuantityLike,
        timestamp: Optional[datetime.datetime] = None,
        tags: Optional[Mapping[str, str]] = None,
        idempotency_key: Optional[str] = None,
        product: Optional[str] = None,
    ) -> Receipt: ...
    def record_usage_batch(self, events: Iterable[UsageLike]) -> list[Union[Receipt, MeterdError]]: ...
    def status(self) -> AgentStatus: ...
    def flush(self) -> FlushResult: ...
    def report(self) -> Report: ...
    def report_stream(
        self,
        *,
        rows: bool = False,
        since: Optional[datetime.datetime] = None,
        until: Optional[datetime.datetime] = None,
        customer: Optional[str] = None,
        dimension: Optional[str] = None,
        state: Optional[str] = None,
        product: Optional[str] = None,
    ) -> ReportStream: ...
    def put_customer(
        self,
        tenant_id: str,
        customer: IdentityLike,
        product: Optional[str] = None,
        agreement_id: Optional[str] = None,
    ) -> CustomerInfo: ...
    def get_customer(self, tenant_id: str) -> CustomerInfo: ...
    def list_customers(self) -> list[CustomerInfo]: ...
    def remove_customer(self, tenant_id: str) -> bool: ...
    def resolve_customer(
        self, registration_token: str, tenant_id: str, product: Optional[str] = None
    ) -> CustomerInfo: ...
    def apply_event(self, event_json: str) -> EventOutcome: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

@final
class AsyncClient:
    """An asyncio client of one agent; the I/O runs off the event loop. Safe after fork()."""

    def __init__(
        self,
        target: str = "127.0.0.1:7171",
        *,
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
        max_attempts: int = 10,
        product: Optional[str] = None,
        max_batch_events: int = 10000,
    ) -> None: ...
    @property
    def target(self) -> str: ...
    async def record_usage(
        self,
        *,
        customer: CustomerLike,
        dimension: str,
        quantity: QuantityLike,
        timestamp: Optional[datetime.datetime] = None,
        tags: Optional[Mapping[str, str]] = None,
        idempotency_key: Optional[str] = None,
        product: Optional[str] = None,
    ) -> Receipt: ...
    async def record_usage_batch(self, events: Iterable[UsageLike]) -> list[Union[Receipt, MeterdError]]: ...
    async def status(self) -> AgentStatus: ...
    async def flush(self) -> FlushResult: ...
    async def report(self) -> Report: ...
    async def report_stream(
        self,
        *,
        rows: bool = False,
        since: Optional[datetime.datetime] = None,
        until: Optional[datetime.datetime] = None,
        customer: Optional[str] = None,
        dimension: Optional[str] = None,
        state: Optional[str] = None,
        product: Optional[str] = None,
    ) -> AsyncReportStream: ...
    async def put_customer(
        self,
        tenant_id: str,
        customer: IdentityLike,
        product: Optional[str] = None,
        agreement_id: Optional[str] = None,
    ) -> CustomerInfo: ...
    async def get_customer(self, tenant_id: str) -> CustomerInfo: ...
    async def list_customers(self) -> list[CustomerInfo]: ...
    async def remove_customer(self, tenant_id: str) -> bool: ...
    async def resolve_customer(
        self, registration_token: str, tenant_id: str, product: Optional[str] = None
    ) -> CustomerInfo: ...
    async def apply_event(self, event_json: str) -> EventOutcome: ...
    async def close(self) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...
