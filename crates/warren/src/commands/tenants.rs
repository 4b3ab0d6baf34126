//! `warren tenants`: every tenant the running gateway knows, as a table: its sandbox's
//! state, tier, instance type, agent, last activity, snapshot, sync lag and, while it
//! runs, its memory and CPU time.

use http::Method;

use warren_core::human;

use crate::admin_api::{Online, ago, cell, print_table};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    online: Online,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let answer = args.online.call(Method::GET, "/admin/api/tenants")?;
    if args.online.json {
        println!("{answer:#}");
        return Ok(());
    }
    let cap = &answer["capacity"];
    println!(
        "{} of {} sandboxes running, {} waiting for a slot, {} in the warm pool",
        cap["running"], cap["max_instances"], cap["waiting"], cap["pool_ready"]
    );
    let tenants = answer["tenants"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = tenants.iter().map(row).collect();
    print_table(
        &[
            "TENANT", "STATE", "TIER", "INSTANCE", "AGENT", "ACTIVE", "SNAPSHOT", "SYNC LAG",
            "MEMORY", "CPU",
        ],
        &rows,
    );
    Ok(())
}

fn row(t: &serde_json::Value) -> Vec<String> {
    let resources = &t["resources"];
    let memory = match (
        resources["memory_bytes"].as_u64(),
        resources["memory_limit_bytes"].as_u64(),
    ) {
        (Some(m), Some(limit)) => format!("{}/{}", human::bytes(m), human::bytes(limit)),
        (Some(m), None) => human::bytes(m),
        _ => "-".into(),
    };
    let lag = match (
        t["sync"]["failing_since_ms"].as_u64(),
        t["sync_lag_ms"].as_u64(),
    ) {
        (Some(_), _) => "failing".into(),
        (None, Some(lag)) => human::millis(lag as f64),
        (None, None) => "-".into(),
    };
    vec![
        cell(&t["tenant"]),
        cell(&t["state"]),
        cell(&t["tier"]),
        cell(&t["instance_type"]),
        cell(&t["agent"]),
        t["last_activity_ms"].as_u64().map_or("-".into(), ago),
        t["sync"]["seq"]
            .as_u64()
            .map_or("-".into(), |s| format!("#{s}")),
        lag,
        memory,
        resources["cpu_ms"]
            .as_u64()
            .map_or("-".into(), |ms| human::millis(ms as f64)),
    ]
}
