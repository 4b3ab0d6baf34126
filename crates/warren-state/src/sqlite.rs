//! The SQLite state store: one file, WAL mode, one connection behind a mutex. Calls run
//! on the blocking pool so a slow disk never stalls the async workers.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use warren_core::TenantId;
use warren_core::sandbox::{SandboxState, StopCause};

use crate::{Event, SandboxIdentity, SandboxRecord, StateError, StateStore, Transition};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sandboxes (
    tenant_id       TEXT PRIMARY KEY,
    state           TEXT NOT NULL,
    since_ms        INTEGER NOT NULL,
    generation      INTEGER,
    pid             INTEGER,
    pid_start_ticks INTEGER,
    address         TEXT,
    last_stop_cause TEXT,
    last_stop_ms    INTEGER,
    detail          TEXT,
    container       TEXT,
    last_active_ms  INTEGER
);
CREATE TABLE IF NOT EXISTS events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms     INTEGER NOT NULL,
    tenant_id TEXT NOT NULL,
    state     TEXT NOT NULL,
    cause     TEXT,
    detail    TEXT
);
CREATE INDEX IF NOT EXISTS events_by_tenant ON events (tenant_id, id);
CREATE TABLE IF NOT EXISTS tenants (
    tenant_id TEXT PRIMARY KEY,
    tier      TEXT
);
";

#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

fn backend(e: impl std::fmt::Display) -> StateError {
    StateError::Backend(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(backend)?;
        }
        let conn = Connection::open(path).map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        // Columns added since the first schema, to older databases.
        for (column, kind) in [("container", "TEXT"), ("last_active_ms", "INTEGER")] {
            let has: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM pragma_table_info('sandboxes') WHERE name = ?1",
                    [column],
                    |row| row.get(0),
                )
                .map_err(backend)?;
            if has == 0 {
                conn.execute(
                    &format!("ALTER TABLE sandboxes ADD COLUMN {column} {kind}"),
                    [],
                )
                .map_err(backend)?;
            }
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, StateError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StateError::Backend("connection mutex poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(backend)?
    }

    /// Writes a consistent copy of the whole database to `dest` (a new file), while
    /// the gateway goes on writing: SQLite's `VACUUM INTO`.
    pub async fn back_up(&self, dest: &Path) -> Result<(), StateError> {
        if dest.exists() {
            return Err(StateError::Backend(format!(
                "{} exists; a backup goes to a new file",
                dest.display()
            )));
        }
        let dest = dest.to_string_lossy().into_owned();
        self.with(move |conn| {
            conn.execute("VACUUM INTO ?1", [dest]).map_err(backend)?;
            Ok(())
        })
        .await
    }

    /// The sandbox rows `filter` (a `WHERE` clause, or nothing) keeps, by tenant id.
    async fn sandbox_rows(&self, filter: &'static str) -> Result<Vec<SandboxRecord>, StateError> {
        self.with(move |conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {SANDBOX_COLUMNS} FROM sandboxes {filter} ORDER BY tenant_id"
                ))
                .map_err(backend)?;
            let rows = stmt.query_map([], read_sandbox_row).map_err(backend)?;
            rows.map(|r| r.map_err(backend).and_then(sandbox_record))
                .collect()
        })
        .await
    }
}

fn tenant_of(raw: String) -> Result<TenantId, StateError> {
    TenantId::parse(&raw).map_err(|e| StateError::Corrupt(format!("tenant id {raw:?}: {e}")))
}

fn state_of(raw: &str) -> Result<SandboxState, StateError> {
    SandboxState::parse(raw).ok_or_else(|| StateError::Corrupt(format!("sandbox state {raw:?}")))
}

fn cause_of(raw: Option<String>) -> Result<Option<StopCause>, StateError> {
    raw.map(|c| {
        StopCause::parse(&c).ok_or_else(|| StateError::Corrupt(format!("stop cause {c:?}")))
    })
    .transpose()
}

const SANDBOX_COLUMNS: &str = "tenant_id, state, since_ms, generation, pid, pid_start_ticks, address, last_stop_cause, last_stop_ms, detail, container, last_active_ms";

type SandboxRow = (
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

fn read_sandbox_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SandboxRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
        row.get(10)?,
        row.get(11)?,
    ))
}

