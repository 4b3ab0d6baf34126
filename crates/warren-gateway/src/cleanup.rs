//! The inactive-tenant cleanup: a named worker that, on `[cleanup] schedule` and when
//! an operator asks (`POST /admin/api/cleanup`, `warren cleanup`), finds the tenants
//! whose sandbox has been asleep for `inactive_after` and removes their local
//! workspace (the store keeps it); `snapshots_after` later, unless they came back, it
//! deletes their snapshots from the store too.
//!
//! What must hold:
//! - A dry run unless asked: a scheduled run removes only with `enabled = true`, an
//!   operator's only with `apply`. A dry run reports the same list and changes nothing.
//! - Only a tenant whose sandbox is asleep is touched, and only while the cleanup holds
//!   it (`TenantHandle::hold`): no start races a removal. A request that comes
//!   meanwhile waits, then starts from the store.
//! - Nothing goes that the store does not hold: a workspace is synced right before it
//!   is removed, and stays if that fails.
//! - Snapshots go only for a tenant whose workspace this cleanup removed and who has
//!   not been back since: its newest event is that removal.
//! - Every removal is an event in the state store (state `asleep`, no cause, a detail
//!   beginning with [`WORKSPACE_REMOVED`] or [`SNAPSHOTS_DELETED`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use croner::Cron;
use serde::Serialize;
use tokio::sync::watch;
use warren_core::duration::format as duration;
use warren_core::layout::Layout;
use warren_core::sandbox::SandboxState;
use warren_core::{ErrorCode, TenantId};
use warren_state::{SandboxRecord, Transition};

use crate::edge::Edge;
use crate::schedule::{WorkerState, WorkerStatus, next_run};
use crate::unix_ms;

/// How the event of a workspace removal begins.
pub const WORKSPACE_REMOVED: &str = "cleanup: local workspace removed";
/// How the event of a deletion from the store begins.
pub const SNAPSHOTS_DELETED: &str = "cleanup: snapshots deleted";

/// What the cleanup does to a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Remove its local workspace; the store keeps it.
    RemoveWorkspace,
    /// Delete its snapshots and chunks from the store.
    DeleteSnapshots,
}

/// One tenant in a cleanup's report.
#[derive(Debug, Clone, Serialize)]
pub struct CleanupItem {
    pub tenant: String,
    pub step: Step,
    /// Since when the tenant has been away, ms since the Unix epoch: when its sandbox
    /// went to sleep, or (for `delete_snapshots`) when its workspace was removed.
    pub since_ms: u64,
    /// Done; false in a dry run, and for a tenant skipped or failed.
    pub done: bool,
    /// What was done (the event's detail), or why the tenant was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What one run of the cleanup found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanupReport {
    pub dry_run: bool,
    /// When the run began, ms since the Unix epoch.
    pub at_ms: u64,
    /// Tenants looked at: every one with a sandbox row.
    pub tenants: usize,
    /// Every tenant due for a step, by tenant id.
    pub items: Vec<CleanupItem>,
    pub workspaces_removed: usize,
    pub snapshots_deleted: usize,
    /// Due, but active again (or running) by the time the cleanup held it.
    pub skipped: usize,
    pub failed: usize,
    /// The gateway began to shut down before every tenant was done.
    pub interrupted: bool,
    pub elapsed_ms: u64,
}

pub struct CleanupWorker {
    state: WorkerState,
    last_report: Mutex<Option<CleanupReport>>,
    /// One run at a time: an operator's waits for a scheduled one, and the other way.
    running: tokio::sync::Mutex<()>,
}

