//! Black-box tests of sandbox isolation with the process runtime's default
//! (namespaces): a probe agent (tests/agents/probe.py) reports from inside its sandbox
//! what it can see and do, through the real gateway.

mod harness;

use harness::Gateway;
use warren_state::StateStore;

fn probe_gateway(extra: &str) -> Gateway {
    probe_gateway_with(extra, &[])
}

/// A gateway whose agent is the probe. Its directory is made visible in the sandboxes,
/// wherever the checkout is (under `/tmp`, say, which sandboxes see as their own).
fn probe_gateway_with(extra: &str, env: &[(&str, &str)]) -> Gateway {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/agents/probe.py");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/agents");
    Gateway::start_with(
        &format!(
            "{extra}\n[agent]\nkind = \"command\"\ncommand = [\"/usr/bin/python3\", \"{script}\"]\n[runtime]\nro_paths = [\"{dir}\"]\n"
        ),
        env,
    )
}

async fn ask(gw: &Gateway, user: &str, path: &str) -> serde_json::Value {
    let reply = gw.get_as(user, path).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    reply.json()
}

async fn outcome(gw: &Gateway, user: &str, path: &str) -> String {
    ask(gw, user, path).await["result"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_sandbox_runs_unprivileged_with_nothing_of_the_gateways_in_its_environment() {
    let env = [
        ("AWS_ACCESS_KEY_ID", "AKIAISOLATIONTEST"),
        ("AWS_SECRET_ACCESS_KEY", "isolation-secret"),
    ];
    let gw = probe_gateway_with("", &env);
    let who = ask(&gw, "user_a", "/whoami").await;
    assert_eq!(who["uid"], 65534);
    assert_eq!(who["tenant"], "user_a");
    let vars = ask(&gw, "user_a", "/env").await;
    // Python sets LC_CTYPE for itself (PEP 538) and bubblewrap sets PWD: not secrets.
    let mut names: Vec<&str> = vars
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|n| !matches!(*n, "LC_CTYPE" | "PWD"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "HOME",
            "PATH",
            "TMPDIR",
            "WARREN_AGENT_ADDR",
            "WARREN_TENANT_ID",
            "WARREN_WORKSPACE"
        ]
    );
    let text = vars.to_string();
    assert!(
        !text.contains("AKIA")
            && !text.contains(harness::SECRET)
            && !text.contains("isolation-secret")
    );
}

#[tokio::test]
async fn a_sandbox_sees_only_its_own_workspace_and_none_of_the_data_dir() {
    let gw = probe_gateway("");
    let data = gw.data_dir();
    // user_b exists, with a file in its workspace.
    ask(&gw, "user_b", "/whoami").await;
    let b_ws = data.join("tenants/user_b/workspace");
    assert_eq!(
        outcome(
            &gw,
            "user_b",
            &format!("/write?path={}/secret.txt", b_ws.display())
        )
        .await,
        "ok"
    );
    assert!(b_ws.join("secret.txt").exists());

    let a_ws = data.join("tenants/user_a/workspace");
    assert_eq!(
        outcome(
            &gw,
            "user_a",
            &format!("/write?path={}/mine.txt", a_ws.display())
        )
        .await,
        "ok"
    );
    for hidden in [
        b_ws.join("secret.txt"),
        data.join("signing-secret"),
        data.join("admin-token"),
        data.join("state.db"),
        data.join("tenants/user_b/agent.log"),
    ] {
        let got = outcome(&gw, "user_a", &format!("/read?path={}", hidden.display())).await;
        assert_eq!(got, "FileNotFoundError", "{} is visible", hidden.display());
    }
    assert_eq!(
        outcome(
            &gw,
            "user_a",
            &format!("/list?path={}", data.join("tenants/user_b").display())
        )
        .await,
        "FileNotFoundError"
    );
}

#[tokio::test]
async fn a_sandbox_cannot_write_outside_its_workspace_and_its_tmp_is_its_own() {
    let gw = probe_gateway("");
    for outside in ["/etc/warren-escape", "/usr/warren-escape", "/warren-escape"] {
        let got = outcome(&gw, "user_a", &format!("/write?path={outside}")).await;
        assert_ne!(got, "ok", "wrote {outside}");
        assert!(!std::path::Path::new(outside).exists());
    }
    assert_eq!(outcome(&gw, "user_a", "/write?path=/tmp/lock").await, "ok");
    assert_eq!(outcome(&gw, "user_a", "/read?path=/tmp/lock").await, "ok");
    assert_eq!(
        outcome(&gw, "user_b", "/read?path=/tmp/lock").await,
        "FileNotFoundError",
        "/tmp is shared"
    );
    assert!(
        !std::path::Path::new("/tmp/lock").exists(),
        "the sandbox's /tmp is the host's"
    );
    // Secrets that usually sit in root's home are out of sight.
    assert_eq!(outcome(&gw, "user_a", "/list?path=/root").await, "ok");
    let listing = ask(&gw, "user_a", "/procs").await;
    assert!(
        listing["pids"].as_array().unwrap().len() <= 4,
        "sees other processes: {listing}"
    );
    assert!(listing["cmdlines"].to_string().contains("probe.py"));
    assert!(
        !listing["cmdlines"].to_string().contains("warren serve"),
        "sees the gateway: {listing}"
    );
}

#[tokio::test]
async fn a_sandbox_reaches_neither_the_gateway_nor_another_sandbox() {
    let gw = probe_gateway("");
    ask(&gw, "user_b", "/whoami").await;
    let port = gw.addr.port();
    // The gateway listens on the host's loopback; the sandbox has its own.
    assert_eq!(
        outcome(
            &gw,
            "user_a",
            &format!("/connect?host=127.0.0.1&port={port}")
        )
        .await,
        "ConnectionRefusedError"
    );
    // 127.0.0.1:8787 inside is the sandbox's own agent, never user_b's.
    assert_eq!(
        outcome(&gw, "user_a", "/connect?host=127.0.0.1&port=8787").await,
        "ok"
    );
    // No route anywhere else.
    let got = outcome(&gw, "user_a", "/connect?host=10.255.255.1&port=80").await;
    assert!(
        got == "OSError" || got.contains("Unreachable") || got == "TimeoutError",
        "{got}"
    );
}

#[tokio::test]
async fn instance_type_limits_are_enforced_and_an_oom_is_told_from_a_crash() {
    // lite: 1/16 vCPU, 256 MiB, 256 pids.
    let gw = probe_gateway("instance_type = \"lite\"");
    let burn = ask(&gw, "user_a", "/burn?ms=1000").await;
    let cpu_ms = burn["cpu_ms"].as_u64().unwrap();
    assert!(
        cpu_ms < 500,
        "a 1/16 vCPU sandbox used {cpu_ms} ms of CPU in 1 s"
    );
    let threads = ask(&gw, "user_a", "/threads?n=400").await["started"]
        .as_u64()
        .unwrap();
    assert!(
        threads < 400,
        "started {threads} threads under a limit of 256 pids"
    );
    assert_eq!(
        ask(&gw, "user_a", "/alloc?mb=64").await["allocated_mb"],
        64,
        "within the limit"
    );

    // Over the memory limit: the kernel kills it, and warren says so.
    let reply = gw.get_as("user_a", "/alloc?mb=400").await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    gw.wait_for_state("user_a", "asleep", std::time::Duration::from_secs(20))
        .await;
    let status = gw.status("user_a").await;
    assert_eq!(status["last_stop"]["cause"], "oom", "{status}");
    let events = gw
        .state_store()
        .events(Some(&warren_core::TenantId::parse("user_a").unwrap()), 10)
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.cause == Some(warren_core::sandbox::StopCause::Oom)),
        "{events:?}"
    );
    // The next request starts it again.
    assert_eq!(ask(&gw, "user_a", "/whoami").await["tenant"], "user_a");
}
