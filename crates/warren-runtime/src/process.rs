//! The process runtime: each sandbox is a process group on this machine, started
//! detached (its own process group, output to `<tenant dir>/agent.log`, stdin closed)
//! with a clean environment that holds only what the spec names.
//!
//! With `Isolation::Namespaces` (the default) the agent runs under bubblewrap, as an
//! unprivileged user (`sandbox_uid`, no capabilities), in its own user, mount, PID,
//! IPC, UTS, cgroup and network namespaces: it sees the system read-only, its own
//! workspace read-write at `/home/agent` (also its `HOME`), its own empty `/tmp`, `/root`, `/home` and
//! `/run`, none of the data dir (other tenants, the state database, the secrets), and
//! only its own loopback, where it listens on `agent_port`; the gateway connects into
//! that namespace (`netns`). With `Isolation::None` the agent is a plain process on a
//! free host port (for development on machines without user namespaces). With a warm
//! pool (`pool`), a start claims an empty namespaced sandbox made beforehand.
//!
//! ```text
//! <data_dir>/tenants/<tenant>/workspace/   the agent's working directory and HOME
//! <data_dir>/tenants/<tenant>/agent.log    the agent's stdout and stderr
//! ```

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::watch;
use warren_core::TenantId;
use warren_core::layout::Layout;

use crate::cgroup::{Cgroup, Hierarchy};
use crate::netns::Endpoint;
use crate::{Exit, Network, Runtime, RuntimeError, Sandbox, SandboxSpec, Survivor};

/// How a process sandbox is isolated.
#[derive(Debug, Clone)]
pub enum Isolation {
    /// A plain process on a free host port.
    None,
    /// bubblewrap: namespaces, an unprivileged user, a private loopback.
    Namespaces {
        bwrap: PathBuf,
        uid: u32,
        agent_port: u16,
        /// Host paths every sandbox sees read-only even where a private directory
        /// (`/tmp`, `/root`, `/home`, `/run`) hides them; the agent's program is added.
        ro_paths: Vec<PathBuf>,
    },
}

pub struct ProcessRuntime {
    layout: Layout,
    /// The data dir, absolute, hidden from every sandbox.
    data_dir: PathBuf,
    isolation: Isolation,
    connector: crate::netns::Connector,
    /// Where limits go; `None` when the host has no usable cgroups.
    cgroups: Option<Hierarchy>,
    /// Empty sandboxes kept ready to be claimed, if configured.
    pool: Option<pool::Pool>,
}

impl ProcessRuntime {
    /// A runtime without isolation (plain processes).
    pub fn new(data_dir: &Path) -> Self {
        Self::with_isolation(data_dir, Isolation::None)
    }

    pub fn with_isolation(data_dir: &Path, isolation: Isolation) -> Self {
        let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
        Self {
            layout: Layout::new(&data_dir),
            data_dir,
            isolation,
            connector: crate::netns::Connector::new(),
            cgroups: Hierarchy::detect(),
            pool: None,
        }
    }

    /// Keeps `config.size` empty sandboxes ready (see `pool`). Only namespaced
    /// sandboxes with cgroup limits can be pooled; elsewhere the pool stays empty.
    pub fn with_pool(mut self, config: pool::PoolConfig) -> Self {
        let usable =
            matches!(self.isolation, Isolation::Namespaces { .. }) && self.cgroups.is_some();
        if config.size > 0 && !usable {
            tracing::warn!("runtime.pool needs namespaced sandboxes and cgroups; no pool");
        }
        if config.size > 0 && usable {
            self.pool = pool::Pool::new(&self.data_dir.clone(), config, &self);
        }
        self
    }
}

pub mod pool;

/// Joins the cgroups named by its arguments (a count, then `cgroup.procs` files), then
/// becomes the rest of its arguments.
const JOIN_CGROUP: &str = r#"n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 126; shift; n=$((n-1)); done; exec "$@""#;

/// A port on 127.0.0.1 that was free a moment ago. The agent binds it itself; a
/// collision shows up as a start that fails its probe, and the next start picks again.
fn free_loopback_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Where a namespaced sandbox sees its workspace: its `HOME` and working directory,
/// the same path whichever sandbox (fresh or pooled) runs the agent.
pub const SANDBOX_HOME: &str = "/home/agent";

/// bubblewrap's arguments for a sandbox whose workspace is `workspace` on the host
/// (seen at `SANDBOX_HOME` inside); without one (a pooled sandbox), `SANDBOX_HOME` is
/// an empty directory until a claim attaches the tenant's workspace there.
fn bwrap_args(
    data_dir: &Path,
    workspace: Option<&Path>,
    uid: u32,
    ro_paths: &[PathBuf],
) -> Vec<String> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let mut args: Vec<String> = [
        "--unshare-all",
        "--cap-drop",
        "ALL",
        "--uid",
        &uid.to_string(),
        "--gid",
        &uid.to_string(),
    ]
    .map(String::from)
    .to_vec();
    args.extend(["--ro-bind", "/", "/"].map(String::from));
    for private in ["/tmp", "/root", "/home", "/run"] {
        args.extend(["--tmpfs".into(), private.into()]);
    }
    args.extend(["--tmpfs".into(), path(data_dir)]);
    for p in ro_paths.iter().filter(|p| p.exists()) {
        args.extend(["--ro-bind".into(), path(p), path(p)]);
    }
    match workspace {
        Some(workspace) => args.extend(["--bind".into(), path(workspace), SANDBOX_HOME.into()]),
        None => args.extend(["--dir".into(), SANDBOX_HOME.into()]),
    }
    args.extend(["--proc", "/proc", "--dev", "/dev", "--chdir", SANDBOX_HOME].map(String::from));
    args.push("--".into());
    args
}

