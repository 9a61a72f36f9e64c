//! The fleet-wide customer registry: tenant mappings, each marketplace customer's lifecycle, and the agreements
//! that name them (migration 3). A mapping or lifecycle event posted to any agent is written here, decided by the
//! agent's own rules ([`CustomerLifecycle::apply`], `amend`, `note_not_subscribed`), and every agent follows the
//! registry by revision ([`changes_since`]) into its spool's copy, which its ingest gate reads.
//!
//! Ordering: every write locks the single `meterd_registry_lock` row and then draws its revision, so writes
//! commit in revision order (an agent that has read revision r has read every write before it) and conflicting
//! writes are applied one after the other: a status only moves forward, an event id already in the history
//! changes nothing (replay is idempotent), and a tenant's last mapping wins.
//!
//! A mapping also moves the shared ledger's usage held under the tenant, as the sled store does: its open buckets
//! go to the identity, and its sealed, never-sent records take the identity's AWS key (`sent_as`) or, when another
//! record has that key, are merged into the identity's next free hour (their whole units carried). It holds the
//! product's seal mark `FOR UPDATE` meanwhile: no forward counts tenant usage it would miss, no seal runs.
//!
//! A customer that stops accepting usage has its open hours sealed at once by the account's submitter
//! ([`seal_leaving`], under its lease), with deadlines capped to the final reporting hour, as the sled store
//! does in the same write as the event.

use std::collections::HashMap;

use meterd_core::clock::{HOUR_MS, UnixMillis, hour_start};
use meterd_core::domain::customer::{CustomerLifecycle, CustomerStatus, StatusChange, TenantMapping};
use meterd_core::domain::event::{Bucket, BucketKey, Identity};
use meterd_core::domain::ingest::{CustomerRef, Standing};
use meterd_core::domain::lifecycle::{LifecycleEvent, Subject};
use meterd_core::domain::quantity::Micros;
use meterd_core::domain::record::{RecordState, SealedRecord};
use meterd_core::domain::seal::SealParams;
use tokio_postgres::{Client, GenericClient, Transaction};

use crate::codec::{self, Corrupt};
use crate::lease::{self, Lease, LeaseError};
use crate::totals::Delta;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error(transparent)]
    Fenced(#[from] LeaseError),
    #[error("quantity overflow moving {0}")]
    Overflow(String),
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    #[error("fleet database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// A customer's registry key: `l` + license ARN or `g` + legacy customer identifier (the sled store's key after
/// its prefix), None for identities without a lifecycle (tenants, deployments).
pub fn customer_key(identity: &Identity) -> Option<String> {
    CustomerRef::of(identity).map(|c| customer_ref_key(&c))
}

pub fn customer_ref_key(c: &CustomerRef) -> String {
    match c {
        CustomerRef::License(arn) => format!("l{arn}"),
        CustomerRef::Legacy(id) => format!("g{id}"),
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("registry values always encode")
}

fn lifecycle_of(s: &str) -> Result<CustomerLifecycle, Corrupt> {
    serde_json::from_str(s).map_err(|e| Corrupt { what: "customer lifecycle", detail: e.to_string() })
}

fn mapping_of(s: &str) -> Result<TenantMapping, Corrupt> {
    serde_json::from_str(s).map_err(|e| Corrupt { what: "tenant mapping", detail: e.to_string() })
}

/// Takes the registry's write lock and draws this write's revision (see the module doc).
async fn begin(tx: &Transaction<'_>) -> Result<i64, tokio_postgres::Error> {
    tx.execute("SELECT id FROM meterd_registry_lock FOR UPDATE", &[]).await?;
    Ok(tx.query_one("SELECT nextval('meterd_registry_revision')", &[]).await?.get(0))
}

async fn load_customer(tx: &Transaction<'_>, key: &str) -> Result<Option<CustomerLifecycle>, RegistryError> {
    match tx.query_opt("SELECT lifecycle::text FROM meterd_customers WHERE customer = $1", &[&key]).await? {
        Some(r) => Ok(Some(lifecycle_of(r.get(0))?)),
        None => Ok(None),
    }
}

/// Writes a customer's lifecycle; `left_at_ms` is set when it just stopped accepting usage, kept while it stays
/// out, cleared when it is Active again (reinstated).
async fn store_customer(
    tx: &Transaction<'_>,
    key: &str,
    life: &CustomerLifecycle,
    left_now_ms: Option<UnixMillis>,
    revision: i64,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO meterd_customers (customer, lifecycle, accepts_usage, left_at_ms, revision)
         VALUES ($1, $2::text::jsonb, $3, CASE WHEN $3 THEN NULL ELSE $4::int8 END, $5)
         ON CONFLICT (customer) DO UPDATE
             SET lifecycle = excluded.lifecycle, accepts_usage = excluded.accepts_usage,
                 left_at_ms = CASE WHEN excluded.accepts_usage THEN NULL
                                   ELSE coalesce($4::int8, meterd_customers.left_at_ms) END,
                 revision = excluded.revision, updated_at = now()",
        &[&key, &json(life), &life.status.accepts_usage(), &left_now_ms, &revision],
    )
    .await?;
    if let Some(a) = &life.agreement_id {
        tx.execute(
            "INSERT INTO meterd_agreements (agreement_id, customer, revision) VALUES ($1, $2, $3)
             ON CONFLICT (agreement_id) DO UPDATE SET customer = excluded.customer, revision = excluded.revision
             WHERE meterd_agreements.customer <> excluded.customer",
            &[a, &key, &revision],
        )
        .await?;
    }
    Ok(())
}

/// What [`put_mapping`] did to the usage held under the tenant.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MappingPut {
    /// Open buckets moved to the identity.
    pub moved: u64,
    /// Sealed records that took the identity's AWS key.
    pub sent_as: u64,
    /// Sealed records whose AWS key another record has: merged into the identity's next free hour.
    pub merged: u64,
}

