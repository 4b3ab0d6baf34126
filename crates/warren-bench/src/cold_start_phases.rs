//! Cold starts of tenants with a 10 MiB workspace, the start DESIGN.md sets its goal
//! for, phase by phase, in four cases: the store on S3 (moto on 127.0.0.1) and the
//! workspace either on local disk and current (nothing to restore) or only in the
//! store (all of it restored first), each without and with the runtime's warm pool.
//!
//! The same tenants serve the four cases, in order: their snapshots are put in the
//! store once, through the sync engine (the library); a case whose workspaces are only
//! in the store first deletes each tenant's local directory (workspace and sync
//! state); the case after it starts from the copies it restored, current again. Every
//! start is checked to have done what its case says: a local workspace kept (the same
//! directory), a restored one complete. With a pool, the clock starts only once
//! `/readyz` shows the pool full again: one start after another, each claiming a
//! pooled sandbox, as a steady trickle of users would. Each gateway's `/metrics` is
//! read before it stops, to check its start histograms against the starts made.
//! Every gateway and moto are stopped however the run ends.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use futures_util::{StreamExt as _, TryStreamExt as _};
use tokio::time::Instant;
use warren_core::TenantId;
use warren_core::config::{S3_ACCESS_KEY_ENV, S3_SECRET_KEY_ENV};
use warren_core::layout::Layout;
use warren_testkit::Moto;

use crate::client::HttpConn;
use crate::cold_start::{Columns, Phases, first_request};
use crate::launch::{Gateway, GatewayStopped};
use crate::load::Samples;
use crate::store::{self, Shape};

/// Every tenant's workspace: 10 files of 1 MiB of random bytes (nothing compresses),
/// and the echo agent's history file, empty (so its first start changes nothing).
pub const WORKSPACE: Shape = Shape {
    files: 10,
    file_bytes: 1 << 20,
    dirs: 2,
};
/// How long the pool may take to be full again.
const POOL_DEADLINE: Duration = Duration::from_secs(30);
/// How often `/readyz` is asked while the pool refills.
const POOL_POLL: Duration = Duration::from_millis(2);
/// Snapshots put in the store at once while seeding.
const SEED_CONCURRENCY: usize = 4;

pub struct Settings {
    /// Timed starts per case (each case also makes one untimed warm-up start).
    pub users: usize,
    /// The pool size of the cases with a pool.
    pub pool: usize,
    /// Quiet time before each start (after the pool is full again), so that nothing
    /// the previous start set off in the background (its workspace's sync) overlaps
    /// the next; zero by default: one start right after another.
    pub pause: Duration,
    /// `[sync] single_writer = true`: a local copy is taken as current without the
    /// store's listing.
    pub single_writer: bool,
}

/// The phases `/metrics` histograms, in its label values.
pub const METRIC_PHASES: [&str; 5] = ["admission", "restore", "create", "boot", "first_byte"];

/// What one gateway's `/metrics` said of its starts.
pub struct FromMetrics {
    /// `warren_starts_total` by outcome.
    pub ready: u64,
    pub failed: u64,
    /// `warren_start_phase_seconds`, per phase of `METRIC_PHASES`: observations and
    /// their sum.
    pub phases: Vec<(u64, Duration)>,
}

pub struct Case {
    /// 1 to 4, as BENCHMARKS.md numbers them.
    pub number: usize,
    /// The workspace was only in the store: every start restored it.
    pub from_store: bool,
    pub pool: usize,
    pub total: Samples,
    pub admission: Samples,
    pub restore: Samples,
    pub create: Samples,
    pub boot: Samples,
    /// Client time not covered by the four phases: proxying, first byte, parsing.
    pub rest: Samples,
    /// Each start's total less its restore phase: the start if the store answered at
    /// once.
    pub without_restore: Samples,
    /// With a pool: from the answer until `/readyz` showed the pool full again.
    pub refill_after_answer: Samples,
    /// The same, counted from the end of the claim (the create phase): boot + rest +
    /// the wait after the answer.
    pub refill_after_claim: Samples,
    /// The untimed warm-up: the gateway's first start.
    pub warm_up: Duration,
    /// Every start's phases added up (the warm-up's too), to set against `/metrics`.
    pub phase_sums: Phases,
    pub starts: usize,
    pub metrics: FromMetrics,
    pub stopped: GatewayStopped,
    /// Snapshots the gateway added to the store, its stop included (a start changes
    /// nothing in the workspace).
    pub snapshots_added: usize,
}

pub struct PhasesRun {
    pub users: usize,
    pub pause: Duration,
    pub single_writer: bool,
    /// Putting every tenant's first snapshot in the store, before the cases.
    pub seeded: Duration,
    pub tenants: usize,
    pub cases: Vec<Case>,
}

