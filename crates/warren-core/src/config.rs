//! Typed configuration, read from TOML and validated once at start-up.
//!
//! Every key has a default, so an empty file (or none) is a working configuration: data
//! under `./warren-data`, SQLite state, the process runtime and the built-in echo agent.
//! Unknown keys are refused with a message that names them. Secrets come from the
//! environment first (`WARREN_SIGNING_SECRET`), then the file; callers pass the
//! environment in as a function so tests never touch the real one.
//!
//! A sandbox's instance type and network come from the tenant's own `[tenants.<id>]`
//! table, else from its `[tiers.<name>]`, else from the top level; see
//! [`Config::sandbox_profile`]. Instance type names and tenant ids are checked as the
//! file is parsed, references to tiers by `validate`.
//!
//! `docs/config.md` is the reference of every key; keep the two in step.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::TenantId;
use crate::duration::{ConfigDuration, SleepAfter};
use crate::secret::Secret;

/// The environment variable that overrides `auth.signing_secret`.
pub const SIGNING_SECRET_ENV: &str = "WARREN_SIGNING_SECRET";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the gateway listens.
    pub listen: SocketAddr,
    /// Where tenants' workspaces, the state database and the generated secret live.
    pub data_dir: PathBuf,
    /// The base URL `warren token` prints; `http://<listen>` when unset.
    pub public_url: Option<String>,
    /// How many sandboxes may run at once.
    pub max_instances: usize,
    /// The size a sandbox gets unless its tenant or tier says otherwise: a name of
    /// [`INSTANCE_TYPES`] or of `instance_types`.
    pub instance_type: String,
    /// Sizes of this deployment's own, added to the built-in ones (or replacing one of
    /// the same name).
    pub instance_types: BTreeMap<String, InstanceSize>,
    /// What a sandbox's network reaches unless its tenant or tier says otherwise.
    pub network: NetworkAccess,
    /// Idle time after which a sandbox is stopped; `never` keeps it warm.
    pub sleep_after: SleepAfter,
    /// How long a browser asking for a page waits for its sandbox to start before it
    /// gets the waiting page instead; `0s` shows the page at once.
    pub waiting_page_after: ConfigDuration,
    /// How long a client may take to send its request headers before its connection
    /// is closed.
    pub client_header_timeout: ConfigDuration,
    /// How long a gateway that hands over to a successor keeps relaying its open
    /// WebSockets before it closes them (1012); also how long each later step of a
    /// shutdown (close handshakes, requests in flight) may take.
    pub drain_timeout: ConfigDuration,
    /// Each user's request rate, unless their tenant or tier says otherwise.
    pub rate_limit: RateLimit,
    /// WebSockets one user may hold open at once, unless their tenant or tier says
    /// otherwise; 0: no cap.
    pub max_websockets: u32,
    pub auth: AuthConfig,
    pub admission: AdmissionConfig,
    pub runtime: RuntimeConfig,
    /// The agent profile of tenants whose tier and own table name none (`default`).
    pub agent: AgentConfig,
    /// Named agent profiles that tiers and tenants choose with `agent = "<name>"`.
    pub agents: BTreeMap<String, AgentConfig>,
    pub state: StateConfig,
    pub store: StoreConfig,
    pub sync: SyncConfig,
    pub sweep: SweepConfig,
    pub retention: RetentionConfig,
    pub cleanup: CleanupConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    /// What running sandboxes and stored workspaces cost, for `warren audit`.
    pub prices: PricesConfig,
    /// Named sets of sandbox settings that tenants refer to by `tier`.
    pub tiers: BTreeMap<String, TierConfig>,
    /// One tenant's own settings, which win over its tier's.
    pub tenants: BTreeMap<TenantId, TenantConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./warren-data"),
            public_url: None,
            max_instances: 10,
            instance_type: "standard-4".into(),
            instance_types: BTreeMap::new(),
            network: NetworkAccess::None,
            sleep_after: SleepAfter::Idle(Duration::from_secs(600)),
            waiting_page_after: ConfigDuration(Duration::from_millis(250)),
            client_header_timeout: ConfigDuration(Duration::from_secs(30)),
            drain_timeout: ConfigDuration(Duration::from_secs(10)),
            rate_limit: RateLimit::default(),
            max_websockets: 32,
            auth: AuthConfig::default(),
            admission: AdmissionConfig::default(),
            runtime: RuntimeConfig::default(),
            agent: AgentConfig::default(),
            agents: BTreeMap::new(),
            state: StateConfig::default(),
            store: StoreConfig::default(),
            sync: SyncConfig::default(),
            sweep: SweepConfig::default(),
            retention: RetentionConfig::default(),
            cleanup: CleanupConfig::default(),
            admin: AdminConfig::default(),
            log: LogConfig::default(),
            prices: PricesConfig::default(),
            tiers: BTreeMap::new(),
            tenants: BTreeMap::new(),
        }
    }
}

/// What a sandbox's network reaches. The gateway reaches the agent either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkAccess {
    /// Its own loopback and nothing else.
    None,
    /// The outside world too.
    Outbound,
}

/// `[tiers.<name>]`: settings shared by the tenants of a tier. Unset keys fall back to
/// the top level.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TierConfig {
    pub instance_type: Option<String>,
    pub network: Option<NetworkAccess>,
    /// Idle time before the tier's sandboxes sleep; `never` keeps them warm.
    pub sleep_after: Option<SleepAfter>,
    /// Admission priority: at capacity a start of a higher tier gets the next free slot
    /// first, idle sandboxes of the lowest tier are evicted first, and a kept-warm
    /// sandbox is never evicted for a start of a lower tier. Tenants without a tier
    /// have priority 0.
    pub priority: u32,
    /// Cron rules (five fields, UTC) at which the tier's tenants' sandboxes start.
    pub prewarm: Vec<String>,
    /// A key of `[agents]`: the workload of the tier's sandboxes.
    pub agent: Option<String>,
    pub rate_limit: Option<RateLimit>,
    pub max_websockets: Option<u32>,
}

/// `[tenants.<id>]`: one tenant's settings. Unset keys fall back to its tier, then to
/// the top level.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// A key of `[tiers]`. A tier assigned through the admin API wins over this one.
    pub tier: Option<String>,
    pub instance_type: Option<String>,
    pub network: Option<NetworkAccess>,
    pub sleep_after: Option<SleepAfter>,
    /// Cron rules (five fields, UTC) at which this tenant's sandbox starts, besides its
    /// tier's.
    pub prewarm: Vec<String>,
    /// A key of `[agents]`: this tenant's workload.
    pub agent: Option<String>,
    pub rate_limit: Option<RateLimit>,
    pub max_websockets: Option<u32>,
}

