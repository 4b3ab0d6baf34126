//! Per-user limits at the edge: a request rate and a cap on open WebSockets, each as
//! the tenant's profile (its own table, its tier, the top level) says.
//!
//! The rate is a token bucket of `burst` requests refilled at `requests_per_second`,
//! kept as one timestamp per tenant (the generic cell rate algorithm): the moment its
//! bucket would be full again. A request is let through while that moment is less
//! than a full bucket ahead of now, and pushes it one interval later. A refused one
//! learns from it how long to wait (`Retry-After`, whole seconds). A tenant moved to a
//! higher limit (another tier) owes at most one empty bucket of it: the new rate
//! applies at once.
//!
//! What must hold:
//! - Memory stays bounded however many users come: a tenant whose bucket would be full
//!   again has no entry (a full bucket and no entry mean the same), and such entries
//!   are pruned once the map has doubled since the last prune, so it holds about the
//!   tenants of the last `burst / requests_per_second` seconds.
//! - A WebSocket's place under its tenant's cap is given back however its relay ends:
//!   it is a guard ([`WebSocketSlot`]) that rides with the relay's lease.
//! - Health routes and the admin API never come here; the edge asks only for
//!   authenticated users' requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warren_core::config::RateLimit;
use warren_core::{ErrorCode, TenantId};

use crate::error::ApiError;

/// The map of rates is pruned no sooner than at this many entries.
const PRUNE_FLOOR: usize = 1024;

/// How long a client refused for its WebSocket cap is asked to wait: when one of its
/// WebSockets closes is not known.
const WEBSOCKET_RETRY_SECS: u64 = 5;

pub struct Limits {
    /// The origin of the limiter's clock.
    epoch: Instant,
    rates: Mutex<Rates>,
    /// Open WebSockets per tenant; a tenant with none has no entry.
    websockets: Mutex<HashMap<TenantId, u32>>,
}

struct Rates {
    /// Per tenant: when its bucket is full again, µs since `epoch`. Entries at or
    /// before now are the same as none.
    full_at: HashMap<TenantId, u64>,
    /// The size at which the map is pruned next.
    prune_at: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            rates: Mutex::new(Rates {
                full_at: HashMap::new(),
                prune_at: PRUNE_FLOOR,
            }),
            websockets: Mutex::new(HashMap::new()),
        }
    }
}

impl Limits {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Counts one request of `tenant` against `limit`; past it, 429 `rate_limited`
    /// with `Retry-After`.
    pub fn request(&self, tenant: &TenantId, limit: RateLimit) -> Result<(), ApiError> {
        self.request_at(tenant, limit, self.now_us())
            .map_err(|wait| {
                let secs = wait.as_micros().div_ceil(1_000_000) as u64;
                let rate = limit.requests_per_second;
                ApiError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "too many requests: at most {rate} per second, {} at once",
                        limit.burst()
                    ),
                )
                .retry_after(secs)
            })
    }

    /// `request` at `now_us` (µs since `epoch`); a refusal says how long to wait.
    fn request_at(&self, tenant: &TenantId, limit: RateLimit, now_us: u64) -> Result<(), Duration> {
        if limit.is_off() {
            return Ok(());
        }
        // Whole microseconds: at most a millionth of a second off the configured rate.
        let interval = ((1e6 / limit.requests_per_second) as u64).max(1);
        let tolerance = interval.saturating_mul(u64::from(limit.burst()));
        let mut guard = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        let rates = &mut *guard;
        // At most an empty bucket of this limit: a tenant moved to a higher limit
        // refills at its rate from now, whatever it owed under the lower one.
        let ceiling = now_us + tolerance;
        let full_at = match rates.full_at.get_mut(tenant) {
            Some(at) => {
                *at = (*at).clamp(now_us, ceiling);
                *at
            }
            None => now_us,
        };
        let next = full_at + interval;
        // Admitted while the bucket, after this request, would still hold no more
        // than `burst` requests' worth of debt.
        if next - now_us > tolerance {
            return Err(Duration::from_micros(next - now_us - tolerance));
        }
        match rates.full_at.get_mut(tenant) {
            Some(at) => *at = next,
            None => {
                rates.full_at.insert(tenant.clone(), next);
            }
        }
        if rates.full_at.len() >= rates.prune_at {
            rates.full_at.retain(|_, at| *at > now_us);
            let len = rates.full_at.len();
            rates.prune_at = (2 * len).max(PRUNE_FLOOR);
            if rates.full_at.capacity() > 4 * rates.prune_at {
                rates.full_at.shrink_to(rates.prune_at);
            }
        }
        Ok(())
    }

    /// A place for one more WebSocket of `tenant` under its cap `max` (0: none), held
    /// until the returned guard drops; at the cap, 429 `rate_limited`.
    pub fn websocket(
        self: &Arc<Self>,
        tenant: &TenantId,
        max: u32,
    ) -> Result<WebSocketSlot, ApiError> {
        let mut open = self.websockets.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.get(tenant).copied().unwrap_or(0);
        if max != 0 && count >= max {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!("too many WebSockets: at most {max} open at once; close one first"),
            )
            .retry_after(WEBSOCKET_RETRY_SECS));
        }
        open.insert(tenant.clone(), count + 1);
        Ok(WebSocketSlot {
            limits: self.clone(),
            tenant: tenant.clone(),
        })
    }

    /// Tenants with a rate entry, for tests.
    #[cfg(test)]
    fn rate_entries(&self) -> usize {
        self.rates.lock().unwrap().full_at.len()
    }

    /// Open WebSockets of `tenant`.
    pub fn websockets_open(&self, tenant: &TenantId) -> u32 {
        let open = self.websockets.lock().unwrap_or_else(|e| e.into_inner());
        open.get(tenant).copied().unwrap_or(0)
    }
}

