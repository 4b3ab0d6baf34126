//! Every request's id, log span and count, around every route.
//!
//! A request keeps the `X-Request-Id` it came with when that is well formed (1 to 128
//! letters, digits or `-_.:/+=`), else gets one of the gateway's own; the id goes on to
//! the agent with the request and back to the client with the answer. The route runs
//! in a span `request` with the fields `request_id` and, once the caller is
//! authenticated, `tenant` (see `edge::authenticate`), so each of its log lines carries
//! both. Nothing else of the request goes into the span or the log: never the query
//! (it may hold a signature), never a header (cookies, `Authorization`).

use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderName, HeaderValue, Request};
use tracing::Instrument as _;

use super::Edge;
use crate::metrics::RouteClass;
use crate::websocket;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest `X-Request-Id` a client may choose.
const MAX_ID_LEN: usize = 128;

/// A client's id, if it is one to keep: short, and of characters that read the same in
/// a log line, JSON or not.
fn well_formed(value: &HeaderValue) -> Option<HeaderValue> {
    let bytes = value.as_bytes();
    let fits = (1..=MAX_ID_LEN).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(b));
    fits.then(|| value.clone())
}

/// An id no other request of this deployment has had: this process's random prefix
/// and a count.
fn new_id() -> HeaderValue {
    // Random per process (the standard library seeds it from the OS), so two gateways
    // never hand out the same ids.
    static PREFIX: LazyLock<u64> =
        LazyLock::new(|| std::hash::RandomState::new().build_hasher().finish());
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("{:016x}-{n}", *PREFIX)).expect("hex digits, '-' and digits")
}

/// The middleware: the id, the span, the count in `warren_requests_total`, and one
/// debug line per request.
pub(super) async fn observe(
    State(edge): State<Arc<Edge>>,
    mut request: Request<Body>,
    next: Next,
) -> Response {
    let id = request
        .headers()
        .get(X_REQUEST_ID)
        .and_then(well_formed)
        .unwrap_or_else(new_id);
    let upgrade = websocket::is_upgrade(request.headers());
    let class = RouteClass::of(request.uri().path(), upgrade);
    let span = tracing::info_span!(
        "request",
        request_id = id.to_str().unwrap_or_default(),
        tenant = tracing::field::Empty
    );
    let started = Instant::now();
    let method = request.method().clone();
    // Only the path: the query may hold a signature.
    let path = tracing::enabled!(tracing::Level::DEBUG).then(|| request.uri().path().to_owned());
    request.headers_mut().insert(X_REQUEST_ID, id.clone());
    let mut response = next.run(request).instrument(span.clone()).await;
    response.headers_mut().insert(X_REQUEST_ID, id);
    edge.ctx.metrics.request(class, response.status());
    span.in_scope(|| {
        tracing::debug!(class = class.as_str(), %method, path = path.as_deref().unwrap_or_default(),
            status = response.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "answered")
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_id_is_kept_only_when_short_and_plain() {
        for ok in [
            "abc",
            "0f8e-12",
            "Root=1-5759e988:bd862e3f/x+y.z_w",
            &"a".repeat(128),
        ] {
            let value = HeaderValue::from_str(ok).unwrap();
            assert_eq!(well_formed(&value), Some(value), "{ok}");
        }
        let long = "a".repeat(129);
        for bad in ["", "a b", "a\"b", "a;b", "{json}", "é", &long] {
            let value = HeaderValue::from_bytes(bad.as_bytes()).unwrap();
            assert_eq!(well_formed(&value), None, "{bad}");
        }
    }

    #[test]
    fn the_gateways_own_ids_differ_and_are_well_formed() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert_eq!(well_formed(&a), Some(a.clone()));
        assert_eq!(
            a.as_bytes()[..17],
            b.as_bytes()[..17],
            "one prefix per process"
        );
    }
}
