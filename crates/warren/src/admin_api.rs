//! A client of a running gateway's admin API, for the CLI verbs that act on tenants'
//! workspaces. With `--offline` the same verbs run the sync engine here instead, for
//! when no gateway runs (a recovery, a migration).

use std::net::ToSocketAddrs;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use warren_core::config::Config;

use crate::settings::{ConfigArgs, admin_token};

#[derive(clap::Args, Debug)]
pub struct Target {
    /// The gateway to ask (default: `public_url`, else `http://<listen>`).
    #[arg(long, value_name = "URL")]
    pub gateway: Option<String>,
    /// Work on the data dir and the store directly; only when no gateway runs.
    #[arg(long)]
    pub offline: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

impl Target {
    pub fn base(&self, config: &Config) -> String {
        self.gateway
            .clone()
            .unwrap_or_else(|| config.public_url())
            .trim_end_matches('/')
            .to_owned()
    }

    /// Refuses `--offline` while a gateway answers: two writers' freezes and syncs
    /// would not know of each other.
    pub fn check_offline(&self, config: &Config) -> anyhow::Result<()> {
        let base = self.base(config);
        let authority = base
            .split("://")
            .nth(1)
            .unwrap_or(&base)
            .split('/')
            .next()
            .unwrap_or_default();
        let reachable = authority
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .is_some_and(|a| {
                std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_millis(500))
                    .is_ok()
            });
        if reachable {
            bail!("a gateway answers at {base}: drop --offline and let it do the work");
        }
        Ok(())
    }
}

/// Where the verbs that only a running gateway can answer (`tenants`, `stop`, ...)
/// send their calls.
#[derive(clap::Args, Debug)]
pub struct Online {
    /// The gateway to ask (default: `public_url`, else `http://<listen>`).
    #[arg(long, value_name = "URL")]
    pub gateway: Option<String>,
    /// Print the gateway's answer as it is (JSON).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// One tenant, asked about through the running gateway (`tenant`, `stop`, `restart`).
#[derive(clap::Args, Debug)]
pub struct OneTenant {
    /// The tenant (user) id.
    #[arg(value_parser = crate::settings::parse_tenant)]
    pub tenant: warren_core::TenantId,
    #[command(flatten)]
    pub online: Online,
}

impl Online {
    /// Calls the admin API and returns its JSON answer, with the config it used.
    pub fn call(&self, method: Method, path: &str) -> anyhow::Result<serde_json::Value> {
        let config = self.config.load()?;
        let base = self
            .gateway
            .clone()
            .unwrap_or_else(|| config.public_url())
            .trim_end_matches('/')
            .to_owned();
        block_on(async {
            let mut body = String::new();
            call(&config, &base, method, path, &mut |line| {
                body.push_str(line);
                Ok(())
            })
            .await?;
            serde_json::from_str(&body)
                .with_context(|| format!("the gateway's answer is not JSON: {body}"))
        })?
    }
}

/// Calls the admin API; `on_line` gets the body line by line as it streams in.
pub async fn call(
    config: &Config,
    base: &str,
    method: Method,
    path: &str,
    on_line: &mut dyn FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    call_with(config, base, method, path, None, on_line).await
}

/// `call`, sending `json` as the request's body.
pub async fn call_with(
    config: &Config,
    base: &str,
    method: Method,
    path: &str,
    json: Option<serde_json::Value>,
    on_line: &mut dyn FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let token = admin_token(config)?;
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header(header::AUTHORIZATION, format!("Bearer {}", token.expose()));
    let body = match json {
        Some(json) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Bytes::from(json.to_string())
        }
        None => Bytes::new(),
    };
    let request = request.body(Full::new(body))?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .request(request)
        .await
        .with_context(|| format!("no gateway answers at {base} (start one, or pass --offline)"))?;
    let status = response.status();
    let mut body = response.into_body();
    let mut pending = Vec::new();
    let mut whole = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if !status.is_success() {
            whole.extend_from_slice(&data);
            continue;
        }
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            on_line(String::from_utf8_lossy(&line).trim())?;
        }
    }
    if !status.is_success() {
        let text = String::from_utf8_lossy(&whole);
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                Some(format!(
                    "{} ({})",
                    v["error"]["message"].as_str()?,
                    v["error"]["code"].as_str()?
                ))
            })
            .unwrap_or_else(|| text.into_owned());
        bail!("the gateway refused: {status}: {message}");
    }
    if !pending.is_empty() {
        on_line(String::from_utf8_lossy(&pending).trim())?;
    }
    Ok(())
}

/// Runs a future on a small runtime, for a CLI verb.
pub fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

/// `12 s ago`: how long before now `at_ms` (ms since the Unix epoch) was.
pub fn ago(at_ms: u64) -> String {
    warren_core::human::ago(warren_gateway::unix_ms(), at_ms)
}

/// Prints rows under a header, each column as wide as its widest cell.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// A JSON value as a table cell: strings bare, null as `-`.
pub fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}
