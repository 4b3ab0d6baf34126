//! Cold starts: the first request of users whose sandboxes are asleep, one user after
//! another, timed by the client and split into the phases the gateway reports in
//! `Server-Timing` (admission, restore, create, boot); what remains is the proxy and
//! the first byte. At capacity, every start first evicts the least recently used idle
//! sandbox, which shows up in admission. With a 10 MiB workspace, from S3 and with a
//! warm pool: see `cold_start_phases`.
//!
//! Each user's connection is opened, and its status checked as `asleep`, before the
//! clock starts: the time is that of the one request that wakes the sandbox.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use http::StatusCode;
use tokio::time::Instant;

use crate::client::HttpConn;
use crate::launch::{Gateway, GatewayStopped, processes_under, rss_kib, sandboxes_under};
use crate::load::Samples;

/// The request that wakes a sandbox.
const FIRST_BODY: &[u8] = b"hello, sandbox";

pub struct ColdStart {
    pub max_instances: usize,
    pub total: Samples,
    pub admission: Samples,
    pub restore: Samples,
    pub create: Samples,
    pub boot: Samples,
    /// Client time not covered by the four phases: proxying, first byte, parsing.
    pub rest: Samples,
    /// The most sandboxes seen running at once (checked after every start).
    pub most_running: usize,
    pub sandboxes_running: usize,
    pub gateway_rss_kib: u64,
    pub sandboxes_rss_kib: u64,
    /// How the gateway stopped, with every sandbox running.
    pub stopped: GatewayStopped,
}

/// The phases of one start, as the gateway reports them in `Server-Timing`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases {
    /// Waiting for a slot (at capacity, the eviction that frees one).
    pub admission: Duration,
    /// Making the workspace match the newest snapshot (nothing to do when it does).
    pub restore: Duration,
    /// The runtime makes the sandbox (or claims a pooled one).
    pub create: Duration,
    /// Until the agent answers its readiness probe.
    pub boot: Duration,
}

impl Phases {
    pub fn sum(&self) -> Duration {
        self.admission + self.restore + self.create + self.boot
    }
}

/// The phases of one start, from a `Server-Timing` value such as
/// `admission;dur=0.001, restore;dur=0.210, create;dur=1.824, boot;dur=0.445`.
pub fn phases(server_timing: &str) -> anyhow::Result<Phases> {
    let mut found = [None; 4];
    for metric in server_timing.split(',') {
        let mut parts = metric.trim().split(';');
        let name = parts.next().unwrap_or_default();
        let dur = parts
            .find_map(|p| p.trim().strip_prefix("dur="))
            .and_then(|d| d.parse::<f64>().ok())
            .map(|ms| Duration::from_secs_f64(ms / 1000.0));
        let slot = match name {
            "admission" => 0,
            "restore" => 1,
            "create" => 2,
            "boot" => 3,
            _ => continue,
        };
        found[slot] = dur;
    }
    match found {
        [Some(admission), Some(restore), Some(create), Some(boot)] => Ok(Phases {
            admission,
            restore,
            create,
            boot,
        }),
        _ => bail!("incomplete Server-Timing: {server_timing:?}"),
    }
}

/// Wakes one user's sandbox and returns the client time and the phases.
pub async fn first_request(gateway: &Gateway, user: &str) -> anyhow::Result<(Duration, Phases)> {
    let cookie = gateway.cookie(user)?;
    let mut conn = HttpConn::connect(gateway.address).await?;
    let status = conn.get("/api/status", Some(&cookie)).await?;
    ensure!(
        status.status == StatusCode::OK,
        "/api/status answered {}",
        status.status
    );
    let state: serde_json::Value = serde_json::from_slice(&status.body)?;
    ensure!(
        state["state"] == "asleep",
        "{user} should be asleep before its first request, is {}",
        state["state"]
    );

    let body = Bytes::from_static(FIRST_BODY);
    let started = Instant::now();
    let answer = conn.echo(Some(&cookie), &body).await?;
    let elapsed = started.elapsed();
    let timing = answer
        .headers
        .get("server-timing")
        .context("the first request carried no Server-Timing: was the sandbox already up?")?
        .to_str()?;
    Ok((elapsed, phases(timing)?))
}

