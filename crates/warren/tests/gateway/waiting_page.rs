//! The waiting page: a browser loading a page while its sandbox starts gets a page that
//! follows the start through `/api/status` (with the cookie set on the same answer)
//! instead of waiting; API clients and WebSockets still wait for the agent.

use std::time::{Duration, Instant};

use http::{Request, header};
use http_body_util::Full;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::{self, Gateway, POLL, Reply};

/// What Firefox asks for when it loads a page.
const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

/// An agent that takes a second and a half to listen: longer than the default
/// `waiting_page_after`.
fn slow_agent() -> String {
    harness::shell_agent(&format!(
        "sleep 1.5; exec {} echo-agent",
        harness::warren_bin()
    ))
}

async fn browser_get(gw: &Gateway, path_and_query: &str) -> Reply {
    let request = Request::get(gw.url(path_and_query))
        .header(header::ACCEPT, BROWSER_ACCEPT)
        .body(Full::default())
        .unwrap();
    gw.request(request).await
}

/// The `name=value` of the reply's `Set-Cookie`, as a `Cookie` header sends it back.
fn cookie_of(reply: &Reply) -> String {
    let set_cookie = reply.headers[header::SET_COOKIE].to_str().unwrap();
    set_cookie.split(';').next().unwrap().to_owned()
}

/// `/api/status` as the page asks for it: with the cookie alone.
async fn status_by_cookie(gw: &Gateway, cookie: &str) -> serde_json::Value {
    let request = Request::get(gw.url("/api/status"))
        .header(header::COOKIE, cookie)
        .body(Full::default())
        .unwrap();
    let reply = gw.request(request).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

/// Polls `/api/status` by cookie until `done` holds for it; returns that status.
async fn status_until(
    gw: &Gateway,
    cookie: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = status_by_cookie(gw, cookie).await;
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "still {status}");
        tokio::time::sleep(POLL).await;
    }
}

/// When the page says its request arrived (Unix ms, the gateway's clock).
fn asked_at_ms(page: &Reply) -> u64 {
    let (_, rest) = page.body.split_once("data-asked-at-ms=\"").unwrap();
    rest.split('"').next().unwrap().parse().unwrap()
}

fn assert_is_waiting_page(reply: &Reply) {
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    assert_eq!(reply.headers[header::RETRY_AFTER], "1");
    assert_eq!(reply.headers[header::CACHE_CONTROL], "no-store");
    assert!(reply.body.contains("/api/status"), "{}", reply.body);
}

#[tokio::test]
async fn a_browser_waits_on_a_page_that_follows_the_start_then_reaches_the_agent() {
    let gw = Gateway::start(&slow_agent());
    let url = format!("/api/history?{}", gw.query("user_a"));
    let page = browser_get(&gw, &url).await;
    assert_is_waiting_page(&page);
    // The credential stays in the address bar: the page polls with the cookie.
    assert!(!page.body.contains("sig="), "{}", page.body);
    assert!(!page.body.contains("user_a"), "{}", page.body);
    let cookie = cookie_of(&page);

    // What the page shows: the start, still going without the request, with its phase
    // and elapsed time, until it is ready.
    let starting = status_by_cookie(&gw, &cookie).await;
    assert_eq!(starting["state"], "starting", "{starting}");
    assert!(starting["phase"]["name"].is_string(), "{starting}");
    assert!(starting["phase"]["elapsed_ms"].is_u64(), "{starting}");
    status_until(&gw, &cookie, |s| {
        assert!(s["state"] == "starting" || s["state"] == "ready", "{s}");
        s["state"] == "ready"
    })
    .await;

    // The page reloads its address: the agent answers.
    let reply = browser_get(&gw, &url).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["messages"], serde_json::json!([]));
}

#[tokio::test]
async fn a_browser_gets_the_agent_itself_when_the_start_fits_in_the_grace() {
    // A generous grace with the echo agent: what matters is what a start within it
    // looks like, not how fast this machine starts a sandbox.
    let gw = Gateway::start("waiting_page_after = \"10s\"");
    let reply = browser_get(&gw, &format!("/api/history?{}", gw.query("user_a"))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["messages"], serde_json::json!([]));
    // This very request waited for the start.
    assert!(
        reply.headers.contains_key("server-timing"),
        "{:?}",
        reply.headers
    );
}

#[tokio::test]
async fn api_clients_and_websockets_wait_for_a_slow_agent() {
    let gw = Gateway::start(&slow_agent());
    let api = Request::get(gw.url(&format!("/api/history?{}", gw.query("user_a"))))
        .header(header::ACCEPT, "application/json")
        .body(Full::default())
        .unwrap();
    let reply = gw.request(api).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["messages"], serde_json::json!([]));
    assert!(reply.headers.contains_key("server-timing"));

    // An upgrade is never a page load, whatever it accepts.
    let url = format!("ws://{}/ws?{}", gw.addr, gw.query("user_b"));
    let mut upgrade = url.into_client_request().unwrap();
    upgrade
        .headers_mut()
        .insert(header::ACCEPT, BROWSER_ACCEPT.parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(upgrade)
        .await
        .expect("upgrade");
    assert_eq!(response.status(), 101);
    assert_eq!(harness::echo(&mut ws, "hello").await, "hello");
}

#[tokio::test]
async fn a_failed_start_shows_why_on_the_status_and_a_retry_starts_again() {
    let gw = Gateway::start(&harness::shell_agent("echo the agent gives up >&2; exit 3"));
    let page = browser_get(&gw, &format!("/?{}", gw.query("user_a"))).await;
    assert_is_waiting_page(&page);
    let asked_at = asked_at_ms(&page);
    let cookie = cookie_of(&page);

    // What the page shows: the failure, recorded since its request, and why.
    let is_failure_since = |since: u64| {
        move |s: &serde_json::Value| {
            s["state"] == "asleep"
                && s["last_stop"]["cause"] == "start_failed"
                && s["last_stop"]["at_ms"].as_u64().unwrap() >= since
        }
    };
    let failed = status_until(&gw, &cookie, is_failure_since(asked_at)).await;
    let detail = failed["last_stop"]["detail"].as_str().unwrap_or_default();
    assert!(!detail.is_empty(), "{failed}");

    // The page's retry: the same start again, and its own failure.
    let retry = Request::post(gw.url("/api/prewarm"))
        .header(header::COOKIE, &cookie)
        .body(Full::default())
        .unwrap();
    let reply = gw.request(retry).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let first_at = failed["last_stop"]["at_ms"].as_u64().unwrap();
    status_until(&gw, &cookie, is_failure_since(first_at + 1)).await;
}