/// Hands the workspace to the sandbox's user, off the async workers: a large
/// workspace is a long walk.
pub(crate) async fn hand_over_workspace(workspace: &Path, uid: u32) -> std::io::Result<()> {
    let workspace = workspace.to_owned();
    tokio::task::spawn_blocking(move || chown_tree(&workspace, uid))
        .await
        .map_err(std::io::Error::other)?
}

/// Hands the workspace to the sandbox's user (files a restore wrote are root's).
fn chown_tree(root: &Path, uid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(root)?;
    if meta.uid() != uid || meta.gid() != uid {
        std::os::unix::fs::lchown(root, Some(uid), Some(uid))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(root)? {
            chown_tree(&entry?.path(), uid)?;
        }
    }
    Ok(())
}

/// Ends a sandbox whose start failed half way: its processes, then its cgroup.
async fn abandon(pid: u32, cgroup: Option<&Cgroup>) {
    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    if let Some(cgroup) = cgroup {
        if let Some(procs) = cgroup.procs_files().into_iter().next() {
            Members::Cgroup(procs).signal(Signal::SIGKILL);
        }
        cgroup.remove_when_empty().await;
    }
}

/// Where slirp4netns answers DNS queries, inside the sandbox.
const SLIRP_DNS: &str = "10.0.2.3";
/// How long slirp4netns may take to set up the sandbox's interface.
const SLIRP_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts slirp4netns on the network namespace of `inner` (never the host's loopback)
/// and waits until the interface is up. It joins `cgroup` first, if there is one.
async fn start_slirp(
    inner: u32,
    cgroup: Option<&Cgroup>,
    log: &Path,
) -> Result<tokio::process::Child, RuntimeError> {
    let procs = cgroup.map(Cgroup::procs_files).unwrap_or_default();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", JOIN_CGROUP, "warren-join", &procs.len().to_string()])
        .args(&procs)
        .args([
            "slirp4netns",
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
        ])
        .args(["--ready-fd=1", "--netns-type=path"])
        // It parses the sandbox's packets as root: in a sandbox of its own, under seccomp.
        .args(["--enable-sandbox", "--enable-seccomp"])
        .arg(format!("/proc/{inner}/ns/net"))
        .arg("tap0")
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(RuntimeError::Spawn)?,
        )
        // It lives as long as the sandbox, which may outlive the gateway.
        .kill_on_drop(false);
    let mut slirp = cmd.spawn().map_err(|e| {
        RuntimeError::Spawn(std::io::Error::new(
            e.kind(),
            format!(
                "cannot run slirp4netns for outbound network (apt-get install slirp4netns): {e}"
            ),
        ))
    })?;
    let mut ready = [0u8; 1];
    let mut stdout = slirp.stdout.take().expect("piped");
    use tokio::io::AsyncReadExt as _;
    match tokio::time::timeout(SLIRP_TIMEOUT, stdout.read(&mut ready)).await {
        Ok(Ok(1)) => Ok(slirp),
        _ => {
            let _ = slirp.start_kill();
            Err(RuntimeError::Spawn(std::io::Error::other(
                "slirp4netns did not set up the sandbox's network (see the tenant's agent.log)",
            )))
        }
    }
}

/// The first child of process `pid`.
fn first_child(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Starts its arguments in a new session (util-linux).
const SETSID: &str = "/usr/bin/setsid";

/// How often an adopted sandbox (whose exit goes to its first parent, not to this
/// gateway) is looked at.
const ADOPTED_POLL: Duration = Duration::from_millis(250);

/// The process that bubblewrap started inside the new namespaces: its child.
async fn namespaced_child(
    pid: u32,
    child: &mut tokio::process::Child,
) -> Result<u32, RuntimeError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut tries = 0u32;
    loop {
        if let Some(inner) = first_child(pid) {
            return Ok(inner);
        }
        let gone = !matches!(child.try_wait(), Ok(None));
        if gone || tokio::time::Instant::now() > deadline {
            return Err(RuntimeError::Spawn(std::io::Error::other(
                "bubblewrap did not start the sandbox (see the tenant's agent.log)",
            )));
        }
        // It is there within a few hundred microseconds as a rule: look again at once
        // for a while, then less eagerly, not to spin a core while the machine is busy.
        tries = tries.saturating_add(1);
        if tries < 200 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The start time of a process in clock ticks since boot: field 22 of
/// `/proc/<pid>/stat`, read after the last `)` since the command name may hold spaces.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process `pid` that started at `ticks` still runs: not gone, not another
/// process that reused its pid, not a zombie its new parent has yet to reap.
pub fn still_running(pid: u32, ticks: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((_, after_name)) = stat.rsplit_once(") ") else {
        return false;
    };
    let mut fields = after_name.split_whitespace();
    let state = fields.next().unwrap_or("X");
    !matches!(state, "Z" | "X") && fields.nth(18).and_then(|t| t.parse().ok()) == Some(ticks)
}

fn exit_of(status: std::process::ExitStatus) -> Exit {
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(sig)) => Exit::Signal(sig),
        (None, None) => Exit::Code(-1),
    }
}

