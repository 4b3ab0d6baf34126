//! The container runtime: each sandbox is a container, created through the Docker
//! Engine API (Docker, or Podman's `podman system service`), from one image per agent.
//!
//! A container gets what a process sandbox gets: the tenant's workspace bind-mounted at
//! `/workspace` (also its `HOME` and working directory), a read-only root with its own
//! `/tmp`, an unprivileged user without capabilities or set-id gains, the instance
//! type's memory (no swap), CPU and pids limits, and network mode `none`: only its own
//! loopback, where the gateway reaches the agent by entering the container's network
//! namespace, exactly as for a process sandbox. An init runs as PID 1, so a stop
//! ends an agent that ignores SIGTERM without waiting out the grace period twice.
//!
//! The gateway must run on the engine's host, as root: it enters namespaces and reads
//! `/proc` and the cgroup tree. Nothing is ever pulled: the image must be there (see
//! `scripts/build-image`). Containers are labelled with the data dir they belong to,
//! and a container that has ended is removed once its output is copied to the tenant's
//! `agent.log`.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{ContainerCreateBody, ContainerState, HostConfig, ResourcesUlimits};
use bollard::query_parameters::{
    CreateContainerOptions, LogsOptions, PruneContainersOptions, RemoveContainerOptions,
    StopContainerOptions,
};
use futures_util::StreamExt as _;
use tokio::sync::watch;
use warren_core::TenantId;
use warren_core::layout::Layout;

use crate::cgroup::{Cgroup, Hierarchy, OomWatch};
use crate::netns::{Connector, Endpoint};
use crate::process::{process_start_ticks, still_running};
use crate::{Exit, Network, Runtime, RuntimeError, Sandbox, SandboxSpec, Survivor};

/// Where the workspace is inside a container.
const WORKSPACE: &str = "/workspace";
/// The label that ties a container to the data dir (the gateway) that made it.
const DATA_DIR_LABEL: &str = "warren.data-dir";
/// How often a container's state is read again when the engine's wait failed.
const POLL: Duration = Duration::from_millis(100);
/// The longest pause between questions to an engine that does not answer.
const ENGINE_RETRY_MAX: Duration = Duration::from_secs(5);

/// How the container runtime is set up.
#[derive(Debug, Clone)]
pub struct DockerOptions {
    /// The engine's API socket.
    pub socket: PathBuf,
    /// The agent's image (never pulled).
    pub image: String,
    /// The user the agent runs as.
    pub uid: u32,
    /// The port the agent listens on, on its own loopback.
    pub agent_port: u16,
    /// The network mode of a sandbox allowed outbound connections (`bridge` on Docker,
    /// `slirp4netns` or `bridge` on Podman).
    pub outbound_network: String,
    /// Open files and processes per sandbox (RLIMIT_NOFILE, RLIMIT_NPROC): some
    /// engines' defaults are more than an unprivileged host may grant.
    pub nofile: u64,
    pub nproc: u64,
}

pub struct DockerRuntime {
    docker: Docker,
    options: DockerOptions,
    layout: Layout,
    data_dir: String,
    connector: Connector,
    cgroups: Option<Hierarchy>,
}

fn engine(what: &str) -> impl FnOnce(bollard::errors::Error) -> RuntimeError + '_ {
    move |e| RuntimeError::Engine(format!("{what}: {e}"))
}

impl DockerRuntime {
    /// Fails, with what to do, if `image` is not in the engine (nothing is pulled).
    pub async fn check_image(&self, image: &str) -> Result<(), RuntimeError> {
        self.docker
            .inspect_image(image)
            .await
            .map(drop)
            .map_err(|e| {
                RuntimeError::Engine(format!(
                    "the image {image:?} is not there ({e}); build it with scripts/build-image"
                ))
            })
    }