/// Maps a tenant (fleet-wide) and moves its usage in the shared ledger to the identity (module doc).
pub async fn put_mapping(
    client: &mut Client,
    m: &TenantMapping,
    now_ms: UnixMillis,
) -> Result<MappingPut, RegistryError> {
    let Some(ck) = customer_key(&m.identity) else {
        return Err(RegistryError::Invalid { field: "identity", message: "must be a marketplace identity".into() });
    };
    if m.tenant_id.is_empty() {
        return Err(RegistryError::Invalid { field: "tenant_id", message: "is required".into() });
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_put_mapping(client, m, &ck, now_ms).await {
            Err(RegistryError::Db(e)) if attempt < 6 && crate::forward::is_transient(&e) => {}
            other => return other,
        }
    }
}

async fn try_put_mapping(
    client: &mut Client,
    m: &TenantMapping,
    ck: &str,
    now_ms: UnixMillis,
) -> Result<MappingPut, RegistryError> {
    let tx = client.transaction().await?;
    let revision = begin(&tx).await?;
    tx.execute(
        "INSERT INTO meterd_tenant_mappings (tenant_id, mapping, revision) VALUES ($1, $2::text::jsonb, $3)
         ON CONFLICT (tenant_id) DO UPDATE SET mapping = excluded.mapping, revision = excluded.revision,
                                               updated_at = now()",
        &[&m.tenant_id, &json(m), &revision],
    )
    .await?;
    if load_customer(&tx, ck).await?.is_none() {
        let mut life = CustomerLifecycle::new(m.identity.clone(), None, m.agreement_id.clone());
        life.record(StatusChange {
            at_ms: now_ms,
            status: CustomerStatus::Active,
            source: format!("mapped from tenant {:?}", m.tenant_id),
            event_id: None,
            applied: true,
        });
        store_customer(&tx, ck, &life, None, revision).await?;
    } else if let Some(a) = &m.agreement_id {
        tx.execute(
            "INSERT INTO meterd_agreements (agreement_id, customer, revision) VALUES ($1, $2, $3)
             ON CONFLICT (agreement_id) DO UPDATE SET customer = excluded.customer, revision = excluded.revision
             WHERE meterd_agreements.customer <> excluded.customer",
            &[a, &ck, &revision],
        )
        .await?;
    }
    // Exclusive against forwards (FOR SHARE) and seals (FOR UPDATE) of the product: a forward that read no
    // mapping cannot add tenant usage after this moved it.
    tx.execute("INSERT INTO meterd_seal_marks (product) VALUES ($1) ON CONFLICT (product) DO NOTHING", &[&m.product])
        .await?;
    let sealed: Option<i64> = tx
        .query_one("SELECT sealed_through FROM meterd_seal_marks WHERE product = $1 FOR UPDATE", &[&m.product])
        .await?
        .get(0);
    // Buckets and held records may change keys below: a paged report in progress must notice (its stamp).
    tx.execute("UPDATE meterd_seal_marks SET moves = moves + 1 WHERE product = $1", &[&m.product]).await?;
    let open_hour = sealed.map_or(hour_start(now_ms), |s| hour_start(now_ms).max(s));
    let tenant = codec::identity_text(&Identity::Tenant(m.tenant_id.clone()));
    let identity = codec::identity_text(&m.identity);
    let mut out = MappingPut::default();
    let mut totals = Delta::default();

    let rows = tx
        .query(
            "DELETE FROM meterd_buckets WHERE product = $1 AND customer = $2
             RETURNING hour_ms, dimension, tags, total::text, events, late::text",
            &[&m.product, &tenant],
        )
        .await?;
    totals.buckets(&m.product, -(rows.len() as i64));
    let mut moved: Vec<(i64, String, String, Bucket)> = Vec::with_capacity(rows.len());
    for r in &rows {
        let events: i64 = r.get(4);
        let b = Bucket { total: codec::micros_of(r.get(3))?, events: events as u64, late: codec::micros_of(r.get(5))? };
        moved.push((r.get(0), r.get(1), r.get(2), b));
    }
    moved.sort_by(|a, b| (a.0, &a.1, &a.2).cmp(&(b.0, &b.1, &b.2)));
    for (hour_ms, dimension, tags, mut b) in moved {
        // Only a customer sealed early (it left) has records of open hours: such usage takes the identity's
        // next free hour, counted there as late, never a second record of one AWS key.
        let mut hour = hour_ms;
        if aws_key_taken(&tx, hour, &m.product, &identity, &m.identity, &dimension).await? {
            hour = free_hour(&tx, hour.max(open_hour), &m.product, &identity, &m.identity, &dimension).await?;
            b.late = b.total;
        }
        let opened = add_bucket(&tx, hour, &m.product, &identity, &dimension, &tags, &b).await?;
        totals.buckets(&m.product, i64::from(opened));
        totals.usage_moved(&m.product, &dimension, hour_ms, hour, b.total);
        out.moved += 1;
    }

    // Sealed records held under the tenant and never sent: each takes its AWS key now (frozen in `sent_as`), or is
    // merged into the identity's next free hour when another record has it.
    let held = tx
        .query(
            "SELECT record::text FROM meterd_records WHERE product = $1 AND customer = $2 AND state = 'sealed'
             ORDER BY hour_ms, dimension COLLATE \"C\" FOR UPDATE",
            &[&m.product, &tenant],
        )
        .await?;
    for row in &held {
        let r = codec::record_of(row.get(0))?;
        if r.sent_as.is_some() {
            continue;
        }
        let old = r.clone();
        let new = if !aws_key_taken(&tx, r.key.hour_ms, &m.product, &identity, &m.identity, &r.key.dimension).await? {
            out.sent_as += 1;
            SealedRecord { sent_as: Some(m.identity.clone()), ..r }
        } else {
            let into_hour_ms = free_hour(&tx, open_hour, &m.product, &identity, &m.identity, &r.key.dimension).await?;
            // The whole units ride in the identity's carry, sealed into its next record: every micro-unit stays
            // counted exactly once.
            let units = Micros::from_units(u64::from(r.quantity));
            tx.execute(
                "INSERT INTO meterd_carries (product, customer, dimension, carried) VALUES ($1, $2, $3, $4::text::numeric)
                 ON CONFLICT (product, customer, dimension) DO UPDATE
                     SET carried = meterd_carries.carried + excluded.carried",
                &[&m.product, &identity, &r.key.dimension, &codec::micros_text(units)],
            )
            .await?;
            // The carry is sealed with the series' next bucket: make sure there is one.
            let opened =
                add_bucket(&tx, into_hour_ms, &m.product, &identity, &r.key.dimension, "{}", &Bucket::default())
                    .await?;
            totals.buckets(&m.product, i64::from(opened));
            tracing::warn!(record = ?r.key, into = %m.identity.label(), units = r.quantity,
                "held usage maps to an AWS key another record already has: merged into the identity's next hour");
            out.merged += 1;
            let state = RecordState::Merged { into: m.identity.clone(), into_hour_ms, at_ms: now_ms };
            SealedRecord { state, ..r }
        };
        tx.execute(
            "UPDATE meterd_records SET record = $5::text::jsonb, state = $6, updated_at = now()
             WHERE hour_ms = $1 AND product = $2 AND customer = $3 AND dimension = $4",
            &[&new.key.hour_ms, &m.product, &tenant, &new.key.dimension, &codec::record_text(&new), &new.state.name()],
        )
        .await?;
        totals.replaced(&old, &new);
    }
    totals.write(&tx).await?;
    tx.commit().await?;
    Ok(out)
}

