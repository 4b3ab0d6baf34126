//! The two runtimes side by side: `process` (bubblewrap, the default) and `docker`
//! (containers through the Docker Engine API, here Podman's `podman system service`),
//! each behind a real gateway with the echo agent, measured the same way in one run.
//!
//! Per runtime, two gateways:
//! - one with room for every sandbox: one untimed warm-up start (the first start of a
//!   fresh engine or gateway is not the one users see), then `sandboxes - 1` new
//!   tenants one after another, each one's first request timed by the client (start
//!   to ready, with the gateway's `Server-Timing` phases). Every sandbox then stays
//!   idle for `SETTLE`, its memory is read from `/proc` and its cgroup, and the
//!   gateway gets SIGINT, timed until it exits having stopped them all (at once).
//! - one with `max_instances = 1`: each new tenant's first request must first evict
//!   the previous tenant's idle sandbox, left quiet for `QUIET` first, and the gateway
//!   reports that wait as the `admission` phase: the gateway's and the runtime's stop of
//!   one idle sandbox (SIGTERM through its init, its exit, for a container the engine's
//!   cleanup and its removal) until its slot is free. The final sync comes after the
//!   slot is freed and is not in it.
//!
//! What a docker sandbox costs on the host is its container's processes (the init and
//! the agent) and its conmon, Podman's per-container monitor, which runs outside the
//! container (a child of PID 1) and is found by the `ConmonPid` Podman reports,
//! checked against its command line, which names the container. Podman's API service
//! is shared by all containers and is counted apart, as the gateway is.
//!
//! Every container a gateway of this run made is removed however the run ends.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};

use crate::cold_start::first_request;
use crate::launch::{Gateway, parent_and_start, processes_under, pss_kib, rss_kib};
use crate::load::Samples;

/// How long the sandboxes stay idle before their memory is read.
pub const SETTLE: Duration = Duration::from_secs(2);
/// How long a sandbox is left alone before it is stopped: longer than the sync's
/// debounce and `max_delay` on their defaults (200 and 500 ms), so no sync of its
/// first request's write is pending or running when it stops.
pub const QUIET: Duration = Duration::from_secs(1);
/// The label the docker runtime puts on its containers: the gateway's data dir.
const DATA_DIR_LABEL: &str = "warren.data-dir";

pub struct Settings {
    /// Sandboxes started on each runtime and measured idle (the first start untimed).
    pub sandboxes: usize,
    /// Idle sandboxes stopped one at a time (by eviction) on each runtime.
    pub stops: usize,
    /// The echo agent's image, for the docker runtime.
    pub image: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Process,
    Docker,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Process => "process",
            Kind::Docker => "docker",
        }
    }
}

/// The memory of the idle sandboxes of one runtime, all of them together.
#[derive(Default)]
pub struct Memory {
    pub sandboxes: usize,
    /// The sandboxes' own processes: bubblewrap, its init and the agent; or the
    /// container's init and the agent.
    pub processes: usize,
    pub rss_kib: u64,
    pub pss_kib: u64,
    /// conmon, one per container (none for the process runtime).
    pub monitors: usize,
    pub monitor_rss_kib: u64,
    pub monitor_pss_kib: u64,
    /// What the sandboxes' cgroups are charged (`memory.usage_in_bytes` on v1,
    /// `memory.current` on v2): anonymous memory, page cache first read by the sandbox,
    /// kernel memory. A container's conmon is in its cgroup (a `conmon` child).
    pub cgroup_bytes: Option<u64>,
    pub gateway_rss_kib: u64,
}

pub struct RuntimeRun {
    pub kind: Kind,
    /// The warm-up start: the first of a fresh gateway (and engine), not in `starts`.
    pub first_start: Duration,
    /// Start to ready, client wall time, and the gateway's create and boot phases.
    pub starts: Samples,
    /// The same starts in the order they ran (each with one more sandbox running).
    pub starts_in_order: Vec<Duration>,
    pub create: Samples,
    pub boot: Samples,
    /// The stop of one idle sandbox (the `admission` phase of a start at capacity).
    pub stops: Samples,
    pub memory: Memory,
    /// SIGINT to exit of the gateway with `memory.sandboxes` idle sandboxes.
    pub shutdown: Duration,
    /// Sandbox processes and containers left after either gateway exited.
    pub leaked_processes: usize,
    pub leaked_containers: usize,
    /// Both gateways' logs (level warn).
    pub log_lines: Vec<String>,
    /// Podman's API service, for the docker runtime.
    pub engine: Option<EngineRss>,
}

