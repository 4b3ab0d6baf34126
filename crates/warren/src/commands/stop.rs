//! `warren stop TENANT`: stop a tenant's sandbox now, through the running gateway; its
//! workspace is synced first, and its events say an operator stopped it (`admin`). The
//! tenant's next request starts it again.

use http::Method;

use crate::admin_api::cell;

pub use crate::admin_api::OneTenant as Args;

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
