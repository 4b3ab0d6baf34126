//! The sync engine: one per gateway (or CLI run), serializing all store work of a
//! tenant behind that tenant's lock, so a restore never races a capture.
//!
//! When sync happens:
//! - `watch`: while a sandbox runs, file changes (inotify) start a snapshot after
//!   `debounce` of quiet, and at most `max_delay` after the first change; a safety
//!   pass runs every `safety_interval` to catch what events missed. Failures retry with
//!   backoff (1 s doubling to 30 s) and the tenant's status says so until it catches up.
//! - `sync`: on every stop (the gateway calls it once the process is gone), from the
//!   CLI, and from the sweep.
//! - `prepare`: before a sandbox starts, restore the workspace if the store holds a
//!   newer snapshot than the local copy matches; a matching copy is used as is.
//!
//! An inactive tenant's data goes in two steps: `remove_local` drops the copy on this
//! machine once a final sync has put all of it in the store (the next start restores
//! it), and `forget` deletes everything of the tenant from the store.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;
use warren_core::TenantId;
use warren_core::layout::Layout;

use crate::local::LocalState;
use crate::restore::{materialize_newest_intact, staging_path, state_after_restore};
use crate::retention::{RetentionPolicy, RetentionReport};
use crate::snapshot::{SnapshotRecord, SyncReport, sync_workspace};
use crate::store::Store;
use crate::watch::FileEvents;
use crate::{Freeze, StoreError, unix_ms};

#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub debounce: Duration,
    pub max_delay: Duration,
    pub safety_interval: Duration,
    pub upload_concurrency: usize,
    pub retention: RetentionPolicy,
    /// This engine (its data dir) is the only writer of its tenants' snapshots: a
    /// start need not ask the store whether the local copy is current, unless this
    /// engine has seen otherwise.
    pub single_writer: bool,
    /// Paths in every workspace (relative, with what is below them) that are never
    /// synced: caches an agent rebuilds.
    pub exclude: Vec<String>,
}

/// What `/api/status` and the CLI show of a tenant's sync.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncStatus {
    /// The snapshot the workspace last matched.
    pub seq: Option<u64>,
    pub last_sync_ms: Option<u64>,
    /// Changes seen since this time are not in the store yet.
    pub pending_since_ms: Option<u64>,
    pub failing_since_ms: Option<u64>,
    pub last_error: Option<String>,
}

#[derive(Default)]
struct TenantSync {
    lock: tokio::sync::Mutex<()>,
    status: Mutex<SyncStatus>,
    /// The store's newest snapshot as this engine knows it.
    head: Mutex<Head>,
}

/// What an engine knows of a tenant's newest snapshot in the store.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
enum Head {
    /// Nothing yet (this engine has not listed or written the tenant's snapshots).
    #[default]
    Unknown,
    /// As last listed or written (`None`: there is none).
    Seen(Option<u64>),
    /// A sync failed: the store may hold what the local copy does not know.
    Doubtful,
}

impl TenantSync {
    fn set_head(&self, head: Head) {
        *self.head.lock().unwrap_or_else(|e| e.into_inner()) = head;
    }

