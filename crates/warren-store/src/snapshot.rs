//! Writing a snapshot: capture (frozen), seal (thawed), upload what the store lacks,
//! then add the record, last.
//!
//! A record names its manifest's chunks, and the manifest names the files' chunks; all
//! of them are uploaded before the record is created, so a record in the store never
//! names a chunk that is not there (invariant 3). The record's sequence number is taken
//! with create-if-absent: a writer that loses the race re-reads the head, uploads what
//! the new head lacks, and adds its own snapshot after it, so both are kept.
//!
//! Chunks are skipped only if the head snapshot (which retention never deletes) holds
//! them; if the head changed, the conflict makes the writer look again.

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

/// How many times a writer retries after losing the race for a sequence number.
const MAX_CONFLICTS: usize = 8;

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
    /// Other writers' snapshots this one had to go after.
    pub conflicts: u64,
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

/// Captures `workspace` and, if it changed, adds a snapshot. The caller holds the
/// tenant's sync lock.
pub async fn sync_workspace(
    store: &Store,
    tenant: &TenantId,
    workspace: &Path,
    state_path: &Path,
    freeze: Option<&dyn Freeze>,
    writer: &str,
    upload_concurrency: usize,
) -> Result<SyncReport, StoreError> {
    let started = Instant::now();
    let mut state = LocalState::load(state_path);

    // Capture, frozen. The walk is blocking I/O; the freeze must end whatever happens.
    let started_ns = (unix_ms() as i64) * 1_000_000;
    let frozen_at = Instant::now();
    if let Some(f) = freeze {
        f.freeze().map_err(|e| StoreError::Freeze(e.to_string()))?;
    }
    let captured = {
        let (workspace, known) = (workspace.to_owned(), state.clone());
        tokio::task::spawn_blocking(move || capture(&workspace, &known, started_ns)).await
    };
    if let Some(f) = freeze {
        f.thaw();
    }
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
    fresh.extend(manifest_chunks.iter().map(|s| Sealed {
        chunk: s.chunk,
        compressed: s.compressed.clone(),
    }));

    // The head this copy descends from, if the store still has it.
    let mut parent = match state.seq {
        Some(seq) => match store.snapshot(tenant, seq).await {
            Ok(record) => Some((record, state.manifest.clone())),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e),
        },
        None => None,
    };
    let mut uploaded: HashSet<chunk::ChunkId> = HashSet::new();
    for _ in 0..MAX_CONFLICTS {
        let present = parent
            .as_ref()
            .map(|(r, m)| chunk_set(r, m))
            .unwrap_or_default();
        let needed: Vec<&Sealed> = {
            let mut seen = HashSet::new();
            fresh
                .iter()
                .filter(|s| {
                    !present.contains(&s.chunk.id)
                        && !uploaded.contains(&s.chunk.id)
                        && seen.insert(s.chunk.id)
                })
                .collect()
        };
        let uploads = needed.iter().map(|s| {
            let (store, tenant) = (store.clone(), tenant.clone());
            let sealed = Sealed {
                chunk: s.chunk,
                compressed: s.compressed.clone(),
            };
            async move { store.put_chunk(&tenant, &sealed).await }
        });
        // Collected first: a lazy iterator of futures held across an await trips the
        // compiler's Send check (rust-lang/rust#102211).
        let uploads: Vec<_> = uploads.collect();
        futures_util::stream::iter(uploads)
            .buffer_unordered(upload_concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        for s in &needed {
            uploaded.insert(s.chunk.id);
            report.chunks_uploaded += 1;
            report.bytes_uploaded += s.compressed.len() as u64;
        }

        let parent_seq = match &parent {
            Some((r, _)) => Some(r.seq),
            None => store.snapshot_seqs(tenant).await?.last().copied(),
        };
        let record = SnapshotRecord {
            seq: parent_seq.map_or(1, |s| s + 1),
            parent: parent_seq,
            created_ms: unix_ms(),
            writer: writer.to_owned(),
            files: manifest.files(),
            bytes: manifest.bytes(),
            manifest: manifest_chunks.iter().map(|s| s.chunk).collect(),
        };
        match store.create_snapshot(tenant, &record).await {
            Ok(()) => {
                report.seq = Some(record.seq);
                report.created = true;
                LocalState {
                    seq: Some(record.seq),
                    manifest,
                    stats,
                }
                .save(state_path)?;
                report.elapsed_ms = started.elapsed().as_millis() as u64;
                return Ok(report);
            }
            Err(StoreError::Conflict { seq }) => {
                // Another writer added `seq` first. Build on the real head.
                report.conflicts += 1;
                tracing::warn!(%tenant, seq, writer, "another writer added this snapshot first; retrying after it");
                let head = *store
                    .snapshot_seqs(tenant)
                    .await?
                    .last()
                    .ok_or(StoreError::NotFound(format!("head of {tenant}")))?;
                let record = store.snapshot(tenant, head).await?;
                let m = read_manifest(store, tenant, &record).await?;
                parent = Some((record, m));
            }
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Contended {
        tenant: tenant.to_string(),
        tries: MAX_CONFLICTS,
    })
}
