//! The scheduled pre-warm worker: cron rules in config (`prewarm` of a `[tiers.<name>]`
//! or a `[tenants.<id>]`, five fields or six with seconds, UTC) at which sandboxes
//! start before their users come, for example `0 8 * * 1-5` (weekdays 08:00). A tier's
//! rule starts the sandbox of every tenant in the tier, as assigned when it fires.
//!
//! A pre-warm never takes a slot a user needs: it starts only as many sandboxes as
//! slots are free when it fires, and never evicts. A pre-warmed sandbox then
//! lives like any other: it sleeps after its `sleep_after` if nobody uses it.

use std::sync::Arc;

use croner::Cron;
use tokio::sync::watch;
use warren_core::TenantId;
use warren_core::config::{Config, prewarm_rule};

use crate::edge::Edge;
use crate::schedule::{WorkerState, WorkerStatus};
use crate::unix_ms;

/// Whose sandboxes a rule starts.
#[derive(Debug, Clone)]
enum Target {
    Tier(String),
    Tenant(TenantId),
}

struct Rule {
    cron: Cron,
    target: Target,
}

pub struct PrewarmWorker {
    rules: Vec<Rule>,
    state: WorkerState,
}

impl PrewarmWorker {
    /// The worker of `config`'s rules (checked by `Config::validate`).
    pub fn new(config: &Config) -> Arc<Self> {
        let mut rules = Vec::new();
        let tiers = config.tiers.iter().map(|(name, t)| {
            (
                format!("tiers.{name}.prewarm"),
                &t.prewarm,
                Target::Tier(name.clone()),
            )
        });
        let tenants = config.tenants.iter().map(|(id, t)| {
            (
                format!("tenants.{id}.prewarm"),
                &t.prewarm,
                Target::Tenant(id.clone()),
            )
        });
        for (key, exprs, target) in tiers.chain(tenants) {
            for expr in exprs {
                match prewarm_rule(expr) {
                    Ok(cron) => rules.push(Rule {
                        cron,
                        target: target.clone(),
                    }),
                    Err(e) => tracing::warn!(%key, %expr, error = %e, "pre-warm rule ignored"),
                }
            }
        }
        Arc::new(Self {
            rules,
            state: WorkerState::new("prewarm"),
        })
    }

    pub fn status(&self) -> WorkerStatus {
        self.state.get()
    }

    fn update(&self, f: impl FnOnce(&mut WorkerStatus)) {
        self.state.update(f);
    }

    /// Fires the rules at their times until `stop` turns true.
    pub async fn run(self: Arc<Self>, edge: Arc<Edge>, mut stop: watch::Receiver<bool>) {
        if self.rules.is_empty() {
            return;
        }
        let mut fired: Option<chrono::DateTime<chrono::Utc>> = None;
        loop {
            // After the last firing, even if the wall clock is behind it (a timer that
            // woke early against a slewed clock must not fire the same rule twice).
            let now = chrono::Utc::now();
            let after = fired.map_or(now, |f| f.max(now));
            let next: Vec<_> = self
                .rules
                .iter()
                .map(|r| r.cron.find_next_occurrence(&after, false).ok())
                .collect();
            let Some(at) = next.iter().flatten().min().copied() else {
                tracing::warn!("no pre-warm rule has a next occurrence; the pre-warm worker stops");
                self.update(|s| {
                    s.next_run_ms = None;
                    s.state = "idle";
                });
                return;
            };
            self.update(|s| s.next_run_ms = Some(at.timestamp_millis() as u64));
            let wait = (at - now).to_std().unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let due = self
                .rules
                .iter()
                .zip(&next)
                .filter(|(_, n)| **n == Some(at));
            let targets: Vec<Target> = due.map(|(r, _)| r.target.clone()).collect();
            self.fire(&edge, &targets);
            fired = Some(at);
        }
    }

    /// Starts the sandboxes of `targets` while slots are free; does not wait for them.
    fn fire(&self, edge: &Edge, targets: &[Target]) {
        let ctx = &edge.ctx;
        let mut tenants: Vec<TenantId> = targets
            .iter()
            .flat_map(|t| match t {
                Target::Tier(tier) => ctx.tenants_in_tier(tier),
                Target::Tenant(id) => vec![id.clone()],
            })
            .collect();
        tenants.sort();
        tenants.dedup();
        let draining = ctx.draining.load(std::sync::atomic::Ordering::Acquire);
        let mut free = match draining {
            true => 0,
            false => ctx
                .config
                .max_instances
                .saturating_sub(ctx.admission.running()),
        };
        let (mut started, mut skipped) = (0u64, 0u64);
        for tenant in tenants {
            let handle = edge.tenants.handle(&tenant);
            if handle.is_running() {
                continue;
            }
            if free == 0 {
                skipped += 1;
                continue;
            }
            free -= 1;
            started += 1;
            tokio::spawn(async move {
                // The lease ends at once: the idle clock runs from when it is ready.
                if let Err(e) = handle.acquire().await {
                    tracing::info!(tenant = %handle.tenant(), error = %e, "scheduled pre-warm did not start the sandbox");
                }
            });
        }
        tracing::info!(started, skipped, "scheduled pre-warm");
        self.update(|s| {
            s.runs += 1;
            s.last_run_ms = Some(unix_ms());
            s.last_error =
                (skipped > 0).then(|| format!("{skipped} sandboxes not started: no free slot"));
        });
    }
}
