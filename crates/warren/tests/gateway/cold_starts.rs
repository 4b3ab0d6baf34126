//! Cold starts: every start measured (metrics and its event) and scheduled pre-warm.

use std::time::{Duration, Instant};

use http::Method;

use crate::harness::{self, Gateway, POLL};

/// The value of the sample `name` (with its labels, as written) in `/metrics`.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn every_start_is_measured_phase_by_phase_in_metrics_and_in_its_event() {
    let gw = Gateway::start("");
    assert_eq!(
        gw.get("/metrics").await.status,
        401,
        "metrics want the admin token"
    );
    assert_eq!(gw.get_as("user_a", "/api/history").await.status, 200);
    let metrics = gw.admin(Method::GET, "/metrics", "").await;
    assert_eq!(metrics.status, 200);
    let text = &metrics.body;
    for phase in ["admission", "restore", "create", "boot", "first_byte"] {
        let count = format!("warren_start_phase_seconds_count{{phase=\"{phase}\"}}");
        assert_eq!(sample(text, &count), Some(1.0), "{phase}: {text}");
    }
    assert_eq!(
        sample(text, "warren_start_seconds_count"),
        Some(1.0),
        "{text}"
    );
    let ready = "warren_starts_total{outcome=\"ready\"}";
    assert_eq!(sample(text, ready), Some(1.0), "{text}");
    let boot = sample(text, "warren_start_phase_seconds_sum{phase=\"boot\"}").unwrap();
    assert!(boot > 0.0, "{text}");

    // The start's event names every phase, the first byte included.
    let store = gw.state_store();
    let deadline = Instant::now() + Duration::from_secs(10);
    let tenant = warren_core::TenantId::parse("user_a").unwrap();
    let detail = loop {
        let events = warren_state::StateStore::events(&store, Some(&tenant), 10)
            .await
            .unwrap();
        let ready = events
            .iter()
            .find(|e| e.state == warren_core::sandbox::SandboxState::Ready)
            .and_then(|e| e.detail.clone())
            .unwrap_or_default();
        if ready.contains("first byte") || Instant::now() > deadline {
            break ready;
        }
        tokio::time::sleep(POLL).await;
    };
    for phase in ["admission", "restore", "create", "boot", "first byte"] {
        assert!(detail.contains(&format!("{phase} ")), "{phase}: {detail}");
    }

    // A request to a ready sandbox starts nothing and measures nothing.
    assert_eq!(gw.get_as("user_a", "/api/history").await.status, 200);
    let text = gw.admin(Method::GET, "/metrics", "").await.body;
    assert_eq!(
        sample(&text, "warren_start_seconds_count"),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn a_failed_start_is_counted_as_failed() {
    let gw = Gateway::start(&harness::shell_agent("exit 3"));
    assert_eq!(gw.get_as("user_a", "/api/history").await.status, 502);
    let text = gw.admin(Method::GET, "/metrics", "").await.body;
    let failed = "warren_starts_total{outcome=\"failed\"}";
    assert_eq!(sample(&text, failed), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "warren_start_seconds_count"),
        Some(0.0),
        "{text}"
    );
}

