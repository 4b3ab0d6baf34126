//! The edge: one router for every route, one authentication for every route.
//!
//! Reserved paths belong to the gateway: `/healthz` and `/readyz` describe the gateway
//! itself (no credentials), `/api/status` reports the caller's own sandbox without
//! starting it, `/api/prewarm` starts it without waiting, and `/admin/...` and
//! `/metrics` are the operator's (the admin bearer token). Everything else, `/ws`, `/api/history` and any other
//! path, is authenticated and proxied to the caller's sandbox, started on demand.
//! `/ws/api/history` is the original frontend's name for `/api/history`.
//!
//! Every authenticated request counts against its user's rate, and a WebSocket takes a
//! place under its user's cap until its relay ends ([`crate::limits`]); health routes,
//! `/metrics` and the admin API are never limited.
//!
//! A request for a sandbox that is not ready waits for its start (API clients and
//! WebSockets, until the start's own timeouts), except a browser loading a page: past
//! `waiting_page_after` it gets the waiting page ([`waiting`]) while the start goes on
//! without it. A start is never called off because a request stopped waiting for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderValue, Request, StatusCode, header};
use tokio::sync::oneshot;
use warren_core::auth::{self, Source};
use warren_core::config::AgentKind;
use warren_core::sandbox::SandboxState;
use warren_core::{ErrorCode, TenantId};

use crate::error::ApiError;
use crate::limits::{Limits, WebSocketSlot};
use crate::proxy::{self, Strip};
use crate::schedule::SweepWorker;
use crate::tenant::{Ready, StartPhases, TenantHandle, Tenants};
use crate::{Context, websocket};

mod request;
mod waiting;

pub struct Edge {
    pub ctx: Arc<Context>,
    pub tenants: Tenants,
    pub sweep: Arc<SweepWorker>,
    pub prewarm: Arc<crate::prewarm::PrewarmWorker>,
    pub cleanup: Arc<crate::cleanup::CleanupWorker>,
    /// Each user's request rate and open WebSockets.
    pub limits: Arc<Limits>,
    requests: AtomicU64,
}

impl Edge {
    pub fn new(ctx: Arc<Context>) -> Arc<Self> {
        Arc::new(Self {
            tenants: Tenants::new(ctx.clone()),
            prewarm: crate::prewarm::PrewarmWorker::new(&ctx.config),
            cleanup: crate::cleanup::CleanupWorker::new(),
            limits: Limits::new(),
            ctx,
            sweep: SweepWorker::new(),
            requests: AtomicU64::new(0),
        })
    }
}

/// The gateway's router. A plain function of its state, so tests can call it directly.
pub fn router(edge: Arc<Edge>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/status", get(status))
        .route("/api/prewarm", post(prewarm))
        .merge(crate::admin::router())
        .route("/admin/{*rest}", axum::routing::any(admin_not_found))
        .fallback(proxied)
        .layer(axum::middleware::from_fn_with_state(
            edge.clone(),
            request::observe,
        ))
        .with_state(edge)
}

/// With `admin.host` set, whether the request came for that host (`None`: unset).
pub(crate) fn on_admin_host(ctx: &Context, headers: &http::HeaderMap) -> Option<bool> {
    let admin = ctx.config.admin.host.as_deref()?;
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    Some(host.eq_ignore_ascii_case(admin))
}

/// `/admin/...` is the gateway's, never a sandbox's, even where no route matches.
async fn admin_not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such admin route")
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(edge): State<Arc<Edge>>) -> Response {
    if edge.ctx.draining.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": "draining" })),
        )
            .into_response();
    }
    let running = edge.ctx.admission.running();
    axum::Json(serde_json::json!({
        "status": "ready",
        "sandboxes_running": running,
        "max_instances": edge.ctx.config.max_instances,
        "admission_waiting": edge.ctx.admission.waiting(),
        "pool_ready": edge.ctx.runtime.pool_ready(),
    }))
    .into_response()
}

/// Who the request is from, and how they said so.
struct Caller {
    tenant: TenantId,
    source: Source,
    /// The `Set-Cookie` value to send back when the credential came from elsewhere.
    cookie: Option<HeaderValue>,
}

fn authenticate(ctx: &Context, request: &Request<Body>) -> Result<Caller, ApiError> {
    let headers = request.headers();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let cookies = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let cookie_name = &ctx.config.auth.cookie_name;
    let reject = |e: auth::AuthError| ApiError::new(e.code(), e.to_string());
    let credential =
        auth::find_credential(request.uri().query(), authorization, cookies, cookie_name)
            .map_err(reject)?;
    let now = crate::unix_ms() / 1000;
    let tenant = ctx.signer.verify(&credential, now).map_err(reject)?;
    // Every later line of the request names its tenant (see `request`).
    tracing::Span::current().record("tenant", tracing::field::display(&tenant));
    let cookie = (credential.source != Source::Cookie).then(|| {
        let secure = if ctx.config.public_url().starts_with("https://") {
            "; Secure"
        } else {
            ""
        };
        let max_age = credential.exp.saturating_sub(now);
        let token = format!("{}.{}.{}", tenant, credential.exp, credential.sig);
        HeaderValue::from_str(&format!(
            "{cookie_name}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
        ))
    });
    Ok(Caller {
        tenant,
        source: credential.source,
        cookie: cookie.and_then(Result::ok),
    })
}

