//! `warren sync TENANT`: put a tenant's workspace in the store now.

use http::Method;
use warren_core::TenantId;

use warren_core::human;

use crate::admin_api::{Target, block_on, call};
use crate::settings::{parse_tenant, sync_engine, writer_id};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The tenant (user) id.
    #[arg(value_parser = parse_tenant)]
    tenant: TenantId,
    #[command(flatten)]
    target: Target,
}

fn print(tenant: &str, v: &serde_json::Value) {
    let seq = v["seq"].as_u64().map_or("none".into(), |s| s.to_string());
    if v["created"].as_bool() == Some(true) {
        println!(
            "{tenant}: snapshot {seq} ({} chunks, {} uploaded, frozen {} ms, {} ms)",
            v["chunks_uploaded"],
            human::bytes(v["bytes_uploaded"].as_u64().unwrap_or(0)),
            v["frozen_ms"],
            v["elapsed_ms"]
        );
    } else {
        println!("{tenant}: unchanged (snapshot {seq})");
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let tenant = args.tenant;
    let config = args.target.config.load()?;
    block_on(async {
        if args.target.offline {
            args.target.check_offline(&config)?;
            let r = sync_engine(&config, &writer_id("cli"))?
                .sync(&tenant, None)
                .await?;
            let v = serde_json::json!({ "seq": r.seq, "created": r.created, "chunks_uploaded": r.chunks_uploaded,
                "bytes_uploaded": r.bytes_uploaded, "frozen_ms": r.frozen_ms, "elapsed_ms": r.elapsed_ms });
            print(tenant.as_str(), &v);
            return Ok(());
        }
        let base = args.target.base(&config);
        call(
            &config,
            &base,
            Method::POST,
            &format!("/admin/api/tenants/{tenant}/sync"),
            &mut |line| {
                print(tenant.as_str(), &serde_json::from_str(line)?);
                Ok(())
            },
        )
        .await
    })?
}
