//! Black-box tests of the gateway: the real binary, real sandboxes (echo agents), real
//! sockets on 127.0.0.1.

#[path = "gateway/audit.rs"]
mod audit;
#[path = "gateway/cleanup.rs"]
mod cleanup;
#[path = "gateway/cold_starts.rs"]
mod cold_starts;
#[path = "gateway/dashboard.rs"]
mod dashboard;
#[path = "gateway/egress.rs"]
mod egress;
mod harness;
#[path = "gateway/limits.rs"]
mod limits;
#[path = "gateway/metrics.rs"]
mod metrics;
#[path = "gateway/openclaw.rs"]
mod openclaw;
#[path = "gateway/tiers.rs"]
mod tiers;
#[path = "gateway/waiting_page.rs"]
mod waiting_page;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use harness::{Gateway, POLL, echo, now_secs, process_alive, run_warren, wait_gone};
use http::{Request, header};
use http_body_util::Full;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use warren_core::TenantId;
use warren_core::auth::Signer;
use warren_core::sandbox::{SandboxState, StopCause};
use warren_state::StateStore;

#[tokio::test]
async fn two_users_cannot_see_each_others_history() {
    let gw = Gateway::start("");
    let mut a = gw.ws("user_a").await;
    let mut b = gw.ws("user_b").await;
    assert_eq!(echo(&mut a, "secret of a").await, "secret of a");
    assert_eq!(echo(&mut b, "secret of b").await, "secret of b");
    assert_eq!(gw.history("user_a").await, ["secret of a"]);
    assert_eq!(gw.history("user_b").await, ["secret of b"]);
    assert_ne!(
        gw.agent_pid("user_a").await,
        gw.agent_pid("user_b").await,
        "one sandbox each"
    );
}

