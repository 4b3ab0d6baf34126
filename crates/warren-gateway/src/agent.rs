//! Agent profiles made ready to run: the command a sandbox runs, the environment it
//! gets, its egress ports, and, for OpenClaw, the `openclaw.json` each tenant's agent
//! reads, rendered from a template an operator may replace.

use std::path::Path;

use warren_core::TenantId;
use warren_core::auth::Signer;
use warren_core::config::{AgentConfig, AgentKind};

use crate::egress::Route;

/// warren's own OpenClaw template: no model provider; no fetches at start of what a
/// sandbox cannot reach (the model catalogue, a version check); the control UI served
/// from the installed, read-only copy (otherwise OpenClaw copies its 54 MB of assets
/// into every tenant's state dir).
pub const OPENCLAW_TEMPLATE: &str = include_str!("openclaw.json");

/// Where OpenClaw reads its configuration, inside the tenant's workspace (its `HOME`).
pub const OPENCLAW_CONFIG: &str = ".openclaw/openclaw.json";

/// One agent profile, ready to start sandboxes with.
pub struct Agent {
    pub kind: AgentKind,
    pub command: Vec<String>,
    pub readiness_path: String,
    pub egress: Vec<Route>,
    /// For OpenClaw: the text `openclaw.json` is rendered from.
    template: Option<String>,
    /// For OpenClaw: where it is installed.
    openclaw_dir: String,
}

impl Agent {
    /// `config` ready to run `command`, its egress keys read from `env`, its template
    /// from disk; the message says what is wrong, starting with the offending key.
    pub fn new(
        config: &AgentConfig,
        command: Vec<String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let egress = config
            .egress
            .iter()
            .map(|(name, e)| Route::new(name, e, &env))
            .collect::<Result<Vec<_>, _>>()?;
        let template = match (config.kind, &config.config_template) {
            (AgentKind::Openclaw, None) => Some(OPENCLAW_TEMPLATE.to_owned()),
            (AgentKind::Openclaw, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("config_template: cannot read {}: {e}", path.display()))?,
            ),
            _ => None,
        };
        let agent = Self {
            kind: config.kind,
            command,
            readiness_path: config.readiness_path().to_owned(),
            egress,
            template,
            // As it goes inside a JSON string.
            openclaw_dir: json_escaped(&config.openclaw_dir.to_string_lossy()),
        };
        // Every placeholder must be one warren fills.
        if let Some(Err(e)) = agent.render(&TenantId::parse("template-check").expect("a valid id"))
        {
            return Err(format!("config_template: {e}"));
        }
        Ok(agent)
    }

    /// What the tenant's agent gets in its environment besides the runtime's own: for
    /// OpenClaw, its gateway token (which warren keeps to itself) and the switches
    /// that keep it to serving one user behind warren.
    pub fn env(&self, signer: &Signer, tenant: &TenantId) -> Vec<(String, String)> {
        match self.kind {
            AgentKind::Openclaw => {
                let token = signer.agent_token(tenant).expose().to_owned();
                let mut env = vec![("OPENCLAW_GATEWAY_TOKEN".to_owned(), token)];
                for switch in [
                    "OPENCLAW_DISABLE_BONJOUR",
                    "OPENCLAW_NO_RESPAWN",
                    "OPENCLAW_SKIP_CHANNELS",
                ] {
                    env.push((switch.to_owned(), "1".to_owned()));
                }
                env
            }
            AgentKind::Echo | AgentKind::Command => Vec::new(),
        }
    }

    /// The tenant's `openclaw.json`: the template with `{{tenant}}`, `{{openclaw_dir}}`
    /// and `{{egress.<name>}}` (the egress port's URL on the sandbox's loopback) filled
    /// in.
    /// `None` for agents that have none.
    pub fn render(&self, tenant: &TenantId) -> Option<Result<String, String>> {
        let template = self.template.as_deref()?;
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(at) = rest.find("{{") {
            out.push_str(&rest[..at]);
            let Some(end) = rest[at..].find("}}") else {
                return Some(Err("a '{{' without its '}}'".into()));
            };
            let name = rest[at + 2..at + end].trim();
            match name.strip_prefix("egress.") {
                _ if name == "tenant" => out.push_str(tenant.as_str()),
                _ if name == "openclaw_dir" => out.push_str(&self.openclaw_dir),
                Some(egress) => match self.egress.iter().find(|r| r.name == egress) {
                    Some(route) => out.push_str(&route.local_url()),
                    None => {
                        return Some(Err(format!(
                            "{{{{{name}}}}} names no egress of this profile"
                        )));
                    }
                },
                None => return Some(Err(format!("unknown placeholder {{{{{name}}}}}"))),
            }
            rest = &rest[at + end + 2..];
        }
        out.push_str(rest);
        Some(Ok(out))
    }

    /// Writes what the agent reads at start into its workspace (before the sandbox
    /// is made, which hands the workspace to the sandbox's user): OpenClaw's config,
    /// replaced at every start so an operator's change of the template reaches every
    /// tenant at its next start.
    pub async fn prepare(&self, workspace: &Path, tenant: &TenantId) -> std::io::Result<()> {
        let Some(rendered) = self.render(tenant) else {
            return Ok(());
        };
        let text = rendered.map_err(std::io::Error::other)?;
        let path = workspace.join(OPENCLAW_CONFIG);
        tokio::task::spawn_blocking(move || write_replacing(&path, text.as_bytes()))
            .await
            .map_err(std::io::Error::other)?
    }
}

