//! The customer registry's values: tenant mappings (`t/`) and customers' lifecycles (`s/`).
//!
//! Tenant mapping, version 1: `version` · `tenant id` string · `product` string · `identity` (as in
//! [`super::ledger`]) · `agreement id` option string · `updated at` zigzag varint · CRC32.
//!
//! Customer lifecycle, version 1: `version` · `identity` · `product code` option string · `agreement id` option
//! string · `status` · `history` count, then per entry: `at` zigzag, `status`, `source` string, `event id` option
//! string, `applied` bool · `not subscribed at` option zigzag · CRC32. A status is a tag: 0 active;
//! 1 deprovisioning (since zigzag); 2 ended (since zigzag, reason string).

use super::codec::{Reader, Writer};
use super::ledger::StoredIdentity;
use super::{DecodeError, stored_via};
use crate::domain::customer::{CustomerLifecycle, CustomerStatus, StatusChange, TenantMapping};

pub const MAPPING_VERSION: u8 = 1;
pub const LIFECYCLE_VERSION: u8 = 1;

/// `t/` value: a tenant mapped to the identity AWS bills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMapping {
    pub tenant_id: String,
    pub product: String,
    pub identity: StoredIdentity,
    pub agreement_id: Option<String>,
    pub updated_at_ms: i64,
}

impl StoredMapping {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(MAPPING_VERSION);
        w.str(&self.tenant_id);
        w.str(&self.product);
        self.identity.put(&mut w);
        w.opt(self.agreement_id.as_deref(), |w, s| w.str(s));
        w.i64(self.updated_at_ms);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::open(bytes, MAPPING_VERSION)?;
        let v = StoredMapping {
            tenant_id: r.str("tenant id")?,
            product: r.str("product")?,
            identity: StoredIdentity::get(&mut r, "identity")?,
            agreement_id: r.opt("agreement id", |r| r.str("agreement id"))?,
            updated_at_ms: r.i64("updated at")?,
        };
        r.end()?;
        Ok(v)
    }
}

impl From<&TenantMapping> for StoredMapping {
    fn from(m: &TenantMapping) -> Self {
        StoredMapping {
            tenant_id: m.tenant_id.clone(),
            product: m.product.clone(),
            identity: (&m.identity).into(),
            agreement_id: m.agreement_id.clone(),
            updated_at_ms: m.updated_at_ms,
        }
    }
}

impl From<StoredMapping> for TenantMapping {
    fn from(s: StoredMapping) -> Self {
        TenantMapping {
            tenant_id: s.tenant_id,
            product: s.product,
            identity: s.identity.into(),
            agreement_id: s.agreement_id,
            updated_at_ms: s.updated_at_ms,
        }
    }
}

stored_via!(TenantMapping, StoredMapping, "t/ tenant mapping");

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredStatus {
    Active,
    Deprovisioning { since_ms: i64 },
    Ended { since_ms: i64, reason: String },
}

impl StoredStatus {
    fn put(&self, w: &mut Writer) {
        match self {
            StoredStatus::Active => w.u8(0),
            StoredStatus::Deprovisioning { since_ms } => {
                w.u8(1);
                w.i64(*since_ms);
            }
            StoredStatus::Ended { since_ms, reason } => {
                w.u8(2);
                w.i64(*since_ms);
                w.str(reason);
            }
        }
    }

