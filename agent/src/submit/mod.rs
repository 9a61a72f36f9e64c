//! Submission: one submitter per AWS account (and so per Region), draining the outbox most-urgent-first
//! into `BatchMeterUsage` calls within the rate limit, and recording every outcome durably.
//!
//! Crash safety: records are marked InFlight (fsynced) before a call and their outcome is written after
//! it. A crash in between leaves them InFlight, and they are resent unchanged — content is frozen at
//! seal time — which AWS answers idempotently.

pub mod aws;
mod backoff;
pub mod meter_usage;
pub mod metrics;
pub mod pacing;
pub mod queue;
pub mod register;
pub mod registration;
pub mod wire_shape;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use aws_sdk_marketplacemetering::Client;

use self::aws::{CallOutcome, RecordResult, Skew, WireKey};
use crate::clock::SharedClock;
use crate::config::{Config, IdentityMode};
use crate::domain::event::Identity;
use crate::domain::record::{ExpiryReason, RecordState, RejectReason, SealedRecord};
use crate::metrics::CounterVec;
use crate::store::StoreError;
pub use metrics::SubmitMetrics;
pub use queue::{LedgerQueue, Queue};

/// AWS's limits per call.
pub const MAX_RECORDS_PER_CALL: usize = 25;
pub const MAX_CALL_BYTES: usize = 1_000_000;
/// How many pending records one pass looks at.
const SCAN_LIMIT: usize = 10_000;

/// Counters of one account's submitter, read by status and metrics.
#[derive(Debug, Default)]
pub struct SubmitStats {
    pub calls_ok: AtomicU64,
    pub calls_throttled: AtomicU64,
    pub calls_failed: AtomicU64,
    pub records_accepted: AtomicU64,
    /// Records rejected, by reason (an AWS exception name, `Invalid`, `DuplicateRecord`): the one count status
    /// and metrics both read.
    pub rejected: CounterVec<String>,
    pub records_expired: AtomicU64,
    pub records_unprocessed: AtomicU64,
    pub bisections: AtomicU64,
    pub last_success_ms: AtomicI64,
    pub skew: Arc<Skew>,
    /// The pacer's current send rate, in thousandths of a call per second (`status` projects the drain from it).
    pub pace_milli_calls: AtomicU64,
}

impl SubmitStats {
    pub fn reject(&self, reason: &str) {
        self.rejected.add(reason.to_string(), 1);
    }
}

