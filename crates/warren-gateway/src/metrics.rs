//! What `/metrics` shows, in the OpenMetrics text format Prometheus scrapes.
//!
//! Every start of a sandbox is measured phase by phase: `admission` (waiting for a
//! slot), `restore` (the workspace from the store), `create` (the runtime makes the
//! sandbox), `boot` (until the agent answers its readiness probe) and `first_byte`
//! (from ready until the first byte of the answer to the request that waited). Beside
//! them: stops by cause, admission, requests and WebSockets by route class and status,
//! bytes proxied, syncs, snapshot sizes, sync lag, sweeps and rate-limit rejections,
//! counted as they happen; and, read from the gateway at each scrape ([`scrape`]),
//! tenants known, sandboxes by state, the admission queue, open WebSockets and the
//! largest sync lag of a running sandbox. `docs/monitoring.md` lists them all.
//!
//! Every label takes a value from a short fixed list (no tenant id, no path), so the
//! number of series stays the same however many tenants there are. The route wants
//! the admin token (`Authorization: Bearer`), like the admin API.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use warren_core::TenantId;
use warren_core::sandbox::{SandboxState, StopCause};
use warren_store::engine::SyncObserver;
use warren_store::{StoreError, SyncReport};

use crate::admission::AdmissionError;
use crate::edge::Edge;
use crate::tenant::StartPhases;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    class: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxiedLabels {
    protocol: &'static str,
    direction: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// From 1 ms to about 65 s, doubling: a start of a few milliseconds and an agent that
/// boots for a minute both land in a bucket of their own size.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Sync lag: the RPO target (1 s) in the middle, a store outage of minutes at the top.
fn lag_seconds() -> Histogram {
    Histogram::new([
        0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    ])
}

/// From 4 KiB to 16 GiB, by fours.
fn bytes() -> Histogram {
    Histogram::new(exponential_buckets(4096.0, 4.0, 12))
}

/// What a route belongs to, for `warren_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteClass {
    /// `/healthz`, `/readyz`.
    Health,
    /// `/admin/...` and `/metrics`.
    Admin,
    /// A WebSocket upgrade to any other path.
    Ws,
    /// `/api/...` (the gateway's own and the agent's) and `/ws/api/history`.
    Api,
    /// Every other path, proxied to the agent.
    Proxy,
}

impl RouteClass {
    pub fn of(path: &str, upgrade: bool) -> Self {
        match path {
            "/healthz" | "/readyz" => Self::Health,
            "/metrics" => Self::Admin,
            p if p == "/admin" || p.starts_with("/admin/") => Self::Admin,
            _ if upgrade => Self::Ws,
            "/ws/api/history" => Self::Api,
            p if p.starts_with("/api/") => Self::Api,
            _ => Self::Proxy,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Health => "health",
            Self::Admin => "admin",
            Self::Ws => "ws",
            Self::Api => "api",
            Self::Proxy => "proxy",
        }
    }
}

/// `2xx` and the like: the status label.
fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "other",
    }
}

/// Which way proxied bytes went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ToAgent,
    ToClient,
}

/// What carried proxied bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Request and response bodies.
    Http,
    /// A relayed WebSocket, frames and all.
    WebSocket,
}

pub struct Metrics {
    registry: Registry,
    start_phase: Histograms<PhaseLabel>,
    start: Histogram,
    starts: Family<OutcomeLabel, Counter>,
    stops: Family<CauseLabel, Counter>,
    admission_wait: Histogram,
    admission_rejections: Family<ReasonLabel, Counter>,
    requests: Family<RequestLabels, Counter>,
    proxied: Family<ProxiedLabels, Counter>,
    syncs: Family<OutcomeLabel, Counter>,
    snapshot_bytes: Histogram,
    snapshot_uploaded_bytes: Histogram,
    sync_lag: Histogram,
    sweeps: Family<OutcomeLabel, Counter>,
    rate_limited: Family<LimitLabel, Counter>,
    // Read from the gateway at each scrape.
    tenants_known: Gauge,
    sandboxes: Family<StateLabel, Gauge>,
    admission_queue: Gauge,
    slots_used: Gauge,
    slots: Gauge,
    websockets_open: Gauge,
    sync_lag_max: Gauge<f64, AtomicU64>,
}

