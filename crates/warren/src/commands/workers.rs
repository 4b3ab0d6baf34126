//! `warren workers`: the running gateway's background workers (the sweep, which also
//! applies retention, pre-warm, cleanup, ...) with their state, runs, errors, last and
//! next run and last error.

use http::Method;

use warren_core::human;

use crate::admin_api::{Online, ago, cell, print_table};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    online: Online,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let answer = args.online.call(Method::GET, "/admin/api/workers")?;
    if args.online.json {
        println!("{answer:#}");
        return Ok(());
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let workers = answer["workers"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            vec![
                cell(&w["name"]),
                cell(&w["state"]),
                cell(&w["runs"]),
                cell(&w["errors"]),
                w["last_run_ms"].as_u64().map_or("-".into(), ago),
                w["next_run_ms"].as_u64().map_or("-".into(), |at| {
                    format!("in {}", human::millis(at.saturating_sub(now_ms) as f64))
                }),
                cell(&w["last_error"]),
            ]
        })
        .collect();
    print_table(
        &[
            "WORKER",
            "STATE",
            "RUNS",
            "ERRORS",
            "LAST RUN",
            "NEXT RUN",
            "LAST ERROR",
        ],
        &rows,
    );
    println!("retention has no worker of its own: the sweep applies it to each tenant it syncs");
    Ok(())
}
