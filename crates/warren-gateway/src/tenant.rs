//! Tenant actors: exactly one per tenant owns its sandbox's lifecycle.
//!
//! The actor is a task with a mailbox. It starts the sandbox on the first `Acquire`
//! (later ones wait with it, none is dropped), keeps it while requests or WebSockets
//! are open, stops it after `sleep_after` idle or when admission evicts it, notices
//! when it exits by itself, and records every transition in the state store. Because
//! one task decides every start and stop, a tenant never has two sandboxes at once.
//!
//! The workspace is durable around that life: a start first restores it from the store
//! if the store is newer (`SyncEngine::prepare`), a running sandbox is watched and
//! synced as it changes, and every stop (idle, eviction, crash, shutdown, admin) ends
//! with a final sync once the process is gone, before the tenant is recorded asleep.
//!
//! Activity is counted without the mailbox: a `Lease` (one per proxied request or
//! WebSocket) bumps counters in `Shared` and touches the activity clock when dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use warren_core::config::NetworkAccess;
use warren_core::duration::SleepAfter;
use warren_core::sandbox::{SandboxState, StopCause};
use warren_core::{ErrorCode, TenantId};
use warren_runtime::cgroup::Limits;
use warren_runtime::{Exit, Network, Sandbox, SandboxSpec};
use warren_state::{SandboxIdentity, SandboxRecord, Transition};
use warren_store::engine::Watch;
use warren_store::{Freeze, SyncStatus};

use crate::admission::{AdmissionError, Slot};
use crate::error::ApiError;
use crate::upstream::Upstream;
use crate::{Context, SandboxFreeze, probe, sleep_until_opt, unix_ms};

/// What `/api/status` shows of a tenant's sandbox.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub tenant: String,
    pub state: SandboxState,
    /// When the sandbox entered `state`, in milliseconds since the Unix epoch.
    pub since_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_stop: Option<LastStop>,
    /// The tenant's tier, if it has one.
    pub tier: Option<String>,
    /// The size the tenant's sandbox gets.
    pub instance_type: String,
    /// What its network reaches: `none` (loopback only) or `outbound`.
    pub network: NetworkAccess,
    /// The agent profile it runs (`default`: `[agent]`).
    pub agent: String,
    /// How the workspace stands with the store.
    pub sync: SyncStatus,
    /// While starting: the phase the start is in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<StartProgress>,
}

impl Status {
    /// A tenant's status with nothing known of its sandbox yet.
    fn asleep(ctx: &Context, tenant: &TenantId, since_ms: u64) -> Self {
        let mut status = Status {
            tenant: tenant.to_string(),
            state: SandboxState::Asleep,
            since_ms,
            last_stop: None,
            tier: None,
            instance_type: String::new(),
            network: NetworkAccess::None,
            agent: String::new(),
            sync: ctx.sync.status(tenant),
            phase: None,
        };
        status.profile(ctx, tenant);
        status
    }

    /// Fills in what the tenant's sandbox gets as of now (an operator may have moved
    /// the tenant to another tier since it started).
    fn profile(&mut self, ctx: &Context, tenant: &TenantId) {
        let profile = ctx.profile(tenant);
        self.tier = profile.tier.map(str::to_owned);
        profile.instance_type.clone_into(&mut self.instance_type);
        self.network = profile.network;
        profile.agent_name.clone_into(&mut self.agent);
    }
}

/// Where a start is: `admission` (waiting for a slot), `restore` (the workspace from
/// the store), `create` (the runtime makes the sandbox), `boot` (until the agent
/// answers its readiness probe).
#[derive(Debug, Clone, Serialize)]
pub struct StartProgress {
    pub name: &'static str,
    /// When the phase began, ms since the Unix epoch.
    pub since_ms: u64,
    /// How long the whole start has taken so far, as of the answer.
    pub elapsed_ms: u64,
    /// When the start began, ms since the Unix epoch.
    #[serde(skip)]
    pub started_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastStop {
    pub cause: StopCause,
    pub at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// How long each phase of a start took (all zero for a sandbox taken over from an
/// earlier gateway).
#[derive(Debug, Clone, Copy, Default)]
pub struct StartPhases {
    pub admission: Duration,
    pub restore: Duration,
    pub create: Duration,
    pub boot: Duration,
}

impl StartPhases {
    pub fn total(&self) -> Duration {
        self.admission + self.restore + self.create + self.boot
    }

    /// For the start's event: `start 12.3 ms: admission 0.1 ms, restore 2.0 ms, ...`.
    pub fn describe(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "start {:.1} ms: admission {:.1} ms, restore {:.1} ms, create {:.1} ms, boot {:.1} ms",
            ms(self.total()),
            ms(self.admission),
            ms(self.restore),
            ms(self.create),
            ms(self.boot)
        )
    }

    /// The value of a `Server-Timing` header.
    pub fn server_timing(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "admission;dur={:.3}, restore;dur={:.3}, create;dur={:.3}, boot;dur={:.3}",
            ms(self.admission),
            ms(self.restore),
            ms(self.create),
            ms(self.boot)
        )
    }
}

/// A ready sandbox, handed to one request.
pub struct Ready {
    pub upstream: Upstream,
    pub lease: Lease,
    /// Set when this request waited for the start.
    pub phases: Option<StartPhases>,
    /// Set for the first request that waited: when the sandbox became ready, to
    /// measure the start's last phase, the first byte of the answer.
    pub first_byte_from: Option<Instant>,
}

type ReadyReply = oneshot::Sender<Result<Ready, ApiError>>;

struct Started {
    sandbox: Sandbox,
    upstream: Upstream,
    slot: Slot,
    phases: StartPhases,
}