    fn head(&self) -> Head {
        *self.head.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What `prepare` did before a start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// The local copy matches the newest snapshot (or there is none): used as is.
    Current,
    /// The workspace was restored from this snapshot.
    Restored {
        seq: u64,
        set_aside: Option<PathBuf>,
    },
}

/// What one tenant's part of a sweep did.
#[derive(Debug, Clone, Serialize)]
pub struct SweepItem {
    pub tenant: String,
    pub seq: Option<u64>,
    pub created: bool,
    pub bytes_uploaded: u64,
    pub elapsed_ms: u64,
    pub error: Option<String>,
    pub retention: Option<RetentionReport>,
}

/// Hears how syncs went (the gateway's metrics). Called on the syncing task: it must
/// not block.
pub trait SyncObserver: Send + Sync {
    /// A capture of a workspace ended, whoever asked for it (the watch, a stop, a
    /// sweep, an operator).
    fn synced(&self, result: &Result<SyncReport, StoreError>);
    /// A running sandbox's changes reached the store, `lag` after the first of them.
    fn caught_up(&self, lag: Duration);
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SweepReport {
    pub tenants: usize,
    pub snapshots_created: usize,
    pub unchanged: usize,
    pub failed: usize,
    pub bytes_uploaded: u64,
    pub elapsed_ms: u64,
}

/// What `forget` deleted from the store.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Forgotten {
    pub snapshots: usize,
    pub chunks: usize,
}

pub struct SyncEngine {
    store: Store,
    layout: Layout,
    events: FileEvents,
    settings: SyncSettings,
    writer: String,
    tenants: Mutex<HashMap<TenantId, Arc<TenantSync>>>,
    observer: OnceLock<Arc<dyn SyncObserver>>,
}

impl SyncEngine {
    pub fn new(store: Store, layout: Layout, settings: SyncSettings, writer: String) -> Arc<Self> {
        Arc::new(Self {
            store,
            events: FileEvents::new(layout.tenants_dir()),
            layout,
            settings,
            writer,
            tenants: Mutex::new(HashMap::new()),
            observer: OnceLock::new(),
        })
    }