    /// Connects to the engine, checks the image is there, and removes containers a
    /// previous run with this data dir left behind after they ended.
    pub async fn connect(data_dir: &Path, options: DockerOptions) -> Result<Self, RuntimeError> {
        let socket = options.socket.to_string_lossy().into_owned();
        let docker = Docker::connect_with_unix(&socket, 120, bollard::API_DEFAULT_VERSION)
            .map_err(engine("cannot reach the engine"))?;
        docker
            .ping()
            .await
            .map_err(|e| RuntimeError::Engine(format!("no engine answers on {socket}: {e}")))?;
        let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_owned());
        let runtime = Self {
            docker,
            layout: Layout::new(&data_dir),
            data_dir: data_dir.to_string_lossy().into_owned(),
            options,
            connector: Connector::new(),
            cgroups: Hierarchy::detect(),
        };
        runtime.check_image(&runtime.options.image).await?;
        runtime.remove_ended().await?;
        Ok(runtime)
    }

    /// Removes this data dir's containers that are no longer running (a prune, not a
    /// listing: Podman lists states, such as `stopped`, that Docker's API does not name).
    async fn remove_ended(&self) -> Result<(), RuntimeError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{DATA_DIR_LABEL}={}", self.data_dir)],
        )]);
        self.docker
            .prune_containers(Some(PruneContainersOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(engine("cannot remove ended containers"))?;
        Ok(())
    }

    /// The container's definition. With `cgroup`, limits are that cgroup's (the
    /// container is made inside it); without, the engine's.
    fn create_body(
        &self,
        spec: &SandboxSpec,
        workspace: &Path,
        address: SocketAddr,
        cgroup: Option<&Cgroup>,
    ) -> ContainerCreateBody {
        let o = &self.options;
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.extend([
            "PATH=/usr/local/bin:/usr/bin:/bin".to_owned(),
            format!("HOME={WORKSPACE}"),
            "TMPDIR=/tmp".to_owned(),
            format!("WARREN_TENANT_ID={}", spec.tenant),
            format!("WARREN_WORKSPACE={WORKSPACE}"),
            format!("WARREN_AGENT_ADDR={address}"),
        ]);
        let limits = spec.limits.as_ref().filter(|_| cgroup.is_none());
        let ulimit = |name: &str, n: u64| ResourcesUlimits {
            name: Some(name.to_owned()),
            soft: Some(n as i64),
            hard: Some(n as i64),
        };
        let network_mode = match spec.network {
            Network::LoopbackOnly => "none".to_owned(),
            Network::Outbound => o.outbound_network.clone(),
        };
        let host_config = HostConfig {
            binds: Some(vec![format!("{}:{WORKSPACE}:rw", workspace.display())]),
            network_mode: Some(network_mode),
            cgroup_parent: cgroup.map(Cgroup::relative_path),
            memory: limits.map(|l| l.memory_bytes as i64),
            // Equal to the memory limit: no swap to hide an overrun.
            memory_swap: limits.map(|l| l.memory_bytes as i64),
            nano_cpus: limits.map(|l| (l.cpu_millis * 1_000_000) as i64),
            pids_limit: limits.map(|l| l.pids as i64),
            ulimits: Some(vec![ulimit("nofile", o.nofile), ulimit("nproc", o.nproc)]),
            init: Some(true),
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_owned(),
                "rw,nosuid,nodev".to_owned(),
            )])),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(spec.image.clone().unwrap_or_else(|| o.image.clone())),
            // A command replaces the image's; none runs the image's own.
            entrypoint: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: Some(env),
            user: Some(format!("{0}:{0}", o.uid)),
            working_dir: Some(WORKSPACE.to_owned()),
            labels: Some(HashMap::from([
                (DATA_DIR_LABEL.to_owned(), self.data_dir.clone()),
                ("warren.tenant".to_owned(), spec.tenant.to_string()),
                ("warren.generation".to_owned(), spec.generation.to_string()),
            ])),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// The container of `survivor`, taken over, if it still runs as recorded.
    async fn adopt_running(&self, survivor: &Survivor) -> Result<Option<Sandbox>, RuntimeError> {
        let Some(id) = &survivor.container else {
            return Ok(None);
        };
        let info = match self.docker.inspect_container(id, None).await {
            Ok(info) => info,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => return Err(engine("cannot inspect a surviving container")(e)),
        };
        let state = info.state.unwrap_or_default();
        let pid = survivor.pid;
        if state.running != Some(true)
            || state.pid != Some(i64::from(pid))
            || !still_running(pid, survivor.pid_start_ticks)
        {
            return Ok(None);
        }
        let netns = File::open(format!("/proc/{pid}/ns/net")).map_err(RuntimeError::Spawn)?;
        // Its cgroup of warren's own, if it was made in one: the OOM watch is new.
        let limited = match self.cgroups.as_ref().and_then(|h| h.warren_cgroup_of(pid)) {
            Some(cgroup) => match cgroup.watch_oom() {
                Ok(oom) => Some(Limited { cgroup, oom }),
                Err(e) => return Err(RuntimeError::Cgroup(e)),
            },
            None => None,
        };
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.options.agent_port));
        let (tx, exited) = watch::channel(None);
        let docker = self.docker.clone();
        let (container, log) = (id.clone(), self.layout.agent_log(&survivor.tenant));
        let watcher = tokio::spawn(async move {
            let exit = watch_container(docker, container, log, limited).await;
            tx.send_replace(Some(exit));
        });
        Ok(Some(Sandbox {
            tenant: survivor.tenant.clone(),
            generation: survivor.generation,
            address,
            endpoint: Endpoint {
                addr: address,
                netns: Some(Arc::new(netns)),
            },
            pid,
            pid_start_ticks: survivor.pid_start_ticks,
            inner_pid: Some(pid),
            cgroup_procs: self.cgroups.as_ref().and_then(|h| h.procs_file_of(pid)),
            container: Some(id.clone()),
            workspace: self.layout.workspace(&survivor.tenant),
            exited,
            watcher: Some(watcher.abort_handle()),
        }))
    }

    /// The host pid of the container's first process, once it runs.
    async fn init_pid(&self, id: &str) -> Result<u32, RuntimeError> {
        let state = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(engine("cannot inspect the new container"))?
            .state
            .unwrap_or_default();
        match state.pid {
            Some(pid) if pid > 0 && state.running == Some(true) => Ok(pid as u32),
            _ => Err(RuntimeError::Spawn(std::io::Error::other(
                "the container ended at once (see the tenant's agent.log)",
            ))),
        }
    }
}