enum Command {
    Acquire(ReadyReply),
    /// From admission: stop if idle; answers whether the slot was freed.
    Evict(oneshot::Sender<bool>),
    /// Stop now, whatever is open; answers once the sandbox is gone and synced.
    Stop(StopCause, oneshot::Sender<()>),
    /// Do not start again until the guard is dropped (an operator's restore).
    Hold(oneshot::Sender<Result<HoldGuard, ApiError>>, bool),
    Started(u64, Box<Result<Started, ApiError>>),
    /// Take over a sandbox an earlier gateway started.
    Adopt(Box<Sandbox>, Option<u64>, oneshot::Sender<()>),
    /// The gateway goes and leaves a running sandbox to the next one: sync it one
    /// last time and let go of it, and the actor ends; one still starting is stopped.
    Leave(oneshot::Sender<()>),
    Exited(u64, Exit),
    Stopped(u64, String, u64),
    Released,
    /// The tenant's settings changed (its tier): look at idleness again.
    Reconsider,
}

/// The part of a tenant every request can read without asking the actor.
pub struct Shared {
    tenant: TenantId,
    ctx: Arc<Context>,
    in_flight: AtomicUsize,
    last_active_ms: AtomicU64,
    status: watch::Sender<Status>,
    /// The running sandbox, for requests that find it ready and a sweep that must
    /// freeze it.
    sandbox: Mutex<Option<(Sandbox, Upstream)>>,
    /// True while requests may go straight to the sandbox without the mailbox. A
    /// request raises `in_flight` and then reads this; the actor clears this and then
    /// reads `in_flight` before an idle stop (both SeqCst), so one of them always sees
    /// the other and a request never lands on a sandbox being put to sleep.
    ready: AtomicBool,
}

impl Shared {
    fn touch(&self) {
        self.last_active_ms
            .store(self.ctx.mono_ms(), Ordering::Relaxed);
    }
}

/// Holds a sandbox awake while a request or WebSocket is open.
pub struct Lease {
    shared: Arc<Shared>,
    /// Kept until the lease ends (a WebSocket's place under its tenant's cap).
    rider: Option<Box<dyn Send + Sync>>,
}

impl Lease {
    fn new(shared: Arc<Shared>) -> Self {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        shared.touch();
        Self {
            shared,
            rider: None,
        }
    }

    /// Keeps `rider` until the lease ends, however the request or relay ends.
    pub fn carry(&mut self, rider: impl Send + Sync + 'static) {
        self.rider = Some(Box::new(rider));
    }

    /// Records activity (a WebSocket message) without opening a new lease.
    pub fn touch(&self) {
        self.shared.touch();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shared.touch();
        if self.shared.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            // The sandbox just became idle: a queued start may evict it.
            self.shared.ctx.admission.changed();
        }
    }
}

/// Keeps a tenant's sandbox from starting while an operator works on its workspace.
pub struct HoldGuard {
    tx: mpsc::UnboundedSender<Command>,
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Released);
    }
}

/// A cheap, clonable address of a tenant's actor.
#[derive(Clone)]
pub struct TenantHandle {
    tx: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
}

impl TenantHandle {
    pub fn tenant(&self) -> &TenantId {
        &self.shared.tenant
    }

    pub fn status(&self) -> Status {
        let mut status = self.shared.status.borrow().clone();
        status.sync = self.shared.ctx.sync.status(&self.shared.tenant);
        status.profile(&self.shared.ctx, &self.shared.tenant);
        if let Some(phase) = status.phase.as_mut() {
            phase.elapsed_ms = unix_ms().saturating_sub(phase.started_ms);
        }
        status
    }

    /// Shows in the status that a start begun at `started_ms` has entered phase `name`.
    fn enter_phase(&self, name: &'static str, started_ms: u64) {
        self.shared.status.send_modify(|s| {
            s.phase = Some(StartProgress {
                name,
                since_ms: unix_ms(),
                elapsed_ms: 0,
                started_ms,
            })
        });
    }

    /// Starting, ready or stopping: not asleep.
    pub fn is_running(&self) -> bool {
        self.shared.status.borrow().state != SandboxState::Asleep
    }

    /// Ready, with nothing in flight: a candidate for eviction.
    pub fn is_idle(&self) -> bool {
        self.shared.in_flight.load(Ordering::SeqCst) == 0
            && self.shared.status.borrow().state == SandboxState::Ready
    }

    pub fn last_active_ms(&self) -> u64 {
        self.shared.last_active_ms.load(Ordering::Relaxed)
    }

    /// The running sandbox (ready, or past its creation in a start), if any.
    pub fn sandbox(&self) -> Option<Sandbox> {
        let running = self.shared.sandbox.lock();
        let running = running.unwrap_or_else(|e| e.into_inner());
        running.as_ref().map(|(sandbox, _)| sandbox.clone())
    }

    /// The admission priority of the tenant's tier.
    pub fn priority(&self) -> u32 {
        self.shared.ctx.profile(&self.shared.tenant).priority
    }

    /// Whether admission may evict this sandbox (when idle) for a start of `priority`:
    /// a kept-warm sandbox only goes for a start of its own tier's priority or higher.
    pub fn evictable_for(&self, priority: u32) -> bool {
        let profile = self.shared.ctx.profile(&self.shared.tenant);
        !profile.keep_warm() || profile.priority <= priority
    }

    /// The freeze of the running sandbox, if one runs.
    pub fn freeze(&self) -> Option<Arc<dyn Freeze>> {
        let (sandbox, _) = self
            .shared
            .sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        Some(Arc::new(SandboxFreeze {
            runtime: self.shared.ctx.runtime.clone(),
            sandbox,
        }))
    }

