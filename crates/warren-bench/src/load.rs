//! Load loops and their numbers. Latency: one connection, one request (or message) at a
//! time, each timed. Throughput: `connections` connections, each doing request and
//! response in a loop until a deadline. Every loop is bounded in count and in time; any
//! failed request fails the run, since a number measured over errors means nothing.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use tokio::time::Instant;

use crate::client::{HttpConn, WsConn};

/// No single connection does more than this many round trips in a throughput run.
const MAX_PER_CONNECTION: u64 = 10_000_000;
/// A latency run stops here even if requests remain.
const LATENCY_DEADLINE: Duration = Duration::from_secs(60);

/// Where a client sends its traffic, and the cookie it holds.
#[derive(Clone)]
pub struct Target {
    pub name: &'static str,
    pub address: SocketAddr,
    /// Sent to every target alike, so each sees the same request bytes; only warren
    /// reads it.
    pub cookie: Option<String>,
}

/// Timings, sorted.
#[derive(Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn new(mut timings: Vec<Duration>) -> Self {
        timings.sort_unstable();
        Self(timings)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The nearest-rank percentile, `q` in 0..=1.
    pub fn percentile(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        self.0[rank - 1]
    }

    pub fn mean(&self) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        self.0.iter().sum::<Duration>() / self.0.len() as u32
    }
}

/// Round trips completed over a wall-clock time.
pub struct Rate {
    pub count: u64,
    pub elapsed: Duration,
}

/// `requests` `POST /echo` one after another on one keep-alive connection.
pub async fn http_latency(
    target: &Target,
    requests: usize,
    body: &Bytes,
) -> anyhow::Result<Vec<Duration>> {
    let mut conn = HttpConn::connect(target.address).await?;
    let cookie = target.cookie.as_deref();
    let deadline = Instant::now() + LATENCY_DEADLINE;
    let mut timings = Vec::with_capacity(requests);
    while timings.len() < requests && Instant::now() < deadline {
        let started = Instant::now();
        conn.echo(cookie, body)
            .await
            .with_context(|| format!("{}: HTTP request {}", target.name, timings.len()))?;
        timings.push(started.elapsed());
    }
    Ok(timings)
}

/// `messages` text messages one after another on one WebSocket, each awaiting its echo.
pub async fn ws_latency(
    target: &Target,
    messages: usize,
    text: &str,
) -> anyhow::Result<Vec<Duration>> {
    let mut ws = WsConn::connect(target.address, target.cookie.as_deref()).await?;
    let deadline = Instant::now() + LATENCY_DEADLINE;
    let mut timings = Vec::with_capacity(messages);
    while timings.len() < messages && Instant::now() < deadline {
        let started = Instant::now();
        ws.round_trip(text)
            .await
            .with_context(|| format!("{}: WebSocket message {}", target.name, timings.len()))?;
        timings.push(started.elapsed());
    }
    ws.close().await;
    Ok(timings)
}

/// `connections` keep-alive connections doing `POST /echo` for `duration`.
pub async fn http_throughput(
    target: &Target,
    connections: usize,
    duration: Duration,
    body: &Bytes,
) -> anyhow::Result<Rate> {
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(HttpConn::connect(target.address).await?);
    }
    let run = |mut conn: HttpConn, cookie: Option<String>, body: Bytes, deadline: Instant| async move {
        let mut done = 0u64;
        while done < MAX_PER_CONNECTION && Instant::now() < deadline {
            conn.echo(cookie.as_deref(), &body).await?;
            done += 1;
        }
        anyhow::Ok(done)
    };
    together(target.name, conns, duration, |conn, deadline| {
        run(conn, target.cookie.clone(), body.clone(), deadline)
    })
    .await
}

/// `connections` WebSockets, each sending a message and awaiting its echo, for
/// `duration`.
pub async fn ws_throughput(
    target: &Target,
    connections: usize,
    duration: Duration,
    text: &str,
) -> anyhow::Result<Rate> {
    let mut sockets = Vec::with_capacity(connections);
    for _ in 0..connections {
        sockets.push(WsConn::connect(target.address, target.cookie.as_deref()).await?);
    }
    let run = |mut ws: WsConn, text: String, deadline: Instant| async move {
        let mut done = 0u64;
        while done < MAX_PER_CONNECTION && Instant::now() < deadline {
            ws.round_trip(&text).await?;
            done += 1;
        }
        ws.close().await;
        anyhow::Ok(done)
    };
    together(target.name, sockets, duration, |ws, deadline| {
        run(ws, text.to_owned(), deadline)
    })
    .await
}

/// Runs one task per connection, all with the same deadline, and adds up their counts.
/// The connections are open beforehand, so spawning them all takes microseconds.
async fn together<C, F, Fut>(
    name: &str,
    conns: Vec<C>,
    duration: Duration,
    task: F,
) -> anyhow::Result<Rate>
where
    F: Fn(C, Instant) -> Fut,
    Fut: Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    let start = Instant::now();
    let deadline = start + duration;
    let handles: Vec<_> = conns
        .into_iter()
        .map(|conn| tokio::spawn(task(conn, deadline)))
        .collect();
    let mut count = 0;
    for handle in handles {
        count += handle
            .await
            .context("a load task panicked")?
            .with_context(|| format!("{name}: under load"))?;
    }
    Ok(Rate {
        count,
        elapsed: start.elapsed(),
    })
}
