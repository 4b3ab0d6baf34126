//! Metrics and logs: `/metrics` follows what the gateway did (requests, WebSockets, bytes,
//! admission, every kind of stop, syncs, sweeps), every metric is documented and every
//! metric an alert names exists; each request's id reaches its answer and its log lines
//! with the tenant, and no secret reaches the log.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::Full;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::{self, Gateway, POLL, echo};

const WAIT: Duration = Duration::from_secs(15);

/// One scrape: every sample by its name with labels, as written.
struct Scrape(HashMap<String, f64>);

impl Scrape {
    async fn of(gw: &Gateway) -> Self {
        let reply = gw.admin(Method::GET, "/metrics", "").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        Self::parse(&reply.body)
    }

    fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect();
        Self(samples)
    }

    /// A sample's value; absent is a failure (every series exists from the start).
    fn get(&self, name: &str) -> f64 {
        *self
            .0
            .get(name)
            .unwrap_or_else(|| panic!("no sample {name} in {:?}", self.0.keys()))
    }

    /// How far a sample moved since `before`.
    fn since(&self, before: &Scrape, name: &str) -> f64 {
        self.get(name) - before.0.get(name).copied().unwrap_or(0.0)
    }
}

/// Scrapes until `done` holds for a scrape; fails after `WAIT`.
async fn scrape_until(gw: &Gateway, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + WAIT;
    loop {
        let scrape = Scrape::of(gw).await;
        if done(&scrape) {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {what}: {:?}",
            scrape.0
        );
        tokio::time::sleep(POLL).await;
    }
}

fn requests(class: &str, status: &str) -> String {
    format!("warren_requests_total{{class=\"{class}\",status=\"{status}\"}}")
}

fn labeled(name: &str, label: &str, value: &str) -> String {
    format!("{name}{{{label}=\"{value}\"}}")
}

fn bytes(protocol: &str, direction: &str) -> String {
    format!("warren_proxied_bytes_total{{protocol=\"{protocol}\",direction=\"{direction}\"}}")
}