#[tokio::test]
async fn every_auth_failure_gets_401_with_its_own_code() {
    let gw = Gateway::start("");
    let signer = Signer::new(harness::SECRET.as_bytes());
    let user = TenantId::parse("user_a").unwrap();
    let exp = now_secs() + 600;
    let forged = Signer::new(b"not-the-secret-at-all").query(&user, exp);
    let expired = signer.query(&user, now_secs() - 10);
    let evil = format!("userId=..&exp={exp}&sig=AAAA");
    let cases = [
        ("", "auth_missing"),
        ("?userId=user_a&exp=123", "auth_malformed"),
        ("?userId=user_a&exp=soon&sig=abc", "auth_malformed"),
        ("?userId=user_a&exp=123&sig=%%%", "auth_malformed"),
        (&format!("?{forged}"), "auth_bad_signature"),
        (
            &format!("?userId=user_b&exp={exp}&sig={}", signer.sign(&user, exp)),
            "auth_bad_signature",
        ),
        (&format!("?{expired}"), "auth_expired"),
        (&format!("?{evil}"), "auth_invalid_user_id"),
        (
            &format!("?userId=a%2Fb&exp={exp}&sig=AAAA"),
            "auth_invalid_user_id",
        ),
        (
            &format!("?userId=a%00b&exp={exp}&sig=AAAA"),
            "auth_invalid_user_id",
        ),
        (
            &format!("?userId={}&exp={exp}&sig=AAAA", "u".repeat(200)),
            "auth_invalid_user_id",
        ),
    ];
    for path in [
        "/ws",
        "/api/history",
        "/ws/api/history",
        "/api/status",
        "/anything/else",
    ] {
        for (query, code) in &cases {
            let reply = gw.get(&format!("{path}{query}")).await;
            assert_eq!(reply.status, 401, "{path}{query}: {}", reply.body);
            assert_eq!(reply.code(), *code, "{path}{query}");
            assert!(
                reply.headers.get(header::SET_COOKIE).is_none(),
                "no cookie for a refused request"
            );
        }
    }
    // The same failures through the header and the cookie.
    let bad_header = Request::get(gw.url("/api/history"))
        .header(
            header::AUTHORIZATION,
            format!(
                "Bearer {}",
                Signer::new(b"wrong-secret-wrong").token(&user, exp)
            ),
        )
        .body(Full::default())
        .unwrap();
    assert_eq!(gw.request(bad_header).await.code(), "auth_bad_signature");
    let expired_cookie = Request::get(gw.url("/api/history"))
        .header(
            header::COOKIE,
            format!("warren_session={}", signer.token(&user, now_secs() - 1)),
        )
        .body(Full::default())
        .unwrap();
    assert_eq!(gw.request(expired_cookie).await.code(), "auth_expired");
    // No sandbox was started by any of this.
    assert_eq!(gw.state("user_a").await, "asleep");
    assert!(gw.state_store().events(None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_same_credentials_work_as_query_header_and_cookie_on_every_route() {
    let gw = Gateway::start("");
    let mut ws = gw.ws("user_a").await;
    echo(&mut ws, "hello").await;

    // Query parameters on /api/history and /ws/api/history; the first contact sets a cookie.
    for path in ["/api/history", "/ws/api/history"] {
        let reply = gw.get_as("user_a", path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        assert_eq!(reply.json()["messages"][0]["text"], "hello");
    }
    let reply = gw.get_as("user_a", "/api/history").await;
    let cookie = reply
        .headers
        .get(header::SET_COOKIE)
        .expect("a session cookie")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("warren_session=user_a."), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );

    // The cookie alone, as a browser would send it.
    let pair = cookie.split(';').next().unwrap().to_owned();
    for path in ["/api/history", "/ws/api/history", "/api/status"] {
        let req = Request::get(gw.url(path))
            .header(header::COOKIE, &pair)
            .body(Full::default())
            .unwrap();
        let reply = gw.request(req).await;
        assert_eq!(reply.status, 200, "{path} by cookie: {}", reply.body);
        assert!(
            reply.headers.get(header::SET_COOKIE).is_none(),
            "no new cookie when the cookie was used"
        );
    }

    // The bearer header.
    let req = Request::get(gw.url("/ws/api/history"))
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", gw.token("user_a")),
        )
        .body(Full::default())
        .unwrap();
    assert_eq!(gw.request(req).await.json()["messages"][0]["text"], "hello");

    // The WebSocket by cookie and by header.
    for (name, value) in [
        ("cookie", pair.clone()),
        ("authorization", format!("Bearer {}", gw.token("user_a"))),
    ] {
        let mut req = format!("ws://{}/ws", gw.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(name, value.parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("upgrade");
        assert_eq!(echo(&mut ws, name).await, name);
    }
}

#[tokio::test]
async fn the_agent_never_sees_the_credential() {
    let gw = Gateway::start("");
    // /echo answers with the request body; the query and headers it got are not
    // observable that way, so check what reached the agent through its history:
    // the gateway must strip userId/exp/sig but keep the other parameters.
    let body = "payload";
    let req = Request::post(gw.url(&format!("/echo?keep=1&{}", gw.query("user_a"))))
        .header(
            header::COOKIE,
            format!("other=1; warren_session={}", gw.token("user_a")),
        )
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let reply = gw.request(req).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, body);
    let log =
        std::fs::read_to_string(gw.data_dir().join("tenants/user_a/agent.log")).unwrap_or_default();
    assert!(!log.contains(harness::SECRET));
}

#[tokio::test]
async fn warren_token_prints_a_url_the_gateway_accepts() {
    let gw = Gateway::start("");
    let config = gw.dir.path().join("warren.toml");
    let base = gw.url("");
    let (code, out, err) = run_warren(
        &[
            "token",
            "user_cli",
            "--ttl",
            "60",
            "--url",
            &base,
            "--config",
            config.to_str().unwrap(),
        ],
        gw.dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let url = out.trim();
    let query = url.split_once('?').expect("a query").1;
    let exp: u64 = query
        .split('&')
        .find_map(|p| p.strip_prefix("exp="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (now_secs() + 55..=now_secs() + 61).contains(&exp),
        "ttl honoured"
    );
    let reply = gw.get(&format!("/api/history?{query}")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    let (code, _, err) = run_warren(
        &["token", "../etc", "--config", config.to_str().unwrap()],
        gw.dir.path(),
    );
    assert_ne!(code, 0);
    assert!(err.contains("invalid user id"), "{err}");
}

#[tokio::test]
async fn without_a_secret_one_is_generated_once_and_shared_with_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (code, first, err) = run_warren(&["token", "user_a", "--data-dir", data], dir.path());
    assert_eq!(code, 0, "{err}");
    let (_, second, _) = run_warren(
        &["token", "user_a", "--data-dir", data, "--ttl", "86400"],
        dir.path(),
    );
    let secret = std::fs::read_to_string(dir.path().join("data/signing-secret")).unwrap();
    assert_eq!(secret.len(), 64, "32 random bytes, hex");
    let sig = |url: &str| url.trim().rsplit_once("sig=").unwrap().1.to_owned();
    let signer = Signer::new(secret.as_bytes());
    let exp: u64 = first
        .split("exp=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        sig(&first),
        signer.sign(&TenantId::parse("user_a").unwrap(), exp)
    );
    assert!(second.contains("userId=user_a"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("data/signing-secret"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn requests_that_arrive_while_the_sandbox_starts_wait_and_share_one_start() {
    let gw = Gateway::start("");
    let replies =
        futures_util::future::join_all((0..20).map(|_| gw.get_as("user_a", "/api/history"))).await;
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let events = gw
        .state_store()
        .events(Some(&TenantId::parse("user_a").unwrap()), 10)
        .await
        .unwrap();
    let starts = events
        .iter()
        .filter(|e| e.state == SandboxState::Starting)
        .count();
    assert_eq!(
        starts, 1,
        "one start for twenty concurrent requests: {events:?}"
    );
    let timed = replies
        .iter()
        .filter(|r| r.headers.contains_key("server-timing"))
        .count();
    assert!(
        timed >= 1,
        "the requests that waited for the start see its phases"
    );
}

#[tokio::test]
async fn status_reports_without_starting_and_health_needs_no_credentials() {
    let gw = Gateway::start("");
    assert_eq!(gw.state("user_a").await, "asleep");
    assert_eq!(
        gw.state("user_a").await,
        "asleep",
        "asking twice starts nothing"
    );
    assert!(gw.state_store().events(None, 10).await.unwrap().is_empty());
    assert_eq!(gw.get("/healthz").await.status, 200);
    let ready = gw.get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["sandboxes_running"], 0);
    gw.get_as("user_a", "/api/history").await;
    assert_eq!(gw.state("user_a").await, "ready");
    assert_eq!(gw.get("/readyz").await.json()["sandboxes_running"], 1);
}

#[tokio::test]
async fn status_shows_each_tenants_own_instance_type_and_network() {
    let gw = Gateway::start(
        "instance_type = \"basic\"\n\
         [tiers.pro]\ninstance_type = \"standard-1\"\nnetwork = \"outbound\"\n\
         [tenants.user_b]\ninstance_type = \"lite\"\n\
         [tenants.user_c]\ntier = \"pro\"\n",
    );
    let profile = |status: serde_json::Value| {
        (
            status["instance_type"].as_str().unwrap().to_owned(),
            status["network"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(
        profile(gw.status("user_a").await),
        ("basic".into(), "none".into())
    );
    assert_eq!(
        profile(gw.status("user_b").await),
        ("lite".into(), "none".into())
    );
    assert_eq!(
        profile(gw.status("user_c").await),
        ("standard-1".into(), "outbound".into())
    );
    // The same once the tenant has an actor (a running sandbox).
    gw.get_as("user_b", "/api/history").await;
    assert_eq!(gw.state("user_b").await, "ready");
    assert_eq!(
        profile(gw.status("user_b").await),
        ("lite".into(), "none".into())
    );
}

#[tokio::test]
async fn an_idle_sandbox_sleeps_and_wakes_with_its_workspace() {
    let gw = Gateway::start("sleep_after = \"1s\"");
    let mut ws = gw.ws("user_a").await;
    echo(&mut ws, "before sleep").await;
    let first = gw.agent_pid("user_a").await;
    ws.close(None).await.unwrap();
    drop(ws);
    gw.wait_for_state("user_a", "asleep", Duration::from_secs(10))
        .await;
    wait_gone(first, Duration::from_secs(5)).await;
    let status = gw.status("user_a").await;
    assert_eq!(status["last_stop"]["cause"], "idle");

    // The next request wakes it, with the same workspace.
    assert_eq!(gw.history("user_a").await, ["before sleep"]);
    assert_eq!(gw.state("user_a").await, "ready");
    assert_ne!(gw.agent_pid("user_a").await, first, "a new sandbox");

    // Every transition is in the state store, with timestamps, in order.
    let events = gw
        .state_store()
        .events(Some(&TenantId::parse("user_a").unwrap()), 10)
        .await
        .unwrap();
    let states: Vec<_> = events.iter().rev().map(|e| e.state).collect();
    use SandboxState::*;
    assert_eq!(states, [Starting, Ready, Stopping, Asleep, Starting, Ready]);
    assert!(events.windows(2).all(|w| w[0].at_ms >= w[1].at_ms));
    assert_eq!(events[3].cause, Some(StopCause::Idle));
}

#[tokio::test]
async fn an_open_websocket_keeps_its_sandbox_awake() {
    let gw = Gateway::start("sleep_after = \"1s\"");
    let mut ws = gw.ws("user_a").await;
    echo(&mut ws, "hi").await;
    let pid = gw.agent_pid("user_a").await;
    // No message flows for three times sleep_after; the sandbox must stay.
    let quiet_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < quiet_until {
        assert_eq!(gw.state("user_a").await, "ready");
        tokio::time::sleep(POLL * 10).await;
    }
    assert_eq!(echo(&mut ws, "still here").await, "still here");
    assert_eq!(gw.agent_pid("user_a").await, pid);
    // Once it closes, the sandbox sleeps.
    ws.close(None).await.unwrap();
    gw.wait_for_state("user_a", "asleep", Duration::from_secs(10))
        .await;
}

#[tokio::test]
async fn sleep_after_never_keeps_a_sandbox_warm() {
    let gw = Gateway::start("sleep_after = \"never\"");
    gw.get_as("user_a", "/api/history").await;
    let pid = gw.agent_pid("user_a").await;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(gw.state("user_a").await, "ready");
        tokio::time::sleep(POLL * 10).await;
    }
    assert!(process_alive(pid));
}

#[tokio::test]
async fn at_capacity_a_third_user_evicts_the_least_recently_used_idle_sandbox() {
    let gw = Gateway::start("max_instances = 2\nsleep_after = \"never\"");
    gw.get_as("user_a", "/api/history").await;
    gw.get_as("user_b", "/api/history").await;
    let a = gw.agent_pid("user_a").await;
    // b is now more recent than a; touch b again to be sure.
    gw.get_as("user_b", "/api/history").await;
    let reply = gw.get_as("user_c", "/api/history").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(gw.state("user_a").await, "asleep");
    assert_eq!(gw.status("user_a").await["last_stop"]["cause"], "eviction");
    assert_eq!(gw.state("user_b").await, "ready");
    assert_eq!(gw.state("user_c").await, "ready");
    assert!(
        !process_alive(a),
        "the evicted sandbox is gone before the new one starts"
    );
    assert_eq!(gw.get("/readyz").await.json()["sandboxes_running"], 2);
}

#[tokio::test]
async fn at_capacity_with_nothing_idle_a_third_user_gets_503_and_retry_after() {
    let gw = Gateway::start("max_instances = 2\n[admission]\nqueue_timeout = \"1s\"");
    let mut a = gw.ws("user_a").await;
    let mut b = gw.ws("user_b").await;
    echo(&mut a, "busy").await;
    echo(&mut b, "busy").await;
    let started = Instant::now();
    let reply = gw.get_as("user_c", "/api/history").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.code(), "capacity_exhausted");
    assert_eq!(reply.json()["error"]["retryable"], true);
    assert_eq!(reply.headers.get(header::RETRY_AFTER).unwrap(), "1");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "it waited in the queue first"
    );
    assert_eq!(gw.state("user_c").await, "asleep");
    // Both busy users were untouched.
    assert_eq!(echo(&mut a, "still a").await, "still a");
    assert_eq!(echo(&mut b, "still b").await, "still b");
}

#[tokio::test]
async fn a_queued_start_is_served_when_a_websocket_closes() {
    let gw = Gateway::start("max_instances = 1\n[admission]\nqueue_timeout = \"20s\"");
    let mut a = gw.ws("user_a").await;
    echo(&mut a, "busy").await;
    let waiting = gw.get_as("user_b", "/api/history");
    let close_later = async {
        // b is queued once its status says starting.
        gw.wait_for_state("user_b", "starting", Duration::from_secs(10))
            .await;
        a.close(None).await.unwrap();
    };
    let (reply, ()) = tokio::join!(waiting, close_later);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(gw.state("user_a").await, "asleep");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_shutting_down_closes_websockets_with_1012_service_restart() {
    let mut gw = Gateway::start("");
    let mut ws = gw.ws("user_a").await;
    echo(&mut ws, "hello").await;
    // The close arrives while the gateway drains; it waits in the socket.
    tokio::task::block_in_place(|| gw.stop());
    let close = harness::next_close(&mut ws, Duration::from_secs(10)).await;
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Restart));
}

#[tokio::test]
async fn a_crashed_agent_is_noticed_recorded_and_restarted() {
    let gw = Gateway::start("");
    let mut ws = gw.ws("user_a").await;
    echo(&mut ws, "before the crash").await;
    let pid = gw.agent_pid("user_a").await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    // The open WebSocket is closed with 1011, not left hanging.
    let close = harness::next_close(&mut ws, Duration::from_secs(10)).await;
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Error));

    gw.wait_for_state("user_a", "asleep", Duration::from_secs(10))
        .await;
    let status = gw.status("user_a").await;
    assert_eq!(status["last_stop"]["cause"], "crash");
    assert!(
        status["last_stop"]["detail"]
            .as_str()
            .unwrap()
            .contains("signal 9"),
        "{status}"
    );

    // The next request restarts it, with the history kept.
    assert_eq!(gw.history("user_a").await, ["before the crash"]);
    assert_ne!(gw.agent_pid("user_a").await, pid);
}

#[tokio::test]
async fn websocket_closes_pass_through_with_their_code() {
    let gw = Gateway::start("");
    let mut ws = gw.ws("user_a").await;
    echo(&mut ws, "x").await;
    ws.send(Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        },
    )))
    .await
    .unwrap();
    let reply = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a close reply")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close reply, got {other:?}"),
        }
    };
    assert_eq!(reply.map(|f| f.code), Some(CloseCode::Normal));
}

