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

/// What the thread does inside a namespace.
enum Job {
    Connect {
        netns: Arc<File>,
        addr: SocketAddr,
        reply: oneshot::Sender<std::io::Result<std::net::TcpStream>>,
    },
    Listen {
        netns: Arc<File>,
        addr: SocketAddr,
        reply: oneshot::Sender<std::io::Result<std::net::TcpListener>>,
    },
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
                    match job {
                        Job::Connect { netns, addr, reply } => {
                            let _ = reply.send(inside(&netns, &host, || {
                                // Loopback answers at once; a wait means the namespace
                                // is not up yet: fail fast and let the caller try again.
                                std::net::TcpStream::connect_timeout(
                                    &addr,
                                    Duration::from_millis(100),
                                )
                            }));
                        }
                        Job::Listen { netns, addr, reply } => {
                            let _ = reply.send(inside(&netns, &host, || listen(addr)));
                        }
                    }
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
                self.run(Job::Connect {
                    netns: netns.clone(),
                    addr: endpoint.addr,
                    reply,
                })?;
                rx.await.map_err(|_| gone())??
            }
        };
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        tokio::net::TcpStream::from_std(stream)
    }

    /// A listening socket on `addr` inside the network namespace `netns` (the host's
    /// with `None`). Connections to it come from that namespace: a sandbox's own
    /// loopback reaches the gateway this way and no other. It allows others of this
    /// user on the same address (`SO_REUSEPORT`), so a successor gateway can listen
    /// before its predecessor has let go.
    pub async fn listen(
        &self,
        netns: Option<&Arc<File>>,
        addr: SocketAddr,
    ) -> std::io::Result<tokio::net::TcpListener> {
        let listener = match netns {
            None => listen(addr)?,
            Some(netns) => {
                let (reply, rx) = oneshot::channel();
                self.run(Job::Listen {
                    netns: netns.clone(),
                    addr,
                    reply,
                })?;
                rx.await.map_err(|_| gone())??
            }
        };
        tokio::net::TcpListener::from_std(listener)
    }

    fn run(&self, job: Job) -> std::io::Result<()> {
        self.sender()?.send(job).map_err(|_| gone())
    }
}

fn gone() -> std::io::Error {
    std::io::Error::other("the namespace connector thread is gone")
}

/// A non-blocking listening socket on `addr`, shared with others of this user.
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    Ok(socket.into())
}

/// Enters `netns`, does `work`, and returns to `host`.
fn inside<T>(
    netns: &File,
    host: &File,
    work: impl FnOnce() -> std::io::Result<T>,
) -> std::io::Result<T> {
    setns(netns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
    let result = work();
    // Failing to return would leave this thread in a sandbox: stop it instead.
    setns(host, CloneFlags::CLONE_NEWNET)
        .expect("the connector thread returns to the host's network namespace");
    result
}