fn force() -> RemoveContainerOptions {
    RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    }
}

/// How a container ended, from the engine's record of it.
fn exit_of(state: &ContainerState) -> Exit {
    if state.oom_killed == Some(true) {
        return Exit::OutOfMemory;
    }
    match state.exit_code.unwrap_or(-1) {
        // The init reports a child killed by signal n as 128 + n, as shells do.
        code @ 129..=192 => Exit::Signal((code - 128) as i32),
        code => Exit::Code(code as i32),
    }
}

/// Warren's own cgroup around a container: the limits, and the kernel's word on OOM
/// kills (this engine's may miss them: Podman on a v1 host does).
struct Limited {
    cgroup: Cgroup,
    oom: OomWatch,
}

impl Limited {
    fn create(
        hierarchy: &Hierarchy,
        name: &str,
        limits: &crate::cgroup::Limits,
    ) -> std::io::Result<Self> {
        let cgroup = Cgroup::create(hierarchy, name, limits)?;
        let made = cgroup.delegate().and_then(|()| cgroup.watch_oom());
        match made {
            Ok(oom) => Ok(Self { cgroup, oom }),
            Err(e) => {
                cgroup.remove();
                Err(e)
            }
        }
    }

    fn oom_killed(&self) -> bool {
        self.oom.heard().unwrap_or_else(|| self.cgroup.oom_killed())
    }

    /// Removes the cgroup once the engine has let go of the container's.
    async fn remove(self) {
        self.cgroup.remove_patiently().await;
    }
}