/// What one tenant's sandbox gets, resolved from its own settings, its tier's and the
/// top level's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SandboxProfile<'a> {
    /// The tenant's tier, if it has one.
    pub tier: Option<&'a str>,
    /// The instance type's name.
    pub instance_type: &'a str,
    pub size: InstanceSize,
    pub network: NetworkAccess,
    pub sleep_after: SleepAfter,
    /// The tier's admission priority (0 without a tier).
    pub priority: u32,
    /// The agent profile's name: a key of `[agents]`, or [`DEFAULT_AGENT`] for `[agent]`.
    pub agent_name: &'a str,
    pub agent: &'a AgentConfig,
    /// The user's request rate at the edge.
    pub rate_limit: RateLimit,
    /// The user's open WebSockets at most; 0: no cap.
    pub max_websockets: u32,
}

impl SandboxProfile<'_> {
    /// Never put to sleep for idleness.
    pub fn keep_warm(&self) -> bool {
        self.sleep_after == SleepAfter::Never
    }
}

/// `rate_limit`: a token bucket per user at the edge. It holds `burst` requests and
/// refills at `requests_per_second`; a request that finds it empty gets 429.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per second, sustained; fractions allowed. 0 turns the limit off.
    pub requests_per_second: f64,
    /// Requests that may come at once after a quiet spell; twice the rate (at least 1)
    /// when unset.
    #[serde(default)]
    pub burst: Option<u32>,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            requests_per_second: 100.0,
            burst: Some(200),
        }
    }
}

impl RateLimit {
    /// No limit at all.
    pub fn is_off(&self) -> bool {
        self.requests_per_second == 0.0
    }

    /// The bucket's size.
    pub fn burst(&self) -> u32 {
        self.burst
            .unwrap_or_else(|| (self.requests_per_second * 2.0).ceil().min(1e6) as u32)
            .max(1)
    }