/// One open WebSocket under its tenant's cap; the place is given back on drop.
pub struct WebSocketSlot {
    limits: Arc<Limits>,
    tenant: TenantId,
}

impl Drop for WebSocketSlot {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .websockets
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> TenantId {
        TenantId::parse(id).unwrap()
    }

    fn limit(requests_per_second: f64, burst: u32) -> RateLimit {
        RateLimit {
            requests_per_second,
            burst: Some(burst),
        }
    }

    const SEC: u64 = 1_000_000;

    #[test]
    fn a_burst_passes_then_the_rate_and_the_wait_is_told() {
        let limits = Limits::default();
        let (alice, bob) = (tenant("alice"), tenant("bob"));
        let two_per_second = limit(2.0, 3);
        let t0 = 10 * SEC;
        for _ in 0..3 {
            limits.request_at(&alice, two_per_second, t0).unwrap();
        }
        let wait = limits.request_at(&alice, two_per_second, t0).unwrap_err();
        assert_eq!(
            wait,
            Duration::from_millis(500),
            "one token refills in 1/2 s"
        );
        limits
            .request_at(&bob, two_per_second, t0)
            .expect("another tenant has a bucket of its own");
        let later = t0 + SEC / 2;
        limits.request_at(&alice, two_per_second, later).unwrap();
        assert!(limits.request_at(&alice, two_per_second, later).is_err());
        // Quiet for long enough, the whole burst is back, and no more.
        let quiet = later + 10 * SEC;
        for _ in 0..3 {
            limits.request_at(&alice, two_per_second, quiet).unwrap();
        }
        assert!(limits.request_at(&alice, two_per_second, quiet).is_err());
    }

    #[test]
    fn a_refusal_asks_for_whole_seconds() {
        let limits = Limits::default();
        let alice = tenant("alice");
        let slow = limit(0.25, 1);
        limits.request(&alice, slow).unwrap();
        let refused = limits.request(&alice, slow).unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited);
        assert_eq!(refused.retry_after_secs, Some(4));
        let off = limit(0.0, 1);
        for _ in 0..10_000 {
            limits.request(&alice, off).unwrap();
        }
    }

    #[test]
    fn a_higher_limit_applies_at_once() {
        let limits = Limits::default();
        let alice = tenant("alice");
        let (slow, fast) = (limit(0.25, 1), limit(1000.0, 1000));
        let t0 = 10 * SEC;
        limits.request_at(&alice, slow, t0).unwrap();
        let wait = limits.request_at(&alice, slow, t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(4));
        // Moved to a higher tier: its bucket is empty, and refills at the new rate.
        let wait = limits.request_at(&alice, fast, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(1));
        for i in 1..=10 {
            limits.request_at(&alice, fast, t0 + i * 1000).unwrap();
        }
    }

    #[test]
    fn many_distinct_users_leave_a_bounded_map() {
        let limits = Limits::default();
        let rate = limit(10.0, 20);
        // 100,000 users, one request each, one every 100 µs over 10 s: a bucket is full
        // again 100 ms after its request, so about 1,000 entries are ever current.
        let mut most = 0;
        for i in 0..100_000u64 {
            let now = SEC + i * 100;
            limits
                .request_at(&tenant(&format!("user_{i}")), rate, now)
                .unwrap();
            most = most.max(limits.rate_entries());
        }
        assert!(most <= 2 * PRUNE_FLOOR, "the map held {most} tenants");
        let capacity = limits.rates.lock().unwrap().full_at.capacity();
        assert!(capacity <= 8 * PRUNE_FLOOR, "capacity {capacity}");
        // A user who keeps coming stays limited through the prunes.
        let alice = tenant("alice");
        let now = SEC + 100_000 * 100;
        for _ in 0..20 {
            limits.request_at(&alice, rate, now).unwrap();
        }
        for i in 0..5_000u64 {
            limits
                .request_at(&tenant(&format!("later_{i}")), rate, now + i)
                .unwrap();
        }
        assert!(limits.request_at(&alice, rate, now + 5_000).is_err());
    }

    #[test]
    fn the_websocket_cap_admits_again_once_one_closes() {
        let limits = Limits::new();
        let alice = tenant("alice");
        let first = limits.websocket(&alice, 2).unwrap();
        let _second = limits.websocket(&alice, 2).unwrap();
        let refused = limits
            .websocket(&alice, 2)
            .err()
            .expect("a third is refused");
        assert_eq!(refused.code, ErrorCode::RateLimited);
        assert!(refused.retry_after_secs.is_some());
        let _other = limits
            .websocket(&tenant("bob"), 2)
            .expect("another tenant has a cap of its own");
        drop(first);
        let third = limits.websocket(&alice, 2).expect("admitted again");
        assert_eq!(limits.websockets_open(&alice), 2);
        drop((third, _second));
        assert_eq!(limits.websockets_open(&alice), 0);
        assert!(!limits.websockets.lock().unwrap().contains_key(&alice));
        let unlimited: Vec<_> = (0..100)
            .map(|_| limits.websocket(&alice, 0).unwrap())
            .collect();
        assert_eq!(limits.websockets_open(&alice), 100);
        drop(unlimited);
    }
}
