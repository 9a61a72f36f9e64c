//! Forwarding: a node ships a batch of events it acknowledged to the shared ledger, in ONE transaction.
//!
//! Every event is decided by the agent's own ingest decision ([`IngestGroup`]), against the shared event keys:
//! same key + same digest = replay (nothing changes), same key + other digest = a conflict row (kept and shown,
//! never counted, never dropped silently), a new key = its row plus its bucket's total, in the same transaction.
//! An event whose hour is already sealed fleet-wide follows the late-usage rule: counted into the open hour,
//! flagged late (an acknowledged event is never refused here: the node already answered for it, so the policy is
//! always "carry" and no lateness bound applies). The node's forward watermark moves in the same transaction.
//!
//! Concurrency: the products' seal marks are read `FOR SHARE` (a seal takes them `FOR UPDATE`, so no event lands
//! in an hour while it is sealed); the keys' stripe rows (`meterd_key_stripes`, locked `FOR UPDATE`) serialise
//! two nodes forwarding one key (event keys are partitioned by day, so no unique index spans them); bucket totals are incremented by upserts in a
//! fixed order. Deadlocks and serialization failures are retried.

use std::collections::{BTreeMap, HashMap};

use meterd_core::clock::UnixMillis;
use meterd_core::domain::catalog::LatePolicy;
use meterd_core::domain::customer::TenantMapping;
use meterd_core::domain::event::{Bucket, BucketKey, ContentDigest, Identity, StoredEvent, UsageEvent};
use meterd_core::domain::ingest::{CustomerRef, IngestGroup, IngestOutcome, IngestRules, Lookups, Standing};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::codec::{self, Corrupt};

/// One acknowledged event of a node's spool.
#[derive(Debug, Clone)]
pub struct Acked {
    pub event: UsageEvent,
    /// When the node acknowledged it (its clock): the event's time when the caller gave none, and the open hour
    /// a late event is counted in.
    pub received_ms: UnixMillis,
}

/// A key forwarded with other content than the ledger holds for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub idempotency_key: String,
    /// The node whose event was counted under the key, and the hour it was counted in.
    pub existing_node_id: String,
    pub existing_hour_ms: UnixMillis,
}

/// What one forward did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Forwarded {
    pub stored: u64,
    pub replayed: u64,
    /// Stored events whose own hour was sealed: counted in the open hour.
    pub late: u64,
    pub conflicts: Vec<Conflict>,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("fleet.node_id: must be 1 to 128 characters, got {0}")]
    NodeId(usize),
    /// The decision refused an acknowledged event (only a bucket overflow can: ~10^25 units in one hour).
    #[error("event {key:?} cannot be counted in the shared ledger: {reason}")]
    Refused { key: String, reason: String },
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    #[error("fleet database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

const ATTEMPTS: usize = 6;

/// Whether retrying the whole transaction can succeed: a deadlock or serialization failure.
pub(crate) fn is_transient(e: &tokio_postgres::Error) -> bool {
    matches!(e.code(), Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE)
}

fn is_missing_partition(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| *d.code() == SqlState::CHECK_VIOLATION && d.message().starts_with("no partition"))
}

/// Applies `events` (acknowledged by `node_id`) and moves the node's watermark to `watermark_ms` ("everything
/// acknowledged before this is forwarded"; never moved back), all in one transaction.
pub async fn forward(
    client: &mut Client,
    node_id: &str,
    events: &[Acked],
    watermark_ms: UnixMillis,
) -> Result<Forwarded, ForwardError> {
    let len = node_id.chars().count();
    if !(1..=128).contains(&len) {
        return Err(ForwardError::NodeId(len));
    }
    Ok(apply(client, node_id, events, Mode::Forward { watermark_ms }).await?.0)
}

/// Decides a caller's `events` against the shared ledger with the caller's `rules` and applies what is stored,
/// in one transaction: the `Ledger` seam over PostgreSQL (the agent's `PgLedger`), where the ledger itself
/// answers the caller rather than a node's spool. Unlike [`forward`], nothing was acknowledged yet, so the
/// caller's late policy and lateness bound apply, the fleet's registry gates the customer (its standing, a tenant
/// mapped for another product), and a refusal or a conflict is the caller's answer (no conflict row: nothing
/// acknowledged was refused). No watermark moves: the events are in the ledger once this returns. One outcome
/// per event, in order.
pub async fn ingest(
    client: &mut Client,
    node_id: &str,
    events: &[UsageEvent],
    received_ms: UnixMillis,
    rules: IngestRules,
) -> Result<Vec<IngestOutcome>, ForwardError> {
    let len = node_id.chars().count();
    if !(1..=128).contains(&len) {
        return Err(ForwardError::NodeId(len));
    }
    let acked: Vec<Acked> = events.iter().map(|e| Acked { event: e.clone(), received_ms }).collect();
    Ok(apply(client, node_id, &acked, Mode::Ingest { rules }).await?.1)
}

