//! The one place gRPC statuses and per-event batch errors become [`Error`]s.

use tonic::Code;

/// Every way a call can fail, as one enum. Each variant has a stable [`Error::code`] string that the Python and
/// Node bindings map to their exception classes, and carries the agent's message unchanged (it names the field and
/// the rule, e.g. `event.quantity: "1.5.2" is not a decimal`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The event (or another request, e.g. a customer call) breaks a rule (INVALID_ARGUMENT, OUT_OF_RANGE). Fix
    /// the request; retrying cannot help.
    #[error("{message}")]
    InvalidUsage { field: String, message: String },
    /// The idempotency key was already used for an event with different content (ALREADY_EXISTS).
    #[error("{message}")]
    Conflict { field: String, message: String },
    /// The customer may no longer be metered (FAILED_PRECONDITION on the customer, e.g. after unsubscribe).
    #[error("{message}")]
    CustomerNotActive { field: String, message: String },
    /// The event's hour is already sealed and the agent's `pipeline.late_usage` policy is `reject`.
    #[error("{message}")]
    LateUsageRejected { field: String, message: String },
    /// Another FAILED_PRECONDITION refusal.
    #[error("{message}")]
    UsageRefused { field: String, message: String },
    /// The thing asked for does not exist (NOT_FOUND), e.g. a tenant without a customer mapping.
    #[error("{message}")]
    NotFound { field: String, message: String },
    /// The agent could not be reached or could not store the event (UNAVAILABLE, connection failures), after
    /// every retry. Nothing was acknowledged; retrying later with the same idempotency key is safe.
    #[error("{message}")]
    AgentUnavailable { message: String },
    /// No reply within the client's timeout (or DEADLINE_EXCEEDED), after every retry. The event may or may not
    /// be stored: retry with the same idempotency key to find out without double counting.
    #[error("{message}")]
    Timeout { message: String },
    /// The target is not `host:port` or `unix:/path`.
    #[error("{message}")]
    InvalidTarget { message: String },
    /// Any other status from the agent (INTERNAL, UNAUTHENTICATED, ...), with its gRPC code.
    #[error("{message}")]
    Agent { grpc_code: i32, message: String },
}

impl Error {
    /// A stable, language-neutral name for the kind of error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidUsage { .. } => "INVALID_USAGE",
            Error::Conflict { .. } => "CONFLICT",
            Error::CustomerNotActive { .. } => "CUSTOMER_NOT_ACTIVE",
            Error::LateUsageRejected { .. } => "LATE_USAGE_REJECTED",
            Error::UsageRefused { .. } => "USAGE_REFUSED",
            Error::NotFound { .. } => "NOT_FOUND",
            Error::AgentUnavailable { .. } => "AGENT_UNAVAILABLE",
            Error::Timeout { .. } => "TIMEOUT",
            Error::InvalidTarget { .. } => "INVALID_TARGET",
            Error::Agent { .. } => "AGENT_ERROR",
        }
    }

    /// The field path that failed (`event.quantity`, `events[2].tags`), when the error is about one field.
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::InvalidUsage { field, .. }
            | Error::Conflict { field, .. }
            | Error::CustomerNotActive { field, .. }
            | Error::LateUsageRejected { field, .. }
            | Error::UsageRefused { field, .. }
            | Error::NotFound { field, .. } => (!field.is_empty()).then_some(field.as_str()),
            _ => None,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Error::InvalidUsage { message, .. }
            | Error::Conflict { message, .. }
            | Error::CustomerNotActive { message, .. }
            | Error::LateUsageRejected { message, .. }
            | Error::UsageRefused { message, .. }
            | Error::NotFound { message, .. }
            | Error::AgentUnavailable { message }
            | Error::Timeout { message }
            | Error::InvalidTarget { message }
            | Error::Agent { message, .. } => message,
        }
    }

    /// The gRPC status code this error came from (`google.rpc.Code` numbering), when it came from the agent.
    pub fn grpc_code(&self) -> Option<i32> {
        Some(match self {
            Error::InvalidUsage { .. } => Code::InvalidArgument as i32,
            Error::Conflict { .. } => Code::AlreadyExists as i32,
            Error::CustomerNotActive { .. } | Error::LateUsageRejected { .. } | Error::UsageRefused { .. } => {
                Code::FailedPrecondition as i32
            }
            Error::NotFound { .. } => Code::NotFound as i32,
            Error::AgentUnavailable { .. } => Code::Unavailable as i32,
            Error::Timeout { .. } => Code::DeadlineExceeded as i32,
            Error::InvalidTarget { .. } => return None,
            Error::Agent { grpc_code, .. } => *grpc_code,
        })
    }

    /// True for the kinds the client retries itself (the agent is down, restarting or slow).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::AgentUnavailable { .. } | Error::Timeout { .. })
    }

    /// Maps an agent status. Field-level messages start with the field path (`event.quantity: ...`).
    pub(crate) fn from_status(status: &tonic::Status, target: &str) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::InvalidArgument
            | Code::OutOfRange
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::NotFound => {
                let field = field_of(&message);
                Self::refusal(status.code(), field, message)
            }
            Code::DeadlineExceeded => Error::Timeout { message: format!("meterd at {target}: {message}") },
            code if retryable_code(code) || is_transport(status) => {
                let detail = transport_detail(status);
                Error::AgentUnavailable { message: format!("meterd at {target} is unavailable: {detail}") }
            }
            code => Error::Agent { grpc_code: code as i32, message },
        }
    }

    /// Maps one batch event's `EventError`.
    pub(crate) fn from_event_error(e: crate::v1::EventError) -> Self {
        Self::refusal(Code::from_i32(e.code), e.field, e.message)
    }

    fn refusal(code: Code, field: String, message: String) -> Self {
        match code {
            Code::InvalidArgument | Code::OutOfRange => Error::InvalidUsage { field, message },
            Code::AlreadyExists => Error::Conflict { field, message },
            Code::NotFound => Error::NotFound { field, message },
            Code::FailedPrecondition if field.ends_with("timestamp") => Error::LateUsageRejected { field, message },
            Code::FailedPrecondition if field.contains("customer") => Error::CustomerNotActive { field, message },
            Code::FailedPrecondition => Error::UsageRefused { field, message },
            code => Error::Agent { grpc_code: code as i32, message },
        }
    }
}

