//! The admin API's tenant routes and CLI verbs (list, inspect, events, stop, restart,
//! workers), and the dashboard under `/admin/` driven in a real headless Chromium over
//! the DevTools protocol: a login, each tab clicked, the live refresh seen, a sandbox
//! stopped from its page, screenshots taken. Chromium comes from apt (`scripts/test`
//! installs it); without it the dashboard test fails and says so.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, header};
use http_body_util::Full;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use warren_state::StateStore as _;

use super::harness::{self, Gateway, POLL, run_warren};

const WAIT: Duration = Duration::from_secs(10);

/// A gateway with tenants in several states: `user_a` and `user_b` ready, `carol`
/// known only by her config table (never started), `dave` whose agent fails to start.
async fn gateway_with_tenants() -> Gateway {
    let gw = Gateway::start(
        "max_instances = 4\nsleep_after = \"never\"\n\
         [tiers.gold]\npriority = 5\n\
         [agents.broken]\nkind = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"exit 3\"]\n\
         [tenants.carol]\ntier = \"gold\"\n\
         [tenants.dave]\nagent = \"broken\"\n",
    );
    for user in ["user_a", "user_b"] {
        let reply = gw.get_as(user, "/api/history").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let reply = gw.get_as("dave", "/api/history").await;
    assert_eq!(reply.code(), "sandbox_start_failed", "{}", reply.body);
    gw
}

fn tenant_of<'a>(list: &'a Value, tenant: &str) -> &'a Value {
    list["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == tenant)
        .unwrap_or_else(|| panic!("{tenant} is not listed: {list}"))
}

/// The newest events of `tenant`, as `(state, cause)`.
async fn recent_events(gw: &Gateway, tenant: &str, n: usize) -> Vec<(String, String)> {
    let reply = gw
        .admin(
            Method::GET,
            &format!("/admin/api/events?tenant={tenant}&limit={n}"),
            "",
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["state"].to_string(), e["cause"].to_string()))
        .collect()
}

fn pair(state: &str, cause: &str) -> (String, String) {
    (format!("\"{state}\""), cause.to_owned())
}

