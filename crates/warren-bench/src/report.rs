//! The printed report: markdown tables a reader can paste into BENCHMARKS.md, each
//! with the goal from DESIGN.md it answers.

use std::path::Path;
use std::time::Duration;

use crate::cold_start::ColdStart;
use crate::launch::GatewayStopped;
use crate::load::Samples;
use crate::proxy::{ProxyRun, Settings, TARGETS};

/// The cold-start goals of DESIGN.md ("Numbers to beat").
const COLD_P50_GOAL: Duration = Duration::from_millis(50);
const COLD_P99_GOAL: Duration = Duration::from_millis(200);

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
    println!("| phase | mean (ms) | share of mean | p50 (ms) | p99 (ms) |");
    println!("|---|---:|---:|---:|---:|");
    let total_mean = run.total.mean().as_secs_f64().max(f64::MIN_POSITIVE);
    let phases: [(&str, &Samples); 4] = [
        (
            "admission (slot; at capacity, the eviction)",
            &run.admission,
        ),
        ("create (spawn the sandbox)", &run.create),
        ("boot (until the agent's /healthz answers)", &run.boot),
        ("proxy + first byte (the rest)", &run.rest),
    ];
    for (name, s) in phases {
        println!(
            "| {name} | {} | {:.1}% | {} | {} |",
            ms(s.mean()),
            100.0 * s.mean().as_secs_f64() / total_mean,
            ms(s.percentile(0.5)),
            ms(s.percentile(0.99))
        );
    }
    let (p50, p99) = (run.total.percentile(0.5), run.total.percentile(0.99));
    println!(
        "| **total (client wall time)** | **{}** | 100% | **{}** | **{}** |\n",
        ms(run.total.mean()),
        ms(p50),
        ms(p99)
    );
    let verdict = |v: Duration, goal: Duration| if v <= goal { "met" } else { "NOT met" };
    println!(
        "- goal (DESIGN.md, platform overhead): p50 ≤ {} ms: {} ({} ms); p99 ≤ {} ms: {} ({} ms)",
        COLD_P50_GOAL.as_millis(),
        verdict(p50, COLD_P50_GOAL),
        ms(p50),
        COLD_P99_GOAL.as_millis(),
        verdict(p99, COLD_P99_GOAL),
        ms(p99)
    );
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
        "- gateway stop (SIGTERM to exit, stopping every sandbox): {} ms",
        ms(run.stopped.took)
    );
    stopped(&run.stopped);
    println!();
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
