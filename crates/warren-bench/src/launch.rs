//! The processes a benchmark runs: the gateway, a stand-alone echo agent, and a guard
//! that stops each of them (SIGTERM, then SIGKILL after a deadline) however the
//! benchmark ends, so a failed run leaves nothing behind.
//!
//! Readiness is always a real condition with a deadline: the gateway's "listening"
//! line on stdout, or an answer from the process's own port.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use warren_core::TenantId;
use warren_core::auth::Signer;

use crate::client::HttpConn;

/// How long a process may take to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(15);
/// How long a process gets between SIGTERM and SIGKILL. The gateway stops every
/// sandbox first, so it gets longer.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// The signing secret of every gateway the benchmark starts.
const SIGNING_SECRET: &str = "warren-bench-signing-secret";

/// A child process that is stopped when dropped.
pub struct Spawned {
    name: String,
    child: Child,
    /// Where its stderr goes, shown when it fails.
    log: PathBuf,
    /// What ends it: SIGTERM, but SIGINT for a gateway, which on SIGTERM would leave
    /// its sandboxes running for a next gateway.
    stop_signal: Signal,
}

impl Spawned {
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Self> {
        let stderr = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(false);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
            stop_signal: Signal::SIGTERM,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Fails, with the end of its log, if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{} exited ({status}):\n{}", self.name, tail.join("\n"));
        }
        Ok(())
    }

    /// Sends `signal` (none: waits for the process to end by itself), waits up to
    /// `within`, then kills it and fails. Returns how long it took and how it ended.
    pub async fn end(
        mut self,
        signal: Option<Signal>,
        within: Duration,
    ) -> anyhow::Result<(Duration, std::process::ExitStatus)> {
        let started = Instant::now();
        let pid = self.child.id().context("the process was already reaped")?;
        if let Some(signal) = signal {
            kill(Pid::from_raw(pid as i32), signal)?;
        }
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => Ok((started.elapsed(), status?)),
            Err(_) => {
                self.child.start_kill()?;
                self.child.wait().await?;
                bail!("{} did not exit within {within:?}; killed it", self.name)
            }
        }
    }

    /// SIGTERM, wait up to `STOP_GRACE`, then SIGKILL. Returns how long the stop took.
    pub async fn stop(mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let Some(pid) = self.child.id() else {
            return Ok(Duration::ZERO);
        };
        let _ = kill(Pid::from_raw(pid as i32), self.stop_signal);
        match tokio::time::timeout(STOP_GRACE, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                // nginx and the gateway exit 0 on SIGTERM; the echo agent dies of it.
                if !status.success() && status.code().is_some() {
                    bail!("{} exited with {status} when stopped", self.name);
                }
                Ok(started.elapsed())
            }
            Err(_) => {
                self.child.start_kill()?;
                self.child.wait().await?;
                bail!(
                    "{} ignored SIGTERM for {STOP_GRACE:?}; killed it",
                    self.name
                )
            }
        }
    }
}

