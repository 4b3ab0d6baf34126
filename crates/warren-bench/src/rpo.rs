//! The RPO under a steady writer, measured end to end: a real gateway (local-directory
//! store, default sync settings), one user whose echo agent gets a WebSocket message
//! every `interval`. The agent appends each message to `history.jsonl` in its
//! workspace before it echoes it, so an echo is an acknowledged write; the client
//! notes the wall-clock time it read each echo.
//!
//! Afterwards every snapshot in the store is read (its record, and the history file as
//! the snapshot holds it), which says exactly which messages each snapshot contains.
//! The RPO of a message is the `created_ms` of the first snapshot that contains it,
//! minus the time of its echo: how long an acknowledged write was at risk. Records are
//! created after their chunks, so `created_ms` is when the snapshot was in the store.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, ensure};
use tokio::time::{Instant, MissedTickBehavior};
use warren_core::TenantId;
use warren_store::Store;
use warren_store::manifest::Kind;
use warren_store::snapshot::read_manifest;

use crate::client::WsConn;
use crate::launch::{Gateway, GatewayStopped};
use crate::load::Samples;

/// The tenant that writes.
const USER: &str = "user_rpo";
/// The echo agent's history file, in its workspace.
const HISTORY: &str = "history.jsonl";
/// How long the last message may take to reach the store before the run fails.
const SETTLE_DEADLINE: Duration = Duration::from_secs(15);

pub struct Rpo {
    pub messages: usize,
    pub interval: Duration,
    /// Per message: from its echo to the first snapshot holding it in the store.
    pub delays: Samples,
    /// Messages in a snapshot created before the client read their echo (counted as 0).
    pub before_ack: usize,
    /// Snapshots created while the writer ran.
    pub snapshots: usize,
    pub stopped: GatewayStopped,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub async fn run(
    warren: &Path,
    dir: &Path,
    messages: usize,
    interval: Duration,
) -> anyhow::Result<Rpo> {
    let gateway = Gateway::start(warren, dir, 4).await?;
    let tenant = TenantId::parse(USER).map_err(|e| anyhow::anyhow!("{USER}: {e:?}"))?;
    // The gateway's store: `[store]` on its defaults, a directory in its data dir.
    let store = Store::local(&gateway.data_dir.join("store"), "")?;

    let mut ws = WsConn::connect(gateway.address, Some(&gateway.cookie(USER)?)).await?;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut acks = Vec::with_capacity(messages);
    for i in 0..messages {
        ticker.tick().await;
        ws.round_trip(&format!("rpo-{i:06}"))
            .await
            .with_context(|| format!("message {i}"))?;
        acks.push(unix_ms());
    }
    let ended = unix_ms();

    // Wait until the last message is in the store, then read every snapshot.
    let deadline = Instant::now() + SETTLE_DEADLINE;
    let held = loop {
        let held = messages_per_snapshot(&store, &tenant).await?;
        if held.last().is_some_and(|&(_, n)| n >= messages) {
            break held;
        }
        ensure!(
            Instant::now() < deadline,
            "the last message was not in the store {SETTLE_DEADLINE:?} after the writer ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ws.close().await;
    let stopped = gateway.stop().await?;

    let mut delays = Vec::with_capacity(messages);
    let mut before_ack = 0;
    for (i, &ack) in acks.iter().enumerate() {
        let &(created, _) = held
            .iter()
            .find(|&&(_, n)| n > i)
            .context("no snapshot holds a message")?;
        if created < ack {
            before_ack += 1;
        }
        delays.push(Duration::from_millis(created.saturating_sub(ack)));
    }
    Ok(Rpo {
        messages,
        interval,
        delays: Samples::new(delays),
        before_ack,
        snapshots: held.iter().filter(|&&(c, _)| c <= ended).count(),
        stopped,
    })
}

/// For every snapshot, oldest first: when it was created, and how many of the writer's
/// messages its history file holds (the file only grows, so they are the first ones).
async fn messages_per_snapshot(
    store: &Store,
    tenant: &TenantId,
) -> anyhow::Result<Vec<(u64, usize)>> {
    let mut out = Vec::new();
    for seq in store.snapshot_seqs(tenant).await? {
        let record = store.snapshot(tenant, seq).await?;
        let manifest = read_manifest(store, tenant, &record).await?;
        let mut history = Vec::new();
        if let Some(entry) = manifest
            .entries
            .iter()
            .find(|e| e.path == HISTORY && e.kind == Kind::File)
        {
            for chunk in &entry.chunks {
                history.extend(store.get_chunk(tenant, chunk).await?);
            }
        }
        let count = String::from_utf8_lossy(&history)
            .lines()
            .filter(|l| l.contains("\"rpo-"))
            .count();
        out.push((record.created_ms, count));
    }
    Ok(out)
}
