//! `ack = "shared"`: an ingest answers only after the shared ledger committed it. The event is written to the
//! spool first (as with `ack = "local"`), then the outbox is forwarded before the answer; while PostgreSQL cannot
//! be reached the call fails with UNAVAILABLE within [`SHARED_ACK_TIMEOUT`], and the SDK's retry (same keys)
//! replays locally and waits again. For hosts whose disk does not outlive the process.

use std::sync::Arc;
use std::time::Duration;

use super::Node;
use crate::clock::SharedClock;
use crate::store::outbox::AckGate;
use crate::store::seam::BoxFuture;
use crate::store::{Store, StoreError};

/// How long a call waits for the shared ledger before it fails (UNAVAILABLE).
pub const SHARED_ACK_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SharedAck {
    pub node: Arc<Node>,
    /// The same store whose gate this is (a handle: the store lives as long as the process).
    pub store: Store,
    pub clock: SharedClock,
    client: tokio::sync::Mutex<Option<meterd_fleet::Client>>,
}

impl SharedAck {
    pub fn new(node: Arc<Node>, store: Store, clock: SharedClock) -> Self {
        SharedAck { node, store, clock, client: Default::default() }
    }
}

fn unavailable(why: String) -> StoreError {
    StoreError::Io(format!("{why} (fleet.ack = \"shared\": acknowledged only once the shared ledger has it; retry)"))
}

impl AckGate for SharedAck {
    fn committed(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            // One forward at a time: calls queue here, and the first forward carries every call's events.
            let mut guard = self.client.lock().await;
            // Our events were written before we got here: an empty outbox means a forward already carried them.
            if self.store.outbox_is_empty()? {
                return Ok(());
            }
            let forwarded = tokio::time::timeout(SHARED_ACK_TIMEOUT, async {
                if guard.is_none() {
                    *guard = Some(self.node.db.connect().await.map_err(|e| super::chain(&e))?);
                }
                let client = guard.as_mut().expect("connected");
                loop {
                    match super::forwarder::step(&self.node, &self.store, &self.clock, client).await {
                        Ok(true) => {}
                        Ok(false) => return Ok(()),
                        Err(e) => return Err(super::chain(&e)),
                    }
                }
            })
            .await;
            match forwarded {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => {
                    *guard = None;
                    self.node.status.failed(&e);
                    Err(unavailable(super::describe(&e)))
                }
                Err(_) => {
                    *guard = None;
                    Err(unavailable(format!("fleet database: no commit within {SHARED_ACK_TIMEOUT:?}")))
                }
            }
        })
    }
}
