//! meterd's ground floor: the pure domain rules and the clock. No I/O, no transport, no configuration parsing.
//!
//! Its own crate so that both the agent (`meterd`) and the fleet backend (`meterd-fleet`, which applies the same
//! decisions inside PostgreSQL transactions) depend on it, and the agent can depend on the fleet backend.
//! The agent re-exports both modules (`meterd::domain`, `meterd::clock`), so paths inside it are unchanged.

pub mod clock;
pub mod domain;
