"""meterd: record SaaS usage for AWS Marketplace through the local meterd agent.

>>> import meterd
>>> with meterd.Client("127.0.0.1:7171") as client:
...     receipt = client.record_usage(customer="tenant-42", dimension="api_calls", quantity=1)

See the README for the API reference, the error table and the conversion rules (quantities are exact: ``int``,
``str`` or ``decimal.Decimal``; a ``float`` raises ``TypeError``; timestamps must be timezone-aware).
"""

from meterd._native import (
    AccountStatus,
    AgentStatus,
    AsyncClient,
    AsyncReportStream,
    AwsCustomer,
    Client,
    CustomerInfo,
    EventOutcome,
    FlushResult,
    LegacyCustomer,
    ProductStatus,
    Receipt,
    Report,
    ReportGroup,
    ReportRow,
    ReportStream,
    ReportTotals,
    ReportTrailer,
    StatusChange,
    Usage,
    UsageDrop,
    __version__,
)
from meterd.errors import (
    AgentError,
    AgentUnavailable,
    Conflict,
    CustomerNotActive,
    InvalidTarget,
    InvalidUsage,
    LateUsageRejected,
    MeterdError,
    NotFound,
    Timeout,
    UsageRefused,
)

__all__ = [
    "AccountStatus",
    "AgentError",
    "AgentStatus",
    "AgentUnavailable",
    "AsyncClient",
    "AsyncReportStream",
    "AwsCustomer",
    "Client",
    "Conflict",
    "CustomerInfo",
    "CustomerNotActive",
    "EventOutcome",
    "FlushResult",
    "InvalidTarget",
    "InvalidUsage",
    "LateUsageRejected",
    "LegacyCustomer",
    "MeterdError",
    "NotFound",
    "ProductStatus",
    "Receipt",
    "Report",
    "ReportGroup",
    "ReportRow",
    "ReportStream",
    "ReportTotals",
    "ReportTrailer",
    "StatusChange",
    "Timeout",
    "Usage",
    "UsageDrop",
    "UsageRefused",
    "__version__",
]