/// A sandbox's process, started and (with namespaces) inside its namespaces.
struct Launched {
    child: tokio::process::Child,
    pid: u32,
    pid_start_ticks: u64,
    inner_pid: Option<u32>,
    netns: Option<Arc<File>>,
    cgroup: Option<Cgroup>,
}

/// How a launch is set up: its command line (before the cgroup and session
/// wrappers), environment, working directory and standard streams.
struct LaunchSpec {
    argv: Vec<String>,
    uid: Option<u32>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    stdin: Stdio,
    stdout: File,
    stderr: File,
}

impl ProcessRuntime {
    /// The workspace as the agent sees it: `/home/agent` in a namespaced sandbox
    /// (whichever sandbox, fresh or pooled, runs it), else where it is on the host.
    fn workspace_inside(&self, workspace: &Path) -> PathBuf {
        match self.isolation {
            Isolation::None => workspace.to_owned(),
            Isolation::Namespaces { .. } => PathBuf::from(SANDBOX_HOME),
        }
    }

    /// The only environment an agent gets: the spec's and the runtime's own.
    fn agent_env(
        &self,
        spec: &SandboxSpec,
        workspace: &Path,
        address: SocketAddr,
    ) -> Vec<(String, String)> {
        let inside = self
            .workspace_inside(workspace)
            .to_string_lossy()
            .into_owned();
        let mut env = spec.env.clone();
        env.extend([
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("HOME".into(), inside.clone()),
            ("TMPDIR".into(), "/tmp".into()),
            ("WARREN_TENANT_ID".into(), spec.tenant.as_str().into()),
            ("WARREN_WORKSPACE".into(), inside),
            ("WARREN_AGENT_ADDR".into(), address.to_string()),
        ]);
        env
    }

    /// Starts `launch` in a session of its own, in `cgroup` (joined before its first
    /// instruction) and, with namespaces, waits until it is inside them. On failure
    /// nothing of it is left.
    async fn launch(
        isolation: &Isolation,
        launch: LaunchSpec,
        cgroup: Option<Cgroup>,
    ) -> Result<Launched, RuntimeError> {
        let LaunchSpec {
            mut argv,
            uid,
            env,
            cwd,
            stdin,
            stdout,
            stderr,
        } = launch;
        // The sandbox joins its cgroup before anything else runs, so every process it
        // ever forks is counted: a shell writes its own pid, then becomes the sandbox.
        if let Some(cgroup) = &cgroup {
            let procs = cgroup.procs_files();
            if let Some(uid) = uid {
                for file in &procs {
                    if let Err(e) = std::os::unix::fs::lchown(file, Some(uid), Some(uid)) {
                        // Nothing runs in it yet.
                        cgroup.remove_when_empty().await;
                        return Err(RuntimeError::Cgroup(e));
                    }
                }
            }
            let mut wrapped: Vec<String> = vec![
                "/bin/sh".into(),
                "-c".into(),
                JOIN_CGROUP.into(),
                "warren-join".into(),
                procs.len().to_string(),
            ];
            wrapped.extend(procs.iter().map(|p| p.to_string_lossy().into_owned()));
            wrapped.append(&mut argv);
            argv = wrapped;
        }
        // A session of its own (and so a process group of its own, whose id is its
        // pid): were it in the gateway's session, the gateway's death while it is
        // frozen (stopped) for a sync would orphan its group, and the kernel would
        // send it SIGHUP. `setsid` becomes the rest of the command, keeping the pid.
        let mut cmd = Command::new(SETSID);
        cmd.args(&argv);
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        cmd.env_clear()
            .envs(env)
            .current_dir(&cwd)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(false);
        let spawned = cmd.spawn().map_err(RuntimeError::Spawn).and_then(|child| {
            let pid = child.id().ok_or_else(|| {
                RuntimeError::Spawn(std::io::Error::other("the agent exited at once"))
            })?;
            Ok((child, pid))
        });
        let (mut child, pid) = match spawned {
            Ok(spawned) => spawned,
            Err(e) => {
                if let Some(cgroup) = &cgroup {
                    cgroup.remove_when_empty().await;
                }
                return Err(e);
            }
        };
        let pid_start_ticks = process_start_ticks(pid).unwrap_or(0);
        let (netns, inner_pid) = match isolation {
            Isolation::None => (None, None),
            Isolation::Namespaces { .. } => {
                let opened = match namespaced_child(pid, &mut child).await {
                    Ok(inner) => File::open(format!("/proc/{inner}/ns/net"))
                        .map(|ns| (ns, inner))
                        .map_err(RuntimeError::Spawn),
                    Err(e) => Err(e),
                };
                match opened {
                    Ok((ns, inner)) => (Some(Arc::new(ns)), Some(inner)),
                    Err(e) => {
                        abandon(pid, cgroup.as_ref()).await;
                        return Err(e);
                    }
                }
            }
        };
        Ok(Launched {
            child,
            pid,
            pid_start_ticks,
            inner_pid,
            netns,
            cgroup,
        })
    }

