//! Admission: at most `max_instances` sandboxes hold a slot at once.
//!
//! A start takes a slot if one is free. At the cap it evicts an idle sandbox (ready,
//! nothing in flight, no open WebSocket): the lowest tier's first, the least recently
//! used among equals, never a kept-warm one (`sleep_after = "never"`) of a higher tier
//! than the start's. If none may go, it waits, in a queue of at most `queue_limit`
//! starts of its tier, until a slot frees or a sandbox turns idle, for at most
//! `queue_timeout`.
//! While a start of a higher tier waits, starts of lower tiers neither take a slot nor
//! evict: the higher one goes first. A slot is released only after its sandbox has
//! stopped, so the number of live sandboxes never exceeds the cap.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use warren_core::TenantId;

use crate::tenant::TenantHandle;

pub struct Admission {
    max: usize,
    queue_limit: usize,
    timeout: Duration,
    inner: Mutex<Inner>,
    changed: Notify,
}

struct Inner {
    running: HashMap<TenantId, TenantHandle>,
    /// Waiting starts: how many of each priority.
    waiting: BTreeMap<u32, usize>,
}

impl Inner {
    /// Whether a start of a priority above `priority` waits.
    fn outranked(&self, priority: u32) -> bool {
        self.waiting
            .range((Bound::Excluded(priority), Bound::Unbounded))
            .next()
            .is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionError {
    /// `queue_limit` starts are already waiting.
    QueueFull,
    /// No slot freed within `queue_timeout`.
    Timeout,
}

/// A start waiting in the queue. Dropped when it stops waiting, however that ends
/// (a slot, a timeout, or its future dropped), which takes it off the queue.
struct Queued {
    admission: Arc<Admission>,
    priority: u32,
}

impl Drop for Queued {
    fn drop(&mut self) {
        let mut inner = self.admission.lock();
        if let Some(n) = inner.waiting.get_mut(&self.priority) {
            *n -= 1;
            if *n == 0 {
                inner.waiting.remove(&self.priority);
            }
        }
        drop(inner);
        // Starts it outranked may go now.
        self.admission.changed();
    }
}

/// A held slot. Dropping it frees the slot and wakes waiting starts.
pub struct Slot {
    admission: Arc<Admission>,
    tenant: TenantId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.lock().running.remove(&self.tenant);
        self.admission.changed();
    }
}

impl Admission {
    pub fn new(max: usize, queue_limit: usize, timeout: Duration) -> Self {
        Self {
            max,
            queue_limit,
            timeout,
            inner: Mutex::new(Inner {
                running: HashMap::new(),
                waiting: BTreeMap::new(),
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The critical sections never panic; a poisoned lock still holds valid data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes waiting starts: a slot was freed or a sandbox became idle.
    pub fn changed(&self) {
        self.changed.notify_waiters();
    }

    /// How many slots are held.
    pub fn running(&self) -> usize {
        self.lock().running.len()
    }

    /// How many starts are waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.values().sum()
    }

    /// How long a start may wait, for `Retry-After`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Takes a slot for `handle`'s tenant, evicting or waiting as the module says.
    pub async fn acquire(self: &Arc<Self>, handle: &TenantHandle) -> Result<Slot, AdmissionError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let priority = handle.priority();
        let mut queued: Option<Queued> = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let victim = {
                let mut inner = self.lock();
                let outranked = inner.outranked(priority);
                if inner.running.len() < self.max && !outranked {
                    let previous = inner
                        .running
                        .insert(handle.tenant().clone(), handle.clone());
                    debug_assert!(previous.is_none(), "a tenant holds at most one slot");
                    return Ok(Slot {
                        admission: self.clone(),
                        tenant: handle.tenant().clone(),
                    });
                }
                let candidates = inner.running.values().filter(|h| !outranked && h.is_idle());
                candidates
                    .filter(|h| h.evictable_for(priority))
                    .min_by_key(|h| (h.priority(), h.last_active_ms()))
                    .cloned()
            };
            if let Some(victim) = victim {
                // The victim's actor re-checks idleness; either way, look again.
                victim.evict().await;
                continue;
            }
            if queued.is_none() {
                // Each tier its own queue: lower ones waiting never turn a higher away.
                let mut inner = self.lock();
                let waiting = inner.waiting.entry(priority).or_default();
                if *waiting >= self.queue_limit {
                    return Err(AdmissionError::QueueFull);
                }
                *waiting += 1;
                queued = Some(Queued {
                    admission: self.clone(),
                    priority,
                });
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(AdmissionError::Timeout);
            }
        }
    }
}