/// The outcomes of a sweep: every tenant synced, some failed, or the sweep itself did.
const SWEEP_OUTCOMES: [&str; 3] = ["ok", "partial", "failed"];
const SYNC_OUTCOMES: [&str; 3] = ["created", "unchanged", "failed"];
const STATES: [SandboxState; 4] = [
    SandboxState::Asleep,
    SandboxState::Starting,
    SandboxState::Ready,
    SandboxState::Stopping,
];

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("warren");
        let start_phase = Histograms::<PhaseLabel>::new_with_constructor(seconds as fn() -> _);
        registry.register(
            "start_phase_seconds",
            "How long each phase of a sandbox start took",
            start_phase.clone(),
        );
        let start = seconds();
        registry.register(
            "start_seconds",
            "How long a sandbox start took, from the request until the agent was ready",
            start.clone(),
        );
        let starts = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "starts",
            "Sandbox starts, by outcome (ready, failed)",
            starts.clone(),
        );
        let stops = Family::<CauseLabel, Counter>::default();
        registry.register(
            "stops",
            "Sandboxes that stopped after they were ready, by cause (idle, eviction, crash, oom, admin, shutdown)",
            stops.clone(),
        );
        let admission_wait = seconds();
        registry.register(
            "admission_wait_seconds",
            "How long a start waited for a slot, whether it got one or not",
            admission_wait.clone(),
        );
        let admission_rejections = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "admission_rejections",
            "Starts refused for capacity (503 capacity_exhausted), by reason (queue_full, timeout)",
            admission_rejections.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route class (health, admin, api, ws, proxy) and status class (2xx...); a WebSocket upgrade counts once, as its answer (101 is 1xx)",
            requests.clone(),
        );
        let proxied = Family::<ProxiedLabels, Counter>::default();
        registry.register(
            "proxied_bytes",
            "Bytes carried between clients and agents, by protocol (http bodies, websocket frames) and direction (to_agent, to_client)",
            proxied.clone(),
        );
        let syncs = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "syncs",
            "Captures of a workspace, by outcome (created: a new snapshot, unchanged, failed)",
            syncs.clone(),
        );
        let snapshot_bytes = bytes();
        registry.register(
            "snapshot_bytes",
            "The size of the workspace in each new snapshot",
            snapshot_bytes.clone(),
        );
        let snapshot_uploaded_bytes = bytes();
        registry.register(
            "snapshot_uploaded_bytes",
            "Bytes uploaded to the store for each new snapshot (chunks it did not hold yet)",
            snapshot_uploaded_bytes.clone(),
        );
        let sync_lag = lag_seconds();
        registry.register(
            "sync_lag_seconds",
            "For each sync of a running sandbox's changes: from the first change until it was in the store",
            sync_lag.clone(),
        );
        let sweeps = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "sweeps",
            "Sweeps run, by outcome (ok, partial: some tenants failed to sync, failed)",
            sweeps.clone(),
        );
        let rate_limited = Family::<LimitLabel, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by limit",
            rate_limited.clone(),
        );
        let tenants_known = Gauge::default();
        registry.register(
            "tenants_known",
            "Tenants this gateway knows: those with a tenant actor here or a sandbox row in the state store",
            tenants_known.clone(),
        );
        let sandboxes = Family::<StateLabel, Gauge>::default();
        registry.register(
            "sandboxes",
            "Known tenants by the state of their sandbox on this gateway (asleep, starting, ready, stopping)",
            sandboxes.clone(),
        );
        let admission_queue = Gauge::default();
        registry.register(
            "admission_queue_length",
            "Starts waiting for a slot now",
            admission_queue.clone(),
        );
        let slots_used = Gauge::default();
        registry.register(
            "admission_slots_used",
            "Sandbox slots held now (running, starting or stopping sandboxes)",
            slots_used.clone(),
        );
        let slots = Gauge::default();
        registry.register(
            "admission_slots",
            "Sandbox slots in all (max_instances)",
            slots.clone(),
        );
        let websockets_open = Gauge::default();
        registry.register(
            "websockets_open",
            "WebSockets being relayed now",
            websockets_open.clone(),
        );
        let sync_lag_max = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "sync_lag_max_seconds",
            "The oldest change of a running sandbox's workspace not yet in the store, in seconds (0: every running workspace is in the store)",
            sync_lag_max.clone(),
        );
        // Every series an alert may look for exists from the start, at zero.
        for outcome in ["ready", "failed"] {
            let _ = starts.get_or_create(&OutcomeLabel { outcome });
        }
        for cause in StopCause::ALL {
            if cause != StopCause::StartFailed {
                let _ = stops.get_or_create(&CauseLabel {
                    cause: cause.as_str(),
                });
            }
        }
        for reason in ["queue_full", "timeout"] {
            let _ = admission_rejections.get_or_create(&ReasonLabel { reason });
        }
        for outcome in SYNC_OUTCOMES {
            let _ = syncs.get_or_create(&OutcomeLabel { outcome });
        }
        for outcome in SWEEP_OUTCOMES {
            let _ = sweeps.get_or_create(&OutcomeLabel { outcome });
        }
        for state in STATES {
            let _ = sandboxes.get_or_create(&StateLabel {
                state: state.as_str(),
            });
        }
        Self {
            registry,
            start_phase,
            start,
            starts,
            stops,
            admission_wait,
            admission_rejections,
            requests,
            proxied,
            syncs,
            snapshot_bytes,
            snapshot_uploaded_bytes,
            sync_lag,
            sweeps,
            rate_limited,
            tenants_known,
            sandboxes,
            admission_queue,
            slots_used,
            slots,
            websockets_open,
            sync_lag_max,
        }
    }
}

