//! Manifests: the list of what a snapshot holds (paths, kinds, modes, sizes, times and
//! chunk lists), sorted by path.
//!
//! A manifest read from the store is untrusted input: `validate` refuses any path that
//! is absolute, empty, holds `.`/`..`/NUL or a backslash, repeats, or passes through
//! an entry that is a symlink, so a restore can never write outside its directory.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative to the workspace, `/`-separated.
    pub path: String,
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    pub size: u64,
    pub mtime_ns: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkRef>,
    /// A symlink's target, stored as is and never followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("manifest entry {path:?} refused: {reason}")]
pub struct UnsafePath {
    pub path: String,
    pub reason: &'static str,
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Total size of the files, in bytes.
    pub fn bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.kind == Kind::File)
            .map(|e| e.size)
            .sum()
    }

    pub fn files(&self) -> u64 {
        self.entries.iter().filter(|e| e.kind == Kind::File).count() as u64
    }

    /// Refuses every entry a restore could be tricked by.
    pub fn validate(&self) -> Result<(), UnsafePath> {
        let mut seen = HashSet::new();
        let mut symlinks = HashSet::new();
        for entry in &self.entries {
            let refuse = |reason| {
                Err(UnsafePath {
                    path: entry.path.clone(),
                    reason,
                })
            };
            let p = entry.path.as_str();
            if p.is_empty() || p.len() > 4096 {
                return refuse("empty or too long");
            }
            if p.starts_with('/') {
                return refuse("absolute");
            }
            if p.contains('\0') || p.contains('\\') {
                return refuse("holds NUL or a backslash");
            }
            let parts: Vec<&str> = p.split('/').collect();
            if parts
                .iter()
                .any(|c| c.is_empty() || *c == "." || *c == "..")
            {
                return refuse("holds an empty, '.' or '..' component");
            }
            for end in 1..parts.len() {
                if symlinks.contains(&parts[..end].join("/")) {
                    return refuse("passes through a symlink");
                }
            }
            if !seen.insert(p) {
                return refuse("repeated");
            }
            match entry.kind {
                Kind::Symlink if entry.target.is_none() => {
                    return refuse("a symlink without a target");
                }
                Kind::Symlink => {
                    symlinks.insert(p.to_owned());
                }
                Kind::File
                    if entry.chunks.iter().map(|c| c.len as u64).sum::<u64>() != entry.size =>
                {
                    return refuse("chunk lengths do not add up to the size");
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: Kind) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0o644,
            size: 0,
            mtime_ns: 0,
            chunks: vec![],
            target: (kind == Kind::Symlink).then(|| "/etc".into()),
        }
    }

    #[test]
    fn refuses_paths_that_escape() {
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "./a",
            "a/.",
            "a\\..\\b",
            "a\0b",
            "",
        ] {
            let m = Manifest {
                entries: vec![entry(bad, Kind::File)],
            };
            assert!(m.validate().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn refuses_writing_through_a_symlink() {
        let m = Manifest {
            entries: vec![
                entry("link", Kind::Symlink),
                entry("link/passwd", Kind::File),
            ],
        };
        assert_eq!(m.validate().unwrap_err().reason, "passes through a symlink");
        let m = Manifest {
            entries: vec![entry("a", Kind::File), entry("a", Kind::File)],
        };
        assert_eq!(m.validate().unwrap_err().reason, "repeated");
    }

    #[test]
    fn accepts_an_ordinary_tree_and_round_trips() {
        let m = Manifest {
            entries: vec![
                entry("dir", Kind::Dir),
                entry("dir/file.txt", Kind::File),
                entry("dir/link", Kind::Symlink),
            ],
        };
        m.validate().unwrap();
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }
}