impl Drop for Spawned {
    /// The error path: the process was not stopped with `stop`. Blocks briefly.
    fn drop(&mut self) {
        let Some(pid) = self.child.id() else {
            return;
        };
        let _ = kill(Pid::from_raw(pid as i32), self.stop_signal);
        let deadline = std::time::Instant::now() + STOP_GRACE;
        while std::time::Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.start_kill();
        let _ = self.child.try_wait();
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Polls `GET path` at `address` until it answers 200, the process exits, or the
/// deadline passes.
pub async fn wait_http_ok(
    process: &mut Spawned,
    address: SocketAddr,
    path: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_DEADLINE;
    let mut last = String::new();
    while Instant::now() < deadline {
        process.check_alive()?;
        match HttpConn::connect(address).await {
            Ok(mut conn) => match conn.get(path, None).await {
                Ok(r) if r.status == http::StatusCode::OK => return Ok(()),
                Ok(r) => last = format!("status {}", r.status),
                Err(e) => last = format!("{e:#}"),
            },
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!(
        "{} not ready at {address} within {READY_DEADLINE:?} (last: {last})",
        process.name
    )
}

/// A stand-alone `warren echo-agent`, the same code every sandbox runs.
pub struct EchoAgent {
    pub process: Spawned,
    pub address: SocketAddr,
}

impl EchoAgent {
    pub async fn start(warren: &Path, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let workspace = dir.join("agent-workspace");
        let mut command = Command::new(warren);
        command
            .arg("echo-agent")
            .arg("--listen")
            .arg(address.to_string())
            .arg("--workspace")
            .arg(&workspace)
            .stdout(Stdio::null());
        let mut process = Spawned::spawn("echo agent", command, &dir.join("agent.log"))?;
        wait_http_ok(&mut process, address, "/healthz").await?;
        Ok(Self { process, address })
    }
}

/// A `warren serve` with its own config and data dir.
pub struct Gateway {
    pub process: Spawned,
    pub address: SocketAddr,
    pub data_dir: PathBuf,
    /// From the spawn to its `warren listening` line (which it prints once it has taken
    /// back any running sandboxes).
    pub ready_after: Duration,
    signer: Signer,
}

/// Where a gateway gets its listening socket.
#[derive(Clone, Copy)]
pub enum Listen {
    /// Binds this address (port 0: a free one).
    At(SocketAddr),
    /// `--takeover`: from the gateway running on the same data dir.
    TakeOver,
}

impl Gateway {
    /// Starts a gateway whose sandboxes never sleep by themselves, with at most
    /// `max_instances` running at once, on the default runtime.
    pub async fn start(warren: &Path, dir: &Path, max_instances: usize) -> anyhow::Result<Self> {
        Self::start_with(warren, dir, max_instances, "", "").await
    }

    /// As `start`, with `settings` (top-level keys such as `drain_timeout`) and
    /// `tables` (TOML tables such as `[runtime]`) added to its config.
    pub async fn start_with(
        warren: &Path,
        dir: &Path,
        max_instances: usize,
        settings: &str,
        tables: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with_env(warren, dir, max_instances, settings, tables, &[]).await
    }

    /// As `start_with`, with `env` set for the gateway (secrets that config files never
    /// hold, such as the S3 credentials). The config is written anew each time, so a
    /// gateway on the data dir an earlier one left can have other settings.
    pub async fn start_with_env(
        warren: &Path,
        dir: &Path,
        max_instances: usize,
        settings: &str,
        tables: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_sleeping_after(warren, dir, max_instances, "never", settings, tables, env).await
    }

    /// As `start_with_env`, with sandboxes that sleep once idle for `sleep_after` (as the
    /// config writes it, such as `"15s"`). Without per-user rate limits: a benchmark
    /// drives one user far beyond what a person sends.
    pub async fn start_sleeping_after(
        warren: &Path,
        dir: &Path,
        max_instances: usize,
        sleep_after: &str,
        settings: &str,
        tables: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("warren.toml"),
            format!(
                "max_instances = {max_instances}\n\
                 sleep_after = \"{sleep_after}\"\n\
                 rate_limit = {{ requests_per_second = 0 }}\n\
                 max_websockets = 0\n\
                 {settings}\n\
                 [auth]\nsigning_secret = \"{SIGNING_SECRET}\"\n\
                 [admission]\nqueue_timeout = \"30s\"\n\
                 [log]\nlevel = \"warn\"\n\
                 {tables}"
            ),
        )?;
        let any_port = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self::launch(warren, dir, Listen::At(any_port), "gateway.log", env).await
    }

    /// Starts `warren serve` on the config and data dir a gateway started in `dir` left
    /// there (`<dir>/warren.toml`, `<dir>/data`), logging to `<dir>/<log>`; returns once
    /// it says where it listens. A successor: by takeover while the other runs (an
    /// upgrade), or on its address once it has ended (a restart).
    pub async fn start_in(
        warren: &Path,
        dir: &Path,
        listen: Listen,
        log: &str,
    ) -> anyhow::Result<Self> {
        Self::launch(warren, dir, listen, log, &[]).await
    }

    async fn launch(
        warren: &Path,
        dir: &Path,
        listen: Listen,
        log: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let data_dir = dir.join("data");
        let mut command = Command::new(warren);
        command
            .arg("serve")
            .arg("--config")
            .arg(dir.join("warren.toml"));
        match listen {
            Listen::At(address) => command.arg("--listen").arg(address.to_string()),
            Listen::TakeOver => command.arg("--takeover"),
        };
        command
            .arg("--data-dir")
            .arg(&data_dir)
            .env_remove("WARREN_SIGNING_SECRET")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::piped());
        let spawned = Instant::now();
        let mut process = Spawned::spawn("warren serve", command, &dir.join(log))?;
        process.stop_signal = Signal::SIGINT;
        let stdout = process.child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let listening = tokio::time::timeout(READY_DEADLINE, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("warren listening on http://") {
                    return Ok(url.trim().parse::<SocketAddr>()?);
                }
            }
            anyhow::Ok(None::<SocketAddr>.context("stdout closed")?)
        })
        .await;
        let ready_after = spawned.elapsed();
        let address = match listening {
            Ok(Ok(address)) => address,
            Ok(Err(e)) => {
                process.check_alive()?;
                return Err(e.context("the gateway did not say where it listens"));
            }
            Err(_) => bail!("the gateway did not start listening within {READY_DEADLINE:?}"),
        };
        // Keep the pipe drained so a chatty stdout can never block the gateway.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            process,
            address,
            data_dir,
            ready_after,
            signer: Signer::new(SIGNING_SECRET.as_bytes()),
        })
    }

    /// Ends the gateway with `signal` (SIGTERM: it leaves its sandboxes running;
    /// SIGKILL: a crash), or, with none, waits for it to exit by itself (after a
    /// takeover); fails unless it exits within `within`, and exits 0 unless killed.
    /// Returns how long it took and its log. Its sandboxes are left as they are.
    pub async fn end(
        self,
        signal: Option<Signal>,
        within: Duration,
    ) -> anyhow::Result<(Duration, Vec<String>)> {
        let log = self.process.log.clone();
        let (took, status) = self.process.end(signal, within).await?;
        ensure!(
            signal == Some(Signal::SIGKILL) || status.success(),
            "the gateway exited with {status}"
        );
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        Ok((took, log.lines().map(str::to_owned).collect()))
    }

    /// Stops the gateway (which stops every sandbox), then looks for what it left:
    /// sandbox processes (killed here, so the benchmark leaves none either) and lines
    /// in its log (warnings and errors, at the configured level).
    pub async fn stop(self) -> anyhow::Result<GatewayStopped> {
        let log = self.process.log.clone();
        let took = self.process.stop().await?;
        let leaked = processes_under(&self.data_dir);
        for &pid in &leaked {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        Ok(GatewayStopped {
            took,
            leaked: leaked.len(),
            log_lines: log.lines().map(str::to_owned).collect(),
        })
    }

    /// `GET path` with the admin token the gateway generated (`<data_dir>/admin-token`):
    /// the admin API, `/metrics`. Fails unless it answers 200.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<bytes::Bytes> {
        let token_file = self.data_dir.join("admin-token");
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("cannot read {}", token_file.display()))?;
        let mut conn = HttpConn::connect(self.address).await?;
        let answer = conn.get_as_admin(path, token.trim()).await?;
        ensure!(
            answer.status == http::StatusCode::OK,
            "GET {path} answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
        Ok(answer.body)
    }

    /// The `Cookie` header value a browser holds after its first signed URL.
    pub fn cookie(&self, user: &str) -> anyhow::Result<String> {
        let (tenant, exp) = credential_for(user)?;
        Ok(format!(
            "warren_session={}",
            self.signer.token(&tenant, exp)
        ))
    }

    /// The query of a signed URL for `user` (`userId=..&exp=..&sig=..`), valid for an
    /// hour.
    pub fn query(&self, user: &str) -> anyhow::Result<String> {
        let (tenant, exp) = credential_for(user)?;
        Ok(self.signer.query(&tenant, exp))
    }
}

