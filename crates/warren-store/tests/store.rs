//! The store suite: every scenario runs against the local directory store and against
//! a real S3-compatible server (moto), through the same `SyncEngine` the gateway uses.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{Backend, Machine, backends, read_tree, write_files};
use warren_core::TenantId;
use warren_store::engine::{Prepared, SyncEngine};
use warren_store::manifest::{Entry, Kind, Manifest};
use warren_store::retention::RetentionPolicy;
use warren_store::{Freeze, StoreError, chunk};

fn tenant(id: &str) -> TenantId {
    TenantId::parse(id).unwrap()
}

/// Incompressible bytes, different for every seed.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

#[tokio::test]
async fn a_synced_workspace_restores_on_a_fresh_machine() {
    for backend in backends().await {
        let t = tenant("user_a");
        let first = Machine::new(&backend, "gw-1");
        let ws = first.workspace(&t);
        let big = pseudo_random(300_000, 1);
        write_files(
            &ws,
            &[
                ("notes.txt", b"hello"),
                ("deep/dir/data.bin", &big),
                ("empty", b""),
            ],
        );
        std::fs::create_dir_all(ws.join("empty-dir")).unwrap();
        std::os::unix::fs::symlink("notes.txt", ws.join("link")).unwrap();
        let report = first.engine.sync(&t, None).await.unwrap();
        assert!(
            report.created && report.seq == Some(1),
            "{}: {report:?}",
            backend.name()
        );

        // Nothing changed: no new snapshot, nothing read or uploaded.
        let again = first.engine.sync(&t, None).await.unwrap();
        assert!(
            !again.created && again.bytes_uploaded == 0,
            "{}: {again:?}",
            backend.name()
        );

        let second = Machine::new(&backend, "gw-2");
        let prepared = second.engine.prepare(&t).await.unwrap();
        assert_eq!(
            prepared,
            Prepared::Restored {
                seq: 1,
                set_aside: None
            },
            "{}",
            backend.name()
        );
        let restored = second.workspace(&t);
        assert_eq!(read_tree(&restored), read_tree(&ws), "{}", backend.name());
        assert_eq!(
            std::fs::read_link(restored.join("link")).unwrap().to_str(),
            Some("notes.txt")
        );
        assert!(restored.join("empty-dir").is_dir());

        // A warm restart costs nothing: the local copy already matches.
        assert_eq!(second.engine.prepare(&t).await.unwrap(), Prepared::Current);
        // Nor does the sync after a restore: times are as captured, so the restored
        // tree is the snapshot, and no new one is made.
        let after = second.engine.sync(&t, None).await.unwrap();
        assert!(
            !after.created && after.bytes_uploaded == 0,
            "{}: {after:?}",
            backend.name()
        );
        // And the other tenant has nothing.
        assert_eq!(
            second.engine.prepare(&tenant("user_b")).await.unwrap(),
            Prepared::Current
        );
        assert!(read_tree(&second.workspace(&tenant("user_b"))).is_empty());
    }
}

#[tokio::test]
async fn a_small_change_in_a_large_workspace_uploads_little() {
    for backend in backends().await {
        let t = tenant("user_a");
        let m = Machine::new(&backend, "gw");
        let ws = m.workspace(&t);
        // 2,000 files, 50 MB.
        for i in 0..2000u64 {
            write_files(
                &ws,
                &[(
                    &format!("d{}/f{i}.bin", i % 20),
                    &pseudo_random(25_000, i + 1),
                )],
            );
        }
        let full = m.engine.sync(&t, None).await.unwrap();
        assert!(
            full.bytes_uploaded > 40_000_000,
            "{}: {full:?}",
            backend.name()
        );

        // A 4 KB change in the middle of one file.
        let path = ws.join("d7/f7.bin");
        let mut content = std::fs::read(&path).unwrap();
        content[10_000..14_096].copy_from_slice(&pseudo_random(4096, 99));
        std::fs::write(&path, content).unwrap();
        let delta = m.engine.sync(&t, None).await.unwrap();
        assert!(delta.created, "{}", backend.name());
        assert!(
            delta.bytes_uploaded <= 64 * 1024,
            "{}: uploaded {} bytes for a 4 KB change",
            backend.name(),
            delta.bytes_uploaded
        );
    }
}