    /// Tells `observer` of every sync from now on. Only the first observer is kept.
    pub fn observe(&self, observer: Arc<dyn SyncObserver>) {
        let _ = self.observer.set(observer);
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn tenant(&self, tenant: &TenantId) -> Arc<TenantSync> {
        self.tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(tenant.clone())
            .or_default()
            .clone()
    }

    pub fn status(&self, tenant: &TenantId) -> SyncStatus {
        let t = self.tenant(tenant);
        let mut status = t.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if status.seq.is_none() {
            status.seq = LocalState::load(&self.layout.sync_state(tenant)).seq;
        }
        status
    }

    fn update(&self, tenant: &TenantId, f: impl FnOnce(&mut SyncStatus)) {
        let t = self.tenant(tenant);
        f(&mut t.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Captures the workspace and adds a snapshot if anything changed.
    pub async fn sync(
        &self,
        tenant: &TenantId,
        freeze: Option<&dyn Freeze>,
    ) -> Result<SyncReport, StoreError> {
        let t = self.tenant(tenant);
        let _guard = t.lock.lock().await;
        self.sync_locked(tenant, freeze).await
    }

    /// `sync`, asking `freeze_for` for the freeze with the tenant's lock held: a sandbox
    /// that started while the caller waited for the lock is frozen all the same.
    pub async fn sync_looking_up(
        &self,
        tenant: &TenantId,
        freeze_for: &(dyn Fn(&TenantId) -> Option<Arc<dyn Freeze>> + Sync),
    ) -> Result<SyncReport, StoreError> {
        let t = self.tenant(tenant);
        let _guard = t.lock.lock().await;
        let freeze = freeze_for(tenant);
        self.sync_locked(tenant, freeze.as_deref()).await
    }

    /// `sync`, for a caller that holds the tenant's lock.
    async fn sync_locked(
        &self,
        tenant: &TenantId,
        freeze: Option<&dyn Freeze>,
    ) -> Result<SyncReport, StoreError> {
        let workspace = self.layout.workspace(tenant);
        if !workspace.exists() {
            return Ok(SyncReport::default());
        }
        let result = sync_workspace(
            &self.store,
            tenant,
            &workspace,
            &self.layout.sync_state(tenant),
            freeze,
            &self.writer,
            &self.settings,
        )
        .await;
        if let Some(observer) = self.observer.get() {
            observer.synced(&result);
        }
        let now = unix_ms();
        // A successful sync compared the copy with the head, or wrote the next one.
        self.tenant(tenant).set_head(match &result {
            Ok(report) => Head::Seen(report.seq),
            Err(_) => Head::Doubtful,
        });
        self.update(tenant, |s| match &result {
            Ok(report) => {
                s.seq = report.seq;
                s.last_sync_ms = Some(now);
                s.failing_since_ms = None;
                s.last_error = None;
                // Without a freeze no agent runs, so nothing changes the workspace
                // (the final sync of a stop, a sweep of a sleeping tenant): what it
                // captured is all there was. A watch's syncs settle their own.
                if freeze.is_none() {
                    s.pending_since_ms = None;
                }
            }
            Err(e) => {
                s.failing_since_ms.get_or_insert(now);
                s.last_error = Some(e.to_string());
            }
        });
        match &result {
            Ok(r) if r.created => {
                tracing::info!(%tenant, seq = r.seq, chunks = r.chunks_uploaded, bytes = r.bytes_uploaded,
                frozen_ms = r.frozen_ms, elapsed_ms = r.elapsed_ms, "snapshot added")
            }
            Ok(_) => tracing::debug!(%tenant, "workspace unchanged"),
            Err(e) => {
                tracing::warn!(%tenant, error = %e, "sync failed; changes stay local until it succeeds")
            }
        }
        result
    }

    /// Makes the workspace match the newest snapshot before a start, unless the local
    /// copy already does (then nothing is read or written).
    pub async fn prepare(&self, tenant: &TenantId) -> Result<Prepared, StoreError> {
        let t = self.tenant(tenant);
        let _guard = t.lock.lock().await;
        let workspace = self.layout.workspace(tenant);
        let state_path = self.layout.sync_state(tenant);
        let local = LocalState::load(&state_path);
        // With no other writer, the copy's own record of the snapshot it matches is the
        // head, unless this engine has seen another or a sync failed: no need to ask
        // the store. Were there another writer after all, the next sync would refuse
        // the stale copy (`Diverged`) and keep it; the start after that asks.
        let trusted = match t.head() {
            Head::Seen(head) => head == local.seq,
            Head::Unknown => local.seq.is_some(),
            Head::Doubtful => false,
        };
        if self.settings.single_writer && trusted && workspace.exists() {
            return Ok(Prepared::Current);
        }
        let seqs = match self.store.snapshot_seqs(tenant).await {
            Ok(seqs) => seqs,
            // The store is down: a local copy is the best there is; without one we
            // cannot tell a new tenant from a lost disk, so refuse rather than start empty.
            Err(e) if workspace.exists() => {
                tracing::warn!(%tenant, error = %e, "store unreachable; starting from the local copy");
                return Ok(Prepared::Current);
            }
            Err(e) => return Err(e),
        };
        t.set_head(Head::Seen(seqs.last().copied()));
        let Some(&head) = seqs.last() else {
            std::fs::create_dir_all(&workspace)?;
            return Ok(Prepared::Current);
        };
        if workspace.exists() && local.seq.is_some_and(|s| s >= head) {
            return Ok(Prepared::Current);
        }
        let staging = staging_path(&workspace, "restore");
        std::fs::create_dir_all(self.layout.tenant_dir(tenant))?;
        let (seq, manifest) = materialize_newest_intact(
            &self.store,
            tenant,
            &seqs,
            &staging,
            self.settings.upload_concurrency,
        )
        .await?;
        let set_aside = self.set_aside(tenant, &workspace, &local)?;
        std::fs::rename(&staging, &workspace)?;
        state_after_restore(&workspace, seq, manifest)?.save(&state_path)?;
        self.update(tenant, |s| s.seq = Some(seq));
        tracing::info!(%tenant, seq, set_aside = ?set_aside, "workspace restored from the store");
        Ok(Prepared::Restored { seq, set_aside })
    }

    /// Moves an existing workspace out of the way. A copy with changes no snapshot
    /// holds is kept under `conflicts/`; one that matches its snapshot is deleted.
    fn set_aside(
        &self,
        tenant: &TenantId,
        workspace: &std::path::Path,
        local: &LocalState,
    ) -> Result<Option<PathBuf>, StoreError> {
        if !workspace.exists() {
            return Ok(None);
        }
        let captured = crate::capture::capture(workspace, local, i64::MAX, &self.settings.exclude)?;
        let unsynced = local.seq.is_none() && !captured.entries.is_empty()
            || !captured.contents.is_empty()
            || captured.entries.len() != local.manifest.entries.len();
        if unsynced {
            let dir = self.layout.conflicts(tenant);
            std::fs::create_dir_all(&dir)?;
            let kept = dir.join(format!("workspace-{}", unix_ms()));
            std::fs::rename(workspace, &kept)?;
            tracing::warn!(%tenant, kept = %kept.display(), "the local workspace had changes no snapshot holds; kept aside");
            Ok(Some(kept))
        } else {
            std::fs::remove_dir_all(workspace)?;
            Ok(None)
        }
    }

    /// Every snapshot of a tenant, oldest first.
    pub async fn snapshots(&self, tenant: &TenantId) -> Result<Vec<SnapshotRecord>, StoreError> {
        let mut out = Vec::new();
        for seq in self.store.snapshot_seqs(tenant).await? {
            out.push(self.store.snapshot(tenant, seq).await?);
        }
        Ok(out)
    }

    /// Point-in-time restore: makes snapshot `seq` the workspace and the new head (a
    /// new snapshot with its content), so later starts keep it. The sandbox must not
    /// run. The workspace it replaces is synced first, so nothing is lost.
    pub async fn restore_to(&self, tenant: &TenantId, seq: u64) -> Result<SyncReport, StoreError> {
        let t = self.tenant(tenant);
        let _guard = t.lock.lock().await;
        self.sync_locked(tenant, None).await?;
        let workspace = self.layout.workspace(tenant);
        let staging = staging_path(&workspace, "restore");
        let record = self.store.snapshot(tenant, seq).await?;
        std::fs::create_dir_all(self.layout.tenant_dir(tenant))?;
        let manifest = crate::restore::materialize(
            &self.store,
            tenant,
            &record,
            &staging,
            self.settings.upload_concurrency,
        )
        .await
        .inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&staging);
        })?;
        if workspace.exists() {
            std::fs::remove_dir_all(&workspace)?;
        }
        std::fs::rename(&staging, &workspace)?;
        // The head stays the parent, so the restored content becomes a new snapshot
        // after it; the stats are dropped so every restored file is read.
        let mut state = state_after_restore(&workspace, seq, manifest)?;
        if let Some(head) = self.store.snapshot_seqs(tenant).await?.last().copied() {
            let head_record = self.store.snapshot(tenant, head).await?;
            state.manifest =
                crate::snapshot::read_manifest(&self.store, tenant, &head_record).await?;
            state.seq = Some(head);
            state.stats.clear();
        }
        state.save(&self.layout.sync_state(tenant))?;
        self.sync_locked(tenant, None).await
    }

