//! `warren audit`: a scalability audit of the running deployment, in the shape of the
//! audit warren was built from (configuration, capacity, findings, cost projections),
//! but from live figures: the gateway's tenants, events and metrics, this machine's
//! memory, and the price table of the config. Markdown, or JSON with `--json`.

use http::Method;
use serde::Serialize;
use serde_json::Value;
use warren_core::config::{Config, INSTANCE_TYPES, InstanceSize};
use warren_core::duration::SleepAfter;

use warren_core::human;

use crate::admin_api::{Target, block_on, call};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON instead of Markdown.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

/// Events read to measure usage (newest first): a window of recent activity.
const EVENTS: usize = 10_000;
/// Tenants whose snapshots are read to size the store per tenant.
const SIZED_TENANTS: usize = 50;
/// The shortest event window whose usage is taken as measured.
const MIN_WINDOW_MS: u64 = 3_600_000;
/// Seconds in the month of the cost projections (30 days).
const MONTH_SECS: f64 = 30.0 * 86_400.0;
/// The user counts every audit projects to, besides the current one.
const PROJECTED_USERS: [u64; 2] = [100, 1_000];

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.target.offline {
        anyhow::bail!("warren audit reads a running gateway; drop --offline");
    }
    let config = args.target.config.load()?;
    let base = args.target.base(&config);
    let inputs = block_on(fetch(&config, &base))??;
    let report = audit(&config, &base, &inputs);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", markdown(&report));
    }
    Ok(())
}

/// What the audit is computed from.
struct Inputs {
    now_ms: u64,
    /// `GET /admin/api/tenants`.
    tenants: Vec<Value>,
    /// `GET /admin/api/events`, newest first.
    events: Vec<Value>,
    /// `GET /metrics`, as text.
    metrics: String,
    /// `GET /admin/api/workers`.
    workers: Vec<Value>,
    /// The newest snapshot's size of each sized tenant.
    snapshot_bytes: Vec<u64>,
    /// This machine's memory.
    memory_total: Option<u64>,
}

async fn get(config: &Config, base: &str, path: &str) -> anyhow::Result<String> {
    let mut text = String::new();
    call(config, base, Method::GET, path, &mut |line| {
        text.push_str(line);
        text.push('\n');
        Ok(())
    })
    .await?;
    Ok(text)
}

/// `value[key]` as a list, or `value` itself if it is one.
fn list(value: Value, key: &str) -> Vec<Value> {
    match value {
        Value::Array(items) => items,
        mut other => other[key].take().as_array().cloned().unwrap_or_default(),
    }
}