#[tokio::test]
async fn a_scheduled_prewarm_starts_a_tiers_sandboxes_while_slots_are_free() {
    // Every second, the tier's tenants: a by config, b and d assigned through the
    // admin API. Two slots: d, last by id, finds none.
    let gw = Gateway::start(
        "max_instances = 2\n[tiers.early]\nprewarm = [\"* * * * * *\"]\n\
         [tenants.user_a]\ntier = \"early\"",
    );
    for user in ["user_b", "user_d"] {
        let path = format!("/admin/api/tenants/{user}/tier");
        let reply = gw.admin(Method::PUT, &path, r#"{"tier": "early"}"#).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    // Nobody asked for a or b: the rule started them.
    gw.wait_for_state("user_a", "ready", Duration::from_secs(10))
        .await;
    gw.wait_for_state("user_b", "ready", Duration::from_secs(10))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let prewarm = loop {
        let workers = gw.admin(Method::GET, "/admin/api/workers", "").await.json();
        let prewarm = workers["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == "prewarm")
            .cloned()
            .expect("the prewarm worker is listed");
        if prewarm["runs"].as_u64() >= Some(2) || Instant::now() > deadline {
            break prewarm;
        }
        tokio::time::sleep(POLL).await;
    };
    assert!(prewarm["runs"].as_u64() >= Some(2), "{prewarm}");
    assert!(
        prewarm["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("no free slot"),
        "{prewarm}"
    );
    assert_eq!(gw.state("user_d").await, "asleep", "no slot was free for d");
    assert_eq!(gw.state("user_c").await, "asleep", "c is in no tier");
    assert!(gw.get("/readyz").await.json()["sandboxes_running"] == 2);
}

/// The warren cgroup (`warren/<name>`) process `pid` is in, by its memory controller.
fn cgroup_of(pid: u32) -> String {
    let listing = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let line = listing
        .lines()
        .find(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|c| c == "memory"))
        })
        .or_else(|| listing.lines().find(|l| l.starts_with("0::")))
        .unwrap();
    let path = line.splitn(3, ':').nth(2).unwrap();
    path.split("/warren/").nth(1).unwrap_or(path).to_owned()
}

/// The memory limit of the cgroup `warren/<name>`, in bytes (v1 or v2).
fn memory_limit(name: &str) -> u64 {
    let v1 = format!("/sys/fs/cgroup/memory/warren/{name}/memory.limit_in_bytes");
    let v2 = format!("/sys/fs/cgroup/warren/{name}/memory.max");
    let text = std::fs::read_to_string(&v1).or_else(|_| std::fs::read_to_string(&v2));
    text.unwrap().trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn starts_claim_pooled_sandboxes_the_pool_refills_and_leaves_nothing_behind() {
    let mut gw = Gateway::start(
        "[runtime]\npool = 2\n\
         [tenants.user_b]\ninstance_type = \"lite\"\n\
         [tenants.user_c]\nnetwork = \"outbound\"",
    );
    gw.wait_for_pool(2);
    // a's sandbox was one of the pool's: its cgroup says so, and what the agent writes
    // to its workspace lands in the tenant's workspace on the host.
    let mut ws = gw.ws("user_a").await;
    assert_eq!(
        harness::echo(&mut ws, "from a pooled sandbox").await,
        "from a pooled sandbox"
    );
    let a = cgroup_of(gw.agent_pid("user_a").await);
    assert!(
        a.starts_with("pool-"),
        "{a}: not a pooled sandbox\n{}",
        gw.log()
    );
    let history = gw.data_dir().join("tenants/user_a/workspace/history.jsonl");
    let written = std::fs::read_to_string(&history).unwrap();
    assert!(written.contains("from a pooled sandbox"), "{written}");
    tokio::task::block_in_place(|| gw.wait_for_pool(2));

    // b's instance type is not the pool's: the claimed sandbox gets b's limits.
    assert_eq!(gw.get_as("user_b", "/api/history").await.status, 200);
    let b = cgroup_of(gw.agent_pid("user_b").await);
    assert!(
        b.starts_with("pool-"),
        "{b}: not a pooled sandbox\n{}",
        gw.log()
    );
    assert_eq!(memory_limit(&b), 256 << 20, "lite's 256 MiB");
    // c may reach the outside world: a sandbox of its own, made for it.
    assert_eq!(gw.get_as("user_c", "/api/history").await.status, 200);
    let c = cgroup_of(gw.agent_pid("user_c").await);
    assert!(c.starts_with("user_c-"), "{c}");

    // The workspace was attached inside b's sandbox alone: neither the host nor
    // another sandbox (pooled or not) has a mount of it, nor of a's.
    let mounts_of = |pid: u32| {
        let inner = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
        let inner = inner.split_whitespace().next().unwrap().to_owned();
        std::fs::read_to_string(format!("/proc/{inner}/mountinfo")).unwrap()
    };
    let (pid_b, pid_c) = (gw.agent_pid("user_b").await, gw.agent_pid("user_c").await);
    let (in_b, in_c) = (mounts_of(pid_b), mounts_of(pid_c));
    assert!(
        in_b.contains("/tenants/user_b/workspace /home/agent "),
        "{in_b}"
    );
    assert!(
        !in_b.contains("user_a") && !in_b.contains("user_c"),
        "{in_b}"
    );
    assert!(
        !in_c.contains("user_a") && !in_c.contains("user_b"),
        "{in_c}"
    );
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host.contains("/tenants/user_"), "{host}");

    // A stop of everything takes the pool with it: no cgroup is left.
    tokio::task::block_in_place(|| gw.shut_down());
    for name in [a, b] {
        let gone = !std::path::Path::new(&format!("/sys/fs/cgroup/memory/warren/{name}")).exists()
            && !std::path::Path::new(&format!("/sys/fs/cgroup/warren/{name}")).exists();
        assert!(gone, "cgroup {name} is left");
    }
}
