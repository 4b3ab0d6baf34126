//! `warren tenant TENANT`: one tenant in full, from the running gateway: its sandbox's
//! state, profile, activity, sync, newest snapshot, resource use and recent events.

use http::Method;
use warren_core::human;

use crate::admin_api::{ago, cell};

pub use crate::admin_api::OneTenant as Args;

pub fn run(args: Args) -> anyhow::Result<()> {
    let path = format!("/admin/api/tenants/{}", args.tenant);
    let t = args.online.call(Method::GET, &path)?;
    if args.online.json {
        println!("{t:#}");
        return Ok(());
    }
    let when = |v: &serde_json::Value| v.as_u64().map_or("-".into(), ago);
    let mut facts: Vec<(&str, String)> = vec![
        (
            "state",
            format!("{} since {}", cell(&t["state"]), when(&t["since_ms"])),
        ),
        ("tier", cell(&t["tier"])),
        ("instance type", cell(&t["instance_type"])),
        ("agent", cell(&t["agent"])),
        ("network", cell(&t["network"])),
        ("last activity", when(&t["last_activity_ms"])),
    ];
    if let Some(phase) = t["phase"]["name"].as_str() {
        facts.push(("start phase", phase.to_owned()));
    }
    if !t["last_stop"].is_null() {
        let stop = &t["last_stop"];
        facts.push((
            "last stop",
            format!(
                "{}, {}{}",
                cell(&stop["cause"]),
                when(&stop["at_ms"]),
                stop["detail"]
                    .as_str()
                    .map_or(String::new(), |d| format!(": {d}"))
            ),
        ));
    }
    let sync = &t["sync"];
    facts.push((
        "sync",
        match (sync["seq"].as_u64(), sync["last_sync_ms"].as_u64()) {
            (Some(seq), Some(at)) => format!("snapshot #{seq}, last synced {}", ago(at)),
            (Some(seq), None) => format!("snapshot #{seq}"),
            _ => "never synced".into(),
        },
    ));
    if let Some(lag) = t["sync_lag_ms"].as_u64() {
        facts.push(("sync lag", human::millis(lag as f64)));
    }
    if let Some(error) = sync["last_error"].as_str() {
        facts.push(("sync error", error.to_owned()));
    }
    let last = &t["last_snapshot"];
    facts.push((
        "last snapshot",
        match last["seq"].as_u64() {
            Some(seq) => format!(
                "#{seq} of {}, {} ({} files, {})",
                cell(&t["snapshots"]),
                when(&last["created_ms"]),
                cell(&last["files"]),
                human::bytes(last["bytes"].as_u64().unwrap_or(0))
            ),
            None => "none".into(),
        },
    ));
    if let Some(error) = t["store_error"].as_str() {
        facts.push(("store", error.to_owned()));
    }
    let resources = &t["resources"];
    if let Some(memory) = resources["memory_bytes"].as_u64() {
        let limit = resources["memory_limit_bytes"]
            .as_u64()
            .map_or(String::new(), |l| format!(" of {}", human::bytes(l)));
        facts.push(("memory", format!("{}{limit}", human::bytes(memory))));
    }
    if let Some(cpu) = resources["cpu_ms"].as_u64() {
        facts.push(("CPU time", human::millis(cpu as f64)));
    }
    println!("{}", cell(&t["tenant"]));
    for (k, v) in facts {
        println!("  {k:<14} {v}");
    }
    let events = t["events"].as_array().cloned().unwrap_or_default();
    if !events.is_empty() {
        println!("recent events:");
        for e in &events {
            println!("  {}", super::events::line(e, false));
        }
    }
    Ok(())
}