/// Adds `b` to a bucket; true when that opened it (a new row).
async fn add_bucket(
    tx: &Transaction<'_>,
    hour_ms: i64,
    product: &str,
    customer: &str,
    dimension: &str,
    tags: &str,
    b: &Bucket,
) -> Result<bool, tokio_postgres::Error> {
    let row = tx
        .query_one(
            "INSERT INTO meterd_buckets (hour_ms, product, customer, dimension, tags, total, events, late)
         VALUES ($1, $2, $3, $4, $5, $6::text::numeric, $7, $8::text::numeric)
         ON CONFLICT (hour_ms, product, customer, dimension, tags) DO UPDATE
             SET total = meterd_buckets.total + excluded.total,
                 events = meterd_buckets.events + excluded.events,
                 late = meterd_buckets.late + excluded.late
         RETURNING xmax = 0",
            &[
                &hour_ms,
                &product,
                &customer,
                &dimension,
                &tags,
                &codec::micros_text(b.total),
                &(b.events as i64),
                &codec::micros_text(b.late),
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// Whether a record that is (or will be) sent as `identity` has the AWS key (hour, product, identity,
/// dimension): the identity's own record, or a tenant's record sent as it. Carried and merged records are never
/// sent.
pub(crate) async fn aws_key_taken(
    tx: &Transaction<'_>,
    hour_ms: i64,
    product: &str,
    identity_text: &str,
    identity: &Identity,
    dimension: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(tx
        .query_opt(
            "SELECT 1 FROM meterd_records
             WHERE hour_ms = $1 AND product = $2 AND dimension = $4 AND state NOT IN ('carried', 'merged')
               AND (customer = $3 OR record->'sent_as' = $5::text::jsonb)
             LIMIT 1",
            &[&hour_ms, &product, &identity_text, &dimension, &json(identity)],
        )
        .await?
        .is_some())
}

async fn free_hour(
    tx: &Transaction<'_>,
    from_ms: i64,
    product: &str,
    identity_text: &str,
    identity: &Identity,
    dimension: &str,
) -> Result<i64, tokio_postgres::Error> {
    let mut hour = from_ms;
    while aws_key_taken(tx, hour, product, identity_text, identity, dimension).await? {
        hour += HOUR_MS;
    }
    Ok(hour)
}

/// Removes a tenant's mapping (a tombstone every agent's copy follows). False when it had none.
pub async fn remove_mapping(client: &mut Client, tenant_id: &str) -> Result<bool, RegistryError> {
    let tx = client.transaction().await?;
    let revision = begin(&tx).await?;
    let n = tx
        .execute(
            "UPDATE meterd_tenant_mappings SET mapping = NULL, revision = $2, updated_at = now()
             WHERE tenant_id = $1 AND mapping IS NOT NULL",
            &[&tenant_id, &revision],
        )
        .await?;
    tx.commit().await?;
    Ok(n > 0)
}

/// What a lifecycle event did, fleet-wide.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LifecycleApplied {
    /// False for a replay (its event id is in the history) and for an event older than the current status.
    pub applied: bool,
    pub status: Option<CustomerStatus>,
    /// The customer just stopped accepting usage: the submitter seals its open hours ([`seal_leaving`]).
    pub leaves: bool,
    /// A `Purchase Agreement *` event for an agreement the registry has never seen.
    pub unknown_agreement: bool,
    /// The customer's key ([`customer_key`]) the event applied to (also when it named an agreement).
    pub customer: Option<String>,
}

async fn subject_key(tx: &Transaction<'_>, subject: &Subject) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(match subject {
        Subject::License { license_arn, .. } => Some(customer_ref_key(&CustomerRef::License(license_arn.clone()))),
        Subject::Legacy { customer_identifier, .. } => {
            Some(customer_ref_key(&CustomerRef::Legacy(customer_identifier.clone())))
        }
        Subject::Agreement { agreement_id } => tx
            .query_opt("SELECT customer FROM meterd_agreements WHERE agreement_id = $1", &[agreement_id])
            .await?
            .map(|r| r.get(0)),
    })
}

