//! Where a tenant's files live on this machine. The runtime, the sync engine and the
//! CLI all find them here, so the layout is written down once.
//!
//! ```text
//! <data_dir>/tenants/<tenant>/workspace/         the agent's files (synced to the store)
//! <data_dir>/tenants/<tenant>/agent.log          the agent's stdout and stderr
//! <data_dir>/tenants/<tenant>/sync-state.json    which snapshot the workspace matches
//! <data_dir>/tenants/<tenant>/conflicts/         local copies set aside by a restore
//! ```

use std::path::{Path, PathBuf};

use crate::TenantId;

#[derive(Debug, Clone)]
pub struct Layout {
    tenants: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            tenants: data_dir.join("tenants"),
        }
    }

    pub fn tenants_dir(&self) -> &Path {
        &self.tenants
    }

    /// Tenant ids are validated to be one safe path component.
    pub fn tenant_dir(&self, tenant: &TenantId) -> PathBuf {
        self.tenants.join(tenant.as_str())
    }

    pub fn workspace(&self, tenant: &TenantId) -> PathBuf {
        self.tenant_dir(tenant).join("workspace")
    }

    pub fn agent_log(&self, tenant: &TenantId) -> PathBuf {
        self.tenant_dir(tenant).join("agent.log")
    }

    pub fn sync_state(&self, tenant: &TenantId) -> PathBuf {
        self.tenant_dir(tenant).join("sync-state.json")
    }

    pub fn conflicts(&self, tenant: &TenantId) -> PathBuf {
        self.tenant_dir(tenant).join("conflicts")
    }

    /// Every tenant with a directory here.
    pub fn local_tenants(&self) -> std::io::Result<Vec<TenantId>> {
        let mut out = Vec::new();
        match std::fs::read_dir(&self.tenants) {
            Ok(dir) => {
                for entry in dir {
                    if let Some(t) = entry?
                        .file_name()
                        .to_str()
                        .and_then(|n| TenantId::parse(n).ok())
                    {
                        out.push(t);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        out.sort();
        Ok(out)
    }
}