    /// Makes a launched process the tenant's sandbox: a task waits for its end and
    /// then ends the rest of it (its other processes, slirp4netns, its cgroup).
    fn supervise(
        &self,
        spec: &SandboxSpec,
        launched: Launched,
        slirp: Option<tokio::process::Child>,
        address: SocketAddr,
    ) -> Sandbox {
        let Launched {
            mut child,
            pid,
            pid_start_ticks,
            inner_pid,
            netns,
            cgroup,
        } = launched;
        // Known now, while the namespace's first process surely lives.
        let cgroup_procs = cgroup
            .as_ref()
            .and_then(|c| c.procs_files().into_iter().next());
        let members = Members::from_parts(cgroup_procs.as_ref(), inner_pid, pid);
        // Held open until the sandbox is gone, so its PID namespace's number cannot be
        // given to another sandbox while this one's end may still signal it.
        let pinned_pid_namespace =
            inner_pid.and_then(|p| File::open(format!("/proc/{p}/ns/pid")).ok());

        let (tx, exited) = watch::channel(None);
        let tenant = spec.tenant.clone();
        let watcher = tokio::spawn(async move {
            let mut exit = match child.wait().await {
                Ok(status) => exit_of(status),
                Err(e) => {
                    tracing::warn!(%tenant, pid, error = %e, "cannot wait for the agent");
                    Exit::Code(-1)
                }
            };
            // bubblewrap is the sandbox's supervisor: whatever ended it ends the rest.
            // (Not --die-with-parent, which would tie the sandbox to the gateway's
            // thread that started it, and sandboxes must outlive the gateway.)
            members.signal(Signal::SIGKILL);
            if let Some(mut slirp) = slirp {
                let _ = slirp.start_kill();
                let _ = slirp.wait().await;
            }
            drop(pinned_pid_namespace);
            if let Some(cgroup) = cgroup {
                if cgroup.oom_killed() {
                    exit = Exit::OutOfMemory;
                }
                if !cgroup.remove_when_empty().await {
                    tracing::warn!(%tenant, "cannot remove the sandbox's cgroup");
                }
            }
            tx.send_replace(Some(exit));
        });
        Sandbox {
            tenant: spec.tenant.clone(),
            generation: spec.generation,
            address,
            endpoint: Endpoint {
                addr: address,
                netns,
            },
            pid,
            pid_start_ticks,
            inner_pid,
            cgroup_procs,
            container: None,
            workspace: self.layout.workspace(&spec.tenant),
            exited,
            watcher: Some(watcher.abort_handle()),
        }
    }

