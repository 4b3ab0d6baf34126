//! Capturing a workspace: one walk that decides, per file, whether its content is
//! already known (same stat key as last time) or must be read now.
//!
//! The walk runs while the sandbox is frozen, so everything it reads is from one
//! moment; it only stats and reads, and the slow work (chunking, hashing, compressing,
//! uploading) happens after the sandbox is thawed, from the bytes read here.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::chunk::ChunkRef;
use crate::local::{LocalState, StatKey};
use crate::manifest::{Entry, Kind};

/// Timestamps of files written this close to a capture are not trusted next time
/// (the kernel stamps files from a coarse clock: a second write in the same tick
/// would leave size and times unchanged).
const RACY_WINDOW_NS: i64 = 20_000_000;

/// The outcome of a walk.
pub struct Captured {
    /// Every entry, sorted by path. Files whose content was read have no chunks yet.
    pub entries: Vec<Entry>,
    /// For each file read: its index in `entries` and its content.
    pub contents: Vec<(usize, Vec<u8>)>,
    pub stats: HashMap<String, StatKey>,
}

fn stat_key(meta: &std::fs::Metadata, started_ns: i64) -> StatKey {
    let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
    let ctime_ns = meta.ctime() * 1_000_000_000 + meta.ctime_nsec();
    StatKey {
        size: meta.size(),
        mtime_ns,
        ctime_ns,
        ino: meta.ino(),
        mode: meta.mode(),
        racy: mtime_ns.max(ctime_ns) >= started_ns - RACY_WINDOW_NS,
    }
}

/// Walks `workspace`, leaving out the paths `exclude` names (relative to it, with
/// what is below them). `started_ns` is the wall-clock time the capture began.
pub fn capture(
    workspace: &Path,
    known: &LocalState,
    started_ns: i64,
    exclude: &[String],
) -> std::io::Result<Captured> {
    let known_chunks: HashMap<&str, &Vec<ChunkRef>> = known
        .manifest
        .entries
        .iter()
        .filter(|e| e.kind == Kind::File)
        .map(|e| (e.path.as_str(), &e.chunks))
        .collect();
    let mut out = Captured {
        entries: Vec::new(),
        contents: Vec::new(),
        stats: HashMap::new(),
    };
    walk(workspace, "", exclude, &mut |rel, meta| {
        let mode = meta.mode() & 0o7777;
        let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
        let file_type = meta.file_type();
        let mut entry = Entry {
            path: rel.to_owned(),
            kind: Kind::Dir,
            mode,
            size: 0,
            mtime_ns,
            chunks: Vec::new(),
            target: None,
        };
        if file_type.is_dir() {
            out.entries.push(entry);
        } else if file_type.is_symlink() {
            entry.kind = Kind::Symlink;
            entry.target = Some(
                std::fs::read_link(workspace.join(rel))?
                    .to_string_lossy()
                    .into_owned(),
            );
            out.entries.push(entry);
        } else if file_type.is_file() {
            entry.kind = Kind::File;
            entry.size = meta.size();
            let key = stat_key(meta, started_ns);
            let unchanged = known
                .stats
                .get(rel)
                .is_some_and(|k| !k.racy && StatKey { racy: false, ..key } == *k);
            match known_chunks.get(rel) {
                Some(chunks) if unchanged => entry.chunks = (*chunks).clone(),
                _ => match read_no_follow(&workspace.join(rel)) {
                    Ok(content) => {
                        // The size read is the size captured, even if the stat was older.
                        entry.size = content.len() as u64;
                        out.contents.push((out.entries.len(), content));
                    }
                    // Deleted between the listing and the read: it is not in this moment.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(e),
                },
            }
            out.stats.insert(rel.to_owned(), key);
            out.entries.push(entry);
        }
        // Sockets, FIFOs and devices are not workspace data.
        Ok(())
    })?;
    Ok(out)
}

/// Reads a file, refusing to follow a symlink put in its place since the walk saw it.
fn read_no_follow(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)?;
    let mut content = Vec::new();
    file.read_to_end(&mut content)?;
    Ok(content)
}

/// Visits every entry below `root` in path order, without following symlinks, except
/// those `exclude` names and what is below them.
fn walk(
    root: &Path,
    rel: &str,
    exclude: &[String],
    visit: &mut dyn FnMut(&str, &std::fs::Metadata) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = if rel.is_empty() {
        root.to_owned()
    } else {
        root.join(rel)
    };
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    names.sort_unstable();
    for name in names {
        let child = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if exclude.contains(&child) {
            continue;
        }
        let meta = match std::fs::symlink_metadata(root.join(&child)) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        visit(&child, &meta)?;
        if meta.is_dir() {
            walk(root, &child, exclude, visit)?;
        }
    }
    Ok(())
}
