//! What a submitter needs from the ledger it drains — and nothing else — so the same submitter drains the local
//! sled store (one agent) or the fleet's shared ledger in PostgreSQL (the elected agent of the account,
//! `crate::fleet::leader`).

use std::sync::Arc;

use crate::clock::UnixMillis;
use crate::domain::customer::TenantMapping;
use crate::domain::event::Identity;
use crate::domain::record::SealedRecord;
use crate::store::seam::BoxFuture;
use crate::store::{Ledger, StoreError};

pub trait Queue: Send + Sync {
    /// Pending records (Sealed or InFlight), most urgent deadline first, at most `limit`.
    fn pending_records(&self, limit: usize) -> BoxFuture<'_, Result<Vec<SealedRecord>, StoreError>>;
    /// New states of sealed records, durably, all or nothing (content frozen, terminal states final).
    fn update_records(&self, records: Vec<SealedRecord>) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The marketplace identity a held tenant's record is sent as.
    fn mapping(&self, tenant_id: &str) -> Result<Option<TenantMapping>, StoreError>;
    /// AWS said the customer is not subscribed: kept in the customer registry.
    fn note_not_subscribed(&self, identity: Identity, at_ms: UnixMillis) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// The single-agent queue: the ledger's own sealed records.
pub struct LedgerQueue(pub Arc<dyn Ledger>);

impl Queue for LedgerQueue {
    fn pending_records(&self, limit: usize) -> BoxFuture<'_, Result<Vec<SealedRecord>, StoreError>> {
        let r = self.0.pending_records(limit);
        Box::pin(async move { r })
    }
    fn update_records(&self, records: Vec<SealedRecord>) -> BoxFuture<'_, Result<(), StoreError>> {
        self.0.update_records(records)
    }
    fn mapping(&self, tenant_id: &str) -> Result<Option<TenantMapping>, StoreError> {
        self.0.mapping(tenant_id)
    }
    fn note_not_subscribed(&self, identity: Identity, at_ms: UnixMillis) -> BoxFuture<'_, Result<(), StoreError>> {
        self.0.note_not_subscribed(identity, at_ms)
    }
}
