//! `warren cleanup [--apply]`: run the inactive-tenant cleanup now on the running
//! gateway and print its report, a line per tenant due. A dry run that removes nothing
//! unless `--apply`. There is no `--offline`: only the gateway can hold a tenant so
//! that no start races the removal.

use http::Method;

use crate::admin_api::{block_on, call};
use crate::settings::ConfigArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Remove what is due (without it: a dry run that only reports).
    #[arg(long)]
    apply: bool,
    /// The gateway to ask (default: `public_url`, else `http://<listen>`).
    #[arg(long, value_name = "URL")]
    gateway: Option<String>,
    #[command(flatten)]
    config: ConfigArgs,
}

fn print_item(item: &serde_json::Value, dry_run: bool) {
    let tenant = item["tenant"].as_str().unwrap_or("?");
    let step = match item["step"].as_str() {
        Some("remove_workspace") => "remove its local workspace",
        Some("delete_snapshots") => "delete its snapshots from the store",
        _ => "?",
    };
    let since = item["since_ms"]
        .as_u64()
        .and_then(|ms| chrono::DateTime::from_timestamp_millis(ms as i64))
        .map_or("?".into(), |t| t.format("%Y-%m-%d %H:%M UTC").to_string());
    let detail = item["detail"].as_str().unwrap_or_default();
    match (item["error"].as_str(), item["done"].as_bool() == Some(true)) {
        (Some(error), _) => println!("{tenant}: FAILED to {step}: {error}"),
        (None, true) => println!("{tenant}: {detail}"),
        (None, false) if dry_run => println!("{tenant}: would {step} (away since {since})"),
        (None, false) => println!("{tenant}: skipped: {detail}"),
    }
}

/// Prints the report; fails when any tenant failed.
fn print_report(report: &serde_json::Value) -> anyhow::Result<()> {
    let dry_run = report["dry_run"].as_bool() != Some(false);
    let items = report["items"].as_array().cloned().unwrap_or_default();
    for item in &items {
        print_item(item, dry_run);
    }
    let failed = report["failed"].as_u64().unwrap_or(0);
    if dry_run {
        println!(
            "cleanup (dry run): {} tenants, {} due; nothing removed (--apply removes)",
            report["tenants"],
            items.len()
        );
    } else {
        println!(
            "cleanup: {} tenants, {} workspaces removed, {} tenants' snapshots deleted, {} skipped, {failed} failed in {} ms",
            report["tenants"],
            report["workspaces_removed"],
            report["snapshots_deleted"],
            report["skipped"],
            report["elapsed_ms"]
        );
    }
    if report["interrupted"].as_bool() == Some(true) {
        println!("cleanup: interrupted by the gateway's shutdown");
    }
    anyhow::ensure!(failed == 0, "{failed} tenants could not be cleaned up");
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config.load()?;
    let base = args
        .gateway
        .clone()
        .unwrap_or_else(|| config.public_url())
        .trim_end_matches('/')
        .to_owned();
    let path = match args.apply {
        true => "/admin/api/cleanup?apply=true",
        false => "/admin/api/cleanup",
    };
    block_on(async {
        let mut outcome = Ok(());
        call(&config, &base, Method::POST, path, &mut |line| {
            if !line.is_empty() {
                outcome = print_report(&serde_json::from_str(line)?);
            }
            Ok(())
        })
        .await?;
        outcome
    })?
}