/// Applies a lifecycle event to the fleet's registry at `now_ms` by the agent's rule
/// ([`CustomerLifecycle::apply`]): idempotent on replay, order-tolerant.
pub async fn apply_lifecycle(
    client: &mut Client,
    ev: &LifecycleEvent,
    now_ms: UnixMillis,
) -> Result<LifecycleApplied, RegistryError> {
    let tx = client.transaction().await?;
    let revision = begin(&tx).await?;
    let Some(key) = subject_key(&tx, &ev.subject).await? else {
        return Ok(LifecycleApplied { unknown_agreement: true, ..LifecycleApplied::default() });
    };
    let mut life = match load_customer(&tx, &key).await? {
        Some(l) => l,
        None => {
            let identity = match &ev.subject {
                Subject::License { license_arn, account_id } => Identity::Aws {
                    account_id: account_id.clone().unwrap_or_default(),
                    license_arn: license_arn.clone(),
                },
                Subject::Legacy { customer_identifier, .. } => {
                    Identity::Legacy { customer_identifier: customer_identifier.clone() }
                }
                Subject::Agreement { .. } => {
                    return Ok(LifecycleApplied { unknown_agreement: true, ..LifecycleApplied::default() });
                }
            };
            CustomerLifecycle::new(identity, ev.product_code.clone(), ev.agreement_id.clone())
        }
    };
    let t = life.apply(ev, now_ms);
    store_customer(&tx, &key, &life, t.leaves.then_some(now_ms), revision).await?;
    tx.commit().await?;
    Ok(LifecycleApplied {
        applied: t.applied,
        status: Some(life.status),
        leaves: t.leaves,
        unknown_agreement: false,
        customer: Some(key),
    })
}