pub async fn run(warren: &Path, dir: &Path, s: &Settings) -> anyhow::Result<PhasesRun> {
    ensure!(s.users > 0 && s.pool > 0, "counts must be positive");
    std::fs::create_dir_all(dir)?;
    let moto = store::start_moto().await?;
    let data_dir = dir.join("data");
    // The first tenant is each case's warm-up.
    let tenants: Vec<TenantId> = (0..=s.users)
        .map(|i| store::tenant(&format!("user_phase{i:03}")))
        .collect::<anyhow::Result<_>>()?;

    eprintln!(
        "cold start phases: {} workspaces of {} into moto...",
        tenants.len(),
        store::human(WORKSPACE.bytes())
    );
    let started = Instant::now();
    seed(&moto, &data_dir, &tenants).await?;
    let seeded = started.elapsed();

    let mut cases = Vec::new();
    for (number, from_store, pool) in [
        (1, false, 0),
        (2, true, 0),
        (3, false, s.pool),
        (4, true, s.pool),
    ] {
        eprintln!(
            "cold start phases: case {number} ({}, pool {pool}), {} starts...",
            if from_store {
                "workspace only in S3"
            } else {
                "workspace on local disk"
            },
            tenants.len()
        );
        let case = measure(
            warren,
            dir,
            &moto,
            &tenants,
            (number, from_store, pool),
            s.pause,
            s.single_writer,
        )
        .await
        .with_context(|| format!("case {number}"))?;
        cases.push(case);
    }

    drop(moto);
    Ok(PhasesRun {
        users: s.users,
        pause: s.pause,
        single_writer: s.single_writer,
        seeded,
        tenants: tenants.len(),
        cases,
    })
}

/// How many snapshots the tenants have in the store, all together.
async fn snapshots(moto: &Moto, dir: &Path, tenants: &[TenantId]) -> anyhow::Result<usize> {
    let (engine, _) = store::engine(store::moto_store(moto)?, &dir.join("count"));
    let mut count = 0;
    for tenant in tenants {
        count += engine.snapshots(tenant).await?.len();
    }
    Ok(count)
}

/// Writes every tenant's workspace into `data_dir` and puts its first snapshot in the
/// store, as a gateway's sync would: the local sync state then matches the store.
async fn seed(moto: &Moto, data_dir: &Path, tenants: &[TenantId]) -> anyhow::Result<()> {
    let (engine, layout) = store::engine(store::moto_store(moto)?, data_dir);
    for tenant in tenants {
        let workspace = layout.workspace(tenant);
        store::write_workspace(&workspace, WORKSPACE)?;
        std::fs::write(workspace.join("history.jsonl"), b"")?;
    }
    futures_util::stream::iter(tenants)
        .map(|tenant| {
            let engine = engine.clone();
            async move {
                let report = engine.sync(tenant, None).await?;
                ensure!(
                    report.created,
                    "the first sync of {tenant} made no snapshot"
                );
                anyhow::Ok(())
            }
        })
        .buffer_unordered(SEED_CONCURRENCY)
        .try_collect::<()>()
        .await
}

