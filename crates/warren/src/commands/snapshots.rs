//! `warren snapshots TENANT`: list a tenant's snapshots, oldest first.

use http::Method;
use warren_core::TenantId;

use warren_core::human;

use crate::admin_api::{Target, block_on, call};
use crate::settings::{parse_tenant, sync_engine, writer_id};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(value_parser = parse_tenant)]
    tenant: TenantId,
    #[command(flatten)]
    target: Target,
}

fn print(list: &[serde_json::Value]) {
    println!(
        "{:>8}  {:<24}  {:>7}  {:>10}  writer",
        "seq", "created (UTC)", "files", "size"
    );
    for s in list {
        let created = s["created_ms"]
            .as_i64()
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map_or("?".into(), |t| {
                t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
            });
        println!(
            "{:>8}  {:<24}  {:>7}  {:>10}  {}",
            s["seq"],
            created,
            s["files"],
            human::bytes(s["bytes"].as_u64().unwrap_or(0)),
            s["writer"].as_str().unwrap_or("")
        );
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let tenant = args.tenant;
    let config = args.target.config.load()?;
    block_on(async {
        if args.target.offline {
            let records = sync_engine(&config, &writer_id("cli"))?
                .snapshots(&tenant)
                .await?;
            let list: Vec<_> = records
                .iter()
                .map(|r| serde_json::json!({ "seq": r.seq, "created_ms": r.created_ms, "files": r.files, "bytes": r.bytes, "writer": r.writer }))
                .collect();
            print(&list);
            return Ok(());
        }
        let base = args.target.base(&config);
        call(
            &config,
            &base,
            Method::GET,
            &format!("/admin/api/tenants/{tenant}/snapshots"),
            &mut |line| {
                let v: serde_json::Value = serde_json::from_str(line)?;
                print(
                    v["snapshots"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default(),
                );
                Ok(())
            },
        )
        .await
    })?
}
