//! One submitter per AWS account: a lease row with a fencing epoch.
//!
//! A lease alone does not fence: a submitter paused past its lease (GC, a stopped VM, SIGSTOP) wakes up still
//! believing it leads. So every change of holder increments `epoch`, and every ledger write a submitter makes
//! runs [`fence`] in the same transaction — the row is read `FOR SHARE`, which also blocks a takeover until that
//! transaction ends — and is refused when the epoch moved on. What a stale leader may still do outside the
//! database (resend a sealed, frozen record to AWS) is harmless by construction: the content is identical and AWS
//! answers it idempotently.
//!
//! The holder also keeps a local trust window shorter than the lease (`valid_until`): it stops acting on its own
//! before the database would let another node take over, so two live leaders only happen when a process is paused
//! — the case the epoch covers.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, GenericClient};

use crate::nodes::Registration;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "the submitter lease of account {account:?} moved on (epoch {held} is no longer current): this agent \
         stopped submitting for it"
    )]
    Fenced { account: String, held: i64 },
    #[error("fleet database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// A lease this process holds.
#[derive(Debug, Clone)]
pub struct Lease {
    pub account: String,
    pub holder: Registration,
    pub epoch: i64,
    /// The local trust window: act as the submitter only before this instant.
    pub valid_until: Instant,
}

impl Lease {
    pub fn is_valid(&self, now: Instant) -> bool {
        now < self.valid_until
    }
}

/// The lease duration and the safety margin kept off its end locally.
#[derive(Debug, Clone, Copy)]
pub struct Terms {
    pub ttl: Duration,
    pub margin: Duration,
}

impl Default for Terms {
    fn default() -> Self {
        // A dead leader is replaced within ~10 s; the margin covers a slow round trip and clock rate drift.
        Terms { ttl: Duration::from_secs(10), margin: Duration::from_secs(3) }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Takes the lease of `account` when it is free, expired, or already ours (same incarnation: renewed with the
/// same epoch). `None` when another live holder has it.
pub async fn acquire(
    client: &Client,
    account: &str,
    me: &Registration,
    terms: Terms,
) -> Result<Option<Lease>, LeaseError> {
    let started = Instant::now();
    let row = client
        .query_opt(
            "INSERT INTO meterd_leases (account, holder, incarnation, epoch, acquired_at, expires_at)
             VALUES ($1, $2, $3, 1, now(), now() + make_interval(secs => $4::float8))
             ON CONFLICT (account) DO UPDATE
                 SET holder = excluded.holder,
                     incarnation = excluded.incarnation,
                     epoch = CASE WHEN meterd_leases.incarnation = excluded.incarnation
                                  THEN meterd_leases.epoch ELSE meterd_leases.epoch + 1 END,
                     acquired_at = CASE WHEN meterd_leases.incarnation = excluded.incarnation
                                        THEN meterd_leases.acquired_at ELSE now() END,
                     expires_at = excluded.expires_at
                 WHERE meterd_leases.incarnation = excluded.incarnation OR meterd_leases.expires_at <= now()
             RETURNING epoch",
            &[&account, &me.node_id, &me.incarnation, &secs(terms.ttl)],
        )
        .await?;
    Ok(row.map(|r| Lease {
        account: account.to_string(),
        holder: me.clone(),
        epoch: r.get(0),
        valid_until: started + terms.ttl.saturating_sub(terms.margin),
    }))
}

/// Extends a held lease. `Fenced` when it was lost (expired and taken, or expired at all: an expired lease is not
/// renewed, the holder must acquire again and may get a new epoch).
pub async fn renew(client: &Client, lease: &mut Lease, terms: Terms) -> Result<(), LeaseError> {
    let started = Instant::now();
    let n = client
        .execute(
            "UPDATE meterd_leases SET expires_at = now() + make_interval(secs => $4::float8)
             WHERE account = $1 AND incarnation = $2 AND epoch = $3 AND expires_at > now()",
            &[&lease.account, &lease.holder.incarnation, &lease.epoch, &secs(terms.ttl)],
        )
        .await?;
    if n == 1 {
        lease.valid_until = started + terms.ttl.saturating_sub(terms.margin);
        Ok(())
    } else {
        lease.valid_until = started;
        Err(LeaseError::Fenced { account: lease.account.clone(), held: lease.epoch })
    }
}

/// Gives the lease up at once (a clean shutdown), so a follower need not wait for it to expire. The epoch stays:
/// the next holder gets epoch + 1.
pub async fn resign(client: &Client, lease: &Lease) -> Result<(), LeaseError> {
    client
        .execute(
            "UPDATE meterd_leases SET expires_at = now() WHERE account = $1 AND incarnation = $2 AND epoch = $3",
            &[&lease.account, &lease.holder.incarnation, &lease.epoch],
        )
        .await?;
    Ok(())
}

/// Inside a ledger transaction: proceeds only while `lease` is current, and holds the lease row `FOR SHARE` until
/// the transaction ends, so no takeover commits in between.
pub async fn fence(tx: &impl GenericClient, lease: &Lease) -> Result<(), LeaseError> {
    let row = tx
        .query_opt(
            "SELECT 1 FROM meterd_leases
             WHERE account = $1 AND incarnation = $2 AND epoch = $3 AND expires_at > now()
             FOR SHARE",
            &[&lease.account, &lease.holder.incarnation, &lease.epoch],
        )
        .await?;
    match row {
        Some(_) => Ok(()),
        None => Err(LeaseError::Fenced { account: lease.account.clone(), held: lease.epoch }),
    }
}

/// Who holds each account's lease (for `status`): account, holder node id, epoch, milliseconds until it expires
/// (negative once expired).
pub async fn holders(client: &Client) -> Result<Vec<(String, String, i64, i64)>, LeaseError> {
    let rows = client
        .query(
            "SELECT account, holder, epoch, (extract(epoch FROM expires_at - now())::float8 * 1000)::bigint
             FROM meterd_leases ORDER BY account",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect())
}