    fn validate(&self) -> Result<(), String> {
        let rate_ok =
            self.requests_per_second.is_finite() && (0.0..=1e6).contains(&self.requests_per_second);
        let burst_ok = self.burst.is_none_or(|b| (1..=1_000_000).contains(&b));
        if rate_ok && burst_ok {
            Ok(())
        } else {
            Err("requests_per_second must be 0 (off) to 1000000 and burst 1 to 1000000".into())
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The HMAC key for signed URLs. `WARREN_SIGNING_SECRET` overrides it; when both are
    /// absent, a secret is generated once and kept in `<data_dir>/signing-secret`.
    pub signing_secret: Option<Secret>,
    /// The cookie the gateway sets on first contact so later requests need no query.
    pub cookie_name: String,
    /// How long URLs from `warren token` stay valid by default.
    pub token_ttl: ConfigDuration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            signing_secret: None,
            cookie_name: "warren_session".into(),
            token_ttl: ConfigDuration(Duration::from_secs(24 * 3600)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Starts that may wait for a slot at once when every slot is busy; more get 503.
    pub queue_limit: usize,
    /// How long a start waits for a slot before it gets 503.
    pub queue_timeout: ConfigDuration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            queue_limit: 64,
            queue_timeout: ConfigDuration(Duration::from_secs(30)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    /// Sandboxes are process trees on this machine.
    Process,
    /// Sandboxes are containers, through the Docker Engine API (Docker or Podman).
    Docker,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    pub kind: RuntimeKind,
    /// `namespaces`: each sandbox in its own namespaces under bubblewrap, as
    /// `sandbox_uid`, with a private loopback. `none`: plain processes (development).
    pub isolation: IsolationKind,
    /// The unprivileged user sandboxes run as.
    pub sandbox_uid: u32,
    /// The port agents listen on inside their own loopback.
    pub agent_port: u16,
    /// Host paths every sandbox sees read-only even inside its private `/tmp`, `/root`,
    /// `/home` and `/run` (an agent installed there, say). The agent's program is
    /// always visible.
    pub ro_paths: Vec<PathBuf>,
    /// How long an agent may take to answer its readiness probe.
    pub start_timeout: ConfigDuration,
    /// How long a stopping agent gets between SIGTERM and SIGKILL.
    pub stop_grace: ConfigDuration,
    /// For `docker`: the engine's API socket.
    pub socket: PathBuf,
    /// For `docker`: the agent's image, which must be there (it is never pulled).
    pub image: String,
    /// For `docker`: the network mode of sandboxes allowed outbound connections.
    pub outbound_network: String,
    /// For `process` with namespaces: how many empty sandboxes (namespaces and cgroup
    /// made, no tenant yet) to keep ready for starts to claim. 0: none.
    pub pool: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            kind: RuntimeKind::Process,
            isolation: IsolationKind::Namespaces,
            sandbox_uid: 65534,
            agent_port: 8787,
            ro_paths: Vec::new(),
            start_timeout: ConfigDuration(Duration::from_secs(60)),
            stop_grace: ConfigDuration(Duration::from_secs(5)),
            socket: PathBuf::from("/var/run/docker.sock"),
            image: "localhost/warren-echo:latest".into(),
            outbound_network: "bridge".into(),
            pool: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IsolationKind {
    Namespaces,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// The built-in echo agent (`warren echo-agent`).
    Echo,
    /// Any program that serves HTTP on `WARREN_AGENT_ADDR` and answers `GET /healthz`.
    Command,
    /// OpenClaw's gateway (`openclaw gateway run`) on Node 24, from `openclaw_dir`.
    Openclaw,
}

/// OpenClaw's cache in its state dir (`$HOME/.openclaw`), relative to the workspace.
pub const OPENCLAW_CACHE: &str = ".openclaw/cache";

/// The name of the `[agent]` profile, for tenants whose tier and table choose none.
pub const DEFAULT_AGENT: &str = "default";

/// `[agent]` and `[agents.<name>]`: a workload and how to run it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    pub kind: AgentKind,
    /// For `command`: the program and its arguments.
    pub command: Vec<String>,
    /// For `openclaw`: where `scripts/install-openclaw` put Node 24 and OpenClaw.
    pub openclaw_dir: PathBuf,
    /// The path the readiness probe asks until it answers 2xx; the kind's own when
    /// unset (`/readyz` for OpenClaw, `/healthz` otherwise).
    pub readiness_path: Option<String>,
    /// For the `docker` runtime: this profile's image instead of `runtime.image`.
    pub image: Option<String>,
    /// For `openclaw`: the template of each tenant's `openclaw.json`; warren's own
    /// (no model provider) when unset.
    pub config_template: Option<PathBuf>,
    /// Services the agent reaches through the gateway on its own loopback, by name.
    pub egress: BTreeMap<String, EgressConfig>,
}

/// `[agent.egress.<name>]`: a port on each sandbox's own loopback that the gateway
/// serves by forwarding every request to `upstream`, adding the credential the
/// sandbox never holds. A model provider, typically.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// Where requests go: `http://` or `https://`, host, port and a path prefix that
    /// the request's own path is appended to.
    pub upstream: String,
    /// The port the agent connects to on `127.0.0.1`.
    pub port: u16,
    /// A variable of the gateway's environment whose value is sent upstream as
    /// `Authorization: Bearer <value>`; whatever the agent sent as `Authorization` is
    /// dropped either way.
    pub api_key_env: Option<String>,
}

impl AgentConfig {
    /// The path the readiness probe asks until it answers 2xx.
    pub fn readiness_path(&self) -> &str {
        match (&self.readiness_path, self.kind) {
            (Some(path), _) => path,
            (None, AgentKind::Openclaw) => "/readyz",
            (None, AgentKind::Echo | AgentKind::Command) => "/healthz",
        }
    }

    /// Checks what needs no file system; the message starts with the offending key.
    fn validate(&self, runtime: RuntimeKind) -> Result<(), String> {
        // A container runs its image's own command when none is given.
        if self.kind == AgentKind::Command
            && self.command.is_empty()
            && runtime != RuntimeKind::Docker
        {
            return Err("command is required when kind = \"command\"".into());
        }
        if self.kind == AgentKind::Openclaw && runtime == RuntimeKind::Docker {
            return Err("kind: \"openclaw\" runs on the process runtime; with docker, make an image of it and use kind = \"command\"".into());
        }
        if let Some(path) = &self.readiness_path
            && (!path.starts_with('/') || path.contains(['?', '#', ' ']))
        {
            return Err(format!(
                "readiness_path: {path:?} must be a path starting with '/'"
            ));
        }
        if self.config_template.is_some() && self.kind != AgentKind::Openclaw {
            return Err("config_template: only kind = \"openclaw\" has one".into());
        }
        let mut ports = Vec::new();
        for (name, egress) in &self.egress {
            let scheme_ok = ["http://", "https://"]
                .iter()
                .any(|s| egress.upstream.starts_with(s) && egress.upstream.len() > s.len());
            if !scheme_ok || egress.upstream.contains(['?', '#']) {
                return Err(format!(
                    "egress.{name}.upstream: {:?} must be an http:// or https:// URL without query",
                    egress.upstream
                ));
            }
            if egress.port == 0 || ports.contains(&egress.port) {
                return Err(format!(
                    "egress.{name}.port: {} must be set and differ from the profile's other egress ports",
                    egress.port
                ));
            }
            ports.push(egress.port);
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(format!(
                    "egress.{name}: names are ASCII letters, digits, '_' or '-'"
                ));
            }
        }
        Ok(())
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            kind: AgentKind::Echo,
            command: Vec::new(),
            openclaw_dir: PathBuf::from("/opt/warren/openclaw"),
            readiness_path: None,
            image: None,
            config_template: None,
            egress: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    Sqlite,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub kind: StateKind,
    /// The SQLite file; `<data_dir>/state.db` when unset.
    pub path: Option<PathBuf>,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            kind: StateKind::Sqlite,
            path: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// A directory on this machine.
    Local,
    /// Any S3-compatible object store.
    S3,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// For `local`: the directory; `<data_dir>/store` when unset.
    pub path: Option<PathBuf>,
    /// For `s3`: the endpoint URL (unset: AWS itself).
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: Option<String>,
    /// A key prefix under which every tenant lives.
    pub prefix: String,
    /// Allow `http://` endpoints (a store on a private network or loopback).
    pub allow_http: bool,
    pub request_timeout: ConfigDuration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Local,
            path: None,
            endpoint: None,
            region: "us-east-1".into(),
            bucket: None,
            prefix: String::new(),
            allow_http: false,
            request_timeout: ConfigDuration(Duration::from_secs(30)),
        }
    }
}

/// The environment variables that hold the S3 credentials; never in the file.
pub const S3_ACCESS_KEY_ENV: &str = "AWS_ACCESS_KEY_ID";
pub const S3_SECRET_KEY_ENV: &str = "AWS_SECRET_ACCESS_KEY";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// A change is synced after this much quiet...
    pub debounce: ConfigDuration,
    /// ...but never later than this after the first change (the RPO target, less upload).
    pub max_delay: ConfigDuration,
    /// Every running workspace is checked this often, to catch changes events missed.
    pub safety_interval: ConfigDuration,
    /// Chunk uploads (and downloads) in flight per sync.
    pub upload_concurrency: usize,
    /// This gateway is the only one ever writing its tenants' snapshots to the store:
    /// a start then takes the local copy's record of the snapshot it matches for the
    /// newest (unless the gateway has seen otherwise) and does not ask the store.
    /// Leave off when tenants move between gateways that share a store.
    pub single_writer: bool,
    /// Paths in every workspace (relative to it, with what is below them) that are
    /// never synced: caches an agent rebuilds. OpenClaw's `.openclaw/cache` is left out
    /// whenever a profile runs OpenClaw.
    pub exclude: Vec<String>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            debounce: ConfigDuration(Duration::from_millis(200)),
            max_delay: ConfigDuration(Duration::from_millis(500)),
            safety_interval: ConfigDuration(Duration::from_secs(60)),
            upload_concurrency: 8,
            single_writer: false,
            exclude: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SweepConfig {
    /// A cron expression (five fields, UTC): when every tenant's workspace is synced
    /// and retention applied. An empty string turns the schedule off.
    pub schedule: String,
    /// Tenants synced at once during a sweep.
    pub concurrency: usize,
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            schedule: "*/5 * * * *".into(),
            concurrency: 4,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Every snapshot younger than this is kept.
    pub keep_all_for: ConfigDuration,
    /// Then the newest of each hour, up to this age.
    pub hourly_for: ConfigDuration,
    /// Then the newest of each day, up to this age. The newest snapshot is always kept.
    pub daily_for: ConfigDuration,
    /// Chunks no snapshot uses are collected once older than this.
    pub gc_grace: ConfigDuration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            keep_all_for: ConfigDuration(Duration::from_secs(3600)),
            hourly_for: ConfigDuration(Duration::from_secs(86_400)),
            daily_for: ConfigDuration(Duration::from_secs(30 * 86_400)),
            gc_grace: ConfigDuration(Duration::from_secs(3600)),
        }
    }
}