/// What amending a customer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amended {
    pub previous: CustomerStatus,
    pub lifecycle: CustomerLifecycle,
    pub changed: bool,
}

/// Appends `entry` to a customer's history; with `reinstate`, moves a customer that is not Active back to
/// Active ([`CustomerLifecycle::amend`]). None: no such customer.
pub async fn amend_lifecycle(
    client: &mut Client,
    subject: &Subject,
    entry: StatusChange,
    reinstate: bool,
) -> Result<Option<Amended>, RegistryError> {
    let tx = client.transaction().await?;
    let revision = begin(&tx).await?;
    let Some(key) = subject_key(&tx, subject).await? else { return Ok(None) };
    let Some(mut life) = load_customer(&tx, &key).await? else { return Ok(None) };
    let previous = life.status.clone();
    if !life.amend(entry, reinstate) {
        return Ok(Some(Amended { previous, lifecycle: life, changed: false }));
    }
    store_customer(&tx, &key, &life, None, revision).await?;
    tx.commit().await?;
    Ok(Some(Amended { previous, lifecycle: life, changed: true }))
}

/// Keeps AWS's CustomerNotSubscribed answer for `identity` ([`CustomerLifecycle::note_not_subscribed`]).
pub async fn note_not_subscribed(
    client: &mut Client,
    identity: &Identity,
    at_ms: UnixMillis,
) -> Result<(), RegistryError> {
    let Some(key) = customer_key(identity) else { return Ok(()) };
    let tx = client.transaction().await?;
    let revision = begin(&tx).await?;
    let mut life =
        load_customer(&tx, &key).await?.unwrap_or_else(|| CustomerLifecycle::new(identity.clone(), None, None));
    life.note_not_subscribed(at_ms);
    store_customer(&tx, &key, &life, None, revision).await?;
    tx.commit().await?;
    Ok(())
}