impl CleanupWorker {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: WorkerState::new("cleanup"),
            last_report: Mutex::new(None),
            running: tokio::sync::Mutex::new(()),
        })
    }

    pub fn status(&self) -> WorkerStatus {
        self.state.get()
    }

    pub fn last_report(&self) -> Option<CleanupReport> {
        self.last_report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// One run, now: with `apply`, removes what is due; otherwise only reports it.
    /// Stops between tenants once `stop` turns true.
    pub async fn run_once(
        &self,
        edge: &Edge,
        apply: bool,
        stop: &watch::Receiver<bool>,
    ) -> Result<CleanupReport, String> {
        let _one = self.running.lock().await;
        self.state.update(|s| s.state = "busy");
        let result = clean(edge, apply, stop).await;
        self.state.update(|s| {
            s.runs += 1;
            s.last_run_ms = Some(unix_ms());
            match &result {
                Ok(report) => {
                    s.state = if report.failed > 0 { "failing" } else { "idle" };
                    s.last_error = report.items.iter().find_map(|i| {
                        let e = i.error.as_ref()?;
                        Some(format!(
                            "{} tenants failed; {}: {e}",
                            report.failed, i.tenant
                        ))
                    });
                }
                Err(e) => {
                    s.state = "failing";
                    s.errors += 1;
                    s.last_error = Some(e.clone());
                }
            }
        });
        match &result {
            Ok(r) => {
                *self.last_report.lock().unwrap_or_else(|e| e.into_inner()) = Some(r.clone());
                tracing::info!(
                    dry_run = r.dry_run,
                    tenants = r.tenants,
                    due = r.items.len(),
                    workspaces_removed = r.workspaces_removed,
                    snapshots_deleted = r.snapshots_deleted,
                    skipped = r.skipped,
                    failed = r.failed,
                    elapsed_ms = r.elapsed_ms,
                    "cleanup done"
                );
            }
            Err(e) => tracing::warn!(error = %e, "cleanup failed"),
        }
        result
    }

    /// Runs on `schedule` until `stop` turns true, removing only with `enabled`.
    pub async fn run(
        self: Arc<Self>,
        edge: Arc<Edge>,
        schedule: Cron,
        mut stop: watch::Receiver<bool>,
    ) {
        let apply = edge.ctx.config.cleanup.enabled;
        let mut ran = None;
        while let Some(next) = next_run(&schedule, ran, &self.state, &mut stop).await {
            let _ = self.run_once(&edge, apply, &stop).await;
            ran = Some(next);
        }
    }
}

