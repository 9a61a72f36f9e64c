//! The last AWS API requests the emulator processed, with their bodies as sent: lets a test check what a client
//! puts on the wire (member names and types), not only what it was billed.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// How many requests are kept; older ones are dropped first.
pub const KEEP: usize = 64;
/// Bodies are kept up to this many bytes (the service refuses 1 MB and more anyway).
const BODY_LIMIT: usize = 1_000_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedRequest {
    /// `BatchMeterUsage`, `MeterUsage`, `ResolveCustomer`, or the unknown target as sent.
    pub operation: String,
    /// The `x-amzn-RequestId` of the answer.
    pub request_id: String,
    /// The body as received (UTF-8, invalid bytes replaced), cut at 1,000,000 bytes.
    pub body: String,
    pub body_bytes: usize,
    /// The `__type` of the error answered; absent when the call succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct RequestLog(VecDeque<LoggedRequest>);

impl RequestLog {
    pub fn push(&mut self, operation: &str, request_id: &str, body: &[u8], error: Option<&str>) {
        if self.0.len() == KEEP {
            self.0.pop_front();
        }
        self.0.push_back(LoggedRequest {
            operation: operation.to_string(),
            request_id: request_id.to_string(),
            body: String::from_utf8_lossy(&body[..body.len().min(BODY_LIMIT)]).into_owned(),
            body_bytes: body.len(),
            error: error.map(str::to_string),
        });
    }

    pub fn entries(&self) -> Vec<LoggedRequest> {
        self.0.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_requests_in_order() {
        let mut log = RequestLog::default();
        for i in 0..KEEP + 3 {
            log.push("MeterUsage", &i.to_string(), b"{}", None);
        }
        let e = log.entries();
        assert_eq!(e.len(), KEEP);
        assert_eq!(e[0].request_id, "3");
        assert_eq!(e[KEEP - 1].request_id, (KEEP + 2).to_string());
    }
}