/// Counts the caller's request against its tenant's rate and, for a WebSocket, takes a
/// place under its tenant's cap, which the relay's lease then holds.
fn admit(
    edge: &Edge,
    caller: &Caller,
    request: &Request<Body>,
) -> Result<Option<WebSocketSlot>, ApiError> {
    let profile = edge.ctx.profile(&caller.tenant);
    let (rate, max_websockets) = (profile.rate_limit, profile.max_websockets);
    let metrics = &edge.ctx.metrics;
    edge.limits
        .request(&caller.tenant, rate)
        .inspect_err(|_| metrics.rate_limited("requests"))?;
    if !websocket::is_upgrade(request.headers()) {
        return Ok(None);
    }
    edge.limits
        .websocket(&caller.tenant, max_websockets)
        .inspect_err(|_| metrics.rate_limited("websockets"))
        .map(Some)
}

fn with_cookie(mut response: Response, caller: &Caller) -> Response {
    if let Some(cookie) = &caller.cookie {
        response
            .headers_mut()
            .append(header::SET_COOKIE, cookie.clone());
    }
    response
}

async fn status(State(edge): State<Arc<Edge>>, request: Request<Body>) -> Response {
    let caller = match authenticate(&edge.ctx, &request) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = admit(&edge, &caller, &request) {
        return with_cookie(e.into_response(), &caller);
    }
    let response = match edge.tenants.status(&caller.tenant).await {
        Ok(status) => axum::Json(status).into_response(),
        Err(e) => e.into_response(),
    };
    with_cookie(response, &caller)
}

/// Starts the caller's sandbox without waiting for it (a frontend calls this at login)
/// and answers `202` with the status at once; a ready sandbox is left as it is.
async fn prewarm(State(edge): State<Arc<Edge>>, request: Request<Body>) -> Response {
    let caller = match authenticate(&edge.ctx, &request) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = admit(&edge, &caller, &request) {
        return with_cookie(e.into_response(), &caller);
    }
    if edge.ctx.draining.load(Ordering::Acquire) {
        let e = ApiError::new(ErrorCode::ShuttingDown, "the gateway is restarting");
        return e.retry_after(1).into_response();
    }
    let handle = edge.tenants.handle(&caller.tenant);
    drop(start_detached(handle.clone()));
    let mut response = axum::Json(handle.status()).into_response();
    *response.status_mut() = StatusCode::ACCEPTED;
    with_cookie(response, &caller)
}

/// Starts the tenant's sandbox (unless it runs) in a task of its own, so that a caller
/// who stops waiting does not call the start off. The outcome goes to the receiver; if
/// nobody holds it any more, the lease ends at once (the idle clock runs from the
/// moment the sandbox is ready) and a failure is logged.
fn start_detached(handle: TenantHandle) -> oneshot::Receiver<Result<Ready, ApiError>> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        if let Err(Err(e)) = tx.send(handle.acquire().await) {
            tracing::info!(tenant = %handle.tenant(), error = %e, "a start nobody waited for failed");
        }
    });
    rx
}

/// For a page load: the sandbox if it is ready within `waiting_page_after`; otherwise
/// the waiting page, and the start goes on without this request. A start that fails
/// within that time gets the page too, which shows why (from `/api/status`) and offers
/// a retry; other errors (capacity, store) are answered as they are.
async fn ready_or_waiting_page(edge: &Edge, handle: TenantHandle) -> Result<Ready, Response> {
    if let Some(ready) = handle.ready_now() {
        return Ok(ready);
    }
    let asked_at_ms = crate::unix_ms();
    let grace = edge.ctx.config.waiting_page_after.0;
    match tokio::time::timeout(grace, start_detached(handle)).await {
        Ok(Ok(Ok(ready))) => Ok(ready),
        Ok(Ok(Err(e))) if e.code != ErrorCode::SandboxStartFailed => Err(e.into_response()),
        // Still starting, or failed as `/api/status` records it.
        _ => Err(waiting::page(asked_at_ms)),
    }
}

/// The path and query to send upstream: credential parameters removed, and the
/// original frontend's `/ws/api/history` mapped to the agent's `/api/history`.
fn upstream_path(request: &Request<Body>) -> String {
    let path = match request.uri().path() {
        "/ws/api/history" => "/api/history",
        p => p,
    };
    match request
        .uri()
        .query()
        .and_then(auth::strip_credential_params)
    {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    }
}

