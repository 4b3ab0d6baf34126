//! Re-adoption after a crash: sandboxes running, the gateway SIGKILLed, a new one
//! started at once on the same address, config and data dir. It takes back every
//! running sandbox before it says it listens; then every tenant sends a request at once,
//! tried again until answered.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::{Survival, gateway, sandbox_processes, survival};
use crate::client::HttpConn;
use crate::cold_start::{first_request, phases};
use crate::launch::{Gateway, GatewayStopped, Listen, sandboxes_under};
use crate::load::Samples;

/// How long every tenant may take to be answered after the crash.
const ANSWER_DEADLINE: Duration = Duration::from_secs(30);

/// What the crash and the new gateway showed.
pub struct Crash {
    /// The first gateway's spawn to its `warren listening` line, with no sandbox to
    /// take back: the baseline.
    pub fresh_ready: Duration,
    /// Sandbox processes groups running while no gateway ran.
    pub running_without_gateway: usize,
    /// The new gateway's spawn to its `warren listening` line, every sandbox taken back.
    pub ready_after: Duration,
    /// Per tenant, from the new gateway's spawn to its first 200.
    pub answered: Samples,
    /// Tries that failed before (none expected: the gateway listens once it took
    /// every sandbox back); answers that waited for their sandbox to be taken back,
    /// and answers that started a new one (both tell by `Server-Timing`).
    pub failed_tries: usize,
    pub waited_for_adoption: usize,
    pub started: usize,
    pub sandboxes: Survival,
    pub stopped: GatewayStopped,
}

pub async fn run(warren: &Path, dir: &Path, sandboxes: usize) -> anyhow::Result<Crash> {
    let first = gateway(warren, dir, sandboxes).await?;
    let fresh_ready = first.ready_after;
    let users: Vec<String> = (0..sandboxes)
        .map(|i| format!("user_crash{i:03}"))
        .collect();
    for user in &users {
        first_request(&first, user)
            .await
            .with_context(|| format!("waking {user}"))?;
    }
    let before = sandbox_processes(&first.data_dir).await?;
    ensure!(
        before.len() == sandboxes,
        "{} sandboxes recorded running, not {sandboxes}",
        before.len()
    );
    let (address, data_dir) = (first.address, first.data_dir.clone());
    let cookies = users
        .iter()
        .map(|u| first.cookie(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    first
        .end(Some(Signal::SIGKILL), Duration::from_secs(10))
        .await?;
    let running_without_gateway = sandboxes_under(&data_dir);

    let spawned = Instant::now();
    let gateway = Gateway::start_in(warren, dir, Listen::At(address), "gateway-2.log").await?;
    let ready_after = gateway.ready_after;
    let answers: Vec<_> = cookies
        .into_iter()
        .map(|cookie| tokio::spawn(answered(gateway.address, cookie, spawned)))
        .collect();
    let (mut times, mut failed_tries, mut waited, mut started) = (Vec::new(), 0, 0, 0);
    for answer in answers {
        let (time, failed, how) = answer.await.context("a client panicked")??;
        times.push(time);
        failed_tries += failed;
        match how {
            Answer::Ready => {}
            Answer::WaitedForAdoption => waited += 1,
            Answer::Started => started += 1,
        }
    }
    let survived = survival(&data_dir, &before).await?;
    let stopped = gateway.stop().await?;
    Ok(Crash {
        fresh_ready,
        running_without_gateway,
        ready_after,
        answered: Samples::new(times),
        failed_tries,
        waited_for_adoption: waited,
        started,
        sandboxes: survived,
        stopped,
    })
}

/// How a tenant's first answer after the crash came.
enum Answer {
    /// At once: its sandbox was ready.
    Ready,
    /// It waited for its sandbox to be taken back (`Server-Timing` with every phase 0).
    WaitedForAdoption,
    /// It started a new sandbox (`Server-Timing` with a create phase).
    Started,
}

/// `POST /echo` until answered: the time since `since`, the tries that failed, and
/// whether the answer waited for a start (the gateway adds `Server-Timing` then).
async fn answered(
    address: std::net::SocketAddr,
    cookie: String,
    since: Instant,
) -> anyhow::Result<(Duration, usize, Answer)> {
    let body = Bytes::from_static(b"are you there?");
    let mut failed = 0;
    loop {
        let answer = async {
            let mut conn = HttpConn::connect(address).await?;
            conn.echo(Some(&cookie), &body).await
        };
        // `echo` fails unless the body comes back with 200.
        if let Ok(Ok(answer)) = tokio::time::timeout(ANSWER_DEADLINE, answer).await {
            let how = match answer.headers.get("server-timing") {
                None => Answer::Ready,
                Some(timing) => {
                    let timing = timing.to_str().unwrap_or_default();
                    let p = phases(timing)?;
                    if p.create.is_zero() && p.boot.is_zero() {
                        Answer::WaitedForAdoption
                    } else {
                        Answer::Started
                    }
                }
            };
            return Ok((since.elapsed(), failed, how));
        }
        failed += 1;
        ensure!(
            since.elapsed() < ANSWER_DEADLINE,
            "no answer within {ANSWER_DEADLINE:?} ({failed} tries)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