fn sandbox_record(row: SandboxRow) -> Result<SandboxRecord, StateError> {
    let (
        tenant,
        state,
        since_ms,
        generation,
        pid,
        ticks,
        address,
        cause,
        stop_ms,
        detail,
        container,
        last_active,
    ) = row;
    let identity = generation.map(|generation| SandboxIdentity {
        generation: generation as u64,
        pid: pid.map(|p| p as u32),
        pid_start_ticks: ticks.map(|t| t as u64),
        address,
        container,
        last_active_ms: last_active.map(|t| t as u64),
    });
    let last_stop = match (cause_of(cause)?, stop_ms) {
        (Some(cause), Some(at)) => Some((cause, at as u64)),
        _ => None,
    };
    Ok(SandboxRecord {
        tenant: tenant_of(tenant)?,
        state: state_of(&state)?,
        since_ms: since_ms as u64,
        identity,
        last_stop,
        detail,
    })
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn record(&self, t: &Transition) -> Result<(), StateError> {
        let t = t.clone();
        self.with(move |conn| {
            let tx = conn.transaction().map_err(backend)?;
            let id = t.identity.as_ref();
            let stopped = t.cause.map(|c| (c.as_str(), t.at_ms as i64));
            tx.execute(
                "INSERT INTO sandboxes (tenant_id, state, since_ms, generation, pid, pid_start_ticks, address,
                                        last_stop_cause, last_stop_ms, detail, container, last_active_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT (tenant_id) DO UPDATE SET
                    state = excluded.state, since_ms = excluded.since_ms, generation = excluded.generation,
                    pid = excluded.pid, pid_start_ticks = excluded.pid_start_ticks, address = excluded.address,
                    container = excluded.container, last_active_ms = excluded.last_active_ms,
                    last_stop_cause = COALESCE(excluded.last_stop_cause, sandboxes.last_stop_cause),
                    last_stop_ms = COALESCE(excluded.last_stop_ms, sandboxes.last_stop_ms),
                    detail = CASE WHEN excluded.last_stop_cause IS NULL THEN sandboxes.detail
                                  ELSE COALESCE(excluded.detail, sandboxes.detail) END",
                params![
                    t.tenant.as_str(),
                    t.state.as_str(),
                    t.at_ms as i64,
                    id.map(|i| i.generation as i64),
                    id.and_then(|i| i.pid),
                    id.and_then(|i| i.pid_start_ticks.map(|x| x as i64)),
                    id.and_then(|i| i.address.clone()),
                    stopped.map(|s| s.0),
                    stopped.map(|s| s.1),
                    t.detail,
                    id.and_then(|i| i.container.clone()),
                    id.and_then(|i| i.last_active_ms.map(|t| t as i64)),
                ],
            )
            .map_err(backend)?;
            tx.execute(
                "INSERT INTO events (at_ms, tenant_id, state, cause, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![t.at_ms as i64, t.tenant.as_str(), t.state.as_str(), t.cause.map(|c| c.as_str()), t.detail],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn identify(
        &self,
        tenant: &TenantId,
        identity: &SandboxIdentity,
    ) -> Result<(), StateError> {
        let (tenant, i) = (tenant.as_str().to_owned(), identity.clone());
        self.with(move |conn| {
            conn.execute(
                "UPDATE sandboxes SET generation = ?2, pid = ?3, pid_start_ticks = ?4, address = ?5,
                                      container = ?6, last_active_ms = ?7
                 WHERE tenant_id = ?1",
                params![
                    tenant,
                    i.generation as i64,
                    i.pid,
                    i.pid_start_ticks.map(|x| x as i64),
                    i.address,
                    i.container,
                    i.last_active_ms.map(|x| x as i64),
                ],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn sandbox(&self, tenant: &TenantId) -> Result<Option<SandboxRecord>, StateError> {
        let tenant = tenant.as_str().to_owned();
        self.with(move |conn| {
            let row = conn
                .query_row(
                    &format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE tenant_id = ?1"),
                    [tenant],
                    read_sandbox_row,
                )
                .optional()
                .map_err(backend)?;
            row.map(sandbox_record).transpose()
        })
        .await
    }

    async fn live_sandboxes(&self) -> Result<Vec<SandboxRecord>, StateError> {
        self.sandbox_rows("WHERE state != 'asleep'").await
    }

    async fn sandboxes(&self) -> Result<Vec<SandboxRecord>, StateError> {
        self.sandbox_rows("").await
    }

    async fn events(
        &self,
        tenant: Option<&TenantId>,
        limit: usize,
    ) -> Result<Vec<Event>, StateError> {
        let tenant = tenant.map(|t| t.as_str().to_owned());
        self.with(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT id, at_ms, tenant_id, state, cause, detail FROM events
                     WHERE ?1 IS NULL OR tenant_id = ?1 ORDER BY id DESC LIMIT ?2",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![tenant, limit as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                })
                .map_err(backend)?;
            rows.map(|r| {
                let (id, at_ms, tenant, state, cause, detail) = r.map_err(backend)?;
                Ok(Event {
                    id,
                    at_ms: at_ms as u64,
                    tenant: tenant_of(tenant)?,
                    state: state_of(&state)?,
                    cause: cause_of(cause)?,
                    detail,
                })
            })
            .collect()
        })
        .await
    }

    async fn amend_event(
        &self,
        tenant: &TenantId,
        state: SandboxState,
        from: &str,
        to: &str,
    ) -> Result<(), StateError> {
        let (tenant, from, to) = (tenant.as_str().to_owned(), from.to_owned(), to.to_owned());
        self.with(move |conn| {
            conn.execute(
                "UPDATE events SET detail = ?4 WHERE id =
                    (SELECT MAX(id) FROM events WHERE tenant_id = ?1 AND state = ?2 AND detail = ?3)",
                params![tenant, state.as_str(), from, to],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn set_tier(&self, tenant: &TenantId, tier: Option<&str>) -> Result<(), StateError> {
        let (tenant, tier) = (tenant.as_str().to_owned(), tier.map(str::to_owned));
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO tenants (tenant_id, tier) VALUES (?1, ?2)
                 ON CONFLICT (tenant_id) DO UPDATE SET tier = excluded.tier",
                params![tenant, tier],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn tiers(&self) -> Result<Vec<(TenantId, String)>, StateError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT tenant_id, tier FROM tenants WHERE tier IS NOT NULL ORDER BY tenant_id",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(backend)?;
            rows.map(|r| {
                let (tenant, tier) = r.map_err(backend)?;
                Ok((tenant_of(tenant)?, tier))
            })
            .collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        crate::conformance::run(&store).await;
    }

    #[tokio::test]
    async fn a_database_from_before_containers_gains_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            &SCHEMA
                .replace(",\n    container       TEXT", "")
                .replace(",\n    last_active_ms  INTEGER", ""),
        )
        .unwrap();
        old.execute(
            "INSERT INTO sandboxes (tenant_id, state, since_ms) VALUES ('user_a', 'asleep', 1)",
            [],
        )
        .unwrap();
        drop(old);
        let store = SqliteStore::open(&path).unwrap();
        let tenant = TenantId::parse("user_a").unwrap();
        assert_eq!(store.sandbox(&tenant).await.unwrap().unwrap().since_ms, 1);
        let identity = SandboxIdentity {
            generation: 2,
            pid: Some(7),
            pid_start_ticks: Some(8),
            address: None,
            container: Some("abc".into()),
            last_active_ms: Some(10),
        };
        let t = Transition {
            tenant: tenant.clone(),
            state: SandboxState::Ready,
            at_ms: 9,
            cause: None,
            identity: Some(identity.clone()),
            detail: None,
        };
        store.record(&t).await.unwrap();
        let record = store.sandbox(&tenant).await.unwrap().unwrap();
        assert_eq!(record.identity, Some(identity));
        // And opening it again is a no-op.
        drop(store);
        SqliteStore::open(&path).unwrap();
    }

    #[tokio::test]
    async fn survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let t = Transition {
            tenant: TenantId::parse("user_a").unwrap(),
            state: SandboxState::Starting,
            at_ms: 5,
            cause: None,
            identity: None,
            detail: None,
        };
        SqliteStore::open(&path).unwrap().record(&t).await.unwrap();
        let reopened = SqliteStore::open(&path).unwrap();
        assert_eq!(
            reopened.sandbox(&t.tenant).await.unwrap().unwrap().state,
            SandboxState::Starting
        );
    }
}