/// Waits for the container to end, reads how, copies its output to `log`, removes it.
async fn watch_container(
    docker: Docker,
    id: String,
    log: PathBuf,
    limited: Option<Limited>,
) -> Exit {
    // The engine's wait answers when the container ends; if the connection breaks
    // first (the engine restarts, say), its state is read until it says so. Only the
    // engine saying it has no such container means it is gone.
    let _ = docker.wait_container(&id, None).next().await;
    let mut pause = POLL;
    let mut exit = loop {
        match docker.inspect_container(&id, None).await {
            Ok(info) => {
                let state = info.state.unwrap_or_default();
                if state.running != Some(true) {
                    break exit_of(&state);
                }
                pause = POLL;
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                tracing::warn!(container = %id, "the container vanished");
                break Exit::Code(-1);
            }
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "cannot ask the engine about a container; asking again");
                pause = (pause * 2).min(ENGINE_RETRY_MAX);
            }
        }
        tokio::time::sleep(pause).await;
    };
    // Asked before the container (and its cgroup inside ours) is removed.
    if limited.as_ref().is_some_and(Limited::oom_killed) {
        exit = Exit::OutOfMemory;
    }
    copy_output(&docker, &id, &log).await;
    if let Err(e) = docker.remove_container(&id, Some(force())).await {
        tracing::warn!(container = %id, error = %e, "cannot remove an ended container");
    }
    if let Some(limited) = limited {
        // Before the end is reported: a gateway that stops everything and exits must
        // not leave the cgroup behind.
        limited.remove().await;
    }
    exit
}

