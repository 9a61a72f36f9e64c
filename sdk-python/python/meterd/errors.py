"""Exceptions raised by meterd clients.

Every error is a :class:`MeterdError` with a stable ``code`` (the same strings as the Node SDK), the ``field``
that failed when the error is about one field (``"event.quantity"``, ``"events[2].tags"``), and ``grpc_code``,
the status code it came from.

======================  ========================  =========================================================
class                   ``code``                  when
======================  ========================  =========================================================
``InvalidUsage``        ``INVALID_USAGE``         the event or request breaks a rule (also a ``ValueError``)
``Conflict``            ``CONFLICT``              the idempotency key was used for a different event
``CustomerNotActive``   ``CUSTOMER_NOT_ACTIVE``   the customer may no longer be metered
``LateUsageRejected``   ``LATE_USAGE_REJECTED``   the hour is sealed and the agent rejects late usage
``UsageRefused``        ``USAGE_REFUSED``         another refusal (base of the two above; also an expired
                                                  registration token in ``resolve_customer``)
``NotFound``            ``NOT_FOUND``             no such thing, e.g. ``get_customer`` of an unmapped tenant
``AgentUnavailable``    ``AGENT_UNAVAILABLE``     the agent is down or cannot store, after every retry
``Timeout``             ``TIMEOUT``               no reply within the client's timeout, after every retry
``InvalidTarget``       ``INVALID_TARGET``        the target is not ``host:port`` / ``unix:/path`` (``ValueError``)
``AgentError``          ``AGENT_ERROR``           anything else the agent answered (internal error, ...)
======================  ========================  =========================================================
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "AgentError",
    "AgentUnavailable",
    "Conflict",
    "CustomerNotActive",
    "InvalidTarget",
    "InvalidUsage",
    "LateUsageRejected",
    "MeterdError",
    "NotFound",
    "Timeout",
    "UsageRefused",
]


class MeterdError(Exception):
    """Base class of every meterd error."""

    code: str = "METERD_ERROR"
    #: True when the client already retried this kind of error itself; retrying later with the same
    #: idempotency key is safe and never double-counts.
    retryable: bool = False

    def __init__(self, message: str, *, field: Optional[str] = None, grpc_code: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.grpc_code = grpc_code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, field={self.field!r})"

    def __reduce__(self):  # picklable (e.g. across multiprocessing)
        return (_rebuild, (type(self), self.message, self.field, self.grpc_code))


def _rebuild(cls, message, field, grpc_code):
    return cls(message, field=field, grpc_code=grpc_code)


class InvalidUsage(MeterdError, ValueError):
    """The event (or another request, e.g. a customer call or an invalid registration token) breaks a rule; fix
    it, retrying cannot help."""

    code = "INVALID_USAGE"


class Conflict(MeterdError):
    """The idempotency key was already used for an event with different content. Nothing was counted."""

    code = "CONFLICT"


class UsageRefused(MeterdError):
    """The agent refused the event because of the state it is in (FAILED_PRECONDITION)."""

    code = "USAGE_REFUSED"


class CustomerNotActive(UsageRefused):
    """The customer may no longer be metered (e.g. after the license was deprovisioned)."""

    code = "CUSTOMER_NOT_ACTIVE"


class LateUsageRejected(UsageRefused):
    """The event's hour is already sealed and the agent's ``pipeline.late_usage`` policy is ``reject``."""

    code = "LATE_USAGE_REJECTED"


class NotFound(MeterdError, LookupError):
    """The thing asked for does not exist, e.g. ``get_customer`` of a tenant without a customer mapping."""

    code = "NOT_FOUND"


class AgentUnavailable(MeterdError):
    """The agent could not be reached or could not store the event, after every retry. Nothing was stored."""

    code = "AGENT_UNAVAILABLE"
    retryable = True


class Timeout(MeterdError):
    """No reply within the client's timeout, after every retry. The event may or may not be stored: retry with
    the same idempotency key to find out without double counting."""

    code = "TIMEOUT"
    retryable = True


class InvalidTarget(MeterdError, ValueError):
    """The target is not ``host:port``, ``http://host:port`` or ``unix:/path``."""

    code = "INVALID_TARGET"


class AgentError(MeterdError):
    """Any other error status from the agent (internal error, unauthenticated, ...)."""

    code = "AGENT_ERROR"
