//! `warren recover`: brings a machine back from the store alone. Every tenant the store
//! holds gets its newest snapshot restored into the data dir, before any gateway runs
//! on it; with `--state`, the state store (tier assignments, sandbox records, events)
//! comes back from a backup `warren backup-state` made.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use warren_core::sandbox::{SandboxState, StopCause};
use warren_gateway::serve::lock_data_dir;
use warren_state::{SqliteStore, StateStore, Transition};
use warren_store::engine::Prepared;

use crate::admin_api::block_on;
use crate::settings::{ConfigArgs, sync_engine, writer_id};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A backup of the state store to put in place first (from `warren backup-state`).
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config.load()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
    // Held to the end: no gateway starts on this data dir meanwhile.
    let _lock = lock_data_dir(&config.data_dir, false)
        .context("a gateway runs on this data dir; recover a machine before starting it")?;
    block_on(async {
        if let Some(backup) = &args.state {
            install_state(backup, &config.state_path()).await?;
            println!("state store: put in place from {}", backup.display());
        }
        let engine = sync_engine(&config, &writer_id("recover"))?;
        let tenants = engine
            .store()
            .tenants()
            .await
            .context("cannot list the store's tenants")?;
        let mut failed = 0;
        for tenant in &tenants {
            match engine.prepare(tenant).await {
                Ok(Prepared::Restored { seq, .. }) => println!("{tenant}: restored snapshot {seq}"),
                Ok(Prepared::Current) => println!("{tenant}: the local copy is current"),
                Err(e) => {
                    failed += 1;
                    eprintln!("{tenant}: cannot restore: {e}");
                }
            }
        }
        println!("{} tenants, {failed} failed", tenants.len());
        if failed > 0 {
            bail!("{failed} tenants could not be restored; run `warren recover` again");
        }
        Ok(())
    })?
}

/// Puts the state store backup `backup` at `dest`, checked first to be one, and only
/// where no state store with any record is.
async fn install_state(backup: &Path, dest: &Path) -> anyhow::Result<()> {
    if !backup.is_file() {
        bail!("{} is not a file", backup.display());
    }
    let readable = async {
        // Closed again before the copy.
        SqliteStore::open(backup)?.sandboxes().await?;
        Ok::<_, warren_state::StateError>(())
    };
    readable
        .await
        .with_context(|| format!("{} is not a state store backup", backup.display()))?;
    if dest.exists() {
        let existing = SqliteStore::open(dest)?;
        let rows = existing.sandboxes().await?.len() + existing.tiers().await?.len();
        if rows > 0 {
            bail!(
                "{} already holds {rows} records; move it away to recover from a backup",
                dest.display()
            );
        }
    }
    // SQLite's own names for the files beside a database, whatever its name.
    let beside = |suffix: &str| PathBuf::from(format!("{}{suffix}", dest.display()));
    let staged = beside(".recovering");
    std::fs::copy(backup, &staged)
        .with_context(|| format!("cannot copy {} to {}", backup.display(), staged.display()))?;
    for stale in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(beside(stale));
    }
    std::fs::rename(&staged, dest)?;
    // The sandboxes the backup saw running ran on the lost machine: none is to be
    // taken back here (a pid on this machine is another process).
    let state = SqliteStore::open(dest)?;
    for row in state.live_sandboxes().await? {
        state
            .record(&Transition {
                tenant: row.tenant,
                state: SandboxState::Asleep,
                at_ms: warren_gateway::unix_ms(),
                cause: Some(StopCause::Crash),
                identity: None,
                detail: Some("it ran on a machine recovered from the store".into()),
            })
            .await?;
    }
    Ok(())
}
