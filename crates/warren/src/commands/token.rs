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
    println!(
        "{}/?{}",
        base.trim_end_matches('/'),
        signer.query(&tenant, exp)
    );
    Ok(())
}
