//! The state store: what warren knows about tenants and their sandboxes, durably.
//!
//! Every sandbox transition is written as the tenant's current sandbox row and, in the
//! same transaction, as an event with a timestamp, so the event log and the current
//! state never disagree. `StateStore` is the trait; `sqlite` is the embedded backend.
//! Every backend must pass `conformance::run`.

use async_trait::async_trait;
use warren_core::TenantId;
use warren_core::sandbox::{SandboxState, StopCause};

pub mod conformance;
pub mod sqlite;

pub use sqlite::SqliteStore;

/// What identifies a running sandbox to its runtime: enough to find it again after
/// the gateway restarts, and to tell it from an unrelated process that reused its pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxIdentity {
    /// Counts the tenant's starts; a late exit notice for an old generation is ignored.
    pub generation: u64,
    pub pid: Option<u32>,
    /// The process start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub pid_start_ticks: Option<u64>,
    /// Where the agent listens.
    pub address: Option<String>,
    /// The container's id, for a container runtime.
    pub container: Option<String>,
    /// When it was last in use (ms since the Unix epoch), as a gateway that left it
    /// running for the next one recorded: the next one's idle clock goes on from there.
    pub last_active_ms: Option<u64>,
}

/// One change of a tenant's sandbox state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub tenant: TenantId,
    pub state: SandboxState,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Why the sandbox stopped (for `Stopping` and `Asleep`).
    pub cause: Option<StopCause>,
    /// The sandbox, once one exists.
    pub identity: Option<SandboxIdentity>,
    /// Free text for operators: an exit status, a start error, how long a start took.
    /// The event keeps it; the sandbox row keeps only a stop's (with its cause).
    pub detail: Option<String>,
}

/// The current row of a tenant's sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRecord {
    pub tenant: TenantId,
    pub state: SandboxState,
    pub since_ms: u64,
    pub identity: Option<SandboxIdentity>,
    pub last_stop: Option<(StopCause, u64)>,
    pub detail: Option<String>,
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: i64,
    pub at_ms: u64,
    pub tenant: TenantId,
    pub state: SandboxState,
    pub cause: Option<StopCause>,
    pub detail: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store: {0}")]
    Backend(String),
    #[error("state store holds an unreadable row: {0}")]
    Corrupt(String),
}

#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Records a transition: the sandbox row and an event, atomically.
    async fn record(&self, transition: &Transition) -> Result<(), StateError>;

    /// Attaches `identity` to the tenant's current row, its state unchanged and no
    /// event added: a sandbox that exists but is not ready yet, findable if the
    /// gateway dies before it is.
    async fn identify(
        &self,
        tenant: &TenantId,
        identity: &SandboxIdentity,
    ) -> Result<(), StateError>;

    /// The tenant's current sandbox row, if it ever had one.
    async fn sandbox(&self, tenant: &TenantId) -> Result<Option<SandboxRecord>, StateError>;

    /// Every sandbox row whose state is not `Asleep`, by tenant id.
    async fn live_sandboxes(&self) -> Result<Vec<SandboxRecord>, StateError>;

    /// Every sandbox row, asleep or not, by tenant id: every tenant that ever had a
    /// sandbox on this state store.
    async fn sandboxes(&self) -> Result<Vec<SandboxRecord>, StateError>;

    /// The most recent events, newest first, for one tenant or all.
    async fn events(
        &self,
        tenant: Option<&TenantId>,
        limit: usize,
    ) -> Result<Vec<Event>, StateError>;

    /// Replaces the detail of the tenant's latest event in `state` whose detail is
    /// `from` (a start's, once its first answer is known to have taken so long; a later
    /// event in the same state, with another detail, is left alone).
    async fn amend_event(
        &self,
        tenant: &TenantId,
        state: SandboxState,
        from: &str,
        to: &str,
    ) -> Result<(), StateError>;

    /// Puts `tenant` in `tier` (an operator's choice, over the config's), or with
    /// `None` takes that choice back.
    async fn set_tier(&self, tenant: &TenantId, tier: Option<&str>) -> Result<(), StateError>;

    /// Every tenant an operator put in a tier, with the tier, by tenant id.
    async fn tiers(&self) -> Result<Vec<(TenantId, String)>, StateError>;
}