#[tokio::test]
async fn request_and_response_bodies_stream_through() {
    let gw = Gateway::start("");
    let body: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let req = Request::post(gw.url(&format!("/echo?{}", gw.query("user_a"))))
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let reply = gw.request(req).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.bytes.len(), body.len());
    assert!(reply.bytes == body, "the body came back unchanged");
}

#[tokio::test]
async fn secrets_and_signatures_never_reach_the_logs() {
    let mut gw = Gateway::start("[log]\nlevel = \"trace\"");
    let query = gw.query("user_a");
    let sig = query.rsplit_once("sig=").unwrap().1.to_owned();
    gw.get(&format!("/api/history?{query}")).await;
    gw.get(&format!(
        "/api/history?{}",
        query.replace(&sig[..8], "AAAAAAAA")
    ))
    .await;
    let mut ws = gw.ws("user_a").await;
    echo(&mut ws, "hi").await;
    drop(ws);
    gw.shut_down();
    let log = gw.log();
    assert!(log.contains("sandbox ready"), "the log was written: {log}");
    assert!(
        !log.contains(harness::SECRET),
        "the secret leaked into the log"
    );
    assert!(!log.contains(&sig), "a signature leaked into the log");
    assert!(!log.contains(&sig[8..]), "a signature leaked into the log");
}

