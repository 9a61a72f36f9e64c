//! The single writer and its flusher: group commit without write conflicts.
//!
//! Writer: takes every command waiting in the queue, decides each event (new, replay, conflict) against
//! the store plus what this group already decided, and applies the whole group as one atomic sled batch.
//! Flusher: takes every applied group waiting, fsyncs once, then answers all their callers. While it
//! fsyncs, the writer applies the next group, so the fsync cost is shared by everyone who arrived during it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;

use tokio::sync::{mpsc, oneshot};

use super::keys;
use super::{IngestOutcome, StoreCounters, StoreError, decode, encode};
use crate::clock::{UnixMillis, hour_start};
use crate::domain::event::{Bucket, BucketKey, Receipt, StoredEvent, UsageEvent};

/// Most events one write group carries; bounds the batch size and the latency of a single apply.
const MAX_GROUP_EVENTS: usize = 16_384;
/// Commands waiting for the writer; senders wait when it is full (backpressure, not memory growth).
const QUEUE_DEPTH: usize = 4096;

pub enum Command {
    Ingest {
        events: Vec<UsageEvent>,
        received_ms: UnixMillis,
        reply: oneshot::Sender<Result<Vec<IngestOutcome>, StoreError>>,
    },
    Stop,
}

type Reply = (oneshot::Sender<Result<Vec<IngestOutcome>, StoreError>>, Vec<IngestOutcome>);

struct AppliedGroup {
    replies: Vec<Reply>,
    new_events: u64,
}

pub fn spawn(db: sled::Db, counters: Arc<StoreCounters>) -> (mpsc::Sender<Command>, Vec<std::thread::JoinHandle<()>>) {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let (flush_tx, flush_rx) = std_mpsc::channel::<AppliedGroup>();
    let flusher = {
        let db = db.clone();
        let counters = counters.clone();
        std::thread::Builder::new()
            .name("meterd-flusher".into())
            .spawn(move || flusher_loop(db, flush_rx, counters))
            .expect("spawn flusher thread")
    };
    let writer = std::thread::Builder::new()
        .name("meterd-writer".into())
        .spawn(move || writer_loop(db, rx, flush_tx, counters))
        .expect("spawn writer thread");
    (tx, vec![writer, flusher])
}

