//! The operator's dashboard under `/admin/`: server-rendered pages of what the admin
//! API knows (sandboxes and their states, capacity, starts, events, workers), with a
//! few lines of JavaScript that render the shown view again every 2 s. No build step,
//! no external resource; the page's CSP allows scripts, styles and requests from the
//! gateway only, and no inline script or style.
//!
//! A browser cannot send the admin bearer token on a navigation, so `/admin/` logs in
//! with a form: the token is checked (in constant time) and answered with a session
//! cookie scoped to `/admin`, HttpOnly, SameSite=Strict, Secure when `public_url` is
//! https. The cookie never holds the token: it is an expiry and an HMAC of it keyed by
//! the token, so the gateway keeps no sessions (they survive a restart or takeover)
//! and changing the admin token ends them all. The admin API accepts the cookie as it
//! accepts the bearer token (see `admin::authorize`), unless the request says it comes
//! from another origin.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use sha2::Sha256;
use warren_core::auth::constant_time_eq;
use warren_core::{ErrorCode, TenantId};

use crate::admin::{self, authorize, tenants};
use crate::edge::Edge;
use crate::error::ApiError;
use crate::unix_ms;

mod chart;
mod render;

use render::{esc, query_value};

const COOKIE: &str = "warren_admin";
/// How long a login lasts.
const SESSION_SECS: u64 = 12 * 3600;
/// The events the starts view reads (the last hour's, at most).
const START_EVENTS: usize = 5000;

const PAGE: &str = include_str!("dashboard/page.html");
const LOGIN: &str = include_str!("dashboard/login.html");
const CSS: &str = include_str!("dashboard/dashboard.css");
const JS: &str = include_str!("dashboard/dashboard.js");
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self'; form-action 'self'; \
                   base-uri 'none'; frame-ancestors 'none'";

