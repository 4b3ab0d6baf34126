//! Cold starts: the first request of users whose sandboxes are asleep, one user after
//! another, timed by the client and split into the phases the gateway reports in
//! `Server-Timing` (admission, create, boot); what remains is the proxy and the first
//! byte. At capacity, every start first evicts the least recently used idle sandbox,
//! which shows up in admission.
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
    pub create: Samples,
    pub boot: Samples,
    /// Client time not covered by the three phases: proxying, first byte, parsing.
    pub rest: Samples,
    /// The most sandboxes seen running at once (checked after every start).
    pub most_running: usize,
    pub sandboxes_running: usize,
    pub gateway_rss_kib: u64,
    pub sandboxes_rss_kib: u64,
    /// How the gateway stopped, with every sandbox running.
    pub stopped: GatewayStopped,
}

/// The phases of one start, from a `Server-Timing` value such as
/// `admission;dur=0.001, create;dur=1.824, boot;dur=0.445`.
pub fn phases(server_timing: &str) -> anyhow::Result<[Duration; 3]> {
    let mut found = [None; 3];
    for metric in server_timing.split(',') {
        let mut parts = metric.trim().split(';');
        let name = parts.next().unwrap_or_default();
        let dur = parts
            .find_map(|p| p.trim().strip_prefix("dur="))
            .and_then(|d| d.parse::<f64>().ok())
            .map(|ms| Duration::from_secs_f64(ms / 1000.0));
        let slot = match name {
            "admission" => 0,
            "create" => 1,
            "boot" => 2,
            _ => continue,
        };
        found[slot] = dur;
    }
    match found {
        [Some(a), Some(c), Some(b)] => Ok([a, c, b]),
        _ => bail!("incomplete Server-Timing: {server_timing:?}"),
    }
}

/// Wakes one user's sandbox and returns the client time and the three phases.
pub async fn first_request(
    gateway: &Gateway,
    user: &str,
) -> anyhow::Result<(Duration, [Duration; 3])> {
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
    let mut columns: [Vec<Duration>; 5] = Default::default();
    let mut most_running = 0;
    for i in 0..users {
        let (total, [admission, create, boot]) =
            first_request(&gateway, &format!("user_cold{i:04}"))
                .await
                .with_context(|| format!("first request of user {i}"))?;
        let rest = total.saturating_sub(admission + create + boot);
        for (column, value) in columns
            .iter_mut()
            .zip([total, admission, create, boot, rest])
        {
            column.push(value);
        }
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

    let [total, admission, create, boot, rest] = columns.map(Samples::new);
    Ok(ColdStart {
        max_instances,
        total,
        admission,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_gateways_server_timing() {
        let [a, c, b] = phases("admission;dur=0.001, create;dur=1.824, boot;dur=0.445").unwrap();
        assert_eq!(a, Duration::from_nanos(1_000));
        assert_eq!(c, Duration::from_micros(1_824));
        assert_eq!(b, Duration::from_micros(445));
        assert!(phases("admission;dur=1").is_err());
    }
}
