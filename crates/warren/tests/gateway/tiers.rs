//! Tiers: their own `sleep_after` (or never), admission priority, eviction order, and
//! tenants put in a tier by an operator through the CLI and the admin API.

use std::time::Duration;

use http::Request;
use warren_core::sandbox::SandboxState;
use warren_state::StateStore;

use super::harness::{Gateway, echo, run_warren};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_kept_warm_tier_stays_up_while_the_top_level_sleep_after_puts_others_to_sleep() {
    let gw = Gateway::start(
        "sleep_after = \"300ms\"\n\
         [tiers.warm]\nsleep_after = \"never\"\npriority = 10\n\
         [tenants.user_a]\ntier = \"warm\"",
    );
    assert_eq!(gw.get_as("user_a", "/api/history").await.status, 200);
    assert_eq!(gw.get_as("user_b", "/api/history").await.status, 200);
    // b went to sleep after 300 ms idle; a has been idle longer and is still up.
    gw.wait_for_state("user_b", "asleep", WAIT).await;
    let a = gw.status("user_a").await;
    assert_eq!(a["state"], "ready", "{a}");
    assert_eq!(a["tier"], "warm");
    assert!(gw.status("user_b").await["tier"].is_null());
}

#[tokio::test]
async fn a_tier_set_through_the_cli_applies_at_once_and_survives_a_restart() {
    let mut gw = Gateway::start(
        "sleep_after = \"never\"\n[tiers.brief]\nsleep_after = \"300ms\"\n[tiers.gold]\npriority = 5",
    );
    let config = gw.dir.path().join("warren.toml");
    let data = gw.data_dir();
    let url = gw.url("");
    let cwd = gw.dir.path().to_owned();
    let cli = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--gateway", &url, "--config", config.to_str().unwrap()]);
        all.extend(["--data-dir", data.to_str().unwrap()]);
        run_warren(&all, &cwd)
    };
    assert_eq!(gw.get_as("user_a", "/api/history").await.status, 200);
    let (code, out, err) = cli(&["tier", "user_a"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("user_a: tier (none)") && out.contains("ready"),
        "{out}"
    );

    // Kept warm by the top level until it joins a tier that sleeps after 300 ms.
    let (code, out, err) = cli(&["tier", "user_a", "brief"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("user_a: tier brief"), "{out}");
    gw.wait_for_state("user_a", "asleep", WAIT).await;
    assert_eq!(gw.status("user_a").await["last_stop"]["cause"], "idle");

    let (code, _, err) = cli(&["tier", "user_a", "platinum"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown tier \"platinum\""), "{err}");

    // The admin API refuses what the CLI would not send.
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let put = |body: &'static str, token: &str| {
        Request::put(gw.url("/admin/api/tenants/user_a/tier"))
            .header("authorization", format!("Bearer {}", token.trim()))
            .body(body.into())
            .unwrap()
    };
    let reply = gw.request(put(r#"{"tier": "platinum"}"#, &token)).await;
    assert_eq!(
        (reply.status.as_u16(), reply.code()),
        (400, "bad_request".into())
    );
    let reply = gw.request(put(r#"{"tir": "gold"}"#, &token)).await;
    assert_eq!(
        (reply.status.as_u16(), reply.code()),
        (400, "bad_request".into())
    );
    let reply = gw.request(put(r#"{"tier": "gold"}"#, "wrong-token")).await;
    assert_eq!(reply.status, 401);
    assert_eq!(gw.status("user_a").await["tier"], "brief");

    gw.restart();
    assert_eq!(
        gw.status("user_a").await["tier"],
        "brief",
        "kept across restarts"
    );
    let (code, out, err) = cli(&["tier", "user_a", "--clear"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("user_a: tier (none)"), "{out}");
    assert!(gw.status("user_a").await["tier"].is_null());
}

#[tokio::test]
async fn eviction_takes_the_lowest_tier_first_and_never_a_kept_warm_higher_one() {
    let gw = Gateway::start(
        "max_instances = 2\nsleep_after = \"never\"\n[admission]\nqueue_timeout = \"1s\"\n\
         [tiers.gold]\npriority = 10\n[tenants.user_a]\ntier = \"gold\"",
    );
    assert_eq!(gw.get_as("user_a", "/api/history").await.status, 200);
    assert_eq!(gw.get_as("user_b", "/api/history").await.status, 200);
    // a is the least recently used, but gold and kept warm: b goes for c.
    assert_eq!(gw.get_as("user_c", "/api/history").await.status, 200);
    assert_eq!(gw.state("user_a").await, "ready");
    assert_eq!(gw.status("user_b").await["last_stop"]["cause"], "eviction");
    assert_eq!(gw.state("user_c").await, "ready");
    // With c busy, nothing may go for d: it waits, then hears there is no room.
    let mut c = gw.ws("user_c").await;
    echo(&mut c, "busy").await;
    let reply = gw.get_as("user_d", "/api/history").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.code(), "capacity_exhausted");
    assert_eq!(
        gw.state("user_a").await,
        "ready",
        "gold was not evicted for d"
    );
    assert_eq!(echo(&mut c, "still c").await, "still c");
}

#[tokio::test]
async fn a_waiting_start_of_a_higher_tier_gets_the_next_slot_first() {
    let gw = Gateway::start(
        "max_instances = 1\n[admission]\nqueue_timeout = \"20s\"\n\
         [tiers.gold]\npriority = 10\n[tenants.user_c]\ntier = \"gold\"",
    );
    // Which waiting start wins a freed slot is otherwise a race: a few rounds show
    // that the order is the tiers'.
    for round in 0..4 {
        let mut a = gw.ws("user_a").await;
        echo(&mut a, "busy").await;
        let b = gw.get_as("user_b", "/api/history");
        let c = gw.get_as("user_c", "/api/history");
        let free_the_slot = async {
            // Both wait in the queue; then a's sandbox turns idle.
            loop {
                let waiting = gw.get("/readyz").await.json()["admission_waiting"].clone();
                if waiting == 2 {
                    break;
                }
                tokio::time::sleep(super::harness::POLL).await;
            }
            a.close(None).await.unwrap();
        };
        let (b, c, ()) = tokio::join!(b, c, free_the_slot);
        assert_eq!(
            (b.status.as_u16(), c.status.as_u16()),
            (200, 200),
            "{} / {}",
            b.body,
            c.body
        );
        let events = gw.state_store().events(None, 100).await.unwrap();
        let ready_at = |user: &str| {
            events
                .iter()
                .find(|e| e.tenant.as_str() == user && e.state == SandboxState::Ready)
                .map(|e| e.id)
                .unwrap_or_else(|| panic!("{user} never became ready"))
        };
        assert!(
            ready_at("user_c") < ready_at("user_b"),
            "round {round}: gold's start went first"
        );
    }
}

#[tokio::test]
async fn tiers_and_tenants_choose_their_agent_profile_with_its_own_readiness_path() {
    let bin = super::harness::warren_bin();
    // A profile of its own that leaves a mark in the workspace, then runs the echo
    // agent; another whose readiness path nothing answers.
    let gw = Gateway::start(&format!(
        "[agents.marked]\nkind = \"command\"\n\
         command = [\"/bin/sh\", \"-c\", \"touch marked-by-profile && exec {bin} echo-agent\"]\n\
         [agents.never_ready]\nkind = \"command\"\ncommand = [\"{bin}\", \"echo-agent\"]\n\
         readiness_path = \"/not-here\"\n\
         [runtime]\nro_paths = [\"{bin}\"]\nstart_timeout = \"2s\"\n\
         [tiers.pro]\nagent = \"marked\"\n\
         [tenants.user_a]\ntier = \"pro\"\n\
         [tenants.user_c]\ntier = \"pro\"\nagent = \"never_ready\"\n"
    ));
    let (a, b) = tokio::join!(
        gw.get_as("user_a", "/api/history"),
        gw.get_as("user_b", "/api/history")
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(gw.status("user_a").await["agent"], "marked");
    assert_eq!(gw.status("user_b").await["agent"], "default");
    let workspace = |user: &str| gw.data_dir().join(format!("tenants/{user}/workspace"));
    assert!(workspace("user_a").join("marked-by-profile").exists());
    assert!(!workspace("user_b").join("marked-by-profile").exists());

    // The tenant's own choice wins over its tier's, readiness path and all.
    let c = gw.get_as("user_c", "/api/history").await;
    assert_eq!(c.status, 502, "{}", c.body);
    assert_eq!(c.code(), "sandbox_start_failed");
    assert_eq!(gw.status("user_c").await["agent"], "never_ready");
}