pub fn router() -> Router<Arc<Edge>> {
    Router::new()
        .route("/admin", get(to_dashboard))
        .route("/admin/", get(page))
        .route("/admin/login", post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/assets/dashboard.css", get(css))
        .route("/admin/assets/dashboard.js", get(js))
        .route("/admin/tenants/{tenant}/stop", post(stop))
        .route("/admin/tenants/{tenant}/restart", post(restart))
}

// === impl session ===

fn session_mac(token: &str, exp: u64) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC accepts keys of any length");
    // Nothing else warren signs starts like this, so no other signature can pass for
    // a session, even under an admin token equal to the signing secret.
    mac.update(b"warren admin session\n");
    mac.update(exp.to_string().as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// Whether the request carries an unexpired session cookie of this admin token, and
/// does not say it comes from another origin.
pub(crate) fn session_valid(edge: &Edge, headers: &HeaderMap) -> bool {
    if !same_origin(edge, headers) || !dashboard_here(edge, headers) {
        return false;
    }
    let now = unix_ms() / 1000;
    let token = edge.ctx.admin_token.expose();
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .any(|value| {
            let Some((exp, mac)) = value.split_once('.') else {
                return false;
            };
            let Ok(exp) = exp.parse::<u64>() else {
                return false;
            };
            exp > now
                && exp <= now + SESSION_SECS + 60
                && constant_time_eq(mac.as_bytes(), session_mac(token, exp).as_bytes())
        })
}

/// False when an `Origin` header names another origin than the one asked (the Host,
/// or `public_url` behind a proxy): a cross-site request riding on the cookie, which
/// SameSite=Strict already keeps away in current browsers.
fn same_origin(edge: &Edge, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let authority = origin.split_once("://").map(|(_, a)| a);
    authority.is_some() && authority == host
        || origin == edge.ctx.config.public_url().trim_end_matches('/')
}

/// False when `admin.host` is set and the request came for another host: the
/// dashboard, its login and its session live on that host alone.
fn dashboard_here(edge: &Edge, headers: &HeaderMap) -> bool {
    crate::edge::on_admin_host(&edge.ctx, headers) != Some(false)
}

/// The answer to a dashboard page asked for on a host other than `admin.host`.
fn elsewhere(edge: &Edge) -> Response {
    let host = edge.ctx.config.admin.host.as_deref().unwrap_or_default();
    let message = format!(
        "<p class=\"bad\" id=\"login-error\">The dashboard is served on {} only.</p>",
        esc(host)
    );
    html(
        StatusCode::NOT_FOUND,
        LOGIN.replace("{{message}}", &message),
    )
}

fn secure_flag(edge: &Edge) -> &'static str {
    if edge.ctx.config.public_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

/// The value of a field of an `application/x-www-form-urlencoded` body.
fn form_value(body: &[u8], key: &str) -> Option<String> {
    let body = std::str::from_utf8(body).ok()?;
    let raw = body
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?;
    let raw = raw.replace('+', " ");
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn login(State(edge): State<Arc<Edge>>, headers: HeaderMap, body: Bytes) -> Response {
    if !dashboard_here(&edge, &headers) {
        return elsewhere(&edge);
    }
    let given = form_value(&body, "token").unwrap_or_default();
    let token = edge.ctx.admin_token.expose();
    if !same_origin(&edge, &headers) || !constant_time_eq(given.trim().as_bytes(), token.as_bytes())
    {
        tracing::info!("dashboard login refused");
        let message =
            "<p class=\"bad\" id=\"login-error\">That is not this gateway's admin token.</p>";
        return html(
            StatusCode::UNAUTHORIZED,
            LOGIN.replace("{{message}}", message),
        );
    }
    let exp = unix_ms() / 1000 + SESSION_SECS;
    let cookie = format!(
        "{COOKIE}={exp}.{}; Path=/admin; Max-Age={SESSION_SECS}; HttpOnly; SameSite=Strict{}",
        session_mac(token, exp),
        secure_flag(&edge)
    );
    tracing::info!("dashboard login");
    redirect("/admin/", Some(cookie))
}

async fn logout(State(edge): State<Arc<Edge>>) -> Response {
    let cookie = format!(
        "{COOKIE}=; Path=/admin; Max-Age=0; HttpOnly; SameSite=Strict{}",
        secure_flag(&edge)
    );
    redirect("/admin/", Some(cookie))
}

// === impl pages ===

/// An HTML page's answer. Its referrer policy is `same-origin`: under `no-referrer`
/// a browser sends `Origin: null` with the page's forms, which `same_origin` refuses.
fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn redirect(to: &str, cookie: Option<String>) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    if let Ok(to) = HeaderValue::from_str(to) {
        headers.insert(header::LOCATION, to);
    }
    if let Some(cookie) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn to_dashboard() -> Response {
    redirect("/admin/", None)
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
struct PageQuery {
    view: Option<String>,
    tenant: Option<String>,
    /// Only what goes inside `<main>`, for the live refresh.
    fragment: Option<String>,
    /// What an action did (`stopped`, `restarted`), or why it failed.
    done: Option<String>,
    error: Option<String>,
}

/// A view: the tab it belongs to, its title, and its HTML.
struct View {
    tab: &'static str,
    title: String,
    main: String,
}

async fn page(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Response {
    if !dashboard_here(&edge, &headers) {
        return elsewhere(&edge);
    }
    if let Err(e) = authorize(&edge, &headers) {
        if q.fragment.is_some() {
            return e.into_response();
        }
        return html(StatusCode::UNAUTHORIZED, LOGIN.replace("{{message}}", ""));
    }
    let now = unix_ms();
    let (status, view) = match view(&edge, &q, now).await {
        Ok(view) => (StatusCode::OK, view),
        Err(e) => {
            let status = StatusCode::from_u16(e.code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let main = format!(
                "<p class=\"bad\" id=\"error\">{} <span class=\"muted\">({})</span></p>",
                esc(&e.message),
                e.code.as_str()
            );
            let title = "error".to_owned();
            (
                status,
                View {
                    tab: "",
                    title,
                    main,
                },
            )
        }
    };
    if q.fragment.is_some() {
        return html(status, view.main);
    }
    let flash = match (&q.done, &q.error) {
        (_, Some(error)) => format!("<p class=\"flash bad\" id=\"flash\">{}</p>", esc(error)),
        (Some(done), None) => format!("<p class=\"flash\" id=\"flash\">Sandbox {}.</p>", esc(done)),
        (None, None) => String::new(),
    };
    // `main` goes in last, so nothing it holds is taken for a placeholder.
    let body = PAGE
        .replace("{{title}}", &esc(&view.title))
        .replace("{{nav}}", &render::nav(view.tab))
        .replace("{{rendered}}", &render::clock(now, now))
        .replace("{{flash}}", &flash)
        .replace("{{main}}", &view.main);
    html(status, body)
}

fn parse_tenant(raw: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(raw)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid tenant id: {e}")))
}

async fn view(edge: &Edge, q: &PageQuery, now: u64) -> Result<View, ApiError> {
    let tenant = q.tenant.as_deref().filter(|t| !t.is_empty());
    let name = q.view.as_deref().unwrap_or("sandboxes");
    if let (Some(raw), false) = (tenant, name == "events") {
        let t = parse_tenant(raw)?;
        let detail = tenants::detail(edge, &t).await?;
        return Ok(View {
            tab: "",
            title: t.to_string(),
            main: render::tenant(&detail, now),
        });
    }
    let main = match name {
        "sandboxes" => {
            let list = tenants::list(edge).await?;
            render::sandboxes(&list, &tenants::capacity(edge), now)
        }
        "capacity" => {
            let list = tenants::list(edge).await?;
            let max_delay = edge.ctx.config.sync.max_delay.0.as_millis() as u64;
            render::capacity(&list, &tenants::capacity(edge), max_delay, now)
        }
        "starts" => {
            let events = tenants::events(edge, None, START_EVENTS).await?;
            chart::Starts::of(&events, now).render()
        }
        "events" => {
            let t = tenant.map(parse_tenant).transpose()?;
            let events = tenants::events(edge, t.as_ref(), 200).await?;
            render::events(&events, tenant, now)
        }
        "workers" => render::workers(&admin::worker_statuses(edge), now),
        other => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no view {other:?}"),
            ));
        }
    };
    let (tab, title) = render::VIEWS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(("", ""), |(n, l)| (*n, *l));
    Ok(View {
        tab,
        title: title.to_owned(),
        main,
    })
}

// === impl actions ===

async fn stop(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Response {
    action(&edge, &headers, &raw, false).await
}

async fn restart(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Response {
    action(&edge, &headers, &raw, true).await
}

/// A button of a tenant's page: does it, then shows the page again with the outcome.
async fn action(edge: &Edge, headers: &HeaderMap, raw: &str, restart: bool) -> Response {
    if let Err(e) = authorize(edge, headers) {
        return e.into_response();
    }
    let t = match parse_tenant(raw) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let done = if restart {
        admin::restart_tenant(edge, &t).await.map(|_| "restarted")
    } else {
        admin::stop_tenant(edge, &t).await.map(|_| "stopped")
    };
    let outcome = match done {
        Ok(done) => format!("done={done}"),
        Err(e) => format!("error={}", query_value(&e.to_string())),
    };
    redirect(
        &format!("/admin/?tenant={}&{outcome}", query_value(t.as_str())),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_form_fields() {
        assert_eq!(
            form_value(b"a=1&token=ab%2Bc+d%21", "token").as_deref(),
            Some("ab+c d!")
        );
        assert_eq!(form_value(b"tokens=1", "token"), None);
        assert_eq!(form_value(b"token=%zz", "token"), None);
        assert_eq!(form_value(b"token=", "token").as_deref(), Some(""));
    }

    #[test]
    fn a_session_is_bound_to_the_token_and_its_expiry() {
        let mac = session_mac("token-a", 1000);
        assert_eq!(mac, session_mac("token-a", 1000));
        assert_ne!(mac, session_mac("token-b", 1000));
        assert_ne!(mac, session_mac("token-a", 1001));
        assert!(!mac.contains("token"));
    }
}