#[tokio::test]
async fn sigint_stops_every_sandbox_and_records_it() {
    let mut gw = Gateway::start("");
    gw.get_as("user_a", "/api/history").await;
    gw.get_as("user_b", "/api/history").await;
    let pids = [gw.agent_pid("user_a").await, gw.agent_pid("user_b").await];
    assert!(gw.shut_down().success());
    for pid in pids {
        assert!(
            !process_alive(pid),
            "sandbox {pid} outlived a graceful shutdown"
        );
    }
    let store = gw.state_store();
    assert!(store.live_sandboxes().await.unwrap().is_empty());
    let a = store
        .sandbox(&TenantId::parse("user_a").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.last_stop.map(|(c, _)| c), Some(StopCause::Shutdown));
}

#[tokio::test]
async fn config_errors_name_the_key_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "max_instances = 2\nsleep_afterr = \"1m\"\n").unwrap();
    let (code, _, err) = run_warren(&["serve", "--config", bad.to_str().unwrap()], dir.path());
    assert_ne!(code, 0);
    assert!(err.contains("sleep_afterr"), "{err}");
    std::fs::write(&bad, "instance_type = \"standard-9\"\n").unwrap();
    let (code, _, err) = run_warren(&["serve", "--config", bad.to_str().unwrap()], dir.path());
    assert_ne!(code, 0);
    assert!(err.contains("standard-9"), "{err}");
}

