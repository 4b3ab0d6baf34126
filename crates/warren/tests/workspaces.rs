//! Black-box tests of durable workspaces: real gateways sharing a store (a local
//! directory, or moto's S3 server), real agents, real kills.

mod harness;

use std::time::{Duration, Instant};

use harness::{Gateway, POLL, echo, process_alive, run_warren, wait_gone};
use warren_testkit::Moto;

fn store_config(store: &std::path::Path, extra: &str) -> String {
    format!("{extra}\n[store]\npath = \"{}\"\n", store.display())
}

/// Waits until the user's workspace is in the store with nothing pending.
async fn wait_synced(
    gw: &Gateway,
    user: &str,
    at_least_seq: u64,
    within: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let status = gw.status(user).await;
        let sync = &status["sync"];
        if sync["seq"].as_u64().is_some_and(|s| s >= at_least_seq)
            && sync["pending_since_ms"].is_null()
        {
            return status;
        }
        assert!(Instant::now() < deadline, "{user} never synced: {status}");
        tokio::time::sleep(POLL).await;
    }
}

fn kill9(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

#[tokio::test]
async fn an_acknowledged_write_survives_kill_9_of_the_agent_and_a_fresh_data_dir() {
    let store = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&store_config(store.path(), ""));
    let mut ws = gw.ws("user_a").await;
    assert_eq!(echo(&mut ws, "acknowledged").await, "acknowledged");
    let pid = gw.agent_pid("user_a").await;
    kill9(pid);
    gw.wait_for_state("user_a", "asleep", Duration::from_secs(20))
        .await;
    assert_eq!(gw.status("user_a").await["last_stop"]["cause"], "crash");

    // Another machine: a fresh data dir, the same store.
    let fresh = Gateway::start(&store_config(store.path(), ""));
    assert_eq!(fresh.history("user_a").await, ["acknowledged"]);
}

#[tokio::test]
async fn a_running_workspace_reaches_the_store_within_the_rpo_without_any_stop() {
    let store = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(&store_config(store.path(), "sleep_after = \"never\""));
    let mut ws = gw.ws("user_a").await;
    echo(&mut ws, "first").await;
    let first = wait_synced(&gw, "user_a", 1, Duration::from_secs(10)).await["sync"]["seq"]
        .as_u64()
        .unwrap();
    echo(&mut ws, "second").await;
    wait_synced(&gw, "user_a", first + 1, Duration::from_secs(10)).await;

    // Now lose everything at once: the gateway and the agent, no final sync.
    let agent = gw.agent_pid("user_a").await;
    kill9(gw.pid());
    // The whole sandbox (bubblewrap and what runs inside, one process group): with the
    // gateway gone nothing else would end it.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(agent as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = gw.stop();
    wait_gone(agent, Duration::from_secs(5)).await;

    let fresh = Gateway::start(&store_config(store.path(), ""));
    assert_eq!(fresh.history("user_a").await, ["first", "second"]);
}

#[tokio::test]
async fn a_graceful_sleep_loses_nothing_and_the_store_serves_a_new_machine() {
    let store = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&store_config(store.path(), "sleep_after = \"1s\""));
    let mut ws = gw.ws("user_a").await;
    for i in 0..20 {
        echo(&mut ws, &format!("m{i}")).await;
    }
    ws.close(None).await.unwrap();
    gw.wait_for_state("user_a", "asleep", Duration::from_secs(20))
        .await;
    assert_eq!(gw.status("user_a").await["last_stop"]["cause"], "idle");
    let fresh = Gateway::start(&store_config(store.path(), ""));
    let want: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(fresh.history("user_a").await, want);
}