/// `[cleanup]`: the inactive-tenant cleanup. A tenant whose sandbox has been asleep for
/// `inactive_after` loses its local workspace (the store keeps it); `snapshots_after`
/// later, unless it came back meanwhile, its snapshots go from the store too.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CleanupConfig {
    /// A cron expression (five fields, or six with seconds first; UTC): when the
    /// cleanup runs. An empty string turns the schedule off.
    pub schedule: String,
    /// `false`: a dry run that only reports what it would remove.
    pub enabled: bool,
    /// How long a tenant's sandbox must have been asleep before its local workspace
    /// is removed.
    pub inactive_after: ConfigDuration,
    /// How long after its local workspace was removed a tenant that did not come back
    /// loses its snapshots in the store.
    pub snapshots_after: ConfigDuration,
}

impl Default for CleanupConfig {
    fn default() -> Self {
        Self {
            schedule: "30 3 * * *".into(),
            enabled: false,
            inactive_after: ConfigDuration(Duration::from_secs(90 * 86_400)),
            snapshots_after: ConfigDuration(Duration::from_secs(30 * 86_400)),
        }
    }
}

/// Parses the cleanup's schedule: cron, five fields or six with seconds first, UTC.
pub fn cleanup_schedule(expr: &str) -> Result<croner::Cron, croner::errors::CronError> {
    prewarm_rule(expr)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The bearer token of `/admin/api`. `WARREN_ADMIN_TOKEN` overrides it; when both
    /// are absent, one is generated once into `<data_dir>/admin-token`.
    pub token: Option<Secret>,
    /// The host (as browsers send it in `Host`, with its port if not the scheme's) the
    /// dashboard is served on, and nothing else: its session is accepted there only,
    /// and no agent's content is ever served there. Unset: the dashboard shares the
    /// users' origin (a page an agent serves could use an operator's session).
    pub host: Option<String>,
}

