//! The admin API under `/admin/api`, and `/metrics`, behind a bearer token (compared in
//! constant time) or, under `/admin`, the dashboard's session cookie (see `dashboard`).
//! The CLI's admin verbs call it. docs/admin.md lists every route.
//!
//! - `GET  /metrics`: see `metrics`.
//! - `POST /admin/api/tenants/{tenant}/sync`: sync now (frozen if running); the report.
//! - `GET  /admin/api/tenants/{tenant}/snapshots`: every snapshot, oldest first.
//! - `POST /admin/api/tenants/{tenant}/restore?seq=N|at_ms=T[&stop=true]`: point-in-time
//!   restore; refused with 409 while the sandbox runs unless `stop=true`.
//! - `POST /admin/api/sweep`: a sweep now, streamed as one JSON line per tenant, then
//!   the report.
//! - `POST /admin/api/cleanup[?apply=true]`: the inactive-tenant cleanup now, a dry run
//!   unless `apply`; its report. `GET` answers its settings and last report.
//! - `GET  /admin/api/workers`: the background workers and their state.
//! - `GET  /admin/api/tenants`: every tenant the gateway knows (`tenants::list`), with
//!   the capacity.
//! - `GET  /admin/api/tenants/{tenant}`: one tenant in full (`tenants::detail`); 404
//!   `unknown_tenant` for a tenant the gateway does not know.
//! - `POST /admin/api/tenants/{tenant}/stop`: stop its sandbox now (cause `admin`).
//! - `POST /admin/api/tenants/{tenant}/restart`: stop it, start it again, answer once
//!   it is ready.
//! - `GET  /admin/api/events?tenant=&limit=`: the most recent events, newest first.
//! - `PUT  /admin/api/tenants/{tenant}/tier` with `{"tier": "<name>"}` (or `null`, back to
//!   the config's): puts the tenant in a tier of the config; answers its status.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderMap, header};
use serde::Deserialize;
use warren_core::auth::constant_time_eq;
use warren_core::sandbox::{SandboxState, StopCause};
use warren_core::{ErrorCode, TenantId};
use warren_store::StoreError;

use crate::edge::Edge;
use crate::error::ApiError;

pub(crate) mod tenants;
mod usage;

pub fn router() -> Router<Arc<Edge>> {
    Router::new()
        .route("/admin/api/tenants", get(list_tenants))
        .route("/admin/api/tenants/{tenant}/stop", post(stop))
        .route("/admin/api/tenants/{tenant}/restart", post(restart))
        .route("/admin/api/events", get(events))
        .merge(crate::dashboard::router())
        .route("/admin/api/tenants/{tenant}/sync", post(sync))
        .route("/admin/api/tenants/{tenant}/snapshots", get(snapshots))
        .route("/admin/api/tenants/{tenant}/restore", post(restore))
        .route("/admin/api/sweep", post(sweep))
        .route("/admin/api/cleanup", get(cleanup_report).post(cleanup))
        .route("/admin/api/workers", get(workers))
        .route("/admin/api/tenants/{tenant}", get(tenant_status))
        .route("/metrics", get(metrics))
        .route(
            "/admin/api/tenants/{tenant}/tier",
            axum::routing::put(set_tier),
        )
}

pub(crate) fn authorize(edge: &Edge, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if constant_time_eq(given.as_bytes(), edge.ctx.admin_token.expose().as_bytes())
        || crate::dashboard::session_valid(edge, headers)
    {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::AdminUnauthorized,
            "the admin API needs `Authorization: Bearer <admin token>`",
        ))
    }
}

fn tenant(raw: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(raw)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid tenant id: {e}")))
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(what) => {
            ApiError::new(ErrorCode::NotFound, format!("not found: {what}"))
        }
        StoreError::Backend(_) => {
            ApiError::new(ErrorCode::StoreUnavailable, e.to_string()).retry_after(5)
        }
        e => ApiError::new(ErrorCode::Internal, e.to_string()),
    }
}

