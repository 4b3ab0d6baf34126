//! `warren backup-state FILE`: a consistent copy of the state store (tier assignments,
//! sandbox records, events), taken while the gateway runs. Workspaces need no backup
//! of this kind: they are in the store already.

use std::path::PathBuf;

use anyhow::Context as _;
use warren_state::SqliteStore;

use crate::admin_api::block_on;
use crate::settings::ConfigArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where the copy goes: a new file.
    file: PathBuf,
    #[command(flatten)]
    config: ConfigArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config.load()?;
    let path = config.state_path();
    if !path.exists() {
        anyhow::bail!("no state store at {}", path.display());
    }
    let state = SqliteStore::open(&path)?;
    block_on(state.back_up(&args.file))?
        .with_context(|| format!("cannot back up {}", path.display()))?;
    let size = std::fs::metadata(&args.file)?.len();
    println!(
        "{} backed up to {} ({size} bytes)",
        path.display(),
        args.file.display()
    );
    Ok(())
}