    /// Waits until the sandbox is ready (starting it if needed) and leases it.
    pub async fn acquire(&self) -> Result<Ready, ApiError> {
        // The common case, a ready sandbox, needs no round trip through the actor.
        if let Some(ready) = self.ready_now() {
            return Ok(ready);
        }
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Acquire(reply)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Tells the actor the tenant's settings changed.
    pub fn reconsider(&self) {
        let _ = self.tx.send(Command::Reconsider);
    }

    /// Leases the sandbox if it is ready now; never starts one.
    pub fn ready_now(&self) -> Option<Ready> {
        let lease = Lease::new(self.shared.clone());
        if !self.shared.ready.load(Ordering::SeqCst) {
            return None;
        }
        let sandbox = self
            .shared
            .sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (_, upstream) = sandbox.as_ref()?;
        Some(Ready {
            upstream: upstream.clone(),
            lease,
            phases: None,
            first_byte_from: None,
        })
    }

    pub(crate) async fn evict(&self) -> bool {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Evict(reply)).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Leaves a running sandbox to the next gateway (see `Command::Leave`).
    pub async fn leave(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Leave(reply)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Stops the sandbox (if one runs) and waits until it is gone and synced.
    pub async fn stop(&self, cause: StopCause) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Stop(cause, reply)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Keeps the sandbox from starting until the guard drops. With `stop`, a running
    /// sandbox is stopped (and synced) first; without, a running one is refused.
    pub async fn hold(&self, stop: bool) -> Result<HoldGuard, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Hold(reply, stop))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

fn gone() -> ApiError {
    ApiError::new(ErrorCode::ShuttingDown, "the gateway is shutting down").retry_after(1)
}

/// Every tenant actor of this gateway.
pub struct Tenants {
    ctx: Arc<Context>,
    actors: Mutex<HashMap<TenantId, TenantHandle>>,
}

impl Tenants {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            actors: Mutex::new(HashMap::new()),
        }
    }

    fn actors(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, TenantHandle>> {
        self.actors.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tenant's actor, spawned on first use.
    pub fn handle(&self, tenant: &TenantId) -> TenantHandle {
        let mut actors = self.actors();
        if let Some(handle) = actors.get(tenant) {
            return handle.clone();
        }
        let handle = spawn_actor(self.ctx.clone(), tenant.clone());
        actors.insert(tenant.clone(), handle.clone());
        handle
    }

    /// Takes over a sandbox an earlier gateway started and left running.
    /// Answers once it is ready (or could not be taken).
    pub fn adopt(&self, sandbox: Sandbox, last_active_ms: Option<u64>) -> oneshot::Receiver<()> {
        let handle = self.handle(&sandbox.tenant);
        let (done, adopted) = oneshot::channel();
        let _ = handle
            .tx
            .send(Command::Adopt(Box::new(sandbox), last_active_ms, done));
        adopted
    }

    /// Every tenant that has an actor on this gateway, by tenant id.
    pub fn handles(&self) -> Vec<TenantHandle> {
        let mut handles: Vec<_> = self.actors().values().cloned().collect();
        handles.sort_by(|a, b| a.tenant().cmp(b.tenant()));
        handles
    }

    /// Whether this gateway has an actor for the tenant.
    pub fn has_actor(&self, tenant: &TenantId) -> bool {
        self.actors().contains_key(tenant)
    }

    /// The freeze of a tenant's running sandbox, if one runs.
    pub fn freeze(&self, tenant: &TenantId) -> Option<Arc<dyn Freeze>> {
        self.actors().get(tenant).and_then(TenantHandle::freeze)
    }

    /// The tenant's status, from its actor or, if it has none yet, the state store.
    /// Never starts anything.
    pub async fn status(&self, tenant: &TenantId) -> Result<Status, ApiError> {
        if let Some(handle) = self.actors().get(tenant).cloned() {
            return Ok(handle.status());
        }
        let record = self
            .ctx
            .state
            .sandbox(tenant)
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        Ok(self.status_of_record(tenant, record.as_ref()))
    }

    /// The status of a tenant that has no actor here, from its state store row.
    pub fn status_of_record(&self, tenant: &TenantId, record: Option<&SandboxRecord>) -> Status {
        match record {
            Some(r) => Self::record_status(&self.ctx, tenant, r),
            None => Status::asleep(&self.ctx, tenant, 0),
        }
    }

    /// Asleep since the row's last transition, with its last stop: no sandbox of this
    /// gateway runs for a tenant known only by its row.
    fn record_status(ctx: &Context, tenant: &TenantId, r: &SandboxRecord) -> Status {
        let mut status = Status::asleep(ctx, tenant, r.since_ms);
        status.last_stop = r.last_stop.map(|(cause, at_ms)| LastStop {
            cause,
            at_ms,
            detail: r.detail.clone(),
        });
        status
    }

    /// Puts `tenant` in `tier` (`None`: back in its config's), durably, and lets a
    /// running sandbox's actor apply the tier's `sleep_after` at once. Its size and
    /// network change at its next start.
    pub async fn assign_tier(
        &self,
        tenant: &TenantId,
        tier: Option<String>,
    ) -> Result<(), ApiError> {
        self.ctx
            .state
            .set_tier(tenant, tier.as_deref())
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        tracing::info!(%tenant, tier = tier.as_deref().unwrap_or("(config)"), "tier assigned");
        self.ctx.assign_tier(tenant, tier);
        if let Some(handle) = self.actors().get(tenant) {
            handle.reconsider();
        }
        Ok(())
    }

    /// Stops every sandbox and waits for all of them (and their final syncs).
    pub async fn stop_all(&self, cause: StopCause) {
        let handles: Vec<_> = self.actors().values().cloned().collect();
        futures_util::future::join_all(handles.iter().map(|h| h.stop(cause))).await;
    }

    /// The tenant's sandbox, leased, if one of this gateway's is ready now (never
    /// starts one, never makes an actor).
    pub fn ready_now(&self, tenant: &TenantId) -> Option<Ready> {
        self.actors().get(tenant)?.ready_now()
    }

    /// Every tenant with an actor, its sandbox's state and since when (ms since the
    /// Unix epoch), as `/metrics` counts them. Reads no disk and asks no actor.
    pub fn census(&self) -> Vec<(TenantId, SandboxState, u64)> {
        let actors = self.actors();
        let census = actors.iter().map(|(tenant, handle)| {
            let status = handle.shared.status.borrow();
            (tenant.clone(), status.state, status.since_ms)
        });
        census.collect()
    }

    /// Leaves every running sandbox to the next gateway; stops those still starting.
    pub async fn leave_all(&self) {
        let handles: Vec<_> = self.actors().values().cloned().collect();
        futures_util::future::join_all(handles.iter().map(TenantHandle::leave)).await;
    }
}

fn spawn_actor(ctx: Arc<Context>, tenant: TenantId) -> TenantHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let status = Status::asleep(&ctx, &tenant, unix_ms());
    let shared = Arc::new(Shared {
        tenant,
        ctx: ctx.clone(),
        in_flight: AtomicUsize::new(0),
        last_active_ms: AtomicU64::new(ctx.mono_ms()),
        status: watch::Sender::new(status),
        sandbox: Mutex::new(None),
        ready: AtomicBool::new(false),
    });
    let handle = TenantHandle { tx, shared };
    let actor = Actor {
        ctx,
        handle: handle.clone(),
        phase: Phase::Asleep,
        waiters: Vec::new(),
        stop_waiters: Vec::new(),
        hold_waiters: Vec::new(),
        holds: 0,
        recheck_at: None,
        failures: 0,
        restart_after: None,
        adopted: None,
        stop_cause: None,
    };
    tokio::spawn(actor.run(rx));
    handle
}

// One per actor, replaced only at transitions: boxing the ready state would buy
// nothing but an allocation per start.
#[allow(clippy::large_enum_variant)]
enum Phase {
    Asleep,
    Starting(u64),
    Ready {
        sandbox: Sandbox,
        upstream: Upstream,
        slot: Slot,
        watch: Watch,
    },
    Stopping(u64),
}

struct Actor {
    ctx: Arc<Context>,
    handle: TenantHandle,
    phase: Phase,
    /// Requests waiting for the sandbox to be ready.
    waiters: Vec<ReadyReply>,
    /// Callers of `Stop` waiting for the sandbox to be gone.
    stop_waiters: Vec<oneshot::Sender<()>>,
    /// Callers of `Hold` waiting for the sandbox to be gone.
    hold_waiters: Vec<oneshot::Sender<Result<HoldGuard, ApiError>>>,
    /// Holds given out and not yet released: no start while any is out.
    holds: usize,
    /// While busy past `sleep_after`, idleness is looked at again no sooner than this.
    recheck_at: Option<Instant>,
    /// Crashes and OOMs in a row, and when the next start may begin.
    failures: u32,
    restart_after: Option<Instant>,
    /// Told once a sandbox being taken over from an earlier gateway is ready (or not).
    adopted: Option<oneshot::Sender<()>>,
    /// Why a `Stop` that came while the sandbox started wants it stopped once up.
    stop_cause: Option<StopCause>,
}

/// The wait before restarting a sandbox that crashed, doubled for each failure in a
/// row, up to the maximum.
const RESTART_BACKOFF: Duration = Duration::from_millis(250);
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);

