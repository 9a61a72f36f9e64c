//! Pure domain logic: quantities, events and buckets, validation, sealing and deadlines. No I/O here.

pub mod backlog;
pub mod catalog;
pub mod customer;
pub mod deadline;
pub mod deployment;
pub mod echo;
pub mod event;
pub mod ingest;
pub mod lifecycle;
pub mod quantity;
pub mod record;
pub mod seal;
pub mod silence;
pub mod validate;