/// Every registry change after `after`, read in one snapshot.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    /// A tenant and its mapping (None: removed).
    pub mappings: Vec<(String, Option<TenantMapping>)>,
    /// A customer's key ([`customer_key`]) and lifecycle.
    pub customers: Vec<(String, CustomerLifecycle)>,
    /// An agreement and its customer's key.
    pub agreements: Vec<(String, String)>,
    /// The revision the copy is at after applying these (`after` when nothing changed).
    pub revision: i64,
}

/// The registry's changes since revision `after` (0: everything), for an agent's copy.
pub async fn changes_since(client: &mut Client, after: i64) -> Result<Changes, RegistryError> {
    let tx = client
        .build_transaction()
        .read_only(true)
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await?;
    let mut out = Changes { revision: after, ..Changes::default() };
    for r in tx
        .query(
            "SELECT tenant_id, mapping::text, revision FROM meterd_tenant_mappings WHERE revision > $1 ORDER BY revision",
            &[&after],
        )
        .await?
    {
        let m: Option<&str> = r.get(1);
        out.mappings.push((r.get(0), m.map(mapping_of).transpose()?));
        out.revision = out.revision.max(r.get(2));
    }
    for r in tx
        .query(
            "SELECT customer, lifecycle::text, revision FROM meterd_customers WHERE revision > $1 ORDER BY revision",
            &[&after],
        )
        .await?
    {
        out.customers.push((r.get(0), lifecycle_of(r.get(1))?));
        out.revision = out.revision.max(r.get(2));
    }
    for r in tx
        .query(
            "SELECT agreement_id, customer, revision FROM meterd_agreements WHERE revision > $1 ORDER BY revision",
            &[&after],
        )
        .await?
    {
        out.agreements.push((r.get(0), r.get(1)));
        out.revision = out.revision.max(r.get(2));
    }
    tx.commit().await?;
    Ok(out)
}

/// The mappings of `tenants` that are for `product` (a forward counts a mapped tenant's usage under its
/// identity; a tenant mapped for another product stays held, as an unmapped one).
pub(crate) async fn mappings_for(
    tx: &Transaction<'_>,
    tenants: &[&str],
) -> Result<HashMap<String, TenantMapping>, RegistryError> {
    let mut out = HashMap::new();
    if tenants.is_empty() {
        return Ok(out);
    }
    for r in tx
        .query(
            "SELECT tenant_id, mapping::text FROM meterd_tenant_mappings WHERE tenant_id = ANY($1) AND mapping IS NOT NULL",
            &[&tenants],
        )
        .await?
    {
        out.insert(r.get(0), mapping_of(r.get(1))?);
    }
    Ok(out)
}

/// The standing ([`Standing::of`] their lifecycle) of the customers `keys` ([`customer_key`]) that the registry
/// knows, for a decision that gates them.
pub(crate) async fn standings_for(
    tx: &Transaction<'_>,
    keys: &[String],
) -> Result<HashMap<String, Standing>, RegistryError> {
    let mut out = HashMap::new();
    if keys.is_empty() {
        return Ok(out);
    }
    for r in
        tx.query("SELECT customer, lifecycle::text FROM meterd_customers WHERE customer = ANY($1)", &[&keys]).await?
    {
        out.insert(r.get(0), Standing::of(&lifecycle_of(r.get(1))?));
    }
    Ok(out)
}

/// A tenant's mapping (None: never mapped, or removed).
pub async fn mapping(client: &impl GenericClient, tenant_id: &str) -> Result<Option<TenantMapping>, RegistryError> {
    let row = client
        .query_opt(
            "SELECT mapping::text FROM meterd_tenant_mappings WHERE tenant_id = $1 AND mapping IS NOT NULL",
            &[&tenant_id],
        )
        .await?;
    Ok(row.map(|r| mapping_of(r.get(0))).transpose()?)
}

/// Every tenant mapping, by tenant id.
pub async fn mappings(client: &impl GenericClient) -> Result<Vec<TenantMapping>, RegistryError> {
    let rows = client
        .query(
            "SELECT mapping::text FROM meterd_tenant_mappings WHERE mapping IS NOT NULL ORDER BY tenant_id COLLATE \"C\"",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| mapping_of(r.get(0))).collect::<Result<_, _>>()?)
}

/// The lifecycle of the customer `key` ([`customer_key`]), when the registry knows it.
pub async fn lifecycle(client: &impl GenericClient, key: &str) -> Result<Option<CustomerLifecycle>, RegistryError> {
    let row = client.query_opt("SELECT lifecycle::text FROM meterd_customers WHERE customer = $1", &[&key]).await?;
    Ok(row.map(|r| lifecycle_of(r.get(0))).transpose()?)
}