impl Actor {
    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        // A new actor's tenant is asleep since its record says, with its last stop.
        if let Ok(Some(record)) = self.ctx.state.sandbox(self.handle.tenant()).await
            && record.state == SandboxState::Asleep
        {
            self.handle.shared.status.send_modify(|status| {
                if status.state == SandboxState::Asleep && status.last_stop.is_none() {
                    let known = Tenants::record_status(&self.ctx, self.handle.tenant(), &record);
                    (status.since_ms, status.last_stop) = (known.since_ms, known.last_stop);
                }
            });
        }
        loop {
            let idle_check = self.idle_deadline();
            let command = tokio::select! {
                command = rx.recv() => match command {
                    Some(c) => c,
                    None => return,
                },
                _ = sleep_until_opt(idle_check) => {
                    self.check_idle().await;
                    continue;
                }
            };
            match command {
                Command::Acquire(reply) => self.acquire(reply).await,
                Command::Evict(reply) => {
                    if self.handle.is_idle() && matches!(self.phase, Phase::Ready { .. }) {
                        self.begin_stop(StopCause::Eviction, Some(reply)).await;
                    } else {
                        let _ = reply.send(false);
                    }
                }
                Command::Stop(cause, reply) => match self.phase {
                    Phase::Asleep => {
                        let _ = reply.send(());
                    }
                    Phase::Ready { .. } => {
                        self.stop_waiters.push(reply);
                        self.begin_stop(cause, None).await;
                    }
                    Phase::Starting(_) => {
                        self.stop_cause.get_or_insert(cause);
                        self.stop_waiters.push(reply);
                    }
                    Phase::Stopping(_) => self.stop_waiters.push(reply),
                },
                Command::Hold(reply, stop) => match self.phase {
                    Phase::Asleep => self.grant_hold(reply),
                    Phase::Stopping(_) => self.hold_waiters.push(reply),
                    _ if !stop => {
                        let running = "the sandbox is running; stop it first (stop=true)";
                        let _ = reply.send(Err(ApiError::new(ErrorCode::SandboxRunning, running)));
                    }
                    Phase::Ready { .. } => {
                        self.hold_waiters.push(reply);
                        self.begin_stop(StopCause::Admin, None).await;
                    }
                    // `started` stops it as soon as it is up.
                    Phase::Starting(_) => self.hold_waiters.push(reply),
                },
                Command::Released => {
                    self.holds = self.holds.saturating_sub(1);
                    if self.holds == 0
                        && !self.waiters.is_empty()
                        && matches!(self.phase, Phase::Asleep)
                    {
                        self.begin_start().await;
                    }
                }
                Command::Started(generation, result) => self.started(generation, *result).await,
                Command::Adopt(sandbox, last_active, done) => {
                    self.adopted = Some(done);
                    self.adopt(*sandbox, last_active).await;
                }
                Command::Leave(reply) => match self.phase {
                    Phase::Ready { .. } => {
                        self.leave().await;
                        let _ = reply.send(());
                        return;
                    }
                    Phase::Asleep => {
                        let _ = reply.send(());
                    }
                    Phase::Starting(_) | Phase::Stopping(_) => self.stop_waiters.push(reply),
                },
                Command::Reconsider => self.recheck_at = None,
                Command::Exited(generation, exit) => self.exited(generation, exit).await,
                Command::Stopped(generation, detail, at_ms) => {
                    self.stopped(generation, detail, at_ms).await
                }
            }
        }
    }

    fn grant_hold(&mut self, reply: oneshot::Sender<Result<HoldGuard, ApiError>>) {
        self.holds += 1;
        // If the caller went away, the unsent guard is dropped here and its `Drop`
        // sends `Released`, which gives the hold back.
        let _ = reply.send(Ok(HoldGuard {
            tx: self.handle.tx.clone(),
        }));
    }

    /// When to look at idleness next; `None` while not ready or kept warm.
    fn idle_deadline(&self) -> Option<Instant> {
        let SleepAfter::Idle(after) = self.ctx.profile(self.handle.tenant()).sleep_after else {
            return None;
        };
        if !matches!(self.phase, Phase::Ready { .. }) {
            return None;
        }
        let last = Duration::from_millis(self.handle.last_active_ms());
        let due = Instant::from_std(self.ctx.epoch) + last + after;
        Some(self.recheck_at.map_or(due, |r| r.max(due)))
    }

    async fn check_idle(&mut self) {
        let SleepAfter::Idle(after) = self.ctx.profile(self.handle.tenant()).sleep_after else {
            return;
        };
        let idle_for = self
            .ctx
            .mono_ms()
            .saturating_sub(self.handle.last_active_ms());
        if self.handle.is_idle() && idle_for >= after.as_millis() as u64 {
            self.begin_stop(StopCause::Idle, None).await;
        } else {
            // Busy: look again a full period from now; a lease that ends touches the
            // clock, which moves the next look later still.
            self.recheck_at = Some(Instant::now() + after);
        }
    }

    async fn acquire(&mut self, reply: ReadyReply) {
        match &self.phase {
            Phase::Ready { upstream, .. } => {
                let lease = Lease::new(self.shared().clone());
                let _ = reply.send(Ok(Ready {
                    upstream: upstream.clone(),
                    lease,
                    phases: None,
                    first_byte_from: None,
                }));
            }
            Phase::Starting(_) | Phase::Stopping(_) => self.waiters.push(reply),
            Phase::Asleep => {
                self.waiters.push(reply);
                if self.holds == 0 {
                    self.begin_start().await;
                }
            }
        }
    }

    async fn begin_start(&mut self) {
        // Once the gateway shuts down no sandbox starts: a successor may own the
        // tenant already. Whoever waits is told to come back.
        if self.ctx.draining.load(Ordering::Acquire) {
            for waiter in self.waiters.drain(..) {
                let _ = waiter.send(Err(gone()));
            }
            return;
        }
        let generation = self.ctx.next_generation();
        self.phase = Phase::Starting(generation);
        self.transition(SandboxState::Starting, None, None, None)
            .await;
        let ctx = self.ctx.clone();
        let handle = self.handle.clone();
        let not_before = self.restart_after.take();
        tokio::spawn(async move {
            if let Some(at) = not_before {
                tokio::time::sleep_until(at).await;
            }
            let result = start_sandbox(&ctx, &handle, generation).await;
            let _ = handle
                .tx
                .send(Command::Started(generation, Box::new(result)));
        });
    }

    /// Lets go of the running sandbox without stopping it: the sync watch ends after a
    /// last sync (frozen), and the state store keeps it `Ready` with its last activity,
    /// so the next gateway takes it over and its idle clock goes on.
    async fn leave(&mut self) {
        let Phase::Ready { sandbox, watch, .. } = std::mem::replace(&mut self.phase, Phase::Asleep)
        else {
            return;
        };
        watch.stop().await;
        // For the next gateway's idle clock.
        let idle_for = self
            .ctx
            .mono_ms()
            .saturating_sub(self.handle.last_active_ms());
        let identity = identity_of(&sandbox, Some(unix_ms().saturating_sub(idle_for)));
        let freeze = SandboxFreeze {
            runtime: self.ctx.runtime.clone(),
            sandbox,
        };
        let tenant = self.handle.tenant();
        if let Err(e) = self.ctx.sync.sync(tenant, Some(&freeze)).await {
            tracing::warn!(%tenant, error = %e, "last sync before leaving failed; the next gateway syncs it");
        }
        // Its end, if it comes while this gateway drains, is the next one's to handle.
        self.ctx.runtime.release(&freeze.sandbox);
        // Still ready, now with its activity clock (no detail: the tenant's detail
        // speaks of its last stop).
        self.transition(SandboxState::Ready, None, Some(identity), None)
            .await;
    }

    /// Makes `sandbox`, which an earlier gateway started and left running, this
    /// tenant's running sandbox: a slot, a name in the proxy, the sync watch, `Ready`.
    /// Its idle clock goes on from `last_active_ms` (wall clock), if the gateway that
    /// left it said; else from now.
    async fn adopt(&mut self, sandbox: Sandbox, last_active_ms: Option<u64>) {
        if !matches!(self.phase, Phase::Asleep) {
            return;
        }
        let idle_for = last_active_ms.map_or(0, |at| unix_ms().saturating_sub(at));
        self.handle.shared.last_active_ms.store(
            self.ctx.mono_ms().saturating_sub(idle_for),
            Ordering::Relaxed,
        );
        let generation = sandbox.generation;
        self.phase = Phase::Starting(generation);
        let ctx = self.ctx.clone();
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let agent = ctx.agent(handle.tenant());
            let connector = ctx.runtime.connector();
            if let Err(e) = ctx.egress.serve(connector, &sandbox, &agent.egress).await {
                tracing::error!(tenant = %handle.tenant(), error = %e, "cannot open a surviving sandbox's egress ports");
            }
            let result = match ctx.admission.acquire(&handle).await {
                Ok(slot) => Ok(Started {
                    upstream: ctx.upstreams.insert(generation, sandbox.endpoint.clone()),
                    sandbox,
                    slot,
                    phases: StartPhases::default(),
                }),
                Err(e) => {
                    // No room (more survivors than max_instances): it cannot stay.
                    let _ = ctx
                        .runtime
                        .stop(&sandbox, ctx.config.runtime.stop_grace.0)
                        .await;
                    Err(ApiError::new(
                        ErrorCode::CapacityExhausted,
                        format!("no slot for a surviving sandbox: {e:?}"),
                    ))
                }
            };
            let _ = handle
                .tx
                .send(Command::Started(generation, Box::new(result)));
        });
    }

    async fn started(&mut self, generation: u64, result: Result<Started, ApiError>) {
        if !matches!(self.phase, Phase::Starting(g) if g == generation) {
            return;
        }
        self.settle_started(generation, result).await;
        if let Some(done) = self.adopted.take() {
            let _ = done.send(());
        }
    }

    async fn settle_started(&mut self, generation: u64, result: Result<Started, ApiError>) {
        match result {
            Ok(Started {
                sandbox,
                upstream,
                slot,
                phases,
            }) => {
                let identity = identity_of(&sandbox, None);
                let watcher = sandbox.clone();
                let tx = self.handle.tx.clone();
                tokio::spawn(async move {
                    let exit = watcher.wait().await;
                    let _ = tx.send(Command::Exited(generation, exit));
                });
                let freeze = Arc::new(SandboxFreeze {
                    runtime: self.ctx.runtime.clone(),
                    sandbox: sandbox.clone(),
                });
                let watch = self.ctx.sync.watch(self.handle.tenant().clone(), freeze);
                *self
                    .shared()
                    .sandbox
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some((sandbox.clone(), upstream.clone()));
                self.shared().ready.store(true, Ordering::SeqCst);
                self.phase = Phase::Ready {
                    sandbox,
                    upstream: upstream.clone(),
                    slot,
                    watch,
                };
                // A sandbox taken over was not started here: no phases to tell.
                let taken_over = self.adopted.is_some();
                let detail = (!taken_over).then(|| phases.describe());
                if !taken_over {
                    self.ctx.metrics.started(&phases);
                }
                self.transition(SandboxState::Ready, None, Some(identity), detail)
                    .await;
                tracing::info!(tenant = %self.handle.tenant(), admission_ms = phases.admission.as_millis() as u64,
                    restore_ms = phases.restore.as_millis() as u64, create_ms = phases.create.as_millis() as u64,
                    boot_ms = phases.boot.as_millis() as u64, "sandbox ready");
                let ready_at = Instant::now();
                for (i, waiter) in self.waiters.drain(..).enumerate() {
                    let lease = Lease::new(self.handle.shared.clone());
                    let _ = waiter.send(Ok(Ready {
                        upstream: upstream.clone(),
                        lease,
                        phases: Some(phases),
                        first_byte_from: (i == 0).then_some(ready_at),
                    }));
                }
                if !self.stop_waiters.is_empty() || !self.hold_waiters.is_empty() {
                    let cause = if self.hold_waiters.is_empty() {
                        self.stop_cause.take().unwrap_or(StopCause::Shutdown)
                    } else {
                        StopCause::Admin
                    };
                    self.begin_stop(cause, None).await;
                }
            }
            Err(error) => {
                tracing::warn!(tenant = %self.handle.tenant(), %error, "sandbox start failed");
                if self.adopted.is_none() {
                    self.ctx.metrics.start_failed();
                }
                self.phase = Phase::Asleep;
                let cause =
                    (error.code == ErrorCode::SandboxStartFailed).then_some(StopCause::StartFailed);
                self.transition(
                    SandboxState::Asleep,
                    cause,
                    None,
                    Some(error.message.clone()),
                )
                .await;
                for waiter in self.waiters.drain(..) {
                    let _ = waiter.send(Err(error.clone()));
                }
                self.settled();
            }
        }
    }

    /// Moves to `Stopping` and stops the sandbox in the background; `Stopped` follows.
    async fn begin_stop(&mut self, cause: StopCause, evict_reply: Option<oneshot::Sender<bool>>) {
        // Requests stop taking the fast path; one that already raised `in_flight` is
        // seen here, and an idle stop or eviction is called off for it.
        self.shared().ready.store(false, Ordering::SeqCst);
        let optional = matches!(cause, StopCause::Idle | StopCause::Eviction);
        // A sandbox stopped on purpose ran well: crash backoff starts over.
        self.failures = 0;
        if optional && self.shared().in_flight.load(Ordering::SeqCst) > 0 {
            self.shared()
                .ready
                .store(matches!(self.phase, Phase::Ready { .. }), Ordering::SeqCst);
            if let Some(reply) = evict_reply {
                let _ = reply.send(false);
            }
            return;
        }
        let Phase::Ready {
            sandbox,
            upstream,
            slot,
            watch,
        } = std::mem::replace(&mut self.phase, Phase::Asleep)
        else {
            if let Some(reply) = evict_reply {
                let _ = reply.send(false);
            }
            return;
        };
        self.phase = Phase::Stopping(sandbox.generation);
        // With its identity: should this gateway die before the stop ends, the next
        // one finds it.
        let identity = identity_of(&sandbox, None);
        self.transition(SandboxState::Stopping, Some(cause), Some(identity), None)
            .await;
        let ending = Ending {
            cause,
            exit: None,
            evict_reply,
            upstream,
        };
        tokio::spawn(finish_stop(
            self.ctx.clone(),
            self.handle.clone(),
            sandbox,
            slot,
            watch,
            ending,
        ));
    }

    async fn stopped(&mut self, generation: u64, detail: String, at_ms: u64) {
        if !matches!(self.phase, Phase::Stopping(g) if g == generation) {
            return;
        }
        self.phase = Phase::Asleep;
        *self
            .shared()
            .sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        // `finish_stop` recorded the transition; mirror it in the status.
        self.shared().status.send_modify(|s| {
            s.state = SandboxState::Asleep;
            s.since_ms = at_ms;
            if let Some(stop) = s.last_stop.as_mut() {
                // As the row has it: stopped when it was gone.
                stop.at_ms = at_ms;
                stop.detail = Some(detail);
            }
        });
        self.settled();
        if !self.waiters.is_empty() && self.holds == 0 {
            self.begin_start().await;
        }
    }

    async fn exited(&mut self, generation: u64, exit: Exit) {
        if !matches!(&self.phase, Phase::Ready { sandbox, .. } if sandbox.generation == generation)
        {
            return;
        }
        let Phase::Ready {
            sandbox,
            upstream,
            slot,
            watch,
        } = std::mem::replace(&mut self.phase, Phase::Stopping(generation))
        else {
            return;
        };
        self.shared().ready.store(false, Ordering::SeqCst);
        let cause = if exit == Exit::OutOfMemory {
            StopCause::Oom
        } else {
            StopCause::Crash
        };
        tracing::warn!(tenant = %self.handle.tenant(), %exit, cause = cause.as_str(), "sandbox exited by itself");
        // The next start waits a little longer after each failure in a row.
        self.failures += 1;
        let backoff = RESTART_BACKOFF * 2u32.saturating_pow(self.failures.min(6) - 1);
        self.restart_after = Some(Instant::now() + backoff.min(MAX_RESTART_BACKOFF));
        self.transition(
            SandboxState::Stopping,
            Some(cause),
            None,
            Some(exit.to_string()),
        )
        .await;
        let ending = Ending {
            cause,
            exit: Some(exit),
            evict_reply: None,
            upstream,
        };
        tokio::spawn(finish_stop(
            self.ctx.clone(),
            self.handle.clone(),
            sandbox,
            slot,
            watch,
            ending,
        ));
    }

    /// The sandbox is gone: answer whoever waited for that.
    fn settled(&mut self) {
        self.stop_cause = None;
        for w in self.stop_waiters.drain(..) {
            let _ = w.send(());
        }
        for reply in std::mem::take(&mut self.hold_waiters) {
            self.grant_hold(reply);
        }
    }

    async fn transition(
        &self,
        state: SandboxState,
        cause: Option<StopCause>,
        identity: Option<SandboxIdentity>,
        detail: Option<String>,
    ) {
        let at_ms = unix_ms();
        self.shared().status.send_modify(|s| {
            s.state = state;
            // A phase is that of a start; any transition ends it (a new start sets
            // its first).
            s.phase = None;
            s.since_ms = at_ms;
            if let Some(cause) = cause {
                s.last_stop = Some(LastStop {
                    cause,
                    at_ms,
                    detail: detail.clone(),
                });
            }
        });
        let t = Transition {
            tenant: self.handle.tenant().clone(),
            state,
            at_ms,
            cause,
            identity,
            detail,
        };
        if let Err(e) = self.ctx.state.record(&t).await {
            tracing::warn!(tenant = %t.tenant, error = %e, "cannot record a transition");
        }
    }
}

