//! `warren events [TENANT] [--limit N]`: the most recent sandbox events (starts, stops
//! and why), newest first, of one tenant or all, from the running gateway.

use http::Method;
use warren_core::TenantId;

use crate::admin_api::{Online, ago, cell};
use crate::settings::parse_tenant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this tenant's events.
    #[arg(value_parser = parse_tenant)]
    tenant: Option<TenantId>,
    /// How many (at most 1000).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    #[command(flatten)]
    online: Online,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut path = format!("/admin/api/events?limit={}", args.limit);
    if let Some(t) = &args.tenant {
        path.push_str(&format!("&tenant={t}"));
    }
    let answer = args.online.call(Method::GET, &path)?;
    if args.online.json {
        println!("{answer:#}");
        return Ok(());
    }
    let events = answer["events"].as_array().cloned().unwrap_or_default();
    if events.is_empty() {
        println!("no events");
    }
    for e in &events {
        println!("{}", line(e, args.tenant.is_none()));
    }
    Ok(())
}

/// One event: `12 s ago  user_a  asleep (idle): exit status 0`.
pub fn line(e: &serde_json::Value, with_tenant: bool) -> String {
    let at = e["at_ms"].as_u64().map_or("-".into(), ago);
    let tenant = if with_tenant {
        format!("{}  ", cell(&e["tenant"]))
    } else {
        String::new()
    };
    let cause = e["cause"]
        .as_str()
        .map_or(String::new(), |c| format!(" ({c})"));
    let detail = e["detail"]
        .as_str()
        .map_or(String::new(), |d| format!(": {d}"));
    format!("{at:>12}  {tenant}{}{cause}{detail}", cell(&e["state"]))
}
