//! `warren stop TENANT`: stop a tenant's sandbox now, through the running gateway; its
//! workspace is synced first, and its events say an operator stopped it (`admin`). The
//! tenant's next request starts it again.

use http::Method;
use warren_core::TenantId;

use crate::admin_api::{Online, cell};
use crate::settings::parse_tenant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The tenant (user) id.
    #[arg(value_parser = parse_tenant)]
    tenant: TenantId,
    #[command(flatten)]
    online: Online,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let path = format!("/admin/api/tenants/{}/stop", args.tenant);
    let answer = args.online.call(Method::POST, &path)?;
    if args.online.json {
        println!("{answer:#}");
    } else if answer["stopped"].as_bool() == Some(true) {
        println!(
            "{}: stopped, now {}",
            args.tenant,
            cell(&answer["status"]["state"])
        );
    } else {
        println!("{}: no sandbox was running", args.tenant);
    }
    Ok(())
}
