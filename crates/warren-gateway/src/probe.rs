//! The readiness probe: `GET` of the agent's readiness path (`/healthz`; OpenClaw's
//! `/readyz`) until it answers 2xx, the sandbox exits, or the deadline passes. Retries start at 1 ms and back off to 25 ms, so an
//! agent that listens within a few milliseconds is seen within a few milliseconds.

use std::time::Duration;

use axum::body::Body;
use http::Request;
use hyper_util::client::legacy::Client;
use tokio::time::Instant;
use warren_runtime::{Exit, Sandbox};

#[derive(Debug)]
pub enum ProbeError {
    Exited(Exit),
    Timeout(Option<String>),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Exited(exit) => write!(f, "the agent exited while starting ({exit})"),
            ProbeError::Timeout(Some(last)) => write!(
                f,
                "the agent did not become ready in time (last probe: {last})"
            ),
            ProbeError::Timeout(None) => write!(f, "the agent did not become ready in time"),
        }
    }
}

pub async fn wait_ready(
    client: &Client<crate::upstream::Upstreams, Body>,
    sandbox: &Sandbox,
    upstream: &crate::upstream::Upstream,
    path: &str,
    deadline: Instant,
) -> Result<(), ProbeError> {
    let uri = format!("http://{}{path}", upstream.authority);
    let mut delay = Duration::from_millis(1);
    let mut last = None;
    let mut exited = sandbox.exited.clone();
    loop {
        let request = Request::get(&uri)
            .body(Body::empty())
            .expect("a valid probe request");
        let attempt = tokio::select! {
            r = tokio::time::timeout_at(deadline, client.request(request)) => r,
            _ = exited.wait_for(Option::is_some) => {
                return Err(ProbeError::Exited(sandbox.has_exited().unwrap_or(Exit::Code(-1))));
            }
        };
        match attempt {
            Err(_) => return Err(ProbeError::Timeout(last)),
            Ok(Ok(response)) if response.status().is_success() => return Ok(()),
            Ok(Ok(response)) => last = Some(format!("status {}", response.status())),
            Ok(Err(e)) => last = Some(e.to_string()),
        }
        if let Some(exit) = sandbox.has_exited() {
            return Err(ProbeError::Exited(exit));
        }
        if Instant::now() + delay >= deadline {
            return Err(ProbeError::Timeout(last));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(25));
    }
}