pub struct Submitter {
    pub account: String,
    config: Arc<Config>,
    store: Arc<dyn Queue>,
    clock: SharedClock,
    client: Client,
    pub stats: Arc<SubmitStats>,
    metrics: Arc<SubmitMetrics>,
    /// The adaptive send rate (at most the account's `calls_per_second`), on time since `pace_origin`.
    pacer: pacing::Pacer,
    pace_origin: tokio::time::Instant,
    /// Set after an account problem: no call before this instant.
    pause_until: Option<tokio::time::Instant>,
    throttle_streak: u32,
    /// Until the first pass ends: records found in flight at start-up are resent at once, unchanged.
    recovering: bool,
    /// Set at shutdown: finish the call in progress, start no new one.
    stop: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Submitter {
    pub async fn new(
        account: &str,
        config: Arc<Config>,
        store: Arc<dyn Queue>,
        clock: SharedClock,
        metrics: Arc<SubmitMetrics>,
    ) -> anyhow::Result<Self> {
        let acct = config.accounts.get(account).ok_or_else(|| anyhow::anyhow!("unknown account {account}"))?;
        let stats = Arc::new(SubmitStats::default());
        stats.pace_milli_calls.store((acct.calls_per_second * 1000.0) as u64, Ordering::Relaxed);
        let client = aws::client(acct, clock.clone(), stats.skew.clone()).await?;
        Ok(Self {
            account: account.to_string(),
            pacer: pacing::Pacer::new(acct.calls_per_second),
            pace_origin: tokio::time::Instant::now(),
            config,
            store,
            clock,
            client,
            stats,
            metrics,
            pause_until: None,
            throttle_streak: 0,
            recovering: true,
            stop: None,
        })
    }

    /// The account's metering client (the deployment start-up checks share it).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Resends what is in flight at the next pass, at once (a new submitter lease: the previous holder may have
    /// died between marking records InFlight and recording AWS's answer).
    pub fn recover(&mut self) {
        self.recovering = true;
    }

    /// Finish the call in progress and start no new one once `stop` turns true (for callers that drive
    /// [`Submitter::pass`] themselves).
    pub fn stop_on(&mut self, stop: tokio::sync::watch::Receiver<bool>) {
        self.stop = Some(stop);
    }

    fn mine(&self, r: &SealedRecord) -> bool {
        self.config.account_of(&r.key.product) == Some(self.account.as_str())
    }

    /// One pass: expire what can no longer make it, then send everything due, most urgent first.
    /// Returns how many calls were made.
    pub async fn pass(&mut self) -> Result<usize, StoreError> {
        let now = self.clock.now_ms();
        let pending: Vec<SealedRecord> =
            self.store.pending_records(SCAN_LIMIT).await?.into_iter().filter(|r| self.mine(r)).collect();

        let mut expired = Vec::new();
        let mut due = Vec::new();
        for r in pending {
            if r.deadline_ms <= now {
                let reason = if matches!(r.key.identity, Identity::Tenant(_)) {
                    ExpiryReason::Unmapped
                } else {
                    ExpiryReason::DeadlinePassed
                };
                tracing::error!(record = ?r.key, deadline = %crate::clock::rfc3339(r.deadline_ms), ?reason,
                    "record expired: it can no longer be submitted before its deadline; this usage is lost");
                expired.push(SealedRecord { state: RecordState::Expired { reason, at_ms: now }, ..r });
            } else if self.wire_identity(&r)?.is_none() {
                // Held until the tenant is mapped to a marketplace identity (customer registry).
            } else if match &r.state {
                RecordState::InFlight { next_attempt_ms, .. } => self.recovering || *next_attempt_ms <= now,
                _ => true,
            } {
                due.push(r);
            }
        }
        self.recovering = false;
        self.stats.records_expired.fetch_add(expired.len() as u64, Ordering::Relaxed);
        self.store.update_records(expired).await?;

        let mut calls = 0;
        while !due.is_empty() {
            if self.stop.as_ref().is_some_and(|s| *s.borrow()) {
                break;
            }
            if let Some(until) = self.pause_until
                && tokio::time::Instant::now() < until
            {
                break;
            }
            let batch = take_batch(&mut due);
            let deployment =
                self.config.products.get(&batch[0].key.product).map(|p| p.identity) == Some(IdentityMode::Deployment);
            calls += if deployment { self.submit_meter_usage(batch).await? } else { self.submit(batch).await? };
        }
        Ok(calls)
    }

    /// The identity AWS knows the record's customer by: its own, or a held tenant's mapping (None: unmapped).
    /// Once sent, a held record keeps the identity it was sent as, whatever the tenant maps to later.
    fn wire_identity(&self, r: &SealedRecord) -> Result<Option<Identity>, StoreError> {
        Ok(match (&r.key.identity, &r.sent_as) {
            (Identity::Tenant(_), Some(sent)) => Some(sent.clone()),
            (Identity::Tenant(t), None) => {
                self.store.mapping(t)?.filter(|m| m.product == r.key.product).map(|m| m.identity)
            }
            (other, _) => Some(other.clone()),
        })
    }

    /// Sends one batch (bisecting on a record-level exception) and records the outcomes.
    async fn submit(&mut self, batch: Vec<SealedRecord>) -> Result<usize, StoreError> {
        let mut stack = vec![batch];
        let mut calls = 0;
        while let Some(batch) = stack.pop() {
            if batch.is_empty() {
                continue;
            }
            let product = &batch[0].key.product;
            let product_code = match self.config.products.get(product) {
                Some(p) if p.identity == IdentityMode::Legacy => p.product_code.clone(),
                _ => None,
            };
            let now = self.clock.now_ms();
            // What this call may learn: a DuplicateRecord for a record we may have delivered before means
            // it is already billed.
            let mut identities = HashMap::new();
            for r in &batch {
                let id = self.wire_identity(r)?.unwrap_or_else(|| r.key.identity.clone());
                identities.insert(r.key.clone(), id);
            }
            let wire_key = |r: &SealedRecord| aws::wire_key_of_record(r, &identities[&r.key]);
            let sent_before: HashSet<WireKey> = batch.iter().filter(|r| r.state.was_sent()).map(wire_key).collect();
            // Durably in flight before anything leaves the process.
            let in_flight: Vec<SealedRecord> = batch
                .into_iter()
                .map(|r| {
                    let attempts = match r.state {
                        RecordState::InFlight { attempts, .. } => attempts + 1,
                        _ => 1,
                    };
                    let next_attempt_ms = now + backoff::record_retry_delay(attempts).as_millis() as i64;
                    let sent_as = match &r.key.identity {
                        Identity::Tenant(_) => {
                            Some(identities[&r.key].clone()).filter(|i| !matches!(i, Identity::Tenant(_)))
                        }
                        _ => None,
                    };
                    SealedRecord { state: RecordState::InFlight { attempts, next_attempt_ms }, sent_as, ..r }
                })
                .collect();
            self.store.update_records(in_flight.clone()).await?;

            let mut wire = Vec::with_capacity(in_flight.len());
            let mut invalid = Vec::new();
            let mut sendable = Vec::with_capacity(in_flight.len());
            for r in in_flight {
                match aws::usage_record(&r, &identities[&r.key]) {
                    Ok(u) => {
                        wire.push(u);
                        sendable.push(r);
                    }
                    Err(e) => invalid.push(SealedRecord {
                        state: RecordState::Rejected {
                            reason: RejectReason::Invalid(e.to_string()),
                            aws_request_id: None,
                            at_ms: now,
                        },
                        ..r
                    }),
                }
            }
            self.stats.rejected.add("Invalid".to_string(), invalid.len() as u64);
            self.store.update_records(invalid).await?;
            if sendable.is_empty() {
                continue;
            }

            let wait = self.pacer.reserve(self.pace_origin.elapsed().as_secs_f64());
            if wait > 0.0 {
                tokio::time::sleep(std::time::Duration::from_secs_f64(wait)).await;
            }
            self.pacer.sent(self.pace_origin.elapsed().as_secs_f64());
            calls += 1;
            self.metrics.batch_size.observe(wire.len() as f64);
            self.metrics.retries.fetch_add(sent_before.len() as u64, Ordering::Relaxed);
            let started = std::time::Instant::now();
            let outcome = aws::send(&self.client, product_code.as_deref(), wire).await;
            self.metrics.call_latency.observe(started.elapsed().as_secs_f64());
            let throttled = matches!(outcome, CallOutcome::Retryable { throttled: true, .. });
            self.pacer.on_response(self.pace_origin.elapsed().as_secs_f64(), throttled);
            self.stats.pace_milli_calls.store((self.pacer.rate() * 1000.0) as u64, Ordering::Relaxed);
            let now = self.clock.now_ms();
            match outcome {
                CallOutcome::Answered { results, unprocessed, request_id } => {
                    self.throttle_streak = 0;
                    self.stats.calls_ok.fetch_add(1, Ordering::Relaxed);
                    self.stats.last_success_ms.store(now, Ordering::Relaxed);
                    let results: HashMap<WireKey, RecordResult> = results.into_iter().collect();
                    let mut not_subscribed = Vec::new();
                    let unprocessed: HashSet<WireKey> = unprocessed.into_iter().collect();
                    let mut updates = Vec::new();
                    for r in sendable {
                        let wk = wire_key(&r);
                        if unprocessed.contains(&wk) {
                            self.stats.records_unprocessed.fetch_add(1, Ordering::Relaxed);
                            continue; // stays InFlight with its backoff; resent unchanged
                        }
                        let state = match results.get(&wk) {
                            Some(RecordResult::Success { metering_record_id }) => {
                                self.stats.records_accepted.fetch_add(1, Ordering::Relaxed);
                                RecordState::Accepted {
                                    metering_record_id: metering_record_id.clone(),
                                    aws_request_id: request_id.clone(),
                                    at_ms: now,
                                    verify: false,
                                }
                            }
                            Some(RecordResult::DuplicateRecord) if sent_before.contains(&wk) => {
                                tracing::warn!(record = ?r.key, "DuplicateRecord for a resend of this exact record: \
                                    counted as accepted, flagged for verification against the seller reports");
                                self.stats.records_accepted.fetch_add(1, Ordering::Relaxed);
                                RecordState::Accepted {
                                    metering_record_id: None,
                                    aws_request_id: request_id.clone(),
                                    at_ms: now,
                                    verify: true,
                                }
                            }
                            Some(RecordResult::DuplicateRecord) => {
                                // A first send: AWS billed this key with another quantity. Rejected as lost (the
                                // store counts it in `m/lost`); see docs/operations.md#revenue-lost.
                                tracing::error!(record = ?r.key, units = r.quantity,
                                    request_id = request_id.as_deref().unwrap_or("-"),
                                    "REVENUE LOST: DuplicateRecord on the first send: AWS already holds another quantity \
                                    for this hour (another system or agent metered it?); these units are never billed");
                                self.stats.reject("DuplicateRecord");
                                RecordState::Rejected {
                                    reason: RejectReason::DuplicateRecord,
                                    aws_request_id: request_id.clone(),
                                    at_ms: now,
                                }
                            }
                            Some(RecordResult::CustomerNotSubscribed) => {
                                tracing::warn!(record = ?r.key, "CustomerNotSubscribed: record rejected");
                                not_subscribed.push(identities[&r.key].clone());
                                self.stats.reject("CustomerNotSubscribed");
                                RecordState::Rejected {
                                    reason: RejectReason::CustomerNotSubscribed,
                                    aws_request_id: request_id.clone(),
                                    at_ms: now,
                                }
                            }
                            Some(RecordResult::Unknown(s)) => {
                                tracing::warn!(record = ?r.key, status = %s, "unknown result status; will resend");
                                continue;
                            }
                            None => {
                                tracing::warn!(record = ?r.key, "no result for this record; will resend");
                                continue;
                            }
                        };
                        updates.push(SealedRecord { state, ..r });
                    }
                    let accepted = updates.iter().filter(|r| matches!(r.state, RecordState::Accepted { .. })).count();
                    tracing::info!(account = %self.account, records = updates.len(), accepted,
                        request_id = request_id.as_deref().unwrap_or("-"), "BatchMeterUsage answered");
                    // AWS's word on the customer is kept before the rejection shows: whoever reads a rejected
                    // record (report, status) then finds the customer marked too. A crash in between resends the
                    // record, which AWS answers the same way.
                    for identity in not_subscribed {
                        self.store.note_not_subscribed(identity, now).await?;
                    }
                    self.store.update_records(updates).await?;
                }
                CallOutcome::Retryable { throttled, reason } => {
                    if throttled {
                        // The pacer has lowered the send rate: that is the backoff, and the records stay in
                        // flight to be resent unchanged. Pausing the whole pass on top would waste the quota
                        // the lower rate still has.
                        self.stats.calls_throttled.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%reason, calls_per_second = format!("{:.2}", self.pacer.rate()),
                            "throttled by AWS; lowered this account's send rate");
                    } else {
                        self.stats.calls_failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%reason, records = sendable.len(), "BatchMeterUsage failed; records stay in flight and are resent");
                    }
                }
                CallOutcome::RecordException { exception, message, request_id } => {
                    self.stats.calls_failed.fetch_add(1, Ordering::Relaxed);
                    if sendable.len() == 1 {
                        let r = sendable.pop().expect("one record");
                        tracing::error!(record = ?r.key, %exception, %message, "record rejected by AWS");
                        self.stats.reject(&exception);
                        let state = RecordState::Rejected {
                            reason: RejectReason::AwsException(exception),
                            aws_request_id: request_id,
                            at_ms: now,
                        };
                        self.store.update_records(vec![SealedRecord { state, ..r }]).await?;
                    } else {
                        // One bad record must not sink the batch: split until it is alone.
                        self.stats.bisections.fetch_add(1, Ordering::Relaxed);
                        let right = sendable.split_off(sendable.len() / 2);
                        stack.push(right);
                        stack.push(sendable);
                    }
                }
                CallOutcome::AccountProblem { reason } => {
                    self.stats.calls_failed.fetch_add(1, Ordering::Relaxed);
                    self.throttle_streak += 1;
                    let pause = backoff::full_jitter(self.throttle_streak);
                    self.pause_until = Some(tokio::time::Instant::now() + pause);
                    tracing::error!(account = %self.account, %reason, ?pause,
                        "BatchMeterUsage refused for a reason no record explains (credentials, Region, product code?); \
                         records stay pending until their deadline");
                }
            }
        }
        Ok(calls)
    }

    /// Runs passes every tick until `stop` fires. `nudge` wakes it early (after a seal or flush).
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>, nudge: Arc<tokio::sync::Notify>) {
        let tick = self.config.pipeline.tick;
        self.stop = Some(stop.clone());
        loop {
            let busy = match self.pass().await {
                Ok(calls) => calls > 0,
                Err(e) => {
                    tracing::error!(account = %self.account, error = %e, "submitter pass failed");
                    false
                }
            };
            // A pass that made calls may have left work (a scan is bounded): look again at once rather than
            // idling a tick with quota to spare.
            if busy && !*stop.borrow() {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = nudge.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// Takes the next call's records: the most urgent record's product, then up to 25 of that product in
/// deadline order, staying under the size limit.
fn take_batch(due: &mut Vec<SealedRecord>) -> Vec<SealedRecord> {
    let product = due[0].key.product.clone();
    let mut batch = Vec::new();
    let mut bytes = 64;
    let mut rest = Vec::with_capacity(due.len());
    for r in due.drain(..) {
        let size = aws::estimated_wire_bytes(&r);
        if r.key.product == product && batch.len() < MAX_RECORDS_PER_CALL && bytes + size < MAX_CALL_BYTES {
            bytes += size;
            batch.push(r);
        } else {
            rest.push(r);
        }
    }
    *due = rest;
    batch
}
