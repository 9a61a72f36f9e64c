//! The background pipeline: the sealer (ended hours + grace → frozen records) and one submitter per
//! account. `flush` seals every ended hour at once and wakes the submitters.

use std::sync::Arc;

use tokio::sync::{Notify, watch};

use crate::clock::{HOUR_MS, SharedClock, hour_start};
use crate::config::Config;
use crate::domain::seal::SealPolicy;
use crate::store::{Ledger, SealParams, SealSummary, StoreError};
use crate::submit::{SubmitStats, Submitter};

#[derive(Clone)]
pub struct Pipeline {
    config: Arc<Config>,
    seal_policy: SealPolicy,
    store: Arc<dyn Ledger>,
    clock: SharedClock,
    nudge: Arc<Notify>,
    /// (account name, its submitter's counters)
    pub submit_stats: Arc<Vec<(String, Arc<SubmitStats>)>>,
    /// Start-up checks of deployment-mode products (DryRun, RegisterUsage), for status and metrics.
    pub deployment: Arc<crate::submit::register::DeploymentChecks>,
    /// Fleet mode: the local store is a spool; the shared ledger seals and submits (`crate::fleet`).
    spool: bool,
    /// Fleet mode: this agent in the fleet. Report, status and flush then answer from the shared ledger.
    pub fleet: Option<Arc<crate::fleet::Node>>,
}