/// How a sandbox's life ended.
struct Ending {
    cause: StopCause,
    /// Set when it ended by itself; otherwise it is stopped here.
    exit: Option<Exit>,
    evict_reply: Option<oneshot::Sender<bool>>,
    /// Its name, retired once the process is gone.
    upstream: Upstream,
}

/// The end of a sandbox's life, off the actor: stop the watch, stop the process,
/// free the slot (only once the process is gone, so the cap holds), sync the
/// workspace one last time, then record the tenant asleep.
async fn finish_stop(
    ctx: Arc<Context>,
    handle: TenantHandle,
    sandbox: Sandbox,
    slot: Slot,
    watch: Watch,
    ending: Ending,
) {
    let tenant = handle.tenant().clone();
    watch.stop().await;
    let exit = match ending.exit {
        Some(exit) => exit.to_string(),
        None => match ctx
            .runtime
            .stop(&sandbox, ctx.config.runtime.stop_grace.0)
            .await
        {
            Ok(exit) => exit.to_string(),
            Err(e) => {
                tracing::error!(%tenant, error = %e, "cannot stop the sandbox");
                e.to_string()
            }
        },
    };
    ctx.upstreams.remove(&ending.upstream);
    drop(slot);
    if let Some(reply) = ending.evict_reply {
        let _ = reply.send(true);
    }
    let detail = match ctx.sync.sync(&tenant, None).await {
        Ok(_) => exit,
        Err(e) => format!("{exit}; final sync failed, changes kept locally: {e}"),
    };
    let t = Transition {
        tenant,
        state: SandboxState::Asleep,
        at_ms: unix_ms(),
        cause: Some(ending.cause),
        identity: None,
        detail: Some(detail),
    };
    if let Err(e) = ctx.state.record(&t).await {
        tracing::warn!(tenant = %t.tenant, error = %e, "cannot record a transition");
    }
    tracing::info!(tenant = %t.tenant, cause = ending.cause.as_str(), "sandbox stopped");
    ctx.metrics.stopped(ending.cause);
    let _ = handle.tx.send(Command::Stopped(
        sandbox.generation,
        t.detail.unwrap_or_default(),
        t.at_ms,
    ));
}