/// Appends the container's stdout and stderr to `log`.
async fn copy_output(docker: &Docker, id: &str, log: &Path) {
    let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    else {
        return;
    };
    let mut output = docker.logs(
        id,
        Some(LogsOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        }),
    );
    while let Some(Ok(chunk)) = output.next().await {
        if file.write_all(&chunk.into_bytes()).is_err() {
            return;
        }
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    async fn start(&self, spec: &SandboxSpec) -> Result<Sandbox, RuntimeError> {
        let workspace = self.layout.workspace(&spec.tenant);
        let io = |source| RuntimeError::Workspace {
            path: workspace.clone(),
            source,
        };
        std::fs::create_dir_all(&workspace).map_err(io)?;
        crate::process::hand_over_workspace(&workspace, self.options.uid)
            .await
            .map_err(io)?;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.options.agent_port));
        // Unique on the host: two gateways (an upgrade, tests) may both start the same
        // tenant's generation number.
        let name = format!(
            "warren-{}-g{}-{}",
            spec.tenant,
            spec.generation,
            std::process::id()
        );
        let limited = match (&self.cgroups, &spec.limits) {
            (Some(hierarchy), Some(limits)) => {
                Some(Limited::create(hierarchy, &name, limits).map_err(RuntimeError::Cgroup)?)
            }
            _ => None,
        };
        let body = self.create_body(
            spec,
            &workspace,
            address,
            limited.as_ref().map(|l| &l.cgroup),
        );
        let options = CreateContainerOptions {
            name: Some(name),
            ..Default::default()
        };
        let created = match self.docker.create_container(Some(options), body).await {
            Ok(created) => created,
            Err(e) => {
                if let Some(limited) = limited {
                    limited.remove().await;
                }
                return Err(engine("cannot create the container")(e));
            }
        };
        let id = created.id;
        let log = self.layout.agent_log(&spec.tenant);
        let started = async {
            self.docker
                .start_container(&id, None)
                .await
                .map_err(engine("cannot start the container"))?;
            let pid = self.init_pid(&id).await?;
            let netns = File::open(format!("/proc/{pid}/ns/net")).map_err(RuntimeError::Spawn)?;
            Ok::<_, RuntimeError>((pid, netns))
        };
        let (pid, netns) = match started.await {
            Ok(started) => started,
            Err(e) => {
                copy_output(&self.docker, &id, &log).await;
                let _ = self.docker.remove_container(&id, Some(force())).await;
                if let Some(limited) = limited {
                    limited.remove().await;
                }
                return Err(e);
            }
        };

        let (tx, exited) = watch::channel(None);
        let docker = self.docker.clone();
        let container = id.clone();
        let watcher = tokio::spawn(async move {
            let exit = watch_container(docker, container, log, limited).await;
            tx.send_replace(Some(exit));
        });
        Ok(Sandbox {
            tenant: spec.tenant.clone(),
            generation: spec.generation,
            address,
            endpoint: Endpoint {
                addr: address,
                netns: Some(Arc::new(netns)),
            },
            pid,
            pid_start_ticks: process_start_ticks(pid).unwrap_or(0),
            inner_pid: Some(pid),
            cgroup_procs: self.cgroups.as_ref().and_then(|h| h.procs_file_of(pid)),
            container: Some(id),
            workspace,
            exited,
            watcher: Some(watcher.abort_handle()),
        })
    }

    async fn adopt(&self, survivor: &Survivor) -> Result<Option<Sandbox>, RuntimeError> {
        let adopted = self.adopt_running(survivor).await?;
        if adopted.is_none()
            && let Some(h) = &self.cgroups
        {
            // What an ended one left: its cgroup (the container went at `connect`).
            h.remove_ended(&format!(
                "warren-{}-g{}-",
                survivor.tenant, survivor.generation
            ));
        }
        Ok(adopted)
    }

    async fn stop(&self, sandbox: &Sandbox, grace: Duration) -> Result<Exit, RuntimeError> {
        if let Some(exit) = sandbox.has_exited() {
            return Ok(exit);
        }
        let Some(id) = &sandbox.container else {
            return Err(RuntimeError::Engine("not a container".into()));
        };
        // The engine sends SIGTERM to the init, which passes it on, and SIGKILL after
        // the grace period (whole seconds).
        let t = grace.as_secs_f64().ceil() as i32;
        let stopped = self
            .docker
            .stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(t),
                    ..Default::default()
                }),
            )
            .await;
        if let Err(e) = stopped
            && sandbox.has_exited().is_none()
        {
            tracing::warn!(tenant = %sandbox.tenant, error = %e, "the engine did not stop the container; killing it");
            let _ = self.docker.remove_container(id, Some(force())).await;
        }
        Ok(sandbox.wait().await)
    }

    fn workspace(&self, tenant: &TenantId) -> PathBuf {
        self.layout.workspace(tenant)
    }

    fn freeze(&self, sandbox: &Sandbox) -> Result<(), RuntimeError> {
        crate::process::freeze(sandbox)
    }

    fn thaw(&self, sandbox: &Sandbox) {
        crate::process::thaw(sandbox)
    }

    fn connector(&self) -> &Connector {
        &self.connector
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::tests::{assert_a_trapped_sigterm_ends_in_sigkill, assert_freeze_is_whole};

    const SHELL_IMAGE: &str = "localhost/warren-shell:test";

    async fn runtime(dir: &Path, podman: &warren_testkit::Podman) -> DockerRuntime {
        warren_testkit::build_image(
            SHELL_IMAGE,
            r#"["/bin/sh"]"#,
            &["/bin/sh", "/usr/bin/setsid"],
        );
        let options = DockerOptions {
            socket: podman.socket.clone(),
            image: SHELL_IMAGE.into(),
            uid: 65534,
            agent_port: 8787,
            outbound_network: "bridge".into(),
            nofile: 1024,
            nproc: 1024,
        };
        DockerRuntime::connect(dir, options).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_container_freezes_whole_even_past_setsid() {
        let podman = warren_testkit::Podman::start();
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path(), &podman).await;
        let script = "setsid sh -c 'while :; do echo x >> escaped; done' & while :; do echo x >> parent; done";
        assert_freeze_is_whole(&rt, script, ["escaped", "parent"]).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_container_that_ignores_sigterm_is_killed_after_the_grace() {
        let podman = warren_testkit::Podman::start();
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path(), &podman).await;
        // Not user_a: container names are unique per tenant, generation and process,
        // and the other test runs in this process too.
        assert_a_trapped_sigterm_ends_in_sigkill(&rt, "user_b", Duration::from_secs(1)).await;
    }
}
