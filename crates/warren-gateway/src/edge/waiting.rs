//! The waiting page: what a browser loading a page sees while its sandbox starts.
//!
//! This module owns which requests may get the page ([`wants_page`]: a GET that is not
//! a WebSocket upgrade and accepts `text/html`) and the page itself (`waiting.html`,
//! static, no external resources). The edge decides when: a page load whose sandbox is
//! not ready within `waiting_page_after`. The page polls `/api/status` with the session
//! cookie the edge sets on the same answer, shows the start's phase and elapsed time,
//! reloads the address it was loaded from once the sandbox is ready, and shows why a
//! start failed with a retry (`POST /api/prewarm`).
//!
//! What must hold: the page carries no credential (a signed query stays in the address
//! bar, never in the body); the page inserts every value from the server as text,
//! never as markup; and the answer is never cached, because it stands in for the page
//! asked for only for a moment.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, Request, StatusCode, header};

use crate::websocket;

const PAGE: &str = include_str!("waiting.html");

/// Where the page holds the moment its request arrived.
const ASKED_AT: &str = "__ASKED_AT_MS__";

/// The page talks to its own origin only, and runs only its own inline script.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Whether a request is a browser loading a page: a GET, not a WebSocket upgrade, that
/// accepts HTML.
pub(super) fn wants_page(request: &Request<Body>) -> bool {
    request.method() == Method::GET
        && !websocket::is_upgrade(request.headers())
        && accepts_html(request.headers())
}

/// Whether `Accept` lists `text/html`, unless with a quality of zero (refused).
fn accepts_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim();
            media.eq_ignore_ascii_case("text/html") && !parts.any(is_zero_quality)
        })
}

fn is_zero_quality(parameter: &str) -> bool {
    let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
    name.trim().eq_ignore_ascii_case("q") && value.trim().parse::<f32>() == Ok(0.0)
}

/// The waiting page for a request that arrived at `asked_at_ms` (Unix ms, the gateway's
/// clock): start failures recorded from then on are this visit's, and the page shows
/// them. `503` with `Retry-After`, so that whatever is not a person reading it knows
/// to come back.
pub(super) fn page(asked_at_ms: u64) -> Response {
    let html = PAGE.replacen(ASKED_AT, &asked_at_ms.to_string(), 1);
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::RETRY_AFTER, "1"),
        (header::CACHE_CONTROL, "no-store"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    (StatusCode::SERVICE_UNAVAILABLE, headers, html).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, headers: &[(&str, &str)]) -> Request<Body> {
        let mut builder = Request::builder().method(method).uri("/");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Body::empty()).unwrap()
    }

    #[test]
    fn only_a_get_for_html_that_is_no_upgrade_is_a_page_load() {
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(wants_page(&request(Method::GET, &[("accept", firefox)])));
        assert!(wants_page(&request(
            Method::GET,
            &[("accept", "TEXT/HTML")]
        )));
        assert!(wants_page(&request(
            Method::GET,
            &[
                ("accept", "application/json"),
                ("accept", "text/html;q=0.5")
            ]
        )));
        for headers in [
            &[][..],
            &[("accept", "*/*")],
            &[("accept", "application/json")],
            &[("accept", "text/html;q=0")],
            &[("accept", "text/html; Q=0.0")],
            &[("accept", "text/htmlx")],
            &[
                ("accept", "text/html"),
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
            ],
        ] {
            assert!(!wants_page(&request(Method::GET, headers)), "{headers:?}");
        }
        assert!(!wants_page(&request(
            Method::POST,
            &[("accept", "text/html")]
        )));
        assert!(!wants_page(&request(
            Method::HEAD,
            &[("accept", "text/html")]
        )));
    }

    #[tokio::test]
    async fn the_page_holds_when_it_was_asked_for_and_is_never_cached() {
        let response = page(1_700_000_000_123);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let headers = response.headers();
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let html = String::from_utf8(body.to_vec()).unwrap();
        assert!(html.contains("data-asked-at-ms=\"1700000000123\""));
        assert!(!html.contains(ASKED_AT));
        // Server values are text, never markup.
        assert!(!html.contains("innerHTML"));
    }
}
