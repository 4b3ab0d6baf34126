//! `warren chat URL`: a terminal client of a user's agent that rides out gateway
//! restarts. Lines read from stdin go over the WebSocket as text messages; messages
//! from the agent are printed to stdout, one per line. When the connection closes or
//! breaks, it reconnects with exponential backoff and full jitter, reloads the history
//! over HTTP with the same credentials and prints the messages it had not shown, so
//! nothing the user sent and the agent kept is lost from view. Lines typed while it is
//! away are sent once it is back. What it is doing goes to stderr.
//!
//! The URL is one `warren token` prints (`http://host:port/?userId=..&exp=..&sig=..`).

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng as _;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A signed URL, as `warren token` prints it.
    url: String,
    /// The first pause before reconnecting; it doubles after each failed try.
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = duration)]
    min_backoff: Duration,
    /// The longest pause between tries.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    max_backoff: Duration,
}

fn duration(text: &str) -> Result<Duration, String> {
    warren_core::duration::parse(text)
}

/// Where the gateway is and the user's credentials, from a signed URL.
struct Endpoint {
    /// `http://host:port`
    base: String,
    /// `userId=..&exp=..&sig=..`
    query: String,
}

impl Endpoint {
    fn parse(url: &str) -> anyhow::Result<Self> {
        let (base, rest) = match url.split_once("://") {
            Some(("http", rest)) => ("http", rest),
            Some(("https", _)) => bail!("https URLs are not supported by `warren chat` yet"),
            _ => bail!("{url:?} is not an http:// URL as `warren token` prints"),
        };
        let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let query = path.split_once('?').map(|(_, q)| q).unwrap_or_default();
        if !["userId=", "exp=", "sig="]
            .iter()
            .all(|k| query.split('&').any(|p| p.starts_with(k)))
        {
            bail!(
                "the URL carries no credentials (userId, exp, sig): use one `warren token` printed"
            );
        }
        Ok(Self {
            base: format!("{base}://{authority}"),
            query: query.to_owned(),
        })
    }

    fn websocket(&self) -> String {
        format!(
            "ws://{}/ws?{}",
            self.base.trim_start_matches("http://"),
            self.query
        )
    }

    /// The texts of the conversation so far, oldest first.
    async fn history(&self) -> anyhow::Result<Vec<String>> {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let uri = format!("{}/api/history?{}", self.base, self.query).parse()?;
        let response = client.get(uri).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("{status}: {}", String::from_utf8_lossy(&body));
        }
        let value: serde_json::Value = serde_json::from_slice(&body)?;
        Ok(value["messages"]
            .as_array()
            .context("the history has no messages")?
            .iter()
            .filter_map(|m| Some(m["text"].as_str()?.to_owned()))
            .collect())
    }
}

/// How one connection ended.
enum Ended {
    /// Stdin is closed and everything typed was answered: done.
    Finished,
    /// The connection closed or broke: try again.
    Lost(String),
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let endpoint = Endpoint::parse(&args.url)?;
    crate::admin_api::block_on(chat(endpoint, args.min_backoff, args.max_backoff))?
}

async fn chat(
    endpoint: Endpoint,
    min_backoff: Duration,
    max_backoff: Duration,
) -> anyhow::Result<()> {
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
    // Stdin is read on a thread of its own: its reads block.
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(Some(line)).is_err() {
                return;
            }
        }
        let _ = lines_tx.send(None);
    });
    let mut session = Session::default();
    let mut failures: u32 = 0;
    loop {
        match session.connect(&endpoint, &mut lines).await {
            Ok(Ended::Finished) => return Ok(()),
            Ok(Ended::Lost(why)) => {
                // It was up: the next try starts from the shortest pause.
                failures = 0;
                eprintln!("warren chat: connection lost ({why}); reconnecting");
            }
            Err(e) => {
                eprintln!("warren chat: cannot connect ({e:#})");
            }
        }
        let pause = backoff(failures, min_backoff, max_backoff);
        failures = failures.saturating_add(1);
        tokio::time::sleep(pause).await;
    }
}

