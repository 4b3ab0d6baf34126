//! The runtime conformance suite: every runtime (the process runtime under bubblewrap,
//! the same with a warm pool, so that every sandbox is a claimed one, and the docker
//! runtime against Podman's API) passes the same black-box tests. A probe
//! agent (tests/agents/probe.py) reports from inside its sandbox what it can see and
//! do, through the real gateway.

mod harness;

use std::time::Duration;

use harness::Gateway;
use warren_state::StateStore;
use warren_testkit::Podman;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Process,
    /// The process runtime with a warm pool of two: sandboxes are claimed, not made.
    Pooled,
    Docker,
}

/// A gateway whose agent is the probe, on one runtime.
struct Probe {
    gw: Gateway,
    // Dropped after the gateway, which stops its containers through it.
    _podman: Option<Podman>,
}

impl std::ops::Deref for Probe {
    type Target = Gateway;
    fn deref(&self) -> &Gateway {
        &self.gw
    }
}

impl std::ops::DerefMut for Probe {
    fn deref_mut(&mut self) -> &mut Gateway {
        &mut self.gw
    }
}

const PROBE_IMAGE: &str = "localhost/warren-probe:test";

fn probe_gateway(kind: Kind, extra: &str) -> Probe {
    probe_gateway_with(kind, extra, "", &[])
}

/// Python's standard library on this machine, for the probe's image.
fn python_stdlib() -> String {
    let out = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .expect("python3 (apt-get install python3)");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `extra` goes at the top of the config, `runtime` into its `[runtime]` table.
fn probe_gateway_with(kind: Kind, extra: &str, runtime: &str, env: &[(&str, &str)]) -> Probe {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/agents/probe.py");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/agents");
    let runtime = match kind {
        Kind::Pooled => format!("{runtime}\npool = 2\n"),
        _ => runtime.to_owned(),
    };
    match kind {
        Kind::Process | Kind::Pooled => {
            // The probe's directory is made visible in the sandboxes, wherever the
            // checkout is (under `/tmp`, say, which sandboxes see as their own).
            let gw = Gateway::start_with(
                &format!(
                    "{extra}\n[agent]\nkind = \"command\"\ncommand = [\"/usr/bin/python3\", \"{script}\"]\n[runtime]\n{runtime}\nro_paths = [\"{dir}\"]\n"
                ),
                env,
            );
            if kind == Kind::Pooled {
                // So that the test's starts claim, rather than race the filling.
                gw.wait_for_pool(2);
            }
            Probe { gw, _podman: None }
        }
        Kind::Docker => {
            warren_testkit::build_image(
                PROBE_IMAGE,
                r#"["/usr/bin/python3","/agent/probe.py"]"#,
                &[
                    "/usr/bin/python3",
                    &python_stdlib(),
                    &format!("{script}:/agent/probe.py"),
                ],
            );
            let podman = Podman::start();
            let gw = Gateway::start_with(
                &format!(
                    "{extra}\n[agent]\nkind = \"command\"\n[runtime]\n{runtime}\nkind = \"docker\"\nsocket = \"{}\"\nimage = \"{PROBE_IMAGE}\"\n",
                    podman.socket.display()
                ),
                env,
            );
            Probe {
                gw,
                _podman: Some(podman),
            }
        }
    }
}

/// Every test, once per runtime: `process::<name>`, `pooled::<name>` and
/// `docker::<name>`.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod process {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() {
                super::$name(super::Kind::Process).await
            })*
        }
        mod pooled {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() {
                super::$name(super::Kind::Pooled).await
            })*
        }
        mod docker {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() {
                super::$name(super::Kind::Docker).await
            })*
        }
    };
}