/// Starts a gateway with `max_instances`, wakes `warm` users untimed (to fill it), then
/// times the first request of `users` more.
pub async fn run(
    warren: &Path,
    dir: &Path,
    max_instances: usize,
    warm: usize,
    users: usize,
) -> anyhow::Result<ColdStart> {
    let gateway = Gateway::start(warren, dir, max_instances).await?;
    for i in 0..warm {
        first_request(&gateway, &format!("user_warm{i:04}"))
            .await
            .with_context(|| format!("warming user {i}"))?;
    }
    let mut columns = Columns::default();
    let mut most_running = 0;
    for i in 0..users {
        let (total, phases) = first_request(&gateway, &format!("user_cold{i:04}"))
            .await
            .with_context(|| format!("first request of user {i}"))?;
        columns.push(total, &phases);
        if max_instances < warm + users {
            // Eviction must keep the count at or under the cap.
            let running = sandboxes_under(&gateway.data_dir);
            most_running = most_running.max(running);
        }
    }
    let sandboxes_running = sandboxes_under(&gateway.data_dir);
    most_running = most_running.max(sandboxes_running);
    let gateway_rss_kib = gateway.process.pid().and_then(rss_kib).unwrap_or(0);
    let sandboxes_rss_kib = processes_under(&gateway.data_dir)
        .iter()
        .filter_map(|&p| rss_kib(p))
        .sum();

    let stopped = gateway.stop().await?;

    let [total, admission, restore, create, boot, rest] = columns.samples();
    Ok(ColdStart {
        max_instances,
        total,
        admission,
        restore,
        create,
        boot,
        rest,
        most_running,
        sandboxes_running,
        gateway_rss_kib,
        sandboxes_rss_kib,
        stopped,
    })
}

/// Timed starts, a column per figure: the client's total, the four phases, the rest.
#[derive(Default)]
pub struct Columns([Vec<Duration>; 6]);

impl Columns {
    pub fn push(&mut self, total: Duration, p: &Phases) {
        let rest = total.saturating_sub(p.sum());
        let row = [total, p.admission, p.restore, p.create, p.boot, rest];
        for (column, value) in self.0.iter_mut().zip(row) {
            column.push(value);
        }
    }

    /// total, admission, restore, create, boot, rest.
    pub fn samples(self) -> [Samples; 6] {
        self.0.map(Samples::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_gateways_server_timing() {
        let p = phases("admission;dur=0.001, restore;dur=812.5, create;dur=1.824, boot;dur=0.445")
            .unwrap();
        assert_eq!(p.admission, Duration::from_nanos(1_000));
        assert_eq!(p.restore, Duration::from_micros(812_500));
        assert_eq!(p.create, Duration::from_micros(1_824));
        assert_eq!(p.boot, Duration::from_micros(445));
        assert_eq!(p.sum(), Duration::from_micros(814_770));
        // A restore left out would land unseen in "the rest": refused.
        assert!(phases("admission;dur=0.001, create;dur=1.824, boot;dur=0.445").is_err());
        assert!(phases("admission;dur=1").is_err());
    }

    #[test]
    fn the_rest_is_what_no_phase_covers() {
        let mut columns = Columns::default();
        let p = Phases {
            admission: Duration::from_millis(1),
            restore: Duration::from_millis(2),
            create: Duration::from_millis(3),
            boot: Duration::from_millis(4),
        };
        columns.push(Duration::from_millis(15), &p);
        // Phases the gateway timed longer than the client saw never make the rest negative.
        columns.push(Duration::from_millis(9), &p);
        let [total, .., rest] = columns.samples();
        assert_eq!(total.percentile(1.0), Duration::from_millis(15));
        assert_eq!(rest.percentile(0.0), Duration::ZERO);
        assert_eq!(rest.percentile(1.0), Duration::from_millis(5));
    }
}
