//! `warren restart TENANT`: stop a tenant's sandbox (synced first, cause `admin`) and
//! start it again, through the running gateway; returns once the new one is ready.

use http::Method;

use warren_core::human;

use crate::admin_api::cell;

pub use crate::admin_api::OneTenant as Args;

pub fn run(args: Args) -> anyhow::Result<()> {
    let path = format!("/admin/api/tenants/{}/restart", args.tenant);
    let answer = args.online.call(Method::POST, &path)?;
    if args.online.json {
        println!("{answer:#}");
        return Ok(());
    }
    let took = answer["start_ms"].as_f64().map_or(String::new(), |ms| {
        format!(" (started in {})", human::millis(ms))
    });
    println!(
        "{}: restarted, now {}{took}",
        args.tenant,
        cell(&answer["status"]["state"])
    );
    Ok(())
}