/// The tenant of `user` and an expiry an hour from now.
fn credential_for(user: &str) -> anyhow::Result<(TenantId, u64)> {
    let tenant = TenantId::parse(user).map_err(|e| anyhow::anyhow!("{user}: {e:?}"))?;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    Ok((tenant, exp))
}

/// What a stopped gateway left behind.
pub struct GatewayStopped {
    /// From SIGINT (stop every sandbox) to exit.
    pub took: Duration,
    /// Sandbox processes still running after the gateway exited.
    pub leaked: usize,
    /// Its log (level `warn`): a healthy run logs nothing.
    pub log_lines: Vec<String>,
}

/// Stops the sandboxes a crashed or SIGTERMed gateway of `dir` left running (a run that
/// failed between two gateways): a gateway on the same config and data dir takes them
/// back and stops them all (SIGINT); whatever is still there is killed. Call it once no
/// gateway of `dir` runs. Returns how many sandboxes there were.
pub async fn stop_leftovers(warren: &Path, dir: &Path) -> usize {
    let data_dir = dir.join("data");
    let left = sandboxes_under(&data_dir);
    if left > 0 {
        let any_port = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        match Gateway::start_in(warren, dir, Listen::At(any_port), "leftovers.log").await {
            Ok(gateway) => {
                let _ = gateway.stop().await;
            }
            Err(e) => eprintln!("warren-bench: cannot take back the sandboxes left: {e:#}"),
        }
        for pid in processes_under(&data_dir) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
    left
}

/// Processes of `uid` (the sandboxes' user), from `/proc`: how many run, and how many
/// are zombies (ended, not yet reaped by their parent).
pub fn processes_of_uid(uid: u32) -> (usize, usize) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return (0, 0);
    };
    let (mut running, mut zombies) = (0, 0);
    for entry in entries.filter_map(Result::ok) {
        if entry
            .file_name()
            .to_str()
            .is_none_or(|n| n.parse::<u32>().is_err())
        {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .map(str::to_owned)
        };
        // `Uid:` real, effective, saved, filesystem.
        if field("Uid:").and_then(|u| u.parse::<u32>().ok()) != Some(uid) {
            continue;
        }
        if field("State:").as_deref() == Some("Z") {
            zombies += 1;
        } else {
            running += 1;
        }
    }
    (running, zombies)
}