/// Every customer's lifecycle, by customer key.
pub async fn lifecycles(client: &impl GenericClient) -> Result<Vec<CustomerLifecycle>, RegistryError> {
    let rows =
        client.query("SELECT lifecycle::text FROM meterd_customers ORDER BY customer COLLATE \"C\"", &[]).await?;
    Ok(rows.iter().map(|r| lifecycle_of(r.get(0))).collect::<Result<_, _>>()?)
}

/// How long after a customer left its open hours are still sealed by [`seal_leaving`]: its final hour, usage
/// rolled into the next hour (sealed once that hour begins), with room for a late forward. Afterwards any usage
/// of it left over is sealed by the ordinary seal (rolling past a taken key all the same), and this pass reads
/// nothing for it.
const LEAVING_WINDOW_MS: i64 = 3 * HOUR_MS;

/// The open buckets (up to the current hour: of `$4`, or of the database's clock when `$4` is NULL) of the
/// customers in `$2` (license ARNs) and `$3` (legacy customer identifiers), matched on the bucket's customer JSON.
const OPEN_OF_LEFT: &str = "hour_ms <= coalesce($4::int8, (extract(epoch FROM now()) * 1000)::int8) / 3600000 * 3600000
    AND (customer::jsonb -> 'Aws' ->> 'license_arn' = ANY($2)
         OR customer::jsonb -> 'Legacy' ->> 'customer_identifier' = ANY($3))";

fn leaving_filter(left: &HashMap<String, i64>) -> (Vec<String>, Vec<String>) {
    let mut arns = Vec::new();
    let mut ids = Vec::new();
    for k in left.keys() {
        if let Some(arn) = k.strip_prefix('l') {
            arns.push(arn.to_string());
        } else if let Some(id) = k.strip_prefix('g') {
            ids.push(id.to_string());
        }
    }
    (arns, ids)
}

/// What [`seal_leaving`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LeavingSealed {
    pub records: u64,
    pub buckets: u64,
}

