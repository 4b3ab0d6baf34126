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
    // The tree first, then the files, many at a time (a restore is mostly waiting on
    // the store), then the symlinks.
    for entry in manifest.entries.iter().filter(|e| e.kind == Kind::Dir) {
        std::fs::create_dir_all(dest.join(&entry.path))?;
    }
    let files: Vec<_> = manifest
        .entries
        .iter()
        .filter(|e| e.kind == Kind::File)
        .map(|entry| {
            let (store, tenant, path) = (store.clone(), tenant.clone(), dest.join(&entry.path));
            let entry = entry.clone();
            let seq = record.seq;
            async move {
                let damaged = |reason: String| StoreError::Damaged {
                    tenant: tenant.to_string(),
                    seq,
                    path: entry.path.clone(),
                    reason,
                };
                let mut content = Vec::with_capacity(entry.size as usize);
                for chunk in &entry.chunks {
                    match store.get_chunk(&tenant, chunk).await {
                        Ok(piece) => content.extend(piece),
                        Err(StoreError::Chunk(c)) => return Err(damaged(c.to_string())),
                        Err(StoreError::NotFound(what)) => {
                            return Err(damaged(format!("missing chunk ({what})")));
                        }
                        Err(e) => return Err(e),
                    }
                }
                write_file(&path, &content, &entry)
            }
        })
        .collect();
    futures_util::stream::iter(files)
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    for entry in manifest.entries.iter().filter(|e| e.kind == Kind::Symlink) {
        let path = dest.join(&entry.path);
        std::os::unix::fs::symlink(entry.target.as_deref().unwrap_or_default(), &path)?;
        set_mtime_no_follow(&path, entry.mtime_ns)?;
    }
    // Directories last, children before parents: their times once nothing more is
    // made in them, their modes so a read-only directory does not block its contents.
    // With every time as captured, the next capture sees the snapshot unchanged.
    for entry in manifest
        .entries
        .iter()
        .rev()
        .filter(|e| e.kind == Kind::Dir)
    {
        let path = dest.join(&entry.path);
        set_mtime_no_follow(&path, entry.mtime_ns)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(entry.mode & 0o1777))?;
    }
    Ok(manifest)
}

/// Sets the modification time of `path` itself (a symlink's own, not its target's).
fn set_mtime_no_follow(path: &Path, mtime_ns: i64) -> std::io::Result<()> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let mtime = TimeSpec::new(
        mtime_ns.div_euclid(1_000_000_000),
        mtime_ns.rem_euclid(1_000_000_000),
    );
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::UTIME_OMIT,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(std::io::Error::from)
}

/// Writes a restored file: content, then times (through the handle still writable),
/// then the mode (never set-id bits from a manifest), which may make it read-only.
fn write_file(
    path: &Path,
    content: &[u8],
    entry: &crate::manifest::Entry,
) -> Result<(), StoreError> {
    std::fs::write(path, content)?;
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_nanos(entry.mtime_ns.max(0) as u64);
    std::fs::File::options()
        .write(true)
        .open(path)?
        .set_modified(mtime)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(entry.mode & 0o777))?;
    Ok(())
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
