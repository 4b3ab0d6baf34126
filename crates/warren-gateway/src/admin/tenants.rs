//! What the admin API and the dashboard show of tenants: every tenant the gateway
//! knows, each with its sandbox's state, its profile, its activity, its sync and, while
//! it runs, its resource use.
//!
//! A tenant is known when it has a sandbox row in the state store (it ever had a
//! sandbox), a tier an operator chose, a `[tenants.<id>]` table, or an actor on this
//! gateway. Nothing here starts a sandbox or makes an actor.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use warren_core::sandbox::{SandboxState, StopCause};
use warren_core::{ErrorCode, TenantId};
use warren_state::{Event, SandboxRecord};

use super::usage::{self, Usage};
use crate::edge::Edge;
use crate::error::ApiError;
use crate::tenant::{Status, TenantHandle};
use crate::unix_ms;

/// One tenant as an operator sees it.
#[derive(Debug, Clone, Serialize)]
pub struct TenantView {
    #[serde(flatten)]
    pub status: Status,
    /// When it was last in use, ms since the Unix epoch: for a running sandbox its
    /// activity clock, for one asleep when it went to sleep.
    pub last_activity_ms: Option<u64>,
    /// How long changes have waited to reach the store, if any wait.
    pub sync_lag_ms: Option<u64>,
    /// While a sandbox runs and has a cgroup of its own: what it uses.
    pub resources: Option<Usage>,
}

/// The newest snapshot of a tenant in the store.
#[derive(Debug, Clone, Serialize)]
pub struct LastSnapshot {
    pub seq: u64,
    pub created_ms: u64,
    pub files: u64,
    pub bytes: u64,
}

/// A tenant with what only a look at one tenant is worth: its newest snapshot (from
/// the store) and its recent events.
#[derive(Debug, Clone, Serialize)]
pub struct TenantDetail {
    #[serde(flatten)]
    pub view: TenantView,
    /// How many snapshots the store holds.
    pub snapshots: Option<usize>,
    pub last_snapshot: Option<LastSnapshot>,
    /// Set when the store could not be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
    pub events: Vec<EventView>,
}

/// One entry of the event log.
#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub id: i64,
    pub at_ms: u64,
    pub tenant: String,
    pub state: SandboxState,
    pub cause: Option<StopCause>,
    pub detail: Option<String>,
}

impl From<Event> for EventView {
    fn from(e: Event) -> Self {
        Self {
            id: e.id,
            at_ms: e.at_ms,
            tenant: e.tenant.to_string(),
            state: e.state,
            cause: e.cause,
            detail: e.detail,
        }
    }
}

/// Slots and the admission queue, against the config's ceilings.
#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    pub running: usize,
    pub max_instances: usize,
    pub waiting: usize,
    pub queue_limit: usize,
    pub pool_ready: usize,
}

pub fn capacity(edge: &Edge) -> Capacity {
    let ctx = &edge.ctx;
    Capacity {
        running: ctx.admission.running(),
        max_instances: ctx.config.max_instances,
        waiting: ctx.admission.waiting(),
        queue_limit: ctx.config.admission.queue_limit,
        pool_ready: ctx.runtime.pool_ready(),
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, e.to_string())
}

/// Every tenant the gateway knows, by tenant id.
pub async fn list(edge: &Edge) -> Result<Vec<TenantView>, ApiError> {
    let ctx = &edge.ctx;
    let records: BTreeMap<TenantId, SandboxRecord> = ctx
        .state
        .sandboxes()
        .await
        .map_err(internal)?
        .into_iter()
        .map(|r| (r.tenant.clone(), r))
        .collect();
    let assigned = ctx.state.tiers().await.map_err(internal)?;
    let handles: BTreeMap<TenantId, TenantHandle> = edge
        .tenants
        .handles()
        .into_iter()
        .map(|h| (h.tenant().clone(), h))
        .collect();
    let ids: BTreeSet<TenantId> = records
        .keys()
        .cloned()
        .chain(assigned.into_iter().map(|(t, _)| t))
        .chain(ctx.config.tenants.keys().cloned())
        .chain(handles.keys().cloned())
        .collect();
    let views = ids
        .iter()
        .map(|id| view(edge, id, handles.get(id), records.get(id)))
        .collect();
    with_resources(views).await
}

