//! The sweep worker: on a cron schedule (default every 5 minutes), sync EVERY tenant's
//! workspace on this machine and apply retention, at bounded concurrency, and keep
//! what the last run did for `/readyz` and the admin API. This is the original's cron,
//! which synced only the `shared` sandbox, fixed.

use std::sync::{Arc, Mutex};

use croner::Cron;
use serde::Serialize;
use tokio::sync::watch;
use warren_store::engine::SweepReport;

use crate::edge::Edge;
use crate::unix_ms;

/// What the sweep worker is doing and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerStatus {
    pub name: &'static str,
    /// `idle`, `busy` or `failing`.
    pub state: &'static str,
    pub runs: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub last_run_ms: Option<u64>,
    pub next_run_ms: Option<u64>,
    pub last_report: Option<SweepReport>,
}

/// What a named background worker is doing and did, as `/admin/api/workers` shows it.
pub struct WorkerState(Mutex<WorkerStatus>);

impl WorkerState {
    pub fn new(name: &'static str) -> Self {
        Self(Mutex::new(WorkerStatus {
            name,
            state: "idle",
            ..WorkerStatus::default()
        }))
    }

    pub fn get(&self) -> WorkerStatus {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut WorkerStatus)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

pub struct SweepWorker {
    state: WorkerState,
}

impl SweepWorker {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: WorkerState::new("sweep"),
        })
    }

    pub fn status(&self) -> WorkerStatus {
        self.state.get()
    }

    fn update(&self, f: impl FnOnce(&mut WorkerStatus)) {
        self.state.update(f);
    }

    /// One sweep, now. `progress` hears of each tenant as it finishes.
    pub async fn run_once(
        &self,
        edge: &Edge,
        progress: &(dyn Fn(&warren_store::engine::SweepItem) + Sync),
    ) -> Result<SweepReport, warren_store::StoreError> {
        self.update(|s| s.state = "busy");
        let freeze_for = |t: &warren_core::TenantId| edge.tenants.freeze(t);
        let result = edge
            .ctx
            .sync
            .sweep(edge.ctx.config.sweep.concurrency, &freeze_for, progress)
            .await;
        let failed = result.as_ref().map(|report| report.failed);
        edge.ctx.metrics.swept(&failed);
        self.update(|s| {
            s.runs += 1;
            s.last_run_ms = Some(unix_ms());
            match &result {
                Ok(report) => {
                    s.state = if report.failed > 0 { "failing" } else { "idle" };
                    s.last_error = (report.failed > 0)
                        .then(|| format!("{} tenants failed to sync", report.failed));
                    s.last_report = Some(report.clone());
                }
                Err(e) => {
                    s.state = "failing";
                    s.errors += 1;
                    s.last_error = Some(e.to_string());
                }
            }
        });
        match &result {
            Ok(r) => tracing::info!(
                tenants = r.tenants,
                created = r.snapshots_created,
                unchanged = r.unchanged,
                failed = r.failed,
                bytes = r.bytes_uploaded,
                elapsed_ms = r.elapsed_ms,
                "sweep done"
            ),
            Err(e) => tracing::warn!(error = %e, "sweep failed"),
        }
        result
    }

    /// Runs sweeps on `schedule` until `stop` turns true.
    pub async fn run(
        self: Arc<Self>,
        edge: Arc<Edge>,
        schedule: Cron,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut ran = None;
        while let Some(next) = next_run(&schedule, ran, &self.state, &mut stop).await {
            let _ = self.run_once(&edge, &|_| {}).await;
            ran = Some(next);
        }
    }
}

/// Waits for `schedule`'s next occurrence after `ran` (the last run's) or now,
/// whichever is later: a timer that woke early against a slewed clock must not run
/// the same occurrence twice. `state` shows when it is. `None`: `stop` turned true, or
/// the schedule has no occurrence left (then the worker stops, and says so).
pub async fn next_run(
    schedule: &Cron,
    ran: Option<chrono::DateTime<chrono::Utc>>,
    state: &WorkerState,
    stop: &mut watch::Receiver<bool>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let now = chrono::Utc::now();
    let after = ran.map_or(now, |r| r.max(now));
    let Ok(next) = schedule.find_next_occurrence(&after, false) else {
        let name = state.get().name;
        tracing::warn!("the {name} schedule has no next occurrence; the {name} worker stops");
        state.update(|s| s.next_run_ms = None);
        return None;
    };
    state.update(|s| s.next_run_ms = Some(next.timestamp_millis() as u64));
    let wait = (next - now).to_std().unwrap_or_default();
    tokio::select! {
        _ = tokio::time::sleep(wait) => Some(next),
        _ = stop.wait_for(|s| *s) => None,
    }
}

/// Parses a five-field cron expression (UTC).
pub fn parse(expr: &str) -> Result<Cron, String> {
    Cron::new(expr)
        .parse()
        .map_err(|e| format!("invalid sweep.schedule {expr:?}: {e}"))
}