/// How a batch is decided and what it writes besides events and buckets.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// A node's acknowledged events: always "carry", never refused, no standing consulted, conflicts recorded,
    /// the node's watermark moved.
    Forward { watermark_ms: UnixMillis },
    /// A caller's events: its rules, the registry's standing and mappings; refusals and conflicts answered.
    Ingest { rules: IngestRules },
}

async fn apply(
    client: &mut Client,
    node_id: &str,
    events: &[Acked],
    mode: Mode,
) -> Result<(Forwarded, Vec<IngestOutcome>), ForwardError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_apply(client, node_id, events, mode).await {
            Err(ForwardError::Db(e)) if attempt < ATTEMPTS && is_missing_partition(&e) => {
                // A new day (or a fresh database): create its partition and go again.
                crate::partitions::ensure(client, 1, 2).await?;
            }
            Err(ForwardError::Db(e)) if attempt < ATTEMPTS && is_transient(&e) => {
                tracing::debug!(error = %e, attempt, "forward retried");
            }
            other => return other,
        }
    }
}

/// Answers the decision from the shared keys read at the start of the transaction; buckets start empty, so the
/// decided totals are this batch's increments (added to the shared totals in SQL, safely under concurrency).
/// A tenant mapped (fleet-wide) for the event's product is counted under its identity, as the sled store counts
/// it; a tenant mapped for another product is held, as an unmapped one (refusing it would drop usage the node
/// acknowledged). Customer standing is not consulted: the node answered for the event already (its copy of the
/// registry gated it), so a customer that left meanwhile is counted and sealed by the leaving rule
/// (`registry::seal_leaving`), never dropped.
///
/// [`ingest`] gates instead (`gate`: nothing is acknowledged yet): the registry's standing of the customer, and
/// every mapping of the tenant, so one mapped for another product is refused as the sled store refuses it.
struct Shared<'a> {
    known: &'a HashMap<String, (StoredEvent, String)>,
    mappings: &'a HashMap<String, TenantMapping>,
    standings: &'a HashMap<String, Standing>,
    product: &'a str,
    gate: bool,
}

impl Lookups for Shared<'_> {
    type Error = std::convert::Infallible;
    fn event(&mut self, key: &str) -> Result<Option<StoredEvent>, Self::Error> {
        Ok(self.known.get(key).map(|(s, _)| s.clone()))
    }
    fn mapping(&mut self, tenant: &str) -> Result<Option<TenantMapping>, Self::Error> {
        Ok(self.mappings.get(tenant).filter(|m| self.gate || m.product == self.product).cloned())
    }
    fn standing(&mut self, c: &CustomerRef) -> Result<Option<Standing>, Self::Error> {
        Ok(if self.gate { self.standings.get(&crate::registry::customer_ref_key(c)).cloned() } else { None })
    }
    fn bucket(&mut self, _: &BucketKey) -> Result<Option<Bucket>, Self::Error> {
        Ok(None)
    }
}

const ACKED: IngestRules = IngestRules { late: LatePolicy::Carry, max_lateness_ms: None };