#[tokio::test]
async fn the_cli_syncs_sweeps_lists_and_restores_through_the_gateway() {
    let store = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&store_config(
        store.path(),
        "sleep_after = \"never\"\n[sweep]\nschedule = \"\"",
    ));
    let config = gw.dir.path().join("warren.toml");
    let data = gw.data_dir();
    let url = gw.url("");
    let cli = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend([
            "--gateway",
            &url,
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        run_warren(&all, gw.dir.path())
    };
    let mut ws = gw.ws("user_a").await;
    echo(&mut ws, "one").await;
    let (code, out, err) = cli(&["sync", "user_a"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("user_a: snapshot ") || out.starts_with("user_a: unchanged"),
        "{out}"
    );
    echo(&mut ws, "two").await;
    gw.get_as("user_b", "/api/history").await;

    let (code, out, err) = cli(&["sweep"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("user_a: ") && out.contains("user_b: "),
        "a line per tenant: {out}"
    );
    assert!(
        out.lines().last().unwrap().starts_with("sweep: 2 tenants"),
        "{out}"
    );

    let (code, out, _) = cli(&["snapshots", "user_a"]);
    assert_eq!(code, 0);
    let seqs: Vec<u64> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(seqs.len() >= 2, "{out}");

    // Restoring the first snapshot is refused while the sandbox runs...
    let (code, _, err) = cli(&["restore", "user_a", "--snapshot", &seqs[0].to_string()]);
    assert_ne!(code, 0);
    assert!(err.contains("sandbox_running"), "{err}");
    assert_eq!(echo(&mut ws, "still up").await, "still up");
    // ...and done with --stop: the sandbox stops (syncing first), the workspace goes back.
    let (code, out, err) = cli(&[
        "restore",
        "user_a",
        "--snapshot",
        &seqs[0].to_string(),
        "--stop",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("restored snapshot"), "{out}");
    assert_eq!(gw.status("user_a").await["last_stop"]["cause"], "admin");
    let history = gw.history("user_a").await;
    assert!(
        history.first().is_some_and(|m| m == "one") && !history.contains(&"still up".to_owned()),
        "{history:?}"
    );

    // The admin API wants its token.
    let reply = gw.get("/admin/api/workers").await;
    assert_eq!(
        (reply.status.as_u16(), reply.code().as_str()),
        (401, "admin_unauthorized")
    );
    // And no admin path ever reaches a sandbox.
    let reply = gw.get_as("user_a", "/admin/anything").await;
    assert_eq!(reply.status, 404);
}

#[tokio::test]
async fn an_s3_store_works_end_to_end_and_the_agent_never_sees_its_credentials() {
    let moto = Moto::start();
    moto.create_bucket("warren-e2e");
    let config = format!(
        "[store]\nkind = \"s3\"\nendpoint = \"http://{}\"\nbucket = \"warren-e2e\"\nprefix = \"prod\"\nallow_http = true\n",
        moto.addr
    );
    let env = [
        ("AWS_ACCESS_KEY_ID", "AKIAWARRENTEST"),
        ("AWS_SECRET_ACCESS_KEY", "s3cr3t-never-in-a-sandbox"),
    ];
    let mut gw = Gateway::start_with(&config, &env);
    let mut ws = gw.ws("user_a").await;
    echo(&mut ws, "to s3").await;
    let pid = gw.agent_pid("user_a").await;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains("AKIAWARRENTEST") && !environ.contains("s3cr3t"),
        "credentials leaked: {environ}"
    );
    assert!(!environ.contains("WARREN_SIGNING_SECRET") && !environ.contains(harness::SECRET));
    drop(ws);
    assert!(gw.shut_down().success());
    assert!(!process_alive(pid));

    let fresh = Gateway::start_with(&config, &env);
    assert_eq!(fresh.history("user_a").await, ["to s3"]);
}

#[tokio::test]
async fn a_whole_machine_comes_back_from_the_store_and_a_state_backup() {
    let store = tempfile::tempdir().unwrap();
    let config = store_config(store.path(), "[tiers.gold]\npriority = 5");
    let mut gw = Gateway::start(&config);
    let users = ["user_a", "user_b", "user_c"];
    for user in users {
        let mut ws = gw.ws(user).await;
        assert_eq!(
            echo(&mut ws, &format!("{user} was here")).await,
            format!("{user} was here")
        );
    }
    let cli = |dir: &std::path::Path, args: &[&str]| {
        let mut all = args.to_vec();
        let (config, data) = (dir.join("warren.toml"), dir.join("data"));
        all.extend([
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        run_warren(&all, dir)
    };
    // An operator's choice, which only the state store keeps.
    let url = gw.url("");
    let (code, _, err) = cli(
        gw.dir.path(),
        &["tier", "user_b", "gold", "--gateway", &url],
    );
    assert_eq!(code, 0, "{err}");
    // The state store's backup, taken while the gateway runs.
    let backups = tempfile::tempdir().unwrap();
    let backup = backups.path().join("state.db");
    let backup = backup.to_str().unwrap();
    let (code, out, err) = cli(gw.dir.path(), &["backup-state", backup]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("backed up to"), "{out}");
    gw.shut_down();

    // The machine is lost; a new one has the store and the backup.
    let dir = harness::config_dir(&config);
    let (code, out, err) = cli(dir.path(), &["recover", "--state", backup]);
    assert_eq!(code, 0, "{out}{err}");
    for user in users {
        assert!(out.contains(&format!("{user}: restored snapshot")), "{out}");
        assert!(
            dir.path()
                .join(format!("data/tenants/{user}/workspace"))
                .is_dir()
        );
    }
    // The backup saw them running, on the lost machine: none is taken for running here.
    let state = warren_state::SqliteStore::open(&dir.path().join("data/state.db")).unwrap();
    use warren_state::StateStore as _;
    assert!(state.live_sandboxes().await.unwrap().is_empty());
    drop(state);
    let fresh = Gateway::start_in(dir, &[]);
    for user in users {
        assert_eq!(fresh.history(user).await, [format!("{user} was here")]);
    }
    assert_eq!(fresh.status("user_b").await["tier"], "gold");
    assert!(fresh.status("user_a").await["tier"].is_null());
    // Never beside a running gateway.
    let (code, _, err) = cli(fresh.dir.path(), &["recover"]);
    assert_ne!(code, 0);
    assert!(err.contains("a gateway runs on this data dir"), "{err}");
}

#[tokio::test]
async fn a_sleep_before_the_watch_synced_leaves_nothing_pending() {
    let store = tempfile::tempdir().unwrap();
    // The watch waits 30 s; the sandbox sleeps after 1 s: the stop's sync takes it.
    let gw = Gateway::start(&store_config(
        store.path(),
        "sleep_after = \"1s\"\n[sync]\ndebounce = \"30s\"\nmax_delay = \"30s\"",
    ));
    let mut ws = gw.ws("user_a").await;
    echo(&mut ws, "late").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.status("user_a").await["sync"]["pending_since_ms"].is_null() {
        assert!(Instant::now() < deadline, "the change was never seen");
        tokio::time::sleep(POLL).await;
    }
    drop(ws);
    gw.wait_for_state("user_a", "asleep", Duration::from_secs(20))
        .await;
    let status = gw.status("user_a").await;
    assert!(status["sync"]["pending_since_ms"].is_null(), "{status}");
    assert!(status["sync"]["seq"].as_u64().is_some(), "{status}");
}
