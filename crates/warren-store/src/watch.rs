//! File events for every running workspace from one inotify instance (the kernel allows
//! only a few instances per user, 128 by default, but many watches), routed to each
//! tenant's sync loop by the path they arrived on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use warren_core::TenantId;

type Routes = Arc<Mutex<HashMap<TenantId, mpsc::UnboundedSender<()>>>>;

pub struct FileEvents {
    tenants_dir: PathBuf,
    routes: Routes,
    watcher: Mutex<Option<RecommendedWatcher>>,
}

impl FileEvents {
    pub fn new(tenants_dir: &Path) -> Self {
        Self {
            tenants_dir: tenants_dir.to_owned(),
            routes: Routes::default(),
            watcher: Mutex::new(None),
        }
    }

    /// Change events under `workspace`, one `()` per event. If the workspace cannot be
    /// watched the receiver is closed at once and the caller relies on its safety pass.
    pub fn subscribe(&self, tenant: &TenantId, workspace: &Path) -> mpsc::UnboundedReceiver<()> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher = self.watcher.lock().unwrap_or_else(|e| e.into_inner());
        if watcher.is_none() {
            match self.new_watcher() {
                Ok(w) => *watcher = Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "no file watcher; running workspaces rely on the safety pass");
                    return rx;
                }
            }
        }
        let Some(w) = watcher.as_mut() else { return rx };
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.clone(), tx);
        if let Err(e) = w.watch(workspace, RecursiveMode::Recursive) {
            tracing::warn!(%tenant, error = %e, "cannot watch the workspace; relying on the safety pass");
            self.routes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(tenant);
        }
        rx
    }

    pub fn unsubscribe(&self, tenant: &TenantId, workspace: &Path) {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tenant);
        if let Some(w) = self
            .watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            // Gone already if the workspace was removed.
            let _ = w.unwatch(workspace);
        }
    }

    fn new_watcher(&self) -> notify::Result<RecommendedWatcher> {
        let (routes, root) = (self.routes.clone(), self.tenants_dir.clone());
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            // Reads (including the capture's own) are not changes.
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            let routes = routes.lock().unwrap_or_else(|e| e.into_inner());
            for path in &event.paths {
                let tenant = path
                    .strip_prefix(&root)
                    .ok()
                    .and_then(|rest| rest.components().next())
                    .and_then(|c| TenantId::parse(c.as_os_str().to_str()?).ok());
                if let Some(tx) = tenant.as_ref().and_then(|t| routes.get(t)) {
                    let _ = tx.send(());
                }
            }
        })
    }
}
