//! The gateway: one authenticating edge in front of every tenant's sandbox.
//!
//! Requests flow one way: `edge` authenticates and routes, `tenant` (one actor per
//! tenant) starts the sandbox through `admission` and the runtime, and `proxy` carries
//! bytes to the agent. Every sandbox transition is written to the state store.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use hyper_util::client::legacy::Client;
use warren_core::auth::Signer;
use warren_core::config::{Config, DEFAULT_AGENT, SandboxProfile};
use warren_core::{Secret, TenantId};
use warren_runtime::{Runtime, Sandbox};
use warren_state::StateStore;
use warren_store::{Freeze, SyncEngine};

pub mod admin;
pub mod admission;
pub mod agent;
pub mod cleanup;
pub mod dashboard;
pub mod edge;
pub mod egress;
pub mod error;
pub mod handover;
pub mod limits;
pub mod metrics;
pub mod openclaw;
pub mod prewarm;
pub mod probe;
pub mod proxy;
pub mod schedule;
pub mod serve;
pub mod tenant;
pub mod upstream;
pub mod websocket;

pub use serve::{Gateway, Shutdown};

/// The services the gateway is built from.
pub struct Services {
    pub state: Arc<dyn StateStore>,
    pub runtime: Arc<dyn Runtime>,
    pub sync: Arc<SyncEngine>,
}

/// What every part of the gateway shares.
pub struct Context {
    pub config: Config,
    pub signer: Signer,
    /// The bearer token of the admin API.
    pub admin_token: Secret,
    pub state: Arc<dyn StateStore>,
    pub runtime: Arc<dyn Runtime>,
    pub sync: Arc<SyncEngine>,
    pub admission: Arc<admission::Admission>,
    /// Pooled HTTP/1.1 connections to sandboxes.
    pub client: Client<upstream::Upstreams, Body>,
    /// Which name reaches which sandbox.
    pub upstreams: upstream::Upstreams,
    /// Every agent profile by name, ready to run (`DEFAULT_AGENT` for `[agent]`).
    pub agents: BTreeMap<String, agent::Agent>,
    /// Serves the agents' egress ports.
    pub egress: egress::Egress,
    /// The monotonic origin of activity clocks.
    pub epoch: Instant,
    /// Set once shutdown begins: `/readyz` fails so balancers stop sending traffic, and
    /// WebSockets closed from now on are told the service restarts (1012).
    pub draining: AtomicBool,
    /// Set once the gateway closes its WebSockets (with 1012), at the end of a drain.
    pub closing: tokio::sync::watch::Sender<bool>,
    /// WebSocket relays running: the gateway waits for them to say goodbye.
    pub relays: tokio::sync::watch::Sender<usize>,
    /// Also told of every sync by the sync engine.
    pub metrics: Arc<metrics::Metrics>,
    generations: AtomicU64,
    /// Tiers operators put tenants in (admin API), over the config's; kept in the
    /// state store and loaded by `Gateway::recover`.
    tiers: RwLock<HashMap<TenantId, String>>,
}

impl Context {
    pub fn new(
        config: Config,
        signer: Signer,
        admin_token: Secret,
        services: Services,
        agents: BTreeMap<String, agent::Agent>,
        egress: egress::Egress,
    ) -> Self {
        let admission = Arc::new(admission::Admission::new(
            config.max_instances,
            config.admission.queue_limit,
            config.admission.queue_timeout.0,
        ));
        let metrics = Arc::new(metrics::Metrics::default());
        services.sync.observe(metrics.clone());
        let upstreams = upstream::Upstreams::new(services.runtime.connector().clone());
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build(upstreams.clone());
        Self {
            config,
            signer,
            admin_token,
            state: services.state,
            runtime: services.runtime,
            sync: services.sync,
            admission,
            client,
            upstreams,
            agents,
            egress,
            // A day back, so an activity clock carried over from an earlier gateway
            // (up to a day old) is still a number on this one's clock.
            epoch: Instant::now()
                .checked_sub(std::time::Duration::from_secs(86_400))
                .unwrap_or_else(Instant::now),
            draining: AtomicBool::new(false),
            closing: tokio::sync::watch::Sender::new(false),
            relays: tokio::sync::watch::Sender::new(0),
            metrics,
            // Generations only need to grow across restarts; start from the wall clock.
            generations: AtomicU64::new(unix_ms()),
            tiers: RwLock::new(HashMap::new()),
        }
    }

    /// What `tenant`'s sandbox gets now: its config, in the tier an operator put it in.
    pub fn profile(&self, tenant: &TenantId) -> SandboxProfile<'_> {
        let tiers = self.tiers.read().unwrap_or_else(|e| e.into_inner());
        self.config
            .sandbox_profile_in(tenant, tiers.get(tenant).map(String::as_str))
    }

    /// Puts `tenant` in `tier` (or, with `None`, back in its config's) for `profile`.
    /// The caller keeps the state store in step.
    pub fn assign_tier(&self, tenant: &TenantId, tier: Option<String>) {
        let mut tiers = self.tiers.write().unwrap_or_else(|e| e.into_inner());
        match tier {
            Some(tier) => tiers.insert(tenant.clone(), tier),
            None => tiers.remove(tenant),
        };
    }

    /// Every tenant in `tier` that the gateway knows by name: those an operator put
    /// in a tier and those with a config table, whose tier is now `tier`.
    pub fn tenants_in_tier(&self, tier: &str) -> Vec<TenantId> {
        let assigned: Vec<TenantId> = {
            let tiers = self.tiers.read().unwrap_or_else(|e| e.into_inner());
            tiers.keys().cloned().collect()
        };
        let mut tenants: Vec<TenantId> = assigned
            .into_iter()
            .chain(self.config.tenants.keys().cloned())
            .filter(|id| self.profile(id).tier == Some(tier))
            .collect();
        tenants.sort();
        tenants.dedup();
        tenants
    }

    /// The agent profile `tenant`'s sandbox runs now.
    pub fn agent(&self, tenant: &TenantId) -> &agent::Agent {
        let name = self.profile(tenant).agent_name;
        self.agents
            .get(name)
            .or_else(|| self.agents.get(DEFAULT_AGENT))
            .expect("the gateway is made with every profile of its config")
    }

    /// A number no earlier sandbox of this deployment had.
    pub fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed)
    }

    /// Keeps every later generation above `taken` (a sandbox taken over from an
    /// earlier gateway, whose clock may have run ahead of this one's).
    pub fn generation_taken(&self, taken: u64) {
        self.generations.fetch_max(taken + 1, Ordering::Relaxed);
    }

    /// Milliseconds since `epoch`, for activity clocks.
    pub fn mono_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// Wall-clock milliseconds since the Unix epoch, for records and events.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Sleeps until `deadline`, or forever when there is none (for `select!` arms).
pub(crate) async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A running sandbox as the sync engine's freeze.
pub struct SandboxFreeze {
    pub runtime: Arc<dyn Runtime>,
    pub sandbox: Sandbox,
}

impl Freeze for SandboxFreeze {
    fn freeze(&self) -> std::io::Result<()> {
        self.runtime
            .freeze(&self.sandbox)
            .map_err(std::io::Error::other)
    }

    fn thaw(&self) {
        self.runtime.thaw(&self.sandbox)
    }
}
