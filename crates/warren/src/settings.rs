//! What the commands share: the config from `--config` or the embedded defaults, the
//! `--data-dir` override, the secrets (resolved the same way by every command, so a
//! printed URL works against the gateway and the CLI can call its admin API), and the
//! store and sync engine the config names.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use anyhow::Context as _;
use rand::RngCore;
use warren_core::config::{Config, S3_ACCESS_KEY_ENV, S3_SECRET_KEY_ENV, StoreKind};
use warren_core::layout::Layout;
use warren_core::{Secret, TenantId};
use warren_store::retention::RetentionPolicy;
use warren_store::{S3Options, Store, SyncEngine, SyncSettings};

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
    match &config.auth.signing_secret {
        Some(secret) => Ok(secret.clone()),
        None => generated_secret(&config.data_dir, "signing-secret"),
    }
}

/// The admin API's bearer token: `WARREN_ADMIN_TOKEN`, else the config, else the one
/// generated once under the data dir, which the CLI on this machine reads.
pub fn admin_token(config: &Config) -> anyhow::Result<Secret> {
    match &config.admin.token {
        Some(token) => Ok(token.clone()),
        None => generated_secret(&config.data_dir, "admin-token"),
    }
}

/// A secret kept in `<data_dir>/<name>`: 32 random bytes as hex, created on first use.
fn generated_secret(data_dir: &Path, name: &str) -> anyhow::Result<Secret> {
    let path = data_dir.join(name);
    if let Some(secret) = read_secret(&path)? {
        return Ok(secret);
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
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

/// The store the config names. S3 credentials come from the environment only.
pub fn store(config: &Config) -> anyhow::Result<Store> {
    let c = &config.store;
    let store = match c.kind {
        StoreKind::Local => Store::local(&config.store_path(), &c.prefix)?,
        StoreKind::S3 => Store::s3(
            &S3Options {
                endpoint: c.endpoint.clone(),
                region: c.region.clone(),
                bucket: c.bucket.clone().unwrap_or_default(),
                access_key_id: std::env::var(S3_ACCESS_KEY_ENV).ok(),
                secret_access_key: std::env::var(S3_SECRET_KEY_ENV).ok().map(Secret::new),
                allow_http: c.allow_http,
                request_timeout: c.request_timeout.0,
            },
            &c.prefix,
        )?,
    };
    Ok(store)
}

/// The sync engine over the configured store; `writer` names this process in the
/// snapshots it writes.
pub fn sync_engine(config: &Config, writer: &str) -> anyhow::Result<Arc<SyncEngine>> {
    let r = &config.retention;
    let settings = SyncSettings {
        debounce: config.sync.debounce.0,
        max_delay: config.sync.max_delay.0,
        safety_interval: config.sync.safety_interval.0,
        upload_concurrency: config.sync.upload_concurrency,
        retention: RetentionPolicy {
            keep_all_for: r.keep_all_for.0,
            hourly_for: r.hourly_for.0,
            daily_for: r.daily_for.0,
            gc_grace: r.gc_grace.0,
        },
        single_writer: config.sync.single_writer,
        exclude: config.sync_exclude(),
    };
    Ok(SyncEngine::new(
        store(config)?,
        Layout::new(&config.data_dir),
        settings,
        writer.to_owned(),
    ))
}

/// A tenant (user) id from the command line, checked as the gateway checks it.
pub fn parse_tenant(raw: &str) -> Result<TenantId, String> {
    TenantId::parse(raw).map_err(|e| format!("invalid user id {raw:?}: {e}"))
}

/// A name for this process in snapshot records: what, where, and which run.
pub fn writer_id(role: &str) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!("{role}@{host}:{}", std::process::id())
}
