//! `warren restore TENANT (--snapshot SEQ | --at TIME) [--stop]`: make a past snapshot
//! the tenant's workspace (and the newest snapshot). Refused while the sandbox runs,
//! unless `--stop` says to stop it first.

use http::Method;
use warren_core::TenantId;

use crate::admin_api::{Target, block_on, call};
use crate::settings::{parse_tenant, sync_engine, writer_id};

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["snapshot", "at"])))]
pub struct Args {
    #[arg(value_parser = parse_tenant)]
    tenant: TenantId,
    /// The snapshot's sequence number (see `warren snapshots`).
    #[arg(long, value_name = "SEQ")]
    snapshot: Option<u64>,
    /// The newest snapshot at or before this time: RFC 3339 (`2026-11-28T14:00:00Z`)
    /// or Unix milliseconds.
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// Stop the tenant's running sandbox first (it syncs before it stops).
    #[arg(long)]
    stop: bool,
    #[command(flatten)]
    target: Target,
}

fn parse_time(raw: &str) -> anyhow::Result<u64> {
    if let Ok(ms) = raw.parse::<u64>() {
        return Ok(ms);
    }
    let t = chrono::DateTime::parse_from_rfc3339(raw).map_err(|e| {
        anyhow::anyhow!("--at {raw:?}: expected RFC 3339 or Unix milliseconds ({e})")
    })?;
    Ok(t.timestamp_millis().max(0) as u64)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let tenant = args.tenant;
    let at_ms = args.at.as_deref().map(parse_time).transpose()?;
    let config = args.target.config.load()?;
    block_on(async {
        if args.target.offline {
            args.target.check_offline(&config)?;
            let engine = sync_engine(&config, &writer_id("cli"))?;
            let seq = match (args.snapshot, at_ms) {
                (Some(seq), _) => seq,
                (None, Some(at)) => engine.snapshot_at(&tenant, at).await?.seq,
                (None, None) => unreachable!("clap requires one of --snapshot and --at"),
            };
            let report = engine.restore_to(&tenant, seq).await?;
            println!(
                "{tenant}: restored snapshot {seq}; it is now snapshot {}",
                report.seq.unwrap_or(seq)
            );
            return Ok(());
        }
        let which = match (args.snapshot, at_ms) {
            (Some(seq), _) => format!("seq={seq}"),
            (None, Some(at)) => format!("at_ms={at}"),
            (None, None) => unreachable!("clap requires one of --snapshot and --at"),
        };
        let path = format!(
            "/admin/api/tenants/{tenant}/restore?{which}&stop={}",
            args.stop
        );
        let base = args.target.base(&config);
        call(&config, &base, Method::POST, &path, &mut |line| {
            let v: serde_json::Value = serde_json::from_str(line)?;
            println!(
                "{tenant}: restored snapshot {}; it is now snapshot {}",
                v["restored"], v["seq"]
            );
            Ok(())
        })
        .await
    })?
}
