//! Running the gateway: recover what a previous run left, serve until told to stop,
//! then stop accepting, stop every sandbox and let open connections finish, within a
//! deadline.

use std::future::Future;
use std::os::fd::AsFd as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use warren_core::sandbox::{SandboxState, StopCause};
use warren_runtime::Survivor;
use warren_runtime::process::still_running;
use warren_state::Transition;

use crate::edge::{self, Edge};
use crate::{Context, handover, unix_ms};

/// How long to wait before accepting again after `accept` failed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// TCP keepalive on client connections: probes after this much silence...
const CLIENT_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// ...then every this long, 3 times.
const CLIENT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How the gateway ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Running sandboxes are left running for the next gateway (a restart, an
    /// upgrade): synced one last time, then let go.
    Leave,
    /// Every sandbox is stopped (and synced) first.
    StopAll,
}

pub struct Gateway {
    edge: Arc<Edge>,
    /// The data dir's lock (`gateway.lock`), held while this gateway manages its
    /// sandboxes; let go when it hands them over.
    lock: std::fs::File,
}

/// The lock that makes one gateway per data dir: a second `warren serve` is refused,
/// and a successor (`--takeover`) waits for it until its predecessor has handed over.
pub fn lock_data_dir(data_dir: &std::path::Path, wait: bool) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join("gateway.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    if wait {
        file.lock()?;
    } else if let Err(e) = file.try_lock() {
        anyhow::bail!(
            "another gateway runs on {} ({e}); to replace it without dropping anyone, use `warren serve --takeover`",
            data_dir.display()
        );
    }
    Ok(file)
}

impl Gateway {
    /// A gateway over `ctx`, holding the data dir's lock (see `lock_data_dir`).
    pub fn new(ctx: Context, lock: std::fs::File) -> Self {
        Self {
            edge: Edge::new(Arc::new(ctx)),
            lock,
        }
    }

    /// Loads the tiers operators assigned, and settles sandboxes a previous run of the
    /// gateway recorded as live: one that still runs and is the one recorded (same
    /// process and start time, same container) is taken over as it is; one that ended
    /// meanwhile is recorded as a crash and its workspace synced from disk.
    pub async fn recover(&self) -> anyhow::Result<()> {
        let ctx = &self.edge.ctx;
        for (tenant, tier) in ctx.state.tiers().await? {
            ctx.assign_tier(&tenant, Some(tier));
        }
        let mut adopting = Vec::new();
        for record in ctx.state.live_sandboxes().await? {
            let tenant = record.tenant.clone();
            let survivor = record.identity.as_ref().and_then(|i| {
                Some(Survivor {
                    tenant: tenant.clone(),
                    generation: i.generation,
                    pid: i.pid?,
                    pid_start_ticks: i.pid_start_ticks?,
                    address: i.address.as_deref().and_then(|a| a.parse().ok()),
                    container: i.container.clone(),
                })
            });
            let mut detail = "it ended while no gateway ran".to_owned();
            if let Some(survivor) = &survivor {
                match ctx.runtime.adopt(survivor).await {
                    Ok(Some(sandbox)) => {
                        // Proxy names are per generation: no new sandbox may reuse its.
                        ctx.generation_taken(sandbox.generation);
                        tracing::info!(%tenant, pid = survivor.pid, "took over a running sandbox");
                        let last_active = record.identity.as_ref().and_then(|i| i.last_active_ms);
                        adopting.push(self.edge.tenants.adopt(sandbox, last_active));
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        // Alive but unusable: stop it, so a tenant never has two.
                        detail = format!("it could not be taken over ({e}); stopped it");
                        let group = nix::unistd::Pid::from_raw(survivor.pid as i32);
                        if still_running(survivor.pid, survivor.pid_start_ticks) {
                            let _ =
                                nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                        }
                    }
                }
            }
            // Whatever it wrote before it went is on disk: put it in the store.
            if let Err(e) = ctx.sync.sync(&tenant, None).await {
                detail = format!("{detail}; sync failed, changes kept locally: {e}");
            }
            tracing::info!(%tenant, %detail, "recovered a sandbox record");
            let t = Transition {
                tenant,
                state: SandboxState::Asleep,
                at_ms: unix_ms(),
                cause: Some(StopCause::Crash),
                identity: None,
                detail: Some(detail),
            };
            ctx.state.record(&t).await?;
            ctx.metrics.stopped(StopCause::Crash);
        }
        // Serving begins with every survivor ready: no request starts a second one.
        futures_util::future::join_all(adopting).await;
        // Pooled sandboxes are made once what survivors use is known, off the path.
        let runtime = ctx.runtime.clone();
        tokio::spawn(async move { runtime.fill_pool().await });
        Ok(())
    }