    /// The tenant's workspace, made and (with namespaces) handed to the sandbox's user,
    /// and its agent log opened for appending (twice: stdout and stderr).
    async fn prepare_workspace(
        &self,
        spec: &SandboxSpec,
    ) -> Result<(PathBuf, File, File), RuntimeError> {
        let workspace = self.layout.workspace(&spec.tenant);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| RuntimeError::Workspace { path, source }
        };
        std::fs::create_dir_all(&workspace).map_err(io(&workspace))?;
        let log_path = self.layout.agent_log(&spec.tenant);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(&log_path))?;
        let log_err = log.try_clone().map_err(io(&log_path))?;
        if let Isolation::Namespaces { uid, .. } = &self.isolation {
            hand_over_workspace(&workspace, *uid)
                .await
                .map_err(io(&workspace))?;
        }
        Ok((workspace, log, log_err))
    }

    /// A new sandbox, made from nothing (no pooled one was there to claim).
    async fn start_new(&self, spec: &SandboxSpec) -> Result<Sandbox, RuntimeError> {
        let program = spec.command.first().ok_or(RuntimeError::EmptyCommand)?;
        let (workspace, log, log_err) = self.prepare_workspace(spec).await?;
        let log_path = self.layout.agent_log(&spec.tenant);
        let (argv, address, uid): (Vec<String>, SocketAddr, Option<u32>) = match &self.isolation {
            Isolation::None => {
                let port = free_loopback_port().map_err(RuntimeError::Spawn)?;
                (
                    spec.command.clone(),
                    SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                    None,
                )
            }
            Isolation::Namespaces {
                bwrap,
                uid,
                agent_port,
                ro_paths,
            } => {
                let mut visible = ro_paths.clone();
                visible.extend(Some(PathBuf::from(program)).filter(|p| p.is_absolute()));
                let mut argv = vec![bwrap.to_string_lossy().into_owned()];
                argv.extend(bwrap_args(&self.data_dir, Some(&workspace), *uid, &visible));
                if spec.network == Network::Outbound {
                    // slirp4netns answers DNS at its own address; the host's resolver
                    // may be on the host's loopback, which the sandbox cannot reach.
                    let resolv = self.data_dir.join("sandbox-resolv.conf");
                    std::fs::write(&resolv, format!("nameserver {SLIRP_DNS}\n")).map_err(
                        |source| RuntimeError::Workspace {
                            path: resolv.clone(),
                            source,
                        },
                    )?;
                    let at = argv.len() - 1;
                    argv.splice(
                        at..at,
                        [
                            "--ro-bind".into(),
                            resolv.to_string_lossy().into_owned(),
                            "/etc/resolv.conf".into(),
                        ],
                    );
                }
                argv.extend(spec.command.iter().cloned());
                (
                    argv,
                    SocketAddr::from((Ipv4Addr::LOCALHOST, *agent_port)),
                    Some(*uid),
                )
            }
        };
        let cgroup = match (&self.cgroups, &spec.limits) {
            // Unique on the host: two gateways (an upgrade, tests) may both start the
            // same tenant's generation number.
            (Some(hierarchy), Some(limits)) => {
                let name = format!("{}-{}-{}", spec.tenant, spec.generation, std::process::id());
                Some(Cgroup::create(hierarchy, &name, limits).map_err(RuntimeError::Cgroup)?)
            }
            _ => None,
        };
        let launch = LaunchSpec {
            argv,
            uid,
            env: self.agent_env(spec, &workspace, address),
            cwd: workspace.clone(),
            stdin: Stdio::null(),
            stdout: log,
            stderr: log_err,
        };
        let mut launched = Self::launch(&self.isolation, launch, cgroup).await?;
        // Outbound network: a user-mode NAT attached to the sandbox's namespace, in the
        // sandbox's cgroup (its memory counts, and it ends with the sandbox).
        let slirp = match (spec.network, launched.inner_pid) {
            (Network::Outbound, Some(inner)) => {
                // bubblewrap sets up the loopback before it starts the agent, as the
                // namespace's second process; the two setups must not meet.
                let attached = match namespaced_child(inner, &mut launched.child).await {
                    Ok(_) => start_slirp(inner, launched.cgroup.as_ref(), &log_path).await,
                    Err(e) => Err(e),
                };
                match attached {
                    Ok(slirp) => Some(slirp),
                    Err(e) => {
                        abandon(launched.pid, launched.cgroup.as_ref()).await;
                        return Err(e);
                    }
                }
            }
            _ => None,
        };
        Ok(self.supervise(spec, launched, slirp, address))
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    async fn start(&self, spec: &SandboxSpec) -> Result<Sandbox, RuntimeError> {
        if let Some(pool) = &self.pool {
            match pool.claim(self, spec).await {
                Ok(Some(sandbox)) => return Ok(sandbox),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(tenant = %spec.tenant, error = %e, "cannot claim a pooled sandbox; starting a new one");
                }
            }
        }
        self.start_new(spec).await
    }

    async fn fill_pool(&self) {
        // Whatever an earlier gateway's pool on this data dir left, also when this one
        // has none.
        if let Some(hierarchy) = &self.cgroups {
            hierarchy.remove_ended(&pool::cgroup_prefix(&self.data_dir));
        }
        if let Some(pool) = &self.pool {
            pool.fill().await;
        }
    }

    async fn drain_pool(&self) {
        if let Some(pool) = &self.pool {
            pool.drain().await;
        }
    }

    fn pool_ready(&self) -> usize {
        self.pool.as_ref().map_or(0, pool::Pool::ready)
    }

    async fn adopt(&self, survivor: &Survivor) -> Result<Option<Sandbox>, RuntimeError> {
        let (pid, ticks) = (survivor.pid, survivor.pid_start_ticks);
        if !still_running(pid, ticks) {
            // What it left: its cgroup (`<tenant>-<generation>-<gateway pid>`).
            if let Some(h) = &self.cgroups {
                h.remove_ended(&format!("{}-{}-", survivor.tenant, survivor.generation));
            }
            return Ok(None);
        }
        let gone = |what: &str| {
            RuntimeError::Spawn(std::io::Error::other(format!(
                "the surviving sandbox (pid {pid}) has no {what}"
            )))
        };
        let (address, netns, inner_pid) = match &self.isolation {
            Isolation::None => (
                survivor.address.ok_or_else(|| gone("recorded address"))?,
                None,
                None,
            ),
            Isolation::Namespaces { agent_port, .. } => {
                let inner = first_child(pid).ok_or_else(|| gone("namespace"))?;
                let netns =
                    File::open(format!("/proc/{inner}/ns/net")).map_err(RuntimeError::Spawn)?;
                (
                    SocketAddr::from((Ipv4Addr::LOCALHOST, *agent_port)),
                    Some(Arc::new(netns)),
                    Some(inner),
                )
            }
        };
        let cgroup = self
            .cgroups
            .as_ref()
            .and_then(|h| h.warren_cgroup_of(inner_pid.unwrap_or(pid)));
        let cgroup_procs = cgroup
            .as_ref()
            .and_then(|c| c.procs_files().into_iter().next());
        let members = Members::from_parts(cgroup_procs.as_ref(), inner_pid, pid);
        let (tx, exited) = watch::channel(None);
        let watcher = tokio::spawn(async move {
            // Not its parent: this gateway cannot wait for it, only see it gone.
            while still_running(pid, ticks) {
                tokio::time::sleep(ADOPTED_POLL).await;
            }
            members.signal(Signal::SIGKILL);
            let mut exit = Exit::Unknown;
            if let Some(cgroup) = cgroup {
                if cgroup.oom_killed() {
                    exit = Exit::OutOfMemory;
                }
                cgroup.remove_when_empty().await;
            }
            tx.send_replace(Some(exit));
        });
        Ok(Some(Sandbox {
            tenant: survivor.tenant.clone(),
            generation: survivor.generation,
            address,
            endpoint: Endpoint {
                addr: address,
                netns,
            },
            pid,
            pid_start_ticks: ticks,
            inner_pid,
            cgroup_procs,
            container: None,
            workspace: self.layout.workspace(&survivor.tenant),
            exited,
            watcher: Some(watcher.abort_handle()),
        }))
    }

    async fn stop(&self, sandbox: &Sandbox, grace: Duration) -> Result<Exit, RuntimeError> {
        if let Some(exit) = sandbox.has_exited() {
            return Ok(exit);
        }
        let group = Pid::from_raw(sandbox.pid as i32);
        // ESRCH: the group is already gone; the waiter reports the exit.
        match killpg(group, Signal::SIGTERM) {
            Ok(()) | Err(nix::Error::ESRCH) => {}
            Err(e) => return Err(RuntimeError::Signal(e)),
        }
        if let Ok(exit) = tokio::time::timeout(grace, sandbox.wait()).await {
            return Ok(exit);
        }
        tracing::info!(tenant = %sandbox.tenant, pid = sandbox.pid, "agent ignored SIGTERM; killing it");
        match killpg(group, Signal::SIGKILL) {
            Ok(()) | Err(nix::Error::ESRCH) => {}
            Err(e) => return Err(RuntimeError::Signal(e)),
        }
        Ok(sandbox.wait().await)
    }

    fn workspace(&self, tenant: &TenantId) -> PathBuf {
        self.layout.workspace(tenant)
    }

    fn connector(&self) -> &crate::netns::Connector {
        &self.connector
    }

    fn freeze(&self, sandbox: &Sandbox) -> Result<(), RuntimeError> {
        freeze(sandbox)
    }

    fn thaw(&self, sandbox: &Sandbox) {
        thaw(sandbox)
    }
}

