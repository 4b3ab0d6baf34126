//! The store: one `ObjectStore` (a local directory or any S3-compatible service) under a
//! prefix, with every tenant under its own prefix. Only the gateway talks to it.
//!
//! ```text
//! <prefix>/tenants/<tenant>/chunks/<hh>/<blake3 hex>      zstd-compressed chunk
//! <prefix>/tenants/<tenant>/snapshots/<seq, 20 digits>.json  snapshot record
//! ```
//!
//! Snapshot records are created with `PutMode::Create` (create-if-absent), which both
//! the local directory and S3 (`If-None-Match: *`) enforce: two writers that both try
//! to add snapshot N+1 cannot both succeed, so neither overwrites the other's head.

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};
use warren_core::TenantId;

use crate::StoreError;
use crate::chunk::{self, ChunkId, ChunkRef, Sealed};
use crate::snapshot::SnapshotRecord;

/// How to reach an S3-compatible store. Credentials come from the environment.
#[derive(Debug, Clone)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<warren_core::Secret>,
    pub allow_http: bool,
    pub request_timeout: Duration,
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    root: Path,
    describe: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

impl Store {
    pub fn new(inner: Arc<dyn ObjectStore>, prefix: &str, describe: String) -> Self {
        Self {
            inner,
            root: Path::from(prefix.trim_matches('/')),
            describe,
        }
    }

    /// A store in a local directory, created if missing.
    pub fn local(dir: &FsPath, prefix: &str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Config(format!("cannot create {}: {e}", dir.display())))?;
        let fs =
            LocalFileSystem::new_with_prefix(dir).map_err(|e| StoreError::Config(e.to_string()))?;
        Ok(Self::new(
            Arc::new(fs),
            prefix,
            format!("local directory {}", dir.display()),
        ))
    }

    pub fn s3(options: &S3Options, prefix: &str) -> Result<Self, StoreError> {
        let mut builder = AmazonS3Builder::new()
            .with_region(&options.region)
            .with_bucket_name(&options.bucket)
            .with_allow_http(options.allow_http)
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(options.request_timeout)
                    .with_allow_http(options.allow_http),
            )
            // A store that is down must not stall a sync for minutes: fail, and let the
            // sync engine retry with its own backoff.
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(5),
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &options.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        if let (Some(id), Some(secret)) = (&options.access_key_id, &options.secret_access_key) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret.expose());
        }
        let s3 = builder
            .build()
            .map_err(|e| StoreError::Config(e.to_string()))?;
        let endpoint = options.endpoint.as_deref().unwrap_or("aws");
        Ok(Self::new(
            Arc::new(s3),
            prefix,
            format!("s3 bucket {} at {endpoint}", options.bucket),
        ))
    }

    fn tenant_root(&self, tenant: &TenantId) -> Path {
        self.root.clone().join("tenants").join(tenant.as_str())
    }

    fn chunk_key(&self, tenant: &TenantId, id: &ChunkId) -> Path {
        let hex = id.to_hex();
        self.tenant_root(tenant)
            .join("chunks")
            .join(&hex[..2])
            .join(hex.as_str())
    }

    fn snapshots_dir(&self, tenant: &TenantId) -> Path {
        self.tenant_root(tenant).join("snapshots")
    }

    fn snapshot_key(&self, tenant: &TenantId, seq: u64) -> Path {
        self.snapshots_dir(tenant).join(format!("{seq:020}.json"))
    }

    /// Uploads a chunk. Chunks are named by content, so a repeat upload is harmless.
    pub async fn put_chunk(&self, tenant: &TenantId, sealed: &Sealed) -> Result<(), StoreError> {
        let key = self.chunk_key(tenant, &sealed.chunk.id);
        self.inner
            .put(&key, PutPayload::from_bytes(sealed.compressed.clone()))
            .await?;
        Ok(())
    }

    /// Downloads a chunk and checks it against its hash.
    pub async fn get_chunk(
        &self,
        tenant: &TenantId,
        chunk: &ChunkRef,
    ) -> Result<Vec<u8>, StoreError> {
        let stored = self
            .inner
            .get(&self.chunk_key(tenant, &chunk.id))
            .await?
            .bytes()
            .await?;
        Ok(chunk::open(chunk, &stored)?)
    }

    /// Every chunk of a tenant, with when it was written.
    pub async fn chunks(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(ChunkId, DateTime<Utc>)>, StoreError> {
        let prefix = self.tenant_root(tenant).join("chunks");
        let objects: Vec<_> = self.inner.list(Some(&prefix)).try_collect().await?;
        Ok(objects
            .into_iter()
            .filter_map(|o| Some((ChunkId::from_hex(o.location.filename()?)?, o.last_modified)))
            .collect())
    }

    pub async fn delete_chunk(&self, tenant: &TenantId, id: &ChunkId) -> Result<(), StoreError> {
        delete(&*self.inner, &self.chunk_key(tenant, id)).await
    }

    /// The sequence numbers of a tenant's snapshots, oldest first.
    pub async fn snapshot_seqs(&self, tenant: &TenantId) -> Result<Vec<u64>, StoreError> {
        let objects: Vec<_> = self
            .inner
            .list(Some(&self.snapshots_dir(tenant)))
            .try_collect()
            .await?;
        let mut seqs: Vec<u64> = objects
            .iter()
            .filter_map(|o| o.location.filename()?.strip_suffix(".json")?.parse().ok())
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    pub async fn snapshot(
        &self,
        tenant: &TenantId,
        seq: u64,
    ) -> Result<SnapshotRecord, StoreError> {
        let bytes = self
            .inner
            .get(&self.snapshot_key(tenant, seq))
            .await?
            .bytes()
            .await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("snapshot {seq} of {tenant}: {e}")))
    }

    /// Adds a snapshot record if its sequence number is still free.
    pub async fn create_snapshot(
        &self,
        tenant: &TenantId,
        record: &SnapshotRecord,
    ) -> Result<(), StoreError> {
        let body =
            Bytes::from(serde_json::to_vec_pretty(record).expect("a record always serializes"));
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .inner
            .put_opts(
                &self.snapshot_key(tenant, record.seq),
                PutPayload::from_bytes(body),
                options,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Err(StoreError::Conflict { seq: record.seq }),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete_snapshot(&self, tenant: &TenantId, seq: u64) -> Result<(), StoreError> {
        delete(&*self.inner, &self.snapshot_key(tenant, seq)).await
    }

    /// Every tenant that has anything in the store.
    pub async fn tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        let listing = self
            .inner
            .list_with_delimiter(Some(&self.root.clone().join("tenants")))
            .await?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| TenantId::parse(p.filename()?).ok())
            .collect())
    }
}

async fn delete(store: &dyn ObjectStore, key: &Path) -> Result<(), StoreError> {
    match store.delete(key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
