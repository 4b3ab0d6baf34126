//! The traffic that must ride out a gateway's upgrade or restart, and what it saw.
//!
//! - HTTP loops: `GET /api/history` at a steady pace, each either on a connection of its
//!   own (`Connection: close`, as a fresh client) or on one kept-alive connection
//!   (reopened when the server closed it while idle, as any client does; and after an
//!   error, the failed request then tried once more on the new one, as browsers do for
//!   idempotent requests on a reused connection). Every request is
//!   recorded with its start, its duration and its outcome; none is retried silently.
//! - WebSocket clients, one per tenant: a text message every `interval`, each awaiting
//!   its echo before the next. When the connection closes or breaks, the client
//!   reconnects with `warren chat`'s backoff (exponential, full jitter), reloads
//!   `/api/history` with the same credentials and checks that every message it had
//!   acknowledged is there; a message whose echo never came is looked for too: kept by
//!   the agent, or sent again (as `warren chat` does). It then sends at once: the
//!   reconnect time runs from the close to the first echo on the new connection.
//!
//! Every wait has a deadline; a client that cannot reconnect within `RECONNECT_DEADLINE`
//! fails the run.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use http::StatusCode;
use rand::Rng as _;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::client::{HttpConn, WsConn, WsEvent, get_once, is_refused};

/// One request of an HTTP loop every this often (when the last one took less).
pub const HTTP_INTERVAL: Duration = Duration::from_millis(5);
/// After a failed request the next one comes this soon: it times how long the port
/// was closed to about a millisecond.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(1);
/// A request, a history reload or an echo taking longer than this is a failure.
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);
/// How long a WebSocket client may take to be back after its connection ended.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// How an HTTP request ended.
#[derive(Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// An answer other than 200.
    Status(u16),
    /// The connection was refused: nothing listened on the port.
    Refused,
    /// Reset, closed before the answer, timed out.
    Failed(String),
}

impl Outcome {
    fn of(result: anyhow::Result<StatusCode>) -> Self {
        match result {
            Ok(StatusCode::OK) => Outcome::Ok,
            Ok(status) => Outcome::Status(status.as_u16()),
            Err(e) if is_refused(&e) => Outcome::Refused,
            Err(e) => Outcome::Failed(format!("{e:#}")),
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ok => f.write_str("200"),
            Outcome::Status(status) => write!(f, "answered {status}"),
            Outcome::Refused => f.write_str("connection refused"),
            Outcome::Failed(why) => f.write_str(why),
        }
    }
}

/// One request of an HTTP loop.
pub struct Attempt {
    pub at: Instant,
    pub took: Duration,
    pub outcome: Outcome,
    /// Keep-alive loops only: the same request, tried once more on a new connection
    /// after a failure on the kept one.
    pub retried: Option<Outcome>,
    /// Keep-alive loops only: the server had closed the kept connection while it was
    /// idle, so this request went on a new one (as any client does; not a failure).
    pub reopened: bool,
}

/// `GET path` at a steady pace until `stop`: each request on a new connection
/// (`keep_alive` false), or all on one kept-alive connection.
pub async fn http_loop(
    address: SocketAddr,
    path: String,
    cookie: String,
    keep_alive: bool,
    mut stop: watch::Receiver<bool>,
) -> Vec<Attempt> {
    let mut attempts = Vec::new();
    let mut conn: Option<HttpConn> = None;
    let mut ticker = tokio::time::interval(HTTP_INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while !*stop.borrow() {
        let at = Instant::now();
        let reopened = match conn.as_mut() {
            Some(kept) => !kept.is_open().await,
            None => false,
        };
        if reopened {
            conn = None;
        }
        let (outcome, retried) = if keep_alive {
            let first = Outcome::of(kept_alive_get(&mut conn, address, &path, &cookie).await);
            if first == Outcome::Ok {
                (first, None)
            } else {
                conn = None;
                let again = Outcome::of(kept_alive_get(&mut conn, address, &path, &cookie).await);
                (first, Some(again))
            }
        } else {
            let answer = tokio::time::timeout(ANSWER_DEADLINE, get_once(address, &path, &cookie))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {ANSWER_DEADLINE:?}")));
            (Outcome::of(answer), None)
        };
        let failed = outcome != Outcome::Ok;
        attempts.push(Attempt {
            at,
            took: at.elapsed(),
            outcome,
            retried,
            reopened,
        });
        if failed {
            tokio::time::sleep(RETRY_AFTER_FAILURE).await;
            ticker.reset();
        } else {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => {}
            }
        }
    }
    attempts
}

