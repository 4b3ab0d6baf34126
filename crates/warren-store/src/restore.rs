//! Restoring: materialize a snapshot into a fresh directory, checking every chunk
//! against its hash, then swap it in for the workspace.
//!
//! Nothing is written outside the new directory: the manifest is validated first
//! (no absolute paths, no `..`, nothing through a symlink), and the directory starts
//! empty, so every path below it was created by this restore.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures_util::{StreamExt, TryStreamExt};
use warren_core::TenantId;

use crate::StoreError;
use crate::local::{LocalState, StatKey};
use crate::manifest::{Kind, Manifest};
use crate::snapshot::{SnapshotRecord, read_manifest};
use crate::store::Store;

/// Writes snapshot `record` into `dest`, which must not exist. Returns its manifest.
pub async fn materialize(
    store: &Store,
    tenant: &TenantId,
    record: &SnapshotRecord,
    dest: &Path,
    concurrency: usize,
) -> Result<Manifest, StoreError> {
    let manifest = read_manifest(store, tenant, record).await?;
    std::fs::create_dir(dest)?;
    for entry in &manifest.entries {
        let path = dest.join(&entry.path);
        match entry.kind {
            Kind::Dir => std::fs::create_dir_all(&path)?,
            Kind::Symlink => {
                let target = entry.target.as_deref().unwrap_or_default();
                std::os::unix::fs::symlink(target, &path)?;
            }
            Kind::File => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let downloads = entry.chunks.iter().map(|c| {
                    let (store, tenant, c) = (store.clone(), tenant.clone(), *c);
                    async move { store.get_chunk(&tenant, &c).await }
                });
                let downloads: Vec<_> = downloads.collect();
                let pieces: Vec<Vec<u8>> = futures_util::stream::iter(downloads)
                    .buffered(concurrency.max(1))
                    .try_collect()
                    .await
                    .map_err(|e| match e {
                        StoreError::Chunk(c) => StoreError::Damaged {
                            tenant: tenant.to_string(),
                            seq: record.seq,
                            path: entry.path.clone(),
                            reason: c.to_string(),
                        },
                        StoreError::NotFound(what) => StoreError::Damaged {
                            tenant: tenant.to_string(),
                            seq: record.seq,
                            path: entry.path.clone(),
                            reason: format!("missing chunk ({what})"),
                        },
                        e => e,
                    })?;
                std::fs::write(&path, pieces.concat())?;
                // Times first, through the handle still writable; then the mode (never
                // set-id bits from a manifest), which may make the file read-only.
                let mtime =
                    SystemTime::UNIX_EPOCH + Duration::from_nanos(entry.mtime_ns.max(0) as u64);
                std::fs::File::options()
                    .write(true)
                    .open(&path)?
                    .set_modified(mtime)?;
                std::fs::set_permissions(
                    &path,
                    std::fs::Permissions::from_mode(entry.mode & 0o777),
                )?;
            }
        }
    }
    // Directory modes last, so a read-only directory does not block its own contents.
    for entry in manifest.entries.iter().filter(|e| e.kind == Kind::Dir) {
        std::fs::set_permissions(
            dest.join(&entry.path),
            std::fs::Permissions::from_mode(entry.mode & 0o1777),
        )?;
    }
    Ok(manifest)
}

/// The local state of a freshly materialized directory: its files' stat keys as
/// they now are, so the next sync reads nothing.
pub fn state_after_restore(
    dir: &Path,
    seq: u64,
    manifest: Manifest,
) -> std::io::Result<LocalState> {
    use std::os::unix::fs::MetadataExt;
    let mut stats = std::collections::HashMap::new();
    for entry in manifest.entries.iter().filter(|e| e.kind == Kind::File) {
        let meta = std::fs::symlink_metadata(dir.join(&entry.path))?;
        stats.insert(
            entry.path.clone(),
            StatKey {
                size: meta.size(),
                mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
                ino: meta.ino(),
                mode: meta.mode(),
                // ctime is now; a write in the same tick would look unchanged.
                racy: true,
            },
        );
    }
    Ok(LocalState {
        seq: Some(seq),
        manifest,
        stats,
    })
}

/// Restores the newest intact snapshot at or before `seq` into `dest`, falling back
/// to older ones when a chunk is missing or damaged. Returns the seq restored.
pub async fn materialize_newest_intact(
    store: &Store,
    tenant: &TenantId,
    candidates: &[u64],
    dest: &Path,
    concurrency: usize,
) -> Result<(u64, Manifest), StoreError> {
    let mut last_error = None;
    for &seq in candidates.iter().rev() {
        let _ = std::fs::remove_dir_all(dest);
        let attempt = async {
            let record = store.snapshot(tenant, seq).await?;
            materialize(store, tenant, &record, dest, concurrency).await
        };
        match attempt.await {
            Ok(manifest) => return Ok((seq, manifest)),
            Err(
                e @ (StoreError::Damaged { .. }
                | StoreError::Corrupt(_)
                | StoreError::Unsafe(_)
                | StoreError::Chunk(_)),
            ) => {
                tracing::error!(%tenant, seq, error = %e, "snapshot is damaged; trying an older one");
                last_error = Some(e);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(dest);
                return Err(e);
            }
        }
    }
    let _ = std::fs::remove_dir_all(dest);
    Err(last_error.unwrap_or_else(|| StoreError::NotFound(format!("no snapshot of {tenant}"))))
}

/// A sibling path of `path` that does not exist yet, for staging.
pub fn staging_path(path: &Path, what: &str) -> PathBuf {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("workspace");
    path.with_file_name(format!(".{name}.{what}-{}", crate::unix_ms()))
}
