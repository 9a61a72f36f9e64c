//! Fleet mode: this agent's copy of the fleet-wide customer registry (tenant mappings, customer lifecycles,
//! agreements), kept in the spool under the same keys a standalone store uses, so the ingest gate (the
//! `Lookups` of `domain::ingest`), `Customers.Get/List` and the submitter's mapping of held records read it
//! unchanged. PostgreSQL is the registry of record (`meterd_fleet::registry`); this copy follows it by revision
//! (`crate::fleet::registry`) and is only ever written here, whole entries at a time, through the writer (so a
//! repack switching generations never loses one).

use super::{Store, StoreError, encode, keys, writer};
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
        let mut batch = sled::Batch::default();
        for (tenant, m) in &copy.mappings {
            match m {
                Some(m) => batch.insert(keys::tenant_key(tenant), encode(m)),
                None => batch.remove(keys::tenant_key(tenant)),
            }
        }
        for life in &copy.customers {
            if let Some(k) = keys::lifecycle_key(&life.identity) {
                batch.insert(k, encode(life));
            }
        }
        for (agreement, customer) in &copy.agreements {
            batch.insert(keys::agreement_key(agreement), keys::customer_key(customer));
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.command(writer::Command::Mirror { batch, reply }, rx).await
    }
}
