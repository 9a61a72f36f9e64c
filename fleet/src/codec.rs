//! How the agent's domain values are written in the ledger's columns: a customer ([`Identity`]) and a tag set
//! ([`TagSet`]) as canonical JSON text (serde_json keeps the field order of the type and a `BTreeMap`'s sorted
//! keys, so equal values give equal text and can be keys), quantities ([`Micros`], a u128) as decimal text cast to
//! `numeric`, and a sealed record as JSON text (read back as text: a JSON number beyond u64 must not pass through
//! a float).

use meterd_core::domain::event::{Identity, TagSet};
use meterd_core::domain::quantity::Micros;
use meterd_core::domain::record::SealedRecord;

/// A value read from the ledger that does not decode: the database was written by something else.
#[derive(Debug, thiserror::Error)]
#[error("fleet database holds an unreadable {what}: {detail}")]
pub struct Corrupt {
    pub what: &'static str,
    pub detail: String,
}

fn corrupt(what: &'static str, detail: impl std::fmt::Display) -> Corrupt {
    Corrupt { what, detail: detail.to_string() }
}

pub fn identity_text(i: &Identity) -> String {
    serde_json::to_string(i).expect("an identity always encodes")
}

pub fn identity_of(s: &str) -> Result<Identity, Corrupt> {
    serde_json::from_str(s).map_err(|e| corrupt("customer", format!("{s:?}: {e}")))
}

pub fn tags_text(t: &TagSet) -> String {
    serde_json::to_string(t).expect("a tag set always encodes")
}

pub fn tags_of(s: &str) -> Result<TagSet, Corrupt> {
    serde_json::from_str(s).map_err(|e| corrupt("tag set", format!("{s:?}: {e}")))
}

/// Exact micro-units as decimal text (bound as `text`, cast to `numeric` in SQL).
pub fn micros_text(m: Micros) -> String {
    m.0.to_string()
}

/// A `numeric` read back as text.
pub fn micros_of(s: &str) -> Result<Micros, Corrupt> {
    s.parse::<u128>().map(Micros).map_err(|e| corrupt("quantity", format!("{s:?}: {e}")))
}

pub fn record_text(r: &SealedRecord) -> String {
    serde_json::to_string(r).expect("a record always encodes")
}

pub fn record_of(s: &str) -> Result<SealedRecord, Corrupt> {
    serde_json::from_str(s).map_err(|e| corrupt("sealed record", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_equal_values_encode_alike() {
        let i = Identity::Aws { account_id: "123456789012".into(), license_arn: "arn:l".into() };
        assert_eq!(identity_of(&identity_text(&i)).unwrap(), i);
        let a: TagSet = [("b".to_string(), "2".to_string()), ("a".to_string(), "1".to_string())].into();
        let b: TagSet = [("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())].into();
        assert_eq!(tags_text(&a), tags_text(&b));
        let big = Micros(u128::MAX);
        assert_eq!(micros_of(&micros_text(big)).unwrap(), big);
        assert!(micros_of("-1").is_err() && identity_of("{").is_err());
    }
}
