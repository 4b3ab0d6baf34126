//! The warm pool of the process runtime: `size` empty sandboxes kept ready, their
//! namespaces made and their cgroup set, with no tenant yet. Claiming one for a start
//! skips bubblewrap and the cgroup's creation (joining a memory cgroup can wait in the
//! kernel for tens of ms); what is left is the workspace and the agent's own boot.
//!
//! An empty sandbox runs `<stub> sandbox-wait` (the warren binary, `await_claim`) as
//! its user, with an empty `SANDBOX_HOME`, its stdin one end of a socket pair whose
//! other end the pool holds, and no output. A claim clones the tenant's workspace as a
//! detached mount on the host (`open_tree`) and attaches it at `SANDBOX_HOME` inside
//! that sandbox's mount namespace alone (a thread of the gateway enters it), nosuid and
//! nodev like bubblewrap's own binds: nothing is mounted on the host, so no other
//! sandbox ever sees it. Then it sends the stub the agent's command, environment and
//! working directory, with the tenant's log as a file descriptor; the stub moves there
//! and becomes the agent. The mount ends with the sandbox's namespace.
//!
//! An empty sandbox whose pool went away (its gateway stopped or died) reads the end of
//! its socket and exits; the cgroups such sandboxes leave are removed by the next
//! gateway. A sandbox is claimed once and never returned to the pool.
//!
//! Only tenants whose sandbox has no outbound network are served from the pool; a
//! tenant of another instance type gets the pooled sandbox's limits changed.

use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustix::mount::{MountFlags, MoveMountFlags, OpenTreeFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use super::{Isolation, LaunchSpec, Launched, ProcessRuntime, SANDBOX_HOME, abandon, bwrap_args};
use crate::cgroup::{Cgroup, Hierarchy, Limits};
use crate::{Network, RuntimeError, Sandbox, SandboxSpec};

/// What the pool keeps.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// How many empty sandboxes are kept ready.
    pub size: usize,
    /// Their limits until claimed (the usual instance type's).
    pub limits: Limits,
    /// The program that waits in each for its claim: the warren binary, run as
    /// `<stub> sandbox-wait`.
    pub stub: PathBuf,
    /// Host paths the agents' programs need that a sandbox hides (under `/tmp`,
    /// `/root`, `/home` or `/run`), besides the runtime's `ro_paths`.
    pub visible: Vec<PathBuf>,
}

pub(super) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    config: PoolConfig,
    isolation: Isolation,
    hierarchy: Hierarchy,
    data_dir: PathBuf,
    ready: Mutex<Vec<Entry>>,
    /// Names this pool's sandboxes (and their cgroups) apart from any other's.
    prefix: String,
    next: AtomicU64,
    /// One fill at a time.
    filling: tokio::sync::Mutex<()>,
    /// Set by `drain`: no more empty sandboxes are made.
    closed: AtomicBool,
}

/// One empty sandbox.
struct Entry {
    /// The pool's end of the stub's stdin.
    socket: OwnedFd,
    launched: Launched,
}