async fn fetch(config: &Config, base: &str) -> anyhow::Result<Inputs> {
    let json = |text: String| serde_json::from_str::<Value>(&text);
    let tenants = list(
        json(get(config, base, "/admin/api/tenants").await?)?,
        "tenants",
    );
    let events = list(
        json(get(config, base, &format!("/admin/api/events?limit={EVENTS}")).await?)?,
        "events",
    );
    let workers = list(
        json(get(config, base, "/admin/api/workers").await?)?,
        "workers",
    );
    let metrics = get(config, base, "/metrics").await?;
    let mut snapshot_bytes = Vec::new();
    for tenant in tenants
        .iter()
        .filter_map(|t| t["tenant"].as_str())
        .take(SIZED_TENANTS)
    {
        let path = format!("/admin/api/tenants/{tenant}/snapshots");
        let snapshots = list(json(get(config, base, &path).await?)?, "snapshots");
        if let Some(bytes) = snapshots.last().and_then(|s| s["bytes"].as_u64()) {
            snapshot_bytes.push(bytes);
        }
    }
    Ok(Inputs {
        now_ms: warren_gateway::unix_ms(),
        tenants,
        events,
        metrics,
        workers,
        snapshot_bytes,
        memory_total: memory_total(),
    })
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn memory_total() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[derive(Debug, Serialize)]
struct Report {
    generated_at: String,
    gateway: String,
    /// `ok`, `concerns` (a warning) or `critical`.
    status: &'static str,
    configuration: Vec<Setting>,
    capacity: Capacity,
    usage: Usage,
    findings: Vec<Finding>,
    costs: Vec<Cost>,
}

#[derive(Debug, Serialize)]
struct Setting {
    setting: String,
    value: String,
    notes: String,
}

#[derive(Debug, Serialize)]
struct Capacity {
    tenants_known: u64,
    running: u64,
    max_instances: u64,
    /// Running sandboxes at once, at most, in the event window.
    peak_running: u64,
    memory_total_bytes: Option<u64>,
    /// The median memory of the running sandboxes.
    memory_per_sandbox_bytes: Option<u64>,
    /// How many such sandboxes this machine's memory holds (90% of it).
    sandboxes_that_fit: Option<u64>,
    /// The median size of a tenant's newest snapshot (the workspace, uncompressed).
    workspace_bytes: Option<u64>,
    projections: Vec<Projection>,
}

#[derive(Debug, Serialize)]
struct Projection {
    users: u64,
    /// Sandboxes running at once, at the measured concurrency.
    concurrent: u64,
    memory_bytes: Option<u64>,
    store_bytes: Option<u64>,
    /// Whether `max_instances` covers it.
    within_max_instances: bool,
    /// Whether this machine's memory covers it.
    fits_this_machine: Option<bool>,
}

#[derive(Debug, Serialize)]
struct Usage {
    /// Hours from the oldest event read to now.
    window_hours: f64,
    active_tenants: u64,
    /// The share of the window an active tenant's sandbox ran, on average.
    duty_cycle: Option<f64>,
    /// Running sandboxes at once at most over active tenants.
    concurrency: Option<f64>,
    starts_ready: u64,
    starts_failed: u64,
    cold_start_p50_seconds: Option<f64>,
    cold_start_p95_seconds: Option<f64>,
    admission_rejections: u64,
    oom_kills: u64,
    /// Running sandboxes at once, at most, in the event window.
    peak_running: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Finding {
    /// `critical`, `warning` or `ok`.
    severity: &'static str,
    title: String,
    detail: String,
}

#[derive(Debug, Serialize)]
struct Cost {
    active_users: u64,
    compute_per_month: f64,
    storage_per_month: f64,
    total_per_month: f64,
    assumption: String,
}

fn audit(config: &Config, base: &str, inputs: &Inputs) -> Report {
    let usage = usage(inputs);
    let capacity = capacity(config, inputs, &usage);
    let findings = findings(config, inputs, &usage, &capacity);
    let costs = costs(config, inputs, &usage, &capacity);
    let status = if findings.iter().any(|f| f.severity == "critical") {
        "critical"
    } else if findings.iter().any(|f| f.severity == "warning") {
        "concerns"
    } else {
        "ok"
    };
    Report {
        generated_at: chrono::DateTime::from_timestamp_millis(inputs.now_ms as i64)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        gateway: base.to_owned(),
        status,
        configuration: configuration(config),
        capacity,
        usage,
        findings,
        costs,
    }
}

fn size_of(config: &Config, instance_type: &str) -> InstanceSize {
    config
        .instance_size(instance_type)
        .unwrap_or(INSTANCE_TYPES[0].1)
}

fn configuration(config: &Config) -> Vec<Setting> {
    let size = size_of(config, &config.instance_type);
    let setting = |setting: &str, value: String, notes: &str| Setting {
        setting: setting.into(),
        value,
        notes: notes.into(),
    };
    let sleep = match config.sleep_after {
        SleepAfter::Never => "never".to_owned(),
        SleepAfter::Idle(d) => format!("{}s", d.as_secs()),
    };
    let tiers: Vec<&str> = config.tiers.keys().map(String::as_str).collect();
    let agents: Vec<&str> = config.agent_profiles().map(|(name, _)| name).collect();
    vec![
        setting(
            "max_instances",
            config.max_instances.to_string(),
            "sandboxes running at once",
        ),
        setting(
            "instance_type",
            config.instance_type.clone(),
            &format!(
                "{} vCPU, {} MiB, {} GB disk per sandbox",
                size.vcpu, size.memory_mib, size.disk_gb
            ),
        ),
        setting("sleep_after", sleep, "idle time before a sandbox sleeps"),
        setting(
            "sync",
            format!(
                "debounce {:?}, at most {:?}",
                config.sync.debounce.0, config.sync.max_delay.0
            ),
            "a change reaches the store within this",
        ),
        setting(
            "sweep",
            config.sweep.schedule.clone(),
            "every tenant synced, retention applied",
        ),
        setting(
            "store",
            format!("{:?}", config.store.kind).to_lowercase(),
            "",
        ),
        setting(
            "runtime",
            format!("{:?}", config.runtime.kind).to_lowercase(),
            &format!("warm pool {}", config.runtime.pool),
        ),
        setting("tiers", tiers.join(", "), ""),
        setting("agent profiles", agents.join(", "), ""),
    ]
}

/// The metric lines of `name` (exactly, before its labels) whose labels contain
/// `label` (or any, with ""), summed.
fn metric_sum(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (metric, labels) = key.split_once('{').unwrap_or((key, ""));
            (metric == name && labels.contains(label)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The `q` quantile of the histogram `name`, as its bucket's upper bound.
fn histogram_quantile(metrics: &str, name: &str, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&format!("{name}_bucket{{"))?;
            let le = rest.split("le=\"").nth(1)?.split('"').next()?;
            let count = l.rsplit_once(' ')?.1.parse().ok()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total)
        .map(|(le, _)| *le)
        .filter(|le| le.is_finite())
}

/// Whether the event's state is one in which the sandbox holds resources.
fn runs(state: &str) -> bool {
    matches!(state, "starting" | "ready" | "stopping")
}

fn usage(inputs: &Inputs) -> Usage {
    // Oldest first: each tenant's running intervals, and how many run at once.
    let mut events: Vec<(&str, u64, &str, Option<&str>)> = inputs
        .events
        .iter()
        .filter_map(|e| {
            Some((
                e["tenant"].as_str()?,
                e["at_ms"].as_u64()?,
                e["state"].as_str()?,
                e["cause"].as_str(),
            ))
        })
        .collect();
    // At one moment, stops before starts: a slot freed and taken is not two at once.
    events.sort_by_key(|e| (e.1, runs(e.2)));
    let start_ms = events.first().map_or(inputs.now_ms, |e| e.1);
    let window_ms = inputs.now_ms.saturating_sub(start_ms);
    let mut since: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    let mut active = std::collections::HashSet::new();
    let (mut running_ms, mut peak, mut oom_kills) = (0u64, 0u64, 0u64);
    for (tenant, at, state, cause) in &events {
        active.insert(*tenant);
        if cause == &Some("oom") && *state == "asleep" {
            oom_kills += 1;
        }
        match (runs(state), since.get(tenant).copied()) {
            (true, None) => {
                since.insert(tenant, *at);
            }
            (false, Some(from)) => {
                running_ms += at.saturating_sub(from);
                since.remove(tenant);
            }
            _ => {}
        }
        peak = peak.max(since.len() as u64);
    }
    // Those running now run until now.
    running_ms += since
        .values()
        .map(|from| inputs.now_ms.saturating_sub(*from))
        .sum::<u64>();
    // Shorter windows say more about when the gateway started than about its users.
    let measured = !active.is_empty() && window_ms >= MIN_WINDOW_MS;
    let duty_cycle = measured.then(|| running_ms as f64 / (window_ms as f64 * active.len() as f64));
    let concurrency = measured.then(|| peak as f64 / active.len() as f64);
    let m = &inputs.metrics;
    Usage {
        window_hours: window_ms as f64 / 3_600_000.0,
        active_tenants: active.len() as u64,
        duty_cycle: duty_cycle.map(|d| d.min(1.0)),
        concurrency,
        starts_ready: metric_sum(m, "warren_starts_total", "outcome=\"ready\"") as u64,
        starts_failed: metric_sum(m, "warren_starts_total", "outcome=\"failed\"") as u64,
        cold_start_p50_seconds: histogram_quantile(m, "warren_start_seconds", 0.5),
        cold_start_p95_seconds: histogram_quantile(m, "warren_start_seconds", 0.95),
        admission_rejections: metric_sum(m, "warren_admission_rejections_total", "") as u64,
        oom_kills,
        peak_running: measured.then_some(peak),
    }
}

fn median(mut values: Vec<u64>) -> Option<u64> {
    values.sort_unstable();
    values.get(values.len() / 2).copied()
}

/// A running tenant's memory in use and its limit, in bytes.
fn memory_of(tenant: &Value) -> Option<(u64, Option<u64>)> {
    let r = &tenant["resources"];
    let used = r["memory_bytes"].as_u64()?;
    Some((used, r["memory_limit_bytes"].as_u64()))
}

fn capacity(config: &Config, inputs: &Inputs, usage: &Usage) -> Capacity {
    let running = inputs
        .tenants
        .iter()
        .filter(|t| t["state"].as_str().is_some_and(runs))
        .count() as u64;
    let per_sandbox = median(
        inputs
            .tenants
            .iter()
            .filter_map(memory_of)
            .map(|m| m.0)
            .collect(),
    );
    // Unmeasured: what the instance type allows.
    let per_sandbox_or_limit =
        per_sandbox.unwrap_or(size_of(config, &config.instance_type).memory_mib << 20);
    let fit = inputs
        .memory_total
        .map(|total| (total as f64 * 0.9) as u64 / per_sandbox_or_limit.max(1));
    let workspace_bytes = median(inputs.snapshot_bytes.clone());
    let tenants_known = inputs.tenants.len() as u64;
    let concurrency = usage.concurrency.unwrap_or(1.0);
    let projections = std::iter::once(tenants_known)
        .chain(PROJECTED_USERS)
        .map(|users| {
            let concurrent = (users as f64 * concurrency).ceil() as u64;
            Projection {
                users,
                concurrent,
                memory_bytes: Some(concurrent * per_sandbox_or_limit),
                store_bytes: workspace_bytes.map(|b| b * users),
                within_max_instances: concurrent <= config.max_instances as u64,
                fits_this_machine: fit.map(|fit| concurrent <= fit),
            }
        })
        .collect();
    Capacity {
        tenants_known,
        running,
        max_instances: config.max_instances as u64,
        peak_running: usage.peak_running.unwrap_or(running),
        memory_total_bytes: inputs.memory_total,
        memory_per_sandbox_bytes: per_sandbox,
        sandboxes_that_fit: fit,
        workspace_bytes,
        projections,
    }
}

/// The interval of the sweep's cron rule, from two consecutive runs.
fn sweep_interval_ms(config: &Config) -> Option<u64> {
    let rule = warren_gateway::schedule::parse(&config.sweep.schedule).ok()?;
    let now = chrono::Utc::now();
    let first = rule.find_next_occurrence(&now, false).ok()?;
    let second = rule.find_next_occurrence(&first, false).ok()?;
    u64::try_from((second - first).num_milliseconds()).ok()
}

fn findings(config: &Config, inputs: &Inputs, usage: &Usage, capacity: &Capacity) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut finding = |severity, title: String, detail: String| {
        out.push(Finding {
            severity,
            title,
            detail,
        })
    };
    let names = |tenants: &[&str]| {
        let shown: Vec<&str> = tenants.iter().take(10).copied().collect();
        let more = tenants.len().saturating_sub(shown.len());
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        format!("{}{more}", shown.join(", "))
    };

    // Changes older than a sweep's interval are not in the store.
    let limit = sweep_interval_ms(config).unwrap_or(5 * 60_000);
    let behind: Vec<&str> = inputs
        .tenants
        .iter()
        .filter(|t| {
            let sync = &t["sync"];
            let pending = sync["pending_since_ms"].as_u64();
            let failing = sync["failing_since_ms"].as_u64();
            pending
                .or(failing)
                .is_some_and(|since| inputs.now_ms.saturating_sub(since) > limit)
        })
        .filter_map(|t| t["tenant"].as_str())
        .collect();
    if behind.is_empty() {
        finding(
            "ok",
            "Every workspace is in the store".into(),
            format!(
                "No tenant has changes older than the sweep interval ({} s) that the store lacks.",
                limit / 1000
            ),
        );
    } else {
        finding(
            "critical",
            format!(
                "{} tenants' latest changes are not in the store",
                behind.len()
            ),
            format!(
                "Changes older than the sweep interval ({} s) are still only on this machine for: {}. Check `warren tenant <id>` for the sync's last error, and the store.",
                limit / 1000,
                names(&behind)
            ),
        );
    }

    let near: Vec<&str> = inputs
        .tenants
        .iter()
        .filter(|t| {
            memory_of(t)
                .is_some_and(|(used, limit)| limit.is_some_and(|l| l > 0 && used * 10 > l * 8))
        })
        .filter_map(|t| t["tenant"].as_str())
        .collect();
    if !near.is_empty() {
        finding(
            "warning",
            format!("{} sandboxes near their memory limit", near.len()),
            format!(
                "Above 80% of their instance type's memory: {}. They risk being killed for memory (recorded as `oom`); give them a larger instance type (`[tenants.<id>] instance_type`, or a tier).",
                names(&near)
            ),
        );
    }
    if usage.oom_kills > 0 {
        finding(
            "warning",
            format!("{} sandboxes killed for memory", usage.oom_kills),
            format!(
                "In the last {:.1} hours of events. See `warren events` for which tenants.",
                usage.window_hours
            ),
        );
    }

    if usage.admission_rejections > 0 {
        finding(
            "warning",
            format!("{} starts refused at capacity", usage.admission_rejections),
            format!(
                "Users got `503 capacity_exhausted`: every slot of max_instances = {} was busy and the queue full or timed out. Raise max_instances (memory allowing: {} fit this machine) or shorten sleep_after.",
                config.max_instances,
                capacity
                    .sandboxes_that_fit
                    .map_or("unknown".into(), |f| f.to_string())
            ),
        );
    }
    if capacity.peak_running >= capacity.max_instances && capacity.max_instances > 0 {
        finding(
            "warning",
            "Capacity was reached".into(),
            format!(
                "{} sandboxes ran at once at the peak, max_instances is {}: starts beyond it evicted idle sandboxes or waited.",
                capacity.peak_running, capacity.max_instances
            ),
        );
    }
    if let Some(fit) = capacity.sandboxes_that_fit
        && fit < capacity.max_instances
    {
        finding(
            "warning",
            "max_instances is more than this machine's memory holds".into(),
            format!(
                "{} sandboxes of {} each fit in 90% of this machine's memory; max_instances allows {}.",
                fit,
                human::bytes(
                    capacity
                        .memory_per_sandbox_bytes
                        .unwrap_or(size_of(config, &config.instance_type).memory_mib << 20)
                ),
                capacity.max_instances
            ),
        );
    }

    let starts = usage.starts_ready + usage.starts_failed;
    if usage.starts_failed > 0 {
        let severity = if usage.starts_failed * 10 > starts {
            "critical"
        } else {
            "warning"
        };
        finding(severity, format!("{} of {starts} starts failed", usage.starts_failed), "Sandboxes that did not become ready (an agent that exits, a readiness probe that times out, a store that cannot be read). `warren events` shows each one's reason.".into());
    }
    match (usage.cold_start_p50_seconds, usage.cold_start_p95_seconds) {
        (Some(p50), Some(p95)) => {
            let severity = if p95 > 30.0 { "warning" } else { "ok" };
            finding(
                severity,
                "Cold starts".into(),
                format!(
                    "p50 at most {p50} s, p95 at most {p95} s over {starts} starts since the gateway started (bucket bounds of `warren_start_seconds`). Pre-warm on login (`POST /api/prewarm`), a warm pool (`runtime.pool`) and kept-warm tiers hide them."
                ),
            );
        }
        _ => finding(
            "ok",
            "Cold starts".into(),
            "No start measured since the gateway started.".into(),
        ),
    }
    let failing: Vec<String> = inputs
        .workers
        .iter()
        .filter(|w| w["last_error"].as_str().is_some_and(|e| !e.is_empty()))
        .map(|w| {
            format!(
                "{}: {}",
                w["name"].as_str().unwrap_or("?"),
                w["last_error"].as_str().unwrap_or("")
            )
        })
        .collect();
    if !failing.is_empty() {
        finding(
            "warning",
            "Background workers report errors".into(),
            failing.join("; "),
        );
    }
    out
}

fn costs(config: &Config, inputs: &Inputs, usage: &Usage, capacity: &Capacity) -> Vec<Cost> {
    let prices = &config.prices;
    // The mean price of a running second over known tenants' instance types.
    let per_second: Vec<f64> = inputs
        .tenants
        .iter()
        .map(|t| {
            let name = t["instance_type"].as_str().unwrap_or(&config.instance_type);
            prices.per_second(&size_of(config, name))
        })
        .collect();
    let per_second = match per_second.len() {
        0 => prices.per_second(&size_of(config, &config.instance_type)),
        n => per_second.iter().sum::<f64>() / n as f64,
    };
    let (duty, duty_note) = match usage.duty_cycle {
        Some(d) => (
            d,
            format!(
                "each active user's sandbox running {:.1}% of the time, as measured over the last {:.1} hours",
                d * 100.0,
                usage.window_hours
            ),
        ),
        None => (
            1.0,
            format!(
                "usage not measured (events cover {:.1} hours, under one): every sandbox priced as always running, an upper bound",
                usage.window_hours
            ),
        ),
    };
    let store_gb = capacity.workspace_bytes.map_or(0.05, |b| b as f64 / 1e9);
    PROJECTED_USERS
        .into_iter()
        .map(|users| {
            let compute = users as f64 * duty * MONTH_SECS * per_second;
            let storage = users as f64 * store_gb * prices.storage_gb_month;
            Cost {
                active_users: users,
                compute_per_month: compute,
                storage_per_month: storage,
                total_per_month: compute + storage,
                assumption: format!(
                    "{duty_note}; ${:.4} per running hour of a sandbox (vCPU, memory and disk of the instance type at the configured prices); {:.3} GB stored per user{}",
                    per_second * 3600.0,
                    store_gb,
                    if capacity.workspace_bytes.is_none() { " (not measured: 50 MB assumed)" } else { " (the median workspace)" }
                ),
            }
        })
        .collect()
}

fn markdown(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let status = match r.status {
        "critical" => "🔴 Critical findings",
        "concerns" => "⚠️ Some concerns identified",
        _ => "✅ No concerns",
    };
    let _ = writeln!(out, "# Scalability Audit Report\n");
    let _ = writeln!(out, "**Date:** {}  ", r.generated_at);
    let _ = writeln!(out, "**Deployment:** {}  ", r.gateway);
    let _ = writeln!(out, "**Status:** {status}\n");
    let _ = writeln!(out, "## Current Configuration\n");
    let _ = writeln!(out, "| Setting | Value | Notes |\n|---|---|---|");
    for s in &r.configuration {
        let _ = writeln!(out, "| {} | {} | {} |", s.setting, s.value, s.notes);
    }
    let c = &r.capacity;
    let bytes = |b: Option<u64>| b.map_or("not measured".into(), human::bytes);
    let _ = writeln!(out, "\n## Scaling Capacity\n\n### Sandboxes");
    let _ = writeln!(
        out,
        "- **Running now:** {} of max_instances {}",
        c.running, c.max_instances
    );
    let _ = writeln!(out, "- **Tenants known:** {}", c.tenants_known);
    let _ = writeln!(out, "- **Peak at once (event window):** {}", c.peak_running);
    let _ = writeln!(
        out,
        "- **Memory per running sandbox (median):** {}",
        bytes(c.memory_per_sandbox_bytes)
    );
    let _ = writeln!(
        out,
        "- **This machine's memory:** {}, holding about {} such sandboxes",
        bytes(c.memory_total_bytes),
        c.sandboxes_that_fit.map_or("?".into(), |f| f.to_string())
    );
    let _ = writeln!(
        out,
        "\n### Storage\n- **Workspace per tenant (median newest snapshot, uncompressed):** {}",
        bytes(c.workspace_bytes)
    );
    let _ = writeln!(
        out,
        "\n### Projections\n\n| Users | Running at once | Memory | Store | Within max_instances | Fits this machine |\n|---|---|---|---|---|---|"
    );
    for p in &c.projections {
        let yes = |b: bool| if b { "yes" } else { "**no**" };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            p.users,
            p.concurrent,
            bytes(p.memory_bytes),
            bytes(p.store_bytes),
            yes(p.within_max_instances),
            p.fits_this_machine.map_or("?", yes)
        );
    }
    let u = &r.usage;
    let _ = writeln!(out, "\n## Measured Usage\n");
    let _ = writeln!(
        out,
        "- **Event window:** {:.1} hours, {} active tenants",
        u.window_hours, u.active_tenants
    );
    let _ = writeln!(
        out,
        "- **Duty cycle:** {}",
        u.duty_cycle.map_or("not measured".into(), |d| format!(
            "{:.1}% of the time running",
            d * 100.0
        ))
    );
    let _ = writeln!(
        out,
        "- **Concurrency:** {}",
        u.concurrency.map_or("not measured".into(), |c| format!(
            "{:.0}% of active tenants at once at the peak",
            c * 100.0
        ))
    );
    let _ = writeln!(
        out,
        "- **Starts:** {} ready, {} failed; refused at capacity: {}; OOM kills: {}",
        u.starts_ready, u.starts_failed, u.admission_rejections, u.oom_kills
    );
    let _ = writeln!(out, "\n## Findings\n");
    for (i, f) in r.findings.iter().enumerate() {
        let mark = match f.severity {
            "critical" => "🔴",
            "warning" => "🟡",
            _ => "🟢",
        };
        let _ = writeln!(
            out,
            "### {mark} Finding {}: {}\n\n{}\n",
            i + 1,
            f.title,
            f.detail
        );
    }
    let _ = writeln!(out, "## Cost Projections\n");
    for cost in &r.costs {
        let _ = writeln!(
            out,
            "### At {} Active Users\n\n| Resource | Per month |\n|---|---|",
            cost.active_users
        );
        let _ = writeln!(
            out,
            "| Sandboxes (compute) | ${:.2} |\n| Store | ${:.2} |\n| **Total** | **${:.2}** |\n",
            cost.compute_per_month, cost.storage_per_month, cost.total_per_month
        );
        let _ = writeln!(out, "Assuming {}.\n", cost.assumption);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# TYPE warren_start_seconds histogram\n\
        warren_start_seconds_sum 12.0\n\
        warren_start_seconds_count 10\n\
        warren_start_seconds_bucket{le=\"0.016\"} 4\n\
        warren_start_seconds_bucket{le=\"0.032\"} 9\n\
        warren_start_seconds_bucket{le=\"8.192\"} 10\n\
        warren_start_seconds_bucket{le=\"+Inf\"} 10\n\
        warren_starts_total{outcome=\"ready\"} 9\n\
        warren_starts_total{outcome=\"failed\"} 1\n";

    fn inputs(events: Value, tenants: Value) -> Inputs {
        Inputs {
            now_ms: 10 * 3_600_000,
            tenants: list(tenants, "tenants"),
            events: list(events, "events"),
            metrics: METRICS.into(),
            workers: Vec::new(),
            snapshot_bytes: vec![10_000_000, 30_000_000, 20_000_000],
            memory_total: Some(24 << 30),
        }
    }

    #[test]
    fn metrics_give_counts_and_bucket_bound_percentiles() {
        assert_eq!(
            metric_sum(METRICS, "warren_starts_total", "outcome=\"failed\""),
            1.0
        );
        assert_eq!(metric_sum(METRICS, "warren_starts_total", ""), 10.0);
        assert_eq!(
            histogram_quantile(METRICS, "warren_start_seconds", 0.5),
            Some(0.032)
        );
        assert_eq!(
            histogram_quantile(METRICS, "warren_start_seconds", 0.95),
            Some(8.192)
        );
        assert_eq!(histogram_quantile("", "warren_start_seconds", 0.5), None);
    }

    #[test]
    fn usage_and_costs_follow_from_the_events_and_the_prices() {
        // Over 10 hours: a ran 0-5 h, b ran 5-10 h (still running): each 50%.
        let h = 3_600_000u64;
        let events = serde_json::json!({"events": [
            {"tenant": "b", "at_ms": 5 * h, "state": "ready"},
            {"tenant": "a", "at_ms": 5 * h, "state": "asleep", "cause": "idle"},
            {"tenant": "a", "at_ms": 0, "state": "ready"},
        ]});
        let tenants = serde_json::json!([
            {"tenant": "a", "state": "asleep", "instance_type": "standard-4"},
            {"tenant": "b", "state": "ready", "instance_type": "standard-4",
             "resources": {"memory_bytes": 1u64 << 30, "memory_limit_bytes": 12u64 << 30}},
        ]);
        let config = Config::default();
        let report = audit(&config, "http://gw", &inputs(events, tenants));
        let u = &report.usage;
        assert_eq!(u.active_tenants, 2);
        assert!((u.duty_cycle.unwrap() - 0.5).abs() < 1e-9, "{u:?}");
        assert_eq!(u.concurrency, Some(0.5));
        assert_eq!((u.starts_ready, u.starts_failed), (9, 1));
        assert_eq!(report.capacity.memory_per_sandbox_bytes, Some(1 << 30));
        assert_eq!(report.capacity.workspace_bytes, Some(20_000_000));
        // standard-4: 4 vCPU, 12 GiB, 20 GB at the original's prices, half the month.
        let per_second = 4.0 * 0.000_02 + 12.0 * 0.000_002_5 + 20.0 * 0.000_000_07;
        let hundred = &report.costs[0];
        assert_eq!(hundred.active_users, 100);
        let want = 100.0 * 0.5 * MONTH_SECS * per_second;
        assert!(
            (hundred.compute_per_month - want).abs() < 1e-6,
            "{hundred:?}"
        );
        assert!((hundred.storage_per_month - 100.0 * 0.02 * 0.015).abs() < 1e-9);
        // 1,000 users at 50% concurrency: 500 at once, beyond max_instances (10).
        let thousand = report
            .capacity
            .projections
            .iter()
            .find(|p| p.users == 1_000)
            .unwrap();
        assert_eq!(thousand.concurrent, 500);
        assert!(!thousand.within_max_instances);
        // One failed start of ten is a warning, the markdown has the report's shape.
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.title == "1 of 10 starts failed" && f.severity == "warning")
        );
        let text = markdown(&report);
        for heading in [
            "# Scalability Audit Report",
            "## Current Configuration",
            "## Scaling Capacity",
            "## Findings",
            "### At 100 Active Users",
            "### At 1000 Active Users",
        ] {
            assert!(text.contains(heading), "{heading}");
        }
    }

    #[test]
    fn changes_older_than_the_sweep_interval_are_critical() {
        let tenants = serde_json::json!([
            {"tenant": "late", "state": "ready", "sync": {"pending_since_ms": 0}},
            {"tenant": "fine", "state": "ready", "sync": {"pending_since_ms": 10 * 3_600_000 - 1_000}},
        ]);
        let report = audit(
            &Config::default(),
            "http://gw",
            &inputs(serde_json::json!([]), tenants),
        );
        let f = report
            .findings
            .iter()
            .find(|f| f.severity == "critical")
            .unwrap();
        assert!(
            f.detail.contains("late") && !f.detail.contains("fine"),
            "{f:?}"
        );
        assert_eq!(report.status, "critical");
    }
}
