'use strict';
// Errors thrown by meterd clients. Every error is a MeterdError with a stable `code` (the same strings as the
// Python SDK), the `field` that failed when the error is about one field ("event.quantity", "events[2].tags"),
// and `grpcCode`, the status code it came from.

class MeterdError extends Error {
  static code = 'METERD_ERROR';
  static retryable = false;

  constructor(message, { field = null, grpcCode = null } = {}) {
    super(message);
    this.name = new.target.name;
    this.code = new.target.code;
    this.field = field;
    this.grpcCode = grpcCode;
  }

  /** True when the client already retried this kind of error itself; a later retry with the same key is safe. */
  get retryable() {
    return this.constructor.retryable;
  }
}

/** The event (or another request, e.g. a customer call or an invalid registration token) breaks a rule; fix it,
 *  retrying cannot help. */
class InvalidUsage extends MeterdError {
  static code = 'INVALID_USAGE';
}
/** The idempotency key was already used for an event with different content. Nothing was counted. */
class Conflict extends MeterdError {
  static code = 'CONFLICT';
}
/** The agent refused the event because of the state it is in (FAILED_PRECONDITION). */
class UsageRefused extends MeterdError {
  static code = 'USAGE_REFUSED';
}
/** The customer may no longer be metered (e.g. after the license was deprovisioned). */
class CustomerNotActive extends UsageRefused {
  static code = 'CUSTOMER_NOT_ACTIVE';
}
/** The event's hour is already sealed and the agent's `pipeline.late_usage` policy is `reject`. */
class LateUsageRejected extends UsageRefused {
  static code = 'LATE_USAGE_REJECTED';
}
/** The thing asked for does not exist, e.g. getCustomer of a tenant without a customer mapping. */
class NotFound extends MeterdError {
  static code = 'NOT_FOUND';
}
/** The agent could not be reached or could not store the event, after every retry. Nothing was stored. */
class AgentUnavailable extends MeterdError {
  static code = 'AGENT_UNAVAILABLE';
  static retryable = true;
}
/** No reply within the client's timeout, after every retry. Retry with the same idempotency key. */
class Timeout extends MeterdError {
  static code = 'TIMEOUT';
  static retryable = true;
}
/** The target is not host:port, http://host:port or unix:/path. */
class InvalidTarget extends MeterdError {
  static code = 'INVALID_TARGET';
}
/** Any other error status from the agent (internal error, unauthenticated, ...). */
class AgentError extends MeterdError {
  static code = 'AGENT_ERROR';
}

const byCode = Object.fromEntries(
  [
    InvalidUsage,
    Conflict,
    UsageRefused,
    CustomerNotActive,
    LateUsageRejected,
    NotFound,
    AgentUnavailable,
    Timeout,
    InvalidTarget,
    AgentError,
  ].map(
    (cls) => [cls.code, cls],
  ),
);

/** `{code, field, message, grpcCode}` from the native layer → the matching MeterdError subclass. */
function fromNative({ code, field, message, grpcCode }) {
  const Cls = byCode[code] || AgentError;
  return new Cls(message, { field: field ?? null, grpcCode: grpcCode ?? null });
}

const PREFIX = 'meterd-error:';

/** The one place native errors become MeterdErrors; anything else passes through unchanged. */
function convert(err) {
  if (err && typeof err.message === 'string' && err.message.startsWith(PREFIX)) {
    return fromNative(JSON.parse(err.message.slice(PREFIX.length)));
  }
  return err;
}

module.exports = {
  MeterdError,
  InvalidUsage,
  Conflict,
  UsageRefused,
  CustomerNotActive,
  LateUsageRejected,
  NotFound,
  AgentUnavailable,
  Timeout,
  InvalidTarget,
  AgentError,
  fromNative,
  convert,
};