/// One case: a gateway on the tenants' data dir with the store on moto and `pool`,
/// one warm-up start, then a timed start of every other tenant.
async fn measure(
    warren: &Path,
    dir: &Path,
    moto: &Moto,
    tenants: &[TenantId],
    (number, from_store, pool): (usize, bool, usize),
    pause: Duration,
    single_writer: bool,
) -> anyhow::Result<Case> {
    let layout = Layout::new(&dir.join("data"));
    let snapshots_before = snapshots(moto, dir, tenants).await?;
    if from_store {
        for tenant in tenants {
            std::fs::remove_dir_all(layout.tenant_dir(tenant))
                .with_context(|| format!("cannot delete the local copy of {tenant}"))?;
        }
    }
    // No scheduled sweep: one would compete with the timed restores for moto.
    let tables = format!(
        "[runtime]\npool = {pool}\n\
         [store]\nkind = \"s3\"\nbucket = \"{}\"\nendpoint = \"http://{}\"\n\
         region = \"us-east-1\"\nallow_http = true\n\
         [sweep]\nschedule = \"\"\n\
         [sync]\nsingle_writer = {single_writer}\n",
        store::BUCKET,
        moto.addr
    );
    let env = [
        (S3_ACCESS_KEY_ENV, store::S3_KEY),
        (S3_SECRET_KEY_ENV, store::S3_KEY),
    ];
    let gateway =
        Gateway::start_with_env(warren, dir, tenants.len() + 8, "", &tables, &env).await?;
    // Only with a pool: an idle connection that never sent a request would hold up the
    // gateway's drain at its stop.
    let mut readyz = match pool {
        0 => None,
        _ => Some(HttpConn::connect(gateway.address).await?),
    };
    wait_for_pool(readyz.as_mut(), pool).await?;

    let mut columns = Columns::default();
    let (mut after_answer, mut after_claim) = (Vec::new(), Vec::new());
    let mut without_restore = Vec::new();
    let mut warm_up = Duration::ZERO;
    let mut phase_sums = Phases::default();
    for (i, tenant) in tenants.iter().enumerate() {
        tokio::time::sleep(pause).await;
        let workspace = layout.workspace(tenant);
        let before = std::fs::metadata(&workspace).ok().map(|m| m.ino());
        ensure!(
            before.is_some() != from_store,
            "{tenant}'s workspace should {}be on local disk before its start",
            if from_store { "not " } else { "" }
        );
        let (total, phases) = first_request(&gateway, tenant.as_str())
            .await
            .with_context(|| format!("first request of {tenant}"))?;
        let answered = Instant::now();
        if from_store {
            let bytes = store::dir_bytes(&workspace)?;
            ensure!(
                bytes == WORKSPACE.bytes(),
                "{tenant}'s workspace holds {bytes} bytes after its start, not the {} restored",
                WORKSPACE.bytes()
            );
        } else {
            let after = std::fs::metadata(&workspace).ok().map(|m| m.ino());
            ensure!(
                after == before,
                "{tenant}'s local workspace was replaced: it was current, no restore was due"
            );
        }
        wait_for_pool(readyz.as_mut(), pool).await?;
        let refill = answered.elapsed();
        phase_sums = add(phase_sums, &phases);
        if i == 0 {
            warm_up = total;
            continue;
        }
        columns.push(total, &phases);
        without_restore.push(total.saturating_sub(phases.restore));
        if pool > 0 {
            let claimed = phases.admission + phases.restore + phases.create;
            after_answer.push(refill);
            after_claim.push(total.saturating_sub(claimed) + refill);
        }
    }
    drop(readyz);
    let metrics = from_metrics(&gateway).await?;
    let stopped = gateway.stop().await?;
    let snapshots_added = snapshots(moto, dir, tenants).await? - snapshots_before;
    let [total, admission, restore, create, boot, rest] = columns.samples();
    Ok(Case {
        number,
        from_store,
        pool,
        total,
        admission,
        restore,
        create,
        boot,
        rest,
        without_restore: Samples::new(without_restore),
        refill_after_answer: Samples::new(after_answer),
        refill_after_claim: Samples::new(after_claim),
        warm_up,
        phase_sums,
        starts: tenants.len(),
        metrics,
        stopped,
        snapshots_added,
    })
}

fn add(sum: Phases, p: &Phases) -> Phases {
    Phases {
        admission: sum.admission + p.admission,
        restore: sum.restore + p.restore,
        create: sum.create + p.create,
        boot: sum.boot + p.boot,
    }
}

/// Polls `/readyz` until the pool holds `size` empty sandboxes.
async fn wait_for_pool(readyz: Option<&mut HttpConn>, size: usize) -> anyhow::Result<()> {
    let Some(readyz) = readyz else {
        return Ok(());
    };
    let deadline = Instant::now() + POOL_DEADLINE;
    loop {
        let answer = readyz.get("/readyz", None).await?;
        let ready: serde_json::Value = serde_json::from_slice(&answer.body)?;
        if ready["pool_ready"].as_u64() == Some(size as u64) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the pool did not hold {size} within {POOL_DEADLINE:?}: /readyz says {ready}"
        );
        tokio::time::sleep(POOL_POLL).await;
    }
}

/// The start counters and phase histograms of the gateway's `/metrics`.
pub async fn from_metrics(gateway: &Gateway) -> anyhow::Result<FromMetrics> {
    let body = gateway.admin_get("/metrics").await?;
    let text = std::str::from_utf8(&body)?;
    let value = |series: &str| sample(text, series).unwrap_or(0.0);
    let phases = METRIC_PHASES
        .iter()
        .map(|phase| {
            let labels = format!("{{phase=\"{phase}\"}}");
            (
                value(&format!("warren_start_phase_seconds_count{labels}")) as u64,
                Duration::from_secs_f64(value(&format!("warren_start_phase_seconds_sum{labels}"))),
            )
        })
        .collect();
    Ok(FromMetrics {
        ready: value("warren_starts_total{outcome=\"ready\"}") as u64,
        failed: value("warren_starts_total{outcome=\"failed\"}") as u64,
        phases,
    })
}

/// The value of one series (name and labels, exactly as written) in the OpenMetrics
/// text format.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_series_of_the_metrics_text() {
        let text = "# TYPE warren_starts counter\n\
                    warren_starts_total{outcome=\"ready\"} 51\n\
                    warren_start_phase_seconds_sum{phase=\"restore\"} 45.25\n\
                    warren_start_phase_seconds_count{phase=\"restore\"} 51\n\
                    warren_start_phase_seconds_bucket{le=\"0.001\",phase=\"restore\"} 0\n";
        assert_eq!(
            sample(text, "warren_starts_total{outcome=\"ready\"}"),
            Some(51.0)
        );
        assert_eq!(
            sample(text, "warren_start_phase_seconds_sum{phase=\"restore\"}"),
            Some(45.25)
        );
        assert_eq!(
            sample(text, "warren_starts_total{outcome=\"failed\"}"),
            None
        );
        assert_eq!(sample(text, "warren_starts_total"), None);
    }
}