/// The resident memory of Podman's API service (a Go program shared by every
/// container): before the first gateway, with every sandbox idle, and once the gateway
/// has stopped and removed them all.
pub struct EngineRss {
    pub before_kib: u64,
    pub running_kib: u64,
    pub after_kib: u64,
}

pub struct Runtimes {
    pub runs: Vec<RuntimeRun>,
    /// The image's id and whether it is older than the warren binary measured.
    pub image: String,
    pub image_id: String,
    pub image_stale: bool,
}

pub async fn run(warren: &Path, dir: &Path, settings: &Settings) -> anyhow::Result<Runtimes> {
    ensure!(
        settings.sandboxes >= 2 && settings.stops >= 1,
        "the runtimes run needs at least 2 sandboxes and 1 stop"
    );
    let inspect = podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Id}} {{.Created.Unix}}",
        &settings.image,
    ])
    .await
    .with_context(|| {
        format!(
            "the image {} is needed: build it with scripts/build-image",
            settings.image
        )
    })?;
    let (image_id, created) = inspect.trim().split_once(' ').unwrap_or(("?", "0"));
    let binary_changed = std::fs::metadata(warren)?
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let image_stale = created.parse::<u64>().unwrap_or(0) < binary_changed;

    let mut runs = Vec::new();
    eprintln!("runtimes: process...");
    runs.push(
        measure(
            warren,
            &dir.join("process"),
            Kind::Process,
            "",
            None,
            settings,
        )
        .await?,
    );

    eprintln!("runtimes: docker (Podman's API service)...");
    // Podman::start panics when it cannot start the service: a failed run, not a crash.
    let engine = tokio::task::spawn_blocking(warren_testkit::Podman::start)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start podman system service: {e}"))?;
    let tables = format!(
        "[runtime]\nkind = \"docker\"\nsocket = \"{}\"\nimage = \"{}\"\n",
        engine.socket.display(),
        settings.image
    );
    let docker = measure(
        warren,
        &dir.join("docker"),
        Kind::Docker,
        &tables,
        Some(engine.pid()),
        settings,
    )
    .await;
    drop(engine);
    runs.push(docker?);
    Ok(Runtimes {
        runs,
        image: settings.image.clone(),
        image_id: image_id.chars().take(12).collect(),
        image_stale,
    })
}

/// Both gateways of one runtime.
async fn measure(
    warren: &Path,
    dir: &Path,
    kind: Kind,
    tables: &str,
    engine: Option<u32>,
    settings: &Settings,
) -> anyhow::Result<RuntimeRun> {
    let idle_dir = dir.join("idle");
    let stop_dir = dir.join("stop");
    // Dropped last: removes whatever containers the gateways left, however this ends.
    let _leftovers = (kind == Kind::Docker).then(|| LeftoverContainers {
        data_dirs: vec![idle_dir.join("data"), stop_dir.join("data")],
    });

    // Many idle sandboxes: start to ready, memory, the gateway's stop.
    let engine_before = engine.and_then(rss_kib);
    let gateway =
        Gateway::start_with(warren, &idle_dir, settings.sandboxes + 8, "", tables).await?;
    let (first_start, _) = first_request(&gateway, "user_warm0000")
        .await
        .context("the warm-up start")?;
    let mut columns: [Vec<Duration>; 3] = Default::default();
    for i in 1..settings.sandboxes {
        let (total, phases) = first_request(&gateway, &format!("user_start{i:04}"))
            .await
            .with_context(|| format!("{}: first request of user {i}", kind.name()))?;
        for (column, value) in columns.iter_mut().zip([total, phases.create, phases.boot]) {
            column.push(value);
        }
    }
    tokio::time::sleep(SETTLE).await;
    let sandboxes = match kind {
        Kind::Process => process_sandboxes(&gateway.data_dir),
        Kind::Docker => docker_sandboxes(&gateway.data_dir).await?,
    };
    ensure!(
        sandboxes.len() == settings.sandboxes,
        "{}: {} sandboxes found running, {} started",
        kind.name(),
        sandboxes.len(),
        settings.sandboxes
    );
    let mut memory = memory_of(&sandboxes);
    memory.gateway_rss_kib = gateway.process.pid().and_then(rss_kib).unwrap_or(0);
    let engine_running = engine.and_then(rss_kib);
    let idle_data = gateway.data_dir.clone();
    let stopped = gateway.stop().await?;
    let mut leaked_processes = stopped.leaked + still_alive(&sandboxes).await;
    let mut leaked_containers = 0;
    if kind == Kind::Docker {
        leaked_containers += remove_containers(&idle_data).await?;
    }
    let engine = match (engine_before, engine_running, engine.and_then(rss_kib)) {
        (Some(before_kib), Some(running_kib), Some(after_kib)) => Some(EngineRss {
            before_kib,
            running_kib,
            after_kib,
        }),
        _ => None,
    };
    let mut log_lines = stopped.log_lines;

    // One idle sandbox stopped at a time: each start at max_instances = 1 evicts one.
    let gateway = Gateway::start_with(warren, &stop_dir, 1, "", tables).await?;
    first_request(&gateway, "user_stop0000")
        .await
        .context("the first start at capacity")?;
    let mut stops = Vec::new();
    for i in 1..=settings.stops {
        tokio::time::sleep(QUIET).await;
        let (_, phases) = first_request(&gateway, &format!("user_stop{i:04}"))
            .await
            .with_context(|| format!("{}: start {i} at capacity", kind.name()))?;
        stops.push(phases.admission);
    }
    let stop_data = gateway.data_dir.clone();
    let stopped_one = gateway.stop().await?;
    leaked_processes += stopped_one.leaked;
    if kind == Kind::Docker {
        leaked_containers += remove_containers(&stop_data).await?;
    }
    log_lines.extend(stopped_one.log_lines);

    let starts_in_order = columns[0].clone();
    let [starts, create, boot] = columns.map(Samples::new);
    Ok(RuntimeRun {
        kind,
        first_start,
        starts,
        starts_in_order,
        create,
        boot,
        stops: Samples::new(stops),
        memory,
        shutdown: stopped.took,
        leaked_processes,
        leaked_containers,
        log_lines,
        engine,
    })
}