impl Pool {
    pub(super) fn new(data_dir: &Path, config: PoolConfig, rt: &ProcessRuntime) -> Option<Self> {
        Some(Self {
            inner: Arc::new(Inner {
                config,
                isolation: rt.isolation.clone(),
                hierarchy: rt.cgroups.clone()?,
                data_dir: data_dir.to_owned(),
                ready: Mutex::new(Vec::new()),
                // The pid alone may come back (a gateway that is PID 1 in a container).
                prefix: format!(
                    "{}{}-{}-",
                    cgroup_prefix(data_dir),
                    std::process::id(),
                    started_ms()
                ),
                next: AtomicU64::new(0),
                filling: tokio::sync::Mutex::new(()),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// How many empty sandboxes are ready.
    pub(super) fn ready(&self) -> usize {
        self.inner
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Makes empty sandboxes until `size` are ready.
    pub(super) async fn fill(&self) {
        self.inner.clone().fill().await;
    }

    /// Takes an empty sandbox for `spec`'s tenant, if one is ready and fits; `None`:
    /// start a new one. A claim that fails half way leaves nothing behind.
    pub(super) async fn claim(
        &self,
        rt: &ProcessRuntime,
        spec: &SandboxSpec,
    ) -> Result<Option<Sandbox>, RuntimeError> {
        let inner = &self.inner;
        let (Some(limits), Some(program)) = (spec.limits, spec.command.first()) else {
            return Ok(None);
        };
        if spec.network != Network::LoopbackOnly || !inner.can_run(Path::new(program)) {
            return Ok(None);
        }
        let taken = inner.take();
        // One gone, one made, in the background; and a pool found empty (a fill that
        // failed, say) tries again.
        tokio::spawn(inner.clone().fill());
        let Some(mut entry) = taken else {
            return Ok(None);
        };
        match Self::bind(rt, spec, &mut entry, &limits, &inner.config.limits).await {
            Ok(address) => Ok(Some(rt.supervise(spec, entry.launched, None, address))),
            Err(e) => {
                entry.discard().await;
                Err(e)
            }
        }
    }

    /// Gives the tenant's workspace, limits, log and agent to an empty sandbox.
    async fn bind(
        rt: &ProcessRuntime,
        spec: &SandboxSpec,
        entry: &mut Entry,
        limits: &Limits,
        pooled_limits: &Limits,
    ) -> Result<std::net::SocketAddr, RuntimeError> {
        let Isolation::Namespaces { agent_port, .. } = rt.isolation else {
            unreachable!("a pool runs namespaced sandboxes only")
        };
        let (workspace, log, _) = rt.prepare_workspace(spec).await?;
        if let Some(cgroup) = &entry.launched.cgroup
            && limits != pooled_limits
        {
            cgroup.set_limits(limits).map_err(RuntimeError::Cgroup)?;
        }
        let inner_pid = entry.launched.inner_pid.ok_or_else(|| {
            RuntimeError::Spawn(std::io::Error::other("a pooled sandbox has no namespace"))
        })?;
        attach_workspace(&workspace, inner_pid).await.map_err(|e| {
            RuntimeError::Spawn(std::io::Error::other(format!(
                "cannot attach the workspace to a pooled sandbox: {e}"
            )))
        })?;
        let address = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, agent_port));
        let claim = Claim {
            cwd: SANDBOX_HOME.into(),
            argv: spec.command.clone(),
            env: rt.agent_env(spec, &workspace, address),
        };
        send_claim(&entry.socket, &claim, &log).map_err(RuntimeError::Spawn)?;
        Ok(address)
    }

    /// Stops every empty sandbox; no more are made.
    pub(super) async fn drain(&self) {
        let inner = &self.inner;
        inner.closed.store(true, Ordering::SeqCst);
        let _filling = inner.filling.lock().await;
        let entries = std::mem::take(&mut *inner.ready.lock().unwrap_or_else(|e| e.into_inner()));
        for entry in entries {
            entry.discard().await;
        }
    }
}

impl Inner {
    /// Whether an agent's program is visible in an empty sandbox.
    fn can_run(&self, program: &Path) -> bool {
        let Isolation::Namespaces { ro_paths, .. } = &self.isolation else {
            return false;
        };
        let hidden = ["/tmp", "/root", "/home", "/run"]
            .iter()
            .any(|d| program.starts_with(d))
            || program.starts_with(&self.data_dir);
        !program.is_absolute()
            || !hidden
            || ro_paths
                .iter()
                .chain(&self.config.visible)
                .any(|v| program.starts_with(v))
    }

    /// An empty sandbox that still runs, if one is ready.
    fn take(&self) -> Option<Entry> {
        loop {
            let mut entry = self.ready.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            if matches!(entry.launched.child.try_wait(), Ok(None)) {
                return Some(entry);
            }
            tokio::spawn(entry.discard());
        }
    }

    async fn fill(self: Arc<Self>) {
        let _filling = self.filling.lock().await;
        while !self.closed.load(Ordering::SeqCst)
            && self.ready.lock().unwrap_or_else(|e| e.into_inner()).len() < self.config.size
        {
            match self.make().await {
                Ok(entry) => self
                    .ready
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(entry),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot make a pooled sandbox");
                    return;
                }
            }
        }
    }

    /// One empty sandbox: its cgroup and bubblewrap, waiting in the stub.
    async fn make(&self) -> Result<Entry, RuntimeError> {
        let Isolation::Namespaces {
            bwrap,
            uid,
            ro_paths,
            ..
        } = &self.isolation
        else {
            unreachable!("a pool runs namespaced sandboxes only")
        };
        let name = format!(
            "{}{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let spawn = |e: std::io::Error| RuntimeError::Spawn(e);
        let null = || File::options().write(true).open("/dev/null").map_err(spawn);
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| spawn(e.into()))?;
        let mut visible = ro_paths.clone();
        visible.extend(self.config.visible.iter().cloned());
        visible.push(self.config.stub.clone());
        let mut argv = vec![bwrap.to_string_lossy().into_owned()];
        argv.extend(bwrap_args(&self.data_dir, None, *uid, &visible));
        argv.push(self.config.stub.to_string_lossy().into_owned());
        argv.push("sandbox-wait".into());
        let launch = LaunchSpec {
            argv,
            uid: Some(*uid),
            env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
            cwd: self.data_dir.clone(),
            stdin: Stdio::from(theirs),
            // Nothing of one sandbox's output may reach another: an empty sandbox has
            // none until its claim gives it the tenant's log.
            stdout: null()?,
            stderr: null()?,
        };
        let cgroup = Cgroup::create(&self.hierarchy, &name, &self.config.limits)
            .map_err(RuntimeError::Cgroup)?;
        let launched = ProcessRuntime::launch(&self.isolation, launch, Some(cgroup)).await?;
        // Ready once the stub says it waits: before that, bubblewrap may still be
        // building the sandbox's mount tree, where a claim could not attach a workspace.
        let waiting = tokio::task::spawn_blocking(move || {
            let said = wait_for_stub(&ours);
            (ours, said)
        });
        let (socket, said) = waiting.await.map_err(|e| spawn(std::io::Error::other(e)))?;
        let entry = Entry { socket, launched };
        if let Err(e) = said {
            entry.discard().await;
            return Err(spawn(e));
        }
        Ok(entry)
    }
}

impl Entry {
    /// Ends an empty (or half-claimed) sandbox and removes its cgroup.
    async fn discard(mut self) {
        drop(self.socket);
        abandon(self.launched.pid, self.launched.cgroup.as_ref()).await;
        let _ = self.launched.child.wait().await;
    }
}

/// The start of the names of every pool cgroup of gateways on `data_dir`, and of no
/// other data dir's (FNV-1a of its path): a gateway cleaning up after its predecessors
/// must not take the cgroups another gateway on this host just made.
pub(crate) fn cgroup_prefix(data_dir: &Path) -> String {
    let tag = data_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("pool-{tag:016x}-")
}

/// Now, in ms since the Unix epoch.
fn started_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Attaches `workspace` at `SANDBOX_HOME` in the mount namespace of process `inner`
/// (a pooled sandbox's first), nosuid and nodev, and nowhere else: a detached clone
/// of it is made here, then a thread of its own (a thread may enter another mount
/// namespace only with its filesystem context unshared, and it ends right after)
/// enters the sandbox's namespace and attaches it there.
async fn attach_workspace(workspace: &Path, inner: u32) -> std::io::Result<()> {
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        workspace,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )?;
    let namespace = File::open(format!("/proc/{inner}/ns/mnt"))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("warren-attach".into())
        .spawn(move || {
            let attach = || -> std::io::Result<()> {
                use nix::sched::CloneFlags;
                nix::sched::unshare(CloneFlags::CLONE_FS)?;
                nix::sched::setns(&namespace, CloneFlags::CLONE_NEWNS)?;
                rustix::mount::move_mount(
                    &tree,
                    "",
                    rustix::fs::CWD,
                    SANDBOX_HOME,
                    MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
                )?;
                let flags = MountFlags::BIND | MountFlags::NOSUID | MountFlags::NODEV;
                rustix::mount::mount_remount(SANDBOX_HOME, flags, "")?;
                Ok(())
            };
            let _ = tx.send(attach());
        })?;
    rx.await
        .unwrap_or_else(|_| Err(std::io::Error::other("the attaching thread died")))
}

/// What an empty sandbox becomes.
#[derive(Debug, PartialEq)]
struct Claim {
    cwd: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

impl Claim {
    /// `cwd`, the count of `argv`, `argv`, then `KEY=value` pairs, each ended by NUL
    /// (which none of them can hold).
    fn encode(&self) -> Vec<u8> {
        let mut fields = vec![self.cwd.clone(), self.argv.len().to_string()];
        fields.extend(self.argv.iter().cloned());
        fields.extend(self.env.iter().map(|(k, v)| format!("{k}={v}")));
        let mut bytes = Vec::new();
        for field in fields {
            bytes.extend_from_slice(field.as_bytes());
            bytes.push(0);
        }
        bytes
    }

    fn decode(bytes: &[u8]) -> std::io::Result<Self> {
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "a malformed claim");
        let text = std::str::from_utf8(bytes).map_err(|_| bad())?;
        let mut fields = text.strip_suffix('\0').ok_or_else(bad)?.split('\0');
        let cwd = fields.next().ok_or_else(bad)?.to_owned();
        let argc: usize = fields.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let argv: Vec<String> = fields.by_ref().take(argc).map(str::to_owned).collect();
        if argv.len() != argc || argc == 0 {
            return Err(bad());
        }
        let env = fields
            .map(|kv| {
                let (k, v) = kv.split_once('=').ok_or_else(bad)?;
                Ok((k.to_owned(), v.to_owned()))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Self { cwd, argv, env })
    }
}

/// The largest claim a stub reads.
const MAX_CLAIM: usize = 1 << 20;

fn send_claim(socket: &OwnedFd, claim: &Claim, log: &File) -> std::io::Result<()> {
    let bytes = claim.encode();
    if bytes.len() > MAX_CLAIM {
        return Err(std::io::Error::other(
            "the agent's command and environment are too large",
        ));
    }
    let fds = [log.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    ancillary.push(SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(
        socket,
        &[IoSlice::new(&bytes)],
        &mut ancillary,
        SendFlags::empty(),
    )?;
    Ok(())
}

/// The stub's part (`warren sandbox-wait`, inside an empty sandbox): waits on stdin
/// for a claim, then moves its output to the log it was given, its working directory
/// to the workspace, and becomes the agent. Exits quietly when the pool lets go of it
/// (the end of stdin); returns only an error.
pub fn await_claim() -> std::io::Error {
    match receive_claim() {
        Ok(None) => std::process::exit(0),
        Ok(Some((claim, log))) => become_agent(claim, log),
        Err(e) => e,
    }
}

/// What the stub sends once it waits for a claim.
const WAITING: &[u8] = b"waiting";

/// How long a new pooled sandbox may take to say it waits.
const STUB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Blocks until the stub at the other end of `socket` says it waits.
fn wait_for_stub(socket: &OwnedFd) -> std::io::Result<()> {
    use rustix::net::sockopt::{Timeout, set_socket_timeout};
    set_socket_timeout(socket, Timeout::Recv, Some(STUB_TIMEOUT))?;
    let mut said = [0u8; 16];
    let (n, _) = rustix::net::recv(socket, &mut said[..], RecvFlags::empty())?;
    set_socket_timeout(socket, Timeout::Recv, None)?;
    if &said[..n] != WAITING {
        return Err(std::io::Error::other(
            "the pooled sandbox ended before it waited for a claim",
        ));
    }
    Ok(())
}

fn receive_claim() -> std::io::Result<Option<(Claim, Option<OwnedFd>)>> {
    let stdin = std::io::stdin();
    rustix::net::send(stdin.as_fd(), WAITING, SendFlags::empty())?;
    let mut buf = vec![0u8; MAX_CLAIM];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        stdin.as_fd(),
        &mut [IoSliceMut::new(&mut buf)],
        &mut ancillary,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if received.bytes == 0 {
        return Ok(None);
    }
    let log = ancillary.drain().find_map(|m| match m {
        RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
        _ => None,
    });
    Ok(Some((Claim::decode(&buf[..received.bytes])?, log)))
}

fn become_agent(claim: Claim, log: Option<OwnedFd>) -> std::io::Error {
    let setup = || -> std::io::Result<()> {
        if let Some(log) = &log {
            rustix::stdio::dup2_stdout(log)?;
            rustix::stdio::dup2_stderr(log)?;
        }
        rustix::stdio::dup2_stdin(File::open("/dev/null")?)?;
        std::env::set_current_dir(&claim.cwd)
    };
    if let Err(e) = setup() {
        return e;
    }
    drop(log);
    std::process::Command::new(&claim.argv[0])
        .args(&claim.argv[1..])
        .env_clear()
        .envs(claim.env)
        .exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_crosses_the_socket_intact_and_malformed_ones_are_refused() {
        let claim = Claim {
            cwd: "/home/agent".into(),
            argv: vec!["/usr/bin/agent".into(), "--port".into(), "".into()],
            env: vec![("A".into(), "x=y".into()), ("EMPTY".into(), "".into())],
        };
        assert_eq!(Claim::decode(&claim.encode()).unwrap(), claim);
        for bad in [
            &b""[..],
            b"/cwd\x00",
            b"/cwd\x002\x00only-one\x00",
            b"/cwd\x001\x00a\x00NOEQUALS\x00",
            b"/cwd\x000\x00",
        ] {
            assert!(Claim::decode(bad).is_err(), "{bad:?}");
        }
    }
}