fn writer_loop(
    db: sled::Db,
    mut rx: mpsc::Receiver<Command>,
    flush_tx: std_mpsc::Sender<AppliedGroup>,
    counters: Arc<StoreCounters>,
) {
    let mut stopping = false;
    while !stopping {
        let Some(first) = rx.blocking_recv() else { break };
        let mut group = Vec::new();
        let mut n_events = 0;
        let push = |cmd: Command, group: &mut Vec<_>, n: &mut usize| match cmd {
            Command::Ingest { events, received_ms, reply } => {
                *n += events.len();
                group.push((events, received_ms, reply));
                false
            }
            Command::Stop => true,
        };
        stopping = push(first, &mut group, &mut n_events);
        while !stopping && n_events < MAX_GROUP_EVENTS {
            match rx.try_recv() {
                Ok(cmd) => stopping = push(cmd, &mut group, &mut n_events),
                Err(_) => break,
            }
        }
        if group.is_empty() {
            continue;
        }
        counters.write_groups.fetch_add(1, Ordering::Relaxed);
        match apply_group(&db, &group, &counters) {
            Ok((outcomes, new_events)) => {
                let replies = group.into_iter().map(|(_, _, reply)| reply).zip(outcomes).collect();
                if flush_tx.send(AppliedGroup { replies, new_events }).is_err() {
                    break;
                }
            }
            Err(e) => {
                for (_, _, reply) in group {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
    // Dropping flush_tx lets the flusher finish the last groups and exit.
}

/// Decides every event of the group and writes the group as one atomic batch.
fn apply_group(
    db: &sled::Db,
    group: &[(Vec<UsageEvent>, UnixMillis, oneshot::Sender<Result<Vec<IngestOutcome>, StoreError>>)],
    counters: &StoreCounters,
) -> Result<(Vec<Vec<IngestOutcome>>, u64), StoreError> {
    // What this group has decided so far, shadowing the store: keys claimed, bucket totals.
    let mut claimed: HashMap<&str, StoredEvent> = HashMap::new();
    let mut buckets: HashMap<Vec<u8>, Bucket> = HashMap::new();
    let mut batch = sled::Batch::default();
    let mut all = Vec::with_capacity(group.len());
    let mut new_events = 0u64;

    for (events, received_ms, _) in group {
        let mut outcomes = Vec::with_capacity(events.len());
        for ev in events {
            let digest = ev.content_digest();
            let existing = match claimed.get(ev.idempotency_key.as_str()) {
                Some(s) => Some(s.clone()),
                None => match db.get(keys::event_key(&ev.idempotency_key))? {
                    Some(v) => Some(decode::<StoredEvent>(&v)?),
                    None => None,
                },
            };
            if let Some(s) = existing {
                let receipt = Receipt::from_stored(&ev.idempotency_key, &s, true);
                outcomes.push(if s.digest == digest {
                    counters.replays.fetch_add(1, Ordering::Relaxed);
                    IngestOutcome::Replayed(receipt)
                } else {
                    counters.conflicts.fetch_add(1, Ordering::Relaxed);
                    IngestOutcome::Conflict { existing: Receipt { replayed: false, ..receipt } }
                });
                continue;
            }

            let event_time_ms = ev.timestamp_ms.unwrap_or(*received_ms);
            let bucket_key = BucketKey {
                hour_ms: hour_start(event_time_ms),
                product: ev.product.clone(),
                identity: ev.identity.clone(),
                dimension: ev.dimension.clone(),
                tags: ev.tags.clone(),
            };
            let bkey = keys::encode_bucket_key(&bucket_key);
            let mut bucket = match buckets.get(&bkey) {
                Some(b) => b.clone(),
                None => match db.get(&bkey)? {
                    Some(v) => decode::<Bucket>(&v)?,
                    None => Bucket::default(),
                },
            };
            let Some(total) = bucket.total.checked_add(ev.quantity) else {
                outcomes.push(IngestOutcome::Overflow);
                continue;
            };
            bucket.total = total;
            bucket.events += 1;
            let stored = StoredEvent {
                digest,
                product: ev.product.clone(),
                event_time_ms,
                hour_ms: bucket_key.hour_ms,
                recorded_at_ms: *received_ms,
                quantity: ev.quantity,
            };
            batch.insert(keys::event_key(&ev.idempotency_key), encode(&stored));
            outcomes.push(IngestOutcome::Stored(Receipt::from_stored(&ev.idempotency_key, &stored, false)));
            claimed.insert(ev.idempotency_key.as_str(), stored);
            buckets.insert(bkey, bucket);
            new_events += 1;
        }
        all.push(outcomes);
    }
    for (k, b) in buckets {
        batch.insert(k, encode(&b));
    }
    db.apply_batch(batch)?;
    Ok((all, new_events))
}

fn flusher_loop(db: sled::Db, rx: std_mpsc::Receiver<AppliedGroup>, counters: Arc<StoreCounters>) {
    let mut poisoned: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut groups = vec![first];
        groups.extend(rx.try_iter());
        let result = match &poisoned {
            Some(e) => Err(StoreError::Poisoned(e.clone())),
            None => {
                counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                db.flush().map(|_| ()).map_err(|e| {
                    // After a failed fsync the kernel may have dropped dirty pages: nothing written since can
                    // be promised durable, so every later write is refused too.
                    let msg = e.to_string();
                    poisoned = Some(msg.clone());
                    StoreError::Poisoned(msg)
                })
            }
        };
        for group in groups {
            if result.is_ok() {
                counters.events_stored.fetch_add(group.new_events, Ordering::Relaxed);
            }
            for (reply, outcomes) in group.replies {
                let _ = reply.send(result.clone().map(|()| outcomes));
            }
        }
    }
}
