//! The printed report: markdown tables a reader can paste into BENCHMARKS.md, each
//! with the goal from DESIGN.md it answers.

use std::path::Path;
use std::time::Duration;

use crate::cold_start::ColdStart;
use crate::cold_start_phases::{Case, METRIC_PHASES, PhasesRun, WORKSPACE};
use crate::launch::GatewayStopped;
use crate::load::Samples;
use crate::openclaw::{self, FirstMessage, FirstReply, OpenclawRun};
use crate::proxy::{ProxyRun, Settings, TARGETS};
use crate::rpo::Rpo;
use crate::runtimes::{self, Runtimes};
use crate::store::{self, ChangeRun, StoreRun};
use crate::upgrade::{self, UpgradeRun};

/// The cold-start goals of DESIGN.md ("Numbers to beat").
const COLD_P50_GOAL: Duration = Duration::from_millis(50);
const COLD_P99_GOAL: Duration = Duration::from_millis(200);
/// The warm pool's goal (issue 6): a claim, the create phase with a pool.
const POOL_CLAIM_GOAL: Duration = Duration::from_millis(20);

fn first_line_of(program: &Path, arg: &str) -> Option<String> {
    let out = std::process::Command::new(program).arg(arg).output().ok()?;
    // nginx prints its version on stderr.
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    Some(
        String::from_utf8_lossy(&text)
            .lines()
            .next()?
            .trim()
            .to_owned(),
    )
}

fn proc_field(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    Some(
        line.split_once([':', '='])?
            .1
            .trim()
            .trim_matches('"')
            .to_owned(),
    )
}

pub fn machine(command: &str, warren: &Path, nginx: &Path) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let os = proc_field("/etc/os-release", "PRETTY_NAME").unwrap_or_else(|| "Linux".into());
    let memory = proc_field("/proc/meminfo", "MemTotal")
        .and_then(|m| m.trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or("unknown".into(), |kib| {
            format!("{:.1} GiB", kib as f64 / (1 << 20) as f64)
        });
    println!("# warren benchmark\n");
    println!("command: `{command}`\n");
    println!("| machine | |\n|---|---|");
    println!("| cores (nproc) | {cores} |");
    println!("| CPU | {cpu} |");
    println!("| memory | {memory} |");
    println!("| kernel | {} ({os}) |", kernel.trim());
    let version = |p: &Path, arg: &str| first_line_of(p, arg).unwrap_or_else(|| "unknown".into());
    println!("| warren | {} |", version(warren, "--version"));
    println!("| nginx | {} |", version(nginx, "-v"));
    let engine: Vec<String> = ["podman", "runc", "conmon"]
        .iter()
        .filter_map(|p| first_line_of(Path::new(p), "--version"))
        .collect();
    if !engine.is_empty() {
        println!("| container engine | {} |", engine.join(", "));
    }
    // Other work on the machine skews every figure: say how busy it was.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!(
        "| load average at start (1, 5, 15 min) | {} |",
        load.join(", ")
    );
    println!();
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub fn cold_start(title: &str, run: &ColdStart) {
    let n = run.total.len();
    println!("## {title}\n");
    println!(
        "{n} users, one after another, each one's first request (`POST /echo`) timed by the \
         client; phases from the gateway's `Server-Timing`. max_instances = {}.\n",
        run.max_instances
    );
    phase_table(
        &[
            (
                "admission (slot; at capacity, the eviction)",
                &run.admission,
            ),
            ("restore (new tenants: nothing to restore)", &run.restore),
            ("create (spawn the sandbox)", &run.create),
            ("boot (until the agent's /healthz answers)", &run.boot),
            ("proxy + first byte (the rest)", &run.rest),
        ],
        &run.total,
    );
    println!("- {}", overhead_goal(&run.total));
    let each = run.sandboxes_rss_kib / run.sandboxes_running.max(1) as u64;
    println!(
        "- afterwards: {} sandboxes running (most at once: {}); gateway RSS {}; sandboxes' RSS \
         {} in all, {} each",
        run.sandboxes_running,
        run.most_running,
        mib(run.gateway_rss_kib),
        mib(run.sandboxes_rss_kib),
        mib(each)
    );
    println!(
        "- gateway stop (SIGINT to exit, stopping every sandbox): {} ms",
        ms(run.stopped.took)
    );
    stopped(&run.stopped);
    println!();
}

/// A start's phases against the client's total: mean, share of the mean, p50, p99.
fn phase_table(phases: &[(&str, &Samples)], total: &Samples) {
    println!("| phase | mean (ms) | share of mean | p50 (ms) | p99 (ms) |");
    println!("|---|---:|---:|---:|---:|");
    let total_mean = total.mean().as_secs_f64().max(f64::MIN_POSITIVE);
    for (name, s) in phases {
        println!(
            "| {name} | {} | {:.1}% | {} | {} |",
            ms(s.mean()),
            100.0 * s.mean().as_secs_f64() / total_mean,
            ms(s.percentile(0.5)),
            ms(s.percentile(0.99))
        );
    }
    println!(
        "| **total (client wall time)** | **{}** | 100% | **{}** | **{}** |\n",
        ms(total.mean()),
        ms(total.percentile(0.5)),
        ms(total.percentile(0.99))
    );
}

fn verdict(v: Duration, goal: Duration) -> &'static str {
    if v <= goal { "met" } else { "NOT met" }
}

/// The cold-start goal of DESIGN.md, for the client's total time.
fn overhead_goal(total: &Samples) -> String {
    let (p50, p99) = (total.percentile(0.5), total.percentile(0.99));
    format!(
        "goal (DESIGN.md, platform overhead): p50 ≤ {} ms: {} ({} ms); p99 ≤ {} ms: {} ({} ms)",
        COLD_P50_GOAL.as_millis(),
        verdict(p50, COLD_P50_GOAL),
        ms(p50),
        COLD_P99_GOAL.as_millis(),
        verdict(p99, COLD_P99_GOAL),
        ms(p99)
    )
}

pub const PHASES_TITLE: &str = "Cold start with a 10 MiB workspace: on local disk or only in S3, without and with the warm pool";

/// Published figures DESIGN.md quotes ("Numbers to beat"); not measured here.
const ORIGINAL_COLD_START: [Duration; 2] = [Duration::from_secs(30), Duration::from_secs(90)];
const E2B_CREATE: [Duration; 2] = [Duration::from_millis(150), Duration::from_millis(270)];
const AGENT_SANDBOX_CLAIM_P50: Duration = Duration::from_millis(92);

fn case_name(c: &Case) -> String {
    let pool = match c.pool {
        0 => "no pool".to_owned(),
        n => format!("pool = {n}"),
    };
    if c.from_store {
        format!("{}. workspace only in S3 (restored), {pool}", c.number)
    } else {
        format!("{}. workspace on local disk, current, {pool}", c.number)
    }
}

