//! The inactive-tenant cleanup, with durations of seconds: a dry run (the default, and
//! `warren cleanup`) reports and removes nothing; `--apply` (or `enabled = true` on its
//! schedule) removes an asleep tenant's local workspace, which its next request
//! restores from the store, and after `snapshots_after` its snapshots, after which it
//! starts empty. A running tenant is never touched, and every removal is an event.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use http::Method;
use tokio_tungstenite::tungstenite::Message;
use warren_core::TenantId;
use warren_core::sandbox::SandboxState;
use warren_state::{Event, StateStore};

use super::harness::{Gateway, POLL, echo, run_warren};

const WAIT: Duration = Duration::from_secs(20);

/// Sandboxes sleep after 1 s idle; asleep for 1 s, a tenant is due.
fn config(cleanup: &str) -> String {
    format!(
        "sleep_after = \"1s\"\n[cleanup]\ninactive_after = \"1s\"\nsnapshots_after = \"2s\"\n{cleanup}\n"
    )
}

fn workspace(gw: &Gateway, user: &str) -> PathBuf {
    gw.data_dir().join("tenants").join(user).join("workspace")
}

/// The user's newest events, newest first.
async fn events(gw: &Gateway, user: &str) -> Vec<Event> {
    let tenant = TenantId::parse(user).unwrap();
    gw.state_store().events(Some(&tenant), 10).await.unwrap()
}

fn cleanup_events(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e.detail.clone())
        .filter(|d| d.starts_with("cleanup:"))
        .collect()
}

/// Polls `GET /admin/api/cleanup` until the last report satisfies `done`.
async fn wait_for_report(
    gw: &Gateway,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = gw.admin(Method::GET, "/admin/api/cleanup", "").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let v = reply.json();
        if done(&v["last_report"]) {
            return v;
        }
        assert!(Instant::now() < deadline, "never {what}: {v}");
        tokio::time::sleep(POLL).await;
    }
}

/// The report's item for `user`, if it lists one.
fn item<'a>(report: &'a serde_json::Value, user: &str) -> Option<&'a serde_json::Value> {
    report["items"]
        .as_array()?
        .iter()
        .find(|i| i["tenant"] == user)
}

