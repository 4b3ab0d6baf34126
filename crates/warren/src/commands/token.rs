//! `warren token USER_ID`: prints a signed URL for the user, with the secret the
//! gateway uses.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use warren_core::TenantId;
use warren_core::auth::Signer;

use crate::settings::{ConfigArgs, parse_tenant, signing_secret};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The user (tenant) id, such as `user_2abc`.
    #[arg(value_parser = parse_tenant)]
    user_id: TenantId,
    /// Seconds until the URL expires (default: `auth.token_ttl`, 24 h).
    #[arg(long, value_name = "SECS")]
    ttl: Option<u64>,
    /// The base URL to print (default: `public_url`, else `http://<listen>`).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Also start the user's sandbox now (`POST /api/prewarm` with the new URL's
    /// credentials), without waiting for it to be ready.
    #[arg(long)]
    prewarm: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let tenant = args.user_id;
    let config = args.config.load()?;
    let signer = Signer::new(signing_secret(&config)?.expose().as_bytes());
    let ttl = args
        .ttl
        .map(Duration::from_secs)
        .unwrap_or(config.auth.token_ttl.0);
    let exp = (SystemTime::now().duration_since(UNIX_EPOCH)? + ttl).as_secs();
    let base = args.url.unwrap_or_else(|| config.public_url());
    let base = base.trim_end_matches('/');
    let query = signer.query(&tenant, exp);
    println!("{base}/?{query}");
    if args.prewarm {
        let state = crate::admin_api::block_on(prewarm(base, &query))??;
        eprintln!("warren token: {tenant}'s sandbox is {state}");
    }
    Ok(())
}

/// Asks the gateway at `base` to start the sandbox; its state as the gateway answered.
async fn prewarm(base: &str, query: &str) -> anyhow::Result<String> {
    use http_body_util::BodyExt as _;
    let request = http::Request::post(format!("{base}/api/prewarm?{query}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let response = client
        .request(request)
        .await
        .map_err(|e| anyhow::anyhow!("no gateway answers at {base}: {e}"))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if status != http::StatusCode::ACCEPTED {
        anyhow::bail!(
            "the gateway refused the prewarm: {status}: {}",
            value["error"]["message"].as_str().unwrap_or("no message")
        );
    }
    Ok(value["state"].as_str().unwrap_or("starting").to_owned())
}
