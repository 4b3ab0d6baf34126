//! Real stores for the store suite: a local directory, and moto's S3 server started on
//! 127.0.0.1 behind a TCP fault proxy that can cut the network on demand.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use warren_core::layout::Layout;
use warren_store::retention::RetentionPolicy;
use warren_store::{S3Options, Store, SyncEngine, SyncSettings};
pub use warren_testkit::{FaultProxy, Moto, POLL};

/// One of the two store kinds, with a way to make it fail.
pub enum Backend {
    Local {
        dir: tempfile::TempDir,
    },
    S3 {
        moto: Moto,
        proxy: FaultProxy,
        bucket: String,
    },
}

impl Backend {
    pub fn local() -> Self {
        Backend::Local {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub async fn s3() -> Self {
        let moto = Moto::start();
        let bucket = "warren-test".to_owned();
        moto.create_bucket(&bucket);
        let proxy = FaultProxy::start(moto.addr).await;
        Backend::S3 {
            moto,
            proxy,
            bucket,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Local { .. } => "local",
            Backend::S3 { .. } => "s3",
        }
    }

    fn store_dir(&self) -> Option<PathBuf> {
        match self {
            Backend::Local { dir } => Some(dir.path().join("store")),
            Backend::S3 { .. } => None,
        }
    }

    /// A client of this store, as a gateway would build it.
    pub fn store(&self) -> Store {
        match self {
            Backend::Local { .. } => Store::local(&self.store_dir().unwrap(), "").unwrap(),
            Backend::S3 { proxy, bucket, .. } => Store::s3(
                &S3Options {
                    endpoint: Some(format!("http://{}", proxy.addr)),
                    region: "us-east-1".into(),
                    bucket: bucket.clone(),
                    access_key_id: Some("test".into()),
                    secret_access_key: Some(warren_core::Secret::new("test")),
                    allow_http: true,
                    request_timeout: Duration::from_secs(5),
                },
                "warren",
            )
            .unwrap(),
        }
    }

    /// Makes the store unreachable: the network is cut (S3) or the directory is gone
    /// and a file stands in its place (local).
    pub fn break_store(&self) {
        match self {
            Backend::Local { .. } => {
                let dir = self.store_dir().unwrap();
                std::fs::rename(&dir, dir.with_extension("away")).unwrap();
                std::fs::write(&dir, b"not a directory").unwrap();
            }
            Backend::S3 { proxy, .. } => proxy.cut(),
        }
    }

    /// Makes the store fail part-way through what is sent next: the S3 link is cut
    /// after `bytes` more go out; a local directory cannot fail half-way on demand, so
    /// it fails at once.
    pub fn break_store_after(&self, bytes: i64) {
        match self {
            Backend::Local { .. } => self.break_store(),
            Backend::S3 { proxy, .. } => proxy.cut_after(bytes),
        }
    }

    pub fn heal_store(&self) {
        match self {
            Backend::Local { .. } => {
                let dir = self.store_dir().unwrap();
                std::fs::remove_file(&dir).unwrap();
                std::fs::rename(dir.with_extension("away"), &dir).unwrap();
            }
            Backend::S3 { proxy, .. } => proxy.heal(),
        }
    }
}

/// Both backends, for a suite that must pass on each.
pub async fn backends() -> Vec<Backend> {
    vec![Backend::local(), Backend::s3().await]
}

/// The tests' settings, keeping everything, changed by `change`.
pub fn settings_with(change: impl FnOnce(&mut SyncSettings)) -> SyncSettings {
    let mut s = settings(keep_everything());
    change(&mut s);
    s
}

pub fn settings(retention: RetentionPolicy) -> SyncSettings {
    SyncSettings {
        debounce: Duration::from_millis(100),
        max_delay: Duration::from_millis(400),
        safety_interval: Duration::from_secs(30),
        upload_concurrency: 8,
        retention,
        single_writer: false,
        exclude: Vec::new(),
    }
}

pub fn keep_everything() -> RetentionPolicy {
    let long = Duration::from_secs(365 * 86_400);
    RetentionPolicy {
        keep_all_for: long,
        hourly_for: long,
        daily_for: long,
        gc_grace: long,
    }
}

/// A "machine": its own data dir and sync engine, sharing the store.
pub struct Machine {
    pub dir: tempfile::TempDir,
    pub layout: Layout,
    pub engine: Arc<SyncEngine>,
}

impl Machine {
    pub fn new(backend: &Backend, writer: &str) -> Self {
        Self::with_retention(backend, writer, keep_everything())
    }

    pub fn with_retention(backend: &Backend, writer: &str, retention: RetentionPolicy) -> Self {
        Self::with_settings_of(backend, writer, settings(retention))
    }

    /// A machine whose sync settings are the tests' own, changed by `change`.
    pub fn with_settings(
        backend: &Backend,
        writer: &str,
        change: impl FnOnce(&mut SyncSettings),
    ) -> Self {
        Self::with_settings_of(backend, writer, settings_with(change))
    }

    fn with_settings_of(backend: &Backend, writer: &str, settings: SyncSettings) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let engine = SyncEngine::new(backend.store(), layout.clone(), settings, writer.into());
        Self {
            dir,
            layout,
            engine,
        }
    }

    pub fn workspace(&self, tenant: &warren_core::TenantId) -> PathBuf {
        self.layout.workspace(tenant)
    }
}

/// Writes `files` (path, content) under `root`.
pub fn write_files(root: &Path, files: &[(&str, &[u8])]) {
    for (path, content) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
}

/// Every file below `root` with its content, sorted.
pub fn read_tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    fn go(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if meta.is_dir() {
                go(root, &p, out);
            } else if meta.is_file() {
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    if root.exists() {
        go(root, root, &mut out);
    }
    out
}
