//! The anchors of the store run, as DESIGN.md names them: rsync (what the original ran
//! every 30 s) and restic (content-defined chunks), each run as its own process on
//! local directories, with what it says it sent.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::Command;
use tokio::time::Instant;

use crate::store::{Transfer, dir_bytes, human};

/// No tool may run longer than this; it is killed.
const TOOL_DEADLINE: Duration = Duration::from_secs(300);

/// `rsync -a --stats SRC/ DST/`; with `delta`, the delta algorithm even though both
/// sides are local (rsync copies whole files between local paths by default).
pub async fn rsync(rsync: &Path, src: &Path, dst: &Path, delta: bool) -> anyhow::Result<Transfer> {
    let mut command = Command::new(rsync);
    command.args(["-a", "--stats"]);
    if delta {
        command.arg("--no-whole-file");
    }
    command
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()));
    let (out, time) = run_tool(command, "rsync").await?;
    let stat = |key: &str| -> anyhow::Result<u64> {
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .with_context(|| format!("rsync printed no {key:?}:\n{out}"))?;
        let digits: String = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        Ok(digits.parse()?)
    };
    Ok(Transfer {
        bytes: stat("Total bytes sent")?,
        time,
        note: format!(
            "literal data {}, received {}",
            human(stat("Literal data")?),
            human(stat("Total bytes received")?)
        ),
    })
}

/// A restic repository in a local directory, with its own cache.
pub struct Restic {
    bin: PathBuf,
    repo: PathBuf,
    cache: PathBuf,
}

impl Restic {
    pub async fn init(bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        let restic = Self {
            bin: bin.to_owned(),
            repo: dir.join("restic-repo"),
            cache: dir.join("restic-cache"),
        };
        let mut command = restic.command();
        command.arg("init");
        run_tool(command, "restic init").await?;
        Ok(restic)
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .env("RESTIC_REPOSITORY", &self.repo)
            .env("RESTIC_PASSWORD", "warren-bench")
            .env("RESTIC_CACHE_DIR", &self.cache)
            .env_remove("RESTIC_PASSWORD_FILE")
            .env_remove("RESTIC_PASSWORD_COMMAND");
        command
    }

    pub async fn backup(&self, src: &Path) -> anyhow::Result<Transfer> {
        let before = dir_bytes(&self.repo)?;
        let mut command = self.command();
        command
            .args(["backup", "--json", "--host", "warren-bench"])
            .arg(src);
        let (out, time) = run_tool(command, "restic backup").await?;
        let summary: serde_json::Value = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message_type"] == "summary")
            .with_context(|| format!("restic printed no summary:\n{out}"))?;
        let bytes = summary["data_added"]
            .as_u64()
            .context("no data_added in restic's summary")?;
        let grew = dir_bytes(&self.repo)?.saturating_sub(before);
        // `data_added_packed` (after compression) exists from restic 0.17 on.
        let packed = match summary["data_added_packed"].as_u64() {
            Some(p) => format!("data_added_packed {}; ", human(p)),
            None => String::new(),
        };
        Ok(Transfer {
            bytes,
            time,
            note: format!("{packed}the repository grew {}", human(grew)),
        })
    }
}

/// Runs a tool to its end (killed past `TOOL_DEADLINE`); its stdout and wall time.
async fn run_tool(mut command: Command, what: &str) -> anyhow::Result<(String, Duration)> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let out = tokio::time::timeout(TOOL_DEADLINE, command.output())
        .await
        .with_context(|| format!("{what} ran past {TOOL_DEADLINE:?}; killed it"))?
        .with_context(|| format!("cannot run {what}"))?;
    let time = started.elapsed();
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), time))
}

/// The first line a program prints (its version).
pub async fn first_line(program: &Path, arg: &str) -> anyhow::Result<String> {
    let mut command = Command::new(program);
    command.arg(arg);
    let (out, _) = run_tool(command, &program.display().to_string())
        .await
        .with_context(|| {
            format!(
                "{} is needed by the store scenario (scripts/bench installs it)",
                program.display()
            )
        })?;
    Ok(out.lines().next().unwrap_or_default().trim().to_owned())
}
