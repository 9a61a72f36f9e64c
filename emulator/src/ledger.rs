//! What AWS would bill: first write wins per (identity, dimension, UTC hour). The ledger holds only accepted
//! (billed) records; identical resends point back at the first one, different ones are refused.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::decimal::Quantity;
use crate::rules::{Allocation, Identity};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct DedupKey {
    pub identity: Identity,
    pub dimension: String,
    pub hour_start_ms: i64,
}

/// What a record for one key is compared by: the quantity by value (not its wire form, nor the exact timestamp
/// within the hour), and the allocations (tag sets with their quantities), which only decide whether a replay
/// is reported as carrying other allocations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    pub quantity: Quantity,
    pub allocations: Vec<Allocation>,
}

pub(crate) enum Lookup {
    Fresh,
    /// The same quantity as the accepted record with this MeteringRecordId: AWS defines `DuplicateRecord` as
    /// "the same customer, dimension, and time, but a different quantity", so this is an idempotent `Success`
    /// and the first record's allocations stay. `other_allocations` says the resend's allocations differ.
    Same {
        id: String,
        other_allocations: bool,
    },
    /// Same key, different quantity: not billed.
    Conflict,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerTag {
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerAllocation {
    /// Exact decimal string.
    pub quantity: String,
    pub tags: Vec<LedgerTag>,
}

/// One accepted (billed) record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub metering_record_id: String,
    /// `BatchMeterUsage` or `MeterUsage`.
    pub operation: String,
    pub product_code: String,
    pub customer_aws_account_id: Option<String>,
    pub license_arn: Option<String>,
    pub customer_identifier: Option<String>,
    pub dimension: String,
    /// Start of the record's UTC hour, epoch seconds.
    pub hour_start: i64,
    /// The record's timestamp as sent, epoch seconds.
    pub timestamp: f64,
    /// Exact decimal string.
    pub quantity: String,
    pub allocations: Vec<LedgerAllocation>,
    /// Emulator time of acceptance, epoch seconds.
    pub accepted_at: i64,
    pub request_id: String,
}

/// Billed quantity per product, customer and dimension.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Total {
    pub product_code: String,
    pub customer_aws_account_id: Option<String>,
    pub license_arn: Option<String>,
    pub customer_identifier: Option<String>,
    pub dimension: String,
    /// Exact decimal string.
    pub quantity: String,
    pub records: u64,
}

#[derive(Default)]
pub(crate) struct Ledger {
    entries: Vec<LedgerEntry>,
    index: HashMap<DedupKey, (Fingerprint, usize)>,
}

impl Ledger {
    pub fn lookup(&self, key: &DedupKey, fp: &Fingerprint) -> Lookup {
        match self.index.get(key) {
            None => Lookup::Fresh,
            Some((first, i)) if first.quantity == fp.quantity => Lookup::Same {
                id: self.entries[*i].metering_record_id.clone(),
                other_allocations: first.allocations != fp.allocations,
            },
            Some(_) => Lookup::Conflict,
        }
    }

    pub fn insert(&mut self, key: DedupKey, fp: Fingerprint, entry: LedgerEntry) {
        self.index.insert(key, (fp, self.entries.len()));
        self.entries.push(entry);
    }

    pub fn entries(&self) -> Vec<LedgerEntry> {
        self.entries.clone()
    }

    pub fn totals(&self) -> Vec<Total> {
        type K = (String, Option<String>, Option<String>, Option<String>, String);
        let mut sums: BTreeMap<K, (Quantity, u64)> = BTreeMap::new();
        for e in &self.entries {
            let k = (
                e.product_code.clone(),
                e.customer_aws_account_id.clone(),
                e.license_arn.clone(),
                e.customer_identifier.clone(),
                e.dimension.clone(),
            );
            let q = Quantity::parse_plain(&e.quantity).unwrap_or_default();
            let slot = sums.entry(k).or_default();
            slot.0 = slot.0.checked_add(q).unwrap_or(slot.0);
            slot.1 += 1;
        }
        sums.into_iter()
            .map(|((product_code, customer_aws_account_id, license_arn, customer_identifier, dimension), (q, n))| {
                Total {
                    product_code,
                    customer_aws_account_id,
                    license_arn,
                    customer_identifier,
                    dimension,
                    quantity: q.to_string(),
                    records: n,
                }
            })
            .collect()
    }
}

pub(crate) fn ledger_allocations(allocs: &[Allocation]) -> Vec<LedgerAllocation> {
    allocs
        .iter()
        .map(|a| LedgerAllocation {
            quantity: a.quantity.to_string(),
            tags: a.tags.iter().map(|(k, v)| LedgerTag { key: k.clone(), value: v.clone() }).collect(),
        })
        .collect()
}