#[tokio::test]
async fn a_store_outage_mid_sync_loses_nothing_and_catches_up() {
    for backend in backends().await {
        let t = tenant("user_a");
        let m = Machine::new(&backend, "gw");
        let ws = m.workspace(&t);
        write_files(&ws, &[("a.txt", b"one")]);
        m.engine.sync(&t, None).await.unwrap();

        write_files(
            &ws,
            &[("a.txt", b"two"), ("b.bin", &pseudo_random(4_000_000, 5))],
        );
        // The link goes down with about half of the new chunks uploaded.
        backend.break_store_after(2_000_000);
        let failed = m.engine.sync(&t, None).await;
        assert!(
            failed.is_err(),
            "{}: a sync with the store down must fail",
            backend.name()
        );
        let status = m.engine.status(&t);
        assert!(
            status.failing_since_ms.is_some() && status.last_error.is_some(),
            "{}: {status:?}",
            backend.name()
        );
        assert_eq!(
            status.seq,
            Some(1),
            "the workspace still matches only snapshot 1"
        );
        assert_eq!(
            std::fs::read(ws.join("a.txt")).unwrap(),
            b"two",
            "local changes are kept"
        );

        assert_eq!(
            m.engine.store().snapshot_seqs(&t).await.map_err(|_| ()),
            Err(()),
            "{}: still down",
            backend.name()
        );
        backend.heal_store();
        assert_eq!(
            m.engine.store().snapshot_seqs(&t).await.unwrap(),
            [1],
            "{}: no half snapshot",
            backend.name()
        );
        if backend.name() == "s3" {
            let stored = m.engine.store().chunks(&t).await.unwrap().len();
            assert!(
                stored > 10,
                "the outage came mid-upload: {stored} chunks made it"
            );
        }
        let caught_up = m.engine.sync(&t, None).await.unwrap();
        assert_eq!(caught_up.seq, Some(2), "{}", backend.name());
        assert!(m.engine.status(&t).failing_since_ms.is_none());

        let fresh = Machine::new(&backend, "gw-2");
        fresh.engine.prepare(&t).await.unwrap();
        assert_eq!(
            read_tree(&fresh.workspace(&t)),
            read_tree(&ws),
            "{}",
            backend.name()
        );
        // Every snapshot in the store is complete.
        for record in fresh.engine.snapshots(&t).await.unwrap() {
            let dest = fresh.dir.path().join(format!("check-{}", record.seq));
            warren_store::restore::materialize(fresh.engine.store(), &t, &record, &dest, 4)
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn two_writers_never_overwrite_each_others_snapshots() {
    for backend in backends().await {
        let t = tenant("user_a");
        let a = Machine::new(&backend, "stale-gateway");
        let b = Machine::new(&backend, "new-gateway");
        write_files(&a.workspace(&t), &[("from-a", b"a0")]);
        a.engine.sync(&t, None).await.unwrap();
        b.engine.prepare(&t).await.unwrap();
        // Both now believe snapshot 1 is the head, and both write at once.
        write_files(&a.workspace(&t), &[("from-a", b"a1")]);
        write_files(&b.workspace(&t), &[("from-b", b"b1")]);
        let (ra, rb) = tokio::join!(a.engine.sync(&t, None), b.engine.sync(&t, None));
        let (won, lost) = match (ra, rb) {
            (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
            (ra, rb) => panic!(
                "{}: exactly one writer must win: {ra:?} {rb:?}",
                backend.name()
            ),
        };
        assert_eq!(won.seq, Some(2), "{}", backend.name());
        assert!(
            matches!(lost, StoreError::Diverged { head: 2, .. }),
            "{}: {lost}",
            backend.name()
        );
        assert_eq!(
            a.engine.store().snapshot_seqs(&t).await.unwrap(),
            [1, 2],
            "{}",
            backend.name()
        );
        // The loser's copy is untouched, and it keeps refusing rather than rolling back.
        assert_eq!(
            std::fs::read(a.workspace(&t).join("from-a")).unwrap(),
            b"a1"
        );
        assert_eq!(
            std::fs::read(b.workspace(&t).join("from-b")).unwrap(),
            b"b1"
        );
        let again = (a.engine.sync(&t, None).await, b.engine.sync(&t, None).await);
        assert!(
            again.0.is_err() != again.1.is_err(),
            "{}: {again:?}",
            backend.name()
        );
        // A stale copy is refused too, however it got stale.
        let stale = Machine::new(&backend, "late");
        write_files(&stale.workspace(&t), &[("x", b"from nowhere")]);
        assert!(matches!(
            stale.engine.sync(&t, None).await,
            Err(StoreError::Diverged { local: None, .. })
        ));
        for record in a.engine.snapshots(&t).await.unwrap() {
            let dest = a.dir.path().join(format!("check-{}", record.seq));
            warren_store::restore::materialize(a.engine.store(), &t, &record, &dest, 4)
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn point_in_time_restore_becomes_the_new_head() {
    for backend in backends().await {
        let t = tenant("user_a");
        let m = Machine::new(&backend, "gw");
        let ws = m.workspace(&t);
        for v in ["v1", "v2", "v3"] {
            write_files(
                &ws,
                &[
                    ("state.txt", v.as_bytes()),
                    (&format!("{v}.log"), v.as_bytes()),
                ],
            );
            m.engine.sync(&t, None).await.unwrap();
        }
        let report = m.engine.restore_to(&t, 1).await.unwrap();
        assert_eq!(report.seq, Some(4), "{}", backend.name());
        assert_eq!(std::fs::read(ws.join("state.txt")).unwrap(), b"v1");
        assert!(!ws.join("v3.log").exists());
        // A fresh machine gets the restored state, and the history is all still there.
        let fresh = Machine::new(&backend, "gw-2");
        fresh.engine.prepare(&t).await.unwrap();
        assert_eq!(read_tree(&fresh.workspace(&t)), read_tree(&ws));
        assert_eq!(fresh.engine.snapshots(&t).await.unwrap().len(), 4);
    }
}

#[tokio::test]
async fn retention_thins_snapshots_and_collects_only_unreferenced_chunks() {
    for backend in backends().await {
        let t = tenant("user_a");
        let keep_head_only = RetentionPolicy {
            keep_all_for: Duration::ZERO,
            hourly_for: Duration::ZERO,
            daily_for: Duration::ZERO,
            gc_grace: Duration::ZERO,
        };
        let m = Machine::with_retention(&backend, "gw", keep_head_only);
        let ws = m.workspace(&t);
        write_files(&ws, &[("keep.bin", &pseudo_random(200_000, 1))]);
        for i in 0..4u64 {
            write_files(&ws, &[("churn.bin", &pseudo_random(100_000, 10 + i))]);
            m.engine.sync(&t, None).await.unwrap();
        }
        let store = m.engine.store();
        let before = store.chunks(&t).await.unwrap().len();
        let report = m.engine.retention(&t).await.unwrap();
        assert_eq!(
            (report.kept, report.snapshots_deleted),
            (1, 3),
            "{}: {report:?}",
            backend.name()
        );
        assert!(report.chunks_deleted > 0);
        assert_eq!(
            store.chunks(&t).await.unwrap().len(),
            before - report.chunks_deleted
        );
        assert_eq!(store.snapshot_seqs(&t).await.unwrap(), [4]);
        // The head is intact.
        let fresh = Machine::new(&backend, "gw-2");
        fresh.engine.prepare(&t).await.unwrap();
        assert_eq!(read_tree(&fresh.workspace(&t)), read_tree(&ws));

        // With a grace period, a chunk just uploaded by a snapshot still being written
        // (no record yet) is not collected.
        let graceful = Machine::with_retention(
            &backend,
            "gw-3",
            RetentionPolicy {
                gc_grace: Duration::from_secs(3600),
                ..keep_head_only
            },
        );
        let orphan = chunk::seal(b"a chunk whose snapshot is still being written").unwrap();
        store.put_chunk(&t, &orphan).await.unwrap();
        graceful.engine.retention(&t).await.unwrap();
        assert!(
            store
                .chunks(&t)
                .await
                .unwrap()
                .iter()
                .any(|(id, _)| *id == orphan.chunk.id),
            "{}",
            backend.name()
        );
    }
}

/// Writes a snapshot record whose manifest is `manifest`, bypassing every check.
async fn plant_snapshot(
    store: &warren_store::Store,
    t: &TenantId,
    seq: u64,
    manifest: &Manifest,
    files: &[&[u8]],
) {
    for content in files {
        store
            .put_chunk(t, &chunk::seal(content).unwrap())
            .await
            .unwrap();
    }
    let bytes = serde_json::to_vec(manifest).unwrap();
    let sealed = chunk::seal(&bytes).unwrap();
    store.put_chunk(t, &sealed).await.unwrap();
    let record = warren_store::SnapshotRecord {
        seq,
        parent: seq.checked_sub(1).filter(|s| *s > 0),
        created_ms: 1,
        writer: "attacker".into(),
        files: 1,
        bytes: 0,
        manifest: vec![sealed.chunk],
    };
    store.create_snapshot(t, &record).await.unwrap();
}

fn file_entry(path: &str, content: &[u8]) -> Entry {
    let c = chunk::seal(content).unwrap().chunk;
    Entry {
        path: path.into(),
        kind: Kind::File,
        mode: 0o644,
        size: content.len() as u64,
        mtime_ns: 0,
        chunks: vec![c],
        target: None,
    }
}

#[tokio::test]
async fn a_manifest_that_escapes_the_workspace_is_refused() {
    for backend in backends().await {
        let t = tenant("user_a");
        let m = Machine::new(&backend, "gw");
        write_files(&m.workspace(&t), &[("good.txt", b"good")]);
        m.engine.sync(&t, None).await.unwrap();
        let store = m.engine.store();
        let outside = m.dir.path().join("escaped");
        let evil = Manifest {
            entries: vec![
                Entry {
                    path: "link".into(),
                    kind: Kind::Symlink,
                    mode: 0o777,
                    size: 0,
                    mtime_ns: 0,
                    chunks: vec![],
                    target: Some(outside.to_string_lossy().into()),
                },
                file_entry("link/pwned", b"pwned"),
            ],
        };
        plant_snapshot(store, &t, 2, &evil, &[b"pwned"]).await;
        let traversal = Manifest {
            entries: vec![file_entry("../../escaped-too", b"pwned")],
        };
        plant_snapshot(store, &t, 3, &traversal, &[b"pwned"]).await;

        let fresh = Machine::new(&backend, "gw-2");
        let prepared = fresh.engine.prepare(&t).await.unwrap();
        // Both planted snapshots are refused; the newest intact one is restored.
        assert_eq!(
            prepared,
            Prepared::Restored {
                seq: 1,
                set_aside: None
            },
            "{}",
            backend.name()
        );
        assert!(!outside.exists() && !fresh.dir.path().join("escaped-too").exists());
        assert!(!m.dir.path().parent().unwrap().join("escaped-too").exists());
        assert_eq!(
            std::fs::read(fresh.workspace(&t).join("good.txt")).unwrap(),
            b"good"
        );
        let err = warren_store::restore::materialize(
            store,
            &t,
            &store.snapshot(&t, 3).await.unwrap(),
            &fresh.dir.path().join("x"),
            1,
        )
        .await;
        assert!(matches!(err, Err(StoreError::Unsafe(_))), "{err:?}");
    }
}

#[tokio::test]
async fn a_damaged_chunk_is_reported_and_restore_falls_back() {
    for backend in backends().await {
        let t = tenant("user_a");
        let m = Machine::new(&backend, "gw");
        let ws = m.workspace(&t);
        write_files(&ws, &[("stable.txt", b"from snapshot one")]);
        m.engine.sync(&t, None).await.unwrap();
        let bad = b"this content's chunk will be damaged in the store";
        write_files(&ws, &[("fresh.txt", bad)]);
        m.engine.sync(&t, None).await.unwrap();
        // Overwrite the new chunk with another chunk's bytes.
        let store = m.engine.store();
        let victim = chunk::seal(bad).unwrap();
        let other = chunk::seal(b"something else entirely").unwrap();
        store
            .put_chunk(
                &t,
                &warren_store::chunk::Sealed {
                    chunk: victim.chunk,
                    compressed: other.compressed,
                },
            )
            .await
            .unwrap();

        let record = store.snapshot(&t, 2).await.unwrap();
        let err =
            warren_store::restore::materialize(store, &t, &record, &m.dir.path().join("x"), 1)
                .await
                .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("user_a") && message.contains("fresh.txt"),
            "{}: {message}",
            backend.name()
        );

        let fresh = Machine::new(&backend, "gw-2");
        assert_eq!(
            fresh.engine.prepare(&t).await.unwrap(),
            Prepared::Restored {
                seq: 1,
                set_aside: None
            }
        );
        assert_eq!(
            std::fs::read(fresh.workspace(&t).join("stable.txt")).unwrap(),
            b"from snapshot one"
        );
    }
}

#[tokio::test]
async fn unsynced_local_changes_are_kept_aside_when_the_store_is_newer() {
    let backend = Backend::local();
    let t = tenant("user_a");
    let a = Machine::new(&backend, "gw-a");
    let b = Machine::new(&backend, "gw-b");
    write_files(&a.workspace(&t), &[("x", b"1")]);
    a.engine.sync(&t, None).await.unwrap();
    b.engine.prepare(&t).await.unwrap();
    write_files(&b.workspace(&t), &[("x", b"2")]);
    b.engine.sync(&t, None).await.unwrap();
    // a has a change it never synced, and the store moved on.
    write_files(&a.workspace(&t), &[("x", b"local only")]);
    let Prepared::Restored {
        seq: 2,
        set_aside: Some(kept),
    } = a.engine.prepare(&t).await.unwrap()
    else {
        panic!("expected a restore that keeps the local copy aside");
    };
    assert_eq!(std::fs::read(kept.join("x")).unwrap(), b"local only");
    assert_eq!(std::fs::read(a.workspace(&t).join("x")).unwrap(), b"2");
}

#[tokio::test]
async fn a_single_writer_starts_from_its_own_copy_without_asking_the_store() {
    let backend = Backend::local();
    let t = tenant("user_a");
    let a = Machine::with_settings(&backend, "gw-a", |s| s.single_writer = true);
    let b = Machine::new(&backend, "gw-b");
    write_files(&a.workspace(&t), &[("x", b"1")]);
    a.engine.sync(&t, None).await.unwrap();
    // a wrote the head itself: its copy is current, and it does not ask.
    assert_eq!(a.engine.prepare(&t).await.unwrap(), Prepared::Current);
    // A second writer breaks the promise: a does not see it at start, and its next
    // sync refuses to roll the tenant back, keeping its copy.
    b.engine.prepare(&t).await.unwrap();
    write_files(&b.workspace(&t), &[("x", b"2")]);
    b.engine.sync(&t, None).await.unwrap();
    assert_eq!(a.engine.prepare(&t).await.unwrap(), Prepared::Current);
    write_files(&a.workspace(&t), &[("x", b"3")]);
    let err = a.engine.sync(&t, None).await.unwrap_err();
    assert!(matches!(err, StoreError::Diverged { .. }), "{err}");
    // Having failed, it asks again at the next start, and restores the head.
    assert!(matches!(
        a.engine.prepare(&t).await.unwrap(),
        Prepared::Restored { seq: 2, .. }
    ));
    assert_eq!(std::fs::read(a.workspace(&t).join("x")).unwrap(), b"2");

    // After a restart, the copy's own record is trusted: b's later snapshot is not
    // seen at start (the store is not asked) until a sync says otherwise.
    let restarted = SyncEngine::new(
        backend.store(),
        a.layout.clone(),
        support::settings_with(|s| s.single_writer = true),
        "gw-a".into(),
    );
    b.engine.prepare(&t).await.unwrap();
    write_files(&b.workspace(&t), &[("x", b"4")]);
    b.engine.sync(&t, None).await.unwrap();
    assert_eq!(restarted.prepare(&t).await.unwrap(), Prepared::Current);
    assert_eq!(std::fs::read(a.workspace(&t).join("x")).unwrap(), b"2");
    // Without the setting, the same restart asks and restores b's.
    let asking = SyncEngine::new(
        backend.store(),
        a.layout.clone(),
        support::settings_with(|_| {}),
        "gw-a".into(),
    );
    assert!(matches!(
        asking.prepare(&t).await.unwrap(),
        Prepared::Restored { .. }
    ));
    assert_eq!(std::fs::read(a.workspace(&t).join("x")).unwrap(), b"4");
}

#[tokio::test]
async fn excluded_paths_are_never_synced_and_a_new_machine_goes_without_them() {
    let backend = Backend::local();
    let t = tenant("user_a");
    let a = Machine::with_settings(&backend, "gw-a", |s| {
        s.exclude = vec![".openclaw/cache".into()]
    });
    write_files(
        &a.workspace(&t),
        &[
            (".openclaw/state/db", b"history"),
            (".openclaw/cache/ui.js", b"rebuilt at boot"),
            (".openclaw/cache-not/x", b"a neighbour, kept"),
        ],
    );
    a.engine.sync(&t, None).await.unwrap();
    // A change in the cache alone is no change of the workspace.
    write_files(
        &a.workspace(&t),
        &[(".openclaw/cache/ui.js", b"rebuilt again")],
    );
    a.engine.sync(&t, None).await.unwrap();
    assert_eq!(a.engine.snapshots(&t).await.unwrap().len(), 1);

    let b = Machine::new(&backend, "gw-b");
    assert!(matches!(
        b.engine.prepare(&t).await.unwrap(),
        Prepared::Restored { .. }
    ));
    let names: Vec<String> = read_tree(&b.workspace(&t))
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert!(
        names.contains(&".openclaw/state/db".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&".openclaw/cache-not/x".to_owned()),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with(".openclaw/cache/")),
        "{names:?}"
    );
    // The machine that has the cache keeps it.
    assert!(a.workspace(&t).join(".openclaw/cache/ui.js").exists());
}

#[tokio::test]
async fn sweep_syncs_every_tenant_and_reports() {
    let backend = Backend::local();
    let m = Machine::new(&backend, "gw");
    for i in 0..25 {
        write_files(
            &m.workspace(&tenant(&format!("user_{i}"))),
            &[("f", format!("{i}").as_bytes())],
        );
    }
    let seen = std::sync::Mutex::new(Vec::new());
    let report = m
        .engine
        .sweep(4, &|_| None, &|item| {
            seen.lock().unwrap().push(item.tenant.clone())
        })
        .await
        .unwrap();
    assert_eq!(
        (report.tenants, report.snapshots_created, report.failed),
        (25, 25, 0)
    );
    assert_eq!(seen.lock().unwrap().len(), 25, "progress for every tenant");
    let again = m.engine.sweep(4, &|_| None, &|_| {}).await.unwrap();
    assert_eq!((again.snapshots_created, again.unchanged), (0, 25));
    let stored = m.engine.store().tenants().await.unwrap();
    assert_eq!(stored.len(), 25);
    let _ = Arc::clone(&m.engine);
}

/// Kills a sandbox's process group when dropped, panics included.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.0 as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
}

/// A real sandbox (the process runtime) as the capture's freeze.
struct SandboxFreeze {
    runtime: Arc<warren_runtime::ProcessRuntime>,
    sandbox: warren_runtime::Sandbox,
}

impl warren_store::Freeze for SandboxFreeze {
    fn freeze(&self) -> std::io::Result<()> {
        use warren_runtime::Runtime;
        self.runtime
            .freeze(&self.sandbox)
            .map_err(std::io::Error::other)
    }

    fn thaw(&self) {
        use warren_runtime::Runtime;
        self.runtime.thaw(&self.sandbox)
    }
}

/// A writer that never stops: each transaction inserts `+i` and `-i` (and trims old
/// pairs, so the database stays a few MB while WAL checkpoints keep happening), so in
/// any consistent database the values sum to zero and come in pairs.
const SQLITE_WRITER: &str = r#"
import sqlite3
db = sqlite3.connect("agent.db", isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL, pad BLOB)")
open("ready", "w").close()
i = 0
while True:
    i += 1
    db.execute("BEGIN")
    db.execute("INSERT INTO t (v, pad) VALUES (?, randomblob(3000))", (i,))
    db.execute("INSERT INTO t (v, pad) VALUES (?, randomblob(3000))", (-i,))
    db.execute("DELETE FROM t WHERE v IN (?, ?)", (i - 1000, 1000 - i))
    db.execute("COMMIT")
    if i % 200 == 0:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
"#;

/// Whether a restored database is consistent: intact, and holding whole transactions.
/// Returns the newest value written, or why it is not consistent.
fn check_consistent(dir: &std::path::Path) -> Result<i64, String> {
    let db = rusqlite::Connection::open(dir.join("agent.db")).map_err(|e| e.to_string())?;
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if check != "ok" {
        return Err(format!(
            "integrity_check: {}",
            check.lines().next().unwrap_or_default()
        ));
    }
    let (rows, sum, newest): (i64, i64, i64) = db
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(v), 0), COALESCE(MAX(v), 0) FROM t",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(|e| e.to_string())?;
    if sum != 0 || rows % 2 != 0 || rows == 0 {
        return Err(format!("half a transaction: {rows} rows summing to {sum}"));
    }
    Ok(newest)
}

#[tokio::test]
async fn sqlite_in_wal_mode_never_restores_torn_while_its_writer_runs() {
    use warren_runtime::Runtime;
    let backend = Backend::local();
    let t = tenant("user_a");
    let m = Machine::new(&backend, "gw");
    let runtime = Arc::new(warren_runtime::ProcessRuntime::new(m.dir.path()));
    let spec = warren_runtime::SandboxSpec {
        tenant: t.clone(),
        generation: 1,
        command: vec!["/usr/bin/python3".into(), "-c".into(), SQLITE_WRITER.into()],
        image: None,
        limits: None,
        env: vec![],
        network: Default::default(),
    };
    let sandbox = runtime.start(&spec).await.unwrap();
    // Stopped however the test ends: a leaked writer would fill the disk.
    let _guard = KillOnDrop(sandbox.pid);
    let ready = sandbox.workspace.join("ready");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never started: {:?}",
            sandbox.has_exited()
        );
        tokio::time::sleep(support::POLL).await;
    }
    let freeze = SandboxFreeze {
        runtime: runtime.clone(),
        sandbox: sandbox.clone(),
    };
    let mut seqs = Vec::new();
    for _ in 0..15 {
        let report = m.engine.sync(&t, Some(&freeze)).await.unwrap();
        if report.created {
            seqs.push(report.seq.unwrap());
        }
    }
    assert!(
        seqs.len() >= 10,
        "the writer kept changing the database: {seqs:?}"
    );

    // The negative control: a capture that is NOT one moment (the main file copied,
    // then a checkpoint, then the WAL copied) must be caught by the check, or the
    // check proves nothing.
    let torn = m.dir.path().join("torn");
    std::fs::create_dir_all(&torn).unwrap();
    let wal = sandbox.workspace.join("agent.db-wal");
    freeze.freeze().unwrap();
    std::fs::copy(sandbox.workspace.join("agent.db"), torn.join("agent.db")).unwrap();
    let wal_then = std::fs::metadata(&wal).unwrap().len();
    freeze.thaw();
    let (mut shrank, deadline) = (false, std::time::Instant::now() + Duration::from_secs(20));
    loop {
        let now = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        shrank |= now < wal_then;
        if shrank && now > 64 * 1024 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never checkpointed"
        );
        tokio::task::yield_now().await;
    }
    freeze.freeze().unwrap();
    std::fs::copy(&wal, torn.join("agent.db-wal")).unwrap();
    freeze.thaw();
    runtime
        .stop(&sandbox, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        check_consistent(&torn).is_err(),
        "a torn copy went undetected"
    );

    let store = m.engine.store();
    let mut last_newest = 0;
    for seq in seqs {
        let dest = m.dir.path().join(format!("restored-{seq}"));
        let record = store.snapshot(&t, seq).await.unwrap();
        warren_store::restore::materialize(store, &t, &record, &dest, 4)
            .await
            .unwrap();
        let newest = check_consistent(&dest)
            .unwrap_or_else(|e| panic!("snapshot {seq} restored a torn database: {e}"));
        assert!(newest >= last_newest, "snapshots go forward in time");
        last_newest = newest;
    }
    assert!(last_newest > 0);
}