/// Stops every process of `sandbox` (see `freeze_members`).
pub(crate) fn freeze(sandbox: &Sandbox) -> Result<(), RuntimeError> {
    freeze_members(&Members::of(sandbox), FREEZE_TIMEOUT)
}

/// Lets every process of a frozen `sandbox` run again.
pub(crate) fn thaw(sandbox: &Sandbox) {
    Members::of(sandbox).signal(Signal::SIGCONT);
}

/// How long a freeze may take before it is given up.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which processes make up a sandbox.
#[derive(Debug, Clone)]
enum Members {
    /// A process group (plain processes: a member that calls `setsid` escapes).
    Group(u32),
    /// Everything in a PID namespace, whatever its session or group.
    Namespace(u64),
    /// Everything in a cgroup (its `cgroup.procs`): no walk of all of `/proc`.
    Cgroup(PathBuf),
}

fn pid_namespace(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|m| m.ino())
}

impl Members {
    fn of(sandbox: &Sandbox) -> Self {
        Self::from_parts(
            sandbox.cgroup_procs.as_ref(),
            sandbox.inner_pid,
            sandbox.pid,
        )
    }

    /// Its cgroup if it has one, else its PID namespace, else its process group.
    fn from_parts(cgroup_procs: Option<&PathBuf>, inner_pid: Option<u32>, pid: u32) -> Self {
        if let Some(procs) = cgroup_procs {
            return Members::Cgroup(procs.clone());
        }
        match inner_pid.and_then(pid_namespace) {
            Some(ns) => Members::Namespace(ns),
            None => Members::Group(pid),
        }
    }