/// Full jitter: a pause drawn evenly from zero to the exponential bound, so clients
/// cut off together do not come back together.
fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
    let bound = min.saturating_mul(1u32 << failures.min(16)).min(max);
    rand::rng().random_range(Duration::ZERO..=bound)
}

/// What survives from one connection to the next.
#[derive(Default)]
struct Session {
    /// How many messages of the history have been printed.
    shown: usize,
    /// Lines typed but not yet answered, oldest first: sent again on a new connection
    /// unless the history shows the agent kept them.
    unanswered: VecDeque<String>,
    /// Stdin has ended.
    stdin_closed: bool,
}

impl Session {
    async fn connect(
        &mut self,
        endpoint: &Endpoint,
        lines: &mut tokio::sync::mpsc::UnboundedReceiver<Option<String>>,
    ) -> anyhow::Result<Ended> {
        let (mut ws, _) = tokio_tungstenite::connect_async(endpoint.websocket()).await?;
        // What was kept while away: print it, and drop from the resend queue what the
        // agent already has (the history lists each message the agent kept once).
        let history = endpoint.history().await?;
        for text in history.iter().skip(self.shown) {
            println!("{text}");
            if self.unanswered.front() == Some(text) {
                self.unanswered.pop_front();
            }
        }
        self.shown = self.shown.max(history.len());
        for text in &self.unanswered {
            ws.send(Message::text(text.clone())).await?;
        }
        loop {
            if self.stdin_closed && self.unanswered.is_empty() {
                let _ = ws.close(None).await;
                return Ok(Ended::Finished);
            }
            tokio::select! {
                line = lines.recv(), if !self.stdin_closed => match line.flatten() {
                    Some(text) => {
                        // Queued first: if the send fails, the next connection sends it.
                        self.unanswered.push_back(text.clone());
                        ws.send(Message::text(text)).await?;
                    }
                    None => self.stdin_closed = true,
                },
                message = ws.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        println!("{text}");
                        self.shown += 1;
                        if self.unanswered.front().map(String::as_str) == Some(text.as_str()) {
                            self.unanswered.pop_front();
                        }
                    }
                    Some(Ok(Message::Close(frame))) => return Ok(Ended::Lost(describe(frame))),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Ok(Ended::Lost(e.to_string())),
                    None => return Ok(Ended::Lost("the connection ended".into())),
                },
            }
        }
    }
}

fn describe(frame: Option<CloseFrame>) -> String {
    match frame {
        Some(f) => format!("closed with {} {}", u16::from(f.code), f.reason),
        None => "closed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_url_warren_token_prints() {
        let e = Endpoint::parse("http://127.0.0.1:8080/?userId=alice&exp=1&sig=abc").unwrap();
        assert_eq!(e.base, "http://127.0.0.1:8080");
        assert_eq!(
            e.websocket(),
            "ws://127.0.0.1:8080/ws?userId=alice&exp=1&sig=abc"
        );
        assert!(Endpoint::parse("http://127.0.0.1:8080/").is_err());
        assert!(Endpoint::parse("ftp://x/?userId=a&exp=1&sig=b").is_err());
    }

    #[test]
    fn backoff_grows_to_its_cap_and_jitters_below_it() {
        let (min, max) = (Duration::from_millis(250), Duration::from_secs(10));
        for failures in 0..40 {
            let bound = (min * 2u32.pow(failures.min(16))).min(max);
            let pause = backoff(failures, min, max);
            assert!(pause <= bound, "{failures}: {pause:?} > {bound:?}");
        }
        let draws: std::collections::HashSet<_> = (0..50).map(|_| backoff(10, min, max)).collect();
        assert!(draws.len() > 1, "no jitter");
    }
}