/// Processes whose working directory is under `dir`: the sandboxes of a gateway whose
/// data dir it is (each agent runs in its workspace).
pub fn processes_under(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect()
}

/// Sandboxes of a gateway whose data dir is `dir`: the process groups of the processes
/// under it. Each sandbox is started as a group of its own, and may be several
/// processes (isolated: bubblewrap, its init in the sandbox, and the agent).
pub fn sandboxes_under(dir: &Path) -> usize {
    let groups: std::collections::HashSet<u32> = processes_under(dir)
        .into_iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // After the command name: state, ppid, pgrp.
            stat[stat.rfind(')')? + 2..]
                .split_whitespace()
                .nth(2)?
                .parse()
                .ok()
        })
        .collect();
    groups.len()
}

/// Resident memory of a process in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Proportional set size of a process in KiB (its resident pages, each shared page
/// divided by the number of processes mapping it), from `/proc/<pid>/smaps_rollup`.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = rollup.lines().find(|l| l.starts_with("Pss:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A process's parent and start time (clock ticks after boot): with the pid, what tells
/// a process from a later one that reused its pid.
pub fn parent_and_start(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name: state, ppid, ..., starttime (the 22nd field of the line).
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

/// CPU time used, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    pub user: u64,
    pub system: u64,
}

impl CpuTicks {
    pub fn since(self, earlier: CpuTicks) -> CpuTicks {
        CpuTicks {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }

    fn add(self, other: CpuTicks) -> CpuTicks {
        CpuTicks {
            user: self.user + other.user,
            system: self.system + other.system,
        }
    }
}

/// `utime` and `stime` of one process, and its parent.
fn cpu_and_parent(pid: u32) -> Option<(CpuTicks, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: ppid is the 4th field of
    // the line, utime the 14th, stime the 15th.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks = CpuTicks {
        user: fields.get(11)?.parse().ok()?,
        system: fields.get(12)?.parse().ok()?,
    };
    Some((ticks, fields.get(1)?.parse().ok()?))
}

/// CPU time `pid` has used; with `children`, its direct children's too (nginx's
/// workers).
pub fn cpu_ticks(pid: u32, children: bool) -> CpuTicks {
    let own = cpu_and_parent(pid).map_or(CpuTicks::default(), |(t, _)| t);
    if !children {
        return own;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return own;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(cpu_and_parent)
        .filter(|&(_, ppid)| ppid == pid)
        .fold(own, |sum, (t, _)| sum.add(t))
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux seen in practice).
pub fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100)
}