/// `GET path` on the kept connection, opening one first if there is none.
async fn kept_alive_get(
    conn: &mut Option<HttpConn>,
    address: SocketAddr,
    path: &str,
    cookie: &str,
) -> anyhow::Result<StatusCode> {
    tokio::time::timeout(ANSWER_DEADLINE, async {
        if conn.is_none() {
            *conn = Some(HttpConn::connect(address).await?);
        }
        let conn = conn.as_mut().context("no connection")?;
        Ok(conn.get(path, Some(cookie)).await?.status)
    })
    .await
    .unwrap_or_else(|_| bail!("no answer within {ANSWER_DEADLINE:?}"))
}

/// `warren chat`'s backoff: before try `failures + 1`, a pause drawn evenly from zero
/// to `min` doubled `failures` times (at most `max`).
#[derive(Clone, Copy)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// `warren chat`'s defaults.
    pub const CHAT: Backoff = Backoff {
        min: Duration::from_millis(250),
        max: Duration::from_secs(10),
    };

    fn pause(self, failures: u32) -> Duration {
        let bound = self
            .min
            .saturating_mul(1u32 << failures.min(16))
            .min(self.max);
        rand::rng().random_range(Duration::ZERO..=bound)
    }
}

/// One tenant's WebSocket client.
pub struct WsClient {
    pub user: String,
    pub cookie: String,
    pub address: SocketAddr,
    pub interval: Duration,
    pub backoff: Backoff,
}

/// One time a client's connection ended and it came back.
pub struct Reconnect {
    /// When the client saw the connection end.
    pub closed_at: Instant,
    /// How the connection ended.
    pub end: End,
    /// Tries that failed before one succeeded, and how many of them were refused.
    pub failed_tries: u32,
    pub refused: u32,
    /// The backoff pauses, in all.
    pub paused: Duration,
    /// From the close to the first echo on the new connection.
    pub to_first_echo: Duration,
}

/// What one client saw.
#[derive(Default)]
pub struct WsTally {
    pub sent: usize,
    pub acknowledged: usize,
    pub reconnects: Vec<Reconnect>,
    /// Messages sent whose echo never came (the connection ended first); of them,
    /// those the history then showed the agent had kept, those sent again since it did
    /// not, and those in no history at the end (lost for good).
    pub unacknowledged: usize,
    pub unacknowledged_kept: usize,
    pub resent: usize,
    pub never_kept: usize,
    /// Acknowledged messages missing from a history reload (each counted once).
    pub lost: usize,
    /// Messages the final history holds more than once.
    pub duplicated: usize,
    /// History reloads that checked the acknowledged messages.
    pub history_checks: usize,
}

/// One client's messages.
#[derive(Default)]
struct Messages {
    /// Texts made so far.
    made: usize,
    /// Echoed, in order; dropped from here once found missing from a history.
    acknowledged: Vec<String>,
    /// Sent, then the connection ended before the echo: to look for in the history.
    unanswered: Vec<String>,
    /// Not kept by the agent: sent again before anything new.
    to_resend: std::collections::VecDeque<String>,
}

/// Why a client stopped sending on its connection.
enum Ended {
    Stop,
    Lost(End),
}

/// How a connection ended.
pub enum End {
    /// A close frame, with its code (1012: service restart) if it had one.
    Closed(Option<u16>),
    /// An error, or the end of the stream without a close frame.
    Broken(String),
}