impl Metrics {
    /// A start that ended with the agent ready.
    pub fn started(&self, phases: &StartPhases) {
        for (phase, took) in [
            ("admission", phases.admission),
            ("restore", phases.restore),
            ("create", phases.create),
            ("boot", phases.boot),
        ] {
            self.phase(phase, took);
        }
        self.start.observe(phases.total().as_secs_f64());
        self.outcome("ready");
    }

    /// A start that failed.
    pub fn start_failed(&self) {
        self.outcome("failed");
    }

    /// From ready to the first byte of the answer to the request that waited.
    pub fn first_byte(&self, took: Duration) {
        self.phase("first_byte", took);
    }

    fn phase(&self, phase: &'static str, took: Duration) {
        self.start_phase
            .get_or_create(&PhaseLabel { phase })
            .observe(took.as_secs_f64());
    }

    fn outcome(&self, outcome: &'static str) {
        self.starts.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// A sandbox that was ready has stopped.
    pub fn stopped(&self, cause: StopCause) {
        let cause = cause.as_str();
        self.stops.get_or_create(&CauseLabel { cause }).inc();
    }

    /// A start's wait for a slot ended, with one or without (`Err`).
    pub fn admitted(&self, waited: Duration, outcome: Result<(), AdmissionError>) {
        self.admission_wait.observe(waited.as_secs_f64());
        if let Err(e) = outcome {
            let reason = match e {
                AdmissionError::QueueFull => "queue_full",
                AdmissionError::Timeout => "timeout",
            };
            self.admission_rejections
                .get_or_create(&ReasonLabel { reason })
                .inc();
        }
    }

    /// A request was answered with `status`.
    pub fn request(&self, class: RouteClass, status: StatusCode) {
        let labels = RequestLabels {
            class: class.as_str(),
            status: status_class(status),
        };
        self.requests.get_or_create(&labels).inc();
    }

    /// The counter of bytes carried by `protocol` towards `direction`, to keep beside
    /// a body or a relay and add to as bytes pass.
    pub fn proxied_bytes(&self, protocol: Protocol, direction: Direction) -> Counter {
        let labels = ProxiedLabels {
            protocol: match protocol {
                Protocol::Http => "http",
                Protocol::WebSocket => "websocket",
            },
            direction: match direction {
                Direction::ToAgent => "to_agent",
                Direction::ToClient => "to_client",
            },
        };
        self.proxied.get_or_create_owned(&labels)
    }

    /// A sweep ended: `Ok` with how many tenants failed to sync, or the sweep failed.
    pub fn swept<E>(&self, result: &Result<usize, E>) {
        let outcome = match result {
            Ok(0) => "ok",
            Ok(_) => "partial",
            Err(_) => "failed",
        };
        self.sweeps.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// A request refused by the rate limit named `limit` (a short fixed name, such
    /// as `requests` or `starts`: it becomes a label value).
    pub fn rate_limited(&self, limit: &'static str) {
        self.rate_limited.get_or_create(&LimitLabel { limit }).inc();
    }

    /// The text `/metrics` answers with, the values read at scrape time set from
    /// `now`.
    pub fn render(&self, now: &Census) -> String {
        self.tenants_known.set(now.tenants_known as i64);
        for (state, n) in STATES.iter().zip(now.sandboxes) {
            self.sandboxes
                .get_or_create(&StateLabel {
                    state: state.as_str(),
                })
                .set(n as i64);
        }
        self.admission_queue.set(now.admission_queue as i64);
        self.slots_used.set(now.slots_used as i64);
        self.slots.set(now.slots as i64);
        self.websockets_open.set(now.websockets_open as i64);
        self.sync_lag_max.set(now.sync_lag_max.as_secs_f64());
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

impl SyncObserver for Metrics {
    fn synced(&self, result: &Result<SyncReport, StoreError>) {
        let outcome = match result {
            Ok(report) if report.created => {
                self.snapshot_bytes.observe(report.bytes as f64);
                self.snapshot_uploaded_bytes
                    .observe(report.bytes_uploaded as f64);
                "created"
            }
            Ok(_) => "unchanged",
            Err(_) => "failed",
        };
        self.syncs.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    fn caught_up(&self, lag: Duration) {
        self.sync_lag.observe(lag.as_secs_f64());
    }
}

/// What the gateway looks like at one moment, for the gauges of a scrape.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Census {
    pub tenants_known: usize,
    /// Asleep, starting, ready, stopping, in the order of `STATES`.
    pub sandboxes: [usize; 4],
    pub admission_queue: usize,
    pub slots_used: usize,
    pub slots: usize,
    pub websockets_open: usize,
    pub sync_lag_max: Duration,
}

/// How far behind the store a ready sandbox's workspace is at `now_ms`: since its
/// oldest change not yet synced, but no earlier than the sandbox's start (a change
/// recorded as pending before it is the last life's, settled by its final sync or
/// by the first sync of this one, within `sync.max_delay`).
fn sync_lag(now_ms: u64, ready_since_ms: u64, pending_since_ms: Option<u64>) -> Duration {
    pending_since_ms.map_or(Duration::ZERO, |pending| {
        Duration::from_millis(now_ms.saturating_sub(pending.max(ready_since_ms)))
    })
}

/// Counts tenants by state. A tenant with an actor is in its actor's state; one with
/// only a sandbox row is asleep as far as this gateway goes.
fn count(actors: &[(TenantId, SandboxState, u64)], rows: &[TenantId]) -> (usize, [usize; 4]) {
    let mut by_state = [0; 4];
    for (_, state, _) in actors {
        if let Some(i) = STATES.iter().position(|s| s == state) {
            by_state[i] += 1;
        }
    }
    let with_actor: HashSet<&TenantId> = actors.iter().map(|(t, _, _)| t).collect();
    let row_only = rows.iter().filter(|t| !with_actor.contains(t)).count();
    by_state[0] += row_only;
    (actors.len() + row_only, by_state)
}

/// The text of `/metrics`: the gauges read from `edge` now, then every metric.
pub async fn scrape(edge: &Edge) -> String {
    let ctx = &edge.ctx;
    let actors = edge.tenants.census();
    // Every tenant that ever had a sandbox here; should the state store not answer,
    // the actors alone (and the log says why).
    let rows: Vec<TenantId> = match ctx.state.sandboxes().await {
        Ok(rows) => rows.into_iter().map(|r| r.tenant).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot list sandbox rows; tenants_known counts tenant actors only");
            Vec::new()
        }
    };
    let (tenants_known, sandboxes) = count(&actors, &rows);
    let now_ms = crate::unix_ms();
    let sync_lag_max = actors
        .iter()
        .filter(|(_, state, _)| *state == SandboxState::Ready)
        .map(|(tenant, _, since_ms)| {
            sync_lag(now_ms, *since_ms, ctx.sync.status(tenant).pending_since_ms)
        })
        .max()
        .unwrap_or_default();
    let census = Census {
        tenants_known,
        sandboxes,
        admission_queue: ctx.admission.waiting(),
        slots_used: ctx.admission.running(),
        slots: ctx.config.max_instances,
        websockets_open: *ctx.relays.borrow(),
        sync_lag_max,
    };
    ctx.metrics.render(&census)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name` (labels included, as written).
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    fn tenant(id: &str) -> TenantId {
        TenantId::parse(id).unwrap()
    }

    #[test]
    fn routes_fall_in_their_class() {
        let cases = [
            ("/healthz", false, RouteClass::Health),
            ("/readyz", false, RouteClass::Health),
            ("/metrics", false, RouteClass::Admin),
            ("/admin/api/workers", false, RouteClass::Admin),
            ("/admin/api/workers", true, RouteClass::Admin),
            ("/administrator", false, RouteClass::Proxy),
            ("/ws", true, RouteClass::Ws),
            ("/api/history", true, RouteClass::Ws),
            ("/ws", false, RouteClass::Proxy),
            ("/api/status", false, RouteClass::Api),
            ("/api/history", false, RouteClass::Api),
            ("/ws/api/history", false, RouteClass::Api),
            ("/apix", false, RouteClass::Proxy),
            ("/", false, RouteClass::Proxy),
        ];
        for (path, upgrade, class) in cases {
            assert_eq!(RouteClass::of(path, upgrade), class, "{path} {upgrade}");
        }
    }

    #[test]
    fn statuses_are_counted_by_class() {
        assert_eq!(status_class(StatusCode::SWITCHING_PROTOCOLS), "1xx");
        assert_eq!(status_class(StatusCode::NO_CONTENT), "2xx");
        assert_eq!(status_class(StatusCode::UNAUTHORIZED), "4xx");
        assert_eq!(status_class(StatusCode::SERVICE_UNAVAILABLE), "5xx");
        assert_eq!(status_class(StatusCode::from_u16(999).unwrap()), "other");
    }

    #[test]
    fn sync_lag_counts_from_the_oldest_change_of_this_life() {
        assert_eq!(sync_lag(10_000, 1_000, None), Duration::ZERO);
        assert_eq!(
            sync_lag(10_000, 1_000, Some(7_500)),
            Duration::from_millis(2_500)
        );
        // Pending since before this sandbox started: counted from its start.
        assert_eq!(
            sync_lag(10_000, 8_000, Some(500)),
            Duration::from_millis(2_000)
        );
        // A clock that stepped back reads as no lag, not a huge one.
        assert_eq!(sync_lag(1_000, 500, Some(2_000)), Duration::ZERO);
    }

    #[test]
    fn tenants_are_counted_once_whether_they_have_an_actor_a_row_or_both() {
        let actors = [
            (tenant("a"), SandboxState::Ready, 0),
            (tenant("b"), SandboxState::Asleep, 0),
            (tenant("c"), SandboxState::Starting, 0),
        ];
        let rows = [tenant("a"), tenant("b"), tenant("d"), tenant("e")];
        let (known, by_state) = count(&actors, &rows);
        assert_eq!(known, 5);
        assert_eq!(by_state, [3, 1, 1, 0]);
        assert_eq!(by_state.iter().sum::<usize>(), known);
        assert_eq!(count(&[], &[]), (0, [0; 4]));
    }

    #[test]
    fn every_series_an_alert_needs_is_there_before_anything_happens() {
        let text = Metrics::default().render(&Census {
            slots: 10,
            ..Census::default()
        });
        for name in [
            "warren_starts_total{outcome=\"failed\"}",
            "warren_stops_total{cause=\"crash\"}",
            "warren_stops_total{cause=\"oom\"}",
            "warren_admission_rejections_total{reason=\"queue_full\"}",
            "warren_syncs_total{outcome=\"failed\"}",
            "warren_sweeps_total{outcome=\"failed\"}",
            "warren_sandboxes{state=\"ready\"}",
            "warren_admission_queue_length",
            "warren_sync_lag_max_seconds",
        ] {
            assert_eq!(sample(&text, name), Some(0.0), "{name}: {text}");
        }
        assert_eq!(sample(&text, "warren_admission_slots"), Some(10.0));
        assert!(!text.contains("start_failed"), "{text}");
    }

    #[test]
    fn what_happens_moves_its_metric() {
        let m = Metrics::default();
        m.stopped(StopCause::Idle);
        m.stopped(StopCause::Idle);
        m.admitted(Duration::from_millis(3), Ok(()));
        m.admitted(Duration::from_secs(2), Err(AdmissionError::Timeout));
        m.request(RouteClass::Ws, StatusCode::SWITCHING_PROTOCOLS);
        m.request(RouteClass::Proxy, StatusCode::UNAUTHORIZED);
        m.proxied_bytes(Protocol::WebSocket, Direction::ToClient)
            .inc_by(100);
        m.proxied_bytes(Protocol::WebSocket, Direction::ToClient)
            .inc_by(23);
        m.synced(&Ok(SyncReport {
            created: true,
            bytes: 10_000,
            bytes_uploaded: 5_000,
            ..SyncReport::default()
        }));
        m.synced(&Ok(SyncReport::default()));
        m.synced(&Err(StoreError::NotFound("x".into())));
        m.caught_up(Duration::from_millis(300));
        m.swept::<()>(&Ok(0));
        m.swept::<()>(&Ok(2));
        m.rate_limited("requests");
        let census = Census {
            tenants_known: 3,
            sandboxes: [1, 0, 2, 0],
            sync_lag_max: Duration::from_millis(1500),
            ..Census::default()
        };
        let text = m.render(&census);
        for (name, value) in [
            ("warren_stops_total{cause=\"idle\"}", 2.0),
            ("warren_stops_total{cause=\"eviction\"}", 0.0),
            ("warren_admission_wait_seconds_count", 2.0),
            ("warren_admission_rejections_total{reason=\"timeout\"}", 1.0),
            ("warren_requests_total{class=\"ws\",status=\"1xx\"}", 1.0),
            ("warren_requests_total{class=\"proxy\",status=\"4xx\"}", 1.0),
            (
                "warren_proxied_bytes_total{protocol=\"websocket\",direction=\"to_client\"}",
                123.0,
            ),
            ("warren_syncs_total{outcome=\"created\"}", 1.0),
            ("warren_syncs_total{outcome=\"unchanged\"}", 1.0),
            ("warren_syncs_total{outcome=\"failed\"}", 1.0),
            ("warren_snapshot_bytes_sum", 10_000.0),
            ("warren_snapshot_uploaded_bytes_sum", 5_000.0),
            ("warren_sync_lag_seconds_count", 1.0),
            ("warren_sync_lag_seconds_bucket{le=\"0.25\"}", 0.0),
            ("warren_sync_lag_seconds_bucket{le=\"0.5\"}", 1.0),
            ("warren_sweeps_total{outcome=\"ok\"}", 1.0),
            ("warren_sweeps_total{outcome=\"partial\"}", 1.0),
            ("warren_rate_limited_total{limit=\"requests\"}", 1.0),
            ("warren_tenants_known", 3.0),
            ("warren_sandboxes{state=\"asleep\"}", 1.0),
            ("warren_sandboxes{state=\"ready\"}", 2.0),
            ("warren_sync_lag_max_seconds", 1.5),
        ] {
            assert_eq!(sample(&text, name), Some(value), "{name}: {text}");
        }
    }
}
