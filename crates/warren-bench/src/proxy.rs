//! Proxy overhead, side by side in one run: the same echo agent code reached directly,
//! through warren (the gateway's own sandbox) and through nginx (a stand-alone agent).
//!
//! Every target is warmed up first. Then the run goes in rounds; each round measures
//! every metric on every target in turn, starting with a different target each round,
//! so drift on a shared machine (other load, CPU frequency) spreads over all three.
//! Latencies are pooled over the rounds; rates are total round trips over total time.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;

use crate::launch::{CpuTicks, EchoAgent, Gateway, GatewayStopped, clock_ticks_per_sec, cpu_ticks};
use crate::load::{self, Rate, Samples, Target};
use crate::nginx::Nginx;

pub struct Settings {
    pub rounds: usize,
    /// Round trips of each latency run (per target and round).
    pub requests: usize,
    /// Connections of each throughput run.
    pub connections: usize,
    /// Length of each throughput run (per target and round).
    pub duration: Duration,
    /// Size of each request body and message.
    pub body_bytes: usize,
}

/// The column order of every row.
pub const TARGETS: [&str; 3] = ["direct", "warren", "nginx"];

/// One line of the table: a value per target, in `TARGETS` order.
pub struct Row {
    pub metric: String,
    /// Direct has no proxy: some rows have no value for it.
    pub values: [Option<f64>; 3],
    pub lower_is_better: bool,
}

pub struct ProxyRun {
    pub rows: Vec<Row>,
    pub stopped: GatewayStopped,
}

/// Whose CPU time to charge to a proxy: the gateway alone (not its sandboxes), or
/// nginx's master with its workers.
#[derive(Clone, Copy)]
struct Proxy {
    pid: u32,
    with_children: bool,
}

/// What one target piled up over the rounds.
#[derive(Default)]
struct Tally {
    http_rtt: Vec<Duration>,
    ws_rtt: Vec<Duration>,
    http: Totals,
    ws: Totals,
}

#[derive(Default)]
struct Totals {
    count: u64,
    elapsed: Duration,
    cpu: CpuTicks,
}

impl Totals {
    fn add(&mut self, rate: &Rate, cpu: CpuTicks) {
        self.count += rate.count;
        self.elapsed += rate.elapsed;
        self.cpu.user += cpu.user;
        self.cpu.system += cpu.system;
    }