/// `text` as the inside of a JSON string.
fn json_escaped(text: &str) -> String {
    let quoted = serde_json::Value::from(text).to_string();
    quoted[1..quoted.len() - 1].to_owned()
}

/// Writes `path` (in a directory of the tenant's workspace) whole or not at all: a new
/// file renamed over the old. The workspace is the tenant's: its agent may have put a
/// symlink where the directory, the new file or the old one goes, to make the gateway
/// write elsewhere on the host. None is followed: a symlink (or file) in the
/// directory's place is removed and a directory made, the new file is created
/// exclusively (which never follows one), and a rename replaces a link itself, never
/// its target. No process of the tenant runs meanwhile (this is before its start).
fn write_replacing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().expect("a file in a directory");
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            std::fs::remove_file(dir)?;
            std::fs::create_dir(dir)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(dir)?,
        Err(e) => return Err(e),
    }
    let temp = dir.join(".openclaw.json.warren");
    match std::fs::remove_file(&temp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)?;
    file.write_all(bytes)?;
    drop(file);
    std::fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_core::config::EgressConfig;

    fn openclaw(template: &str) -> Result<Agent, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        std::fs::write(&path, template).unwrap();
        let mut config = AgentConfig {
            kind: AgentKind::Openclaw,
            config_template: Some(path),
            ..AgentConfig::default()
        };
        config.egress.insert(
            "llm".into(),
            EgressConfig {
                upstream: "http://127.0.0.1:9/v1".into(),
                port: 18790,
                api_key_env: None,
            },
        );
        Agent::new(&config, Vec::new(), |_| None)
    }

    #[test]
    fn the_template_gets_the_tenant_and_its_egress_urls() {
        let agent = openclaw(r#"{"a":"{{ egress.llm }}/v1","t":"{{tenant}}"}"#).unwrap();
        let tenant = TenantId::parse("alice").unwrap();
        assert_eq!(
            agent.render(&tenant).unwrap().unwrap(),
            r#"{"a":"http://127.0.0.1:18790/v1","t":"alice"}"#
        );
    }

    #[test]
    fn unknown_placeholders_are_refused_at_start_up() {
        for (template, says) in [
            ("{{egress.other}}", "names no egress"),
            ("{{secret}}", "unknown placeholder {{secret}}"),
            ("{\"a\": \"{{tenant\"}", "without its"),
        ] {
            let error = openclaw(template).err().expect(template);
            assert!(
                error.starts_with("config_template: ") && error.contains(says),
                "{error}"
            );
        }
    }

    #[test]
    fn warrens_own_template_renders() {
        let agent = Agent::new(
            &AgentConfig {
                kind: AgentKind::Openclaw,
                ..AgentConfig::default()
            },
            Vec::new(),
            |_| None,
        )
        .unwrap();
        let text = agent
            .render(&TenantId::parse("bob").unwrap())
            .unwrap()
            .unwrap();
        let config: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            config["gateway"]["controlUi"]["root"],
            "/opt/warren/openclaw/node_modules/openclaw/dist/control-ui"
        );
    }

    #[test]
    fn writing_the_config_follows_no_symlink_the_tenant_planted() {
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("signing-secret");
        std::fs::write(&outside, "secret").unwrap();
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let workspace = root.path().join("workspace");
        let config = workspace.join(OPENCLAW_CONFIG);
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        // The new file's name, and the config's own, pointing out of the workspace.
        let dir = config.parent().unwrap();
        std::os::unix::fs::symlink(&outside, dir.join(".openclaw.json.warren")).unwrap();
        std::os::unix::fs::symlink(&outside, &config).unwrap();
        write_replacing(&config, b"{}").unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "secret");
        assert!(!std::fs::symlink_metadata(&config).unwrap().is_symlink());
        assert_eq!(std::fs::read_to_string(&config).unwrap(), "{}");
        // The directory itself, pointing elsewhere.
        std::fs::remove_dir_all(dir).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir).unwrap();
        write_replacing(&config, b"{}").unwrap();
        assert!(std::fs::symlink_metadata(dir).unwrap().is_dir());
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        assert_eq!(std::fs::read_to_string(&config).unwrap(), "{}");
    }
}