/// `a / b`, as `12.3x`.
fn times(a: Duration, b: Duration) -> String {
    let r = a.as_secs_f64() / b.as_secs_f64().max(f64::MIN_POSITIVE);
    if r >= 100.0 {
        format!("{r:.0}x")
    } else if r >= 10.0 {
        format!("{r:.1}x")
    } else {
        format!("{r:.2}x")
    }
}

/// Which sample nearest-rank p99 is, in words.
fn p99_rank(n: usize) -> String {
    let from_top = n + 1 - ((0.99 * n as f64).ceil() as usize).clamp(1, n.max(1));
    match from_top {
        1 => "the slowest".into(),
        2 => "the second slowest".into(),
        k => format!("the {k}th slowest"),
    }
}

pub fn cold_start_phases(run: &PhasesRun) {
    let n = run.users;
    let pool = run.cases.iter().map(|c| c.pool).max().unwrap_or(0);
    println!("## {PHASES_TITLE}\n");
    println!(
        "{} tenants, each with a workspace of {} of random bytes and the echo agent's history \
         file, empty; their first snapshots put in S3 (moto_server on 127.0.0.1) through the sync \
         engine before the cases ({:.1} s). Four cases, a gateway each (store on S3, scheduled \
         sweep off), on the same tenants in this order: 1. every workspace on local disk and \
         current (the start lists the tenant's snapshots and has nothing to restore); 2. every \
         tenant's local directory (workspace and sync state) deleted first, so each start \
         restores the whole workspace from S3; 3. as 1 with the warm pool (`[runtime] pool = \
         {pool}`), on the copies case 2 restored; 4. as 2 with the pool. In each case, one \
         untimed warm-up start (the gateway's first), then {n} tenants one after another, each \
         one's first request (`POST /echo`) timed by the client; phases from the gateway's \
         `Server-Timing`; with the pool, each start begins once `/readyz` shows the pool full \
         again{}. Every start was checked: a local workspace kept (the same directory), a \
         restored one complete.{} p99 is nearest-rank: of {n} samples, {}.\n",
        run.tenants,
        WORKSPACE.describe(),
        run.seeded.as_secs_f64(),
        match run.pause.is_zero() {
            true => String::new(),
            false => format!(", then {} ms of quiet", run.pause.as_millis()),
        },
        match run.single_writer {
            true =>
                " The gateways ran with `[sync] single_writer = true`: a start from a \
                     local copy does not list the store.",
            false => "",
        },
        p99_rank(n)
    );

    println!(
        "| case | total p50 (ms) | total p99 (ms) | total mean (ms) | restore p50 (ms) | create p50 (ms) | boot p50 (ms) | rest p50 (ms) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for c in &run.cases {
        println!(
            "| {} | **{}** | **{}** | {} | {} | {} | {} | {} |",
            case_name(c),
            ms(c.total.percentile(0.5)),
            ms(c.total.percentile(0.99)),
            ms(c.total.mean()),
            ms(c.restore.percentile(0.5)),
            ms(c.create.percentile(0.5)),
            ms(c.boot.percentile(0.5)),
            ms(c.rest.percentile(0.5)),
        );
    }
    println!();

    println!(
        "| goal (DESIGN.md) | {} |",
        run.cases
            .iter()
            .map(case_name)
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---|".repeat(run.cases.len()));
    let row = |name: &str, cell: &dyn Fn(&Case) -> String| {
        let cells: Vec<String> = run.cases.iter().map(cell).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    let judged = |v: Duration, goal: Duration| format!("{} ms: {}", ms(v), verdict(v, goal));
    row(
        &format!("platform overhead p50 ≤ {} ms", COLD_P50_GOAL.as_millis()),
        &|c| judged(c.total.percentile(0.5), COLD_P50_GOAL),
    );
    row(
        &format!("platform overhead p99 ≤ {} ms", COLD_P99_GOAL.as_millis()),
        &|c| judged(c.total.percentile(0.99), COLD_P99_GOAL),
    );
    row(
        &format!(
            "pool claim (the create phase) p50 ≤ {} ms",
            POOL_CLAIM_GOAL.as_millis()
        ),
        &|c| match c.pool {
            0 => "— (no pool)".into(),
            _ => judged(c.create.percentile(0.5), POOL_CLAIM_GOAL),
        },
    );
    println!();

    println!("Anchors: published figures DESIGN.md quotes, not measured in this run.\n");
    let [low, high] = ORIGINAL_COLD_START;
    for c in &run.cases {
        let p50 = c.total.percentile(0.5);
        println!(
            "- the original's cold start, {}-{} s; case {}, p50 {} ms: {} to {} shorter",
            low.as_secs(),
            high.as_secs(),
            c.number,
            ms(p50),
            times(low, p50),
            times(high, p50)
        );
    }
    let [low, high] = E2B_CREATE;
    for c in &run.cases {
        let p50 = c.total.percentile(0.5);
        println!(
            "- E2B's sandbox create, {}-{} ms; case {}'s whole start, p50 {} ms: {} to {} of it",
            low.as_millis(),
            high.as_millis(),
            c.number,
            ms(p50),
            times(p50, low),
            times(p50, high)
        );
    }
    for c in run.cases.iter().filter(|c| c.pool > 0) {
        let (claim, p50) = (c.create.percentile(0.5), c.total.percentile(0.5));
        println!(
            "- agent-sandbox's warm-pool claim, p50 {} ms; case {}: the claim (create) p50 {} ms, {} of it; the whole start p50 {} ms, {} of it",
            AGENT_SANDBOX_CLAIM_P50.as_millis(),
            c.number,
            ms(claim),
            times(claim, AGENT_SANDBOX_CLAIM_P50),
            ms(p50),
            times(p50, AGENT_SANDBOX_CLAIM_P50)
        );
    }
    println!();

    for c in &run.cases {
        println!("### {}\n", case_name(c));
        let restore = match (c.from_store, run.single_writer) {
            (true, _) => "restore (list the snapshots, fetch and write the workspace)",
            (false, false) => "restore (list the snapshots: the local copy is current)",
            (false, true) => "restore (none: the local copy is current, the store not asked)",
        };
        let create = if c.pool > 0 {
            "create (claim a pooled sandbox, bind the workspace)"
        } else {
            "create (spawn the sandbox)"
        };
        phase_table(
            &[
                ("admission (a slot)", &c.admission),
                (restore, &c.restore),
                (create, &c.create),
                ("boot (until the agent's /healthz answers)", &c.boot),
                ("proxy + first byte (the rest)", &c.rest),
            ],
            &c.total,
        );
        println!("- {}", overhead_goal(&c.total));
        println!(
            "- each start less its restore phase (as if the store answered at once): p50 {} ms, \
             p99 {} ms",
            ms(c.without_restore.percentile(0.5)),
            ms(c.without_restore.percentile(0.99))
        );
        if c.pool > 0 {
            println!(
                "- pool claim (the create phase) p50 ≤ {} ms: {} ({} ms)",
                POOL_CLAIM_GOAL.as_millis(),
                verdict(c.create.percentile(0.5), POOL_CLAIM_GOAL),
                ms(c.create.percentile(0.5))
            );
            println!(
                "- the pool full again (`/readyz`, polled every few ms): {} ms p50, {} ms p99 after \
                 the answer; counted from the claim (+ boot + the rest): {} ms p50, {} ms p99",
                ms(c.refill_after_answer.percentile(0.5)),
                ms(c.refill_after_answer.percentile(0.99)),
                ms(c.refill_after_claim.percentile(0.5)),
                ms(c.refill_after_claim.percentile(0.99))
            );
        }
        println!(
            "- the warm-up start (the gateway's first, not in the figures): {} ms",
            ms(c.warm_up)
        );
        let m = &c.metrics;
        let counts: Vec<String> = METRIC_PHASES
            .iter()
            .zip(&m.phases)
            .map(|(phase, (count, _))| format!("{phase} {count}"))
            .collect();
        let sums = [
            c.phase_sums.admission,
            c.phase_sums.restore,
            c.phase_sums.create,
            c.phase_sums.boot,
        ];
        let sums: Vec<String> = METRIC_PHASES
            .iter()
            .zip(&m.phases)
            .zip(sums)
            .map(|((phase, (_, sum)), timed)| {
                format!(
                    "{phase} {:.3} s ({:.3} s)",
                    sum.as_secs_f64(),
                    timed.as_secs_f64()
                )
            })
            .collect();
        println!(
            "- `/metrics`: `warren_starts_total` ready {}, failed {} ({} starts made, the warm-up's \
             included); `warren_start_phase_seconds` counts: {}; sums, against `Server-Timing`'s \
             in brackets: {}",
            m.ready,
            m.failed,
            c.starts,
            counts.join(", "),
            sums.join(", ")
        );
        println!(
            "- gateway stop (SIGINT: stopping every sandbox, each synced a last time): {} ms",
            ms(c.stopped.took)
        );
        println!(
            "- snapshots the gateway added to the store (its stop included): {}",
            c.snapshots_added
        );
        stopped(&c.stopped);
        println!();
    }
}

/// What the gateway left: processes, and its log (quoted, a few lines).
fn stopped(s: &GatewayStopped) {
    println!(
        "- sandbox processes left behind after the gateway exited: {}",
        s.leaked
    );
    println!(
        "- lines the gateway logged (level warn): {}",
        s.log_lines.len()
    );
    for line in s.log_lines.iter().take(5) {
        println!("  - `{}`", plain(line).replace('`', "'"));
    }
}

/// `line` without ANSI colour sequences (`ESC [ ... m`).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn value(v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

fn ratio(warren: Option<f64>, other: Option<f64>) -> String {
    match (warren, other) {
        (Some(w), Some(o)) if o > 0.0 => format!("{:.2}x", w / o),
        _ => "—".into(),
    }
}

pub fn proxy(run: &ProxyRun, s: &Settings) {
    println!("## Proxy overhead: direct, warren and nginx side by side\n");
    println!(
        "The same echo agent: direct, through warren (the gateway's own sandbox) and through \
         nginx (upstream keep-alive). {} interleaved rounds; per target and round, latency: {} \
         round trips one at a time on one keep-alive connection (`POST /echo`) or one \
         WebSocket; throughput: {} connections, each doing request/response for {} s. \
         Bodies and messages of {} bytes. The client, the proxy and the agent share the \
         machine's cores. Proxy CPU: user + system time of the gateway process (not its \
         sandboxes) or of nginx's master and workers, per round trip.\n",
        s.rounds,
        s.requests,
        s.connections,
        s.duration.as_secs_f64(),
        s.body_bytes
    );
    println!(
        "| metric | {} | {} | {} | warren / direct | warren / nginx |",
        TARGETS[0], TARGETS[1], TARGETS[2]
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for row in &run.rows {
        let better = if row.lower_is_better {
            "lower is better"
        } else {
            "higher is better"
        };
        println!(
            "| {} ({better}) | {} | {} | {} | {} | {} |",
            row.metric,
            value(row.values[0]),
            value(row.values[1]),
            value(row.values[2]),
            ratio(row.values[1], row.values[0]),
            ratio(row.values[1], row.values[2]),
        );
    }
    println!();
    for row in run.rows.iter().filter(|r| r.metric.contains("throughput")) {
        if let (Some(w), Some(n)) = (row.values[1], row.values[2]) {
            let verdict = if w >= n { "met" } else { "NOT met" };
            println!(
                "- goal (DESIGN.md): {} ≥ nginx: {verdict} (warren {:.2}x nginx)",
                row.metric,
                w / n
            );
        }
    }
    stopped(&run.stopped);
    println!();
}

/// The store goals of DESIGN.md ("Numbers to beat").
const CHANGE_GOAL_BYTES: u64 = 64 * 1024;
const RPO_GOAL: Duration = Duration::from_secs(1);

/// The median and the largest of some values.
fn median_max<T: Copy + Ord>(values: impl Iterator<Item = T>) -> Option<(T, T)> {
    let mut v: Vec<T> = values.collect();
    v.sort_unstable();
    Some((*v.get((v.len().max(1) - 1) / 2)?, *v.last()?))
}

fn mb_per_s(bytes: u64, time: Duration) -> String {
    format!(
        "{:.1}",
        bytes as f64 / 1e6 / time.as_secs_f64().max(f64::MIN_POSITIVE)
    )
}

pub fn store(run: &StoreRun, s: &store::Settings) {
    println!("## Store: a 4 KB change in a large workspace\n");
    let versions: Vec<String> = run
        .versions
        .iter()
        .map(|(tool, v)| format!("{tool}: `{v}`"))
        .collect();
    println!(
        "Workspaces of random bytes on {}. Each tool first copies the workspace whole; \
         then, {} times, {} bytes of one file are overwritten and each tool catches up: \
         warren's sync engine (the library, no sandbox to freeze) into a local-directory \
         store, rsync into a local directory, restic into a local repository. Same tree, \
         same change, same run. {}.\n",
        run.filesystem,
        s.rounds,
        store::CHANGE_BYTES,
        versions.join(", ")
    );
    for change in &run.changes {
        change_table(change, s.rounds);
    }
    println!("## Store: full restore of the large workspace\n");
    println!(
        "{}: `SyncEngine::prepare` of the tenant on an empty data dir (list, read the \
         newest snapshot, fetch and check every chunk, write the files, swap the directory \
         in), after a first sync of the workspace to that store. Upload concurrency and \
         retention on their defaults. MB = 10^6 bytes.\n",
        s.workspace.describe()
    );
    println!(
        "| store | restored | restore (ms) | restore (MB/s) | first sync (ms) | first sync (MB/s) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &run.restores {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.store,
            store::human(r.bytes),
            ms(r.time),
            mb_per_s(r.bytes, r.time),
            ms(r.upload),
            mb_per_s(r.bytes, r.upload)
        );
    }
    println!();

    let w = &run.sweep;
    println!("## Store: a sweep of {} tenants\n", w.tenants);
    println!(
        "{} tenants, each a workspace of 3 small files (20.5 KiB) on this machine, in a \
         local-directory store; `SyncEngine::sweep` with the default concurrency ({}) and \
         retention (applied to each tenant after its sync). The first sweep makes every \
         tenant's first snapshot; then 256 bytes are appended to one file of each, and \
         the second sweep is the one that counts.\n",
        w.tenants, w.concurrency
    );
    println!("| sweep | snapshots | uploaded | time (ms) | tenants/s |");
    println!("|---|---:|---:|---:|---:|");
    for (name, (time, report)) in [
        ("first (every tenant new)", &w.first),
        ("**one change in each tenant**", &w.changed),
    ] {
        println!(
            "| {name} | {} | {} | {} | {:.0} |",
            report.snapshots_created,
            store::human(report.bytes_uploaded),
            ms(*time),
            report.tenants as f64 / time.as_secs_f64().max(f64::MIN_POSITIVE)
        );
    }
    println!();
}

fn change_table(run: &ChangeRun, rounds: usize) {
    let what = if run.shape.files == 1 {
        "1 MiB further on each round"
    } else {
        "in the middle of a different file each round"
    };
    println!("### {}, 4 KB changed {what}\n", run.shape.describe());
    println!(
        "| tool | bytes counted | for the change: median | max | time median (ms) | \
         time max (ms) | last round |"
    );
    println!("|---|---|---:|---:|---:|---:|---|");
    for c in &run.contenders {
        let (Some((bytes, bytes_max)), Some((time, time_max))) = (
            median_max(c.changes.iter().map(|t| t.bytes)),
            median_max(c.changes.iter().map(|t| t.time)),
        ) else {
            continue;
        };
        let note = c.changes.last().map_or("", |t| t.note.as_str());
        println!(
            "| {} | {} | {} | {} | {} | {} | {note} |",
            c.name,
            c.figure,
            store::human(bytes),
            store::human(bytes_max),
            ms(time),
            ms(time_max)
        );
    }
    println!();
    if let Some((_, worst)) = run
        .contenders
        .first()
        .and_then(|w| median_max(w.changes.iter().map(|t| t.bytes)))
    {
        let verdict = if worst <= CHANGE_GOAL_BYTES {
            "met"
        } else {
            "NOT met"
        };
        println!(
            "- goal (DESIGN.md): ≤ 64 KiB uploaded for a 4 KB change: {verdict} (warren, worst \
             of {rounds} rounds: {})\n",
            store::human(worst)
        );
    }
    println!("The first, full copy, for context:\n");
    println!("| tool | bytes counted | time (ms) | notes |");
    println!("|---|---:|---:|---|");
    for c in &run.contenders {
        println!(
            "| {} | {} | {} | {} |",
            c.name,
            store::human(c.initial.bytes),
            ms(c.initial.time),
            c.initial.note
        );
    }
    println!();
}

pub fn rpo(run: &Rpo) {
    println!("## Store: RPO under a steady writer\n");
    println!(
        "A real gateway (local-directory store, `[sync]` on its defaults: debounce 200 ms, \
         max_delay 500 ms) and one user whose echo agent gets a WebSocket message every {} ms, \
         {} messages. The agent appends each message to its history file before echoing \
         it, so an echo is an acknowledged write. Afterwards every snapshot is read from \
         the store, history file included, so it is known exactly which messages each \
         holds. RPO of a message = `created_ms` of the first snapshot holding it (records \
         are written after their chunks) − the wall-clock time the client read its echo. \
         Same machine, same clock.\n",
        run.interval.as_millis(),
        run.messages
    );
    let d = &run.delays;
    println!(
        "| messages | snapshots while writing | RPO p50 (ms) | p99 (ms) | max (ms) | mean (ms) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {} | {} |\n",
        run.messages,
        run.snapshots,
        ms(d.percentile(0.5)),
        ms(d.percentile(0.99)),
        ms(d.percentile(1.0)),
        ms(d.mean())
    );
    let verdict = |v: Duration| if v <= RPO_GOAL { "met" } else { "NOT met" };
    let (p99, max) = (d.percentile(0.99), d.percentile(1.0));
    println!(
        "- goal (DESIGN.md): RPO ≤ 1 s: p99 {} ({} ms); every message {} (worst {} ms)",
        verdict(p99),
        ms(p99),
        verdict(max),
        ms(max)
    );
    if run.before_ack > 0 {
        println!(
            "- {} messages were in a snapshot created before the client read their echo \
             (counted as 0 ms)",
            run.before_ack
        );
    }
    stopped(&run.stopped);
    println!();
}

pub fn runtimes(run: &Runtimes, s: &runtimes::Settings) {
    let [process, docker] = &run.runs[..] else {
        return;
    };
    let k = s.sandboxes;
    println!("## Runtimes: process and docker side by side\n");
    println!(
        "The echo agent behind a real gateway on each runtime, measured the same way in the \
         same run: `process` (bubblewrap namespaces and a cgroup per sandbox; the default) \
         and `docker` (a container per sandbox through Podman's Docker-compatible API: runc, \
         an init, network `none`, the same cgroup limits; image `{}`, {}). \
         **Start to ready**: {} new tenants one after another (after one untimed warm-up \
         start), each one's first request (`POST /echo`) timed by the client; create and \
         boot are the gateway's `Server-Timing` phases. **Stop of one idle sandbox**: {} new \
         tenants at `max_instances = 1`, each one's first request first evicting the \
         previous tenant's sandbox, left quiet for {} s before (no sync pending); the time \
         is the gateway's `admission` phase: the gateway's and the runtime's stop (SIGTERM \
         through the sandbox's init, its exit, and for a container the engine's cleanup and \
         removal) until the slot is free; the final sync comes after it. **Gateway stop**: SIGINT to exit with the {k} idle sandboxes, which it \
         stops all at once: divided by {k} it is a rate, not one sandbox's stop. \
         **Memory**: the {k} sandboxes after {} s idle, summed over all and divided by {k}; \
         the gateway and Podman's service are not in it. p99 is nearest-rank: of fewer \
         than 100 samples, the slowest.\n",
        run.image,
        run.image_id,
        process.starts.len(),
        s.stops,
        runtimes::QUIET.as_secs(),
        runtimes::SETTLE.as_secs()
    );
    println!("| figure | process | docker | docker / process |");
    println!("|---|---:|---:|---:|");
    let ms_of = |d: Duration| Some(d.as_secs_f64() * 1000.0);
    let each =
        |kib: u64, m: &runtimes::Memory| Some(kib as f64 / 1024.0 / m.sandboxes.max(1) as f64);
    let cgroup = |m: &runtimes::Memory| {
        m.cgroup_bytes
            .map(|b| b as f64 / (1 << 20) as f64 / m.sandboxes.max(1) as f64)
    };
    let per_sandbox = |r: &runtimes::RuntimeRun| {
        Some(r.shutdown.as_secs_f64() * 1000.0 / r.memory.sandboxes.max(1) as f64)
    };
    let rows: Vec<(String, Option<f64>, Option<f64>)> = vec![
        (
            "start to ready p50 (ms)".into(),
            ms_of(process.starts.percentile(0.5)),
            ms_of(docker.starts.percentile(0.5)),
        ),
        (
            "start to ready p99 (ms)".into(),
            ms_of(process.starts.percentile(0.99)),
            ms_of(docker.starts.percentile(0.99)),
        ),
        (
            "… create (the runtime makes the sandbox) p50 (ms)".into(),
            ms_of(process.create.percentile(0.5)),
            ms_of(docker.create.percentile(0.5)),
        ),
        (
            "… boot (until the agent's /healthz answers) p50 (ms)".into(),
            ms_of(process.boot.percentile(0.5)),
            ms_of(docker.boot.percentile(0.5)),
        ),
        (
            "stop of one idle sandbox p50 (ms)".into(),
            ms_of(process.stops.percentile(0.5)),
            ms_of(docker.stops.percentile(0.5)),
        ),
        (
            "stop of one idle sandbox p99 (ms)".into(),
            ms_of(process.stops.percentile(0.99)),
            ms_of(docker.stops.percentile(0.99)),
        ),
        (
            format!("gateway stop with {k} idle sandboxes (ms)"),
            ms_of(process.shutdown),
            ms_of(docker.shutdown),
        ),
        (
            format!("… divided by {k} (ms)"),
            per_sandbox(process),
            per_sandbox(docker),
        ),
        (
            "memory per idle sandbox: RSS, all its processes (MiB)".into(),
            each(
                process.memory.rss_kib + process.memory.monitor_rss_kib,
                &process.memory,
            ),
            each(
                docker.memory.rss_kib + docker.memory.monitor_rss_kib,
                &docker.memory,
            ),
        ),
        (
            "… the sandbox's own processes (MiB)".into(),
            each(process.memory.rss_kib, &process.memory),
            each(docker.memory.rss_kib, &docker.memory),
        ),
        (
            "… conmon (MiB)".into(),
            None,
            each(docker.memory.monitor_rss_kib, &docker.memory),
        ),
        (
            "memory per idle sandbox: PSS, all its processes (MiB)".into(),
            each(
                process.memory.pss_kib + process.memory.monitor_pss_kib,
                &process.memory,
            ),
            each(
                docker.memory.pss_kib + docker.memory.monitor_pss_kib,
                &docker.memory,
            ),
        ),
        (
            "… conmon (MiB)".into(),
            None,
            each(docker.memory.monitor_pss_kib, &docker.memory),
        ),
        (
            "memory per idle sandbox: charged to its cgroup (MiB)".into(),
            cgroup(&process.memory),
            cgroup(&docker.memory),
        ),
    ];
    for (name, p, d) in rows {
        let cell = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.2}"));
        println!("| {name} | {} | {} | {} |", cell(p), cell(d), ratio(d, p));
    }
    println!();
    let count = |m: &runtimes::Memory| {
        let own = m.processes as f64 / m.sandboxes.max(1) as f64;
        if m.monitors > 0 {
            format!(
                "{own:.0} + {:.0} conmon",
                m.monitors as f64 / m.sandboxes as f64
            )
        } else {
            format!("{own:.0}")
        }
    };
    println!(
        "- counted for a process sandbox ({} processes each): bubblewrap, its init and the \
         echo agent, i.e. the processes working under the gateway's data dir, one process \
         group per sandbox",
        count(&process.memory)
    );
    println!(
        "- counted for a docker sandbox ({} processes each): the container's init and the \
         echo agent (the init's process tree, from the `State.Pid` Podman reports) and its \
         conmon (from `State.ConmonPid`, checked to name the container on its command \
         line; it runs outside the container, a child of PID 1)",
        count(&docker.memory)
    );
    println!(
        "- RSS counts each process's resident pages, shared ones (the warren binary's code, \
         libraries) in full in every process; PSS divides each shared page among the \
         processes mapping it, so it is what the sandboxes hold together. A process sandbox \
         runs the host's warren binary, shared with the gateway; a container runs the \
         image's copy, shared among containers"
    );
    println!(
        "- charged to its cgroup: `memory.usage_in_bytes` (`memory.current` on cgroup v2) \
         of the sandbox's `warren/<sandbox>` cgroup: anonymous memory, page cache the \
         sandbox read first, kernel memory; a container's conmon is in a child of it"
    );
    if let Some(e) = &docker.engine {
        println!(
            "- Podman's API service (one for all containers, not in the figures above): RSS \
             {} before the first docker gateway, {} with its {k} containers running, {} once \
             it had stopped and removed them (a Go heap: what it keeps after is not per \
             container)",
            mib(e.before_kib),
            mib(e.running_kib),
            mib(e.after_kib)
        );
    }
    let tens = |r: &runtimes::RuntimeRun| {
        let n = r.starts_in_order.len();
        let ten = n.min(10);
        let median = |d: &[Duration]| Samples::new(d.to_vec()).percentile(0.5);
        (
            ten,
            median(&r.starts_in_order[..ten]),
            median(&r.starts_in_order[n - ten..]),
        )
    };
    let ((ten, p_first, p_last), (_, d_first, d_last)) = (tens(process), tens(docker));
    println!(
        "- start to ready as sandboxes accumulate, median of the first {ten} timed starts \
         (1 to {ten} sandboxes already running) and of the last {ten} ({} to {}): process \
         {} → {} ms, docker {} → {} ms",
        k - ten,
        k - 1,
        ms(p_first),
        ms(p_last),
        ms(d_first),
        ms(d_last)
    );
    println!(
        "- the warm-up start (the first of a fresh gateway, and for docker of a fresh \
         Podman service; not in the percentiles): process {} ms, docker {} ms",
        ms(process.first_start),
        ms(docker.first_start)
    );
    println!(
        "- gateway RSS with {k} idle sandboxes (not in the figures above): process {}, \
         docker {}",
        mib(process.memory.gateway_rss_kib),
        mib(docker.memory.gateway_rss_kib)
    );
    for r in [process, docker] {
        println!(
            "- {}: sandbox processes left behind after its gateways exited: {}; containers: \
             {}; lines the gateways logged (level warn): {}",
            r.kind.name(),
            r.leaked_processes,
            r.leaked_containers,
            r.log_lines.len()
        );
        for line in r.log_lines.iter().take(5) {
            println!("  - `{}`", plain(line).replace('`', "'"));
        }
    }
    if run.image_stale {
        println!(
            "- **the image is older than the warren binary measured**: its agent may be \
             older code (rebuild it with `scripts/build-image`)"
        );
    }
    println!();
}

/// `p50 / p99 / max` of some timings, in ms.
fn spread(s: &Samples) -> String {
    if s.len() == 0 {
        return "—".into();
    }
    format!(
        "{} / {} / {}",
        ms(s.percentile(0.5)),
        ms(s.percentile(0.99)),
        ms(s.percentile(1.0))
    )
}

/// The HTTP rows of an upgrade or a restart, one column per phase.
fn http_phases(run: [(&str, &[upgrade::HttpCount; 3]); 2]) {
    println!(
        "| HTTP `GET /api/history` | {} | {} | {} |",
        upgrade::PHASES[0],
        upgrade::PHASES[1],
        upgrade::PHASES[2]
    );
    println!("|---|---:|---:|---:|");
    for (kind, counts) in run {
        let row = |name: &str, cell: &dyn Fn(&upgrade::HttpCount) -> String| {
            let cells: Vec<String> = counts.iter().map(cell).collect();
            println!("| {kind}: {name} | {} |", cells.join(" | "));
        };
        row("requests", &|c| c.requests.to_string());
        row("**failed** (not 200, refused, reset)", &|c| {
            format!("**{}**", c.failed())
        });
        row("… refused", &|c| c.refused.to_string());
        if kind.starts_with("kept") {
            row(
                "… then 200 when tried once more on a new connection",
                &|c| c.retried_ok.to_string(),
            );
            row(
                "sent on a new connection: the kept one closed by the server while idle (not failures)",
                &|c| c.reopened.to_string(),
            );
        }
        row("latency p50 / p99 / max (ms)", &|c| spread(&c.latency));
    }
    println!();
    for (kind, counts) in run {
        for (phase, count) in upgrade::PHASES.iter().zip(counts) {
            for example in &count.examples {
                println!(
                    "- failed ({kind}, {phase}): `{}`",
                    plain(example).replace('`', "'")
                );
            }
        }
    }
    println!();
}

/// The WebSocket rows of an upgrade or a restart.
fn ws_rows(ws: &upgrade::WsSummary) {
    println!("| WebSockets ({} clients) | |", ws.clients);
    println!("|---|---:|");
    println!(
        "| messages sent / acknowledged (echo received) | {} / {} |",
        ws.sent, ws.acknowledged
    );
    println!(
        "| **lost**: acknowledged, then missing from the history | **{}** |",
        ws.lost
    );
    println!(
        "| sent, no echo (the connection closed first): in all / in the history after / not, so sent again | {} / {} / {} |",
        ws.unacknowledged, ws.unacknowledged_kept, ws.resent
    );
    println!(
        "| **sent and in no history at the end** | **{}** |",
        ws.never_kept
    );
    println!("| held twice in the history | {} |", ws.duplicated);
    let others = if ws.other_ends.is_empty() {
        String::new()
    } else {
        format!(" ({})", ws.other_ends.join("; ").replace('|', "/"))
    };
    println!(
        "| connections that ended: closed with 1012 / otherwise | {} / {}{others} |",
        ws.closed_1012, ws.closed_otherwise
    );
    println!(
        "| reconnect, close → first echo on the new connection: p50 / p99 / max (ms) | {} |",
        spread(&ws.reconnect)
    );
    println!(
        "| … of which backoff pauses: p50 / p99 / max (ms) | {} |",
        spread(&ws.paused)
    );
    println!(
        "| reconnect tries that failed / of them refused | {} / {} |",
        ws.failed_tries, ws.refused
    );
    println!(
        "| history reloads that checked every acknowledged message | {} |",
        ws.history_checks
    );
    println!();
}

fn log_lines(name: &str, lines: &[String]) {
    println!("- lines {name} logged (level warn): {}", lines.len());
    for line in lines.iter().take(5) {
        println!("  - `{}`", plain(line).replace('`', "'"));
    }
}

pub fn upgrade(run: &UpgradeRun, s: &upgrade::Settings) {
    let drain = upgrade::DRAIN_TIMEOUT.as_secs_f64();
    let phase = upgrade::PHASE.as_secs_f64();
    println!("## Upgrades and restarts\n");
    println!(
        "Each measurement runs its own gateway (echo agent, process runtime, \
         `drain_timeout = \"{drain}s\"`) and ends it with SIGINT, which stops every sandbox. \
         WebSocket clients: one per tenant, a text message every {} ms, each awaiting its \
         echo; when the connection ends the client reconnects with `warren chat`'s backoff \
         (a pause drawn evenly from 0 to 250 ms, doubling after each failed try, 10 s at \
         most), reloads `/api/history` with the same credentials, checks that every \
         acknowledged message is there and sends the next one at once. HTTP loops: \
         {} loops each on a new connection per request (`Connection: close`, as a fresh \
         client) and 1 on a kept-alive connection, each a `GET /api/history` of one \
         tenant every {} ms (1 ms after a failure). A sandbox is *restarted* if the \
         state store names another process for its tenant afterwards or the process it \
         named is gone (pid and start time). p99 is nearest-rank: of fewer than 100 \
         samples, the slowest.\n",
        s.interval.as_millis(),
        upgrade::NEW_CONNECTION_LOOPS,
        upgrade::clients::HTTP_INTERVAL.as_millis()
    );

    let u = &run.under_load;
    println!("### Upgrade under load: `warren serve --takeover`\n");
    println!(
        "{} tenants with a WebSocket, and the HTTP loops; after {phase} s, \
         `warren serve --takeover --config C --data-dir D` replaces the gateway, {} times \
         in a row, {phase} s apart. *During* is from the successor's spawn until the old \
         gateway has exited (it relays its open WebSockets until the drain deadline, then \
         closes them with 1012); *after* is every other moment after the first takeover.\n",
        s.clients,
        u.takeovers.len()
    );
    http_phases([
        ("new connection", &u.new_connection),
        ("kept alive", &u.keep_alive),
    ]);
    ws_rows(&u.ws);
    println!(
        "| takeover | successor: spawn → `warren listening` (ms) | spawn → old gateway exited (ms) |"
    );
    println!("|---:|---:|---:|");
    for (i, t) in u.takeovers.iter().enumerate() {
        println!(
            "| {} | {} | {} |",
            i + 1,
            ms(t.ready_after),
            ms(t.old_exited_after)
        );
    }
    println!();
    let failed_new: usize = u.new_connection.iter().map(|c| c.failed()).sum();
    let failed_kept: usize = u.keep_alive.iter().map(|c| c.failed()).sum();
    let kept_after_retry: usize = u.keep_alive.iter().map(|c| c.failed() - c.retried_ok).sum();
    let refused: usize = u
        .new_connection
        .iter()
        .chain(&u.keep_alive)
        .map(|c| c.refused)
        .sum::<usize>()
        + u.ws.refused as usize;
    let met = failed_new + failed_kept == 0 && u.ws.lost + u.ws.never_kept == 0;
    println!(
        "- goal (DESIGN.md): 0 failed requests and 0 lost messages during a deploy: {} \
         (failed requests: {failed_new} on new connections, {failed_kept} on kept-alive ones, \
         {kept_after_retry} of them still failing when tried once more; acknowledged \
         messages lost: {}; messages sent and in no history at the end: {}; messages the \
         old gateway dropped at its 1012 close, sent again: {})",
        if met { "met" } else { "NOT met" },
        u.ws.lost,
        u.ws.never_kept,
        u.ws.resent
    );
    println!("- connections refused, in all (HTTP and WebSocket reconnects): {refused}");
    println!(
        "- sandboxes restarted: {} of {} (every tenant's, compared before the first takeover \
         and after the last)",
        u.sandboxes.restarted, u.sandboxes.before
    );
    log_lines("the old gateways", &u.old_logs);
    stopped(&u.stopped);
    println!();

    let c = &run.crash;
    println!("### Re-adoption after a crash (SIGKILL)\n");
    println!(
        "{} tenants, one request each (`POST /echo`), so {} sandboxes run; the gateway gets \
         SIGKILL, and a new `warren serve` starts at once on the same address, config and \
         data dir. It takes back every running sandbox before it prints `warren \
         listening`; then every tenant sends `POST /echo` at once, on a new connection, \
         tried again every 5 ms until answered.\n",
        c.sandboxes.before, c.sandboxes.before
    );
    println!("| figure | value |\n|---|---:|");
    println!(
        "| sandboxes running while no gateway ran | {} |",
        c.running_without_gateway
    );
    println!(
        "| new gateway: spawn → `warren listening`, all taken back (ms) | {} |",
        ms(c.ready_after)
    );
    println!(
        "| … a fresh gateway with nothing to take back, for comparison (ms) | {} |",
        ms(c.fresh_ready)
    );
    println!(
        "| spawn → first answer of each tenant: p50 / p99 / max (ms) | {} |",
        spread(&c.answered)
    );
    println!(
        "| tries that failed before the answer | {} |",
        c.failed_tries
    );
    println!(
        "| answers that waited for their sandbox to be taken back (`Server-Timing`, every phase 0) | {} |",
        c.waited_for_adoption
    );
    println!(
        "| answers that started a new sandbox (`Server-Timing` with a create phase) | {} |",
        c.started
    );
    println!(
        "| **sandboxes restarted** | **{} of {}** |\n",
        c.sandboxes.restarted, c.sandboxes.before
    );
    stopped(&c.stopped);
    println!();

    let r = &run.restart;
    println!(
        "### Reconnect after a plain restart (SIGTERM, then a new gateway on the same port)\n"
    );
    println!(
        "{} tenants with a WebSocket, and the HTTP loops; after {phase} s the gateway gets \
         SIGTERM (it syncs every running sandbox once more, closes its port, closes the \
         WebSockets with 1012, exits, leaving the sandboxes running) and, once it has \
         exited, a new `warren serve` starts on the same address, as a service manager's \
         restart would. *During* is from the SIGTERM to the new gateway's `warren \
         listening`.\n",
        s.clients
    );
    println!("| figure | value |\n|---|---:|");
    println!("| old gateway: SIGTERM → exit (ms) | {} |", ms(r.stop_took));
    println!(
        "| new gateway: spawn → `warren listening`, all taken back (ms) | {} |",
        ms(r.ready_after)
    );
    let span = |d: Option<Duration>| d.map_or("0 (none)".into(), ms);
    println!(
        "| **port closed**: first refused connection → end of the last (ms) | **{}** |",
        span(r.port_closed)
    );
    println!(
        "| HTTP requests failing: start of the first failure → end of the last (ms) | {} |",
        span(r.failing)
    );
    println!(
        "| **sandboxes restarted** | **{} of {}** |\n",
        r.sandboxes.restarted, r.sandboxes.before
    );
    http_phases([
        ("new connection", &r.new_connection),
        ("kept alive", &r.keep_alive),
    ]);
    ws_rows(&r.ws);
    log_lines("the old gateway", &r.old_log);
    stopped(&r.stopped);
    let [(before, before_z), (after, after_z)] = run.sandbox_user_processes;
    println!(
        "- processes of the sandboxes' user (uid {}) on the machine: {before} running and \
         {before_z} zombies before the scenario, {after} running and {after_z} zombies \
         right after its last gateway exited",
        upgrade::SANDBOX_UID
    );
    if after_z > before_z {
        match run.zombies_reaped_after {
            Some(d) => println!(
                "- those zombies (ended sandbox processes whose parent, the gateway that \
                 started them, had gone) were reaped by their new parent {} ms later",
                ms(d)
            ),
            None => println!(
                "- those zombies were still there {} s later",
                upgrade::REAP_DEADLINE.as_secs()
            ),
        }
    }
    println!();
}

pub const OPENCLAW_TITLE: &str = "OpenClaw: cold start to first reply, memory, pre-warm (issue 7)";

pub fn openclaw(run: &OpenclawRun, s: &openclaw::Settings) {
    let n = run.starts.len();
    let m = run.with_prewarm.len();
    let after = run.first_message_after.as_secs();
    println!("## {OPENCLAW_TITLE}\n");
    println!(
        "OpenClaw {} on Node {} as every tenant's agent (`[agent] kind = \"openclaw\"`, from \
         `{}`), in the process runtime's sandboxes (bubblewrap, network `none`); its model is \
         a provider of the benchmark's own on 127.0.0.1 (one streamed chunk, answered at \
         once), reached through the egress port. One sandbox runs at a time: after each user \
         the client closes its WebSocket and waits until the sandbox has gone to sleep \
         (`sleep_after = \"{}s\"`) and its processes are gone. **Cold start to first reply**: \
         {n} fresh tenants one after another, after one untimed warm-up start (the gateway's \
         first); each opens `/ws` with a signed URL (warren answers the upgrade once the \
         sandbox is ready, with the start's phases in `Server-Timing`), reads OpenClaw's \
         `connect.challenge`, sends a `connect` (warren puts the token in) and gets \
         `hello-ok`, sends `chat.send` and waits for the final `chat` event; the client's \
         clock stops while the sandbox's memory is read once ready; then a second turn, timed \
         apart. warren's share is admission + restore + create; boot is until OpenClaw's \
         `/readyz` answers. **Memory**: every process below the pid warren records for the \
         sandbox (bubblewrap's two, OpenClaw's gateway and its node workers), once ready and \
         after the first reply: RSS counts the pages they share (the node binary, libraries) \
         in each, PSS shares them out; the cgroup's charge includes the page cache it read. \
         **Pre-warm**: {m} fresh tenants with `POST /api/prewarm` (signed) at login and {m} \
         without, alternately; each one's first message {after} s after login, timed from \
         opening `/ws` to the reply.\n",
        run.openclaw_version,
        run.node_version,
        s.openclaw_dir.display(),
        run.sleep_after.as_secs(),
    );

    let column =
        |f: &dyn Fn(&FirstReply) -> Duration| Samples::new(run.starts.iter().map(f).collect());
    let total = column(&|c| c.total);
    let total_mean = total.mean().as_secs_f64().max(f64::MIN_POSITIVE);
    println!("| part of the first reply | p50 (ms) | max (ms) | mean (ms) | share of mean |");
    println!("|---|---:|---:|---:|---:|");
    let rows: [(&str, Samples); 8] = [
        (
            "warren: admission (a slot)",
            column(&|c| c.phases.admission),
        ),
        (
            "warren: restore (a new tenant: nothing to restore)",
            column(&|c| c.phases.restore),
        ),
        ("warren: create (the sandbox)", column(&|c| c.phases.create)),
        (
            "**warren's share** (admission + restore + create)",
            column(&|c| c.warren()),
        ),
        (
            "OpenClaw's boot (until its /readyz answers)",
            column(&|c| c.phases.boot),
        ),
        (
            "the upgrade's rest (warren's proxy to OpenClaw, the 101)",
            column(&|c| c.rest()),
        ),
        (
            "OpenClaw's handshake (challenge, connect, hello-ok)",
            column(&|c| c.handshake),
        ),
        (
            "the chat turn (chat.send to the final chat event)",
            column(&|c| c.chat),
        ),
    ];
    for (name, samples) in &rows {
        println!(
            "| {name} | {} | {} | {} | {:.1}% |",
            ms(samples.percentile(0.5)),
            ms(samples.percentile(1.0)),
            ms(samples.mean()),
            100.0 * samples.mean().as_secs_f64() / total_mean
        );
    }
    println!(
        "| **total (client: open `/ws` to the reply)** | **{}** | **{}** | {} | 100% |\n",
        ms(total.percentile(0.5)),
        ms(total.percentile(1.0)),
        ms(total.mean())
    );

    println!(
        "| start | total (s) | warren (ms) | boot (s) | handshake (ms) | chat (ms) | second chat (ms) | CPU once ready (s) | processes | RSS ready | PSS ready | RSS after reply | PSS after reply | cgroup after reply |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let warm_up = std::iter::once(("warm-up (not in the figures)".to_owned(), &run.warm_up));
    let timed = run
        .starts
        .iter()
        .enumerate()
        .map(|(i, c)| ((i + 1).to_string(), c));
    for (name, c) in warm_up.chain(timed) {
        println!(
            "| {name} | {:.2} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {} | {} | {} |",
            c.total.as_secs_f64(),
            ms(c.warren()),
            c.phases.boot.as_secs_f64(),
            c.handshake.as_secs_f64() * 1000.0,
            c.chat.as_secs_f64() * 1000.0,
            c.second_chat.as_secs_f64() * 1000.0,
            c.ready.cpu.as_secs_f64(),
            c.chatted.processes,
            mib(c.ready.rss_kib),
            mib(c.ready.pss_kib),
            mib(c.chatted.rss_kib),
            mib(c.chatted.pss_kib),
            c.chatted
                .cgroup_bytes
                .map_or("—".to_owned(), |b| mib(b / 1024)),
        );
    }
    println!();

    let kib = |f: &dyn Fn(&FirstReply) -> u64| {
        let mut v: Vec<u64> = run.starts.iter().map(f).collect();
        v.sort_unstable();
        (v[(v.len() - 1) / 2], v[v.len() - 1])
    };
    let (rss, rss_max) = kib(&|c| c.chatted.rss_kib);
    let (pss, pss_max) = kib(&|c| c.chatted.pss_kib);
    println!(
        "- memory of one tenant's sandbox after one chat turn: RSS {} median, {} max; PSS {} \
         median, {} max ({n} sandboxes, each measured alone)",
        mib(rss),
        mib(rss_max),
        mib(pss),
        mib(pss_max)
    );

    let second = column(&|c| c.second_chat);
    println!(
        "- a second chat turn on the same session, right after the first reply: p50 {} ms, max \
         {} ms (the first turn's: p50 {} ms)",
        ms(second.percentile(0.5)),
        ms(second.percentile(1.0)),
        ms(column(&|c| c.chat).percentile(0.5))
    );

    let without = Samples::new(run.without_prewarm.iter().map(|f| f.took).collect());
    let with = Samples::new(run.with_prewarm.iter().map(|f| f.took).collect());
    let waited = |v: &[FirstMessage]| v.iter().filter(|f| f.start.is_some()).count();
    let boot = |v: &[FirstMessage]| {
        let boots = Samples::new(v.iter().filter_map(|f| Some(f.start?.boot)).collect());
        match boots.len() {
            0 => "—".to_owned(),
            _ => ms(boots.percentile(0.5)),
        }
    };
    println!();
    println!(
        "| first message {after} s after login | users | p50 (ms) | max (ms) | upgrade waited for a start | their boot p50 (ms) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, samples, v) in [
        ("without pre-warm", &without, &run.without_prewarm),
        (
            "with `POST /api/prewarm` at login",
            &with,
            &run.with_prewarm,
        ),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} of {} | {} |",
            v.len(),
            ms(samples.percentile(0.5)),
            ms(samples.percentile(1.0)),
            waited(v),
            v.len(),
            boot(v)
        );
    }
    println!();
    if m > 0 {
        println!(
            "- with the pre-warm, the first reply takes {} of the time it takes without (p50: \
             {} against {} ms)",
            times(with.percentile(0.5), without.percentile(0.5)),
            ms(with.percentile(0.5)),
            ms(without.percentile(0.5))
        );
    }
    println!(
        "- the model provider served {} completions for {} chat turns",
        run.completions, run.chats
    );
    let starts = 1 + n + 2 * m;
    let metrics = &run.metrics;
    println!(
        "- `/metrics`: `warren_starts_total` ready {}, failed {} ({starts} starts made, the \
         warm-up's included)",
        metrics.ready, metrics.failed
    );
    println!(
        "- gateway stop (SIGINT, no sandbox running): {} ms; processes of the sandboxes still \
         running after it exited: {}",
        ms(run.stopped.took),
        run.left_behind
    );
    stopped(&run.stopped);
    println!();
}
