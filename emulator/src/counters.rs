//! What happened, counted, so tests can assert on outcomes instead of timings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InjectedFaults {
    pub throttling: u64,
    pub internal_errors: u64,
    /// Records returned in `UnprocessedRecords`.
    pub unprocessed_records: u64,
    /// Connections closed before processing.
    pub dropped_connections: u64,
    /// Connections closed after processing (the answer was lost).
    pub dropped_responses: u64,
    /// Answers delayed by `latency_ms`.
    pub delayed: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// AWS API calls received, by operation (`BatchMeterUsage`, `MeterUsage`, `ResolveCustomer`, or the unknown
    /// target as sent).
    pub calls: BTreeMap<String, u64>,
    /// Calls refused by the calls-per-second limit (`ThrottlingException`).
    pub rate_limited: u64,
    pub injected: InjectedFaults,
    /// Request-level client errors by `__type` (every 4xx answer except throttling).
    pub rejections: BTreeMap<String, u64>,
    /// BatchMeterUsage records in requests that passed the request-level rules.
    pub records_received: u64,
    /// Records newly accepted and billed (ledger entries), BatchMeterUsage and MeterUsage.
    pub records_accepted: u64,
    /// Identical resends answered `Success` with the first MeteringRecordId (not billed again).
    pub records_replayed: u64,
    /// Of those, resends with the same quantity but other allocations (the first record's allocations stay
    /// billed): AWS does not call them duplicates, but they mean the sender's allocations changed.
    pub replayed_with_other_allocations: u64,
    /// `DuplicateRecord` statuses plus MeterUsage `DuplicateRequestException`s: not billed.
    pub duplicates: u64,
    /// `CustomerNotSubscribed` statuses.
    pub not_subscribed: u64,
}

impl Counters {
    pub fn calls_total(&self) -> u64 {
        self.calls.values().sum()
    }

    pub fn calls_to(&self, op: &str) -> u64 {
        self.calls.get(op).copied().unwrap_or(0)
    }

    pub fn rejected(&self, code: &str) -> u64 {
        self.rejections.get(code).copied().unwrap_or(0)
    }
}