/// One run: every asleep tenant due for a step, done (with `apply`) one at a time.
async fn clean(
    edge: &Edge,
    apply: bool,
    stop: &watch::Receiver<bool>,
) -> Result<CleanupReport, String> {
    let started = std::time::Instant::now();
    let ctx = &edge.ctx;
    let rows = ctx.state.sandboxes().await.map_err(|e| e.to_string())?;
    let mut report = CleanupReport {
        dry_run: !apply,
        at_ms: unix_ms(),
        tenants: rows.len(),
        ..CleanupReport::default()
    };
    let layout = Layout::new(&ctx.config.data_dir);
    for row in &rows {
        if *stop.borrow() {
            report.interrupted = true;
            break;
        }
        let due = due(edge, &layout, row, report.at_ms)
            .await
            .map_err(|e| e.to_string())?;
        let Some((step, since_ms)) = due else {
            continue;
        };
        let mut item = CleanupItem {
            tenant: row.tenant.to_string(),
            step,
            since_ms,
            done: false,
            detail: None,
            error: None,
        };
        if apply {
            match carry_out(edge, &layout, row, step).await {
                Ok(Carried::Done(detail)) => {
                    item.done = true;
                    item.detail = Some(detail);
                    match step {
                        Step::RemoveWorkspace => report.workspaces_removed += 1,
                        Step::DeleteSnapshots => report.snapshots_deleted += 1,
                    }
                }
                Ok(Carried::Skipped(why)) => {
                    tracing::info!(tenant = %row.tenant, ?step, why, "cleanup skipped a tenant");
                    item.detail = Some(why.to_owned());
                    report.skipped += 1;
                }
                Err(e) => {
                    tracing::warn!(tenant = %row.tenant, ?step, error = %e, "cleanup failed for a tenant");
                    item.error = Some(e);
                    report.failed += 1;
                }
            }
        } else {
            tracing::debug!(tenant = %row.tenant, ?step, "cleanup (dry run) would act");
        }
        report.items.push(item);
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// The step `row`'s tenant is due for at `now_ms`, with since when it has been away.
async fn due(
    edge: &Edge,
    layout: &Layout,
    row: &SandboxRecord,
    now_ms: u64,
) -> Result<Option<(Step, u64)>, warren_state::StateError> {
    let config = &edge.ctx.config.cleanup;
    if row.state != SandboxState::Asleep {
        return Ok(None);
    }
    let away = now_ms.saturating_sub(row.since_ms);
    if layout.workspace(&row.tenant).exists() {
        let due = away >= ms(config.inactive_after.0);
        return Ok(due.then_some((Step::RemoveWorkspace, row.since_ms)));
    }
    // Recording the removal made its time the row's: a tenant not back since has the
    // removal as its newest event, and only such a tenant loses its snapshots.
    if away < ms(config.snapshots_after.0) {
        return Ok(None);
    }
    Ok(removed_at(edge, &row.tenant)
        .await?
        .map(|at| (Step::DeleteSnapshots, at)))
}

/// When this cleanup removed the tenant's workspace, if that is its newest event.
async fn removed_at(
    edge: &Edge,
    tenant: &TenantId,
) -> Result<Option<u64>, warren_state::StateError> {
    let newest = edge.ctx.state.events(Some(tenant), 1).await?;
    Ok(newest
        .first()
        .filter(|e| {
            e.detail
                .as_deref()
                .is_some_and(|d| d.starts_with(WORKSPACE_REMOVED))
        })
        .map(|e| e.at_ms))
}

enum Carried {
    /// Done; the event's detail.
    Done(String),
    /// Not done, and why: the tenant is no longer due.
    Skipped(&'static str),
}

/// Does `step` to `row`'s tenant while holding it, if it is still due then.
async fn carry_out(
    edge: &Edge,
    layout: &Layout,
    row: &SandboxRecord,
    step: Step,
) -> Result<Carried, String> {
    let ctx = &edge.ctx;
    let tenant = &row.tenant;
    // No start until the guard drops; a running sandbox is refused, never stopped.
    let _hold = match edge.tenants.handle(tenant).hold(false).await {
        Ok(hold) => hold,
        Err(e) if e.code == ErrorCode::SandboxRunning => {
            return Ok(Carried::Skipped("its sandbox is running"));
        }
        Err(e) => return Err(e.to_string()),
    };
    let now = ctx.state.sandbox(tenant).await.map_err(|e| e.to_string())?;
    let unchanged =
        now.is_some_and(|r| r.state == SandboxState::Asleep && r.since_ms == row.since_ms);
    if !unchanged {
        return Ok(Carried::Skipped("it was active again"));
    }
    let config = &ctx.config.cleanup;
    let detail = match step {
        Step::RemoveWorkspace => {
            let seq = ctx
                .sync
                .remove_local(tenant)
                .await
                .map_err(|e| e.to_string())?;
            let kept = match seq {
                Some(seq) => format!("the store keeps it as snapshot {seq}"),
                None => "it held nothing to keep".to_owned(),
            };
            format!(
                "{WORKSPACE_REMOVED} after {} asleep; {kept}",
                duration(config.inactive_after.0)
            )
        }
        Step::DeleteSnapshots => {
            let still = removed_at(edge, tenant).await.map_err(|e| e.to_string())?;
            if still.is_none() || layout.workspace(tenant).exists() {
                return Ok(Carried::Skipped("it was active again"));
            }
            let gone = ctx.sync.forget(tenant).await.map_err(|e| e.to_string())?;
            format!(
                "{SNAPSHOTS_DELETED} from the store ({} snapshots, {} chunks), {} after its workspace was removed",
                gone.snapshots,
                gone.chunks,
                duration(config.snapshots_after.0)
            )
        }
    };
    let event = Transition {
        tenant: tenant.clone(),
        state: SandboxState::Asleep,
        at_ms: unix_ms(),
        cause: None,
        identity: None,
        detail: Some(detail.clone()),
    };
    // Done either way; a record that failed is said loudly, and the report has it.
    if let Err(e) = ctx.state.record(&event).await {
        tracing::error!(%tenant, error = %e, %detail, "cleanup acted but cannot record its event");
        return Err(format!("{detail}, but its event was not recorded: {e}"));
    }
    tracing::info!(%tenant, %detail, "cleanup");
    Ok(Carried::Done(detail))
}
