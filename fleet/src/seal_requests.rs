//! Seal requests (`meterd flush` in fleet mode, migration 4): any agent may ask for an account's ended hours to
//! be sealed now; only the account's lease holder seals (fenced by its epoch, [`crate::seal::seal`]), so a flush
//! on another agent never makes a second sealer. The request is a row the holder reads at each tick: durable, so
//! a takeover in between still honours it.

use meterd_core::clock::UnixMillis;
use tokio_postgres::GenericClient;

/// Asks that every hour of `account` before `cutoff_ms` be sealed (a later request only moves it forward).
pub async fn request(
    client: &impl GenericClient,
    account: &str,
    cutoff_ms: UnixMillis,
    node_id: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO meterd_seal_requests (account, cutoff_ms, requested_by) VALUES ($1, $2, $3)
             ON CONFLICT (account) DO UPDATE
             SET cutoff_ms = GREATEST(meterd_seal_requests.cutoff_ms, excluded.cutoff_ms),
                 requested_by = excluded.requested_by, requested_at = now()",
            &[&account, &cutoff_ms, &node_id],
        )
        .await?;
    Ok(())
}

/// The cutoff asked for `account`, if any.
pub async fn requested(
    client: &impl GenericClient,
    account: &str,
) -> Result<Option<UnixMillis>, tokio_postgres::Error> {
    Ok(client
        .query_opt("SELECT cutoff_ms FROM meterd_seal_requests WHERE account = $1", &[&account])
        .await?
        .map(|r| r.get(0)))
}

/// Removes `account`'s request once the products are sealed through `sealed_through` (a newer, later request
/// stays).
pub async fn done(
    client: &impl GenericClient,
    account: &str,
    sealed_through: UnixMillis,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM meterd_seal_requests WHERE account = $1 AND cutoff_ms <= $2",
            &[&account, &sealed_through],
        )
        .await?;
    Ok(())
}

/// Sealed records of `product` in hours `[from, to)`: (records to submit, fraction-only records). What a flush
/// reports it sealed.
pub async fn sealed_between(
    client: &impl GenericClient,
    product: &str,
    from: UnixMillis,
    to: UnixMillis,
) -> Result<(u64, u64), tokio_postgres::Error> {
    let r = client
        .query_one(
            "SELECT count(*) FILTER (WHERE state <> 'carried'), count(*) FILTER (WHERE state = 'carried')
             FROM meterd_records WHERE product = $1 AND hour_ms >= $2 AND hour_ms < $3",
            &[&product, &from, &to],
        )
        .await?;
    let (a, b): (i64, i64) = (r.get(0), r.get(1));
    Ok((a as u64, b as u64))
}

/// Live nodes (heartbeat within `down_after`) whose forward watermark is short of `until_ms`: what a seal up to
/// `until_ms` still waits for.
pub async fn lagging(
    client: &impl GenericClient,
    until_ms: UnixMillis,
    down_after: std::time::Duration,
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT n.node_id FROM meterd_nodes n LEFT JOIN meterd_watermarks w USING (node_id)
             WHERE n.heartbeat_at > now() - make_interval(secs => $1::float8)
               AND (w.watermark_ms IS NULL OR w.watermark_ms < $2)
             ORDER BY n.node_id",
            &[&down_after.as_secs_f64(), &until_ms],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
