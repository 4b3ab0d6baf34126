//! Per-user limits at the edge: a request rate per tier (429 `rate_limited` with
//! `Retry-After`), a cap on each user's open WebSockets, and neither touching another
//! user, the health routes or the admin API.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use warren_core::TenantId;
use warren_state::StateStore;

use super::harness::{Gateway, POLL, echo};

/// A token every 4 s, three at once, for everyone; `vip`'s tier allows far more, and
/// takes the top level's cap of two WebSockets.
const CONFIG: &str = "rate_limit = { requests_per_second = 0.25, burst = 3 }\nmax_websockets = 2\n\
     [tiers.pro]\nrate_limit = { requests_per_second = 1000, burst = 1000 }\n\
     [tenants.vip]\ntier = \"pro\"\n";

#[tokio::test]
async fn a_burst_past_the_rate_gets_429_and_another_user_or_a_higher_tier_passes() {
    let gw = Gateway::start(CONFIG);
    for _ in 0..3 {
        assert_eq!(gw.get_as("user_a", "/api/status").await.status, 200);
    }
    let refused = gw.get_as("user_a", "/api/status").await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    assert_eq!(refused.code(), "rate_limited");
    assert_eq!(refused.json()["error"]["retryable"], true);
    let retry_after: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=4).contains(&retry_after), "Retry-After: {retry_after}");
    // Proxied routes count too, and a refused one starts no sandbox.
    let proxied = gw.get_as("user_a", "/api/history").await;
    assert_eq!(
        (proxied.status.as_u16(), proxied.code()),
        (429, "rate_limited".into())
    );
    let user_a = TenantId::parse("user_a").unwrap();
    let record = gw.state_store().sandbox(&user_a).await.unwrap();
    assert!(record.is_none(), "{record:?}");

    assert_eq!(
        gw.get_as("user_b", "/api/status").await.status,
        200,
        "a bucket of its own"
    );
    for _ in 0..30 {
        let reply = gw.get_as("vip", "/api/status").await;
        assert_eq!(reply.status, 200, "the pro tier's limit: {}", reply.body);
    }
    assert_eq!(rate_limited(&gw, "requests").await, 2.0);
    for _ in 0..10 {
        assert_eq!(gw.get("/healthz").await.status, 200);
        assert_eq!(
            gw.admin(Method::GET, "/admin/api/workers", "").await.status,
            200
        );
    }
    // Told when, it passes then.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(gw.get_as("user_a", "/api/status").await.status, 200);
}

/// `warren_rate_limited_total` of `limit` on `/metrics`.
async fn rate_limited(gw: &Gateway, limit: &str) -> f64 {
    let metrics = gw.admin(Method::GET, "/metrics", "").await.body;
    let name = format!("warren_rate_limited_total{{limit=\"{limit}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&name)?.parse().ok())
        .unwrap_or_else(|| panic!("no {name}in\n{metrics}"))
}

/// An upgrade of `user`'s `/ws`: `Ok` once open, or the refusal's status and body.
async fn upgrade(gw: &Gateway, user: &str) -> Result<super::harness::Ws, (StatusCode, String)> {
    let url = format!("ws://{}/ws?{}", gw.addr, gw.query(user));
    match tokio_tungstenite::connect_async(url.into_client_request().unwrap()).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            let body = String::from_utf8_lossy(&body).into_owned();
            assert!(
                response.headers().contains_key("retry-after"),
                "{response:?}"
            );
            Err((response.status(), body))
        }
        Err(e) => panic!("the upgrade failed otherwise: {e}"),
    }
}

#[tokio::test]
async fn the_websocket_cap_refuses_one_more_and_admits_again_once_one_closes() {
    use futures_util::SinkExt;

    let gw = Gateway::start(CONFIG);
    let mut first = gw.ws("vip").await;
    let mut second = gw.ws("vip").await;
    assert_eq!(echo(&mut second, "two open").await, "two open");
    let Err((status, body)) = upgrade(&gw, "vip").await else {
        panic!("a third WebSocket was let in");
    };
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("\"rate_limited\""), "{body}");
    assert_eq!(rate_limited(&gw, "websockets").await, 1.0);
    // Another user has a cap of its own.
    let mut other = gw.ws("user_b").await;
    assert_eq!(echo(&mut other, "mine").await, "mine");
    // The first still works; once it has closed, a new one is let in.
    assert_eq!(echo(&mut first, "still here").await, "still here");
    first.close(None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut third = loop {
        match upgrade(&gw, "vip").await {
            Ok(ws) => break ws,
            Err((status, body)) => {
                assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
                assert!(Instant::now() < deadline, "never admitted again");
                tokio::time::sleep(POLL).await;
            }
        }
    };
    assert_eq!(echo(&mut third, "admitted").await, "admitted");
    assert!(
        upgrade(&gw, "vip").await.is_err(),
        "two open again: the cap holds"
    );
    third.send(tungstenite::Message::Close(None)).await.unwrap();
}