async fn try_apply(
    client: &mut Client,
    node_id: &str,
    events: &[Acked],
    mode: Mode,
) -> Result<(Forwarded, Vec<IngestOutcome>), ForwardError> {
    let tx = client.transaction().await?;
    let mut by_product: BTreeMap<&str, Vec<(usize, &Acked)>> = BTreeMap::new();
    for (i, a) in events.iter().enumerate() {
        by_product.entry(a.event.product.as_str()).or_default().push((i, a));
    }
    let products: Vec<&str> = by_product.keys().copied().collect();
    tx.execute(
        "INSERT INTO meterd_seal_marks (product) SELECT p FROM unnest($1::text[]) AS p ORDER BY p
         ON CONFLICT (product) DO NOTHING",
        &[&products],
    )
    .await?;
    let sealed: HashMap<String, Option<i64>> = tx
        .query(
            "SELECT product, sealed_through FROM meterd_seal_marks WHERE product = ANY($1)
             ORDER BY product FOR SHARE",
            &[&products],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();

    // Read after the seal marks: a mapping being put holds its product's mark FOR UPDATE, so this sees it
    // committed (and its tenant buckets moved) or the mapping waits for this forward and then moves what it adds.
    let mut tenants: Vec<&str> = events
        .iter()
        .filter_map(|a| match &a.event.identity {
            Identity::Tenant(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    tenants.sort_unstable();
    tenants.dedup();
    let registry_error = |e| match e {
        crate::registry::RegistryError::Db(e) => ForwardError::Db(e),
        crate::registry::RegistryError::Corrupt(c) => ForwardError::Corrupt(c),
        other => ForwardError::Refused { key: String::new(), reason: other.to_string() },
    };
    let mappings = crate::registry::mappings_for(&tx, &tenants).await.map_err(registry_error)?;
    let (rules, gate) = match mode {
        Mode::Forward { .. } => (ACKED, false),
        Mode::Ingest { rules } => (rules, true),
    };
    let standings = if gate {
        // The customers the events name, directly or through their tenant's mapping.
        let mut customers: Vec<String> = events
            .iter()
            .filter_map(|a| match &a.event.identity {
                Identity::Tenant(t) => mappings.get(t).and_then(|m| crate::registry::customer_key(&m.identity)),
                other => crate::registry::customer_key(other),
            })
            .collect();
        customers.sort_unstable();
        customers.dedup();
        crate::registry::standings_for(&tx, &customers).await.map_err(registry_error)?
    } else {
        HashMap::new()
    };
    let mut keys: Vec<&str> = events.iter().map(|a| a.event.idempotency_key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    // Stripe rows in ascending order, so two forwards never wait on each other in a cycle.
    tx.execute(
        "SELECT stripe FROM meterd_key_stripes
         WHERE stripe IN (SELECT hashtext(k) & 4095 FROM unnest($1::text[]) AS k)
         ORDER BY stripe FOR UPDATE",
        &[&keys],
    )
    .await?;
    let mut known: HashMap<String, (StoredEvent, String)> = HashMap::new();
    for r in tx
        .query(
            &format!(
                "SELECT idempotency_key, node_id, {} FROM meterd_event_keys WHERE idempotency_key = ANY($1)",
                crate::views::STORED_EVENT_COLUMNS
            ),
            &[&keys],
        )
        .await?
    {
        known.insert(r.get(0), (crate::views::stored_event_of(&r, 2)?, r.get(1)));
    }

    let mut out = Forwarded::default();
    let mut outcomes: Vec<Option<IngestOutcome>> = vec![None; events.len()];
    let mut new_events: Vec<(String, StoredEvent)> = Vec::new();
    let mut buckets: Vec<(BucketKey, Bucket)> = Vec::new();
    let mut conflicts: Vec<(&Acked, ContentDigest, String, UnixMillis)> = Vec::new();
    for (g, (product, acked)) in by_product.iter().enumerate() {
        let mut group = IngestGroup::new(sealed.get(*product).copied().flatten());
        for (i, a) in acked {
            let mut look = Shared { known: &known, mappings: &mappings, standings: &standings, product, gate };
            let outcome = group
                .decide(&a.event, a.received_ms, rules, &mut look)
                .unwrap_or_else(|never: std::convert::Infallible| match never {});
            match &outcome {
                IngestOutcome::Stored(_) => out.stored += 1,
                IngestOutcome::Replayed(_) => out.replayed += 1,
                // The caller is answered the conflict: nothing acknowledged was refused, so no conflict row.
                IngestOutcome::Conflict { .. } if gate => {}
                IngestOutcome::Conflict { existing } => {
                    // Claimed earlier in this batch (by this node) or already in the ledger.
                    let existing_node =
                        known.get(&existing.idempotency_key).map_or_else(|| node_id.to_string(), |(_, n)| n.clone());
                    conflicts.push((a, a.event.content_digest(), existing_node, existing.hour_ms));
                }
                _ if gate => {}
                other => {
                    let reason = other.refusal().map_or_else(|| format!("{other:?}"), |(_, f)| f.message);
                    return Err(ForwardError::Refused { key: a.event.idempotency_key.clone(), reason });
                }
            }
            outcomes[*i] = Some(outcome);
        }
        let writes = group.into_writes();
        out.late += writes.late_events;
        // Keys this product's group stored are known to the next product's group (one key, one event) and to a
        // conflict's row below; after the last group, with no conflict, nobody asks (a copy of every event was
        // ~3% of a spool agent's CPU).
        if g + 1 < by_product.len() || !conflicts.is_empty() {
            for (k, s) in &writes.events {
                known.insert(k.clone(), (s.clone(), node_id.to_string()));
            }
        }
        new_events.extend(writes.events);
        buckets.extend(writes.buckets);
    }

    insert_events(&tx, node_id, &new_events).await?;
    let opened = add_to_buckets(&tx, &mut buckets).await?;
    add_to_hour_totals(&tx, node_id, &buckets).await?;
    for (a, digest, existing_node, existing_hour) in &conflicts {
        let existing_digest =
            known.get(&a.event.idempotency_key).map(|(s, _)| s.digest.bytes().to_vec()).unwrap_or_default();
        tx.execute(
            "INSERT INTO meterd_conflicts (idempotency_key, digest, node_id, product, customer, dimension, quantity,
                                           event_time_ms, recorded_at_ms, existing_digest, existing_node_id,
                                           existing_hour_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7::text::numeric, $8, $9, $10, $11, $12)
             ON CONFLICT (idempotency_key, digest) DO NOTHING",
            &[
                &a.event.idempotency_key,
                &digest.bytes().to_vec(),
                &node_id,
                &a.event.product,
                &codec::identity_text(&a.event.identity),
                &a.event.dimension,
                &codec::micros_text(a.event.quantity),
                &a.event.timestamp_ms,
                &a.received_ms,
                &existing_digest,
                existing_node,
                existing_hour,
            ],
        )
        .await?;
        out.conflicts.push(Conflict {
            idempotency_key: a.event.idempotency_key.clone(),
            existing_node_id: existing_node.clone(),
            existing_hour_ms: *existing_hour,
        });
    }
    // A `PgLedger`'s own writes (`Mode::Ingest`) are counted like a node's forwards, under its writer id, but move
    // no watermark: nothing was acknowledged ahead of them (and it is no node of `meterd_nodes` a seal waits for).
    let watermark_ms = match mode {
        Mode::Forward { watermark_ms } => watermark_ms,
        Mode::Ingest { .. } => i64::MIN,
    };
    tx.execute(
        "INSERT INTO meterd_watermarks (node_id, watermark_ms, forwarded, late, buckets_opened)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (node_id) DO UPDATE
             SET watermark_ms = greatest(meterd_watermarks.watermark_ms, excluded.watermark_ms),
                 forwarded = meterd_watermarks.forwarded + excluded.forwarded,
                 late = meterd_watermarks.late + excluded.late,
                 buckets_opened = meterd_watermarks.buckets_opened + excluded.buckets_opened,
                 updated_at = now()",
        &[&node_id, &watermark_ms, &(out.stored as i64), &(out.late as i64), &opened],
    )
    .await?;
    tx.commit().await?;
    let outcomes = outcomes.into_iter().map(|o| o.expect("every event is decided once")).collect();
    Ok((out, outcomes))
}

async fn insert_events(
    tx: &tokio_postgres::Transaction<'_>,
    node_id: &str,
    events: &[(String, StoredEvent)],
) -> Result<(), tokio_postgres::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    let digests: Vec<Vec<u8>> = events.iter().map(|(_, s)| s.digest.bytes().to_vec()).collect();
    let products: Vec<&str> = events.iter().map(|(_, s)| s.product.as_str()).collect();
    let times: Vec<i64> = events.iter().map(|(_, s)| s.event_time_ms).collect();
    let hours: Vec<i64> = events.iter().map(|(_, s)| s.hour_ms).collect();
    let late: Vec<bool> = events.iter().map(|(_, s)| s.late).collect();
    let quantities: Vec<String> = events.iter().map(|(_, s)| codec::micros_text(s.quantity)).collect();
    let recorded: Vec<i64> = events.iter().map(|(_, s)| s.recorded_at_ms).collect();
    tx.execute(
        "INSERT INTO meterd_event_keys (idempotency_key, digest, product, event_time_ms, hour_ms, late, quantity,
                                        node_id, recorded_at_ms)
         SELECT k, d, p, t, h, l, q::numeric, $8, r
         FROM unnest($1::text[], $2::bytea[], $3::text[], $4::int8[], $5::int8[], $6::bool[], $7::text[], $9::int8[])
              AS u(k, d, p, t, h, l, q, r)",
        &[&keys, &digests, &products, &times, &hours, &late, &quantities, &node_id, &recorded],
    )
    .await?;
    Ok(())
}

/// Adds the batch's usage to the hour × product × dimension totals (`status`'s usage drops), in this node's own
/// rows, in key order.
async fn add_to_hour_totals(
    tx: &tokio_postgres::Transaction<'_>,
    node_id: &str,
    buckets: &[(BucketKey, Bucket)],
) -> Result<(), tokio_postgres::Error> {
    let mut sums: BTreeMap<(i64, &str, &str), u128> = BTreeMap::new();
    for (k, b) in buckets {
        let s = sums.entry((k.hour_ms, k.product.as_str(), k.dimension.as_str())).or_default();
        *s = s.saturating_add(b.total.0);
    }
    sums.retain(|_, s| *s > 0);
    if sums.is_empty() {
        return Ok(());
    }
    let hours: Vec<i64> = sums.keys().map(|k| k.0).collect();
    let products: Vec<&str> = sums.keys().map(|k| k.1).collect();
    let dimensions: Vec<&str> = sums.keys().map(|k| k.2).collect();
    let totals: Vec<String> = sums.values().map(|s| s.to_string()).collect();
    tx.execute(
        "INSERT INTO meterd_hour_totals AS t (hour_ms, product, dimension, shard, total)
         SELECT h, p, d, $5, s::numeric FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[]) AS u(h, p, d, s)
         ORDER BY 1, 2, 3
         ON CONFLICT (hour_ms, product, dimension, shard) DO UPDATE SET total = t.total + excluded.total",
        &[&hours, &products, &dimensions, &totals, &node_id],
    )
    .await?;
    Ok(())
}

/// Adds the batch's increments to the shared totals, in key order (every forward locks bucket rows in the same
/// order, so concurrent forwards queue rather than deadlock). Returns how many buckets it opened (new rows), for
/// the node's count of them (`status`'s open buckets).
async fn add_to_buckets(
    tx: &tokio_postgres::Transaction<'_>,
    buckets: &mut [(BucketKey, Bucket)],
) -> Result<i64, tokio_postgres::Error> {
    if buckets.is_empty() {
        return Ok(0);
    }
    let rows: BTreeMap<(i64, &str, String, &str, String), &Bucket> = buckets
        .iter()
        .map(|(k, b)| {
            (
                (
                    k.hour_ms,
                    k.product.as_str(),
                    codec::identity_text(&k.identity),
                    k.dimension.as_str(),
                    codec::tags_text(&k.tags),
                ),
                b,
            )
        })
        .collect();
    let hours: Vec<i64> = rows.keys().map(|k| k.0).collect();
    let products: Vec<&str> = rows.keys().map(|k| k.1).collect();
    let customers: Vec<&str> = rows.keys().map(|k| k.2.as_str()).collect();
    let dimensions: Vec<&str> = rows.keys().map(|k| k.3).collect();
    let tags: Vec<&str> = rows.keys().map(|k| k.4.as_str()).collect();
    let totals: Vec<String> = rows.values().map(|b| codec::micros_text(b.total)).collect();
    let counts: Vec<i64> = rows.values().map(|b| b.events as i64).collect();
    let late: Vec<String> = rows.values().map(|b| codec::micros_text(b.late)).collect();
    // xmax = 0: the row was inserted, not updated (PostgreSQL's tell for an upsert's outcome).
    let opened: i64 = tx
        .query_one(
            "WITH up AS (
                 INSERT INTO meterd_buckets (hour_ms, product, customer, dimension, tags, total, events, late)
                 SELECT h, p, c, d, t, tot::numeric, e, l::numeric
                 FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[],
                             $8::text[]) AS u(h, p, c, d, t, tot, e, l)
                 ON CONFLICT (hour_ms, product, customer, dimension, tags) DO UPDATE
                     SET total = meterd_buckets.total + excluded.total,
                         events = meterd_buckets.events + excluded.events,
                         late = meterd_buckets.late + excluded.late
                 RETURNING xmax = 0 AS opened)
             SELECT count(*) FILTER (WHERE opened) FROM up",
            &[&hours, &products, &customers, &dimensions, &tags, &totals, &counts, &late],
        )
        .await?
        .get(0);
    Ok(opened)
}