    /// Every member's pid and state letter, from `/proc`.
    fn list(&self) -> Vec<(u32, char)> {
        if let Members::Cgroup(procs) = self {
            let state = |pid: u32| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                stat[stat.rfind(')')? + 2..].chars().next()
            };
            return std::fs::read_to_string(procs)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .filter_map(|pid| Some((pid, state(pid)?)))
                .collect();
        }
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let mut fields = stat[stat.rfind(')')? + 2..].split_whitespace();
                let state = fields.next()?.chars().next()?;
                let member = match self {
                    Members::Group(pgid) => fields.nth(1)?.parse::<u32>().ok()? == *pgid,
                    Members::Namespace(ns) => pid_namespace(pid) == Some(*ns),
                    Members::Cgroup(_) => false,
                };
                member.then_some((pid, state))
            })
            .collect()
    }

    fn signal(&self, signal: Signal) {
        for (pid, _) in self.list() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), signal);
        }
    }
}

/// Stops every member and waits until each is stopped (`T`) or gone, sending SIGSTOP
/// again to any that appeared meanwhile (a stopped process cannot fork, so this ends).
/// Without the cgroup freezer this is the freezer: a stopped process is paused between
/// system calls, so files are seen as they are between two writes.
fn freeze_members(members: &Members, timeout: Duration) -> Result<(), RuntimeError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let running: Vec<u32> = members
            .list()
            .into_iter()
            .filter(|(_, s)| !matches!(s, 'T' | 't' | 'Z' | 'X'))
            .map(|(p, _)| p)
            .collect();
        if running.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            members.signal(Signal::SIGCONT);
            return Err(RuntimeError::FreezeTimeout(timeout));
        }
        for pid in running {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGSTOP);
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Kills a test sandbox's group however the test ends.
    pub(crate) struct KillOnDrop(pub(crate) u32);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = killpg(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
        }
    }

    pub(crate) fn spec(tenant: &str, script: &str) -> SandboxSpec {
        SandboxSpec {
            tenant: TenantId::parse(tenant).unwrap(),
            generation: 1,
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            image: None,
            limits: None,
            env: vec![("AGENT_TOKEN".into(), "t".into())],
            network: Default::default(),
        }
    }

    #[tokio::test]
    async fn reports_an_exit_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path());
        let sandbox = rt.start(&spec("user_a", "exit 3")).await.unwrap();
        assert_eq!(sandbox.wait().await, Exit::Code(3));
    }

    #[tokio::test]
    async fn stop_kills_an_agent_that_ignores_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path());
        assert_a_trapped_sigterm_ends_in_sigkill(&rt, "user_a", Duration::from_millis(200)).await;
    }

    /// Starts an agent that ignores SIGTERM and checks that a stop with `grace` ends it
    /// with SIGKILL. Shell builtins only: a container image may have nothing else.
    pub(crate) async fn assert_a_trapped_sigterm_ends_in_sigkill(
        rt: &dyn Runtime,
        tenant: &str,
        grace: Duration,
    ) {
        let script = "trap '' TERM; : > trapped; while :; do :; done";
        let sandbox = rt.start(&spec(tenant, script)).await.unwrap();
        let _guard = KillOnDrop(sandbox.pid);
        assert!(
            sandbox.pid_start_ticks > 0,
            "the start time identifies the process"
        );
        // SIGTERM must arrive after the trap is set, or the shell dies of it.
        let trapped = sandbox.workspace.join("trapped");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !trapped.exists() {
            assert!(sandbox.has_exited().is_none(), "the agent ended early");
            assert!(
                std::time::Instant::now() < deadline,
                "the agent never set its trap"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let exit = rt.stop(&sandbox, grace).await.unwrap();
        assert_eq!(exit, Exit::Signal(Signal::SIGKILL as i32));
    }

    #[tokio::test]
    async fn the_agent_sees_only_the_environment_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path());
        // A variable of the test process must not leak into the agent.
        let sandbox = rt.start(&spec("user_a", "env > env.txt")).await.unwrap();
        assert_eq!(sandbox.wait().await, Exit::Code(0));
        let env = std::fs::read_to_string(sandbox.workspace.join("env.txt")).unwrap();
        let mut names: Vec<_> = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, _)| k)
            .collect();
        names.sort();
        names.retain(|n| *n != "PWD" && *n != "SHLVL" && *n != "_");
        assert_eq!(
            names,
            [
                "AGENT_TOKEN",
                "HOME",
                "PATH",
                "TMPDIR",
                "WARREN_AGENT_ADDR",
                "WARREN_TENANT_ID",
                "WARREN_WORKSPACE"
            ]
        );
    }

    /// Runs `script` (which keeps appending to the files `writers`) as a sandbox of
    /// `rt`, and checks that a freeze stops every writer until the thaw.
    pub(crate) async fn assert_freeze_is_whole(rt: &dyn Runtime, script: &str, writers: [&str; 2]) {
        let sandbox = rt.start(&spec("user_a", script)).await.unwrap();
        let _guard = KillOnDrop(sandbox.pid);
        let size = |name: &str| {
            std::fs::metadata(sandbox.workspace.join(name))
                .map(|m| m.len())
                .unwrap_or(0)
        };
        let sizes = || writers.map(size);
        let wait_until = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !done() {
                assert!(std::time::Instant::now() < deadline, "{what}");
                std::thread::yield_now();
            }
        };
        wait_until("the writers never started", &|| {
            sizes().iter().all(|s| *s > 0)
        });
        rt.freeze(&sandbox).unwrap();
        let frozen = sizes();
        // Frozen, no writer makes progress, however long we look.
        for _ in 0..200 {
            tokio::task::yield_now().await;
            assert_eq!(sizes(), frozen);
        }
        assert!(
            Members::of(&sandbox).list().iter().all(|(_, s)| *s == 'T'),
            "every member is stopped"
        );
        rt.thaw(&sandbox);
        wait_until("a writer never resumed", &|| {
            sizes().iter().zip(frozen).all(|(now, then)| *now > then)
        });
        rt.stop(&sandbox, Duration::from_millis(100)).await.unwrap();
    }

    #[tokio::test]
    async fn freeze_stops_every_process_of_the_group_until_thaw() {
        let dir = tempfile::tempdir().unwrap();
        let script = "(while :; do echo x >> child; done) & while :; do echo x >> parent; done";
        assert_freeze_is_whole(
            &ProcessRuntime::new(dir.path()),
            script,
            ["child", "parent"],
        )
        .await;
    }

    fn namespaced(dir: &Path) -> ProcessRuntime {
        let bwrap = PathBuf::from("/usr/bin/bwrap");
        assert!(
            bwrap.exists(),
            "this test needs bubblewrap: apt-get install bubblewrap"
        );
        ProcessRuntime::with_isolation(
            dir,
            Isolation::Namespaces {
                bwrap,
                uid: 65534,
                agent_port: 8787,
                ro_paths: vec![],
            },
        )
    }

    #[tokio::test]
    async fn a_namespaced_sandbox_freezes_whole_even_past_setsid() {
        let dir = tempfile::tempdir().unwrap();
        // One writer leaves the process group with setsid; the freeze must still catch it.
        let script = "setsid sh -c 'while :; do echo x >> escaped; done' & while :; do echo x >> parent; done";
        assert_freeze_is_whole(&namespaced(dir.path()), script, ["escaped", "parent"]).await;
    }

    #[test]
    fn a_namespaced_sandbox_outlives_the_thread_that_started_it() {
        // The gateway starts sandboxes from whatever worker thread it is on, and those
        // threads come and go; a sandbox must not go with them.
        let dir = tempfile::tempdir().unwrap();
        let rt = Arc::new(namespaced(dir.path()));
        let rt2 = rt.clone();
        let sandbox = std::thread::spawn(move || {
            let local = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            local.block_on(rt2.start(&spec("user_a", "while :; do echo x >> beat; done")))
        })
        .join()
        .unwrap()
        .unwrap();
        let _guard = KillOnDrop(sandbox.pid);
        let size = || {
            std::fs::metadata(sandbox.workspace.join("beat"))
                .map(|m| m.len())
                .unwrap_or(0)
        };
        let before = size();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while size() <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "the sandbox died with the thread that started it"
            );
            std::thread::yield_now();
        }
    }

    #[tokio::test]
    async fn a_sandbox_has_a_session_and_group_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path());
        let sandbox = rt
            .start(&spec("user_a", "while :; do sleep 1; done"))
            .await
            .unwrap();
        let _guard = KillOnDrop(sandbox.pid);
        // Fields 5 and 6 of /proc/<pid>/stat: process group and session.
        let ids = |pid: u32| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let fields: Vec<String> = stat
                .rsplit_once(") ")
                .unwrap()
                .1
                .split_whitespace()
                .map(String::from)
                .collect();
            (
                fields[2].parse::<u32>().unwrap(),
                fields[3].parse::<u32>().unwrap(),
            )
        };
        // `setsid` runs a moment after the spawn returns.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while ids(sandbox.pid).1 != sandbox.pid && std::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        let (group, session) = ids(sandbox.pid);
        assert_eq!((group, session), (sandbox.pid, sandbox.pid));
        assert_ne!(
            session,
            ids(std::process::id()).1,
            "in the gateway's session"
        );
        rt.stop(&sandbox, Duration::from_millis(100)).await.unwrap();
    }

    #[test]
    fn reads_its_own_start_time() {
        let me = std::process::id();
        assert!(process_start_ticks(me).unwrap() > 0);
        assert_eq!(process_start_ticks(u32::MAX), None);
        let ticks = process_start_ticks(me).unwrap();
        assert!(still_running(me, ticks));
        assert!(
            !still_running(me, ticks + 1),
            "another process with this pid"
        );
        // A child that exited and is not yet reaped is a zombie: not running.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let zombie = child.id();
        let zombie_ticks = process_start_ticks(zombie).unwrap();
        while std::fs::read_to_string(format!("/proc/{zombie}/stat"))
            .is_ok_and(|s| !s.rsplit_once(") ").unwrap().1.starts_with('Z'))
        {
            std::thread::yield_now();
        }
        assert!(!still_running(zombie, zombie_ticks));
        child.wait().unwrap();
    }
}