    /// The newest snapshot created at or before `at_ms`.
    pub async fn snapshot_at(
        &self,
        tenant: &TenantId,
        at_ms: u64,
    ) -> Result<SnapshotRecord, StoreError> {
        self.snapshots(tenant)
            .await?
            .into_iter()
            .rev()
            .find(|r| r.created_ms <= at_ms)
            .ok_or_else(|| {
                StoreError::NotFound(format!("a snapshot of {tenant} at or before that time"))
            })
    }

    /// Removes the tenant's copy on this machine (its workspace, its sync state, the
    /// agent's log) once the store holds all of it: the workspace is synced first and
    /// stays if that fails. Copies set aside under `conflicts/` stay too (no snapshot
    /// holds them). The sandbox must not run; its next start restores the workspace
    /// from the store. Answers the snapshot the removed copy matched.
    pub async fn remove_local(&self, tenant: &TenantId) -> Result<Option<u64>, StoreError> {
        let t = self.tenant(tenant);
        let _guard = t.lock.lock().await;
        let synced = self.sync_locked(tenant, None).await?;
        remove_tree(self.layout.workspace(tenant)).await?;
        for file in [
            self.layout.sync_state(tenant),
            self.layout.agent_log(tenant),
        ] {
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        // Gone with its last file; one that still holds conflicts stays.
        let _ = std::fs::remove_dir(self.layout.tenant_dir(tenant));
        *t.status.lock().unwrap_or_else(|e| e.into_inner()) = SyncStatus::default();
        tracing::info!(%tenant, seq = synced.seq, "local workspace removed; the store keeps it");
        Ok(synced.seq)
    }

    /// Deletes every snapshot and chunk of the tenant from the store, then what is left
    /// of it on this machine. Snapshot records go first, oldest first, and chunks only
    /// once none is left: a delete cut short leaves the newest snapshots whole, never a
    /// record naming a missing chunk. The sandbox must not run; its next start begins
    /// with an empty workspace.
    pub async fn forget(&self, tenant: &TenantId) -> Result<Forgotten, StoreError> {
        let t = self.tenant(tenant);
        let _guard = t.lock.lock().await;
        let mut forgotten = Forgotten::default();
        for seq in self.store.snapshot_seqs(tenant).await? {
            self.store.delete_snapshot(tenant, seq).await?;
            forgotten.snapshots += 1;
        }
        t.set_head(Head::Seen(None));
        for (id, _) in self.store.chunks(tenant).await? {
            self.store.delete_chunk(tenant, &id).await?;
            forgotten.chunks += 1;
        }
        remove_tree(self.layout.tenant_dir(tenant)).await?;
        *t.status.lock().unwrap_or_else(|e| e.into_inner()) = SyncStatus::default();
        tracing::info!(%tenant, snapshots = forgotten.snapshots, chunks = forgotten.chunks, "deleted from the store");
        Ok(forgotten)
    }

    /// Thins a tenant's snapshots and collects unreferenced chunks.
    pub async fn retention(&self, tenant: &TenantId) -> Result<RetentionReport, StoreError> {
        let t = self.tenant(tenant);
        let _guard = t.lock.lock().await;
        crate::retention::apply(&self.store, tenant, &self.settings.retention, unix_ms()).await
    }

    /// Syncs EVERY tenant with a workspace on this machine, then applies retention, at
    /// most `concurrency` at a time. `freeze_for` gives the freeze of a running sandbox,
    /// asked with the tenant's lock held, so a sandbox started meanwhile is frozen too;
    /// `progress` hears of each tenant as it finishes.
    pub async fn sweep(
        self: &Arc<Self>,
        concurrency: usize,
        freeze_for: &(dyn Fn(&TenantId) -> Option<Arc<dyn Freeze>> + Sync),
        progress: &(dyn Fn(&SweepItem) + Sync),
    ) -> Result<SweepReport, StoreError> {
        let started = Instant::now();
        let tenants = self.layout.local_tenants()?;
        let mut report = SweepReport {
            tenants: tenants.len(),
            ..SweepReport::default()
        };
        let jobs: Vec<_> = tenants
            .into_iter()
            .map(|tenant| self.sweep_one(tenant, freeze_for))
            .collect();
        let mut items = futures_util::stream::iter(jobs).buffer_unordered(concurrency.max(1));
        while let Some(item) = items.next().await {
            progress(&item);
            match (&item.error, item.created) {
                (Some(_), _) => report.failed += 1,
                (None, true) => report.snapshots_created += 1,
                (None, false) => report.unchanged += 1,
            }
            report.bytes_uploaded += item.bytes_uploaded;
        }
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    async fn sweep_one(
        &self,
        tenant: TenantId,
        freeze_for: &(dyn Fn(&TenantId) -> Option<Arc<dyn Freeze>> + Sync),
    ) -> SweepItem {
        let mut item = SweepItem {
            tenant: tenant.to_string(),
            seq: None,
            created: false,
            bytes_uploaded: 0,
            elapsed_ms: 0,
            error: None,
            retention: None,
        };
        match self.sync_looking_up(&tenant, freeze_for).await {
            Ok(r) => {
                (item.seq, item.created, item.bytes_uploaded, item.elapsed_ms) =
                    (r.seq, r.created, r.bytes_uploaded, r.elapsed_ms);
                match self.retention(&tenant).await {
                    Ok(retention) => item.retention = Some(retention),
                    Err(e) => tracing::warn!(%tenant, error = %e, "retention failed"),
                }
            }
            Err(e) => item.error = Some(e.to_string()),
        }
        item
    }

    /// Syncs a running sandbox's workspace as it changes, until the returned `Watch`
    /// is stopped or dropped.
    pub fn watch(self: &Arc<Self>, tenant: TenantId, freeze: Arc<dyn Freeze>) -> Watch {
        let (stop_tx, stop_rx) = oneshot::channel();
        let engine = self.clone();
        // Subscribed before returning: no change after `watch` is missed.
        let changes = self
            .events
            .subscribe(&tenant, &self.layout.workspace(&tenant));
        let task =
            tokio::spawn(async move { engine.watch_loop(tenant, freeze, changes, stop_rx).await });
        Watch {
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    async fn watch_loop(
        self: Arc<Self>,
        tenant: TenantId,
        freeze: Arc<dyn Freeze>,
        mut changes: tokio::sync::mpsc::UnboundedReceiver<()>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let workspace = self.layout.workspace(&tenant);
        let mut pending_since: Option<Instant> = None;
        // One look soon after the start: what the agent wrote while it booted, before
        // anyone watched, is not left to the safety pass.
        let mut due: Option<Instant> = Some(Instant::now() + self.settings.max_delay);
        let mut backoff = Duration::from_secs(1);
        let mut safety = tokio::time::interval_at(
            Instant::now() + self.settings.safety_interval,
            self.settings.safety_interval,
        );
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Some(()) = changes.recv() => {
                    // Drain a burst at once: one timer update per wake-up.
                    while changes.try_recv().is_ok() {}
                    let now = Instant::now();
                    let first = *pending_since.get_or_insert(now);
                    if pending_since == Some(now) {
                        self.update(&tenant, |s| { s.pending_since_ms.get_or_insert(unix_ms()); });
                    }
                    // Trailing debounce, but never later than max_delay after the first change.
                    let debounced = (now + self.settings.debounce).min(first + self.settings.max_delay);
                    due = Some(due.map_or(debounced, |d| d.max(debounced).min(first + self.settings.max_delay)));
                }
                _ = crate_sleep_until(due) => {
                    due = None;
                    let (started, started_ms) = (Instant::now(), unix_ms());
                    match self.sync(&tenant, Some(&*freeze)).await {
                        Ok(_) => {
                            backoff = Duration::from_secs(1);
                            if let (Some(first), Some(observer)) =
                                (pending_since, self.observer.get())
                            {
                                observer.caught_up(first.elapsed());
                            }
                            // Everything seen before the capture is in the store now.
                            // Changes queued meanwhile count from the capture's start,
                            // and their events (still queued) set the next timer.
                            let (next, next_ms) = if changes.is_empty() { (None, None) } else { (Some(started), Some(started_ms)) };
                            pending_since = pending_since.and(next);
                            self.update(&tenant, |s| s.pending_since_ms = s.pending_since_ms.and(next_ms));
                        }
                        Err(_) => {
                            due = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                    }
                }
                _ = safety.tick() => {
                    if due.is_none() {
                        due = Some(Instant::now());
                    }
                }
            }
        }
        self.events.unsubscribe(&tenant, &workspace);
    }
}

async fn crate_sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A running watch. `stop` ends it and waits for an in-flight sync to finish.
pub struct Watch {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Watch {
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Removes `dir` and everything below it, if it is there, off the async threads (a
/// workspace may hold many files).
async fn remove_tree(dir: std::path::PathBuf) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    })
    .await
    .map_err(std::io::Error::other)?
}
