//! Fleet mode (`[fleet]`, `docs/fleet.md`): this agent's local sled store becomes a spool of acknowledged events
//! ([`crate::store::outbox`]); a forwarder ships it to the shared ledger in PostgreSQL ([`forwarder`]); the
//! agent elected in PostgreSQL for an account seals the shared ledger and submits its records ([`leader`]).

pub mod config;
