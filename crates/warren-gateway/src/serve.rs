//! Running the gateway: recover what a previous run left, serve until told to stop,
//! then stop accepting, stop every sandbox and let open connections finish, within a
//! deadline.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use warren_core::sandbox::{SandboxState, StopCause};
use warren_runtime::Survivor;
use warren_runtime::process::still_running;
use warren_state::Transition;

use crate::edge::{self, Edge};
use crate::{Context, unix_ms};

/// How long to wait before accepting again after `accept` failed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// TCP keepalive on client connections: probes after this much silence...
const CLIENT_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// ...then every this long, 3 times.
const CLIENT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How long open connections get to finish after the sandboxes stopped.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

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
}

impl Gateway {
    pub fn new(ctx: Context) -> Self {
        Self {
            edge: Edge::new(Arc::new(ctx)),
        }
    }

    /// Settles sandboxes a previous run of the gateway recorded as live: one that still
    /// runs and is the one recorded (same process and start time, same container) is
    /// taken over as it is; one that ended meanwhile is recorded as a crash and its
    /// workspace synced from disk.
    pub async fn recover(&self) -> anyhow::Result<()> {
        let ctx = &self.edge.ctx;
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
                        tracing::info!(%tenant, pid = survivor.pid, "took over a running sandbox");
                        self.edge.tenants.adopt(sandbox);
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
        }
        Ok(())
    }

    /// Serves on `listener` until `shutdown` resolves, then ends as it says: in-flight
    /// requests finish, WebSockets are closed with 1012 (service restart).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = Shutdown> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_accepting, accepting_stopped) = tokio::sync::oneshot::channel::<()>();
        let app = edge::router(self.edge.clone());
        let header_timeout = self.edge.ctx.config.client_header_timeout.0;
        let server = accept(listener, app, header_timeout, accepting_stopped);
        let server = tokio::spawn(server);
        let (stop_workers, workers_stop) = tokio::sync::watch::channel(false);
        let sweep = match self.edge.ctx.config.sweep.schedule.trim() {
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

        let how = shutdown.await;
        stop_workers.send_replace(true);
        if let Some(sweep) = sweep {
            let _ = sweep.await;
        }
        let ctx = &self.edge.ctx;
        ctx.draining.store(true, Ordering::Release);
        let _ = stop_accepting.send(());
        match how {
            Shutdown::Leave => {
                tracing::info!(
                    "shutting down: no new connections; running sandboxes stay for the next gateway"
                );
                self.edge.tenants.leave_all().await;
            }
            Shutdown::StopAll => {
                tracing::info!("shutting down: no new connections; stopping every sandbox");
                self.edge.tenants.stop_all(StopCause::Shutdown).await;
            }
        }
        ctx.closing.send_replace(true);
        // Every WebSocket gets its close frame before the process goes.
        let mut relays = ctx.relays.subscribe();
        if tokio::time::timeout(DRAIN_DEADLINE, relays.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::warn!("WebSockets still open after the drain deadline; closing them");
        }
        match tokio::time::timeout(DRAIN_DEADLINE, server).await {
            Ok(result) => result?,
            Err(_) => {
                tracing::warn!("connections still open after the drain deadline; closing them")
            }
        }
        Ok(())
    }
}

/// Serves HTTP/1.1 (and upgrades) on `listener` until `stop`, then lets open
/// connections finish their requests. A client gets `header_timeout` to send its request
/// headers, or its connection is closed: a slow client cannot hold connections for free.
async fn accept(
    listener: TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let service = hyper_util::service::TowerToHyperService::new(app);
    let (draining, _) = tokio::sync::watch::channel(false);
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
            _ = &mut stop => break,
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
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service.clone())
            .with_upgrades();
        let (mut drain, open) = (draining.subscribe(), open.clone());
        tokio::spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = async { drain.wait_for(|d| *d).await.map(|_| ()) } => {
                    // Finish the request in flight, then close.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(open);
        });
    }
    drop(listener);
    draining.send_replace(true);
    drop(open);
    let _ = all_closed.recv().await;
}