    /// Serves on `listener` until `shutdown` resolves or a successor asks on the
    /// control socket (see `handover`), then ends: in-flight requests finish, and
    /// WebSockets are closed with 1012 (service restart), at once, or after the drain
    /// deadline when a successor took over.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = Shutdown> + Send + 'static,
    ) -> anyhow::Result<()> {
        let ctx = self.edge.ctx.clone();
        let drain = ctx.config.drain_timeout.0;
        // Kept to hand over: the accept loop's copy goes when it stops.
        let handover_copy = listener.as_fd().try_clone_to_owned()?;
        let control_path = ctx.config.data_dir.join(handover::CONTROL_SOCKET);
        let _ = std::fs::remove_file(&control_path);
        let control = tokio::net::UnixListener::bind(&control_path)?;
        // Only this gateway's own user may ask for its socket.
        std::fs::set_permissions(&control_path, std::fs::Permissions::from_mode(0o600))?;
        let control_meta = std::fs::metadata(&control_path)?;
        let (control_inode, owner) = (control_meta.ino(), control_meta.uid());
        let (stop_accepting, accepting_stopped) = tokio::sync::oneshot::channel::<Duration>();
        let app = edge::router(self.edge.clone());
        let header_timeout = ctx.config.client_header_timeout.0;
        let server = accept(listener, app, header_timeout, accepting_stopped);
        let server = tokio::spawn(server);
        let (stop_workers, workers_stop) = tokio::sync::watch::channel(false);
        let sweep = match ctx.config.sweep.schedule.trim() {
            "" => None,
            expr => {
                let cron = crate::schedule::parse(expr).map_err(anyhow::Error::msg)?;
                Some(tokio::spawn(self.edge.sweep.clone().run(
                    self.edge.clone(),
                    cron,
                    workers_stop,
                )))
            }
        };

        let prewarm = tokio::spawn(
            self.edge
                .prewarm
                .clone()
                .run(self.edge.clone(), stop_workers.subscribe()),
        );
        let cleanup = match ctx.config.cleanup.schedule.trim() {
            "" => None,
            expr => {
                let cron = warren_core::config::cleanup_schedule(expr)
                    .map_err(|e| anyhow::anyhow!("invalid cleanup.schedule {expr:?}: {e}"))?;
                let worker = self.edge.cleanup.clone();
                let stop = stop_workers.subscribe();
                Some(tokio::spawn(worker.run(self.edge.clone(), cron, stop)))
            }
        };

        let (how, successor) = tokio::select! {
            how = shutdown => (how, None),
            successor = takeover_request(&control, owner) => (Shutdown::Leave, Some(successor)),
        };
        stop_workers.send_replace(true);
        if let Some(sweep) = sweep {
            let _ = sweep.await;
        }
        let _ = prewarm.await;
        if let Some(cleanup) = cleanup {
            let _ = cleanup.await;
        }
        ctx.draining.store(true, Ordering::Release);
        // Kept-alive connections linger (see `accept`) only for a successor: a
        // restart closes the port anyway, and lingering would only delay it.
        let linger = if successor.is_some() {
            drain
        } else {
            Duration::ZERO
        };
        let _ = stop_accepting.send(linger);
        // The socket goes to a successor at once: connections wait in its backlog
        // until the successor has the sandboxes (it takes the lock after us).
        let handed = successor.is_some_and(|successor| {
            let handed = successor.into_std().and_then(|s| {
                s.set_nonblocking(false)?;
                handover::hand_over(&s, handover_copy.as_fd())
            });
            if let Err(e) = &handed {
                tracing::error!(error = %e, "cannot hand the listening socket over");
            }
            handed.is_ok()
        });
        match how {
            Shutdown::Leave => {
                tracing::info!(
                    "shutting down: no new connections; running sandboxes stay for the next gateway"
                );
                self.edge.tenants.leave_all().await;
                ctx.runtime.drain_pool().await;
            }
            Shutdown::StopAll => {
                tracing::info!("shutting down: no new connections; stopping every sandbox");
                self.edge.tenants.stop_all(StopCause::Shutdown).await;
                ctx.runtime.drain_pool().await;
            }
        }
        let mut relays = ctx.relays.subscribe();
        if handed {
            // The sandboxes are the successor's now.
            let _ = self.lock.unlock();
            tracing::info!(
                "handed over; relaying open WebSockets until they close or the drain deadline"
            );
            let _ = tokio::time::timeout(drain, relays.wait_for(|n| *n == 0)).await;
        }
        drop(handover_copy);
        // Unless a successor has bound its own there by now.
        if std::fs::metadata(&control_path).is_ok_and(|m| m.ino() == control_inode) {
            let _ = std::fs::remove_file(&control_path);
        }
        ctx.closing.send_replace(true);
        // Every WebSocket gets its close frame before the process goes.
        if tokio::time::timeout(drain, relays.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::warn!("WebSockets still open after the drain deadline; closing them");
        }
        match tokio::time::timeout(drain, server).await {
            Ok(result) => result?,
            Err(_) => {
                tracing::warn!("connections still open after the drain deadline; closing them")
            }
        }
        Ok(())
    }
}