pub struct Running {
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Running {
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// What a spool's pipeline shows of the fleet: the fleet submitters' counters and metrics, this agent's start-up
/// checks, and the node (for the fleet-wide report, status and flush).
pub struct SpoolParts {
    pub metrics: Arc<crate::submit::SubmitMetrics>,
    pub submit_stats: Vec<(String, Arc<SubmitStats>)>,
    pub deployment: Arc<crate::submit::register::DeploymentChecks>,
    pub node: Arc<crate::fleet::Node>,
}

impl Pipeline {
    /// Builds one submitter per configured account and starts them with the sealer.
    pub async fn start(
        config: Arc<Config>,
        store: Arc<dyn Ledger>,
        clock: SharedClock,
        registry: &crate::metrics::Registry,
    ) -> anyhow::Result<(Self, Running)> {
        let metrics = Arc::new(crate::submit::SubmitMetrics::default());
        let (stop, stop_rx) = watch::channel(false);
        let nudge = Arc::new(Notify::new());
        let mut tasks = tokio::task::JoinSet::new();
        let mut stats = Vec::new();
        let deployment = Arc::new(crate::submit::register::DeploymentChecks::default());
        for account in config.accounts.keys() {
            let queue = Arc::new(crate::submit::LedgerQueue(store.clone()));
            let s = Submitter::new(account, config.clone(), queue, clock.clone(), metrics.clone()).await?;
            stats.push((account.clone(), s.stats.clone()));
            if !crate::submit::register::deployment_products(&config, account).is_empty() {
                tasks.spawn(crate::submit::register::run(
                    s.client(),
                    config.clone(),
                    account.clone(),
                    clock.clone(),
                    deployment.clone(),
                    stop_rx.clone(),
                ));
            }
            tasks.spawn(s.run(stop_rx.clone(), nudge.clone()));
        }
        if config.accounts.is_empty() {
            tracing::warn!("no [accounts.NAME] configured: usage is recorded and sealed but not submitted");
        }
        let seal_policy = config.seal_policy();
        let submit_stats = Arc::new(stats);
        registry.register(Arc::new(crate::submit::metrics::SubmitCollector {
            metrics,
            accounts: submit_stats.clone(),
            deployment: deployment.clone(),
        }));
        let pipeline =
            Pipeline { config, seal_policy, store, clock, nudge, submit_stats, deployment, spool: false, fleet: None };
        let sealer = pipeline.clone();
        let mut stop_sealer = stop_rx;
        tasks.spawn(async move {
            let mut last_compaction: Option<i64> = None;
            loop {
                let now = sealer.clock.now_ms();
                if last_compaction.is_none_or(|t| now - t >= HOUR_MS) {
                    last_compaction = Some(now);
                    let cutoff = now - sealer.config.storage.retention.as_millis() as i64;
                    match sealer.store.compact(cutoff).await {
                        Ok(c) if c.records + c.events > 0 => {
                            tracing::info!(records = c.records, events = c.events, "retention compacted old history")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!(error = %e, "retention compaction failed; will retry"),
                    }
                    // Compaction frees keys; sled only gives their space back to a fresh copy.
                    if let Err(e) = sealer.store.reclaim_space(sealer.config.storage.repack_ratio).await {
                        tracing::error!(error = %e, "repacking the store failed; the old copy stays live");
                    }
                }
                match sealer.seal_due().await {
                    Ok(s) if s.records + s.carried_only > 0 => {
                        tracing::info!(records = s.records, carried_only = s.carried_only,
                            sealed_through = %s.sealed_through.map(crate::clock::rfc3339).unwrap_or_default(), "sealed ended hours");
                        sealer.nudge.notify_waiters();
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "sealing failed; will retry"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(sealer.config.pipeline.tick) => {}
                    _ = stop_sealer.wait_for(|s| *s) => return,
                }
            }
        });
        Ok((pipeline, Running { stop, tasks }))
    }

    /// Fleet mode: no local sealer or submitter (the account's elected agent seals and submits the shared
    /// ledger); `submit_stats` are the fleet submitters' counters and `deployment` this agent's start-up checks
    /// (`crate::fleet::start` runs them), shown by status and metrics.
    pub fn spool(
        config: Arc<Config>,
        store: Arc<dyn Ledger>,
        clock: SharedClock,
        registry: &crate::metrics::Registry,
        fleet: SpoolParts,
    ) -> (Self, Running) {
        let SpoolParts { metrics, submit_stats, deployment, node } = fleet;
        let (stop, _) = watch::channel(false);
        let submit_stats = Arc::new(submit_stats);
        registry.register(Arc::new(crate::submit::metrics::SubmitCollector {
            metrics,
            accounts: submit_stats.clone(),
            deployment: deployment.clone(),
        }));
        let seal_policy = config.seal_policy();
        let nudge = Arc::new(Notify::new());
        let pipeline = Pipeline {
            config,
            seal_policy,
            store,
            clock,
            nudge,
            submit_stats,
            deployment,
            spool: true,
            fleet: Some(node),
        };
        (pipeline, Running { stop, tasks: tokio::task::JoinSet::new() })
    }

    /// The one place seal parameters are made (the policy itself is built once from the config).
    fn params(&self, cutoff_hour_ms: i64) -> SealParams {
        self.seal_policy.params(self.clock.now_ms(), cutoff_hour_ms)
    }

    /// Parameters for sealing a leaving customer's open hours now, the current hour included.
    pub fn final_hour_params(&self) -> SealParams {
        self.params(hour_start(self.clock.now_ms()) + HOUR_MS)
    }

    /// Seals every hour that ended at least `seal_grace` ago.
    pub async fn seal_due(&self) -> Result<SealSummary, StoreError> {
        if self.spool {
            return Ok(SealSummary::default());
        }
        let grace = self.config.pipeline.seal_grace.as_millis() as i64;
        let cutoff = hour_start(self.clock.now_ms() - grace - HOUR_MS) + HOUR_MS;
        self.store.seal(self.params(cutoff)).await
    }

    /// Wakes the submitters (new records, or held records that can go now).
    pub fn nudge(&self) {
        self.nudge.notify_waiters();
    }

    /// Where the report reads its pages: the shared ledger in fleet mode, else the local store.
    pub fn report_pages(&self, store: &crate::store::Store) -> Arc<dyn crate::store::pages::PageSource> {
        match &self.fleet {
            Some(node) => Arc::new(crate::fleet::report::FleetPages::new(node.clone(), store.clone())),
            None => Arc::new(store.clone()),
        }
    }

    /// Seals every ended hour now, ignoring the grace, and wakes the submitters.
    pub async fn flush(&self) -> Result<SealSummary, StoreError> {
        // A spool never seals: its usage is sealed once, fleet-wide, in the shared ledger.
        if self.spool {
            return Ok(SealSummary::default());
        }
        let s = self.store.seal(self.params(hour_start(self.clock.now_ms()))).await?;
        self.nudge.notify_waiters();
        Ok(s)
    }
}