async fn sync(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&edge, &headers)?;
    let t = tenant(&raw)?;
    let freeze_for = |t: &TenantId| edge.tenants.freeze(t);
    let report = edge
        .ctx
        .sync
        .sync_looking_up(&t, &freeze_for)
        .await
        .map_err(store_error)?;
    Ok(axum::Json(serde_json::json!({
        "tenant": t.to_string(),
        "seq": report.seq,
        "created": report.created,
        "files": report.files,
        "bytes": report.bytes,
        "chunks_uploaded": report.chunks_uploaded,
        "bytes_uploaded": report.bytes_uploaded,
        "frozen_ms": report.frozen_ms,
        "elapsed_ms": report.elapsed_ms,
    }))
    .into_response())
}

async fn snapshots(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&edge, &headers)?;
    let t = tenant(&raw)?;
    let records = edge.ctx.sync.snapshots(&t).await.map_err(store_error)?;
    let list: Vec<_> = records
        .iter()
        .map(|r| serde_json::json!({ "seq": r.seq, "created_ms": r.created_ms, "writer": r.writer, "files": r.files, "bytes": r.bytes }))
        .collect();
    Ok(
        axum::Json(serde_json::json!({ "tenant": t.to_string(), "snapshots": list }))
            .into_response(),
    )
}

#[derive(Deserialize)]
struct RestoreQuery {
    seq: Option<u64>,
    at_ms: Option<u64>,
    #[serde(default)]
    stop: bool,
}

async fn restore(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    Query(q): Query<RestoreQuery>,
) -> Result<Response, ApiError> {
    authorize(&edge, &headers)?;
    let t = tenant(&raw)?;
    let seq = match (q.seq, q.at_ms) {
        (Some(seq), None) => seq,
        (None, Some(at)) => {
            edge.ctx
                .sync
                .snapshot_at(&t, at)
                .await
                .map_err(store_error)?
                .seq
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "give exactly one of seq and at_ms",
            ));
        }
    };
    // No start while the workspace is replaced; a running sandbox is stopped first only
    // when asked.
    let _hold = edge.tenants.handle(&t).hold(q.stop).await?;
    let report = edge
        .ctx
        .sync
        .restore_to(&t, seq)
        .await
        .map_err(store_error)?;
    tracing::info!(tenant = %t, restored = seq, head = report.seq, "point-in-time restore");
    Ok(axum::Json(
        serde_json::json!({ "tenant": t.to_string(), "restored": seq, "seq": report.seq }),
    )
    .into_response())
}

async fn sweep(State(edge): State<Arc<Edge>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&edge, &headers)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        let line = |v: serde_json::Value| Bytes::from(format!("{v}\n"));
        let progress = |item: &warren_store::engine::SweepItem| {
            let _ = tx.send(line(serde_json::json!({ "item": item })));
        };
        let done = match edge.sweep.run_once(&edge, &progress).await {
            Ok(report) => serde_json::json!({ "report": report }),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
        let _ = tx.send(line(done));
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CleanupQuery {
    #[serde(default)]
    apply: bool,
}

async fn cleanup(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    Query(q): Query<CleanupQuery>,
) -> Result<Response, ApiError> {
    authorize(&edge, &headers)?;
    // An operator's run goes on to its end: nothing stops it but the process.
    let (_, never) = tokio::sync::watch::channel(false);
    let report = edge.cleanup.run_once(&edge, q.apply, &never).await;
    let report = report.map_err(|e| ApiError::new(ErrorCode::Internal, e))?;
    Ok(axum::Json(report).into_response())
}

async fn cleanup_report(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&edge, &headers)?;
    let config = &edge.ctx.config.cleanup;
    let format = warren_core::duration::format;
    Ok(axum::Json(serde_json::json!({
        "enabled": config.enabled,
        "schedule": config.schedule,
        "inactive_after": format(config.inactive_after.0),
        "snapshots_after": format(config.snapshots_after.0),
        "worker": edge.cleanup.status(),
        "last_report": edge.cleanup.last_report(),
    }))
    .into_response())
}

async fn workers(State(edge): State<Arc<Edge>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&edge, &headers)?;
    let workers = worker_statuses(&edge);
    Ok(axum::Json(serde_json::json!({ "workers": workers })).into_response())
}

/// Every background worker's state, for the API and the dashboard. Retention has no
/// worker of its own: the sweep applies it to each tenant it syncs.
pub(crate) fn worker_statuses(edge: &Edge) -> Vec<crate::schedule::WorkerStatus> {
    vec![
        edge.sweep.status(),
        edge.prewarm.status(),
        edge.cleanup.status(),
    ]
}