/// A process, told apart from a later one with the same pid by its start time.
#[derive(Clone, Copy)]
struct Proc {
    pid: u32,
    start: u64,
}

impl Proc {
    fn of(pid: u32) -> Option<Self> {
        parent_and_start(pid).map(|(_, start)| Self { pid, start })
    }

    fn alive(&self) -> bool {
        parent_and_start(self.pid).is_some_and(|(_, start)| start == self.start)
    }
}

/// How many of the sandboxes' processes (conmon included) are still there a moment
/// after their gateway exited.
async fn still_alive(sandboxes: &[SandboxProcs]) -> usize {
    let count = || {
        sandboxes
            .iter()
            .flat_map(|s| s.processes.iter().chain(&s.monitor))
            .filter(|p| p.alive())
            .count()
    };
    for _ in 0..20 {
        if count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    count()
}

/// One sandbox's processes, as found on the host.
struct SandboxProcs {
    processes: Vec<Proc>,
    /// A container's conmon.
    monitor: Option<Proc>,
    /// Its cgroup's memory directory.
    cgroup: Option<PathBuf>,
}

/// The process runtime's sandboxes: the processes working under the data dir, one
/// sandbox per process group (bubblewrap, its init, the agent).
fn process_sandboxes(data_dir: &Path) -> Vec<SandboxProcs> {
    let mut groups: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in processes_under(data_dir) {
        if let Some(group) = process_group(pid) {
            groups.entry(group).or_default().push(pid);
        }
    }
    groups
        .into_values()
        .map(|pids| SandboxProcs {
            cgroup: pids.iter().find_map(|&p| sandbox_cgroup(p)),
            processes: pids.into_iter().filter_map(Proc::of).collect(),
            monitor: None,
        })
        .collect()
}

fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name: state, ppid, pgrp.
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// The docker runtime's sandboxes: the running containers labelled with the data dir,
/// each its init and every descendant, and its conmon.
async fn docker_sandboxes(data_dir: &Path) -> anyhow::Result<Vec<SandboxProcs>> {
    let ids = containers(data_dir, false).await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec![
        "inspect",
        "--format",
        "{{.Id}} {{.State.Pid}} {{.State.ConmonPid}}",
    ];
    args.extend(ids.iter().map(String::as_str));
    let inspected = podman(&args).await?;
    let children = children_of_every_process();
    let mut sandboxes = Vec::new();
    for line in inspected.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [id, init, conmon] = fields[..] else {
            bail!("unexpected `podman inspect` line: {line:?}");
        };
        let (init, conmon): (u32, u32) = (init.parse()?, conmon.parse()?);
        let cmdline = std::fs::read(format!("/proc/{conmon}/cmdline")).unwrap_or_default();
        ensure!(
            String::from_utf8_lossy(&cmdline).contains(id),
            "process {conmon}, Podman's ConmonPid of {id}, is not that container's conmon"
        );
        let mut processes = vec![init];
        let mut next = 0;
        while let Some(&pid) = processes.get(next) {
            processes.extend(children.get(&pid).into_iter().flatten());
            next += 1;
        }
        sandboxes.push(SandboxProcs {
            cgroup: sandbox_cgroup(init),
            processes: processes.into_iter().filter_map(Proc::of).collect(),
            monitor: Proc::of(conmon),
        });
    }
    Ok(sandboxes)
}

