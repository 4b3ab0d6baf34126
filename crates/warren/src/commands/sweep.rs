//! `warren sweep`: put EVERY tenant's latest workspace in the store now and apply
//! retention, printing each tenant as it finishes.

use http::Method;
use warren_store::engine::{SweepItem, SweepReport};

use warren_core::human;

use crate::admin_api::{Target, block_on, call};
use crate::settings::{sync_engine, writer_id};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    target: Target,
}

fn print_item(item: &serde_json::Value) {
    let tenant = item["tenant"].as_str().unwrap_or("?");
    let seq = item["seq"]
        .as_u64()
        .map_or("none".into(), |s| s.to_string());
    match item["error"].as_str() {
        Some(error) => println!("{tenant}: FAILED: {error}"),
        None if item["created"].as_bool() == Some(true) => println!(
            "{tenant}: snapshot {seq} ({} uploaded, {} ms)",
            human::bytes(item["bytes_uploaded"].as_u64().unwrap_or(0)),
            item["elapsed_ms"]
        ),
        None => println!("{tenant}: unchanged (snapshot {seq})"),
    }
}

/// Prints the closing line; fails when any tenant failed.
fn finish(report: &serde_json::Value) -> anyhow::Result<()> {
    let failed = report["failed"].as_u64().unwrap_or(0);
    println!(
        "sweep: {} tenants, {} snapshots, {} unchanged, {failed} failed, {} uploaded in {} ms",
        report["tenants"],
        report["snapshots_created"],
        report["unchanged"],
        human::bytes(report["bytes_uploaded"].as_u64().unwrap_or(0)),
        report["elapsed_ms"]
    );
    anyhow::ensure!(failed == 0, "{failed} tenants could not be synced");
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = args.target.config.load()?;
    block_on(async {
        if args.target.offline {
            args.target.check_offline(&config)?;
            let engine = sync_engine(&config, &writer_id("cli"))?;
            let progress =
                |item: &SweepItem| print_item(&serde_json::to_value(item).unwrap_or_default());
            let report: SweepReport = engine
                .sweep(config.sweep.concurrency, &|_| None, &progress)
                .await?;
            return finish(&serde_json::to_value(&report)?);
        }
        let base = args.target.base(&config);
        let mut outcome = Ok(());
        call(
            &config,
            &base,
            Method::POST,
            "/admin/api/sweep",
            &mut |line| {
                let v: serde_json::Value = serde_json::from_str(line)?;
                if let Some(item) = v.get("item") {
                    print_item(item);
                } else if let Some(report) = v.get("report") {
                    outcome = finish(report);
                } else if let Some(error) = v.get("error") {
                    outcome = Err(anyhow::anyhow!("sweep failed: {error}"));
                }
                Ok(())
            },
        )
        .await?;
        outcome
    })?
}