impl End {
    /// `event`, unless it is a message (then its text).
    fn of(event: WsEvent) -> Result<Self, String> {
        match event {
            WsEvent::Text(text) => Err(text),
            WsEvent::Closed(code) => Ok(End::Closed(code)),
            WsEvent::Broken(why) => Ok(End::Broken(why)),
        }
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Closed(Some(code)) => write!(f, "closed with {code}"),
            End::Closed(None) => f.write_str("closed without a code"),
            End::Broken(why) => write!(f, "broken: {why}"),
        }
    }
}

impl WsClient {
    /// Sends and reconnects until `stop`; then closes, reloads the history once more
    /// and checks it. Fails on an unexpected echo, a missing one on an open connection,
    /// or a reconnect that takes longer than `RECONNECT_DEADLINE`.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> anyhow::Result<WsTally> {
        let mut tally = WsTally::default();
        let mut ws = self.connect().await?;
        let mut messages = Messages::default();
        // A reconnect whose first echo is still to come.
        let mut timing: Option<Reconnect> = None;
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let ended = tokio::select! {
                // The guard `wait_for` returns must not live across an await.
                _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => Ended::Stop,
                event = ws.next_event() => match End::of(event) {
                    Ok(end) => Ended::Lost(end),
                    Err(text) => bail!("{}: a message nobody sent: {text:?}", self.user),
                },
                _ = ticker.tick() => {
                    let text = messages.to_resend.pop_front().unwrap_or_else(|| {
                        messages.made += 1;
                        format!("{}-{:06}", self.user, messages.made - 1)
                    });
                    match self.round_trip(&mut ws, &text).await? {
                        None => {
                            tally.acknowledged += 1;
                            messages.acknowledged.push(text);
                            if let Some(mut done) = timing.take() {
                                done.to_first_echo = done.closed_at.elapsed();
                                tally.reconnects.push(done);
                            }
                            continue;
                        }
                        Some(end) => {
                            messages.unanswered.push(text);
                            Ended::Lost(end)
                        }
                    }
                }
            };
            match ended {
                Ended::Stop => break,
                Ended::Lost(end) => {
                    // A connection that ends before its first echo continues the
                    // reconnect it was part of: the time still runs from the first close.
                    let mut record = timing.take().unwrap_or(Reconnect {
                        closed_at: Instant::now(),
                        end,
                        failed_tries: 0,
                        refused: 0,
                        paused: Duration::ZERO,
                        to_first_echo: Duration::ZERO,
                    });
                    let (new, failed_tries, refused, paused) =
                        self.reconnect(record.closed_at).await?;
                    ws = new;
                    record.failed_tries += failed_tries;
                    record.refused += refused;
                    record.paused += paused;
                    self.check_history(&mut tally, &mut messages, false).await?;
                    timing = Some(record);
                    // Send at once: the reconnect is timed to the first echo.
                    ticker.reset_immediately();
                }
            }
        }
        ws.close().await;
        let history = self.check_history(&mut tally, &mut messages, true).await?;
        tally.sent = messages.made;
        let mut seen = std::collections::HashSet::new();
        tally.duplicated = history.iter().filter(|t| !seen.insert(*t)).count();
        Ok(tally)
    }

    async fn connect(&self) -> anyhow::Result<WsConn> {
        tokio::time::timeout(
            ANSWER_DEADLINE,
            WsConn::connect(self.address, Some(&self.cookie)),
        )
        .await
        .unwrap_or_else(|_| bail!("no WebSocket within {ANSWER_DEADLINE:?}"))
    }

    /// Sends `text` and waits for its echo: `None` once it came, or how the connection
    /// ended before.
    async fn round_trip(&self, ws: &mut WsConn, text: &str) -> anyhow::Result<Option<End>> {
        if let Err(e) = ws.send_text(text).await {
            return Ok(Some(End::Broken(format!("{e:#}"))));
        }
        let event = tokio::time::timeout(ANSWER_DEADLINE, ws.next_event())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{}: no echo of {text:?} within {ANSWER_DEADLINE:?}",
                    self.user
                )
            })?;
        match End::of(event) {
            Ok(end) => Ok(Some(end)),
            Err(echo) if echo == text => Ok(None),
            Err(other) => bail!(
                "{}: expected the echo of {text:?}, got {other:?}",
                self.user
            ),
        }
    }

    /// Tries again after each backoff pause until a WebSocket opens. Returns it, the
    /// failed tries, how many were refused, and the pauses in all.
    async fn reconnect(&self, since: Instant) -> anyhow::Result<(WsConn, u32, u32, Duration)> {
        let (mut failures, mut refused, mut paused) = (0u32, 0u32, Duration::ZERO);
        loop {
            let pause = self.backoff.pause(failures);
            tokio::time::sleep(pause).await;
            paused += pause;
            match self.connect().await {
                Ok(ws) => return Ok((ws, failures, refused, paused)),
                Err(e) => {
                    if is_refused(&e) {
                        refused += 1;
                    }
                    failures += 1;
                    if since.elapsed() > RECONNECT_DEADLINE {
                        return Err(e.context(format!(
                            "{}: not reconnected within {RECONNECT_DEADLINE:?} ({failures} tries)",
                            self.user
                        )));
                    }
                }
            }
        }
    }

    /// Reloads the history; counts acknowledged messages missing from it as lost (once
    /// each: they are dropped from the list) and settles the unanswered ones: kept, or
    /// to be sent again; at the `last` check, never kept. Returns the history's texts.
    async fn check_history(
        &self,
        tally: &mut WsTally,
        messages: &mut Messages,
        last: bool,
    ) -> anyhow::Result<Vec<String>> {
        let history = self.history().await?;
        let held: std::collections::HashSet<&str> = history.iter().map(String::as_str).collect();
        let before = messages.acknowledged.len();
        messages.acknowledged.retain(|t| held.contains(t.as_str()));
        tally.lost += before - messages.acknowledged.len();
        for text in messages.unanswered.drain(..) {
            tally.unacknowledged += 1;
            if held.contains(text.as_str()) {
                tally.unacknowledged_kept += 1;
            } else if last {
                tally.never_kept += 1;
            } else {
                tally.resent += 1;
                messages.to_resend.push_back(text);
            }
        }
        if last {
            tally.never_kept += messages.to_resend.len();
        }
        tally.history_checks += 1;
        Ok(history)
    }

    /// `GET /api/history` with the same credentials: the texts, oldest first.
    async fn history(&self) -> anyhow::Result<Vec<String>> {
        let answer = tokio::time::timeout(ANSWER_DEADLINE, async {
            let mut conn = HttpConn::connect(self.address).await?;
            conn.get("/api/history", Some(&self.cookie)).await
        })
        .await
        .unwrap_or_else(|_| bail!("no history within {ANSWER_DEADLINE:?}"))
        .with_context(|| format!("{}: reloading the history", self.user))?;
        if answer.status != StatusCode::OK {
            bail!("{}: /api/history answered {}", self.user, answer.status);
        }
        let value: serde_json::Value = serde_json::from_slice(&answer.body)?;
        Ok(value["messages"]
            .as_array()
            .context("the history has no messages")?
            .iter()
            .filter_map(|m| Some(m["text"].as_str()?.to_owned()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_is_warren_chats_full_jitter() {
        let chat = Backoff::CHAT;
        for failures in 0..40 {
            let bound = (chat.min * 2u32.pow(failures.min(16))).min(chat.max);
            assert!(chat.pause(failures) <= bound, "{failures}");
        }
        let first: std::collections::HashSet<_> = (0..50).map(|_| chat.pause(0)).collect();
        assert!(first.len() > 1, "no jitter");
    }
}
