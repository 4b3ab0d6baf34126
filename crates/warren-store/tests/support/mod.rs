//! Real stores for the store suite: a local directory, and moto's S3 server started on
//! 127.0.0.1 behind a TCP fault proxy that can cut the network on demand.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use warren_core::layout::Layout;
use warren_store::retention::RetentionPolicy;
use warren_store::{S3Options, Store, SyncEngine, SyncSettings};

/// How often a wait looks again at what it waits for.
pub const POLL: Duration = Duration::from_millis(20);

/// moto's S3 server, stopped on drop.
pub struct Moto {
    child: Child,
    pub addr: SocketAddr,
}

impl Moto {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run moto_server ({e}): install it with `pip install 'moto[server]'` (scripts/test does)")
            });
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let moto = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen within 30 s"
            );
            std::thread::sleep(POLL);
        }
        moto
    }

    /// Creates a bucket (moto needs no signature for it).
    pub fn create_bucket(&self, name: &str) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.addr).unwrap();
        write!(
            s,
            "PUT /{name} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "create bucket: {reply}");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy whose link can be cut (refusing new connections and dropping open ones)
/// and healed: a real network outage between the gateway and the store.
pub struct FaultProxy {
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
}

impl FaultProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, _) = watch::channel(true);
        let up_rx = up.subscribe();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut up = up_rx.clone();
                if !*up.borrow() {
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = up.wait_for(|u| !*u) => {}
                    }
                });
            }
        });
        Self { addr, up }
    }

    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn heal(&self) {
        self.up.send_replace(true);
    }
}

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

pub fn settings(retention: RetentionPolicy) -> SyncSettings {
    SyncSettings {
        debounce: Duration::from_millis(100),
        max_delay: Duration::from_millis(400),
        safety_interval: Duration::from_secs(30),
        upload_concurrency: 8,
        retention,
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
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let engine = SyncEngine::new(
            backend.store(),
            layout.clone(),
            settings(retention),
            writer.into(),
        );
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
