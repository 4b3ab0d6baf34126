//! Writing a snapshot: capture (frozen), seal (thawed), upload what the store lacks,
//! then add the record, last.
//!
//! A record names its manifest's chunks, and the manifest names the files' chunks; all
//! of them are uploaded before the record is created, so a record in the store never
//! names a chunk that is not there (invariant 3). Chunks are skipped only if the head
//! snapshot holds them (the head is complete, and retention never deletes it). The
//! record's sequence number is taken with create-if-absent, so of two writers only one
//! adds the next snapshot; the other is told (`Diverged`) and keeps its copy locally.

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use warren_core::TenantId;

use crate::capture::capture;
use crate::chunk::{self, ChunkRef, DATA_CHUNKS, MANIFEST_CHUNKS, Sealed};
use crate::local::LocalState;
use crate::manifest::Manifest;
use crate::store::Store;
use crate::{Freeze, StoreError, unix_ms};

/// The record of one snapshot: small, immutable, written last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub seq: u64,
    pub parent: Option<u64>,
    pub created_ms: u64,
    /// Which gateway (or CLI run) wrote it.
    pub writer: String,
    pub files: u64,
    pub bytes: u64,
    /// The manifest, itself stored as chunks.
    pub manifest: Vec<ChunkRef>,
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The snapshot the workspace now matches (`None`: empty and never synced).
    pub seq: Option<u64>,
    /// False when nothing had changed since the last snapshot.
    pub created: bool,
    pub chunks_uploaded: u64,
    pub bytes_uploaded: u64,
    pub files: u64,
    pub bytes: u64,
    /// How long the sandbox was frozen.
    pub frozen_ms: u64,
    pub elapsed_ms: u64,
}

/// Every chunk a snapshot needs: its files' and its manifest's.
pub fn chunk_set(record: &SnapshotRecord, manifest: &Manifest) -> HashSet<chunk::ChunkId> {
    manifest
        .entries
        .iter()
        .flat_map(|e| e.chunks.iter().map(|c| c.id))
        .chain(record.manifest.iter().map(|c| c.id))
        .collect()
}

/// Reads and checks a snapshot's manifest.
pub async fn read_manifest(
    store: &Store,
    tenant: &TenantId,
    record: &SnapshotRecord,
) -> Result<Manifest, StoreError> {
    let mut bytes = Vec::new();
    for c in &record.manifest {
        bytes.extend(store.get_chunk(tenant, c).await?);
    }
    let manifest = Manifest::decode(&bytes)
        .map_err(|e| StoreError::Corrupt(format!("manifest of snapshot {}: {e}", record.seq)))?;
    manifest.validate()?;
    Ok(manifest)
}

/// Thaws a frozen sandbox when dropped, so no early return or cancellation can leave
/// it stopped.
struct Frozen<'a>(Option<&'a dyn Freeze>);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.0 {
            f.thaw();
        }
    }
}

/// Runs a blocking freeze without stalling the runtime's other tasks where it can.
fn freeze_now(f: &dyn Freeze) -> std::io::Result<()> {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
            tokio::task::block_in_place(|| f.freeze())
        }
        _ => f.freeze(),
    }
}

