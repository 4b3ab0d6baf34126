//! Runtimes start and stop sandboxes. The gateway's tenant actor is their only caller,
//! and it guarantees at most one live sandbox per tenant; a runtime only has to do what
//! it is told and report, truthfully, when a sandbox ends.
//!
//! A sandbox is started detached from the gateway (its own process group, output to a
//! file, no pipes), so that it need not die with the gateway: the identity a runtime
//! returns is enough to find the same sandbox again later.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use warren_core::TenantId;

pub mod cgroup;
pub mod docker;
pub mod netns;
pub mod process;

pub use docker::{DockerOptions, DockerRuntime};
pub use netns::{Connector, Endpoint};
pub use process::{Isolation, ProcessRuntime};

/// What to run for one tenant.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub tenant: TenantId,
    /// Counts the tenant's starts, so a late exit of an older sandbox is told apart.
    pub generation: u64,
    /// The agent's program and arguments.
    pub command: Vec<String>,
    /// For a container runtime: the image, if not the runtime's own.
    pub image: Option<String>,
    /// What it may use; `None`: no limits (or none this host can enforce).
    pub limits: Option<cgroup::Limits>,
    /// The only environment the agent sees, besides what the runtime adds
    /// (`WARREN_TENANT_ID`, `WARREN_WORKSPACE`, `WARREN_AGENT_ADDR`, `HOME`, `PATH`).
    pub env: Vec<(String, String)>,
    /// Whether the agent may open connections beyond its own loopback.
    pub network: Network,
}

/// What a sandbox's network reaches. The gateway reaches the agent either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Network {
    /// Its own loopback and nothing else.
    #[default]
    LoopbackOnly,
    /// The outside world too (NAT through the host), but never the host's loopback.
    Outbound,
}

/// How a sandbox ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Exited by itself with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Killed by the kernel for going over its memory limit.
    OutOfMemory,
    /// Ended, but its status went to the gateway that started it, not this one.
    Unknown,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
            Exit::OutOfMemory => write!(f, "killed for going over its memory limit"),
            Exit::Unknown => write!(f, "ended (its exit status went to an earlier gateway)"),
        }
    }
}

/// A sandbox a runtime started.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub tenant: TenantId,
    pub generation: u64,
    /// Where the agent listens, as the agent sees it.
    pub address: SocketAddr,
    /// How the gateway reaches it (possibly inside the sandbox's network namespace).
    pub endpoint: Endpoint,
    pub pid: u32,
    /// The process start time in clock ticks since boot, to tell this process from a
    /// later one that reused its pid.
    pub pid_start_ticks: u64,
    /// The first process inside the sandbox's own namespaces, if it has them.
    pub inner_pid: Option<u32>,
    /// The `cgroup.procs` listing every process of the sandbox, if it has a cgroup.
    pub cgroup_procs: Option<PathBuf>,
    /// The container's id, for a container runtime.
    pub container: Option<String>,
    pub workspace: PathBuf,
    /// Becomes `Some` once, when the sandbox has ended.
    pub exited: watch::Receiver<Option<Exit>>,
    /// The runtime's task that watches for the end and cleans up after it.
    pub watcher: Option<tokio::task::AbortHandle>,
}

impl Sandbox {
    /// Waits until the sandbox has ended.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exited.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(exit) => exit.clone().expect("wait_for returned Some"),
            // The waiter is gone only if the runtime itself is gone.
            Err(_) => Exit::Signal(nix::sys::signal::Signal::SIGKILL as i32),
        }
    }

    pub fn has_exited(&self) -> Option<Exit> {
        self.exited.borrow().clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot prepare the workspace {path}: {source}")]
    Workspace {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the agent: {0}")]
    Spawn(std::io::Error),
    #[error("the agent command is empty")]
    EmptyCommand,
    #[error("cannot signal the sandbox: {0}")]
    Signal(nix::Error),
    #[error("cannot set up the sandbox's cgroup: {0}")]
    Cgroup(std::io::Error),
    #[error("the container engine: {0}")]
    Engine(String),
    #[error("the sandbox did not stop within {0:?}")]
    FreezeTimeout(Duration),
}

/// What a runtime needs to find a sandbox an earlier gateway started.
#[derive(Debug, Clone)]
pub struct Survivor {
    pub tenant: TenantId,
    pub generation: u64,
    pub pid: u32,
    pub pid_start_ticks: u64,
    /// Where its agent listens, as recorded.
    pub address: Option<SocketAddr>,
    pub container: Option<String>,
}

#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Creates the sandbox and starts its agent. Returns once the process exists; the
    /// caller probes readiness.
    async fn start(&self, spec: &SandboxSpec) -> Result<Sandbox, RuntimeError>;

    /// Takes over a sandbox an earlier gateway started, if it still runs and is the
    /// one recorded (same process and start time, same container), as if this gateway
    /// had started it. `None`: it is gone.
    async fn adopt(&self, survivor: &Survivor) -> Result<Option<Sandbox>, RuntimeError>;

    /// Lets go of a sandbox that goes on running under another gateway: this one no
    /// longer watches it, nor cleans up after it when it ends.
    fn release(&self, sandbox: &Sandbox) {
        if let Some(watcher) = &sandbox.watcher {
            watcher.abort();
        }
    }

    /// Stops the sandbox: SIGTERM, then SIGKILL after `grace`. Returns how it ended.
    async fn stop(&self, sandbox: &Sandbox, grace: Duration) -> Result<Exit, RuntimeError>;

    /// The workspace directory of a tenant, whether or not its sandbox runs.
    fn workspace(&self, tenant: &TenantId) -> PathBuf;

    /// Stops every process of the sandbox until `thaw`, returning once they are all
    /// stopped, so a capture sees the workspace at one moment.
    fn freeze(&self, sandbox: &Sandbox) -> Result<(), RuntimeError>;

    /// Lets a frozen sandbox run again.
    fn thaw(&self, sandbox: &Sandbox);

    /// Opens connections to sandboxes' endpoints.
    fn connector(&self) -> &Connector;

    /// Makes the empty sandboxes a runtime keeps ready for `start` (where it keeps
    /// any), once the sandboxes an earlier gateway left are taken over; starts that
    /// claim one refill it.
    async fn fill_pool(&self) {}

    /// Stops the empty sandboxes kept for `start`; no more are made.
    async fn drain_pool(&self) {}

    /// How many empty sandboxes are ready to be claimed now.
    fn pool_ready(&self) -> usize {
        0
    }
}