/// A tenant as it stands, from its actor if it has one, else from its row; with the
/// pid of its running sandbox, whose resource use is read apart (blocking).
fn view(
    edge: &Edge,
    id: &TenantId,
    handle: Option<&TenantHandle>,
    record: Option<&SandboxRecord>,
) -> (TenantView, Option<u32>) {
    let ctx = &edge.ctx;
    let (status, last_activity_ms, pid) = match handle {
        Some(handle) => {
            let status = handle.status();
            let last_activity_ms = if status.state == SandboxState::Asleep {
                (status.since_ms > 0).then_some(status.since_ms)
            } else {
                let idle_for = ctx.mono_ms().saturating_sub(handle.last_active_ms());
                Some(unix_ms().saturating_sub(idle_for))
            };
            let pid = handle.sandbox().map(|s| s.pid);
            (status, last_activity_ms, pid)
        }
        None => {
            let status = edge.tenants.status_of_record(id, record);
            let since = status.since_ms;
            (status, (since > 0).then_some(since), None)
        }
    };
    let sync_lag_ms = status
        .sync
        .pending_since_ms
        .map(|since| unix_ms().saturating_sub(since));
    let view = TenantView {
        status,
        last_activity_ms,
        sync_lag_ms,
        resources: None,
    };
    (view, pid)
}

/// Fills in the resource use of the running ones, off the async threads.
async fn with_resources(
    views: Vec<(TenantView, Option<u32>)>,
) -> Result<Vec<TenantView>, ApiError> {
    if views.iter().all(|(_, pid)| pid.is_none()) {
        return Ok(views.into_iter().map(|(v, _)| v).collect());
    }
    let read = tokio::task::spawn_blocking(move || {
        views
            .into_iter()
            .map(|(mut v, pid)| {
                v.resources = pid.and_then(usage::of);
                v
            })
            .collect()
    });
    read.await.map_err(internal)
}

/// Fails with `unknown_tenant` unless the gateway knows the tenant.
pub async fn known(edge: &Edge, tenant: &TenantId) -> Result<(), ApiError> {
    let ctx = &edge.ctx;
    if edge.tenants.has_actor(tenant) || ctx.config.tenants.contains_key(tenant) {
        return Ok(());
    }
    if ctx.state.sandbox(tenant).await.map_err(internal)?.is_some() {
        return Ok(());
    }
    let assigned = ctx.state.tiers().await.map_err(internal)?;
    if assigned.iter().any(|(t, _)| t == tenant) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::UnknownTenant,
        format!(
            "no tenant {tenant} on this gateway: it never had a sandbox, a tier or a config table"
        ),
    ))
}

/// One tenant in full, or `unknown_tenant`.
pub async fn detail(edge: &Edge, tenant: &TenantId) -> Result<TenantDetail, ApiError> {
    known(edge, tenant).await?;
    let handle = edge
        .tenants
        .has_actor(tenant)
        .then(|| edge.tenants.handle(tenant));
    let record = match handle {
        Some(_) => None,
        None => edge.ctx.state.sandbox(tenant).await.map_err(internal)?,
    };
    let one = view(edge, tenant, handle.as_ref(), record.as_ref());
    let view = with_resources(vec![one]).await?.remove(0);
    let store = edge.ctx.sync.store();
    let (snapshots, last_snapshot, store_error) = match store.snapshot_seqs(tenant).await {
        Ok(seqs) => match seqs.iter().max() {
            Some(&seq) => match store.snapshot(tenant, seq).await {
                Ok(r) => {
                    let last = LastSnapshot {
                        seq: r.seq,
                        created_ms: r.created_ms,
                        files: r.files,
                        bytes: r.bytes,
                    };
                    (Some(seqs.len()), Some(last), None)
                }
                Err(e) => (Some(seqs.len()), None, Some(e.to_string())),
            },
            None => (Some(0), None, None),
        },
        Err(e) => (None, None, Some(e.to_string())),
    };
    let events = events(edge, Some(tenant), 20).await?;
    Ok(TenantDetail {
        view,
        snapshots,
        last_snapshot,
        store_error,
        events,
    })
}

/// The most recent events, newest first, of one tenant or all.
pub async fn events(
    edge: &Edge,
    tenant: Option<&TenantId>,
    limit: usize,
) -> Result<Vec<EventView>, ApiError> {
    let events = edge
        .ctx
        .state
        .events(tenant, limit)
        .await
        .map_err(internal)?;
    Ok(events.into_iter().map(EventView::from).collect())
}