#[tokio::test]
async fn a_broken_websocket_handshake_gets_400_not_a_sandbox_error() {
    let gw = Gateway::start("");
    let req = Request::get(gw.url(&format!("/ws?{}", gw.query("user_a"))))
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .body(Full::default())
        .unwrap();
    let reply = gw.request(req).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(reply.code(), "bad_request");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start("client_header_timeout = \"1s\"");
    let mut slow = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: warren\r\n")
        .await
        .unwrap();
    // No blank line ever comes: the gateway must give up on this connection.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection was still open after 15 s");
    assert!(
        !String::from_utf8_lossy(&rest).contains("200 OK"),
        "a half request was served"
    );
    // Everyone else is served as usual.
    assert_eq!(gw.get("/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn warren_chat_rides_out_a_gateway_restart_and_a_crash_and_loses_nothing() {
    use std::io::{BufRead, Write};
    let mut gw = Gateway::start("");
    let url = format!("http://{}/?{}", gw.addr, gw.query("user_a"));
    let mut chat = std::process::Command::new(harness::warren_bin())
        .args([
            "chat",
            &url,
            "--min-backoff",
            "20ms",
            "--max-backoff",
            "200ms",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = chat.stdin.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = chat.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let next_line = || {
        lines
            .recv_timeout(Duration::from_secs(20))
            .expect("a line from warren chat within 20 s")
    };

    writeln!(stdin, "one").unwrap();
    assert_eq!(next_line(), "one");
    let pid = gw.agent_pid("user_a").await;
    // The gateway goes away (SIGTERM); a line typed meanwhile waits for it to come back.
    tokio::task::block_in_place(|| gw.stop());
    writeln!(stdin, "two").unwrap();
    tokio::task::block_in_place(|| gw.start_again());
    assert_eq!(next_line(), "two");
    // And again, by a crash (SIGKILL): no close frame this time, the same recovery.
    tokio::task::block_in_place(|| gw.crash());
    writeln!(stdin, "three").unwrap();
    tokio::task::block_in_place(|| gw.start_again());
    assert_eq!(next_line(), "three");
    drop(stdin);

    let out = tokio::task::block_in_place(|| chat.wait_with_output()).unwrap();
    assert!(out.status.success(), "warren chat failed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("closed with 1012"), "{stderr}");
    // Each message kept once: nothing lost, nothing sent twice; by one sandbox.
    assert_eq!(gw.history("user_a").await, ["one", "two", "three"]);
    assert_eq!(gw.agent_pid("user_a").await, pid);
}

/// `GET path` on a connection of its own (`Connection: close`); the status, or why none.
async fn get_on_new_connection(addr: std::net::SocketAddr, path: &str) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: warren\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| format!("write: {e}"))?;
    let mut reply = Vec::new();
    tcp.read_to_end(&mut reply)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&reply);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_by_socket_handover_fails_no_request_loses_no_message_restarts_no_sandbox() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    // The load below is one user as fast as the machine goes, far past a person's rate:
    // no per-user limit, so every refusal would be the upgrade's.
    let mut gw = Gateway::start("drain_timeout = \"2s\"\nrate_limit = { requests_per_second = 0 }");
    let mut ws = gw.ws("user_a").await;
    assert_eq!(echo(&mut ws, "before").await, "before");
    let pid = gw.agent_pid("user_a").await;

    // A steady load of HTTP requests, each on a new connection: every one must be
    // answered 200, by the old gateway or the new one.
    let (ok, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let path = format!("/api/history?{}", gw.query("user_b"));
    let mut load = Vec::new();
    for _ in 0..2 {
        let (ok, stop, failures, path, addr) = (
            ok.clone(),
            stop.clone(),
            failures.clone(),
            path.clone(),
            gw.addr,
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match get_on_new_connection(addr, &path).await {
                    Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        failures.lock().unwrap().push(format!("{other:?}"));
                        0
                    }
                };
            }
        }));
    }
    let wait_for_more = |n: usize| {
        let ok = ok.clone();
        async move {
            let target = ok.load(Ordering::Relaxed) + n;
            while ok.load(Ordering::Relaxed) < target {
                tokio::time::sleep(harness::POLL).await;
            }
        }
    };
    wait_for_more(20).await;

    let mut old = tokio::task::block_in_place(|| gw.take_over());
    // The old gateway still relays the WebSocket it holds...
    assert_eq!(echo(&mut ws, "during").await, "during");
    // ...while the new one answers the load.
    wait_for_more(20).await;
    // At its drain deadline the old one closes it with 1012 and exits.
    let close = harness::next_close(&mut ws, Duration::from_secs(20)).await;
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Restart));
    assert!(
        tokio::task::block_in_place(|| old.wait())
            .unwrap()
            .success()
    );
    wait_for_more(20).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(*failures.lock().unwrap(), Vec::<String>::new());

    // The client comes back to the new gateway: nothing lost, no sandbox restarted.
    let mut ws = gw.ws("user_a").await;
    assert_eq!(echo(&mut ws, "after").await, "after");
    assert_eq!(gw.history("user_a").await, ["before", "during", "after"]);
    assert_eq!(gw.agent_pid("user_a").await, pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_left_to_the_next_gateway_keeps_its_idle_clock() {
    // Idle for 6 s sends a sandbox to sleep. It is used, then the gateway stops
    // (SIGTERM) and stays down 4 s: the next gateway must count those 4 s, and put it
    // to sleep about 2 s after it starts, not 6 s.
    let mut gw = Gateway::start("sleep_after = \"6s\"");
    gw.get_as("user_a", "/api/history").await;
    let pid = gw.agent_pid("user_a").await;
    tokio::task::block_in_place(|| gw.stop());
    tokio::time::sleep(Duration::from_secs(4)).await;
    tokio::task::block_in_place(|| gw.start_again());
    // Taken over before the gateway serves: the same sandbox, ready.
    assert_eq!(gw.state("user_a").await, "ready");
    assert_eq!(gw.agent_pid("user_a").await, pid);
    // Asleep within 5 s, not the 6 s a fresh clock would take.
    gw.wait_for_state("user_a", "asleep", Duration::from_secs(5))
        .await;
    assert!(!process_alive(pid));
    assert_eq!(gw.status("user_a").await["last_stop"]["cause"], "idle");
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_socket_activation_serves_on_the_socket_it_passes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("warren.toml");
    std::fs::write(
        &config,
        format!("[auth]\nsigning_secret = \"{}\"\n", harness::SECRET),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    // The activator listens, and runs warren (passing it the socket, LISTEN_FDS) on
    // the first connection, which waits in the backlog meanwhile.
    let mut activator = std::process::Command::new("systemd-socket-activate")
        .args(["-l", &listen, harness::warren_bin(), "serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (apt-get install systemd; scripts/test does)");
    let mut connected = None;
    for _ in 0..500 {
        if let Ok(tcp) = std::net::TcpStream::connect(&listen) {
            connected = Some(tcp);
            break;
        }
        tokio::time::sleep(harness::POLL).await;
    }
    let mut tcp = connected.expect("the activator never listened");
    use std::io::{Read, Write};
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: warren\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    tokio::task::block_in_place(|| tcp.read_to_string(&mut reply)).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // The activator became warren (exec): SIGINT ends it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(activator.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(
        tokio::task::block_in_place(|| activator.wait())
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn a_second_gateway_on_the_same_data_dir_is_refused() {
    let gw = Gateway::start("");
    let config = gw.dir.path().join("warren.toml");
    let data = gw.data_dir();
    let (code, _, err) = harness::run_warren(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        gw.dir.path(),
    );
    assert_ne!(code, 0);
    assert!(err.contains("another gateway runs"), "{err}");
    assert!(err.contains("--takeover"), "{err}");
    // The first one is untouched.
    assert_eq!(gw.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn prewarm_starts_the_sandbox_without_waiting_and_only_once() {
    let gw = Gateway::start("");
    // Credentials as on every route.
    let reply = gw
        .request(
            Request::post(gw.url("/api/prewarm"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 401);

    let prewarm = || {
        Request::post(gw.url(&format!("/api/prewarm?{}", gw.query("user_a"))))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let reply = gw.request(prewarm()).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    // Nothing else asks for it: the prewarm alone brings it up.
    gw.wait_for_state("user_a", "ready", Duration::from_secs(20))
        .await;
    let reply = gw.request(prewarm()).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.json()["state"], "ready");
    let events = gw
        .state_store()
        .events(Some(&TenantId::parse("user_a").unwrap()), 10)
        .await
        .unwrap();
    let starts = events
        .iter()
        .filter(|e| e.state == SandboxState::Starting)
        .count();
    assert_eq!(starts, 1, "{events:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn warren_token_prewarm_prints_the_url_and_starts_the_sandbox() {
    let gw = Gateway::start("");
    let config = gw.dir.path().join("warren.toml");
    let data = gw.data_dir();
    let base = format!("http://{}", gw.addr);
    let (code, out, err) = tokio::task::block_in_place(|| {
        harness::run_warren(
            &[
                "token",
                "user_c",
                "--prewarm",
                "--url",
                &base,
                "--config",
                config.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
            ],
            gw.dir.path(),
        )
    });
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("{base}/?userId=user_c")), "{out}");
    assert!(err.contains("user_c's sandbox is"), "{err}");
    gw.wait_for_state("user_c", "ready", Duration::from_secs(20))
        .await;
}

#[tokio::test]
async fn status_shows_the_phase_of_a_start_and_how_long_it_has_taken() {
    // An agent that takes a second and a half to listen: its start spends that in `boot`.
    // The warren binary is visible in the sandbox wherever the checkout is (under
    // `/tmp`, say, which sandboxes see as their own).
    let bin = harness::warren_bin();
    let gw = Gateway::start(&format!(
        "[agent]\nkind = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"sleep 1.5; exec {bin} echo-agent\"]\n\
         [runtime]\nro_paths = [\"{bin}\"]\n"
    ));
    let prewarm = Request::post(gw.url(&format!("/api/prewarm?{}", gw.query("user_a"))))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(gw.request(prewarm).await.status, 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let booting = loop {
        let status = gw.status("user_a").await;
        if status["phase"]["name"] == "boot" {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never seen booting: {status}"
        );
        tokio::time::sleep(harness::POLL).await;
    };
    assert_eq!(booting["state"], "starting", "{booting}");
    // Elapsed counts the whole start, from before the phase began.
    let phase_since = booting["phase"]["since_ms"].as_u64().unwrap();
    let since = booting["since_ms"].as_u64().unwrap();
    assert!(phase_since >= since, "{booting}");
    assert!(
        booting["phase"]["elapsed_ms"].as_u64().is_some(),
        "{booting}"
    );
    gw.wait_for_state("user_a", "ready", Duration::from_secs(20))
        .await;
    let ready = gw.status("user_a").await;
    assert!(ready.get("phase").is_none(), "{ready}");
}

#[tokio::test]
async fn a_sleeping_tenants_status_keeps_its_last_stop_once_an_actor_holds_it() {
    let mut gw = Gateway::start("sleep_after = \"300ms\"");
    let mut ws = gw.ws("user_a").await;
    echo(&mut ws, "hello").await;
    drop(ws);
    gw.wait_for_state("user_a", "asleep", Duration::from_secs(10))
        .await;
    let before = gw.status("user_a").await;
    assert_eq!(before["last_stop"]["cause"], "idle", "{before}");
    // A new gateway knows the tenant by its row; an operator's restore makes it an
    // actor without starting anything.
    gw.restart();
    let reply = gw
        .admin(
            http::Method::POST,
            "/admin/api/tenants/user_a/restore?seq=1",
            "",
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let after = gw.status("user_a").await;
    assert_eq!(after["state"], "asleep");
    assert_eq!(after["since_ms"], before["since_ms"], "{after}");
    assert_eq!(after["last_stop"], before["last_stop"], "{after}");
}
