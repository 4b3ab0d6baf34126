//! `warren-bench`: the project's benchmark (`scripts/bench` builds and runs it).
//!
//! It measures the numbers DESIGN.md sets goals for, on this machine, against real
//! processes on 127.0.0.1: the cold start of sleeping tenants, phase by phase (also with
//! a 10 MiB workspace on local disk or only in S3, without and with the warm pool), and the
//! proxy's latency and throughput side by side with nginx in front of the same agent,
//! and the store: bytes and time for a small change next to rsync and restic, the RPO
//! under a steady writer, a sweep of many tenants, and a full restore; and the two
//! runtimes side by side (process and docker): start to ready, stop, memory per sandbox;
//! and upgrades and restarts: failed requests and lost messages while a gateway is
//! replaced under load, sandboxes taken back after a crash, clients' reconnect time;
//! and, only when asked (`--only openclaw`: each OpenClaw needs about 1 GB and 7 to 8 s
//! of CPU to boot), OpenClaw hosted by warren: cold start to the first chat reply, memory
//! per sandbox, and the boot a pre-warm at login hides.
//! It starts every process itself and stops each of them however it ends; it prints a
//! markdown report on stdout and its progress on stderr.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::ensure;
use clap::{Parser, ValueEnum};

mod anchors;
mod client;
mod cold_start;
mod cold_start_phases;
mod launch;
mod load;
mod nginx;
mod openclaw;
mod proxy;
mod report;
mod rpo;
mod runtimes;
mod store;
mod upgrade;

