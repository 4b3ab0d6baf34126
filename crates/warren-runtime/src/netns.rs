//! Reaching an agent inside its sandbox's network namespace. Every sandbox has its own
//! loopback, so every agent listens on the same `127.0.0.1` port and none can reach
//! another's; the gateway connects from a thread that steps into the sandbox's
//! namespace for the `connect` and straight back out. A socket keeps the namespace it
//! was made in, so the connection is then used from anywhere like any other.

use std::fs::File;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use tokio::sync::oneshot;

/// Where an agent listens: an address, inside a network namespace or in the host's.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `/proc/<pid>/ns/net` of a process in the sandbox, held open.
    pub netns: Option<Arc<File>>,
}

struct Job {
    netns: Arc<File>,
    addr: SocketAddr,
    reply: oneshot::Sender<std::io::Result<std::net::TcpStream>>,
}

/// Connects to endpoints, entering their namespaces on one dedicated thread.
#[derive(Clone)]
pub struct Connector {
    jobs: Arc<Mutex<Option<mpsc::Sender<Job>>>>,
}

impl Default for Connector {
    fn default() -> Self {
        Self::new()
    }
}

impl Connector {
    pub fn new() -> Self {
        Self {
            jobs: Arc::new(Mutex::new(None)),
        }
    }

    fn sender(&self) -> std::io::Result<mpsc::Sender<Job>> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = jobs.as_ref() {
            return Ok(tx.clone());
        }
        let host = File::open("/proc/thread-self/ns/net")?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("netns-connect".into())
            .spawn(move || {
                for job in rx {
                    let result = connect_inside(&job.netns, &host, job.addr);
                    let _ = job.reply.send(result);
                }
            })?;
        *jobs = Some(tx.clone());
        Ok(tx)
    }

    /// A connected, non-blocking TCP stream to `endpoint`.
    pub async fn connect(&self, endpoint: &Endpoint) -> std::io::Result<tokio::net::TcpStream> {
        let stream = match &endpoint.netns {
            None => return tokio::net::TcpStream::connect(endpoint.addr).await,
            Some(netns) => {
                let (reply, rx) = oneshot::channel();
                self.sender()?
                    .send(Job {
                        netns: netns.clone(),
                        addr: endpoint.addr,
                        reply,
                    })
                    .map_err(|_| std::io::Error::other("the namespace connector thread is gone"))?;
                rx.await.map_err(|_| {
                    std::io::Error::other("the namespace connector thread is gone")
                })??
            }
        };
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        tokio::net::TcpStream::from_std(stream)
    }
}

/// Enters `netns`, connects (loopback: at once or refused), and returns to `host`.
fn connect_inside(
    netns: &File,
    host: &File,
    addr: SocketAddr,
) -> std::io::Result<std::net::TcpStream> {
    setns(netns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
    // Loopback answers at once; a wait means the namespace is not up yet: fail fast and
    // let the caller try again.
    let result = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100));
    // Failing to return would leave this thread in a sandbox: stop it instead.
    setns(host, CloneFlags::CLONE_NEWNET)
        .expect("the connector thread returns to the host's network namespace");
    result
}