/// What the state store keeps of a sandbox to find it again.
fn identity_of(sandbox: &Sandbox, last_active_ms: Option<u64>) -> SandboxIdentity {
    SandboxIdentity {
        generation: sandbox.generation,
        pid: Some(sandbox.pid),
        pid_start_ticks: Some(sandbox.pid_start_ticks),
        address: Some(sandbox.address.to_string()),
        container: sandbox.container.clone(),
        last_active_ms,
    }
}

/// Admission, restore, creation and the readiness probe of one start.
async fn start_sandbox(
    ctx: &Context,
    handle: &TenantHandle,
    generation: u64,
) -> Result<Started, ApiError> {
    let t0 = Instant::now();
    let started_ms = unix_ms();
    handle.enter_phase("admission", started_ms);
    let admitted = ctx.admission.acquire(handle).await;
    ctx.metrics
        .admitted(t0.elapsed(), admitted.as_ref().map(|_| ()).map_err(|e| *e));
    let slot = admitted.map_err(|e| {
        let retry = ctx.admission.timeout().as_secs().max(1);
        let message = match e {
            AdmissionError::QueueFull => {
                "every sandbox slot is busy and the admission queue is full"
            }
            AdmissionError::Timeout => {
                "every sandbox slot stayed busy for the whole admission timeout"
            }
        };
        ApiError::new(ErrorCode::CapacityExhausted, message).retry_after(retry)
    })?;
    let t1 = Instant::now();
    handle.enter_phase("restore", started_ms);
    ctx.sync.prepare(handle.tenant()).await.map_err(|e| {
        tracing::error!(tenant = %handle.tenant(), error = %e, "cannot prepare the workspace");
        ApiError::new(
            ErrorCode::StoreUnavailable,
            format!("the workspace could not be restored: {e}"),
        )
        .retry_after(5)
    })?;
    let t2 = Instant::now();
    handle.enter_phase("create", started_ms);
    let profile = ctx.profile(handle.tenant());
    let agent = ctx.agent(handle.tenant());
    let failed = |m: String| ApiError::new(ErrorCode::SandboxStartFailed, m).retry_after(1);
    let workspace = ctx.runtime.workspace(handle.tenant());
    agent
        .prepare(&workspace, handle.tenant())
        .await
        .map_err(|e| failed(format!("cannot write the agent's configuration: {e}")))?;
    let size = profile.size;
    let spec = SandboxSpec {
        tenant: handle.tenant().clone(),
        generation,
        command: agent.command.clone(),
        image: profile.agent.image.clone(),
        limits: Some(Limits::of(&size)),
        env: agent.env(&ctx.signer, handle.tenant()),
        network: match profile.network {
            NetworkAccess::None => Network::LoopbackOnly,
            NetworkAccess::Outbound => Network::Outbound,
        },
    };
    let sandbox = ctx
        .runtime
        .start(&spec)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if let Err(e) = ctx
        .egress
        .serve(ctx.runtime.connector(), &sandbox, &agent.egress)
        .await
    {
        if let Err(stop) = ctx.runtime.stop(&sandbox, Duration::ZERO).await {
            tracing::error!(tenant = %spec.tenant, error = %stop, "cannot stop a sandbox that failed to start");
        }
        return Err(failed(format!("cannot open the agent's egress ports: {e}")));
    }
    let t3 = Instant::now();
    handle.enter_phase("boot", started_ms);
    // Recorded at once, so a gateway that dies during the readiness probe leaves a
    // record the next one finds the sandbox by.
    if let Err(e) = ctx
        .state
        .identify(handle.tenant(), &identity_of(&sandbox, None))
        .await
    {
        tracing::warn!(tenant = %handle.tenant(), error = %e, "cannot record the sandbox's identity");
    }
    let deadline = t3 + ctx.config.runtime.start_timeout.0;
    let upstream = ctx.upstreams.insert(generation, sandbox.endpoint.clone());
    // Known from now on to whoever must freeze it (a sweep), though not yet to requests.
    let set_running = |value| {
        *handle
            .shared
            .sandbox
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = value
    };
    set_running(Some((sandbox.clone(), upstream.clone())));
    let readiness = &agent.readiness_path;
    if let Err(e) = probe::wait_ready(&ctx.client, &sandbox, &upstream, readiness, deadline).await {
        set_running(None);
        ctx.upstreams.remove(&upstream);
        if let Err(stop) = ctx.runtime.stop(&sandbox, Duration::ZERO).await {
            tracing::error!(tenant = %spec.tenant, error = %stop, "cannot stop a sandbox that failed to start");
        }
        return Err(failed(e.to_string()));
    }
    let phases = StartPhases {
        admission: t1 - t0,
        restore: t2 - t1,
        create: t3 - t2,
        boot: t3.elapsed(),
    };
    Ok(Started {
        sandbox,
        upstream,
        slot,
        phases,
    })
}