#[tokio::test]
async fn a_dry_run_removes_nothing_then_apply_removes_the_workspace_and_the_store_brings_it_back() {
    // Scheduled every second, as a dry run (`enabled` is false by default).
    let gw = Gateway::start(&config("schedule = \"* * * * * *\""));
    let cli = |args: &[&str]| {
        let config = gw.dir.path().join("warren.toml");
        let data = gw.data_dir();
        let url = gw.url("");
        let mut all = vec!["cleanup"];
        all.extend(args);
        all.extend(["--gateway", &url, "--config", config.to_str().unwrap()]);
        all.extend(["--data-dir", data.to_str().unwrap()]);
        run_warren(&all, gw.dir.path())
    };
    let mut a = gw.ws("user_a").await;
    assert_eq!(echo(&mut a, "remember me").await, "remember me");
    a.close(None).await.unwrap();
    // user_b stays connected, so its sandbox runs throughout.
    let mut b = gw.ws("user_b").await;
    assert_eq!(echo(&mut b, "busy").await, "busy");
    gw.wait_for_state("user_a", "asleep", WAIT).await;

    let seen = wait_for_report(&gw, "a scheduled dry run listing user_a", |r| {
        item(r, "user_a").is_some()
    })
    .await;
    let report = &seen["last_report"];
    assert_eq!(report["dry_run"], true, "{seen}");
    assert_eq!(seen["enabled"], false);
    let listed = item(report, "user_a").unwrap();
    assert_eq!(listed["step"], "remove_workspace", "{listed}");
    assert_eq!(listed["done"], false);
    assert!(
        item(report, "user_b").is_none(),
        "a running tenant: {report}"
    );
    let workers = gw.admin(Method::GET, "/admin/api/workers", "").await.json();
    let worker = workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "cleanup")
        .unwrap_or_else(|| panic!("no cleanup worker: {workers}"))
        .clone();
    assert!(worker["runs"].as_u64() >= Some(1), "{worker}");
    assert!(worker["next_run_ms"].is_u64(), "{worker}");
    assert!(worker["last_error"].is_null(), "{worker}");

    // The CLI's run is a dry run too: it reports, and nothing goes.
    let (code, out, err) = cli(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("user_a: would remove its local workspace") && out.contains("nothing removed"),
        "{out}"
    );
    assert!(!out.contains("user_b"), "{out}");
    assert!(workspace(&gw, "user_a").exists());
    assert!(cleanup_events(&events(&gw, "user_a").await).is_empty());

    // Applied: the workspace goes, with an event; the running tenant stays as it is.
    let (code, out, err) = cli(&["--apply"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("user_a: cleanup: local workspace removed after 1s asleep; the store keeps it as snapshot"),
        "{out}"
    );
    assert!(out.contains("1 workspaces removed"), "{out}");
    assert!(!workspace(&gw, "user_a").exists());
    let newest = events(&gw, "user_a").await;
    assert_eq!(newest[0].state, SandboxState::Asleep);
    assert!(
        newest[0]
            .detail
            .as_deref()
            .is_some_and(|d| d.starts_with("cleanup: local workspace removed")),
        "{newest:?}"
    );
    assert!(workspace(&gw, "user_b").exists());
    assert_eq!(echo(&mut b, "untouched").await, "untouched");
    let status = gw.status("user_a").await;
    assert_eq!(status["state"], "asleep", "{status}");

    // The next request restores it from the store; running, it is no longer due.
    assert_eq!(gw.history("user_a").await, ["remember me"]);
    assert!(workspace(&gw, "user_a").exists());
    let reply = gw.admin(Method::POST, "/admin/api/cleanup", "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(item(&reply.json(), "user_a").is_none(), "{}", reply.body);
    b.send(Message::Close(None)).await.unwrap();
}

#[tokio::test]
async fn enabled_it_removes_the_workspace_then_the_snapshots_and_the_tenant_starts_empty() {
    let gw = Gateway::start(&config("schedule = \"* * * * * *\"\nenabled = true"));
    let mut a = gw.ws("user_a").await;
    assert_eq!(echo(&mut a, "forget me").await, "forget me");
    a.close(None).await.unwrap();
    gw.wait_for_state("user_a", "asleep", WAIT).await;

    let seen = wait_for_report(&gw, "user_a's workspace removed", |r| {
        item(r, "user_a").is_some_and(|i| i["step"] == "remove_workspace" && i["done"] == true)
    })
    .await;
    assert_eq!(seen["last_report"]["dry_run"], false, "{seen}");
    assert!(!workspace(&gw, "user_a").exists());
    let snapshots = gw
        .admin(Method::GET, "/admin/api/tenants/user_a/snapshots", "")
        .await
        .json();
    assert!(
        !snapshots["snapshots"].as_array().unwrap().is_empty(),
        "the store keeps it meanwhile: {snapshots}"
    );

    let seen = wait_for_report(&gw, "user_a's snapshots deleted", |r| {
        item(r, "user_a").is_some_and(|i| i["step"] == "delete_snapshots" && i["done"] == true)
    })
    .await;
    let done = item(&seen["last_report"], "user_a").unwrap();
    assert!(
        done["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("cleanup: snapshots deleted from the store (")),
        "{done}"
    );
    let snapshots = gw
        .admin(Method::GET, "/admin/api/tenants/user_a/snapshots", "")
        .await
        .json();
    assert_eq!(snapshots["snapshots"], serde_json::json!([]), "{snapshots}");
    assert!(!gw.data_dir().join("tenants/user_a").exists());
    let logged = cleanup_events(&events(&gw, "user_a").await);
    assert_eq!(logged.len(), 2, "{logged:?}");
    assert!(
        logged[0].starts_with("cleanup: snapshots deleted"),
        "{logged:?}"
    );
    assert!(
        logged[1].starts_with("cleanup: local workspace removed"),
        "{logged:?}"
    );

    // Nothing of it is left: it starts with an empty workspace.
    assert!(gw.history("user_a").await.is_empty());
}