/// Every process's children, from `/proc`.
pub fn children_of_every_process() -> HashMap<u32, Vec<u32>> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return children;
    };
    for pid in entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        if let Some((parent, _)) = parent_and_start(pid) {
            children.entry(parent).or_default().push(pid);
        }
    }
    children
}

/// The memory directory of the sandbox cgroup `pid` is in or under: warren makes
/// `warren/<name>` for each sandbox (a container's own cgroup and its conmon's are
/// children of it).
pub fn sandbox_cgroup(pid: u32) -> Option<PathBuf> {
    let listing = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let lines: Vec<(&str, &str)> = listing
        .lines()
        .filter_map(|l| {
            let mut fields = l.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            Some((controllers, path))
        })
        .collect();
    let (base, path) = match lines
        .iter()
        .find(|(c, _)| c.split(',').any(|c| c == "memory"))
    {
        Some((_, path)) => ("/sys/fs/cgroup/memory", *path),
        None => (
            "/sys/fs/cgroup",
            lines.iter().find(|(c, _)| c.is_empty())?.1,
        ),
    };
    let mut parts = path.trim_start_matches('/').split('/');
    let (Some("warren"), Some(name)) = (parts.next(), parts.next()) else {
        return None;
    };
    Some(Path::new(base).join("warren").join(name))
}

pub fn cgroup_memory_bytes(dir: &Path) -> Option<u64> {
    ["memory.usage_in_bytes", "memory.current"]
        .iter()
        .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())?
        .trim()
        .parse()
        .ok()
}

fn memory_of(sandboxes: &[SandboxProcs]) -> Memory {
    let mut m = Memory {
        sandboxes: sandboxes.len(),
        cgroup_bytes: Some(0),
        ..Memory::default()
    };
    for s in sandboxes {
        for p in &s.processes {
            m.processes += 1;
            m.rss_kib += rss_kib(p.pid).unwrap_or(0);
            m.pss_kib += pss_kib(p.pid).unwrap_or(0);
        }
        if let Some(p) = &s.monitor {
            m.monitors += 1;
            m.monitor_rss_kib += rss_kib(p.pid).unwrap_or(0);
            m.monitor_pss_kib += pss_kib(p.pid).unwrap_or(0);
        }
        let charged = s.cgroup.as_deref().and_then(cgroup_memory_bytes);
        m.cgroup_bytes = m.cgroup_bytes.zip(charged).map(|(a, b)| a + b);
    }
    m
}

/// Runs the podman CLI (which reads the same storage as the service) and returns its
/// stdout.
async fn podman(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run podman")?;
    ensure!(
        out.status.success(),
        "podman {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The containers a gateway with this data dir made: running ones, or `all`.
async fn containers(data_dir: &Path, all: bool) -> anyhow::Result<Vec<String>> {
    let filter = format!("label={DATA_DIR_LABEL}={}", data_dir.display());
    let mut args = vec!["ps", "-q", "--no-trunc", "--filter", &filter];
    if all {
        args.push("-a");
    }
    Ok(podman(&args)
        .await?
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

/// Removes the containers a gateway with this data dir left, and says how many.
async fn remove_containers(data_dir: &Path) -> anyhow::Result<usize> {
    let left = containers(data_dir, true).await?;
    if !left.is_empty() {
        let mut args = vec!["rm", "-f", "-t", "0"];
        args.extend(left.iter().map(String::as_str));
        podman(&args).await?;
    }
    Ok(left.len())
}

/// Removes, when dropped, every container labelled with these data dirs: the error
/// path, when a gateway could not stop its own. Blocks briefly.
struct LeftoverContainers {
    data_dirs: Vec<PathBuf>,
}

impl Drop for LeftoverContainers {
    fn drop(&mut self) {
        for dir in &self.data_dirs {
            let filter = format!("label={DATA_DIR_LABEL}={}", dir.display());
            let Ok(out) = std::process::Command::new("podman")
                .args(["ps", "-a", "-q", "--no-trunc", "--filter", &filter])
                .stderr(Stdio::null())
                .output()
            else {
                continue;
            };
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("podman")
                    .args(["rm", "-f", "-t", "0"])
                    .args(&ids)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}
