//! Upgrades and restarts: what clients see when the gateway is replaced, and whether
//! the sandboxes survive it. Three measurements, each on a gateway of its own (echo
//! agent, process runtime, `drain_timeout = "2s"`): an upgrade under load by takeover
//! (`takeover`), the re-adoption of running sandboxes after a crash (`crash`), and a
//! plain restart's port closure and client reconnects (`restart`). The traffic that
//! rides them out, and what it saw, is in `clients`.
//!
//! A sandbox counts as restarted when its tenant's record in the state store names
//! another process afterwards, or when the process it named before is gone or is a
//! later one with the same pid (its start time in `/proc` differs). Whatever happens,
//! nothing is left running: each measurement ends with a gateway's SIGINT (stop every
//! sandbox), and a failed one has its leftovers taken back and stopped.

pub mod clients;
pub mod crash;
pub mod restart;
pub mod takeover;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use warren_core::sandbox::SandboxState;
use warren_state::{SqliteStore, StateStore as _};

use self::clients::{Attempt, Backoff, End, Outcome, WsClient, WsTally};
use crate::cold_start::first_request;
use crate::launch::{Gateway, parent_and_start, processes_of_uid, stop_leftovers};
use crate::load::Samples;

/// Every gateway of this scenario: how long an old gateway keeps relaying its open
/// WebSockets after a takeover before it closes them (1012) and exits.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Traffic before the first upgrade or restart, and after each.
pub const PHASE: Duration = Duration::from_secs(3);
/// The HTTP loops' tenant (the WebSocket clients are `user_ws00`...).
const HTTP_USER: &str = "user_http";
/// New-connection HTTP loops; one kept-alive loop runs beside them.
pub const NEW_CONNECTION_LOOPS: usize = 2;
/// The user the sandboxes run as (`runtime.sandbox_uid` on its default).
pub const SANDBOX_UID: u32 = 65534;
/// How long the sandboxes' zombies are waited for at the end.
pub const REAP_DEADLINE: Duration = Duration::from_secs(30);

pub struct Settings {
    /// Tenants with a WebSocket client, in the upgrade and the restart.
    pub clients: usize,
    /// A message every this often on each WebSocket.
    pub interval: Duration,
    /// Takeovers in a row, under the same load.
    pub upgrades: usize,
    /// Sandboxes running when the gateway is killed.
    pub crash_sandboxes: usize,
}

/// Requests of one kind in one phase.
#[derive(Default)]
pub struct HttpCount {
    pub requests: usize,
    /// Answered other than 200.
    pub statuses: usize,
    /// Connections refused.
    pub refused: usize,
    /// Reset, closed before the answer, timed out.
    pub broken: usize,
    /// Keep-alive only: failures whose retry on a new connection was answered 200.
    pub retried_ok: usize,
    /// Keep-alive only: requests that went on a new connection because the server
    /// had closed the kept one while idle (not failures).
    pub reopened: usize,
    /// Client time of each request (failed ones included).
    pub latency: Samples,
    /// A few of the failures, as the client saw them.
    pub examples: Vec<String>,
}

impl HttpCount {
    pub fn failed(&self) -> usize {
        self.statuses + self.refused + self.broken
    }

    fn add(&mut self, attempt: &Attempt, latencies: &mut Vec<Duration>) {
        self.requests += 1;
        self.reopened += usize::from(attempt.reopened);
        latencies.push(attempt.took);
        match &attempt.outcome {
            Outcome::Ok => return,
            Outcome::Status(_) => self.statuses += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::Failed(_) => self.broken += 1,
        }
        if attempt.retried == Some(Outcome::Ok) {
            self.retried_ok += 1;
        }
        if self.examples.len() < 3 {
            let retried = match &attempt.retried {
                Some(again) => format!("; tried again on a new connection: {again}"),
                None => String::new(),
            };
            self.examples.push(format!("{}{retried}", attempt.outcome));
        }
    }
}

/// The phases requests are counted in.
pub const PHASES: [&str; 3] = ["before", "during", "after"];

/// Counts `attempts` by phase: before `windows` began, within one of them, or after.
fn by_phase(attempts: &[Attempt], windows: &[(Instant, Instant)]) -> [HttpCount; 3] {
    let mut counts: [HttpCount; 3] = Default::default();
    let mut latencies: [Vec<Duration>; 3] = Default::default();
    let first = windows.first().map(|w| w.0);
    for attempt in attempts {
        let phase = if first.is_none_or(|f| attempt.at < f) {
            0
        } else if windows
            .iter()
            .any(|&(from, to)| attempt.at >= from && attempt.at <= to)
        {
            1
        } else {
            2
        };
        counts[phase].add(attempt, &mut latencies[phase]);
    }
    for (count, latencies) in counts.iter_mut().zip(latencies) {
        count.latency = Samples::new(latencies);
    }
    counts
}

