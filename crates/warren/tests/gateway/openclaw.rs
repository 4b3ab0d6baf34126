//! The real OpenClaw as tenants' agent (issue 7, its first part): installed by
//! `scripts/install-openclaw`, started by warren in each tenant's sandbox with a gateway
//! token warren derives and keeps to itself, ready once its `/readyz` answers, and
//! reached over its own WebSocket protocol with that token put in by warren.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::{Gateway, Ws};

fn openclaw_dir() -> String {
    std::env::var("WARREN_OPENCLAW_DIR").unwrap_or_else(|_| {
        panic!(
            "these tests run the real OpenClaw: run `scripts/install-openclaw` and set \
             WARREN_OPENCLAW_DIR to the directory it prints (scripts/test does both)"
        )
    })
}

/// `pid` and every process below it.
fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
    for child in children.unwrap_or_default().split_whitespace() {
        all.extend(tree(child.parse().unwrap()));
    }
    all
}

/// The gateway token the tenant's OpenClaw was started with, from its environment.
async fn token_of(gw: &Gateway, user: &str) -> String {
    let pid = gw.agent_pid(user).await;
    tree(pid)
        .into_iter()
        .find_map(|p| {
            let environ = std::fs::read(format!("/proc/{p}/environ")).ok()?;
            environ.split(|b| *b == 0).find_map(|var| {
                let var = std::str::from_utf8(var).ok()?;
                var.strip_prefix("OPENCLAW_GATEWAY_TOKEN=")
                    .map(str::to_owned)
            })
        })
        .unwrap_or_else(|| panic!("{user}'s sandbox has no OpenClaw with a gateway token"))
}

/// The next JSON text frame on `ws`.
async fn next_json(ws: &mut Ws) -> serde_json::Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                return serde_json::from_str::<serde_json::Value>(&text).unwrap();
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("the WebSocket ended or fell silent: {other:?}"),
        }
    }
}

/// OpenClaw's handshake over `ws`: its challenge, then a `connect` with `token` (or
/// none); returns the answer to the `connect`.
async fn connect(ws: &mut Ws, token: Option<&str>) -> serde_json::Value {
    let challenge = next_json(ws).await;
    assert_eq!(challenge["event"], "connect.challenge", "{challenge}");
    let request = serde_json::json!({
        "type": "req", "id": "c1", "method": "connect",
        "params": {
            "minProtocol": 4, "maxProtocol": 4,
            "client": {"id": "cli", "version": "1", "platform": "linux", "mode": "cli"},
            "role": "operator", "scopes": ["operator.read"],
            "caps": [], "commands": [], "permissions": {},
            "auth": token.map_or(serde_json::json!({}), |t| serde_json::json!({"token": t})),
            "locale": "en", "userAgent": "warren-test"
        }
    });
    ws.send(Message::text(request.to_string())).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no answer to the connect");
        let frame = next_json(ws).await;
        if frame["type"] == "res" && frame["id"] == "c1" {
            return frame;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_user_gets_an_openclaw_of_their_own_with_a_token_warren_keeps() {
    let dir = openclaw_dir();
    let gw = Gateway::start(&format!(
        "[agent]\nkind = \"openclaw\"\nopenclaw_dir = \"{dir}\"\n[runtime]\nstart_timeout = \"120s\""
    ));
    // Two first requests at once: two OpenClaws boot side by side, each answering
    // only once ready (its /readyz).
    let (a, b) = tokio::join!(gw.get_as("user_a", "/"), gw.get_as("user_b", "/"));
    for reply in [&a, &b] {
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(reply.body.contains("openclaw"), "OpenClaw's own page");
    }
    let (token_a, token_b) = (token_of(&gw, "user_a").await, token_of(&gw, "user_b").await);
    assert!(
        token_a.len() >= 32 && token_a != token_b,
        "a token per tenant"
    );
    // The user never sees it: not in what they were sent, their status, or the log.
    for text in [
        &a.body,
        &b.body,
        &gw.status("user_a").await.to_string(),
        &gw.log(),
    ] {
        assert!(!text.contains(&token_a) && !text.contains(&token_b));
    }

    // Through warren, OpenClaw's own protocol: the user's client knows no token (or
    // guesses one); warren puts the tenant's into the `connect` request.
    let mut ws = gw.ws("user_a").await;
    let hello = connect(&mut ws, None).await;
    assert_eq!(hello["ok"], true, "{hello}");
    assert_eq!(hello["payload"]["type"], "hello-ok", "{hello}");
    let mut ws = gw.ws("user_b").await;
    let hello = connect(&mut ws, Some(&token_a)).await;
    assert_eq!(
        hello["ok"], true,
        "b got in as b, whatever it sent: {hello}"
    );
    // A browser's upgrade carries an `Origin` (warren's): it gets in too.
    let mut request = gw.url("/ws").replace("http://", "ws://");
    request.push('?');
    request.push_str(&gw.query("user_a"));
    let mut request = request.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", gw.url("").trim_end_matches('/').parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let hello = connect(&mut ws, None).await;
    assert_eq!(hello["ok"], true, "{hello}");
    // And OpenClaw's history answers through it.
    let history = serde_json::json!({"type": "req", "id": "h1", "method": "chat.history",
        "params": {"sessionKey": "main", "limit": 10}});
    ws.send(Message::text(history.to_string())).await.unwrap();
    let answer = loop {
        let frame = next_json(&mut ws).await;
        if frame["id"] == "h1" {
            break frame;
        }
    };
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(answer["payload"]["messages"].is_array(), "{answer}");

    // `/api/history` (and the original frontend's `/ws/api/history`), with the same
    // credentials as every route: the gateway asks OpenClaw's `chat.history` itself.
    for path in ["/api/history", "/ws/api/history?limit=5"] {
        let reply = gw.get_as("user_b", path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        let history = reply.json();
        assert!(history["messages"].is_array(), "{path}: {history}");
        assert_eq!(history["sessionKey"], "main", "{path}: {history}");
    }
}