/// Captures `workspace` and, if it changed, adds a snapshot after the head. The caller
/// holds the tenant's sync lock.
///
/// The copy must match the store's head (the snapshot it was last written to or
/// restored from): a copy behind the head is stale or has a rival writer, and adding
/// it would roll the tenant back, so it is refused with `Diverged` and kept locally.
/// The same holds when another writer takes the next sequence number first. A store
/// that lost the snapshot this copy matched gets everything uploaded again.
pub async fn sync_workspace(
    store: &Store,
    tenant: &TenantId,
    workspace: &Path,
    state_path: &Path,
    freeze: Option<&dyn Freeze>,
    writer: &str,
    settings: &crate::engine::SyncSettings,
) -> Result<SyncReport, StoreError> {
    let (upload_concurrency, exclude) = (settings.upload_concurrency, &settings.exclude);
    let started = Instant::now();
    let mut state = LocalState::load(state_path);
    let head = store.snapshot_seqs(tenant).await?.last().copied();
    let parent = match (state.seq, head) {
        (None, None) => None,
        (Some(mine), Some(head)) if mine == head => Some(store.snapshot(tenant, head).await?),
        (Some(mine), Some(head)) if mine < head => {
            return Err(StoreError::Diverged {
                tenant: tenant.to_string(),
                local: Some(mine),
                head,
            });
        }
        (None, Some(head)) => {
            return Err(StoreError::Diverged {
                tenant: tenant.to_string(),
                local: None,
                head,
            });
        }
        (Some(mine), _) => {
            tracing::warn!(%tenant, mine, ?head, "the store lost the snapshot this copy matched; uploading it all again");
            state = LocalState::default();
            None
        }
    };
    // Everything the parent holds is in the store: the head is complete, and retention
    // never deletes it.
    let present = match &parent {
        Some(record) => chunk_set(record, &state.manifest),
        None => HashSet::new(),
    };

    // Capture, frozen. The walk is blocking I/O; the guard thaws whatever happens.
    let started_ns = (unix_ms() as i64) * 1_000_000;
    let frozen_at = Instant::now();
    let guard = Frozen(freeze);
    if let Some(f) = freeze {
        freeze_now(f).map_err(|e| StoreError::Freeze(e.to_string()))?;
    }
    let captured = {
        let (workspace, known) = (workspace.to_owned(), state.clone());
        let exclude = exclude.to_vec();
        tokio::task::spawn_blocking(move || capture(&workspace, &known, started_ns, &exclude)).await
    };
    drop(guard);
    let frozen_ms = frozen_at.elapsed().as_millis() as u64;
    let captured = captured.map_err(|e| StoreError::Io(std::io::Error::other(e)))??;

    // Seal what was read.
    let (mut entries, stats) = (captured.entries, captured.stats);
    let contents = captured.contents;
    let sealed: Vec<(usize, Vec<Sealed>)> = tokio::task::spawn_blocking(move || {
        contents
            .into_iter()
            .map(|(i, content)| {
                let pieces = chunk::cut(&content, DATA_CHUNKS)
                    .into_iter()
                    .map(|r| chunk::seal(&content[r]));
                Ok((i, pieces.collect::<std::io::Result<Vec<_>>>()?))
            })
            .collect::<std::io::Result<Vec<_>>>()
    })
    .await
    .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
    let mut fresh: Vec<Sealed> = Vec::new();
    for (i, pieces) in sealed {
        entries[i].chunks = pieces.iter().map(|s| s.chunk).collect();
        fresh.extend(pieces);
    }
    let manifest = Manifest { entries };
    let mut report = SyncReport {
        files: manifest.files(),
        bytes: manifest.bytes(),
        frozen_ms,
        ..SyncReport::default()
    };

    if manifest == state.manifest && (state.seq.is_some() || manifest.entries.is_empty()) {
        state.stats = stats;
        state.save(state_path)?;
        report.seq = state.seq;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        return Ok(report);
    }

    let manifest_bytes = manifest.encode();
    let manifest_chunks = chunk::cut(&manifest_bytes, MANIFEST_CHUNKS)
        .into_iter()
        .map(|r| chunk::seal(&manifest_bytes[r]))
        .collect::<std::io::Result<Vec<_>>>()?;
    let needed: Vec<&Sealed> = {
        let mut seen = HashSet::new();
        fresh
            .iter()
            .chain(&manifest_chunks)
            .filter(|s| !present.contains(&s.chunk.id) && seen.insert(s.chunk.id))
            .collect()
    };
    let uploads: Vec<_> = needed
        .iter()
        .map(|s| {
            let (store, tenant) = (store.clone(), tenant.clone());
            let sealed = Sealed {
                chunk: s.chunk,
                compressed: s.compressed.clone(),
            };
            async move { store.put_chunk(&tenant, &sealed).await }
        })
        // Collected first: a lazy iterator of futures held across an await trips the
        // compiler's Send check (rust-lang/rust#102211).
        .collect();
    futures_util::stream::iter(uploads)
        .buffer_unordered(upload_concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    report.chunks_uploaded = needed.len() as u64;
    report.bytes_uploaded = needed.iter().map(|s| s.compressed.len() as u64).sum();

    let record = SnapshotRecord {
        seq: head.map_or(1, |h| h + 1),
        parent: head,
        created_ms: unix_ms(),
        writer: writer.to_owned(),
        files: manifest.files(),
        bytes: manifest.bytes(),
        manifest: manifest_chunks.iter().map(|s| s.chunk).collect(),
    };
    match store.create_snapshot(tenant, &record).await {
        Ok(()) => {}
        Err(StoreError::Conflict { seq }) => {
            tracing::warn!(%tenant, seq, writer, "another writer added this snapshot first; this copy stays local");
            return Err(StoreError::Diverged {
                tenant: tenant.to_string(),
                local: head,
                head: seq,
            });
        }
        Err(e) => return Err(e),
    }
    report.seq = Some(record.seq);
    report.created = true;
    LocalState {
        seq: Some(record.seq),
        manifest,
        stats,
    }
    .save(state_path)?;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}
