//! The store: what keeping workspaces durable costs, measured on this machine.
//!
//! - A 4 KB change in a 50 MB workspace: the bytes each tool sends and its wall time,
//!   for warren's sync (the library, on a local-directory store), rsync and restic, on
//!   the same tree and the same change in the same run, over a few rounds. Twice: a
//!   workspace of many small files (a different file changes each round), and one of
//!   a single large file (a database: the change moves each round).
//! - A sweep over many tenants that each changed one file.
//! - A full restore of the 50 MB workspace into an empty data dir, from a local
//!   directory and from an S3 server (moto, on 127.0.0.1).
//!
//! Contents are random bytes, so no tool gains by compressing. The RPO under a steady
//! writer needs a real gateway: see `rpo`. Every process started here is stopped on
//! every path (tools are killed when their future is dropped; moto on drop).

use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use rand::RngCore as _;
use tokio::time::Instant;
use warren_core::TenantId;
use warren_core::config::{RetentionConfig, SweepConfig, SyncConfig};
use warren_core::layout::Layout;
use warren_store::engine::{Prepared, SweepReport};
use warren_store::retention::RetentionPolicy;
use warren_store::{S3Options, Store, SyncEngine, SyncSettings};
use warren_testkit::Moto;

use crate::anchors::{self, Restic};

/// The bytes overwritten in one file each round.
pub const CHANGE_BYTES: usize = 4096;
/// The tenant of the large workspace.
const TENANT: &str = "user_store";

pub struct Settings {
    /// The large workspace.
    pub workspace: Shape,
    /// Rounds of the 4 KB change.
    pub rounds: usize,
    /// Tenants of the sweep.
    pub sweep_tenants: usize,
}

/// A workspace: `files` files of `file_bytes` random bytes in `dirs` directories.
#[derive(Clone, Copy)]
pub struct Shape {
    pub files: usize,
    pub file_bytes: usize,
    pub dirs: usize,
}

impl Shape {
    pub fn bytes(&self) -> u64 {
        (self.files * self.file_bytes) as u64
    }

    /// The same bytes in one file.
    fn one_file(&self) -> Shape {
        Shape {
            files: 1,
            file_bytes: self.files * self.file_bytes,
            dirs: 1,
        }
    }

    pub fn describe(&self) -> String {
        if self.files == 1 {
            format!("one file of {}", human(self.bytes()))
        } else {
            format!(
                "{} files × {} in {} directories ({})",
                self.files,
                human(self.file_bytes as u64),
                self.dirs,
                human(self.bytes())
            )
        }
    }
}

/// One transfer: the tool's own count of the bytes it sent, its wall time, and what
/// else it said.
pub struct Transfer {
    pub bytes: u64,
    pub time: Duration,
    pub note: String,
}

/// One tool: its first full copy, then one transfer per round of the change.
pub struct Contender {
    pub name: &'static str,
    /// What `bytes` is, in the tool's words.
    pub figure: &'static str,
    pub initial: Transfer,
    pub changes: Vec<Transfer>,
}

pub struct SweepRun {
    pub tenants: usize,
    pub concurrency: usize,
    /// The first sweep: every tenant's first snapshot.
    pub first: (Duration, SweepReport),
    /// After one file changed in each.
    pub changed: (Duration, SweepReport),
}

pub struct Restore {
    pub store: &'static str,
    pub bytes: u64,
    /// The sync that put the workspace there (the first, full one).
    pub upload: Duration,
    /// `SyncEngine::prepare` on an empty data dir.
    pub time: Duration,
}

/// The 4 KB change in one shape of workspace.
pub struct ChangeRun {
    pub shape: Shape,
    pub contenders: Vec<Contender>,
}

