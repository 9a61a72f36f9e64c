//! Counts kept beside the data they count, so `status` and `/metrics` read them instead of scanning, and the
//! usage per hour that silence detection compares. In the order listed, after the version byte, then CRC32:
//!
//! | key              | version | fields                                                                          |
//! |------------------|---------|---------------------------------------------------------------------------------|
//! | `m/open_buckets` | 1       | open buckets (varint)                                                           |
//! | `m/customers`    | 1       | statuses (count, then per status: name, customers), not-subscribed customers    |
//! | `h/` hour        | 1       | hour (zigzag), product, dimension, total (micro-units), top (count, then per    |
//! |                  |         | entry: identity, recorded micro-units), complete (bool)                         |
//!
//! Statuses are written in name order (a `BTreeMap`), so one set of counts has one encoding.

use std::collections::BTreeMap;

use super::codec::{Reader, Writer};
use super::ledger::StoredIdentity;
use super::{DecodeError, stored_via};
use crate::domain::quantity::Micros;
use crate::store::counts::{CustomerCounts, OpenBuckets};
use crate::store::hour_totals::HourSummary;

pub const OPEN_BUCKETS_VERSION: u8 = 1;
pub const CUSTOMER_COUNTS_VERSION: u8 = 1;
pub const HOUR_SUMMARY_VERSION: u8 = 1;

/// `m/open_buckets` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredOpenBuckets(pub u64);

impl StoredOpenBuckets {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(OPEN_BUCKETS_VERSION);
        w.u64(self.0);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::open(bytes, OPEN_BUCKETS_VERSION)?;
        let v = StoredOpenBuckets(r.u64("open buckets")?);
        r.end()?;
        Ok(v)
    }
}

impl From<&OpenBuckets> for StoredOpenBuckets {
    fn from(n: &OpenBuckets) -> Self {
        StoredOpenBuckets(n.0)
    }
}

impl From<StoredOpenBuckets> for OpenBuckets {
    fn from(s: StoredOpenBuckets) -> Self {
        OpenBuckets(s.0)
    }
}

stored_via!(OpenBuckets, StoredOpenBuckets, "m/open_buckets");

/// `m/customers` value: customers per lifecycle status name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCustomerCounts {
    pub by_status: Vec<(String, u64)>,
    pub not_subscribed: u64,
}

impl StoredCustomerCounts {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(CUSTOMER_COUNTS_VERSION);
        w.u64(self.by_status.len() as u64);
        for (status, n) in &self.by_status {
            w.str(status);
            w.u64(*n);
        }
        w.u64(self.not_subscribed);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::open(bytes, CUSTOMER_COUNTS_VERSION)?;
        let n = r.count("statuses")?;
        let mut by_status = Vec::with_capacity(n);
        for _ in 0..n {
            by_status.push((r.str("status")?, r.u64("customers")?));
        }
        let v = StoredCustomerCounts { by_status, not_subscribed: r.u64("not subscribed")? };
        r.end()?;
        Ok(v)
    }
}

impl From<&CustomerCounts> for StoredCustomerCounts {
    fn from(c: &CustomerCounts) -> Self {
        StoredCustomerCounts {
            by_status: c.by_status.iter().map(|(s, n)| (s.clone(), *n)).collect(),
            not_subscribed: c.not_subscribed,
        }
    }
}

impl From<StoredCustomerCounts> for CustomerCounts {
    fn from(s: StoredCustomerCounts) -> Self {
        CustomerCounts {
            by_status: s.by_status.into_iter().collect::<BTreeMap<_, _>>(),
            not_subscribed: s.not_subscribed,
        }
    }
}

stored_via!(CustomerCounts, StoredCustomerCounts, "m/customers");

/// `h/` value: one hour of one product × dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHourSummary {
    pub hour_ms: i64,
    pub product: String,
    pub dimension: String,
    pub total: u128,
    pub top: Vec<(StoredIdentity, u128)>,
    pub complete: bool,
}

impl StoredHourSummary {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(HOUR_SUMMARY_VERSION);
        w.i64(self.hour_ms);
        w.str(&self.product);
        w.str(&self.dimension);
        w.varint(self.total);
        w.u64(self.top.len() as u64);
        for (identity, recorded) in &self.top {
            identity.put(&mut w);
            w.varint(*recorded);
        }
        w.bool(self.complete);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::open(bytes, HOUR_SUMMARY_VERSION)?;
        let hour_ms = r.i64("hour")?;
        let product = r.str("product")?;
        let dimension = r.str("dimension")?;
        let total = r.varint("total")?;
        let n = r.count("top")?;
        let mut top = Vec::with_capacity(n);
        for _ in 0..n {
            top.push((StoredIdentity::get(&mut r, "top identity")?, r.varint("top recorded")?));
        }
        let v = StoredHourSummary { hour_ms, product, dimension, total, top, complete: r.bool("complete")? };
        r.end()?;
        Ok(v)
    }
}

impl From<&HourSummary> for StoredHourSummary {
    fn from(s: &HourSummary) -> Self {
        StoredHourSummary {
            hour_ms: s.hour_ms,
            product: s.product.clone(),
            dimension: s.dimension.clone(),
            total: s.total.0,
            top: s.top.iter().map(|(i, q)| (i.into(), q.0)).collect(),
            complete: s.complete,
        }
    }
}

impl From<StoredHourSummary> for HourSummary {
    fn from(s: StoredHourSummary) -> Self {
        HourSummary {
            hour_ms: s.hour_ms,
            product: s.product,
            dimension: s.dimension,
            total: Micros(s.total),
            top: s.top.into_iter().map(|(i, q)| (i.into(), Micros(q))).collect(),
            complete: s.complete,
        }
    }
}

stored_via!(HourSummary, StoredHourSummary, "h/ hour summary");
