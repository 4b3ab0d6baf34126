//! What `/metrics` shows, in the OpenMetrics text format Prometheus scrapes.
//!
//! Every start of a sandbox is measured phase by phase: `admission` (waiting for a
//! slot), `restore` (the workspace from the store), `create` (the runtime makes the
//! sandbox), `boot` (until the agent answers its readiness probe) and `first_byte`
//! (from ready until the first byte of the answer to the request that waited). The
//! route wants the admin token (`Authorization: Bearer`), like the admin API.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::tenant::StartPhases;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// From 1 ms to about 65 s, doubling: a start of a few milliseconds and an agent that
/// boots for a minute both land in a bucket of their own size.
fn seconds() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 17,
    ))
}

pub struct Metrics {
    registry: Registry,
    start_phase: Histograms<PhaseLabel>,
    start: Histogram,
    starts: Family<OutcomeLabel, Counter>,
}

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
        Self {
            registry,
            start_phase,
            start,
            starts,
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

    /// The text `/metrics` answers with.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