/// What the WebSocket clients saw, all together.
#[derive(Default)]
pub struct WsSummary {
    pub clients: usize,
    pub sent: usize,
    pub acknowledged: usize,
    pub unacknowledged: usize,
    pub unacknowledged_kept: usize,
    pub resent: usize,
    pub never_kept: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub history_checks: usize,
    /// Connections closed with 1012, with another code or none.
    pub closed_1012: usize,
    pub closed_otherwise: usize,
    /// A few of the ends other than 1012.
    pub other_ends: Vec<String>,
    /// From the close to the first echo on the new connection, one per reconnect.
    pub reconnect: Samples,
    /// The backoff pauses of each reconnect, in all.
    pub paused: Samples,
    pub failed_tries: u32,
    pub refused: u32,
}

impl WsSummary {
    fn of(tallies: &[WsTally]) -> Self {
        let mut s = WsSummary {
            clients: tallies.len(),
            ..Default::default()
        };
        let (mut reconnect, mut paused) = (Vec::new(), Vec::new());
        for t in tallies {
            s.sent += t.sent;
            s.acknowledged += t.acknowledged;
            s.unacknowledged += t.unacknowledged;
            s.unacknowledged_kept += t.unacknowledged_kept;
            s.resent += t.resent;
            s.never_kept += t.never_kept;
            s.lost += t.lost;
            s.duplicated += t.duplicated;
            s.history_checks += t.history_checks;
            for r in &t.reconnects {
                if matches!(r.end, End::Closed(Some(1012))) {
                    s.closed_1012 += 1;
                } else {
                    s.closed_otherwise += 1;
                    if s.other_ends.len() < 3 {
                        s.other_ends.push(r.end.to_string());
                    }
                }
                reconnect.push(r.to_first_echo);
                paused.push(r.paused);
                s.failed_tries += r.failed_tries;
                s.refused += r.refused;
            }
        }
        s.reconnect = Samples::new(reconnect);
        s.paused = Samples::new(paused);
        s
    }
}

/// Sandboxes compared before and after.
pub struct Survival {
    pub before: usize,
    /// Of them, how many are not the same process afterwards.
    pub restarted: usize,
}

pub struct UpgradeRun {
    pub under_load: takeover::UnderLoad,
    pub crash: crash::Crash,
    pub restart: restart::Restart,
    /// Processes of the sandboxes' user on the machine (running, zombies), before the
    /// scenario and right after its last gateway exited.
    pub sandbox_user_processes: [(usize, usize); 2],
    /// How long the zombies then took to be reaped (by whoever is their parent: a
    /// taken-back sandbox's is PID 1 or the nearest subreaper), if within
    /// `REAP_DEADLINE`.
    pub zombies_reaped_after: Option<Duration>,
}

