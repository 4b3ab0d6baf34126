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
            "role": "operator", "scopes": ["operator.read", "operator.write"],
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

/// What the fake model provider was asked: each request's `Authorization`.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>;

/// A model provider of the test's own on the host's 127.0.0.1: OpenAI's
/// `/v1/chat/completions`, streamed as server-sent events, answering `echo: ` and the
/// user's last message. Returns its address and what it saw.
async fn fake_llm() -> (std::net::SocketAddr, Seen) {
    use axum::http::HeaderMap;
    let seen = Seen::default();
    let saw = seen.clone();
    let completions = move |headers: HeaderMap, body: String| {
        let saw = saw.clone();
        async move {
            let authorization = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            saw.lock().unwrap().push(authorization);
            let request: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let text = |content: &serde_json::Value| match content {
                serde_json::Value::String(s) => s.clone(),
                parts => parts
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["text"].as_str())
                    .collect(),
            };
            // OpenClaw adds context of its own as user messages; the user's is the
            // last one that is not that.
            let last = request["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .rev()
                .filter(|m| m["role"] == "user")
                .map(|m| text(&m["content"]))
                .find(|t| !t.contains("OPENCLAW_INTERNAL_CONTEXT"))
                .unwrap_or_default();
            let reply = format!("echo: {last}");
            let chunk = |delta: serde_json::Value, finish: Option<&str>| {
                let chunk = serde_json::json!({
                    "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
                    "model": "echo-model",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                });
                format!("data: {chunk}\n\n")
            };
            let mut events = vec![chunk(
                serde_json::json!({"role": "assistant", "content": ""}),
                None,
            )];
            for word in reply.split_inclusive(' ') {
                events.push(chunk(serde_json::json!({"content": word}), None));
            }
            events.push(chunk(serde_json::json!({}), Some("stop")));
            events.push("data: [DONE]\n\n".to_owned());
            let stream = futures_util::stream::iter(
                events.into_iter().map(Ok::<_, std::convert::Infallible>),
            );
            (
                [("content-type", "text/event-stream")],
                axum::body::Body::from_stream(stream),
            )
        }
    };
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(completions));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// Sends `text` to the user's agent over `ws` (an OpenClaw session warren connected)
/// and returns the agent's final reply.
async fn chat(ws: &mut Ws, text: &str) -> String {
    let id = format!("s-{}", rand_suffix());
    let request = serde_json::json!({"type": "req", "id": id, "method": "chat.send",
        "params": {"sessionKey": "main", "message": text, "idempotencyKey": id}});
    ws.send(Message::text(request.to_string())).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no reply to {text:?}");
        let frame = next_json(ws).await;
        if frame["id"] == id.as_str() {
            assert_eq!(frame["ok"], true, "chat.send refused: {frame}");
        }
        if frame["event"] == "chat" && frame["payload"]["state"] == "final" {
            return frame["payload"]["message"]["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        assert_ne!(frame["payload"]["state"], "error", "{frame}");
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// The texts of the user's chat history, through warren's `/api/history`.
async fn history_texts(gw: &Gateway, user: &str) -> String {
    let reply = gw.get_as(user, "/api/history?limit=100").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["messages"].to_string()
}

/// Opens the user's agent through warren and says hello the OpenClaw way.
async fn session(gw: &Gateway, user: &str) -> Ws {
    let mut ws = gw.ws(user).await;
    let hello = connect(&mut ws, None).await;
    assert_eq!(hello["ok"], true, "{hello}");
    ws
}

const LLM_KEY: &str = "sk-warren-test-key-of-the-operator";

#[tokio::test(flavor = "multi_thread")]
async fn users_chat_with_their_own_openclaw_through_a_model_egress_and_keep_their_history() {
    let dir = openclaw_dir();
    let (llm, seen) = fake_llm().await;
    let store = tempfile::tempdir().unwrap();
    let templates = tempfile::tempdir().unwrap();
    let template = templates.path().join("openclaw.json");
    // The operator's template: the model provider at the egress port, with a key that
    // is no key (the gateway puts the real one in).
    std::fs::write(
        &template,
        r#"{
  "models": {"providers": {"fake": {
    "baseUrl": "{{ egress.llm }}/v1", "apiKey": "not-the-key", "api": "openai-completions",
    "models": [{"id": "echo-model", "name": "Echo"}]}}},
  "agents": {"defaults": {"model": {"primary": "fake/echo-model"}}}
}"#,
    )
    .unwrap();
    let config = format!(
        "sleep_after = \"2s\"\n\
         [agent]\nkind = \"openclaw\"\nopenclaw_dir = \"{dir}\"\nconfig_template = \"{}\"\n\
         [agent.egress.llm]\nupstream = \"http://{llm}\"\nport = 18790\napi_key_env = \"TEST_LLM_KEY\"\n\
         [runtime]\nstart_timeout = \"120s\"\n\
         [store]\npath = \"{}\"\n",
        template.display(),
        store.path().display()
    );
    let mut gw = Gateway::start_with(&config, &[("TEST_LLM_KEY", LLM_KEY)]);

    // Two users chat at once, each with their own OpenClaw, over the network the
    // sandbox does not have (network = "none"): the egress port on its own loopback.
    let (mut a, mut b) = tokio::join!(session(&gw, "user_a"), session(&gw, "user_b"));
    let (reply_a, reply_b) = tokio::join!(
        chat(&mut a, "hello from alice"),
        chat(&mut b, "hello from bob")
    );
    assert!(
        reply_a.contains("echo: ") && reply_a.contains("hello from alice"),
        "{reply_a}"
    );
    assert!(reply_b.contains("hello from bob"), "{reply_b}");
    let (history_a, history_b) = (
        history_texts(&gw, "user_a").await,
        history_texts(&gw, "user_b").await,
    );
    assert!(
        history_a.contains("hello from alice") && !history_a.contains("bob"),
        "{history_a}"
    );
    assert!(
        history_b.contains("hello from bob") && !history_b.contains("alice"),
        "{history_b}"
    );

    // The provider saw the operator's key on every request, never the template's; the
    // sandbox holds it nowhere (environment, its openclaw.json).
    let asked = seen.lock().unwrap().clone();
    assert!(!asked.is_empty());
    assert!(
        asked
            .iter()
            .all(|a| a.as_deref() == Some(&*format!("Bearer {LLM_KEY}"))),
        "{asked:?}"
    );
    let pid = gw.agent_pid("user_a").await;
    for p in tree(pid) {
        let environ = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&environ).contains(LLM_KEY));
    }
    let rendered = gw
        .data_dir()
        .join("tenants/user_a/workspace/.openclaw/openclaw.json");
    let rendered = std::fs::read_to_string(rendered).unwrap();
    assert!(rendered.contains("http://127.0.0.1:18790/v1") && !rendered.contains(LLM_KEY));
    assert!(!gw.log().contains(LLM_KEY));

    // Sleep and wake: the chat goes on where it was.
    drop((a, b));
    gw.wait_for_state("user_a", "asleep", Duration::from_secs(60))
        .await;
    assert_eq!(gw.status("user_a").await["last_stop"]["cause"], "idle");
    let mut a = session(&gw, "user_a").await;
    assert!(chat(&mut a, "after a nap").await.contains("after a nap"));
    let history = history_texts(&gw, "user_a").await;
    assert!(
        history.contains("hello from alice") && history.contains("after a nap"),
        "{history}"
    );

    // kill -9 of the whole sandbox: OpenClaw's SQLite (WAL) comes back whole.
    let pid = gw.agent_pid("user_a").await;
    drop(a);
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    gw.wait_for_state("user_a", "asleep", Duration::from_secs(30))
        .await;
    assert_eq!(gw.status("user_a").await["last_stop"]["cause"], "crash");
    let history = history_texts(&gw, "user_a").await;
    assert!(
        history.contains("hello from alice") && history.contains("after a nap"),
        "{history}"
    );

    // Another machine: a fresh data dir, the same store.
    gw.shut_down();
    let fresh = Gateway::start_with(&config, &[("TEST_LLM_KEY", LLM_KEY)]);
    let history = history_texts(&fresh, "user_a").await;
    assert!(
        history.contains("hello from alice") && history.contains("after a nap"),
        "{history}"
    );
    let history = history_texts(&fresh, "user_b").await;
    assert!(
        history.contains("hello from bob") && !history.contains("alice"),
        "{history}"
    );
}