#[derive(Parser)]
#[command(
    name = "warren-bench",
    about = "Benchmark warren: cold starts (also from S3 and with the warm pool), its proxy next to nginx, its store next to rsync and restic, its runtimes side by side, upgrades and restarts; OpenClaw hosted by warren (only with --only openclaw)"
)]
struct Args {
    /// The warren binary (a release build).
    #[arg(long, default_value = "target/release/warren")]
    warren: PathBuf,
    /// The nginx binary.
    #[arg(long, default_value = "nginx")]
    nginx: PathBuf,
    /// Which scenarios to run (`all` leaves out `openclaw`, which is heavy: ask for it).
    #[arg(long, value_enum, default_value_t = Only::All)]
    only: Only,
    /// New users woken one after another in the cold-start run.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// New users woken at capacity, each evicting the least recently used (0: skip).
    #[arg(long, default_value_t = 50)]
    capacity_users: usize,
    /// `max_instances` of the at-capacity run.
    #[arg(long, default_value_t = 4)]
    capacity: usize,
    /// Timed starts in each case of the 10 MiB workspace run (cold-start-phases), after
    /// one untimed warm-up start.
    #[arg(long, default_value_t = 100)]
    phase_users: usize,
    /// The warm pool's size in the cases of that run that have one.
    #[arg(long, default_value_t = 2)]
    pool: usize,
    /// Milliseconds of quiet before each start of that run (0: one right after another).
    #[arg(long, default_value_t = 0)]
    phase_pause_ms: u64,
    /// Run that run's gateways with `[sync] single_writer = true` (no listing of the
    /// store before starting from a local copy).
    #[arg(long)]
    phase_single_writer: bool,
    /// Rounds of the proxy comparison; each measures every metric on every target.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Round trips of each latency run (per target and round).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Connections of each throughput run.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds of each throughput run (per target and round).
    #[arg(long, default_value_t = 2)]
    duration_secs: u64,
    /// Bytes in each request body and WebSocket message.
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    /// The rsync binary (an anchor of the store run).
    #[arg(long, default_value = "rsync")]
    rsync: PathBuf,
    /// The restic binary (an anchor of the store run).
    #[arg(long, default_value = "restic")]
    restic: PathBuf,
    /// Files in the store run's workspace.
    #[arg(long, default_value_t = 2000)]
    workspace_files: usize,
    /// Bytes in each of them (random).
    #[arg(long, default_value_t = 25_600)]
    workspace_file_bytes: usize,
    /// Rounds of the 4 KB change (in each workspace shape).
    #[arg(long, default_value_t = 10)]
    change_rounds: usize,
    /// Tenants of the sweep run.
    #[arg(long, default_value_t = 1000)]
    sweep_tenants: usize,
    /// Messages of the RPO run, one every 100 ms.
    #[arg(long, default_value_t = 100)]
    rpo_messages: usize,
    /// Sandboxes started one after another on each runtime (the first untimed), then
    /// measured idle and stopped with their gateway.
    #[arg(long, default_value_t = 50)]
    runtime_sandboxes: usize,
    /// Idle sandboxes stopped one at a time on each runtime (each start at
    /// max_instances = 1 evicts the previous tenant's).
    #[arg(long, default_value_t = 30)]
    runtime_stops: usize,
    /// The echo agent's image for the docker runtime (`scripts/build-image` makes it).
    #[arg(long, default_value = "localhost/warren-echo:latest")]
    image: String,
    /// Tenants holding a WebSocket through the upgrades and the restart.
    #[arg(long, default_value_t = 20)]
    upgrade_clients: usize,
    /// Milliseconds between two messages on each of those WebSockets.
    #[arg(long, default_value_t = 50)]
    upgrade_interval_ms: u64,
    /// Takeovers (`warren serve --takeover`) in a row under the same load.
    #[arg(long, default_value_t = 3)]
    upgrades: usize,
    /// Sandboxes running when the gateway is killed (SIGKILL) and replaced.
    #[arg(long, default_value_t = 100)]
    crash_sandboxes: usize,
    /// Where `scripts/install-openclaw` put Node and OpenClaw (the openclaw scenario).
    #[arg(long, default_value = "/var/cache/warren/openclaw-2026.9.6")]
    openclaw_dir: PathBuf,
    /// Fresh tenants whose first chat reply is timed from asleep, one after another,
    /// after one untimed warm-up.
    #[arg(long, default_value_t = 5)]
    openclaw_starts: usize,
    /// Fresh tenants pre-warmed at login, and as many not.
    #[arg(long, default_value_t = 3)]
    openclaw_prewarm_users: usize,
    /// Seconds from the login (and its pre-warm) to the first message: about one
    /// OpenClaw boot.
    #[arg(long, default_value_t = 8)]
    openclaw_first_message_after_secs: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Only {
    All,
    ColdStart,
    ColdStartPhases,
    Proxy,
    Store,
    Runtimes,
    Upgrade,
    /// OpenClaw hosted by warren; not part of `all`.
    Openclaw,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warren-bench: cannot start tokio: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.warren.is_file(),
        "{} not found: build it with `cargo build --release -p warren`, or pass --warren",
        args.warren.display()
    );
    ensure!(
        args.users > 0
            && args.rounds > 0
            && args.requests > 0
            && args.connections > 0
            && args.change_rounds > 0
            && args.sweep_tenants > 0
            && args.rpo_messages > 0,
        "counts must be positive"
    );
    let warren = std::fs::canonicalize(&args.warren)?;
    // Canonical, so sandboxes are recognised by their working directory under it.
    let scratch = tempfile::Builder::new().prefix("warren-bench-").tempdir()?;
    let dir = std::fs::canonicalize(scratch.path())?;

    let command: Vec<String> = std::env::args().collect();
    report::machine(&command.join(" "), &warren, &args.nginx);
    let mut failed = Vec::new();

    if matches!(args.only, Only::All | Only::ColdStart) {
        eprintln!("cold start: {} users...", args.users);
        let limit = args.users + 8;
        let run = cold_start::run(&warren, &dir.join("cold"), limit, 0, args.users).await;
        if let Some(run) = outcome("Cold start of sleeping tenants", run, &mut failed) {
            report::cold_start("Cold start of sleeping tenants", &run);
        }

        if args.capacity_users > 0 {
            eprintln!(
                "cold start at capacity: {} users, max_instances = {}...",
                args.capacity_users, args.capacity
            );
            let run = cold_start::run(
                &warren,
                &dir.join("capacity"),
                args.capacity,
                args.capacity,
                args.capacity_users,
            )
            .await;
            let title = "Cold start at capacity (each start evicts the LRU idle sandbox)";
            if let Some(run) = outcome(title, run, &mut failed) {
                report::cold_start(title, &run);
            }
        }
    }