/// Statuses worth another attempt with the same idempotency key.
pub(crate) fn is_retryable_status(status: &tonic::Status) -> bool {
    retryable_code(status.code()) || status.code() == Code::DeadlineExceeded || is_transport(status)
}

fn retryable_code(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Cancelled | Code::Aborted | Code::ResourceExhausted)
}

/// A broken connection surfaces as UNKNOWN with the transport error as its source.
fn is_transport(status: &tonic::Status) -> bool {
    status.code() == Code::Unknown && std::error::Error::source(status).is_some()
}

fn transport_detail(status: &tonic::Status) -> String {
    let mut out = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

/// `event.quantity: "x" is not ...` → `event.quantity`; empty when the message does not start with a path.
fn field_of(message: &str) -> String {
    match message.split_once(": ") {
        Some((path, _)) if !path.is_empty() && !path.contains(char::is_whitespace) => path.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_statuses() {
        let e = Error::from_status(&tonic::Status::invalid_argument("event.quantity: bad"), "t");
        assert_eq!(e, Error::InvalidUsage { field: "event.quantity".into(), message: "event.quantity: bad".into() });
        assert_eq!(e.code(), "INVALID_USAGE");
        let e = Error::from_status(&tonic::Status::already_exists("event.idempotency_key: used"), "t");
        assert_eq!(e.code(), "CONFLICT");
        assert_eq!(e.field(), Some("event.idempotency_key"));
        let e = Error::from_status(&tonic::Status::failed_precondition("event.timestamp: sealed"), "t");
        assert_eq!(e.code(), "LATE_USAGE_REJECTED");
        let e = Error::from_status(&tonic::Status::failed_precondition("event.customer: unsubscribed"), "t");
        assert_eq!(e.code(), "CUSTOMER_NOT_ACTIVE");
        let e = Error::from_status(&tonic::Status::failed_precondition("no path here"), "t");
        assert_eq!((e.code(), e.field()), ("USAGE_REFUSED", None));
        let e = Error::from_status(&tonic::Status::not_found("tenant_id: \"x\" has no mapping"), "t");
        assert_eq!((e.code(), e.field(), e.grpc_code()), ("NOT_FOUND", Some("tenant_id"), Some(5)));
        let e = Error::from_status(&tonic::Status::unavailable("store closed"), "t");
        assert!(e.is_retryable());
        assert_eq!(e.code(), "AGENT_UNAVAILABLE");
        let e = Error::from_status(&tonic::Status::internal("corrupt"), "t");
        assert_eq!((e.code(), e.grpc_code()), ("AGENT_ERROR", Some(13)));
        let e = Error::from_event_error(crate::v1::EventError {
            code: 6,
            field: "events[1].idempotency_key".into(),
            message: "m".into(),
        });
        assert_eq!(e.code(), "CONFLICT");
    }
}
