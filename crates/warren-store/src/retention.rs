//! Retention: keep recent snapshots densely and older ones sparsely, then collect the
//! chunks no kept snapshot needs.
//!
//! Safe against a writer running at the same time: the head snapshot is always kept
//! (writers only skip uploading chunks the head holds), and a chunk younger than
//! `gc_grace` is never collected (a snapshot being written uploads its chunks before
//! its record, and takes far less than the grace to do so). If any kept manifest
//! cannot be read, nothing is collected.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use warren_core::TenantId;

use crate::StoreError;
use crate::snapshot::{chunk_set, read_manifest};
use crate::store::Store;

#[derive(Debug, Clone, Copy)]
pub struct RetentionPolicy {
    /// Every snapshot younger than this is kept.
    pub keep_all_for: Duration,
    /// Then the newest of each hour, up to this age.
    pub hourly_for: Duration,
    /// Then the newest of each day, up to this age. Older ones go (but the head stays).
    pub daily_for: Duration,
    /// Unreferenced chunks younger than this are left alone.
    pub gc_grace: Duration,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RetentionReport {
    pub kept: usize,
    pub snapshots_deleted: usize,
    pub chunks_deleted: usize,
}

/// Which of `snapshots` (seq, created_ms) to keep at `now_ms`.
pub fn select(snapshots: &[(u64, u64)], now_ms: u64, policy: &RetentionPolicy) -> HashSet<u64> {
    let head = snapshots.iter().map(|s| s.0).max();
    let mut keep: HashSet<u64> = head.into_iter().collect();
    // Newest per bucket: later seqs overwrite earlier ones in the map.
    let mut hourly: BTreeMap<u64, u64> = BTreeMap::new();
    let mut daily: BTreeMap<u64, u64> = BTreeMap::new();
    let mut sorted = snapshots.to_vec();
    sorted.sort_unstable();
    for (seq, created_ms) in sorted {
        let age = Duration::from_millis(now_ms.saturating_sub(created_ms));
        if age <= policy.keep_all_for {
            keep.insert(seq);
        } else if age <= policy.hourly_for {
            hourly.insert(created_ms / 3_600_000, seq);
        } else if age <= policy.daily_for {
            daily.insert(created_ms / 86_400_000, seq);
        }
    }
    keep.extend(hourly.values());
    keep.extend(daily.values());
    keep
}

/// Applies `policy` to one tenant's snapshots, then collects unreferenced chunks.
pub async fn apply(
    store: &Store,
    tenant: &TenantId,
    policy: &RetentionPolicy,
    now_ms: u64,
) -> Result<RetentionReport, StoreError> {
    let mut records = Vec::new();
    for seq in store.snapshot_seqs(tenant).await? {
        records.push(store.snapshot(tenant, seq).await?);
    }
    let keep = select(
        &records
            .iter()
            .map(|r| (r.seq, r.created_ms))
            .collect::<Vec<_>>(),
        now_ms,
        policy,
    );
    let mut report = RetentionReport {
        kept: keep.len(),
        ..RetentionReport::default()
    };

    let mut referenced = HashSet::new();
    for record in records.iter().filter(|r| keep.contains(&r.seq)) {
        let manifest = read_manifest(store, tenant, record).await?;
        referenced.extend(chunk_set(record, &manifest));
    }
    for record in records.iter().filter(|r| !keep.contains(&r.seq)) {
        store.delete_snapshot(tenant, record.seq).await?;
        report.snapshots_deleted += 1;
    }
    let grace = chrono::Duration::from_std(policy.gc_grace).unwrap_or(chrono::Duration::MAX);
    let cutoff = chrono::DateTime::from_timestamp_millis(now_ms as i64).unwrap_or_default() - grace;
    for (id, written) in store.chunks(tenant).await? {
        if !referenced.contains(&id) && written < cutoff {
            store.delete_chunk(tenant, &id).await?;
            report.chunks_deleted += 1;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;
    const D: u64 = 24 * H;

    #[test]
    fn keeps_all_recent_hourly_then_daily() {
        let policy = RetentionPolicy {
            keep_all_for: Duration::from_secs(3600),
            hourly_for: Duration::from_secs(86_400),
            daily_for: Duration::from_secs(30 * 86_400),
            gc_grace: Duration::from_secs(3600),
        };
        let now = 100 * D;
        // Every 10 minutes for the last 3 days, plus one 40 days old.
        let mut snaps: Vec<(u64, u64)> = (0..(3 * 144))
            .map(|i| (i + 2, now - 3 * D + i * 600_000))
            .collect();
        snaps.push((1, now - 40 * D));
        let keep = select(&snaps, now, &policy);
        let recent = snaps.iter().filter(|s| now - s.1 <= H).count();
        assert!(recent >= 6);
        assert!(
            snaps
                .iter()
                .filter(|s| now - s.1 <= H)
                .all(|s| keep.contains(&s.0)),
            "all of the last hour"
        );
        let day: HashSet<u64> = snaps
            .iter()
            .filter(|s| now - s.1 > H && now - s.1 <= D)
            .map(|s| s.1 / H)
            .collect();
        let kept_in_day = snaps
            .iter()
            .filter(|s| now - s.1 > H && now - s.1 <= D && keep.contains(&s.0))
            .count();
        assert_eq!(kept_in_day, day.len(), "one per hour in the last day");
        assert!(!keep.contains(&1), "past daily_for, gone");
        assert!(keep.len() < snaps.len() / 3);
    }

    #[test]
    fn the_head_is_always_kept() {
        let policy = RetentionPolicy {
            keep_all_for: Duration::ZERO,
            hourly_for: Duration::ZERO,
            daily_for: Duration::ZERO,
            gc_grace: Duration::ZERO,
        };
        let keep = select(&[(1, 0), (2, 1), (3, 2)], 100 * D, &policy);
        assert_eq!(keep, HashSet::from([3]));
    }
}
