//! Exact decimal quantities as integer millionths.
//!
//! Usage is money: floats are never used. Every quantity is parsed from its decimal string into an integer
//! count of micro-units (10^-6), summed exactly, and only ever rounded down to whole units when an hour is
//! sealed (the remainder is carried).

use std::fmt;

/// Micro-units per unit: the API accepts up to 6 decimal places.
pub const SCALE: u64 = 1_000_000;
/// AWS's `Quantity` is an int32; one event may not exceed what one record can carry.
pub const MAX_EVENT_UNITS: u64 = i32::MAX as u64;

/// A sum that does not fit: in an accounting product this stops the write instead of dropping a term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("quantity overflow")]
pub struct Overflow;

/// A non-negative exact quantity in micro-units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Micros(pub u128);

/// Variants that quote the caller's value hold it already quoted and bounded ([`super::echo::echo`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("is required (a decimal string such as \"3\" or \"0.25\")")]
    Empty,
    #[error("must not be negative")]
    Negative,
    #[error("{0} is not a plain decimal number (digits, optionally '.' and 1-6 more digits)")]
    Malformed(String),
    #[error("{0} has more than 6 decimal places")]
    TooPrecise(String),
    #[error("{0} exceeds the per-event maximum of 2147483647")]
    TooLarge(String),
}

impl Micros {
    pub const ZERO: Micros = Micros(0);

    /// `self + other`, or [`Overflow`].
    pub fn try_add(self, other: Micros) -> Result<Micros, Overflow> {
        self.checked_add(other).ok_or(Overflow)
    }

    /// The exact sum of `items`, or [`Overflow`].
    pub fn try_sum(items: impl IntoIterator<Item = Micros>) -> Result<Micros, Overflow> {
        items.into_iter().try_fold(Micros::ZERO, Micros::try_add)
    }

    pub fn from_units(units: u64) -> Self {
        Micros(u128::from(units) * u128::from(SCALE))
    }

    /// Parses an event quantity: `digits[.digits{1,6}]`, no sign, exponent, spaces or separators.
    pub fn parse_event(s: &str) -> Result<Self, QuantityError> {
        if s.is_empty() {
            return Err(QuantityError::Empty);
        }
        if s.starts_with('-') {
            return Err(QuantityError::Negative);
        }
        let (int, frac) = match s.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (s, None),
        };
        let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(int) || frac.is_some_and(|f| !all_digits(f)) {
            return Err(QuantityError::Malformed(super::echo::echo(s)));
        }
        let frac = frac.unwrap_or("");
        if frac.len() > 6 {
            return Err(QuantityError::TooPrecise(super::echo::echo(s)));
        }
        let int_trimmed = int.trim_start_matches('0');
        // More than 10 significant integer digits can never be <= i32::MAX; stop before u64 overflow.
        if int_trimmed.len() > 10 {
            return Err(QuantityError::TooLarge(super::echo::echo(s)));
        }
        let units: u64 = if int_trimmed.is_empty() { 0 } else { int_trimmed.parse().expect("checked digits") };
        let mut frac_micros: u64 = 0;
        for (i, b) in frac.bytes().enumerate() {
            frac_micros += u64::from(b - b'0') * 10u64.pow(5 - i as u32);
        }
        let micros = Micros(u128::from(units) * u128::from(SCALE) + u128::from(frac_micros));
        if micros > Micros::from_units(MAX_EVENT_UNITS) {
            return Err(QuantityError::TooLarge(super::echo::echo(s)));
        }
        Ok(micros)
    }

    pub fn checked_add(self, other: Micros) -> Option<Micros> {
        self.0.checked_add(other.0).map(Micros)
    }

    /// Whole units and the remaining fraction (in micro-units).
    pub fn split_units(self) -> (u128, Micros) {
        (self.0 / u128::from(SCALE), Micros(self.0 % u128::from(SCALE)))
    }
}

/// Canonical form: no trailing zeros in the fraction, "0" for zero.
impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (units, frac) = self.split_units();
        if frac.0 == 0 {
            return write!(f, "{units}");
        }
        let digits = format!("{:06}", frac.0);
        write!(f, "{units}.{}", digits.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_valid_forms() {
        assert_eq!(Micros::parse_event("0").unwrap(), Micros(0));
        assert_eq!(Micros::parse_event("3").unwrap(), Micros(3_000_000));
        assert_eq!(Micros::parse_event("0.25").unwrap(), Micros(250_000));
        assert_eq!(Micros::parse_event("12.000001").unwrap(), Micros(12_000_001));
        assert_eq!(Micros::parse_event("007.5").unwrap(), Micros(7_500_000));
        assert_eq!(Micros::parse_event("2147483647").unwrap(), Micros::from_units(2147483647));
        assert_eq!(Micros::parse_event("2147483647.000000").unwrap(), Micros::from_units(2147483647));
    }

    #[test]
    fn refuses_invalid_forms_precisely() {
        use QuantityError::*;
        assert_eq!(Micros::parse_event(""), Err(Empty));
        assert_eq!(Micros::parse_event("-1"), Err(Negative));
        for bad in ["+1", "1e3", "1.", ".5", " 1", "1 ", "1,000", "0x10", "NaN", "inf", "1.2.3", "١"] {
            assert!(matches!(Micros::parse_event(bad), Err(Malformed(_))), "{bad}");
        }
        assert!(matches!(Micros::parse_event("0.0000001"), Err(TooPrecise(_))));
        assert!(matches!(Micros::parse_event("2147483647.000001"), Err(TooLarge(_))));
        assert!(matches!(Micros::parse_event("2147483648"), Err(TooLarge(_))));
        assert!(matches!(Micros::parse_event("99999999999999999999999"), Err(TooLarge(_))));
    }

    #[test]
    fn displays_canonically() {
        assert_eq!(Micros(0).to_string(), "0");
        assert_eq!(Micros(250_000).to_string(), "0.25");
        assert_eq!(Micros(12_000_001).to_string(), "12.000001");
        assert_eq!(Micros(5_000_000).to_string(), "5");
    }

    proptest! {
        #[test]
        fn round_trips_through_display(units in 0u64..=MAX_EVENT_UNITS, frac in 0u64..SCALE) {
            let m = Micros(u128::from(units) * u128::from(SCALE) + u128::from(frac));
            prop_assume!(m <= Micros::from_units(MAX_EVENT_UNITS));
            prop_assert_eq!(Micros::parse_event(&m.to_string()).unwrap(), m);
        }

        #[test]
        fn never_panics(s in "\\PC{0,24}") {
            let _ = Micros::parse_event(&s);
        }
    }
}