/// POSTs `/admin/api/sweep` and returns the outcome line (`report` or `error`).
async fn sweep(gw: &Gateway) -> serde_json::Value {
    let reply = gw.admin(Method::POST, "/admin/api/sweep", "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let last = reply.body.lines().last().expect("a sweep answers");
    serde_json::from_str(last).unwrap()
}

#[tokio::test]
async fn metrics_follow_requests_websockets_admission_stops_syncs_and_sweeps() {
    let gw = Gateway::start(
        "max_instances = 1\n\
         [admission]\nqueue_limit = 1\nqueue_timeout = \"30s\"\n\
         [tenants.user_idle]\nsleep_after = \"500ms\"",
    );
    assert_eq!(gw.get("/metrics").await.status, 401, "without the token");
    let wrong = Request::get(gw.url("/metrics"))
        .header(header::AUTHORIZATION, "Bearer not-the-token")
        .body(Full::default())
        .unwrap();
    let wrong = gw.request(wrong).await;
    assert_eq!(wrong.status, 401, "with another token");
    assert_eq!(wrong.code(), "admin_unauthorized");
    let before = Scrape::of(&gw).await;
    assert_eq!(before.get("warren_admission_slots"), 1.0);
    assert_eq!(before.get("warren_admission_slots_used"), 0.0);

    // a: an API request (a start), an HTTP body each way, a refused credential, health.
    assert_eq!(gw.get_as("user_a", "/api/history").await.status, 200);
    let body = vec![b'x'; 10_000];
    let post = Request::post(gw.url(&format!("/echo?{}", gw.query("user_a"))))
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let echoed = gw.request(post).await;
    assert_eq!((echoed.status.as_u16(), echoed.bytes.len()), (200, 10_000));
    assert_eq!(gw.get("/anything?userId=user_a").await.status, 401);
    assert_eq!(gw.get("/healthz").await.status, 200);

    // a's WebSocket holds its sandbox busy; its message becomes a snapshot, synced while
    // the sandbox runs.
    let mut ws = gw.ws("user_a").await;
    assert_eq!(echo(&mut ws, "hello metrics").await, "hello metrics");
    let running = scrape_until(&gw, "a's message synced while it runs", |s| {
        s.since(&before, "warren_sync_lag_seconds_count") >= 1.0
    })
    .await;
    assert_eq!(running.get("warren_websockets_open"), 1.0);
    assert_eq!(running.get("warren_admission_slots_used"), 1.0);
    assert_eq!(
        running.get(&labeled("warren_sandboxes", "state", "ready")),
        1.0
    );
    assert_eq!(running.since(&before, "warren_tenants_known"), 1.0);
    assert!(
        running.since(
            &before,
            &labeled("warren_syncs_total", "outcome", "created")
        ) >= 1.0
    );
    assert!(running.since(&before, "warren_snapshot_bytes_count") >= 1.0);
    assert!(running.since(&before, "warren_snapshot_bytes_sum") > 0.0);
    assert!(running.get("warren_sync_lag_max_seconds") >= 0.0);

    // b waits in the queue for a's slot; c finds the queue full.
    let waiting = {
        let url = gw.url(&format!("/api/history?{}", gw.query("user_b")));
        tokio::spawn(async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<Full<Bytes>>();
            let response = client
                .request(Request::get(url).body(Full::default()).unwrap())
                .await
                .expect("the gateway answers");
            response.status()
        })
    };
    let queued = scrape_until(&gw, "b in the admission queue", |s| {
        s.get("warren_admission_queue_length") == 1.0
    })
    .await;
    assert_eq!(
        queued.get(&labeled("warren_sandboxes", "state", "starting")),
        1.0
    );
    let refused = gw.get_as("user_c", "/api/history").await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.code(), "capacity_exhausted");
    let reason = labeled("warren_admission_rejections_total", "reason", "queue_full");
    assert_eq!(Scrape::of(&gw).await.since(&before, &reason), 1.0);

    // a's WebSocket closes: a is idle, evicted for b.
    ws.close(None).await.unwrap();
    drop(ws);
    let waited = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert_eq!(waited, 200);
    assert_eq!(gw.status("user_a").await["last_stop"]["cause"], "eviction");

    // b's agent is killed: a crash.
    let pid = gw.agent_pid("user_b").await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    gw.wait_for_state("user_b", "asleep", WAIT).await;

    // user_idle sleeps after 500 ms.
    assert_eq!(gw.get_as("user_idle", "/api/history").await.status, 200);
    gw.wait_for_state("user_idle", "asleep", WAIT).await;
    assert_eq!(gw.status("user_idle").await["last_stop"]["cause"], "idle");

    // a starts again; an operator's restore stops it.
    assert_eq!(gw.get_as("user_a", "/api/history").await.status, 200);
    let snapshots = gw
        .admin(Method::GET, "/admin/api/tenants/user_a/snapshots", "")
        .await
        .json();
    let seq = snapshots["snapshots"].as_array().unwrap().last().unwrap()["seq"]
        .as_u64()
        .unwrap();
    let path = format!("/admin/api/tenants/user_a/restore?seq={seq}&stop=true");
    let restored = gw.admin(Method::POST, &path, "").await;
    assert_eq!(restored.status, 200, "{}", restored.body);
    assert_eq!(gw.state("user_a").await, "asleep");

    let stopped = Scrape::of(&gw).await;
    for (cause, n) in [
        ("eviction", 1.0),
        ("crash", 1.0),
        ("idle", 1.0),
        ("admin", 1.0),
    ] {
        let name = labeled("warren_stops_total", "cause", cause);
        assert_eq!(stopped.since(&before, &name), n, "{cause}");
    }
    for cause in ["oom", "shutdown"] {
        let name = labeled("warren_stops_total", "cause", cause);
        assert_eq!(stopped.since(&before, &name), 0.0, "{cause}");
    }
    // a twice, b and user_idle got ready; c's start failed for capacity.
    let starts = |outcome| labeled("warren_starts_total", "outcome", outcome);
    assert_eq!(stopped.since(&before, &starts("ready")), 4.0);
    assert_eq!(stopped.since(&before, &starts("failed")), 1.0);
    assert_eq!(stopped.since(&before, "warren_start_seconds_count"), 4.0);
    // Every start waited for admission, c's too; b waited for a's eviction.
    assert_eq!(
        stopped.since(&before, "warren_admission_wait_seconds_count"),
        5.0
    );
    assert!(stopped.since(&before, "warren_admission_wait_seconds_sum") > 0.0);
    assert_eq!(stopped.get("warren_admission_queue_length"), 0.0);
    assert_eq!(stopped.get("warren_admission_slots_used"), 0.0);
    assert_eq!(stopped.get("warren_websockets_open"), 0.0);
    assert_eq!(stopped.since(&before, "warren_tenants_known"), 4.0);
    assert_eq!(
        stopped.get(&labeled("warren_sandboxes", "state", "asleep")),
        4.0
    );
    assert_eq!(
        stopped.get(&labeled("warren_sandboxes", "state", "ready")),
        0.0
    );

    // Requests by class and status, as this test made them.
    assert_eq!(stopped.since(&before, &requests("ws", "1xx")), 1.0);
    assert_eq!(
        stopped.since(&before, &requests("proxy", "2xx")),
        1.0,
        "the echo"
    );
    assert_eq!(
        stopped.since(&before, &requests("proxy", "4xx")),
        1.0,
        "the refusal"
    );
    assert_eq!(stopped.since(&before, &requests("health", "2xx")), 1.0);
    assert_eq!(
        stopped.since(&before, &requests("api", "5xx")),
        1.0,
        "c's 503"
    );
    // The history of a (twice), b and user_idle, and every status the harness asked.
    assert!(stopped.since(&before, &requests("api", "2xx")) >= 4.0);
    // The two refused scrapes (before `before`) count; the scrapes since count as 2xx.
    assert_eq!(stopped.get(&requests("admin", "4xx")), 2.0);
    assert!(stopped.since(&before, &requests("admin", "2xx")) >= 3.0);
    // Bytes: the echo's 10 000 each way, and the WebSocket's frames.
    assert!(stopped.since(&before, &bytes("http", "to_agent")) >= 10_000.0);
    assert!(stopped.since(&before, &bytes("http", "to_client")) >= 10_000.0);
    let text = "hello metrics".len() as f64;
    // A client's frame has a 6-byte header with its mask, the agent's 2 bytes.
    assert!(stopped.since(&before, &bytes("websocket", "to_agent")) >= text + 6.0);
    assert!(stopped.since(&before, &bytes("websocket", "to_client")) >= text + 2.0);

    // Syncs fail while the store is broken (a file where its directory was); a sweep
    // then leaves tenants unsynced.
    let store = gw.data_dir().join("store");
    let away = gw.data_dir().join("store.away");
    std::fs::rename(&store, &away).unwrap();
    std::fs::write(&store, "not a directory").unwrap();
    let failed = gw
        .admin(Method::POST, "/admin/api/tenants/user_a/sync", "")
        .await;
    assert!(failed.status.is_server_error(), "{}", failed.body);
    let partial = sweep(&gw).await;
    assert!(
        partial["report"]["failed"].as_u64().unwrap() >= 1,
        "{partial}"
    );
    let broken = Scrape::of(&gw).await;
    let syncs_failed = labeled("warren_syncs_total", "outcome", "failed");
    assert!(
        broken.since(&stopped, &syncs_failed) >= 2.0,
        "the sync and the sweep's"
    );
    let sweeps = |outcome| labeled("warren_sweeps_total", "outcome", outcome);
    assert_eq!(broken.since(&stopped, &sweeps("partial")), 1.0);
    assert_eq!(broken.since(&stopped, &sweeps("ok")), 0.0);
    std::fs::remove_file(&store).unwrap();
    std::fs::rename(&away, &store).unwrap();
    let ok = sweep(&gw).await;
    assert_eq!(ok["report"]["failed"], 0, "{ok}");
    let repaired = Scrape::of(&gw).await;
    assert_eq!(repaired.since(&broken, &sweeps("ok")), 1.0);
    assert_eq!(repaired.since(&broken, &syncs_failed), 0.0);
    assert_eq!(repaired.get(&sweeps("failed")), 0.0);
}