    fn per_sec(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Runs `measure` and returns its result with the CPU ticks `proxy` used meanwhile.
async fn with_cpu<T>(
    proxy: Option<Proxy>,
    measure: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, CpuTicks)> {
    let ticks = || proxy.map_or(CpuTicks::default(), |p| cpu_ticks(p.pid, p.with_children));
    let before = ticks();
    let result = measure.await?;
    Ok((result, ticks().since(before)))
}

pub async fn run(
    warren: &Path,
    nginx: &Path,
    dir: &Path,
    s: &Settings,
) -> anyhow::Result<ProxyRun> {
    let agent = EchoAgent::start(warren, &dir.join("agent")).await?;
    let nginx = Nginx::start(nginx, &dir.join("nginx"), agent.address).await?;
    let gateway = Gateway::start(warren, &dir.join("gateway"), 4).await?;
    let cookie = gateway.cookie("user_proxy")?;
    let body = Bytes::from(vec![b'x'; s.body_bytes]);
    let text = "y".repeat(s.body_bytes);

    let target = |i: usize, address| Target {
        name: TARGETS[i],
        address,
        cookie: Some(cookie.clone()),
    };
    let targets = [
        target(0, agent.address),
        target(1, gateway.address),
        target(2, nginx.address),
    ];
    let proxies = [
        None,
        gateway.process.pid().map(|pid| Proxy {
            pid,
            with_children: false,
        }),
        nginx.process.pid().map(|pid| Proxy {
            pid,
            with_children: true,
        }),
    ];

    // Warm-up: wakes warren's sandbox, fills every connection pool, faults in code.
    for t in &targets {
        let warm = async {
            load::http_latency(t, 1000, &body).await?;
            load::http_throughput(t, s.connections, Duration::from_secs(1), &body).await?;
            load::ws_latency(t, 500, &text).await
        };
        warm.await
            .with_context(|| format!("warming up {}", t.name))?;
    }

    let mut tally: [Tally; 3] = Default::default();
    for round in 0..s.rounds {
        let order = [0, 1, 2].map(|k| (k + round) % 3);
        for &i in &order {
            let rtt = load::http_latency(&targets[i], s.requests, &body).await?;
            tally[i].http_rtt.extend(rtt);
        }
        for &i in &order {
            let run = load::http_throughput(&targets[i], s.connections, s.duration, &body);
            let (rate, cpu) = with_cpu(proxies[i], run).await?;
            tally[i].http.add(&rate, cpu);
        }
        for &i in &order {
            let rtt = load::ws_latency(&targets[i], s.requests, &text).await?;
            tally[i].ws_rtt.extend(rtt);
        }
        for &i in &order {
            let run = load::ws_throughput(&targets[i], s.connections, s.duration, &text);
            let (rate, cpu) = with_cpu(proxies[i], run).await?;
            tally[i].ws.add(&rate, cpu);
        }
    }

    let stopped = gateway.stop().await?;
    nginx.process.stop().await?;
    agent.process.stop().await?;
    Ok(ProxyRun {
        rows: rows(tally, &proxies, s.connections),
        stopped,
    })
}

fn rows(tally: [Tally; 3], proxies: &[Option<Proxy>; 3], connections: usize) -> Vec<Row> {
    let tick_us = 1e6 / clock_ticks_per_sec() as f64;
    let http_rtt = tally.each_ref().map(|t| Samples::new(t.http_rtt.clone()));
    let ws_rtt = tally.each_ref().map(|t| Samples::new(t.ws_rtt.clone()));
    let us = |d: Duration| Some(d.as_secs_f64() * 1e6);
    let pct = |s: &[Samples; 3], q: f64| s.each_ref().map(|s| us(s.percentile(q)));
    let rate = |f: fn(&Tally) -> &Totals| tally.each_ref().map(|t| Some(f(t).per_sec()));
    // Microseconds of CPU per round trip; `kernel` picks system time alone.
    let cpu = |f: fn(&Tally) -> &Totals, kernel: bool| {
        let mut v = [None; 3];
        for i in 0..3 {
            let t = f(&tally[i]);
            let ticks = if kernel {
                t.cpu.system
            } else {
                t.cpu.user + t.cpu.system
            };
            if proxies[i].is_some() && t.count > 0 {
                v[i] = Some(ticks as f64 * tick_us / t.count as f64);
            }
        }
        v
    };
    let row = |metric: String, values, lower_is_better| Row {
        metric,
        values,
        lower_is_better,
    };
    vec![
        row(
            "HTTP round trip p50 (µs)".into(),
            pct(&http_rtt, 0.50),
            true,
        ),
        row(
            "HTTP round trip p99 (µs)".into(),
            pct(&http_rtt, 0.99),
            true,
        ),
        row(
            format!("HTTP throughput, {connections} connections (req/s)"),
            rate(|t| &t.http),
            false,
        ),
        row(
            "proxy CPU per HTTP request (µs)".into(),
            cpu(|t| &t.http, false),
            true,
        ),
        row(
            "… of which in the kernel (µs)".into(),
            cpu(|t| &t.http, true),
            true,
        ),
        row(
            "WebSocket round trip p50 (µs)".into(),
            pct(&ws_rtt, 0.50),
            true,
        ),
        row(
            "WebSocket round trip p99 (µs)".into(),
            pct(&ws_rtt, 0.99),
            true,
        ),
        row(
            format!("WebSocket throughput, {connections} connections (msg/s)"),
            rate(|t| &t.ws),
            false,
        ),
        row(
            "proxy CPU per WebSocket message (µs)".into(),
            cpu(|t| &t.ws, false),
            true,
        ),
        row(
            "… of which in the kernel (µs)".into(),
            cpu(|t| &t.ws, true),
            true,
        ),
    ]
}
