//! An upgrade under load: tenants each hold a WebSocket, HTTP loops request
//! `/api/history`, and `warren serve --takeover` replaces the gateway, several times in
//! a row. Requests are counted by phase: before the first takeover, during one (from
//! the successor's spawn until the old gateway has exited: it relays its open
//! WebSockets until the drain deadline, then closes them with 1012), and after.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use tokio::time::Instant;

use super::clients::Backoff;
use super::{
    DRAIN_TIMEOUT, HttpCount, PHASE, Settings, Survival, Traffic, WsSummary, by_phase, gateway,
    sandbox_processes, survival, ws_users,
};
use crate::launch::{Gateway, GatewayStopped, Listen};

/// One takeover.
pub struct Takeover {
    /// From the successor's spawn to its `warren listening` line.
    pub ready_after: Duration,
    /// From the successor's spawn until the old gateway exited (0).
    pub old_exited_after: Duration,
}

/// What the upgrades under load showed.
pub struct UnderLoad {
    pub takeovers: Vec<Takeover>,
    /// By phase (`PHASES`).
    pub new_connection: [HttpCount; 3],
    pub keep_alive: [HttpCount; 3],
    pub ws: WsSummary,
    pub sandboxes: Survival,
    /// The old gateways' logs (level warn).
    pub old_logs: Vec<String>,
    pub stopped: GatewayStopped,
}

pub async fn run(warren: &Path, dir: &Path, settings: &Settings) -> anyhow::Result<UnderLoad> {
    let users = ws_users(settings.clients);
    let mut gateway = gateway(warren, dir, users.len() + 1).await?;
    let traffic = Traffic::start(&gateway, &users, settings.interval, Backoff::CHAT).await?;
    let before = sandbox_processes(&gateway.data_dir).await?;
    tokio::time::sleep(PHASE).await;

    let (mut takeovers, mut windows, mut old_logs) = (Vec::new(), Vec::new(), Vec::new());
    for k in 1..=settings.upgrades {
        let spawned = Instant::now();
        let next =
            Gateway::start_in(warren, dir, Listen::TakeOver, &format!("gateway-{k}.log")).await?;
        ensure!(
            next.address == gateway.address,
            "the successor listens on {}, not {}",
            next.address,
            gateway.address
        );
        let ready_after = next.ready_after;
        let old = std::mem::replace(&mut gateway, next);
        let (_, log) = old
            .end(None, DRAIN_TIMEOUT + Duration::from_secs(30))
            .await
            .context("the old gateway after the takeover")?;
        old_logs.extend(log);
        windows.push((spawned, Instant::now()));
        takeovers.push(Takeover {
            ready_after,
            old_exited_after: spawned.elapsed(),
        });
        tokio::time::sleep(PHASE).await;
    }
    let seen = traffic.stop().await?;
    let sandboxes = survival(&gateway.data_dir, &before).await?;
    let stopped = gateway.stop().await?;
    Ok(UnderLoad {
        takeovers,
        new_connection: by_phase(&seen.new_connection, &windows),
        keep_alive: by_phase(&seen.keep_alive, &windows),
        ws: WsSummary::of(&seen.tallies),
        sandboxes,
        old_logs,
        stopped,
    })
}