conformance!(
    a_sandbox_starts_answers_and_stops_with_sigterm_through_its_init,
    a_crash_is_recorded_with_its_exit_code_and_the_next_request_restarts,
    a_sandbox_runs_unprivileged_with_nothing_of_the_gateways_in_its_environment,
    a_sandbox_sees_only_its_own_workspace_and_none_of_the_data_dir,
    a_sandbox_cannot_write_outside_its_workspace_and_its_tmp_is_its_own,
    a_sandbox_reaches_neither_the_gateway_nor_another_sandbox,
    instance_type_limits_are_enforced_and_an_oom_is_told_from_a_crash,
    outbound_network_is_off_by_default_and_allowed_per_tenant,
    a_running_sandbox_syncs_and_answers_after_the_capture,
    a_gateway_killed_or_stopped_leaves_its_sandboxes_to_the_next_one,
    a_sandbox_that_ended_while_no_gateway_ran_is_recorded_and_synced,
    a_sandbox_that_ends_during_a_takeover_is_the_successors_to_record,
);

async fn ask(gw: &Gateway, user: &str, path: &str) -> serde_json::Value {
    let reply = gw.get_as(user, path).await;
    let log = gw.data_dir().join(format!("tenants/{user}/agent.log"));
    assert_eq!(
        reply.status,
        200,
        "{path}: {}\nagent.log: {}",
        reply.body,
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    reply.json()
}

async fn outcome(gw: &Gateway, user: &str, path: &str) -> String {
    ask(gw, user, path).await["result"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn a_sandbox_starts_answers_and_stops_with_sigterm_through_its_init(kind: Kind) {
    // A grace period far longer than the test may take: were SIGTERM ignored (an agent
    // at PID 1 without an init), the stop would end by SIGKILL after it, much later.
    let gw = probe_gateway_with(kind, "sleep_after = \"1s\"", "stop_grace = \"60s\"", &[]);
    assert_eq!(ask(&gw, "user_a", "/whoami").await["tenant"], "user_a");
    assert_eq!(gw.state("user_a").await, "ready");
    gw.wait_for_state("user_a", "asleep", Duration::from_secs(30))
        .await;
    let status = gw.status("user_a").await;
    assert_eq!(status["last_stop"]["cause"], "idle", "{status}");
    assert_eq!(
        status["last_stop"]["detail"], "killed by signal 15",
        "{status}"
    );
}

async fn a_crash_is_recorded_with_its_exit_code_and_the_next_request_restarts(kind: Kind) {
    let gw = probe_gateway(kind, "");
    assert_eq!(ask(&gw, "user_a", "/whoami").await["tenant"], "user_a");
    let reply = gw.get_as("user_a", "/exit?code=3").await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    gw.wait_for_state("user_a", "asleep", Duration::from_secs(20))
        .await;
    let status = gw.status("user_a").await;
    assert_eq!(status["last_stop"]["cause"], "crash", "{status}");
    assert_eq!(status["last_stop"]["detail"], "exit code 3", "{status}");
    assert_eq!(ask(&gw, "user_a", "/whoami").await["tenant"], "user_a");
}

async fn a_sandbox_runs_unprivileged_with_nothing_of_the_gateways_in_its_environment(kind: Kind) {
    let env = [
        ("AWS_ACCESS_KEY_ID", "AKIAISOLATIONTEST"),
        ("AWS_SECRET_ACCESS_KEY", "isolation-secret"),
    ];
    let gw = probe_gateway_with(kind, "", "", &env);
    let who = ask(&gw, "user_a", "/whoami").await;
    assert_eq!(who["uid"], 65534);
    assert_eq!(who["tenant"], "user_a");
    let vars = ask(&gw, "user_a", "/env").await;
    // Python sets LC_CTYPE for itself (PEP 538), bubblewrap sets PWD, container
    // engines HOSTNAME, TERM and `container`: not secrets.
    let mut names: Vec<&str> = vars
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|n| !matches!(*n, "LC_CTYPE" | "PWD" | "HOSTNAME" | "TERM" | "container"))
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

async fn a_sandbox_sees_only_its_own_workspace_and_none_of_the_data_dir(kind: Kind) {
    let gw = probe_gateway(kind, "");
    let data = gw.data_dir();
    // user_b exists, with a file in its workspace.
    ask(&gw, "user_b", "/whoami").await;
    let b_ws = data.join("tenants/user_b/workspace");
    // Relative paths: the agent works in its workspace, wherever a runtime puts it.
    assert_eq!(outcome(&gw, "user_b", "/write?path=secret.txt").await, "ok");
    assert!(b_ws.join("secret.txt").exists());
    assert_eq!(outcome(&gw, "user_a", "/write?path=mine.txt").await, "ok");
    assert!(data.join("tenants/user_a/workspace/mine.txt").exists());
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

async fn a_sandbox_cannot_write_outside_its_workspace_and_its_tmp_is_its_own(kind: Kind) {
    let gw = probe_gateway(kind, "");
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
    let in_root = tempfile::Builder::new()
        .prefix(".warren-conformance-")
        .tempfile_in("/root")
        .unwrap();
    assert_eq!(
        outcome(
            &gw,
            "user_a",
            &format!("/read?path={}", in_root.path().display())
        )
        .await,
        "FileNotFoundError"
    );
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

async fn a_sandbox_reaches_neither_the_gateway_nor_another_sandbox(kind: Kind) {
    let gw = probe_gateway(kind, "");
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
    let own = ask(&gw, "user_a", "/fetch?port=8787&path=/whoami").await;
    let own: serde_json::Value = serde_json::from_str(own["body"].as_str().unwrap()).unwrap();
    assert_eq!(own["tenant"], "user_a");
    // No route anywhere else.
    let got = outcome(&gw, "user_a", "/connect?host=10.255.255.1&port=80").await;
    assert!(
        got == "OSError" || got.contains("Unreachable") || got == "TimeoutError",
        "{got}"
    );
}

async fn instance_type_limits_are_enforced_and_an_oom_is_told_from_a_crash(kind: Kind) {
    // A size of the deployment's own, given to this tenant alone (the default stays
    // standard-4): 1/16 vCPU, 256 MiB, 256 pids.
    let gw = probe_gateway(
        kind,
        "[instance_types.small]\nvcpu = 0.0625\nmemory_mib = 256\ndisk_gb = 2\npids = 256\n\
         [tenants.user_a]\ninstance_type = \"small\"",
    );
    assert_eq!(gw.status("user_a").await["instance_type"], "small");
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

/// This host's address on its default route: outside every sandbox's loopback.
fn host_address() -> std::net::IpAddr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    // A documentation address: nothing is sent, the kernel only picks a route.
    probe
        .connect("203.0.113.1:9")
        .expect("this test needs a default route (a network interface besides loopback)");
    probe.local_addr().unwrap().ip()
}

async fn outbound_network_is_off_by_default_and_allowed_per_tenant(kind: Kind) {
    let gw = probe_gateway(kind, "[tenants.user_b]\nnetwork = \"outbound\"");
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let outside = format!("/connect?host={}&port={port}", host_address());

    assert_ne!(outcome(&gw, "user_a", &outside).await, "ok");
    assert_eq!(gw.status("user_a").await["network"], "none");

    assert_eq!(gw.status("user_b").await["network"], "outbound");
    assert_eq!(outcome(&gw, "user_b", &outside).await, "ok");
    // Outbound is not the host's loopback: neither directly nor through the NAT's
    // alias for it.
    let gateway_port = gw.addr.port();
    for host in ["127.0.0.1", "10.0.2.2"] {
        let got = outcome(
            &gw,
            "user_b",
            &format!("/connect?host={host}&port={gateway_port}"),
        )
        .await;
        assert_ne!(got, "ok", "user_b reached the gateway at {host}");
    }
}

async fn a_running_sandbox_syncs_and_answers_after_the_capture(kind: Kind) {
    let gw = probe_gateway(kind, "");
    assert_eq!(outcome(&gw, "user_a", "/write?path=notes.txt").await, "ok");
    let token = std::fs::read_to_string(gw.data_dir().join("admin-token")).unwrap();
    let request = http::Request::post(gw.url("/admin/api/tenants/user_a/sync"))
        .header("authorization", format!("Bearer {}", token.trim()))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let reply = gw.request(request).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // The capture froze the sandbox (a failed freeze fails the sync; that a freeze
    // stops every process is the runtimes' own test, `freeze_stops_every_process`).
    let report = reply.json();
    assert!(report["files"].as_u64().unwrap() >= 1, "{report}");
    // And thawed it: the agent answers again.
    assert_eq!(ask(&gw, "user_a", "/whoami").await["tenant"], "user_a");
}

async fn a_gateway_killed_or_stopped_leaves_its_sandboxes_to_the_next_one(kind: Kind) {
    let mut gw = probe_gateway(kind, "");
    assert_eq!(outcome(&gw, "user_a", "/write?path=/tmp/mark").await, "ok");
    let pid = gw.agent_pid("user_a").await;
    // A crash (SIGKILL), then a graceful stop (SIGTERM): neither ends the sandbox, and
    // each next gateway takes the same one back.
    let crash: fn(&mut Gateway) = |gw| gw.crash();
    let stop: fn(&mut Gateway) = |gw| {
        gw.stop();
    };
    for end in [crash, stop] {
        end(&mut gw);
        assert!(
            harness::process_alive(pid),
            "the sandbox ended with the gateway"
        );
        gw.start_again();
        gw.wait_for_state("user_a", "ready", Duration::from_secs(10))
            .await;
        // The same sandbox, not a new one: the same process, its /tmp as it was.
        assert_eq!(gw.agent_pid("user_a").await, pid);
        assert_eq!(outcome(&gw, "user_a", "/read?path=/tmp/mark").await, "ok");
    }
    // And it is this gateway's now: SIGINT stops it.
    gw.shut_down();
    harness::wait_gone(pid, Duration::from_secs(20)).await;
}

async fn a_sandbox_that_ended_while_no_gateway_ran_is_recorded_and_synced(kind: Kind) {
    let mut gw = probe_gateway(kind, "");
    assert_eq!(outcome(&gw, "user_a", "/write?path=first.txt").await, "ok");
    let pid = gw.agent_pid("user_a").await;
    let seq_before = gw.status("user_a").await["sync"]["seq"].as_u64();
    gw.crash();
    // The sandbox ends while no gateway runs (its first process inside is killed, and
    // the rest with it), after leaving a last change on disk.
    let inside = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse::<i32>()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(inside),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    harness::wait_gone(pid, Duration::from_secs(20)).await;
    std::fs::write(
        gw.data_dir().join("tenants/user_a/workspace/last.txt"),
        "written while no gateway ran",
    )
    .unwrap();

    gw.start_again();
    let status = gw.status("user_a").await;
    assert_eq!(status["state"], "asleep", "{status}");
    assert_eq!(status["last_stop"]["cause"], "crash", "{status}");
    assert!(
        status["last_stop"]["detail"]
            .as_str()
            .unwrap()
            .contains("ended while no gateway ran"),
        "{status}"
    );
    // The last change is in a snapshot made at the restart.
    let seq_after = status["sync"]["seq"].as_u64().expect("a snapshot");
    assert!(
        seq_before.is_none_or(|before| seq_after > before),
        "{status}"
    );
    // And the next request starts it again, with the change.
    assert_eq!(outcome(&gw, "user_a", "/read?path=last.txt").await, "ok");
}

async fn a_sandbox_that_ends_during_a_takeover_is_the_successors_to_record(kind: Kind) {
    let mut gw = probe_gateway(kind, "drain_timeout = \"5s\"");
    // An open WebSocket would hold the old gateway for its drain; a request is enough
    // to start the sandbox.
    assert_eq!(ask(&gw, "user_a", "/whoami").await["tenant"], "user_a");
    let old = gw.take_over();
    // It crashes while the old gateway still drains: the successor records it, with
    // what its runtime can know (a container's exit code; a process's went to the
    // gateway that started it).
    let reply = gw.get_as("user_a", "/exit?code=3").await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    gw.wait_for_state("user_a", "asleep", Duration::from_secs(20))
        .await;
    let status = gw.status("user_a").await;
    assert_eq!(status["last_stop"]["cause"], "crash", "{status}");
    let expected = match kind {
        Kind::Docker => "exit code 3",
        Kind::Process | Kind::Pooled => "ended (its exit status went to an earlier gateway)",
    };
    assert_eq!(status["last_stop"]["detail"], expected, "{status}");
    let mut old = old;
    assert!(
        tokio::task::block_in_place(|| old.wait())
            .unwrap()
            .success()
    );
}