async fn proxied(State(edge): State<Arc<Edge>>, request: Request<Body>) -> Response {
    let id = edge.requests.fetch_add(1, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let method = request.method().clone();
    // Only the path is logged: the query may hold a signature.
    let path = request.uri().path().to_owned();
    // The dashboard's host serves no agent's content: a page there could use an
    // operator's session.
    if on_admin_host(&edge.ctx, request.headers()) == Some(true) {
        let message = "only the admin dashboard is served on this host";
        return ApiError::new(ErrorCode::NotFound, message).into_response();
    }
    let caller = match authenticate(&edge.ctx, &request) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(request = id, %method, %path, code = e.code.as_str(), "refused");
            return e.into_response();
        }
    };
    let slot = match admit(&edge, &caller, &request) {
        Ok(slot) => slot,
        Err(e) => {
            tracing::debug!(request = id, tenant = %caller.tenant, %method, %path, code = e.code.as_str(), "limited");
            return with_cookie(e.into_response(), &caller);
        }
    };
    let response = match forward(&edge, &caller, request, slot).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    tracing::debug!(request = id, tenant = %caller.tenant, %method, %path, status = response.status().as_u16(),
        elapsed_us = started.elapsed().as_micros() as u64, "proxied");
    with_cookie(response, &caller)
}

async fn forward(
    edge: &Edge,
    caller: &Caller,
    request: Request<Body>,
    slot: Option<WebSocketSlot>,
) -> Result<Response, ApiError> {
    let ready = if edge.ctx.draining.load(Ordering::Acquire) {
        // Once shutdown has begun, no new sandbox: a request on a connection accepted
        // before still reaches a sandbox that runs (left to a successor or not yet
        // stopped), or gets 503 to try again.
        edge.tenants.ready_now(&caller.tenant).ok_or_else(|| {
            ApiError::new(ErrorCode::ShuttingDown, "the gateway is restarting").retry_after(1)
        })?
    } else {
        let handle = edge.tenants.handle(&caller.tenant);
        if waiting::wants_page(&request) {
            match ready_or_waiting_page(edge, handle).await {
                Ok(ready) => ready,
                Err(response) => return Ok(response),
            }
        } else {
            handle.acquire().await?
        }
    };
    let path = upstream_path(&request);
    let strip = Strip {
        authorization: caller.source == Source::Header,
        cookie_name: &edge.ctx.config.auth.cookie_name,
    };
    let openclaw = edge.ctx.agent(&caller.tenant).kind == AgentKind::Openclaw;
    if openclaw
        && path.split('?').next() == Some("/api/history")
        && request.method() == http::Method::GET
    {
        // OpenClaw keeps history behind its own protocol: the gateway asks it.
        let limit = request
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("limit=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or(100u32)
            .min(1000);
        let token = edge.ctx.signer.agent_token(&caller.tenant);
        let connector = edge.ctx.upstreams.connector();
        let payload =
            crate::openclaw::history(connector, &ready.upstream.endpoint, &token, limit).await?;
        drop(ready.lease);
        return Ok(axum::Json(payload).into_response());
    }
    let mut response = if websocket::is_upgrade(request.headers()) {
        let inject = openclaw.then(|| edge.ctx.signer.agent_token(&caller.tenant));
        let mut lease = ready.lease;
        if let Some(slot) = slot {
            lease.carry(slot);
        }
        proxy::websocket(
            &edge.ctx,
            &ready.upstream,
            &path,
            request,
            &strip,
            lease,
            inject,
        )
        .await?
    } else {
        proxy::http(
            &edge.ctx,
            &ready.upstream,
            &path,
            request,
            &strip,
            ready.lease,
        )
        .await?
    };
    if let Some(phases) = ready.phases
        && let Ok(v) = HeaderValue::from_str(&phases.server_timing())
    {
        response
            .headers_mut()
            .append(header::HeaderName::from_static("server-timing"), v);
    }
    if let (Some(phases), Some(from)) = (ready.phases, ready.first_byte_from) {
        first_byte(edge, &caller.tenant, &phases, from.elapsed());
    }
    Ok(response)
}

/// The last phase of a start: the first byte of the answer to the request that waited
/// for it, in metrics and in the start's event.
fn first_byte(edge: &Edge, tenant: &TenantId, phases: &StartPhases, took: std::time::Duration) {
    edge.ctx.metrics.first_byte(took);
    let started = phases.describe();
    let detail = format!(
        "{started}, first byte {:.1} ms",
        took.as_secs_f64() * 1000.0
    );
    let (state, tenant) = (edge.ctx.state.clone(), tenant.clone());
    tokio::spawn(async move {
        let amended = state.amend_event(&tenant, SandboxState::Ready, &started, &detail);
        if let Err(e) = amended.await {
            tracing::warn!(%tenant, error = %e, "cannot record a start's first byte");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_of(uri: &str) -> String {
        upstream_path(&Request::get(uri).body(Body::empty()).unwrap())
    }

    #[test]
    fn the_upstream_path_keeps_everything_but_the_credential() {
        assert_eq!(path_of("/ws?userId=u&exp=1&sig=s"), "/ws");
        assert_eq!(
            path_of("/ws/api/history?userId=u&exp=1&sig=s&limit=5"),
            "/api/history?limit=5"
        );
        assert_eq!(path_of("/api/history"), "/api/history");
        assert_eq!(path_of("/a/b?x=1&y=2"), "/a/b?x=1&y=2");
        assert_eq!(path_of("/ws/api/historyx"), "/ws/api/historyx");
    }
}