/// Waits for a successor's takeover request on the control socket, from a process of
/// user `owner` (checked by the kernel's word, `SO_PEERCRED`).
async fn takeover_request(
    control: &tokio::net::UnixListener,
    owner: u32,
) -> tokio::net::UnixStream {
    loop {
        let Ok((stream, _)) = control.accept().await else {
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        match rustix::net::sockopt::socket_peercred(&stream) {
            Ok(peer) if peer.uid.as_raw() == owner => {}
            peer => {
                tracing::warn!(?peer, "refused a takeover request from another user");
                continue;
            }
        }
        let Ok(mut s) = stream.into_std() else {
            continue;
        };
        // Read blocking (with a timeout), off the async workers.
        let asked = tokio::task::spawn_blocking(move || {
            s.set_nonblocking(false)?;
            let asked = handover::is_request(&mut s);
            s.set_nonblocking(true)?;
            Ok::<_, std::io::Error>((asked, s))
        })
        .await;
        if let Ok(Ok((true, s))) = asked
            && let Ok(stream) = tokio::net::UnixStream::from_std(s)
        {
            return stream;
        }
    }
}

/// Serves HTTP/1.1 (and upgrades) on `listener` until `stop`, then lets open
/// connections finish their requests. A client gets `header_timeout` to send its request
/// headers, or its connection is closed: a slow client cannot hold connections for free.
async fn accept(
    listener: TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    mut stop: tokio::sync::oneshot::Receiver<Duration>,
) {
    let service = hyper_util::service::TowerToHyperService::new(app);
    // `Some(linger)` once draining: how long a kept-alive connection may stay open
    // for its next request (answered with `Connection: close`).
    let (draining, _) = tokio::sync::watch::channel(None::<Duration>);
    // Every connection holds a sender; when all are gone, every connection has ended.
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors, say: let some connections end first.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            linger = &mut stop => {
                draining.send_replace(Some(linger.unwrap_or_default()));
                break;
            }
        };
        // Small answers go out at once, not after Nagle's delay; and a client that
        // vanished without a FIN is found out within about 90 s, so its WebSocket stops
        // holding its sandbox awake.
        let _ = tcp.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(CLIENT_KEEPALIVE_IDLE)
            .with_interval(CLIENT_KEEPALIVE_INTERVAL)
            .with_retries(3);
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        // Whether the connection has begun a request: one accepted just before a drain
        // may not have sent it yet, and closing it then would lose that request.
        let (begun, begun_rx) = tokio::sync::watch::channel(false);
        let inner = service.clone();
        let closing = draining.subscribe();
        let counted = hyper::service::service_fn(move |request| {
            begun.send_replace(true);
            let answer = hyper::service::Service::call(&inner, request);
            let closing = closing.borrow().is_some();
            async move {
                let mut response = answer.await?;
                // Draining: the client learns with this answer that the connection
                // ends, instead of finding it closed under its next request.
                if closing {
                    response.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), counted)
            .with_upgrades();
        let (mut drain_rx, open) = (draining.subscribe(), open.clone());
        tokio::spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                linger = async { drain_rx.wait_for(Option::is_some).await.map(|d| d.unwrap_or_default()) } => {
                    // Not closed under a client that may be sending a request right
                    // now: one that has not begun a request gets the header timeout to
                    // send one (answered with `Connection: close`), a kept-alive one
                    // `linger` to send its next; then it closes.
                    let linger = linger.unwrap_or_default();
                    let wait = if *begun_rx.borrow() { linger } else { header_timeout };
                    tokio::select! {
                        _ = connection.as_mut() => {
                            drop(open);
                            return;
                        }
                        _ = tokio::time::sleep(wait) => {}
                    }
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(open);
        });
    }
    drop(listener);
    draining.send_modify(|d| {
        d.get_or_insert_default();
    });
    drop(open);
    let _ = all_closed.recv().await;
}
