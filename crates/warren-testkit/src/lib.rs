//! Real services for warren's tests, started on 127.0.0.1 (or a private socket) and
//! stopped on drop: moto's S3-compatible server, Podman's Docker-compatible API, and a
//! TCP fault proxy that can cut a link on demand.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

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

    /// Creates a bucket (moto needs no signature for it). A server that listens may
    /// still drop its first connections while it starts: those are tried again, until
    /// an answer comes or 30 s have passed.
    pub fn create_bucket(&self, name: &str) {
        use std::io::{Read, Write};
        let deadline = Instant::now() + Duration::from_secs(30);
        let ask = || -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(self.addr)?;
            write!(
                s,
                "PUT /{name} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.addr
            )?;
            let mut reply = String::new();
            s.read_to_string(&mut reply)?;
            Ok(reply)
        };
        let reply = loop {
            match ask() {
                Ok(reply) if !reply.is_empty() => break reply,
                other => assert!(
                    Instant::now() < deadline,
                    "moto_server never answered the bucket's creation: {other:?}"
                ),
            }
            std::thread::sleep(POLL);
        };
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
    up: Arc<watch::Sender<bool>>,
    /// Bytes towards the target still allowed before the link is cut; negative: no limit.
    budget: Arc<AtomicI64>,
}

impl FaultProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(watch::channel(true).0);
        let budget = Arc::new(AtomicI64::new(-1));
        let (up2, budget2) = (up.clone(), budget.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if !*up2.borrow() {
                    drop(client);
                    continue;
                }
                let (up, budget) = (up2.clone(), budget2.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut down = up.subscribe();
                    let (client_rx, client_tx) = client.into_split();
                    let (server_rx, server_tx) = server.into_split();
                    tokio::select! {
                        _ = pipe(client_rx, server_tx, Some((&budget, &up))) => {}
                        _ = pipe(server_rx, client_tx, None) => {}
                        _ = down.wait_for(|u| !*u) => {}
                    }
                });
            }
        });
        Self { addr, up, budget }
    }

    /// Cuts the link now: open connections drop, new ones are refused.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Cuts the link once `bytes` more have gone towards the target: an outage in the
    /// middle of whatever is being sent.
    pub fn cut_after(&self, bytes: i64) {
        self.budget.store(bytes, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.budget.store(-1, Ordering::SeqCst);
        self.up.send_replace(true);
    }
}

/// Copies until EOF; with a budget, cuts the link when the budget runs out.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    budget: Option<(&AtomicI64, &watch::Sender<bool>)>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some((budget, up)) = budget {
            let left = budget.load(Ordering::SeqCst);
            if left >= 0 {
                let after = budget.fetch_sub(n as i64, Ordering::SeqCst) - n as i64;
                if after < 0 {
                    up.send_replace(false);
                    return;
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Podman's Docker-compatible API (`podman system service`) on a socket of its own,
/// stopped on drop. Containers it made outlive it (they belong to Podman's storage, not
/// to the service); the tests' gateways remove their own.
pub struct Podman {
    child: Child,
    _dir: tempfile::TempDir,
    pub socket: std::path::PathBuf,
}

/// How to get Podman where it is missing.
const INSTALL_PODMAN: &str = "install it with `apt-get install podman runc catatonit` and set \
     `runtime = \"runc\"` in /etc/containers/containers.conf.d/ (scripts/test does both)";

impl Podman {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("podman.sock");
        let child = Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            // conmon writes an `oom` file into its working directory when it hears
            // of an OOM kill (seen with conmon 2.1.6): keep it out of the checkout.
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run podman ({e}): {INSTALL_PODMAN}"));
        let podman = Self {
            child,
            _dir: dir,
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&podman.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "podman system service did not listen within 30 s"
            );
            std::thread::sleep(POLL);
        }
        podman
    }

    /// The service's process id (its memory is what the engine itself costs).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds an image with `scripts/build-image` (its arguments), once per test process
/// and tag: later calls with the same tag return at once.
pub fn build_image(tag: &str, entrypoint: &str, paths: &[&str]) {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if built.iter().any(|t| t == tag) {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/build-image");
    let out = Command::new(script)
        .arg(tag)
        .arg(entrypoint)
        .args(paths)
        .stdout(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} {tag} failed: {}\n{INSTALL_PODMAN}",
        String::from_utf8_lossy(&out.stderr)
    );
    built.push(tag.to_owned());
}