    fn get(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        Ok(match r.u8(field)? {
            0 => StoredStatus::Active,
            1 => StoredStatus::Deprovisioning { since_ms: r.i64(field)? },
            2 => StoredStatus::Ended { since_ms: r.i64(field)?, reason: r.str(field)? },
            _ => return Err(r.bad_tag(field)),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredStatusChange {
    pub at_ms: i64,
    pub status: StoredStatus,
    pub source: String,
    pub event_id: Option<String>,
    pub applied: bool,
}

/// `s/` value: one marketplace customer's lifecycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLifecycle {
    pub identity: StoredIdentity,
    pub product_code: Option<String>,
    pub agreement_id: Option<String>,
    pub status: StoredStatus,
    pub history: Vec<StoredStatusChange>,
    pub not_subscribed_at_ms: Option<i64>,
}

impl StoredLifecycle {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(LIFECYCLE_VERSION);
        self.identity.put(&mut w);
        w.opt(self.product_code.as_deref(), |w, s| w.str(s));
        w.opt(self.agreement_id.as_deref(), |w, s| w.str(s));
        self.status.put(&mut w);
        w.u64(self.history.len() as u64);
        for h in &self.history {
            w.i64(h.at_ms);
            h.status.put(&mut w);
            w.str(&h.source);
            w.opt(h.event_id.as_deref(), |w, s| w.str(s));
            w.bool(h.applied);
        }
        w.opt(self.not_subscribed_at_ms, |w, t| w.i64(t));
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::open(bytes, LIFECYCLE_VERSION)?;
        let v = StoredLifecycle {
            identity: StoredIdentity::get(&mut r, "identity")?,
            product_code: r.opt("product code", |r| r.str("product code"))?,
            agreement_id: r.opt("agreement id", |r| r.str("agreement id"))?,
            status: StoredStatus::get(&mut r, "status")?,
            history: {
                let n = r.count("history")?;
                let mut all = Vec::new();
                for _ in 0..n {
                    all.push(StoredStatusChange {
                        at_ms: r.i64("history at")?,
                        status: StoredStatus::get(&mut r, "history status")?,
                        source: r.str("history source")?,
                        event_id: r.opt("history event id", |r| r.str("history event id"))?,
                        applied: r.bool("history applied")?,
                    });
                }
                all
            },
            not_subscribed_at_ms: r.opt("not subscribed at", |r| r.i64("not subscribed at"))?,
        };
        r.end()?;
        Ok(v)
    }
}

impl From<&CustomerStatus> for StoredStatus {
    fn from(s: &CustomerStatus) -> Self {
        match s {
            CustomerStatus::Active => StoredStatus::Active,
            CustomerStatus::Deprovisioning { since_ms } => StoredStatus::Deprovisioning { since_ms: *since_ms },
            CustomerStatus::Ended { since_ms, reason } => {
                StoredStatus::Ended { since_ms: *since_ms, reason: reason.clone() }
            }
        }
    }
}

impl From<StoredStatus> for CustomerStatus {
    fn from(s: StoredStatus) -> Self {
        match s {
            StoredStatus::Active => CustomerStatus::Active,
            StoredStatus::Deprovisioning { since_ms } => CustomerStatus::Deprovisioning { since_ms },
            StoredStatus::Ended { since_ms, reason } => CustomerStatus::Ended { since_ms, reason },
        }
    }
}

impl From<&CustomerLifecycle> for StoredLifecycle {
    fn from(c: &CustomerLifecycle) -> Self {
        StoredLifecycle {
            identity: (&c.identity).into(),
            product_code: c.product_code.clone(),
            agreement_id: c.agreement_id.clone(),
            status: (&c.status).into(),
            history: c
                .history
                .iter()
                .map(|h| StoredStatusChange {
                    at_ms: h.at_ms,
                    status: (&h.status).into(),
                    source: h.source.clone(),
                    event_id: h.event_id.clone(),
                    applied: h.applied,
                })
                .collect(),
            not_subscribed_at_ms: c.not_subscribed_at_ms,
        }
    }
}

impl From<StoredLifecycle> for CustomerLifecycle {
    fn from(s: StoredLifecycle) -> Self {
        CustomerLifecycle {
            identity: s.identity.into(),
            product_code: s.product_code,
            agreement_id: s.agreement_id,
            status: s.status.into(),
            history: s
                .history
                .into_iter()
                .map(|h| StatusChange {
                    at_ms: h.at_ms,
                    status: h.status.into(),
                    source: h.source,
                    event_id: h.event_id,
                    applied: h.applied,
                })
                .collect(),
            not_subscribed_at_ms: s.not_subscribed_at_ms,
        }
    }
}

stored_via!(CustomerLifecycle, StoredLifecycle, "s/ customer lifecycle");
