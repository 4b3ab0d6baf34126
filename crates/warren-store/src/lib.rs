//! Durable workspaces. Every tenant's workspace is kept in a store (a local directory or
//! any S3-compatible service) as immutable snapshots of content-defined chunks.
//!
//! - `chunk`: cutting, hashing, compressing and checking chunks.
//! - `manifest`: what a snapshot holds, validated before any restore.
//! - `store`: the object store and its keys; create-if-absent snapshot records.
//! - `capture` + `snapshot`: taking a snapshot, frozen for one consistent moment.
//! - `restore`: materializing a snapshot, falling back past damaged ones.
//! - `retention`: thinning old snapshots and collecting unreferenced chunks.
//! - `engine`: the per-tenant sync engine the gateway and the CLI drive.
//!
//! Only the gateway (or the CLI) talks to the store; a sandbox never sees its
//! credentials.

use std::time::{SystemTime, UNIX_EPOCH};

pub mod capture;
pub mod chunk;
pub mod engine;
pub mod local;
pub mod manifest;
pub mod restore;
pub mod retention;
pub mod snapshot;
pub mod store;
pub mod watch;

pub use engine::{SyncEngine, SyncSettings, SyncStatus};
pub use snapshot::{SnapshotRecord, SyncReport};
pub use store::{S3Options, Store};

/// Stops a sandbox's processes from running for the instant of a capture.
pub trait Freeze: Send + Sync {
    /// Returns once every process of the sandbox is stopped.
    fn freeze(&self) -> std::io::Result<()>;
    /// Lets them run again. Must be called after every `freeze`, even a failed one.
    fn thaw(&self);
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store configuration: {0}")]
    Config(String),
    #[error("store: {0}")]
    Backend(String),
    #[error("not in the store: {0}")]
    NotFound(String),
    #[error("snapshot {seq} was added by another writer first")]
    Conflict { seq: u64 },
    #[error(
        "the store's snapshot {head} of {tenant} is newer than the {} this copy matches: another writer is active or this copy is stale; the copy stays local",
        local.map_or("none".to_owned(), |s| format!("snapshot {s}"))
    )]
    Diverged {
        tenant: String,
        local: Option<u64>,
        head: u64,
    },
    #[error("corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Chunk(#[from] chunk::OpenError),
    #[error("snapshot {seq} of {tenant} is damaged at {path}: {reason}")]
    Damaged {
        tenant: String,
        seq: u64,
        path: String,
        reason: String,
    },
    #[error(transparent)]
    Unsafe(#[from] manifest::UnsafePath),
    #[error("cannot freeze the sandbox: {0}")]
    Freeze(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => StoreError::NotFound(path),
            e => StoreError::Backend(e.to_string()),
        }
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
