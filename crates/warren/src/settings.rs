//! What `serve` and `token` share: the config from `--config` or the embedded
//! defaults, the `--data-dir` override, and the signing secret, resolved the same way
//! by both so a printed URL always works against the gateway.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rand::RngCore;
use warren_core::Secret;
use warren_core::config::Config;

#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArgs {
    /// A TOML config file; without one, the embedded defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where data lives (overrides `data_dir`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl ConfigArgs {
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut config = Config::load(self.config.as_deref(), |k| std::env::var(k).ok())?;
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        Ok(config)
    }
}

/// The signing secret: `WARREN_SIGNING_SECRET`, else the config, else the one
/// generated once under the data dir (created here on first use, mode 0600).
pub fn signing_secret(config: &Config) -> anyhow::Result<Secret> {
    if let Some(secret) = &config.auth.signing_secret {
        return Ok(secret.clone());
    }
    let path = config.data_dir.join("signing-secret");
    if let Some(secret) = read_secret(&path)? {
        return Ok(secret);
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // create_new: if another process won the race, use its secret.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut file) => {
            file.write_all(hex.as_bytes())?;
            file.sync_all()?;
            Ok(Secret::new(hex))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_secret(&path)?.with_context(|| format!("{} is empty", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot write {}", path.display())),
    }
}

fn read_secret(path: &Path) -> anyhow::Result<Option<Secret>> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(Secret::new(s.trim()))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}