async fn tenant_status(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&edge, &headers)?;
    let t = tenant(&raw)?;
    Ok(axum::Json(tenants::detail(&edge, &t).await?).into_response())
}

async fn list_tenants(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&edge, &headers)?;
    let list = tenants::list(&edge).await?;
    let capacity = tenants::capacity(&edge);
    Ok(axum::Json(serde_json::json!({ "capacity": capacity, "tenants": list })).into_response())
}

#[derive(Deserialize)]
struct EventsQuery {
    tenant: Option<String>,
    limit: Option<usize>,
}

/// The most events one call returns.
const MAX_EVENTS: usize = 1000;

async fn events(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    authorize(&edge, &headers)?;
    let t = match q.tenant.as_deref().filter(|t| !t.is_empty()) {
        Some(raw) => Some(tenant(raw)?),
        None => None,
    };
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_EVENTS);
    let events = tenants::events(&edge, t.as_ref(), limit).await?;
    Ok(axum::Json(serde_json::json!({ "events": events })).into_response())
}

/// Stops the tenant's sandbox, if one runs, for an operator; answers once it is gone
/// and synced. `stopped` tells whether one ran.
pub(crate) async fn stop_tenant(edge: &Edge, t: &TenantId) -> Result<serde_json::Value, ApiError> {
    tenants::known(edge, t).await?;
    let was = edge.tenants.status(t).await?.state;
    if edge.tenants.has_actor(t) {
        edge.tenants.handle(t).stop(StopCause::Admin).await;
    }
    tracing::info!(tenant = %t, was = was.as_str(), "sandbox stopped by an operator");
    Ok(serde_json::json!({
        "tenant": t.to_string(),
        "stopped": was != SandboxState::Asleep,
        "status": edge.tenants.status(t).await?,
    }))
}

/// Stops the tenant's sandbox (if one runs) and starts it again; answers once the new
/// one is ready, with how long its start took.
pub(crate) async fn restart_tenant(
    edge: &Edge,
    t: &TenantId,
) -> Result<serde_json::Value, ApiError> {
    tenants::known(edge, t).await?;
    let handle = edge.tenants.handle(t);
    handle.stop(StopCause::Admin).await;
    let ready = handle.acquire().await?;
    let start_ms = ready.phases.map(|p| p.total().as_secs_f64() * 1000.0);
    // The new sandbox's idle clock runs from now.
    drop(ready);
    tracing::info!(tenant = %t, "sandbox restarted by an operator");
    Ok(serde_json::json!({
        "tenant": t.to_string(),
        "start_ms": start_ms,
        "status": handle.status(),
    }))
}

async fn stop(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&edge, &headers)?;
    let t = tenant(&raw)?;
    Ok(axum::Json(stop_tenant(&edge, &t).await?).into_response())
}

async fn restart(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&edge, &headers)?;
    let t = tenant(&raw)?;
    Ok(axum::Json(restart_tenant(&edge, &t).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierBody {
    tier: Option<String>,
}

async fn set_tier(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&edge, &headers)?;
    let t = tenant(&raw)?;
    let body: TierBody = serde_json::from_slice(&body).map_err(|e| {
        let m = format!("the body must be {{\"tier\": \"<name>\"}} or {{\"tier\": null}}: {e}");
        ApiError::new(ErrorCode::BadRequest, m)
    })?;
    let tiers = &edge.ctx.config.tiers;
    if let Some(name) = &body.tier
        && !tiers.contains_key(name)
    {
        let known: Vec<&str> = tiers.keys().map(String::as_str).collect();
        let m = format!(
            "unknown tier {name:?}; this gateway's tiers: {}",
            known.join(", ")
        );
        return Err(ApiError::new(ErrorCode::BadRequest, m));
    }
    edge.tenants.assign_tier(&t, body.tier).await?;
    Ok(axum::Json(edge.tenants.status(&t).await?).into_response())
}

async fn metrics(State(edge): State<Arc<Edge>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&edge, &headers)?;
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        crate::metrics::scrape(&edge).await,
    )
        .into_response())
}