#[tokio::test]
async fn every_metric_is_documented_and_every_alert_names_a_metric_that_exists() {
    let gw = Gateway::start("");
    // A start and a proxied request: families with labels show once they have a series.
    assert_eq!(gw.get_as("user_a", "/api/history").await.status, 200);
    let reply = gw.admin(Method::GET, "/metrics", "").await;
    let docs = |file: &str| {
        let path = format!("{}/../../docs/{file}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let monitoring = docs("monitoring.md");
    let families: Vec<(&str, &str)> = reply
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    assert!(families.len() >= 20, "{}", reply.body);
    for (family, kind) in families {
        let name = match kind {
            "counter" => format!("{family}_total"),
            _ => family.to_owned(),
        };
        assert!(
            monitoring.contains(&format!("| `{name}` |")),
            "{name} ({kind}) is not in docs/monitoring.md's tables"
        );
    }
    let samples = Scrape::parse(&reply.body);
    let alerts = docs("alerts.yml");
    let mut named = 0;
    for word in alerts.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("warren_") {
            named += 1;
            let exists = samples
                .0
                .keys()
                .any(|s| s == word || s.starts_with(&format!("{word}{{")));
            assert!(exists, "docs/alerts.yml names {word}, which /metrics lacks");
        }
    }
    assert!(named >= 10, "{alerts}");
}

#[tokio::test]
async fn request_ids_reach_the_log_with_the_tenant_and_no_secret_does() {
    let gw = Gateway::start("[log]\nformat = \"json\"\nlevel = \"info,warren_gateway=debug\"");
    let query = gw.query("user_a");
    let sig = query.rsplit_once("sig=").unwrap().1.to_owned();
    let token = gw.token("user_a");
    let admin_token = std::fs::read_to_string(gw.data_dir().join("admin-token")).unwrap();

    // The client's own id comes back, and the agent's answer is the request's.
    let asked = Request::get(gw.url(&format!("/api/history?{query}")))
        .header("x-request-id", "client-chose-7f3a")
        .body(Full::default())
        .unwrap();
    let reply = gw.request(asked).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.headers["x-request-id"], "client-chose-7f3a");
    let cookie = reply.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    let cookie = cookie.split(';').next().unwrap().to_owned();

    // One that is not well formed is replaced; without one, each request gets its own.
    let by_header = Request::get(gw.url("/api/status"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header("x-request-id", "has spaces {and braces}")
        .body(Full::default())
        .unwrap();
    let by_header = gw.request(by_header).await;
    assert_eq!(by_header.status, 200, "{}", by_header.body);
    let made = by_header.headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!made.is_empty() && !made.contains(' '), "{made}");
    let by_cookie = Request::get(gw.url("/api/history"))
        .header(header::COOKIE, &cookie)
        .body(Full::default())
        .unwrap();
    let by_cookie = gw.request(by_cookie).await;
    assert_eq!(by_cookie.status, 200, "{}", by_cookie.body);
    let other = by_cookie.headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(made, other);
    let refused = gw.get("/api/history?userId=user_a&exp=1&sig=forged").await;
    assert_eq!(refused.status, 401);
    let refused_id = refused.headers["x-request-id"].to_str().unwrap().to_owned();
    // A WebSocket's upgrade and relay, with an id of its own.
    let mut upgrade = format!("ws://{}/ws?{query}", gw.addr)
        .into_client_request()
        .unwrap();
    upgrade
        .headers_mut()
        .insert("x-request-id", "ws-chose-19".parse().unwrap());
    let (mut ws, answer) = tokio_tungstenite::connect_async(upgrade).await.unwrap();
    assert_eq!(answer.headers()["x-request-id"], "ws-chose-19");
    assert_eq!(echo(&mut ws, "hi").await, "hi");
    ws.close(None).await.unwrap();
    drop(ws);
    assert_eq!(gw.get("/healthz").await.status, 200);

    // Every request's line carries its id, and the tenant once authenticated.
    let deadline = Instant::now() + WAIT;
    let lines: Vec<serde_json::Value> = loop {
        let log = gw.log();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        let answered = |id: &str| {
            lines
                .iter()
                .any(|l| l["span"]["request_id"] == id && l["fields"]["message"] == "answered")
        };
        if [
            "client-chose-7f3a",
            &made,
            &other,
            &refused_id,
            "ws-chose-19",
        ]
        .iter()
        .all(|id| answered(id))
        {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "not every request answered in the log:\n{log}"
        );
        tokio::time::sleep(POLL).await;
    };
    let tenant_of = |id: &str| {
        let line = lines
            .iter()
            .find(|l| l["span"]["request_id"] == id && l["fields"]["message"] == "answered")
            .unwrap();
        assert_eq!(line["span"]["name"], "request");
        line["span"]["tenant"].as_str().map(str::to_owned)
    };
    for id in ["client-chose-7f3a", &made, &other, "ws-chose-19"] {
        assert_eq!(tenant_of(id).as_deref(), Some("user_a"), "{id}");
    }
    assert_eq!(
        tenant_of(&refused_id),
        None,
        "a refused credential names no tenant"
    );
    let answered = lines
        .iter()
        .find(|l| {
            l["span"]["request_id"] == "client-chose-7f3a" && l["fields"]["message"] == "answered"
        })
        .unwrap();
    assert_eq!(answered["fields"]["path"], "/api/history");
    assert_eq!(answered["fields"]["status"], 200);
    assert_eq!(answered["fields"]["class"], "api");

    // No secret: not the signature, the token, the cookie, the admin token, the
    // signing secret; no query string at all.
    let log = gw.log();
    for (what, secret) in [
        ("signature", sig.as_str()),
        ("forged signature", "sig=forged"),
        ("token", token.as_str()),
        ("cookie", cookie.as_str()),
        ("admin token", admin_token.trim()),
        ("signing secret", harness::SECRET),
        ("query", "exp="),
    ] {
        assert!(!log.contains(secret), "the log holds the {what}:\n{log}");
    }
}