pub struct StoreRun {
    /// The filesystem of the workspaces, the local store and the tools' destinations.
    pub filesystem: String,
    pub versions: Vec<(&'static str, String)>,
    pub changes: Vec<ChangeRun>,
    pub sweep: SweepRun,
    pub restores: Vec<Restore>,
}

/// The sync settings and retention of a gateway on its defaults.
fn default_settings() -> SyncSettings {
    let (sync, r) = (SyncConfig::default(), RetentionConfig::default());
    SyncSettings {
        debounce: sync.debounce.0,
        max_delay: sync.max_delay.0,
        safety_interval: sync.safety_interval.0,
        upload_concurrency: sync.upload_concurrency,
        retention: RetentionPolicy {
            keep_all_for: r.keep_all_for.0,
            hourly_for: r.hourly_for.0,
            daily_for: r.daily_for.0,
            gc_grace: r.gc_grace.0,
        },
        single_writer: sync.single_writer,
        exclude: sync.exclude,
    }
}

pub fn engine(store: Store, data_dir: &Path) -> (Arc<SyncEngine>, Layout) {
    let layout = Layout::new(data_dir);
    let engine = SyncEngine::new(
        store,
        layout.clone(),
        default_settings(),
        "warren-bench".into(),
    );
    (engine, layout)
}

pub fn tenant(id: &str) -> anyhow::Result<TenantId> {
    TenantId::parse(id).map_err(|e| anyhow::anyhow!("{id}: {e:?}"))
}

pub async fn run(
    rsync: &Path,
    restic: &Path,
    dir: &Path,
    s: &Settings,
) -> anyhow::Result<StoreRun> {
    let shape = s.workspace;
    ensure!(
        shape.files > 0 && shape.dirs > 0 && shape.file_bytes >= 2 * CHANGE_BYTES,
        "the workspace needs files of at least {} bytes",
        2 * CHANGE_BYTES
    );
    require_moto()?;
    std::fs::create_dir_all(dir)?;
    let versions = vec![
        ("rsync", anchors::first_line(rsync, "--version").await?),
        ("restic", anchors::first_line(restic, "version").await?),
    ];

    let mut changes = Vec::new();
    for (name, shape) in [("many", shape), ("one", shape.one_file())] {
        eprintln!(
            "store: {}, {} rounds of a 4 KB change...",
            shape.describe(),
            s.rounds
        );
        let contenders = change(rsync, restic, &dir.join(name), shape, s.rounds).await?;
        changes.push(ChangeRun { shape, contenders });
    }

    eprintln!("store: restore, from the local directory and from moto...");
    let local_store = Store::local(&dir.join("many").join("store"), "")?;
    let (time, bytes) = restore(local_store, &dir.join("restored")).await?;
    ensure!(
        bytes == shape.bytes(),
        "restored {bytes} bytes of {}",
        shape.bytes()
    );
    let mut restores = vec![Restore {
        store: "local directory",
        bytes,
        upload: changes[0].contenders[0].initial.time,
        time,
    }];
    restores.push(restore_from_s3(dir, shape).await?);

    eprintln!("store: a sweep of {} tenants...", s.sweep_tenants);
    let sweep = sweep(dir, s.sweep_tenants).await?;

    Ok(StoreRun {
        filesystem: filesystem_of(dir),
        versions,
        changes,
        sweep,
        restores,
    })
}

// === impl the 4 KB change ===

/// Writes the workspace, copies it whole with each tool, then `rounds` times: changes
/// 4 KB in one file and lets each tool catch up.
async fn change(
    rsync: &Path,
    restic: &Path,
    dir: &Path,
    shape: Shape,
    rounds: usize,
) -> anyhow::Result<Vec<Contender>> {
    let store_dir = &dir.join("store");
    let (warren, layout) = engine(Store::local(store_dir, "")?, &dir.join("data"));
    let tenant = &tenant(TENANT)?;
    let workspace = layout.workspace(tenant);
    write_workspace(&workspace, shape)?;
    let (whole, delta) = (dir.join("rsync-whole"), dir.join("rsync-delta"));
    let restic = Restic::init(restic, dir).await?;
    let mut contenders = vec![
        Contender {
            name: "warren sync",
            figure: "`SyncReport.bytes_uploaded` (compressed chunks)",
            initial: warren_sync(&warren, tenant, store_dir).await?,
            changes: Vec::new(),
        },
        Contender {
            name: "rsync -a (local copy: whole files, as the original's sync)",
            figure: "\"Total bytes sent\" (file list + data)",
            initial: anchors::rsync(rsync, &workspace, &whole, false).await?,
            changes: Vec::new(),
        },
        Contender {
            name: "rsync -a --no-whole-file (the delta algorithm, as over a network)",
            figure: "\"Total bytes sent\" (file list + literal data + block matches)",
            initial: anchors::rsync(rsync, &workspace, &delta, true).await?,
            changes: Vec::new(),
        },
        Contender {
            name: "restic backup (local repository)",
            figure: "`data_added` of the summary",
            initial: restic.backup(&workspace).await?,
            changes: Vec::new(),
        },
    ];
    for round in 0..rounds {
        change_4k(&workspace, shape, round)?;
        let transfers = [
            warren_sync(&warren, tenant, store_dir).await?,
            anchors::rsync(rsync, &workspace, &whole, false).await?,
            anchors::rsync(rsync, &workspace, &delta, true).await?,
            restic.backup(&workspace).await?,
        ];
        for (c, t) in contenders.iter_mut().zip(transfers) {
            c.changes.push(t);
        }
    }
    Ok(contenders)
}

/// `files` files of random bytes, spread over `dirs` directories.
pub fn write_workspace(root: &Path, s: Shape) -> anyhow::Result<()> {
    let mut content = vec![0u8; s.file_bytes];
    for i in 0..s.files {
        let dir = root.join(format!("dir{:02}", i % s.dirs));
        std::fs::create_dir_all(&dir)?;
        rand::rng().fill_bytes(&mut content);
        std::fs::write(dir.join(format!("file{i:05}.bin")), &content)?;
    }
    Ok(())
}

/// Overwrites 4 KB of one file: in the middle of a different file each round, or, in
/// a one-file workspace, 1 MiB further on each round (wrapping).
fn change_4k(root: &Path, s: Shape, round: usize) -> anyhow::Result<()> {
    let i = (s.files / 2 + round * 7) % s.files;
    let span = (s.file_bytes - CHANGE_BYTES) as u64;
    let shift = if s.files == 1 {
        (round as u64) << 20
    } else {
        0
    };
    let offset = (span / 2 + shift) % span;
    let path = root
        .join(format!("dir{:02}", i % s.dirs))
        .join(format!("file{i:05}.bin"));
    let mut change = vec![0u8; CHANGE_BYTES];
    rand::rng().fill_bytes(&mut change);
    let file = std::fs::OpenOptions::new().write(true).open(&path)?;
    file.write_all_at(&change, offset)?;
    Ok(())
}

async fn warren_sync(
    engine: &SyncEngine,
    tenant: &TenantId,
    store_dir: &Path,
) -> anyhow::Result<Transfer> {
    let before = dir_bytes(store_dir)?;
    let started = Instant::now();
    let report = engine.sync(tenant, None).await?;
    let time = started.elapsed();
    ensure!(report.created, "warren's sync saw no change");
    let grew = dir_bytes(store_dir)?.saturating_sub(before);
    Ok(Transfer {
        bytes: report.bytes_uploaded,
        time,
        note: format!(
            "{} chunks; the store grew {}",
            report.chunks_uploaded,
            human(grew)
        ),
    })
}

// === impl restore ===

/// `prepare` of the tenant on an empty data dir: a full restore. Returns its time and
/// the bytes of the restored workspace.
async fn restore(store: Store, data_dir: &Path) -> anyhow::Result<(Duration, u64)> {
    let tenant = tenant(TENANT)?;
    let (engine, layout) = engine(store, data_dir);
    let started = Instant::now();
    let prepared = engine.prepare(&tenant).await?;
    let time = started.elapsed();
    ensure!(
        matches!(prepared, Prepared::Restored { .. }),
        "prepare did not restore: {prepared:?}"
    );
    Ok((time, dir_bytes(&layout.workspace(&tenant))?))
}

/// The bucket every S3 run of the benchmark uses, in a moto of its own.
pub const BUCKET: &str = "warren-bench";
/// The credentials given to moto (it accepts any): to the library here, and to a
/// gateway in `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
pub const S3_KEY: &str = "test";

/// Fails early, before a long run, if moto's S3 server is not installed.
pub fn require_moto() -> anyhow::Result<()> {
    ensure!(
        on_path("moto_server"),
        "moto_server is not on PATH: install it with `pip install 'moto[server]'` \
         (scripts/bench does)"
    );
    Ok(())
}

/// Starts moto's S3 server on 127.0.0.1 with `BUCKET` in it; dropping it stops moto.
pub async fn start_moto() -> anyhow::Result<Moto> {
    require_moto()?;
    // Moto's start and bucket creation block; on a panic, drop stops moto.
    tokio::task::spawn_blocking(|| {
        let moto = Moto::start();
        moto.create_bucket(BUCKET);
        moto
    })
    .await
    .context("cannot start moto_server")
}

/// `BUCKET` in `moto`, as a store of the library.
pub fn moto_store(moto: &Moto) -> anyhow::Result<Store> {
    Ok(Store::s3(
        &S3Options {
            endpoint: Some(format!("http://{}", moto.addr)),
            region: "us-east-1".into(),
            bucket: BUCKET.into(),
            access_key_id: Some(S3_KEY.into()),
            secret_access_key: Some(warren_core::Secret::new(S3_KEY)),
            allow_http: true,
            request_timeout: Duration::from_secs(30),
        },
        "",
    )?)
}

/// The same kind of workspace, synced to moto's S3 server, then restored.
async fn restore_from_s3(dir: &Path, shape: Shape) -> anyhow::Result<Restore> {
    let moto = start_moto().await?;
    let store = || moto_store(&moto);
    // A data dir of its own: one already synced to another store would upload only
    // what changed.
    let (engine, layout) = engine(store()?, &dir.join("s3-data"));
    let tenant = tenant(TENANT)?;
    write_workspace(&layout.workspace(&tenant), shape)?;
    let started = Instant::now();
    let report = engine.sync(&tenant, None).await?;
    let upload = started.elapsed();
    ensure!(report.created, "the sync to S3 made no snapshot");
    let (time, bytes) = restore(store()?, &dir.join("s3-restored")).await?;
    ensure!(
        bytes == shape.bytes(),
        "restored {bytes} bytes of {}",
        shape.bytes()
    );
    drop(moto);
    Ok(Restore {
        store: "S3 (moto_server on 127.0.0.1)",
        bytes,
        upload,
        time,
    })
}

// === impl the sweep ===

/// `tenants` small workspaces, swept once, then one file changed in each and swept
/// again, with the gateway's default concurrency and retention.
async fn sweep(dir: &Path, tenants: usize) -> anyhow::Result<SweepRun> {
    let (engine, layout) = engine(
        Store::local(&dir.join("sweep-store"), "")?,
        &dir.join("sweep-data"),
    );
    let concurrency = SweepConfig::default().concurrency;
    let mut rng = rand::rng();
    let ids: Vec<TenantId> = (0..tenants)
        .map(|i| tenant(&format!("user_sweep{i:05}")))
        .collect::<anyhow::Result<_>>()?;
    for id in &ids {
        let workspace = layout.workspace(id);
        std::fs::create_dir_all(workspace.join("memory"))?;
        for (name, size) in [
            ("config.json", 512),
            ("memory/notes.md", 4096),
            ("history.jsonl", 16384),
        ] {
            let mut content = vec![0u8; size];
            rng.fill_bytes(&mut content);
            std::fs::write(workspace.join(name), content)?;
        }
    }
    let first = timed_sweep(&engine, concurrency, tenants).await?;
    for id in &ids {
        // One more line of history: 256 bytes appended.
        let mut line = vec![0u8; 256];
        rng.fill_bytes(&mut line);
        let history = std::fs::OpenOptions::new()
            .write(true)
            .open(layout.workspace(id).join("history.jsonl"))?;
        history.write_all_at(&line, 16384)?;
    }
    let changed = timed_sweep(&engine, concurrency, tenants).await?;
    Ok(SweepRun {
        tenants,
        concurrency,
        first,
        changed,
    })
}

async fn timed_sweep(
    engine: &Arc<SyncEngine>,
    concurrency: usize,
    tenants: usize,
) -> anyhow::Result<(Duration, SweepReport)> {
    let started = Instant::now();
    let report = engine.sweep(concurrency, &|_| None, &|_| {}).await?;
    let time = started.elapsed();
    ensure!(
        report.failed == 0 && report.snapshots_created == tenants,
        "the sweep made {} snapshots of {tenants}, {} failed",
        report.snapshots_created,
        report.failed
    );
    Ok((time, report))
}

// === impl files ===

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}

/// The bytes of every file below `dir` (0 if it does not exist).
pub fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut total = 0;
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// The type of the filesystem `dir` is on, from `/proc/mounts` (longest mount point).
fn filesystem_of(dir: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let (device, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            dir.starts_with(point)
                .then(|| (point.len(), format!("{kind} ({device} on {point})")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, fs)| fs)
}

/// `25,912 B (25.3 KiB)`.
pub fn human(bytes: u64) -> String {
    let digits = bytes.to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let kib = bytes as f64 / 1024.0;
    if kib < 1.0 {
        format!("{grouped} B")
    } else if kib < 1024.0 {
        format!("{grouped} B ({kib:.1} KiB)")
    } else {
        format!("{grouped} B ({:.1} MiB)", kib / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_digits() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(999), "999 B");
        assert_eq!(human(25_912), "25,912 B (25.3 KiB)");
        assert_eq!(human(51_200_000), "51,200,000 B (48.8 MiB)");
    }
}