/// A freeze for a workspace no process writes to.
struct NoProcess;

impl Freeze for NoProcess {
    fn freeze(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn thaw(&self) {}
}

#[tokio::test]
async fn hundreds_of_running_workspaces_are_all_watched() {
    // More than the kernel's default 128 inotify instances per user.
    let backend = Backend::local();
    let m = Machine::new(&backend, "gw");
    let tenants: Vec<TenantId> = (0..200).map(|i| tenant(&format!("user_{i}"))).collect();
    let mut watches = Vec::new();
    for t in &tenants {
        write_files(&m.workspace(t), &[("f", b"0")]);
        m.engine.sync(t, None).await.unwrap();
        watches.push(m.engine.watch(t.clone(), Arc::new(NoProcess)));
    }
    let last = tenants.last().unwrap();
    // Let the first look after the start pass, so only a file event can catch the change.
    let before = m.engine.status(last).last_sync_ms;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while m.engine.status(last).last_sync_ms == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the first look never came"
        );
        tokio::time::sleep(support::POLL).await;
    }
    write_files(&m.workspace(last), &[("f", b"changed")]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while m.engine.status(last).seq != Some(2) {
        assert!(
            std::time::Instant::now() < deadline,
            "a change in the 200th workspace was never synced"
        );
        tokio::time::sleep(support::POLL).await;
    }
    for w in watches {
        w.stop().await;
    }
}
