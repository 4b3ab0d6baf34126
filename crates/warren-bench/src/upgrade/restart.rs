//! A plain restart: SIGTERM (the gateway syncs every running sandbox once more, closes
//! its port, closes the WebSockets with 1012 and exits, leaving the sandboxes running),
//! then a new gateway on the same address once the old one has exited, as a service
//! manager's restart does. The WebSocket clients reconnect with `warren chat`'s
//! backoff; the HTTP loops time how long the port was closed.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::clients::{Attempt, Backoff, Outcome};
use super::{
    HttpCount, PHASE, Settings, Survival, Traffic, WsSummary, by_phase, gateway, sandbox_processes,
    survival, ws_users,
};
use crate::launch::{Gateway, GatewayStopped, Listen};

/// What the restart showed.
pub struct Restart {
    /// SIGTERM to exit of the old gateway (a last sync of every sandbox, the port
    /// closed, WebSockets closed with 1012).
    pub stop_took: Duration,
    /// The new gateway's spawn to its `warren listening` line.
    pub ready_after: Duration,
    /// From the first refused connection to the end of the last one, and how many.
    pub port_closed: Option<Duration>,
    /// From the start of the first failed request to the end of the last.
    pub failing: Option<Duration>,
    pub new_connection: [HttpCount; 3],
    pub keep_alive: [HttpCount; 3],
    pub ws: WsSummary,
    pub sandboxes: Survival,
    pub old_log: Vec<String>,
    pub stopped: GatewayStopped,
}

pub async fn run(warren: &Path, dir: &Path, settings: &Settings) -> anyhow::Result<Restart> {
    let users = ws_users(settings.clients);
    let old = gateway(warren, dir, users.len() + 1).await?;
    let traffic = Traffic::start(&old, &users, settings.interval, Backoff::CHAT).await?;
    let before = sandbox_processes(&old.data_dir).await?;
    let (address, data_dir) = (old.address, old.data_dir.clone());
    tokio::time::sleep(PHASE).await;

    let signalled = Instant::now();
    let (stop_took, old_log) = old
        .end(Some(Signal::SIGTERM), Duration::from_secs(60))
        .await
        .context("the old gateway on SIGTERM")?;
    let gateway = Gateway::start_in(warren, dir, Listen::At(address), "gateway-2.log").await?;
    let window = (signalled, Instant::now());
    let ready_after = gateway.ready_after;
    tokio::time::sleep(PHASE).await;
    let seen = traffic.stop().await?;
    let sandboxes = survival(&data_dir, &before).await?;
    let stopped = gateway.stop().await?;

    let span = |attempts: &mut dyn Iterator<Item = &Attempt>| {
        let (mut from, mut to) = (None::<Instant>, None::<Instant>);
        for a in attempts {
            from = Some(from.map_or(a.at, |f| f.min(a.at)));
            let end = a.at + a.took;
            to = Some(to.map_or(end, |t| t.max(end)));
        }
        from.zip(to).map(|(f, t)| t - f)
    };
    let all = || seen.new_connection.iter().chain(&seen.keep_alive);
    Ok(Restart {
        stop_took,
        ready_after,
        port_closed: span(&mut all().filter(|a| a.outcome == Outcome::Refused)),
        failing: span(&mut all().filter(|a| a.outcome != Outcome::Ok)),
        new_connection: by_phase(&seen.new_connection, &[window]),
        keep_alive: by_phase(&seen.keep_alive, &[window]),
        ws: WsSummary::of(&seen.tallies),
        sandboxes,
        old_log,
        stopped,
    })
}