/// Seals, under `lease`, the open hours (up to the current one) of every customer that stopped accepting usage:
/// its final reporting hour, with deadlines capped by [`final_hour_deadline`] from when it left — what the sled
/// store does in the same write as the event. Usage the fleet forwards for it later (acknowledged by an agent
/// whose copy of the registry had not caught up) is sealed the same way on a later pass, in the next hour nobody
/// has (flagged late): counted and visible, never a second record of one AWS key.
///
/// [`final_hour_deadline`]: meterd_core::domain::customer::final_hour_deadline
pub async fn seal_leaving(
    client: &mut Client,
    lease: &Lease,
    products: &[String],
    params: &SealParams,
) -> Result<LeavingSealed, crate::seal::SealError> {
    // Read without locks first: almost always nobody left lately, and this must not block forwards every tick.
    let left: HashMap<String, i64> = client
        .query(
            "SELECT customer, left_at_ms FROM meterd_customers
             WHERE NOT accepts_usage AND left_at_ms > (extract(epoch FROM now()) * 1000)::int8 - $1",
            &[&LEAVING_WINDOW_MS],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if left.is_empty() {
        return Ok(LeavingSealed::default());
    }
    seal_left(client, lease, products, &left, params, None).await
}

/// Seals, under `lease`, the open hours of the customer `key` ([`customer_key`]) that stopped accepting usage at
/// `params.now_ms`, by the caller's clock: the `Ledger` seam's "a customer that leaves has its open hours sealed"
/// for a caller that applied the event itself ([`apply_lifecycle`] returned `leaves`). The lease holder's
/// [`seal_leaving`] pass does the same for every agent's events, on the database's clock.
pub async fn seal_customer_left(
    client: &mut Client,
    lease: &Lease,
    products: &[String],
    key: &str,
    params: &SealParams,
) -> Result<LeavingSealed, crate::seal::SealError> {
    let left = HashMap::from([(key.to_string(), params.now_ms)]);
    seal_left(client, lease, products, &left, params, Some(params.now_ms)).await
}

/// The sealing part of [`seal_leaving`], for the customers `left` (key → when it left); `now_ms` None: the
/// database's clock.
async fn seal_left(
    client: &mut Client,
    lease: &Lease,
    products: &[String],
    left: &HashMap<String, i64>,
    params: &SealParams,
    now_ms: Option<i64>,
) -> Result<LeavingSealed, crate::seal::SealError> {
    let (arns, ids) = leaving_filter(left);
    let due = client
        .query_opt(
            &format!("SELECT 1 FROM meterd_buckets WHERE product = ANY($1) AND {OPEN_OF_LEFT} LIMIT 1"),
            &[&products, &arns, &ids, &now_ms],
        )
        .await?;
    if due.is_none() {
        return Ok(LeavingSealed::default());
    }
    let tx = client.transaction().await?;
    lease::fence(&tx, lease).await?;
    let mut products: Vec<&str> = products.iter().map(String::as_str).collect();
    products.sort_unstable();
    products.dedup();
    tx.execute(
        "INSERT INTO meterd_seal_marks (product) SELECT p FROM unnest($1::text[]) AS p ORDER BY p
         ON CONFLICT (product) DO NOTHING",
        &[&products],
    )
    .await?;
    tx.execute(
        "SELECT product FROM meterd_seal_marks WHERE product = ANY($1) ORDER BY product FOR UPDATE",
        &[&products],
    )
    .await?;
    // Open buckets become records below, without raising `sealed_through`: the report's stamp must still move.
    tx.execute("UPDATE meterd_seal_marks SET moves = moves + 1 WHERE product = ANY($1)", &[&products]).await?;
    let now_ms: i64 = match now_ms {
        Some(n) => n,
        None => tx.query_one("SELECT (extract(epoch FROM now()) * 1000)::int8", &[]).await?.get(0),
    };
    let params = SealParams { now_ms, ..params.clone() };
    let mut out = LeavingSealed::default();
    let mut totals = Delta::default();
    for product in products {
        let rows = tx
            .query(
                &format!(
                    "SELECT hour_ms, customer, dimension, tags, total::text, events, late::text FROM meterd_buckets
                     WHERE product = ANY($1) AND {OPEN_OF_LEFT}
                     ORDER BY hour_ms, customer COLLATE \"C\", dimension COLLATE \"C\", tags COLLATE \"C\""
                ),
                &[&vec![product], &arns, &ids, &Some(now_ms)],
            )
            .await?;
        let mut by_cap: std::collections::BTreeMap<i64, Vec<(BucketKey, Bucket)>> = Default::default();
        for r in &rows {
            let identity = codec::identity_of(r.get(1))?;
            let Some(left_at) = customer_key(&identity).and_then(|k| left.get(&k).copied()) else { continue };
            let events: i64 = r.get(5);
            let key = BucketKey {
                hour_ms: r.get(0),
                product: product.to_string(),
                identity,
                dimension: r.get(2),
                tags: codec::tags_of(r.get(3))?,
            };
            let bucket =
                Bucket { total: codec::micros_of(r.get(4))?, events: events as u64, late: codec::micros_of(r.get(6))? };
            let cap = meterd_core::domain::customer::final_hour_deadline(left_at, params.margin_ms);
            by_cap.entry(cap).or_default().push((key, bucket));
        }
        for (cap, buckets) in by_cap {
            out.buckets += buckets.len() as u64;
            for (k, _) in &buckets {
                let closed = tx
                    .execute(
                        "DELETE FROM meterd_buckets
                     WHERE hour_ms = $1 AND product = $2 AND customer = $3 AND dimension = $4 AND tags = $5",
                        &[
                            &k.hour_ms,
                            &product,
                            &codec::identity_text(&k.identity),
                            &k.dimension,
                            &codec::tags_text(&k.tags),
                        ],
                    )
                    .await?;
                totals.buckets(product, -(closed as i64));
            }
            let (s, taken) =
                crate::seal::seal_buckets(&tx, lease, product, buckets, &params, Some(cap), &mut totals).await?;
            out.records += s.records;
            // Sealed on a later pass, once its hour has begun (a record is never sent for an hour to come).
            crate::seal::roll_over(&tx, taken, |h| h + HOUR_MS, &mut totals).await?;
        }
    }
    totals.write(&tx).await?;
    tx.commit().await?;
    Ok(out)
}