pub async fn run(warren: &Path, dir: &Path, settings: &Settings) -> anyhow::Result<UpgradeRun> {
    ensure!(
        settings.clients > 0 && settings.upgrades > 0 && settings.crash_sandboxes > 0,
        "the upgrade run needs clients, upgrades and sandboxes"
    );
    let before = processes_of_uid(SANDBOX_UID);
    eprintln!(
        "upgrade: {} WebSocket clients and HTTP loops, {} takeovers...",
        settings.clients, settings.upgrades
    );
    let under_load = cleaned(warren, &dir.join("takeover"), |d| {
        takeover::run(warren, d, settings)
    })
    .await?;
    eprintln!(
        "upgrade: {} sandboxes, SIGKILL, a new gateway...",
        settings.crash_sandboxes
    );
    let crash = cleaned(warren, &dir.join("crash"), |d| {
        crash::run(warren, d, settings.crash_sandboxes)
    })
    .await?;
    eprintln!(
        "upgrade: {} WebSocket clients, SIGTERM, a new gateway on the same port...",
        settings.clients
    );
    let restart = cleaned(warren, &dir.join("restart"), |d| {
        restart::run(warren, d, settings)
    })
    .await?;
    let after = processes_of_uid(SANDBOX_UID);
    let waiting = Instant::now();
    let mut zombies_reaped_after = None;
    while waiting.elapsed() < REAP_DEADLINE {
        if processes_of_uid(SANDBOX_UID).1 <= before.1 {
            zombies_reaped_after = Some(waiting.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(UpgradeRun {
        under_load,
        crash,
        restart,
        sandbox_user_processes: [before, after],
        zombies_reaped_after,
    })
}

/// Runs one measurement in `dir`, then stops whatever sandboxes it left (a failed one
/// may leave them between two gateways).
async fn cleaned<'a, T, F, Fut>(warren: &Path, dir: &'a Path, measure: F) -> anyhow::Result<T>
where
    F: FnOnce(&'a Path) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let result = measure(dir).await;
    let left = stop_leftovers(warren, dir).await;
    match result {
        Ok(run) => {
            ensure!(left == 0, "{left} sandboxes were left running");
            Ok(run)
        }
        Err(e) => Err(e),
    }
}

/// A gateway for this scenario, in `dir`, with room for `sandboxes`.
async fn gateway(warren: &Path, dir: &Path, sandboxes: usize) -> anyhow::Result<Gateway> {
    let drain = format!("drain_timeout = \"{}ms\"", DRAIN_TIMEOUT.as_millis());
    Gateway::start_with(warren, dir, sandboxes + 8, &drain, "").await
}

/// Each running sandbox's process, by tenant: its pid and start time, from the state
/// store the gateway writes.
async fn sandbox_processes(data_dir: &Path) -> anyhow::Result<BTreeMap<String, (u32, u64)>> {
    let store = SqliteStore::open(&data_dir.join("state.db"))?;
    let mut out = BTreeMap::new();
    for record in store.live_sandboxes().await? {
        if record.state != SandboxState::Ready {
            continue;
        }
        let identity = record.identity.as_ref();
        let pid = identity.and_then(|i| i.pid);
        let start = identity.and_then(|i| i.pid_start_ticks);
        if let (Some(pid), Some(start)) = (pid, start) {
            out.insert(record.tenant.as_str().to_owned(), (pid, start));
        }
    }
    Ok(out)
}

/// Compares the sandboxes of `before` with the records and processes now.
async fn survival(
    data_dir: &Path,
    before: &BTreeMap<String, (u32, u64)>,
) -> anyhow::Result<Survival> {
    let after = sandbox_processes(data_dir).await?;
    let restarted = before
        .iter()
        .filter(|&(tenant, &(pid, start))| {
            let same_record = after.get(tenant) == Some(&(pid, start));
            let same_process = parent_and_start(pid).is_some_and(|(_, s)| s == start);
            !(same_record && same_process)
        })
        .count();
    Ok(Survival {
        before: before.len(),
        restarted,
    })
}

/// The WebSocket clients' tenants.
fn ws_users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user_ws{i:02}")).collect()
}

/// Traffic running against a gateway's address until `stop`.
struct Traffic {
    stop: watch::Sender<bool>,
    clients: Vec<JoinHandle<anyhow::Result<WsTally>>>,
    new_connection: Vec<JoinHandle<Vec<Attempt>>>,
    keep_alive: JoinHandle<Vec<Attempt>>,
}

/// What the traffic saw, once stopped.
struct Seen {
    tallies: Vec<WsTally>,
    new_connection: Vec<Attempt>,
    keep_alive: Vec<Attempt>,
}

impl Traffic {
    /// Wakes every tenant's sandbox, then starts a WebSocket client per user in `users`
    /// and the HTTP loops (as `HTTP_USER`).
    async fn start(
        gateway: &Gateway,
        users: &[String],
        interval: Duration,
        backoff: Backoff,
    ) -> anyhow::Result<Self> {
        for user in users.iter().map(String::as_str).chain([HTTP_USER]) {
            first_request(gateway, user)
                .await
                .with_context(|| format!("waking {user}"))?;
        }
        let (stop, stopped) = watch::channel(false);
        let mut clients = Vec::new();
        for user in users {
            let client = WsClient {
                user: user.clone(),
                cookie: gateway.cookie(user)?,
                address: gateway.address,
                interval,
                backoff,
            };
            clients.push(tokio::spawn(client.run(stopped.clone())));
        }
        let cookie = gateway.cookie(HTTP_USER)?;
        let http = |keep_alive: bool| {
            tokio::spawn(clients::http_loop(
                gateway.address,
                "/api/history".to_owned(),
                cookie.clone(),
                keep_alive,
                stopped.clone(),
            ))
        };
        let new_connection = (0..NEW_CONNECTION_LOOPS).map(|_| http(false)).collect();
        let keep_alive = http(true);
        Ok(Self {
            stop,
            clients,
            new_connection,
            keep_alive,
        })
    }

    async fn stop(self) -> anyhow::Result<Seen> {
        self.stop.send_replace(true);
        let mut tallies = Vec::new();
        for client in self.clients {
            tallies.push(client.await.context("a WebSocket client panicked")??);
        }
        let mut new_connection = Vec::new();
        for task in self.new_connection {
            new_connection.extend(task.await.context("an HTTP loop panicked")?);
        }
        let keep_alive = self.keep_alive.await.context("an HTTP loop panicked")?;
        Ok(Seen {
            tallies,
            new_connection,
            keep_alive,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_counts_in_the_phase_it_began_in() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let attempt = |ms, outcome| Attempt {
            at: at(ms),
            took: Duration::from_millis(1),
            outcome,
            retried: None,
            reopened: false,
        };
        let attempts = [
            attempt(0, Outcome::Ok),
            attempt(10, Outcome::Refused),
            attempt(25, Outcome::Ok),
            attempt(40, Outcome::Status(502)),
        ];
        let windows = [(at(5), at(20)), (at(30), at(50))];
        let [before, during, after] = by_phase(&attempts, &windows);
        assert_eq!(
            (before.requests, during.requests, after.requests),
            (1, 2, 1)
        );
        assert_eq!(
            (during.refused, during.statuses, during.failed()),
            (1, 1, 2)
        );
        assert_eq!(before.failed() + after.failed(), 0);
    }
}
