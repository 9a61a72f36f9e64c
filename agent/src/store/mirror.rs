//! Fleet mode: this agent's copy of the fleet-wide customer registry (tenant mappings, customer lifecycles,
//! agreements), kept in the spool under the same keys a standalone store uses, so the ingest gate (the
//! `Lookups` of `domain::ingest`), `Customers.Get/List` and the submitter's mapping of held records read it
//! unchanged. PostgreSQL is the registry of record (`meterd_fleet::registry`); this copy follows it by revision
//! (`crate::fleet::registry`) and is only ever written here, whole entries at a time, through the writer (so a
//! repack switching generations never loses one).

use super::{Store, StoreError, counts, decode, encode, keys, writer};
use crate::domain::customer::{CustomerLifecycle, TenantMapping};
use crate::domain::ingest::CustomerRef;

/// Registry entries to copy in: a tenant's mapping (None: removed), lifecycles, and agreement → customer.
#[derive(Debug, Default)]
pub struct RegistryCopy {
    pub mappings: Vec<(String, Option<TenantMapping>)>,
    pub customers: Vec<CustomerLifecycle>,
    pub agreements: Vec<(String, CustomerRef)>,
}

impl RegistryCopy {
    pub fn is_empty(&self) -> bool {
        self.mappings.is_empty() && self.customers.is_empty() && self.agreements.is_empty()
    }
}

impl Store {
    /// Writes `copy` in one atomic batch (durable before it returns).
    pub async fn mirror_registry(&self, copy: RegistryCopy) -> Result<(), StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.command(writer::Command::Mirror { copy, reply }, rx).await
    }
}

/// The batch that writes `copy`, on the writer thread: the customers-per-status counts move with the lifecycles
/// (`m/customers`, as every other lifecycle write keeps them).
pub(super) fn batch(db: &sled::Db, copy: &RegistryCopy) -> Result<super::batch::Batch, StoreError> {
    let mut batch = super::batch::Batch::default();
    for (tenant, m) in &copy.mappings {
        match m {
            Some(m) => batch.insert(keys::tenant_key(tenant), encode(m)),
            None => batch.remove(keys::tenant_key(tenant)),
        }
    }
    // The last revision of each customer only: the counts move once per customer, from what is stored.
    let mut latest = std::collections::BTreeMap::new();
    for life in &copy.customers {
        if let Some(k) = keys::lifecycle_key(&life.identity) {
            latest.insert(k, life);
        }
    }
    let mut changes = Vec::new();
    for (k, life) in latest {
        let before: Option<CustomerLifecycle> = db.get(&k)?.map(|v| decode(&v)).transpose()?;
        batch.insert(k, encode(life));
        changes.push((before, life));
    }
    if !changes.is_empty() {
        counts::customers_written(db, &mut batch, changes)?;
    }
    for (agreement, customer) in &copy.agreements {
        batch.insert(keys::agreement_key(agreement), keys::customer_key(customer));
    }
    Ok(batch)
}