/// The environment variable that overrides `admin.token`.
pub const ADMIN_TOKEN_ENV: &str = "WARREN_ADMIN_TOKEN";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `warren_gateway=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// `[prices]`: US dollars, by default the original platform's published prices.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricesConfig {
    /// Per vCPU-second of a running sandbox.
    pub vcpu_second: f64,
    /// Per GiB-second of a running sandbox's memory.
    pub memory_gib_second: f64,
    /// Per GB-second of a running sandbox's disk.
    pub disk_gb_second: f64,
    /// Per GB-month of the store.
    pub storage_gb_month: f64,
}

impl Default for PricesConfig {
    fn default() -> Self {
        Self {
            vcpu_second: 0.000_02,
            memory_gib_second: 0.000_002_5,
            disk_gb_second: 0.000_000_07,
            storage_gb_month: 0.015,
        }
    }
}

impl PricesConfig {
    /// What one second of a running sandbox of `size` costs.
    pub fn per_second(&self, size: &InstanceSize) -> f64 {
        size.vcpu * self.vcpu_second
            + size.memory_mib as f64 / 1024.0 * self.memory_gib_second
            + size.disk_gb as f64 * self.disk_gb_second
    }
}

/// A sandbox size: what an instance type names.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSize {
    pub vcpu: f64,
    pub memory_mib: u64,
    pub disk_gb: u64,
    /// Processes and threads at most.
    pub pids: u64,
    /// The network of sandboxes of this size, unless their tenant or tier says
    /// otherwise.
    #[serde(default)]
    pub network: Option<NetworkAccess>,
}

/// The original's instance types (vCPU, memory, disk), built in.
pub const INSTANCE_TYPES: [(&str, InstanceSize); 6] = [
    (
        "lite",
        InstanceSize {
            vcpu: 1.0 / 16.0,
            memory_mib: 256,
            disk_gb: 2,
            pids: 256,
            network: None,
        },
    ),
    (
        "basic",
        InstanceSize {
            vcpu: 0.25,
            memory_mib: 1024,
            disk_gb: 4,
            pids: 512,
            network: None,
        },
    ),
    (
        "standard-1",
        InstanceSize {
            vcpu: 0.5,
            memory_mib: 4096,
            disk_gb: 8,
            pids: 4096,
            network: None,
        },
    ),
    (
        "standard-2",
        InstanceSize {
            vcpu: 1.0,
            memory_mib: 6144,
            disk_gb: 12,
            pids: 4096,
            network: None,
        },
    ),
    (
        "standard-3",
        InstanceSize {
            vcpu: 2.0,
            memory_mib: 8192,
            disk_gb: 16,
            pids: 4096,
            network: None,
        },
    ),
    (
        "standard-4",
        InstanceSize {
            vcpu: 4.0,
            memory_mib: 12288,
            disk_gb: 20,
            pids: 4096,
            network: None,
        },
    ),
];

/// Names joined for an error message.
fn known<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<_> = names.collect();
    if names.is_empty() {
        return "none".into();
    }
    names.join(", ")
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// The workspace paths never synced: `sync.exclude`, and OpenClaw's cache of its
    /// control UI (54 MB, rebuilt at its start) where a profile runs OpenClaw.
    pub fn sync_exclude(&self) -> Vec<String> {
        let mut exclude = self.sync.exclude.clone();
        let openclaw = self
            .agent_profiles()
            .any(|(_, a)| a.kind == AgentKind::Openclaw);
        if openclaw && !exclude.iter().any(|p| p == OPENCLAW_CACHE) {
            exclude.push(OPENCLAW_CACHE.to_owned());
        }
        exclude
    }

    /// Reads a config file, or the embedded defaults when `path` is `None`, then applies
    /// environment overrides and validates the result.
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config = match path {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::parse(&text).map_err(|message| ConfigError::Parse {
                    path: path.to_owned(),
                    message,
                })?
            }
        };
        if let Some(secret) = env(SIGNING_SECRET_ENV).filter(|s| !s.is_empty()) {
            config.auth.signing_secret = Some(Secret::new(secret));
        }
        if let Some(token) = env(ADMIN_TOKEN_ENV).filter(|s| !s.is_empty()) {
            config.admin.token = Some(Secret::new(token));
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text. The message names the offending key and line.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.max_instances == 0 {
            return invalid("max_instances must be at least 1".into());
        }
        for (name, size) in &self.instance_types {
            // Below these an agent cannot even start; the kernel refuses a CPU quota
            // under a millisecond per 100 ms.
            // Within what the cgroup arithmetic (bytes, microseconds) can hold.
            let cpu_ok = size.vcpu.is_finite() && (0.01..=4096.0).contains(&size.vcpu);
            let memory_ok = (16..=(1 << 30)).contains(&size.memory_mib);
            let pids_ok = (4..=(1 << 22)).contains(&size.pids);
            if !(cpu_ok && memory_ok && pids_ok) {
                return invalid(format!(
                    "instance_types.{name}: vcpu must be 0.01 to 4096, memory_mib 16 to 2^30 and pids 4 to 2^22"
                ));
            }
        }
        let named = self
            .per_tier_and_tenant("instance_type", |t| &t.instance_type, |t| &t.instance_type)
            .filter_map(|(key, name)| Some((key, name.as_ref()?)));
        let named = std::iter::once(("instance_type".to_owned(), &self.instance_type)).chain(named);
        for (key, name) in named {
            if self.instance_size(name).is_none() {
                let mut names: Vec<&str> = INSTANCE_TYPES.iter().map(|(n, _)| *n).collect();
                names.extend(self.instance_types.keys().map(String::as_str));
                return invalid(format!(
                    "{key}: unknown instance type {name:?}; known: {}",
                    known(names.into_iter())
                ));
            }
        }
        let rules = self.per_tier_and_tenant("prewarm", |t| &t.prewarm, |t| &t.prewarm);
        for (key, exprs) in rules {
            for expr in exprs {
                if let Err(e) = prewarm_rule(expr) {
                    return invalid(format!("{key}: invalid cron rule {expr:?}: {e}"));
                }
            }
        }
        for (tenant, settings) in &self.tenants {
            if let Some(tier) = &settings.tier
                && !self.tiers.contains_key(tier)
            {
                return invalid(format!(
                    "tenants.{tenant}.tier: unknown tier {tier:?}; known: {}",
                    known(self.tiers.keys().map(String::as_str))
                ));
            }
        }
        if self.auth.cookie_name.is_empty()
            || !self
                .auth
                .cookie_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return invalid(
                "auth.cookie_name must be non-empty ASCII letters, digits, '_' or '-'".into(),
            );
        }
        if self
            .auth
            .signing_secret
            .as_ref()
            .is_some_and(|s| s.expose().len() < 16)
        {
            return invalid("the signing secret must be at least 16 bytes".into());
        }
        if self.agents.contains_key(DEFAULT_AGENT) {
            return invalid(format!(
                "agents.{DEFAULT_AGENT}: that name is the [agent] table's; give the profile another"
            ));
        }
        for (name, agent) in self.agent_profiles() {
            let key = match name {
                DEFAULT_AGENT => "agent".to_owned(),
                name => format!("agents.{name}"),
            };
            agent
                .validate(self.runtime.kind)
                .or_else(|m| invalid(format!("{key}.{m}")))?;
            if let Some((egress, _)) = agent
                .egress
                .iter()
                .find(|(_, e)| e.port == self.runtime.agent_port)
            {
                return invalid(format!(
                    "{key}.egress.{egress}.port: the agent itself listens on runtime.agent_port"
                ));
            }
        }
        let limits = self.per_tier_and_tenant("rate_limit", |t| &t.rate_limit, |t| &t.rate_limit);
        let limits = limits.filter_map(|(key, limit)| Some((key, (*limit)?)));
        for (key, limit) in
            std::iter::once(("rate_limit".to_owned(), self.rate_limit)).chain(limits)
        {
            limit
                .validate()
                .or_else(|m| invalid(format!("{key}: {m}")))?;
        }
        if self.cleanup.inactive_after.0.is_zero() {
            return invalid("cleanup.inactive_after must be more than 0".into());
        }
        let schedule = self.cleanup.schedule.trim();
        if !schedule.is_empty()
            && let Err(e) = cleanup_schedule(schedule)
        {
            return invalid(format!(
                "cleanup.schedule: invalid cron rule {schedule:?}: {e}"
            ));
        }
        let choices = self.per_tier_and_tenant("agent", |t| &t.agent, |t| &t.agent);
        for (key, agent) in choices {
            if let Some(name) = agent
                && !self.agents.contains_key(name)
            {
                return invalid(format!(
                    "{key}: unknown agent profile {name:?}; known: {}",
                    known(self.agents.keys().map(String::as_str))
                ));
            }
        }
        if self.runtime.isolation == IsolationKind::Namespaces
            && (self.runtime.sandbox_uid == 0 || self.runtime.agent_port == 0)
        {
            return invalid(
                "runtime.sandbox_uid must not be 0 (root) and runtime.agent_port must be set"
                    .into(),
            );
        }
        // A container that shares the host's network or another's is no sandbox.
        let mode = self.runtime.outbound_network.as_str();
        if mode == "host" || mode.starts_with("container:") || mode.starts_with("ns:") {
            return invalid(format!(
                "runtime.outbound_network = {mode:?} would share another network namespace; use \"bridge\" or \"slirp4netns\""
            ));
        }
        if self.runtime.start_timeout.0.is_zero() {
            return invalid("runtime.start_timeout must be more than 0".into());
        }
        if self.store.kind == StoreKind::S3 && self.store.bucket.as_deref().unwrap_or("").is_empty()
        {
            return invalid("store.bucket is required when store.kind = \"s3\"".into());
        }
        if let Some(path) = self.sync.exclude.iter().find(|p| {
            p.is_empty()
                || p.starts_with('/')
                || p.ends_with('/')
                || p.split('/').any(|c| c.is_empty() || c == "." || c == "..")
        }) {
            return invalid(format!(
                "sync.exclude: {path:?} must be a path relative to the workspace, like \".cache\" or \"state/tmp\""
            ));
        }
        if self.sync.debounce.0 > self.sync.max_delay.0 {
            return invalid("sync.debounce must not be longer than sync.max_delay".into());
        }
        if self.sync.safety_interval.0.is_zero()
            || self.sync.upload_concurrency == 0
            || self.sweep.concurrency == 0
        {
            return invalid("sync.safety_interval, sync.upload_concurrency and sweep.concurrency must be more than 0".into());
        }
        let p = &self.prices;
        let prices = [
            p.vcpu_second,
            p.memory_gib_second,
            p.disk_gb_second,
            p.storage_gb_month,
        ];
        if prices.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return invalid("prices: every price must be a number, 0 or more".into());
        }
        if self
            .admin
            .token
            .as_ref()
            .is_some_and(|s| s.expose().len() < 16)
        {
            return invalid("the admin token must be at least 16 bytes".into());
        }
        Ok(())
    }

    /// Every tier's and every tenant's `key`, with its name in the config
    /// (`tiers.pro.agent`, `tenants.alice.agent`), to check it.
    fn per_tier_and_tenant<'a, T: 'a>(
        &'a self,
        key: &'a str,
        tier: impl Fn(&'a TierConfig) -> T + 'a,
        tenant: impl Fn(&'a TenantConfig) -> T + 'a,
    ) -> impl Iterator<Item = (String, T)> + 'a {
        let tiers = self
            .tiers
            .iter()
            .map(move |(name, t)| (format!("tiers.{name}.{key}"), tier(t)));
        let tenants = self
            .tenants
            .iter()
            .map(move |(id, t)| (format!("tenants.{id}.{key}"), tenant(t)));
        tiers.chain(tenants)
    }

    /// What `tenant`'s sandbox gets, with the tier its config table names.
    pub fn sandbox_profile(&self, tenant: &TenantId) -> SandboxProfile<'_> {
        self.sandbox_profile_in(tenant, None)
    }

    /// What `tenant`'s sandbox gets: each setting from the tenant's own table, else
    /// from its tier's, else (the network) from its instance type's, else from the top
    /// level. Its tier is `assigned` (through the admin API) if that names a tier of
    /// this config, else the one its table names.
    pub fn sandbox_profile_in(
        &self,
        tenant: &TenantId,
        assigned: Option<&str>,
    ) -> SandboxProfile<'_> {
        let own = self.tenants.get(tenant);
        let tier = assigned
            .and_then(|name| self.tiers.get_key_value(name))
            .or_else(|| {
                own.and_then(|t| t.tier.as_ref())
                    .and_then(|name| self.tiers.get_key_value(name))
            });
        let (tier_name, tier) = (tier.map(|(n, _)| n.as_str()), tier.map(|(_, t)| t));
        let instance_type = own
            .and_then(|t| t.instance_type.as_deref())
            .or(tier.and_then(|t| t.instance_type.as_deref()))
            .unwrap_or(&self.instance_type);
        // Every name was checked by `validate`; a config that skipped it gets the
        // smallest built-in size, never more than was asked.
        let size = self
            .instance_size(instance_type)
            .unwrap_or(INSTANCE_TYPES[0].1);
        // Likewise an unknown agent name (refused by `validate`) gets `[agent]`.
        let (agent_name, agent) = own
            .and_then(|t| t.agent.as_deref())
            .or(tier.and_then(|t| t.agent.as_deref()))
            .and_then(|name| self.agents.get_key_value(name))
            .map_or((DEFAULT_AGENT, &self.agent), |(n, a)| (n.as_str(), a));
        SandboxProfile {
            tier: tier_name,
            instance_type,
            size,
            network: own
                .and_then(|t| t.network)
                .or(tier.and_then(|t| t.network))
                .or(size.network)
                .unwrap_or(self.network),
            sleep_after: own
                .and_then(|t| t.sleep_after)
                .or(tier.and_then(|t| t.sleep_after))
                .unwrap_or(self.sleep_after),
            priority: tier.map_or(0, |t| t.priority),
            agent_name,
            agent,
            rate_limit: own
                .and_then(|t| t.rate_limit)
                .or(tier.and_then(|t| t.rate_limit))
                .unwrap_or(self.rate_limit),
            max_websockets: own
                .and_then(|t| t.max_websockets)
                .or(tier.and_then(|t| t.max_websockets))
                .unwrap_or(self.max_websockets),
        }
    }

    /// The agent profile `name` (a key of `[agents]`, or [`DEFAULT_AGENT`]).
    pub fn agent_profile(&self, name: &str) -> Option<&AgentConfig> {
        match name {
            DEFAULT_AGENT => Some(&self.agent),
            name => self.agents.get(name),
        }
    }

    /// Every agent profile with its name, `[agent]` first.
    pub fn agent_profiles(&self) -> impl Iterator<Item = (&str, &AgentConfig)> {
        std::iter::once((DEFAULT_AGENT, &self.agent))
            .chain(self.agents.iter().map(|(n, a)| (n.as_str(), a)))
    }

    /// The size an instance type names: this deployment's own, else a built-in one.
    pub fn instance_size(&self, name: &str) -> Option<InstanceSize> {
        self.instance_types.get(name).copied().or_else(|| {
            INSTANCE_TYPES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, size)| *size)
        })
    }

    pub fn store_path(&self) -> PathBuf {
        self.store
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("store"))
    }

    pub fn state_path(&self) -> PathBuf {
        self.state
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("state.db"))
    }

    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.listen),
        }
    }
}

/// Parses a pre-warm rule: cron, five fields or six with seconds first, UTC.
pub fn prewarm_rule(expr: &str) -> Result<croner::Cron, croner::errors::CronError> {
    croner::Cron::new(expr).with_seconds_optional().parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn empty_file_is_the_embedded_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("./warren-data"));
        assert_eq!(c.max_instances, 10);
        assert_eq!(c.sandbox_profile(&tenant("anyone")).size.memory_mib, 12288);
        assert_eq!(c.network, NetworkAccess::None);
        assert!(c.sleep_after == SleepAfter::Idle(Duration::from_secs(600)));
        c.validate().unwrap();
    }

    #[test]
    fn reads_the_originals_settings() {
        let c = Config::parse(
            "listen = \"0.0.0.0:9000\"\nmax_instances = 2\ninstance_type = \"lite\"\nsleep_after = \"never\"\n\
             [admission]\nqueue_timeout = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(c.max_instances, 2);
        assert_eq!(c.instance_type, "lite");
        assert!(c.sleep_after == SleepAfter::Never);
        assert_eq!(c.admission.queue_timeout.0, Duration::from_secs(2));
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = Config::parse("max_instance = 3").unwrap_err();
        assert!(err.contains("max_instance"), "{err}");
        let err = Config::parse("[auth]\nsecret = \"x\"").unwrap_err();
        assert!(err.contains("secret"), "{err}");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(
            Config::parse("sleep_after = \"soon\"")
                .unwrap_err()
                .contains("never")
        );
        assert!(Config::parse("sleep_after = \"0s\"").is_err());
        let err = invalid("instance_type = \"huge\"");
        assert!(
            err.contains("\"huge\"") && err.contains("standard-4"),
            "{err}"
        );
        assert!(Config::parse("network = \"some\"").is_err());
        let c = Config::parse("max_instances = 0").unwrap();
        assert!(c.validate().is_err());
    }

    fn tenant(id: &str) -> TenantId {
        TenantId::parse(id).unwrap()
    }

    /// The error of a config that parses but does not validate.
    fn invalid(text: &str) -> String {
        Config::parse(text)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_deployment_adds_its_own_instance_types_and_may_resize_a_built_in_one() {
        let c = Config::parse(
            "instance_type = \"tiny\"\n\
             [instance_types.tiny]\nvcpu = 0.1\nmemory_mib = 64\ndisk_gb = 1\npids = 32\n\
             [instance_types.lite]\nvcpu = 0.5\nmemory_mib = 512\ndisk_gb = 2\npids = 256\n\
             network = \"outbound\"\n\
             [tenants.alice]\ninstance_type = \"lite\"\n\
             [tenants.bob]\ninstance_type = \"basic\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        let size = |id: &str| c.sandbox_profile(&tenant(id)).size;
        assert_eq!(size("carol").memory_mib, 64);
        assert_eq!(size("alice").memory_mib, 512, "the deployment's lite wins");
        assert_eq!(size("bob").memory_mib, 1024, "built-ins stay");
        let network = |id: &str| c.sandbox_profile(&tenant(id)).network;
        assert_eq!(network("alice"), NetworkAccess::Outbound, "from her size");
        assert_eq!(network("bob"), NetworkAccess::None);

        let err =
            invalid("[instance_types.zero]\nvcpu = 0.0\nmemory_mib = 64\ndisk_gb = 1\npids = 32");
        assert!(err.contains("instance_types.zero"), "{err}");
        let err = invalid(
            "[instance_types.huge]\nvcpu = 1.0\nmemory_mib = 18446744073709551615\ndisk_gb = 1\npids = 32",
        );
        assert!(err.contains("instance_types.huge"), "{err}");
        let err = Config::parse("[instance_types.x]\nvcpu = 1.0\nmemory_mib = 64").unwrap_err();
        assert!(err.contains("disk_gb"), "a size names all four: {err}");
    }

    #[test]
    fn a_tenant_beats_its_tier_and_a_tier_beats_the_top_level() {
        let c = Config::parse(
            "instance_type = \"standard-1\"\nnetwork = \"none\"\n\
             [tiers.pro]\ninstance_type = \"standard-2\"\nnetwork = \"outbound\"\n\
             [tiers.empty]\n\
             [tenants.alice]\ntier = \"pro\"\ninstance_type = \"lite\"\n\
             [tenants.bob]\ntier = \"pro\"\nnetwork = \"none\"\n\
             [tenants.carol]\ntier = \"empty\"\n\
             [tenants.dave]\nnetwork = \"outbound\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        let profile = |id: &str| {
            let p = c.sandbox_profile(&tenant(id));
            (p.instance_type, p.network)
        };
        assert_eq!(profile("alice"), ("lite", NetworkAccess::Outbound));
        assert_eq!(profile("bob"), ("standard-2", NetworkAccess::None));
        assert_eq!(profile("carol"), ("standard-1", NetworkAccess::None));
        assert_eq!(profile("dave"), ("standard-1", NetworkAccess::Outbound));
        assert_eq!(profile("erin"), ("standard-1", NetworkAccess::None));
    }

    #[test]
    fn the_agent_profile_comes_from_the_tenant_then_its_tier_then_agent() {
        let c = Config::parse(
            "[agent]\nkind = \"echo\"\n\
             [agents.claw]\nkind = \"openclaw\"\n\
             [agents.claw.egress.llm]\nupstream = \"https://api.example.com/v1\"\nport = 18790\napi_key_env = \"LLM_KEY\"\n\
             [agents.web]\nkind = \"command\"\ncommand = [\"/bin/web\"]\nreadiness_path = \"/ready\"\n\
             [tiers.pro]\nagent = \"claw\"\n\
             [tenants.alice]\ntier = \"pro\"\n\
             [tenants.bob]\ntier = \"pro\"\nagent = \"web\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        let agent = |id: &str| {
            let p = c.sandbox_profile(&tenant(id));
            (
                p.agent_name,
                p.agent.kind,
                p.agent.readiness_path().to_owned(),
            )
        };
        assert_eq!(
            agent("alice"),
            ("claw", AgentKind::Openclaw, "/readyz".into())
        );
        assert_eq!(agent("bob"), ("web", AgentKind::Command, "/ready".into()));
        assert_eq!(
            agent("carol"),
            (DEFAULT_AGENT, AgentKind::Echo, "/healthz".into())
        );
        let claw = c.agent_profile("claw").unwrap();
        assert_eq!(claw.egress["llm"].port, 18790);
        assert_eq!(c.agent_profiles().count(), 3);
    }

    #[test]
    fn openclaws_cache_is_never_synced_and_exclusions_are_relative_paths() {
        let c = Config::parse("[sync]\nexclude = [\"tmp\"]\n[agents.claw]\nkind = \"openclaw\"\n")
            .unwrap();
        assert_eq!(c.sync_exclude(), ["tmp", OPENCLAW_CACHE]);
        assert!(Config::default().sync_exclude().is_empty());
        for path in ["/etc", "a/../b", "", "cache/", "./x"] {
            let error = invalid(&format!("[sync]\nexclude = [{path:?}]\n"));
            assert!(error.contains("sync.exclude"), "{path}: {error}");
        }
    }

    #[test]
    fn bad_agent_profiles_are_refused_by_key() {
        for (text, says) in [
            (
                "[tiers.pro]\nagent = \"nope\"\n",
                "tiers.pro.agent: unknown agent profile \"nope\"",
            ),
            (
                "[tenants.bob]\nagent = \"nope\"\n",
                "tenants.bob.agent: unknown agent profile",
            ),
            (
                "[agents.default]\n",
                "agents.default: that name is the [agent] table's",
            ),
            (
                "[agents.x]\nkind = \"command\"\n",
                "agents.x.command is required",
            ),
            (
                "[agents.x]\nreadiness_path = \"ready\"\n",
                "agents.x.readiness_path",
            ),
            (
                "[agent]\nconfig_template = \"/t.json\"\n",
                "agent.config_template: only",
            ),
            (
                "[agent.egress.llm]\nupstream = \"ftp://x\"\nport = 1\n",
                "agent.egress.llm.upstream",
            ),
            (
                "[agent.egress.a]\nupstream = \"http://x\"\nport = 9\n[agent.egress.b]\nupstream = \"http://y\"\nport = 9\n",
                "agent.egress.b.port",
            ),
            (
                "[agent.egress.a]\nupstream = \"http://x\"\nport = 8787\n",
                "agent.egress.a.port: the agent itself listens",
            ),
        ] {
            let error = invalid(text);
            assert!(error.contains(says), "{text}: {error}");
        }
    }

    #[test]
    fn sleep_after_and_priority_come_from_the_tier_an_assignment_wins() {
        let c = Config::parse(
            "sleep_after = \"10m\"\n\
             [tiers.warm]\nsleep_after = \"never\"\npriority = 10\n\
             [tiers.slow]\nsleep_after = \"1h\"\n\
             [tenants.alice]\ntier = \"warm\"\n\
             [tenants.bob]\ntier = \"warm\"\nsleep_after = \"5m\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        let alice = c.sandbox_profile(&tenant("alice"));
        assert_eq!((alice.tier, alice.priority), (Some("warm"), 10));
        assert!(alice.keep_warm());
        let bob = c.sandbox_profile(&tenant("bob"));
        assert_eq!(bob.sleep_after, SleepAfter::Idle(Duration::from_secs(300)));
        assert!(!bob.keep_warm());
        let erin = c.sandbox_profile(&tenant("erin"));
        assert_eq!((erin.tier, erin.priority), (None, 0));
        assert_eq!(erin.sleep_after, SleepAfter::Idle(Duration::from_secs(600)));
        // An assignment wins over the table; one naming no tier is ignored.
        let moved = c.sandbox_profile_in(&tenant("alice"), Some("slow"));
        assert_eq!(moved.tier, Some("slow"));
        assert_eq!(
            moved.sleep_after,
            SleepAfter::Idle(Duration::from_secs(3600))
        );
        let unknown = c.sandbox_profile_in(&tenant("alice"), Some("gone"));
        assert_eq!(unknown.tier, Some("warm"));
    }

    #[test]
    fn unknown_instance_types_tiers_and_bad_tenant_ids_are_refused() {
        for text in [
            "[tiers.pro]\ninstance_type = \"huge\"",
            "[tenants.alice]\ninstance_type = \"huge\"",
        ] {
            let err = invalid(text);
            assert!(err.contains("unknown instance type \"huge\""), "{err}");
        }
        let err = Config::parse("[tenants.\"a/b\"]\nnetwork = \"none\"").unwrap_err();
        assert!(
            err.contains("\"a/b\"") && err.contains("tenant id"),
            "{err}"
        );
        let err = Config::parse("[tenants.\".hidden\"]").unwrap_err();
        assert!(err.contains("tenant id"), "{err}");
        let err = Config::parse("[tiers.pro]\nsleep_after = \"0s\"").unwrap_err();
        assert!(err.contains("sleep_after"), "{err}");
        let err = Config::parse("[tiers.pro]\npriority = -1").unwrap_err();
        assert!(err.contains("priority"), "{err}");
        let err = invalid("[tiers.pro]\nprewarm = [\"0 8 * * 1-5\", \"at eight\"]");
        assert!(
            err.contains("tiers.pro.prewarm") && err.contains("at eight"),
            "{err}"
        );
        let err = invalid("[tenants.alice]\nprewarm = [\"61 * * * *\"]");
        assert!(err.contains("tenants.alice.prewarm"), "{err}");
        Config::parse("[tiers.pro]\nprewarm = [\"0 8 * * 1-5\", \"*/5 * * * * *\"]")
            .unwrap()
            .validate()
            .unwrap();
        let err = Config::parse("[tenants.alice]\ntire = \"pro\"").unwrap_err();
        assert!(err.contains("tire"), "{err}");

        let c = Config::parse("[tiers.pro]\n[tenants.alice]\ntier = \"gold\"").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("tenants.alice.tier") && err.contains("\"gold\"") && err.contains("pro"),
            "{err}"
        );
    }

    #[test]
    fn rate_limits_and_websocket_caps_come_from_the_tenant_then_its_tier() {
        let c = Config::parse(
            "rate_limit = { requests_per_second = 5, burst = 10 }\nmax_websockets = 4\n\
             [tiers.pro]\nrate_limit = { requests_per_second = 100 }\n\
             [tenants.alice]\ntier = \"pro\"\nmax_websockets = 0\n\
             [tenants.bob]\ntier = \"pro\"\nrate_limit = { requests_per_second = 0 }\n",
        )
        .unwrap();
        c.validate().unwrap();
        let limits = |id: &str| {
            let p = c.sandbox_profile(&tenant(id));
            (
                p.rate_limit.requests_per_second,
                p.rate_limit.burst(),
                p.rate_limit.is_off(),
                p.max_websockets,
            )
        };
        assert_eq!(
            limits("alice"),
            (100.0, 200, false, 0),
            "the tier's rate, her own cap"
        );
        assert_eq!(limits("bob"), (0.0, 1, true, 4));
        assert_eq!(limits("carol"), (5.0, 10, false, 4));
        let defaults = Config::default();
        let d = defaults.sandbox_profile(&tenant("anyone"));
        assert_eq!(
            (d.rate_limit.requests_per_second, d.rate_limit.burst()),
            (100.0, 200)
        );
        assert_eq!(d.max_websockets, 32);
        for (text, says) in [
            (
                "rate_limit = { requests_per_second = -1 }",
                "rate_limit: requests_per_second",
            ),
            (
                "rate_limit = { requests_per_second = nan }",
                "rate_limit: requests_per_second",
            ),
            (
                "[tiers.x]\nrate_limit = { requests_per_second = 1, burst = 0 }",
                "tiers.x.rate_limit",
            ),
            (
                "[tenants.y]\nrate_limit = { requests_per_second = 1e9 }",
                "tenants.y.rate_limit",
            ),
        ] {
            let error = invalid(text);
            assert!(error.contains(says), "{text}: {error}");
        }
        let err = Config::parse("rate_limit = { per_second = 1 }").unwrap_err();
        assert!(err.contains("per_second"), "{err}");
        assert!(Config::parse("max_websockets = -1").is_err());
    }

    #[test]
    fn cleanup_is_a_dry_run_by_default_and_checks_its_keys() {
        let c = Config::default();
        assert!(!c.cleanup.enabled);
        assert_eq!(c.cleanup.inactive_after.0, Duration::from_secs(90 * 86_400));
        let c = Config::parse(
            "[cleanup]\nenabled = true\ninactive_after = \"1s\"\nsnapshots_after = \"0s\"\nschedule = \"*/10 * * * * *\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(c.cleanup.enabled);
        let err = invalid("[cleanup]\ninactive_after = \"0s\"");
        assert!(err.contains("cleanup.inactive_after"), "{err}");
        let err = invalid("[cleanup]\nschedule = \"at night\"");
        assert!(err.contains("cleanup.schedule"), "{err}");
        Config::parse("[cleanup]\nschedule = \"\"")
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn the_environment_overrides_the_secret() {
        let dir = std::env::temp_dir().join(format!("warren-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("warren.toml");
        std::fs::write(
            &path,
            "[auth]\nsigning_secret = \"from-the-file-0123456789\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), no_env).unwrap();
        assert_eq!(
            c.auth.signing_secret.unwrap().expose(),
            "from-the-file-0123456789"
        );
        let env =
            |k: &str| (k == SIGNING_SECRET_ENV).then(|| "from-the-environment-0123".to_owned());
        let c = Config::load(Some(&path), env).unwrap();
        assert_eq!(
            c.auth.signing_secret.unwrap().expose(),
            "from-the-environment-0123"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
