//! Pure domain logic: quantities, events, buckets and validation. No I/O here.

pub mod event;
pub mod quantity;
pub mod validate;
