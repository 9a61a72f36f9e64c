//! Exact quantities. The current model carries quantities either as int32 (`Quantity`) or as decimal strings with
//! at most six fractional digits (`QuantityAsDecimal`), and compares them by value (`17` == `"17.00"`). Holding
//! them as integer millionths keeps sums and comparisons exact; no float ever touches a quantity.

use std::fmt;

const SCALE: u128 = 1_000_000;

/// A non-negative quantity in millionths of a unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(u128);

impl Quantity {
    pub const ZERO: Quantity = Quantity(0);

    pub fn from_units(n: u64) -> Self {
        Quantity(u128::from(n) * SCALE)
    }

    /// Parses the model's decimal string shape `^(0|[1-9][0-9]{0,9})(\.[0-9]{1,6})?$`; anything else is `None`.
    pub fn parse_model_decimal(s: &str) -> Option<Self> {
        if s.is_empty() || s.len() > 17 {
            return None;
        }
        let (int, frac) = match s.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (s, None),
        };
        let int_ok = !int.is_empty()
            && int.len() <= 10
            && int.bytes().all(|b| b.is_ascii_digit())
            && (int == "0" || !int.starts_with('0'));
        if !int_ok {
            return None;
        }
        let mut value = int.parse::<u128>().ok()? * SCALE;
        if let Some(f) = frac {
            if f.is_empty() || f.len() > 6 || !f.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let padded = format!("{f:0<6}");
            value += padded.parse::<u128>().ok()?;
        }
        Some(Quantity(value))
    }

    /// Parses any plain non-negative decimal (used for totals read back from the inspection API).
    pub fn parse_plain(s: &str) -> Option<Self> {
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 6 {
            return None;
        }
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let i = int.parse::<u128>().ok()?;
        let f = if frac.is_empty() { 0 } else { format!("{frac:0<6}").parse::<u128>().ok()? };
        i.checked_mul(SCALE)?.checked_add(f).map(Quantity)
    }

    pub fn checked_add(self, other: Quantity) -> Option<Quantity> {
        self.0.checked_add(other.0).map(Quantity)
    }

    pub fn millionths(self) -> u128 {
        self.0
    }
}

impl fmt::Display for Quantity {
    /// Shortest exact form: `17`, `17.5`, `0.000001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let int = self.0 / SCALE;
        let frac = self.0 % SCALE;
        if frac == 0 {
            write!(f, "{int}")
        } else {
            let digits = format!("{frac:06}");
            write!(f, "{int}.{}", digits.trim_end_matches('0'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_decimal_pattern_is_enforced() {
        for ok in ["0", "17", "17.42", "0.000001", "9999999999.999999", "17.00"] {
            assert!(Quantity::parse_model_decimal(ok).is_some(), "{ok}");
        }
        for bad in ["", "-1", "01", "1.", ".5", "1.1234567", "12345678901", "1e3", " 1", "1,5", "+1", "NaN"] {
            assert!(Quantity::parse_model_decimal(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn compares_by_value_and_prints_exactly() {
        let a = Quantity::parse_model_decimal("17.00").unwrap();
        assert_eq!(a, Quantity::from_units(17));
        assert_eq!(a.to_string(), "17");
        let b = Quantity::parse_model_decimal("0.1").unwrap();
        let c = Quantity::parse_model_decimal("0.2").unwrap();
        assert_eq!(b.checked_add(c).unwrap().to_string(), "0.3");
        assert_eq!(Quantity::parse_model_decimal("0.000001").unwrap().to_string(), "0.000001");
        assert_eq!(Quantity::parse_plain("12.5"), Quantity::parse_model_decimal("12.50"));
    }
}
