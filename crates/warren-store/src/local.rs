//! What this machine knows about a workspace: the snapshot it last matched, that
//! snapshot's manifest, and the stat keys of its files, so an unchanged file is never
//! read again. Kept in `sync-state.json` beside the workspace (outside the agent's
//! reach), written atomically.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;

/// What identifies a file's content without reading it. Files changed within the
/// kernel's timestamp granularity of a capture are marked `racy` and read next time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatKey {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub mode: u32,
    #[serde(default)]
    pub racy: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LocalState {
    /// The snapshot the workspace matched when it was last captured or restored.
    pub seq: Option<u64>,
    pub manifest: Manifest,
    pub stats: HashMap<String, StatKey>,
}

impl LocalState {
    /// The saved state, or an empty one if there is none (or it is unreadable: then
    /// every file is read again, which is slow but correct).
    pub fn load(path: &Path) -> Self {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "unreadable sync state; starting over");
                Self::default()
            }),
            Err(_) => Self::default(),
        }
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(&tmp, path)
    }
}