#[tokio::test]
async fn the_admin_api_and_cli_list_inspect_stop_and_restart_tenants() {
    let gw = gateway_with_tenants().await;

    // Every new route wants the token; a wrong one is no better than none.
    for (method, path) in [
        (Method::GET, "/admin/api/tenants"),
        (Method::GET, "/admin/api/tenants/user_a"),
        (Method::GET, "/admin/api/events"),
        (Method::POST, "/admin/api/tenants/user_a/stop"),
        (Method::POST, "/admin/api/tenants/user_a/restart"),
        (Method::GET, "/admin/?fragment=1"),
    ] {
        for token in [None, Some("not-the-token")] {
            let mut request = Request::builder().method(method.clone()).uri(gw.url(path));
            if let Some(token) = token {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let reply = gw.request(request.body(Full::default()).unwrap()).await;
            assert_eq!(reply.status, 401, "{method} {path}: {}", reply.body);
            assert_eq!(reply.code(), "admin_unauthorized", "{method} {path}");
        }
    }
    assert_eq!(gw.state("user_a").await, "ready", "nothing was stopped");

    // The list: every tenant the gateway knows, whatever its state.
    let list = gw.admin(Method::GET, "/admin/api/tenants", "").await;
    assert_eq!(list.status, 200, "{}", list.body);
    let list = list.json();
    assert_eq!(list["capacity"]["running"], 2, "{list}");
    assert_eq!(list["capacity"]["max_instances"], 4);
    let names: Vec<&str> = list["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["carol", "dave", "user_a", "user_b"]);
    let a = tenant_of(&list, "user_a");
    assert_eq!(a["state"], "ready");
    assert_eq!(a["instance_type"], "standard-4");
    assert_eq!(a["agent"], "default");
    let active = a["last_activity_ms"]
        .as_u64()
        .expect("a running one's activity");
    assert!(
        active <= harness::now_secs() * 1000 + 1000 && active > 0,
        "{a}"
    );
    // Resource use comes from the sandbox's own cgroup, where it has one.
    let pid = gw.agent_pid("user_a").await;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    if cgroup.contains("/warren/") {
        let memory = a["resources"]["memory_bytes"].as_u64().unwrap_or(0);
        assert!(memory > 0, "{a}");
        let limit = a["resources"]["memory_limit_bytes"].as_u64();
        assert_eq!(limit, Some(12 << 30), "standard-4's 12 GiB: {a}");
        assert!(a["resources"]["cpu_ms"].is_u64(), "{a}");
    } else {
        assert!(
            a["resources"].is_null(),
            "never the gateway's own cgroup: {a}"
        );
    }
    let carol = tenant_of(&list, "carol");
    assert_eq!(
        (&carol["state"], &carol["tier"], &carol["last_activity_ms"]),
        (&json!("asleep"), &json!("gold"), &Value::Null)
    );
    let dave = tenant_of(&list, "dave");
    assert_eq!(dave["state"], "asleep");
    assert_eq!(dave["last_stop"]["cause"], "start_failed");
    assert_eq!(dave["agent"], "broken");
    assert!(dave["resources"].is_null());

    // One tenant in full, with its newest snapshot and its events.
    let one = gw.admin(Method::GET, "/admin/api/tenants/user_a", "").await;
    assert_eq!(one.status, 200, "{}", one.body);
    let one = one.json();
    assert_eq!(one["state"], "ready");
    assert!(one["events"].as_array().unwrap().len() >= 2, "{one}");
    assert!(one["snapshots"].as_u64().is_some(), "{one}");

    // Unknown tenants and bad ids, on every tenant route.
    for (method, path) in [
        (Method::GET, "/admin/api/tenants/nobody"),
        (Method::POST, "/admin/api/tenants/nobody/stop"),
        (Method::POST, "/admin/api/tenants/nobody/restart"),
    ] {
        let reply = gw.admin(method.clone(), path, "").await;
        assert_eq!(reply.status, 404, "{method} {path}: {}", reply.body);
        assert_eq!(reply.code(), "unknown_tenant", "{method} {path}");
    }
    assert!(
        gw.state_store()
            .sandbox(&warren_core::TenantId::parse("nobody").unwrap())
            .await
            .unwrap()
            .is_none(),
        "asking about a tenant made no sandbox"
    );
    let reply = gw
        .admin(Method::POST, "/admin/api/tenants/a%2Fb/stop", "")
        .await;
    assert_eq!(
        (reply.status.as_u16(), reply.code()),
        (400, "bad_request".into())
    );
    let reply = gw
        .admin(Method::GET, "/admin/api/events?tenant=..", "")
        .await;
    assert_eq!(
        (reply.status.as_u16(), reply.code()),
        (400, "bad_request".into())
    );

    // Stop: gone and synced when answered, recorded as an operator's stop.
    let stop = gw
        .admin(Method::POST, "/admin/api/tenants/user_a/stop", "")
        .await;
    assert_eq!(stop.status, 200, "{}", stop.body);
    let stop = stop.json();
    assert_eq!(stop["stopped"], true);
    assert_eq!(stop["status"]["state"], "asleep");
    assert_eq!(stop["status"]["last_stop"]["cause"], "admin");
    harness::wait_gone(pid, WAIT).await;
    assert_eq!(
        recent_events(&gw, "user_a", 2).await,
        [pair("asleep", "\"admin\""), pair("stopping", "\"admin\"")]
    );
    // A second stop finds nothing running.
    let again = gw
        .admin(Method::POST, "/admin/api/tenants/user_a/stop", "")
        .await;
    assert_eq!(again.json()["stopped"], false);

    // Restart of a running sandbox: stopped (admin), started again, ready when answered.
    let old_pid = gw.agent_pid("user_b").await;
    let restart = gw
        .admin(Method::POST, "/admin/api/tenants/user_b/restart", "")
        .await;
    assert_eq!(restart.status, 200, "{}", restart.body);
    let restart = restart.json();
    assert_eq!(restart["status"]["state"], "ready");
    assert!(
        restart["start_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{restart}"
    );
    assert_ne!(gw.agent_pid("user_b").await, old_pid, "a new sandbox");
    assert!(!harness::process_alive(old_pid));
    assert_eq!(
        recent_events(&gw, "user_b", 4).await,
        [
            pair("ready", "null"),
            pair("starting", "null"),
            pair("asleep", "\"admin\""),
            pair("stopping", "\"admin\""),
        ]
    );

    // The CLI verbs call the same routes.
    let config = gw.dir.path().join("warren.toml");
    let data = gw.data_dir();
    let url = gw.url("");
    let cli = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--gateway", &url, "--config", config.to_str().unwrap()]);
        all.extend(["--data-dir", data.to_str().unwrap()]);
        run_warren(&all, gw.dir.path())
    };
    let (code, out, err) = cli(&["tenants"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 of 4 sandboxes running"), "{out}");
    let row = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}: {out}"))
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(row("user_a"), "user_a asleep -");
    assert_eq!(row("user_b"), "user_b ready -");
    assert_eq!(row("carol"), "carol asleep gold");
    let (code, out, err) = cli(&["tenant", "user_a"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("last stop      admin"), "{out}");
    assert!(out.contains("asleep (admin)"), "its events: {out}");
    let (code, out, err) = cli(&["events", "user_b", "--limit", "3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        out.lines().nth(2).unwrap().contains(" asleep (admin): "),
        "{out}"
    );
    let (code, out, err) = cli(&["stop", "user_b"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "user_b: stopped, now asleep");
    let (code, out, err) = cli(&["restart", "user_a"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("user_a: restarted, now ready (started in "),
        "{out}"
    );
    assert_eq!(gw.state("user_a").await, "ready");
    let (code, out, err) = cli(&["workers"]);
    assert_eq!(code, 0, "{err}");
    for worker in ["sweep", "prewarm"] {
        assert!(out.lines().any(|l| l.starts_with(worker)), "{out}");
    }
    assert!(out.contains("the sweep applies it"), "{out}");
    let (code, _, err) = cli(&["tenant", "nobody"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown_tenant"), "{err}");
    let (code, out, err) = cli(&["tenants", "--json"]);
    assert_eq!(code, 0, "{err}");
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(tenant_of(&json, "user_a")["state"], "ready");
}

/// The session cookie of a login with `token`, or the reply that refused it.
async fn login(gw: &Gateway, token: &str) -> Result<String, harness::Reply> {
    let body = format!("token={}", token.replace('+', "%2B"));
    let request = Request::post(gw.url("/admin/login"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(body.into()))
        .unwrap();
    let reply = gw.request(request).await;
    if reply.status != 303 {
        return Err(reply);
    }
    let cookie = reply.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    Ok(cookie)
}

#[tokio::test]
async fn a_dashboard_session_is_a_cookie_that_never_holds_the_token() {
    let gw = Gateway::start("");
    let token = std::fs::read_to_string(gw.data_dir().join("admin-token")).unwrap();
    let token = token.trim();

    let page = gw.get("/admin/").await;
    assert_eq!(page.status, 401);
    assert!(
        page.body.contains("id=\"login\""),
        "the login form: {}",
        page.body
    );
    let csp = page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );

    let refused = login(&gw, "wrong").await.unwrap_err();
    assert_eq!(refused.status, 401);
    assert!(refused.body.contains("id=\"login-error\""));
    assert!(refused.headers.get(header::SET_COOKIE).is_none());

    let cookie = match login(&gw, token).await {
        Ok(cookie) => cookie,
        Err(reply) => panic!("the token was refused: {} {}", reply.status, reply.body),
    };
    for part in ["Path=/admin", "HttpOnly", "SameSite=Strict"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "http here: {cookie}");
    assert!(
        !cookie.contains(token),
        "the cookie holds no token: {cookie}"
    );
    let value = cookie.split(';').next().unwrap().to_owned();
    assert!(!gw.log().contains(token), "the token never reaches the log");

    let with = |value: &str, origin: Option<&str>| {
        let mut request = Request::get(gw.url("/admin/api/tenants")).header(header::COOKIE, value);
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        request.body(Full::default()).unwrap()
    };
    assert_eq!(gw.request(with(&value, None)).await.status, 200);
    let own_origin = format!("http://{}", gw.addr);
    assert_eq!(
        gw.request(with(&value, Some(&own_origin))).await.status,
        200
    );
    let other = gw.request(with(&value, Some("http://evil.example"))).await;
    assert_eq!(other.status, 401, "a request from another origin");
    // A session made up, or one whose expiry was moved, is refused.
    let (exp, mac) = value["warren_admin=".len()..].split_once('.').unwrap();
    let later = exp.parse::<u64>().unwrap() + 60;
    for forged in [
        format!("warren_admin={later}.{mac}"),
        format!("warren_admin={exp}.AAAA{}", &mac[4..]),
        format!("warren_admin={token}"),
    ] {
        assert_eq!(
            gw.request(with(&forged, None)).await.status,
            401,
            "{forged}"
        );
    }
    let logout = gw
        .request(
            Request::post(gw.url("/admin/logout"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(logout.status, 303);
    let cleared = logout.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cleared.starts_with("warren_admin=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
}

// === the dashboard in Chromium ===

/// A headless Chromium, driven over the DevTools protocol through one page.
struct Browser {
    page: harness::Ws,
    next_id: u64,
    _process: Process,
}

/// Chromium's processes (its own process group) and profile, ended when dropped,
/// also when a test fails half way through the launch.
struct Process {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Process {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Browser {
    async fn launch() -> Self {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-breakpad",
                "--disable-crash-reporter",
                // A container's /dev/shm may be too small for its renderers.
                "--disable-dev-shm-usage",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: dropping the browser ends all its processes.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run chromium ({e}): install it with `apt-get install chromium` (scripts/test does)")
            });
        let stderr = child.stderr.take().unwrap();
        let process = Process {
            child,
            _profile: profile,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let browser_url = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("chromium printed its DevTools address");
        let port = browser_url
            .trim_start_matches("ws://")
            .split(['/', ':'])
            .nth(1)
            .unwrap()
            .to_owned();
        let page_url = page_target(&port).await;
        let (page, _) = tokio_tungstenite::connect_async(page_url.as_str())
            .await
            .expect("the page's DevTools socket");
        let mut browser = Self {
            page,
            next_id: 0,
            _process: process,
        };
        browser.call("Page.enable", json!({})).await.unwrap();
        browser
    }

    /// A DevTools command's result, or its error.
    async fn call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({ "id": id, "method": method, "params": params });
        self.page
            .send(Message::text(message.to_string()))
            .await
            .unwrap();
        loop {
            let next = tokio::time::timeout(WAIT, self.page.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within {WAIT:?}"));
            let text = match next {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
                other => panic!("the page's DevTools socket ended: {other:?}"),
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                return match v.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(v["result"].clone()),
                };
            }
        }
    }

    /// Evaluates `expr` in the page (promises awaited); its value, or why not.
    async fn eval(&mut self, expr: &str) -> Result<Value, Value> {
        let params = json!({ "expression": expr, "returnByValue": true, "awaitPromise": true });
        let result = self.call("Runtime.evaluate", params).await?;
        match result.get("exceptionDetails") {
            Some(e) => Err(e.clone()),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// Waits until `expr` is true in a loaded page (across navigations).
    async fn wait_for(&mut self, expr: &str) {
        let deadline = Instant::now() + WAIT;
        let check = format!("document.readyState === 'complete' && !!({expr})");
        loop {
            if self.eval(&check).await == Ok(Value::Bool(true)) {
                return;
            }
            if Instant::now() > deadline {
                let html = self.eval("document.documentElement.outerHTML").await;
                panic!("never true: {expr}\nthe page: {html:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }))
            .await
            .unwrap();
        self.wait_for(&format!("location.href === {}", json!(url)))
            .await;
    }

    /// Clicks the element `selector` finds, as a user would (it must exist).
    async fn click(&mut self, selector: &str) {
        let expr = format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return false; e.click(); return true; }})()",
            json!(selector)
        );
        assert_eq!(
            self.eval(&expr).await,
            Ok(Value::Bool(true)),
            "no {selector} to click"
        );
    }

    async fn screenshot(&mut self) -> Vec<u8> {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await
            .unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap()
    }
}

/// The DevTools socket of the browser's page, from its `/json/list` (asked again
/// until the page is listed: it may come a moment after the browser listens).
async fn page_target(port: &str) -> String {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let deadline = Instant::now() + WAIT;
    loop {
        let request = Request::get(format!("http://127.0.0.1:{port}/json/list"))
            .body(Full::default())
            .unwrap();
        let body = match client.request(request).await {
            Ok(response) => response.into_body().collect().await.unwrap().to_bytes(),
            Err(_) => bytes::Bytes::new(),
        };
        let targets: Value = serde_json::from_slice(&body).unwrap_or_default();
        let page = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str());
        if let Some(page) = page {
            return page.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no page among chromium's targets: {targets}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A screenshot worth keeping: a PNG of the window's width, with more than a blank
/// page's bytes. Kept under the target dir for a person to look at.
fn keep_screenshot(png: &[u8], name: &str) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    assert_eq!(width, 1280, "the window's width");
    assert!(png.len() > 20_000, "{name}: only {} bytes", png.len());
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, png).unwrap();
}

/// `(tenant, state)` of each row of the sandboxes table, as the browser shows it.
const ROWS: &str = "JSON.stringify(Array.from(document.querySelectorAll('#sandboxes tbody tr[data-tenant]')).map(r => [r.dataset.tenant, r.dataset.state]))";

#[tokio::test]
async fn the_dashboard_shows_the_tenants_live_in_a_real_browser() {
    let gw = gateway_with_tenants().await;
    let token = std::fs::read_to_string(gw.data_dir().join("admin-token")).unwrap();
    let stopped = gw
        .admin(Method::POST, "/admin/api/tenants/user_b/stop", "")
        .await;
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    let mut browser = Browser::launch().await;

    // The login form; a wrong token is refused on it.
    browser.goto(&gw.url("/admin/")).await;
    browser
        .wait_for("document.querySelector('#login #token')")
        .await;
    let fill = |t: &str| {
        format!(
            "document.querySelector('#token').value = {}; true",
            json!(t)
        )
    };
    browser.eval(&fill("not-the-token")).await.unwrap();
    browser.click("#login button").await;
    browser
        .wait_for("document.querySelector('#login-error')")
        .await;
    browser.eval(&fill(token.trim())).await.unwrap();
    browser.click("#login button").await;
    browser
        .wait_for("document.querySelector('#sandboxes') && location.pathname === '/admin/'")
        .await;
    assert_eq!(
        browser.eval("document.cookie").await,
        Ok(json!("")),
        "the session cookie is HttpOnly"
    );

    // Sandboxes, with their states.
    let rows = browser.eval(ROWS).await.unwrap();
    assert_eq!(
        rows,
        json!(r#"[["carol","asleep"],["dave","asleep"],["user_a","ready"],["user_b","asleep"]]"#)
    );
    assert_eq!(
        browser
            .eval("document.querySelector('#cap-running .value').textContent")
            .await,
        Ok(json!("1 / 4"))
    );
    keep_screenshot(&browser.screenshot().await, "dashboard-sandboxes.png");

    // Live: user_b starts, and the open page shows it without being loaded again.
    browser.eval("window.stillThisPage = true").await.unwrap();
    assert_eq!(gw.get_as("user_b", "/api/history").await.status, 200);
    browser
        .wait_for(
            "document.querySelector('#sandboxes tr[data-tenant=\"user_b\"]').dataset.state === 'ready' \
             && document.querySelector('#cap-running .value').textContent === '2 / 4'",
        )
        .await;
    assert_eq!(browser.eval("window.stillThisPage").await, Ok(json!(true)));
    assert!(
        browser
            .eval("document.querySelector('#updated').textContent")
            .await
            .unwrap()
            .as_str()
            .unwrap()
            .starts_with("updated "),
        "the refresh says when"
    );

    // Each tab, clicked.
    browser.click("#tab-capacity").await;
    browser
        .wait_for(
            "document.querySelector('#tab-capacity.active') && document.querySelector('#slots')",
        )
        .await;
    let slots = browser
        .eval("document.querySelector('#slots').textContent")
        .await
        .unwrap();
    assert!(
        slots.as_str().unwrap().contains("2 of 4 (max_instances)"),
        "{slots}"
    );
    let lag_rows = browser
        .eval("Array.from(document.querySelectorAll('#sync-lag tr[data-tenant]')).map(r => r.dataset.tenant).join(',')")
        .await;
    assert_eq!(
        lag_rows,
        Ok(json!("user_a,user_b")),
        "the running ones' sync lag"
    );
    keep_screenshot(&browser.screenshot().await, "dashboard-capacity.png");

    browser.click("#tab-starts").await;
    browser
        .wait_for("document.querySelector('#tab-starts.active') && document.querySelector('#starts-chart')")
        .await;
    let chart = browser
        .eval(
            "({ bars: document.querySelectorAll('#starts-chart rect.bar').length, \
               failed: document.querySelectorAll('#starts-chart rect.bar-failed[height]:not([height=\"0.0\"])').length, \
               p50: document.querySelector('#cold-start-chart polyline.p50').getAttribute('points'), \
               starts: document.querySelector('#start-summary .value').textContent })",
        )
        .await
        .unwrap();
    assert!(chart["bars"].as_u64().unwrap() >= 1, "{chart}");
    assert!(
        chart["failed"].as_u64().unwrap() >= 1,
        "dave's failed start: {chart}"
    );
    assert!(!chart["p50"].as_str().unwrap().is_empty(), "{chart}");
    assert_eq!(
        chart["starts"], "3",
        "user_a, user_b and user_b again: {chart}"
    );
    keep_screenshot(&browser.screenshot().await, "dashboard-starts.png");

    browser.click("#tab-events").await;
    browser
        .wait_for(
            "document.querySelector('#tab-events.active') && document.querySelector('#events')",
        )
        .await;
    let admin_stop = browser
        .eval(
            "Array.from(document.querySelectorAll('#events tbody tr')).some(r => \
             r.dataset.tenant === 'user_b' && r.dataset.state === 'asleep' && r.textContent.includes('admin'))",
        )
        .await;
    assert_eq!(admin_stop, Ok(json!(true)), "user_b's stop by an operator");

    browser.click("#tab-workers").await;
    browser
        .wait_for(
            "document.querySelector('#tab-workers.active') && document.querySelector('#workers')",
        )
        .await;
    let workers = browser
        .eval("Array.from(document.querySelectorAll('#workers tr[data-worker]')).map(r => r.dataset.worker)")
        .await
        .unwrap();
    for worker in ["sweep", "prewarm"] {
        assert!(
            workers.as_array().unwrap().contains(&json!(worker)),
            "{workers}"
        );
    }

    // A tenant's page, from its link, and its stop button.
    browser.click("#tab-sandboxes").await;
    browser
        .wait_for("document.querySelector('#sandboxes')")
        .await;
    browser
        .click("#sandboxes a[href=\"/admin/?tenant=user_a\"]")
        .await;
    browser
        .wait_for("document.querySelector('#tenant[data-tenant=\"user_a\"]') && document.querySelector('#facts')")
        .await;
    keep_screenshot(&browser.screenshot().await, "dashboard-tenant.png");
    browser.click("#stop").await;
    browser
        .wait_for(
            "document.querySelector('#flash') && document.querySelector('#flash').textContent === 'Sandbox stopped.' \
             && document.querySelector('#tenant .state').textContent === 'asleep'",
        )
        .await;
    assert_eq!(gw.state("user_a").await, "asleep");
    assert_eq!(
        recent_events(&gw, "user_a", 1).await,
        [pair("asleep", "\"admin\"")]
    );

    // Logging out ends the session for the page and its requests.
    browser.click("#logout").await;
    browser.wait_for("document.querySelector('#login')").await;
    let status = browser
        .eval("fetch('/admin/api/tenants').then(r => r.status)")
        .await;
    assert_eq!(status, Ok(json!(401)));
}

#[tokio::test]
async fn with_admin_host_the_dashboard_lives_on_its_own_host_and_no_agent_is_served_there() {
    let gw = Gateway::start("[admin]\nhost = \"admin.test\"");
    let token = std::fs::read_to_string(gw.data_dir().join("admin-token")).unwrap();
    let on = |host: &str, method: Method, path: &str, cookie: Option<&str>, body: String| {
        let mut request = Request::builder()
            .method(method)
            .uri(gw.url(path))
            .header(header::HOST, host)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        request.body(Full::new(body.into())).unwrap()
    };
    let users_host = gw
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let form = format!("token={}", token.trim());

    // No login, no page on the users' host.
    let refused = gw
        .request(on(
            &users_host,
            Method::POST,
            "/admin/login",
            None,
            form.clone(),
        ))
        .await;
    assert_eq!(refused.status, 404, "{}", refused.body);
    assert!(
        refused.body.contains("served on admin.test only"),
        "{}",
        refused.body
    );
    assert!(refused.headers.get(header::SET_COOKIE).is_none());
    assert_eq!(
        gw.request(on(&users_host, Method::GET, "/admin/", None, String::new()))
            .await
            .status,
        404
    );

    // On its own host: a login, and its session works there and nowhere else.
    let login = gw
        .request(on("admin.test", Method::POST, "/admin/login", None, form))
        .await;
    assert_eq!(login.status, 303, "{}", login.body);
    let cookie = login.headers[header::SET_COOKIE].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let list = |host: &str| {
        on(
            host,
            Method::GET,
            "/admin/api/tenants",
            Some(&cookie),
            String::new(),
        )
    };
    assert_eq!(gw.request(list("admin.test")).await.status, 200);
    assert_eq!(gw.request(list(&users_host)).await.status, 401);

    // No agent's content on the dashboard's host, even with a user's credentials.
    let path = format!("/api/history?{}", gw.query("user_a"));
    let agent = gw
        .request(on("admin.test", Method::GET, &path, None, String::new()))
        .await;
    assert_eq!(agent.status, 404, "{}", agent.body);
    assert_eq!(agent.code(), "not_found");
    assert_eq!(
        gw.status("user_a").await["state"],
        "asleep",
        "nothing started"
    );
    // The users' host serves them as ever.
    assert_eq!(gw.get_as("user_a", "/api/history").await.status, 200);
}