    if matches!(args.only, Only::All | Only::ColdStartPhases) {
        let settings = cold_start_phases::Settings {
            users: args.phase_users,
            pool: args.pool,
            pause: Duration::from_millis(args.phase_pause_ms),
            single_writer: args.phase_single_writer,
        };
        let run = cold_start_phases::run(&warren, &dir.join("phases"), &settings).await;
        let title = report::PHASES_TITLE;
        if let Some(run) = outcome(title, run, &mut failed) {
            report::cold_start_phases(&run);
        }
    }

    if matches!(args.only, Only::All | Only::Proxy) {
        eprintln!("proxy: direct, warren and nginx...");
        let settings = proxy::Settings {
            rounds: args.rounds,
            requests: args.requests,
            connections: args.connections,
            duration: Duration::from_secs(args.duration_secs),
            body_bytes: args.body_bytes,
        };
        let run = proxy::run(&warren, &args.nginx, &dir.join("proxy"), &settings).await;
        if let Some(run) = outcome("Proxy overhead", run, &mut failed) {
            report::proxy(&run, &settings);
        }
    }

    if matches!(args.only, Only::All | Only::Store) {
        let settings = store::Settings {
            workspace: store::Shape {
                files: args.workspace_files,
                file_bytes: args.workspace_file_bytes,
                dirs: 20,
            },
            rounds: args.change_rounds,
            sweep_tenants: args.sweep_tenants,
        };
        let run = store::run(&args.rsync, &args.restic, &dir.join("store"), &settings).await;
        if let Some(run) = outcome("Store", run, &mut failed) {
            report::store(&run, &settings);
        }

        eprintln!(
            "store: RPO, {} messages, one every 100 ms...",
            args.rpo_messages
        );
        let run = rpo::run(
            &warren,
            &dir.join("rpo"),
            args.rpo_messages,
            Duration::from_millis(100),
        )
        .await;
        if let Some(run) = outcome("Store: RPO under a steady writer", run, &mut failed) {
            report::rpo(&run);
        }
    }
    if matches!(args.only, Only::All | Only::Runtimes) {
        let settings = runtimes::Settings {
            sandboxes: args.runtime_sandboxes,
            stops: args.runtime_stops,
            image: args.image.clone(),
        };
        let run = runtimes::run(&warren, &dir.join("runtimes"), &settings).await;
        if let Some(run) = outcome("Runtimes", run, &mut failed) {
            report::runtimes(&run, &settings);
        }
    }
    if matches!(args.only, Only::All | Only::Upgrade) {
        let settings = upgrade::Settings {
            clients: args.upgrade_clients,
            interval: Duration::from_millis(args.upgrade_interval_ms),
            upgrades: args.upgrades,
            crash_sandboxes: args.crash_sandboxes,
        };
        let run = upgrade::run(&warren, &dir.join("upgrade"), &settings).await;
        if let Some(run) = outcome("Upgrades and restarts", run, &mut failed) {
            report::upgrade(&run, &settings);
        }
    }
    if args.only == Only::Openclaw {
        let settings = openclaw::Settings {
            openclaw_dir: args.openclaw_dir.clone(),
            starts: args.openclaw_starts,
            prewarm_users: args.openclaw_prewarm_users,
            first_message_after: Duration::from_secs(args.openclaw_first_message_after_secs),
        };
        let run = openclaw::run(&warren, &dir.join("openclaw"), &settings).await;
        if let Some(run) = outcome(report::OPENCLAW_TITLE, run, &mut failed) {
            report::openclaw(&run, &settings);
        }
    }
    ensure!(failed.is_empty(), "failed: {}", failed.join("; "));
    Ok(())
}

/// A scenario's result. A failed one is reported in place, and the run goes on to the
/// next scenario (each starts its own processes), then fails at the end.
fn outcome<T>(name: &str, result: anyhow::Result<T>, failed: &mut Vec<String>) -> Option<T> {
    match result {
        Ok(run) => Some(run),
        Err(e) => {
            println!("## {name}: FAILED\n\n```\n{e:#}\n```\n");
            eprintln!("warren-bench: {name}: {e:#}");
            failed.push(name.to_owned());
            None
        }
    }
}
