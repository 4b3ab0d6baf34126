//! cgroup limits for sandboxes: memory, CPU and pids from the instance type, on
//! cgroup v2 (one unified tree) or v1 (a tree per controller, as on hybrid hosts where
//! v2's `unified` mount holds no controllers), and the one fact a sandbox's end needs
//! from them: was it killed for memory.
//!
//! A sandbox's cgroup is `warren/<tenant>-<generation>-<gateway pid>` (a container's:
//! `warren/warren-<tenant>-g<generation>-<gateway pid>`, the engine's own cgroup inside
//! it) under each controller's root. A process sandbox is placed in it before its first
//! instruction (see `ProcessRuntime`), so every process it ever forks is counted.

use std::path::{Path, PathBuf};

/// What a sandbox may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub memory_bytes: u64,
    /// Thousandths of a CPU: 250 is a quarter of one.
    pub cpu_millis: u64,
    pub pids: u64,
}

impl Limits {
    /// What an instance type allows.
    pub fn of(size: &warren_core::config::InstanceSize) -> Self {
        Self {
            memory_bytes: size.memory_mib << 20,
            cpu_millis: (size.vcpu * 1000.0).round() as u64,
            pids: size.pids,
        }
    }
}

/// Where the controllers are on this host.
#[derive(Debug, Clone)]
pub enum Hierarchy {
    V2 {
        root: PathBuf,
    },
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
    },
}

const CPU_PERIOD_US: u64 = 100_000;

impl Hierarchy {
    /// The host's layout under `/sys/fs/cgroup`, if it has memory, CPU and pids
    /// controllers warren can use.
    pub fn detect() -> Option<Self> {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    fn detect_at(base: &Path) -> Option<Self> {
        if let Ok(controllers) = std::fs::read_to_string(base.join("cgroup.controllers")) {
            let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
            return (has("memory") && has("cpu") && has("pids")).then(|| Hierarchy::V2 {
                root: base.to_owned(),
            });
        }
        let (memory, cpu, pids) = (base.join("memory"), base.join("cpu"), base.join("pids"));
        (memory.join("memory.limit_in_bytes").exists()
            && cpu.join("cpu.cfs_quota_us").exists()
            && pids.exists())
        .then_some(Hierarchy::V1 { memory, cpu, pids })
    }

    /// Removes, in the background, the warren cgroups whose names start with
    /// `prefix` and that no process is in: those of a sandbox that ended while no
    /// gateway watched it (or an empty pooled one whose gateway went), which nobody
    /// else removes.
    pub fn remove_ended(&self, prefix: &str) {
        let base = match self {
            Hierarchy::V2 { root } => root,
            Hierarchy::V1 { memory, .. } => memory,
        };
        let entries = std::fs::read_dir(base.join("warren")).into_iter().flatten();
        for name in entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
        {
            let cgroup = Cgroup::open(self, &name);
            if name.starts_with(prefix) && cgroup.is_empty() {
                tokio::spawn(cgroup.remove_patiently());
            }
        }
    }

    /// The warren cgroup (`warren/<name>`) process `pid` is in or below, if any.
    pub fn warren_cgroup_of(&self, pid: u32) -> Option<Cgroup> {
        let procs = self.procs_file_of(pid)?;
        let base = match self {
            Hierarchy::V2 { root } => root,
            Hierarchy::V1 { pids, .. } => pids,
        };
        let relative = procs.parent()?.strip_prefix(base.join("warren")).ok()?;
        let name = relative.components().next()?.as_os_str().to_str()?;
        Some(Cgroup::open(self, name))
    }

    /// The `cgroup.procs` of the cgroup process `pid` is in (its pids controller's, on
    /// v1): every process of a container, whoever made its cgroup.
    pub fn procs_file_of(&self, pid: u32) -> Option<PathBuf> {
        let listing = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let (base, wanted) = match self {
            Hierarchy::V2 { root } => (root, None),
            Hierarchy::V1 { pids, .. } => (pids, Some("pids")),
        };
        listing.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let matches = match wanted {
                None => controllers.is_empty(),
                Some(c) => controllers.split(',').any(|x| x == c),
            };
            matches.then(|| base.join(path.trim_start_matches('/')).join("cgroup.procs"))
        })
    }
}

/// One sandbox's cgroup (one directory per controller on v1).
#[derive(Debug, Clone)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    /// Where the memory controller's files are.
    memory: PathBuf,
    v2: bool,
}

fn write(dir: &Path, file: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(dir.join(file), value)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}/{file}: {e}", dir.display())))
}

impl Cgroup {
    /// The cgroup `warren/<name>` as it is (made by an earlier gateway, say).
    pub fn open(hierarchy: &Hierarchy, name: &str) -> Self {
        match hierarchy {
            Hierarchy::V2 { root } => {
                let dir = root.join("warren").join(name);
                Self {
                    dirs: vec![dir.clone()],
                    memory: dir,
                    v2: true,
                }
            }
            Hierarchy::V1 { memory, cpu, pids } => {
                let m = memory.join("warren").join(name);
                Self {
                    dirs: vec![
                        m.clone(),
                        cpu.join("warren").join(name),
                        pids.join("warren").join(name),
                    ],
                    memory: m,
                    v2: false,
                }
            }
        }
    }

    /// Creates the cgroup `warren/<name>` with `limits`. Fails if it exists already.
    pub fn create(hierarchy: &Hierarchy, name: &str, limits: &Limits) -> std::io::Result<Self> {
        let cgroup = Self::open(hierarchy, name);
        if let Hierarchy::V2 { root } = hierarchy {
            // Controllers must be enabled down the tree before a leaf can use them.
            let parent = root.join("warren");
            std::fs::create_dir_all(&parent)?;
            write(root, "cgroup.subtree_control", "+memory +cpu +pids")?;
            write(&parent, "cgroup.subtree_control", "+memory +cpu +pids")?;
        }
        for dir in &cgroup.dirs {
            // A leaf is never shared: if it exists, something else owns it.
            std::fs::create_dir_all(dir.parent().unwrap_or(dir))?;
            std::fs::create_dir(dir)?;
        }
        cgroup.set_limits(limits)?;
        Ok(cgroup)
    }

    /// Sets the limits, also of a cgroup whose processes run (a pooled sandbox that a
    /// tenant of another instance type claims).
    pub fn set_limits(&self, limits: &Limits) -> std::io::Result<()> {
        let quota = (limits.cpu_millis * CPU_PERIOD_US / 1000).max(1000);
        let memory = limits.memory_bytes.to_string();
        if self.v2 {
            let dir = &self.memory;
            write(dir, "memory.max", &memory)?;
            // Swap would hide an overrun instead of ending it.
            let _ = write(dir, "memory.swap.max", "0");
            write(dir, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
            write(dir, "pids.max", &limits.pids.to_string())?;
        } else {
            let [m, c, p] = &self.dirs[..] else {
                unreachable!("a v1 cgroup has a memory, a cpu and a pids directory")
            };
            // memory+swap may never be below memory: raise it first, lower it last.
            let _ = write(m, "memory.memsw.limit_in_bytes", &memory);
            write(m, "memory.limit_in_bytes", &memory)?;
            let _ = write(m, "memory.memsw.limit_in_bytes", &memory);
            write(c, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
            write(c, "cpu.cfs_quota_us", &quota.to_string())?;
            write(p, "pids.max", &limits.pids.to_string())?;
        }
        Ok(())
    }

    /// Its name under `warren/`.
    pub fn name(&self) -> Option<&str> {
        self.dirs.first()?.file_name()?.to_str()
    }

    /// Whether no process is in it (or it is gone).
    pub fn is_empty(&self) -> bool {
        self.procs_files()
            .iter()
            .all(|f| std::fs::read_to_string(f).map_or(true, |s| s.trim().is_empty()))
    }

    /// The `cgroup.procs` files a process writes its pid to, to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Whether the kernel killed a process of this cgroup for memory.
    pub fn oom_killed(&self) -> bool {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.memory.join(file)).is_ok_and(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("oom_kill "))
                .any(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
        })
    }

    /// Removes the cgroup, once its processes are gone, with any empty cgroups a
    /// container engine made inside it. Returns whether it is gone.
    pub fn remove(&self) -> bool {
        let gone = |r: std::io::Result<()>| match r {
            Ok(()) => true,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        };
        self.dirs.iter().all(|dir| {
            if let Ok(children) = std::fs::read_dir(dir) {
                for child in children.flatten().filter(|c| c.path().is_dir()) {
                    let _ = std::fs::remove_dir(child.path());
                }
            }
            gone(std::fs::remove_dir(dir))
        })
    }

    /// Removes, on v1, the directories of this cgroup's path that a container engine
    /// made under the controllers warren does not use (freezer, devices, ...).
    pub fn remove_engine_dirs(&self) {
        if self.v2 {
            return;
        }
        let name = self.relative_path();
        let Some(base) = self.memory.ancestors().nth(3) else {
            return;
        };
        for controller in std::fs::read_dir(base).into_iter().flatten().flatten() {
            let dir = controller.path().join(name.trim_start_matches('/'));
            if let Ok(children) = std::fs::read_dir(&dir) {
                for child in children.flatten().filter(|c| c.path().is_dir()) {
                    let _ = std::fs::remove_dir(child.path());
                }
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }

    /// Removes the cgroup and what an engine made under the controllers warren does
    /// not use, waiting up to about 30 s for it to empty: a container engine's monitor
    /// (conmon) lingers a while after its container, longer on a busy host.
    pub async fn remove_patiently(self) {
        for _ in 0..15 {
            if self.remove_when_empty().await {
                self.remove_engine_dirs();
                return;
            }
        }
        tracing::warn!(cgroup = %self.relative_path(), "cannot remove a sandbox's cgroup");
    }

    /// Removes the cgroup once its last processes are gone (they go a moment after
    /// being killed), trying again with a growing pause for up to about two seconds.
    /// Returns whether it is gone.
    pub async fn remove_when_empty(&self) -> bool {
        let mut pause = std::time::Duration::from_millis(1);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            if self.remove() {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(20));
        }
    }

    /// The path of this cgroup below each controller's root, e.g. `/warren/<name>`: a
    /// container engine's cgroup parent.
    pub fn relative_path(&self) -> String {
        let name = self
            .memory
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        format!("/warren/{name}")
    }

    /// Lets cgroups inside this one use its controllers (v2; v1 needs nothing).
    pub fn delegate(&self) -> std::io::Result<()> {
        if self.v2 {
            write(&self.memory, "cgroup.subtree_control", "+memory +cpu +pids")?;
        }
        Ok(())
    }

    /// From now on, counts OOM kills in this cgroup and in cgroups inside it. v2's
    /// `memory.events` counts the whole subtree already; v1 counts a kill only in the
    /// victim's own cgroup, so an eventfd registered here hears of it instead.
    pub fn watch_oom(&self) -> std::io::Result<OomWatch> {
        if self.v2 {
            return Ok(OomWatch(None));
        }
        use nix::sys::eventfd::{EfdFlags, EventFd};
        use std::os::fd::AsRawFd;
        let control = std::fs::File::open(self.memory.join("memory.oom_control"))?;
        let events =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        write(
            &self.memory,
            "cgroup.event_control",
            &format!("{} {}", events.as_raw_fd(), control.as_raw_fd()),
        )?;
        Ok(OomWatch(Some((events, control))))
    }
}

/// An OOM listener on a v1 cgroup (see `Cgroup::watch_oom`).
pub struct OomWatch(Option<(nix::sys::eventfd::EventFd, std::fs::File)>);

impl OomWatch {
    /// Whether an OOM was heard (v1), or `None` where the cgroup's own count says (v2).
    /// Read before the cgroup is removed: its removal is heard too.
    pub fn heard(&self) -> Option<bool> {
        let (events, _) = self.0.as_ref()?;
        Some(events.read().is_ok_and(|n| n > 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_v1_and_v2_layouts() {
        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(
            v2.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        assert!(matches!(
            Hierarchy::detect_at(v2.path()),
            Some(Hierarchy::V2 { .. })
        ));
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu io\n").unwrap();
        assert!(
            Hierarchy::detect_at(v2.path()).is_none(),
            "v2 without memory is no use"
        );

        let v1 = tempfile::tempdir().unwrap();
        for (dir, file) in [
            ("memory", "memory.limit_in_bytes"),
            ("cpu", "cpu.cfs_quota_us"),
            ("pids", "pids.max"),
        ] {
            std::fs::create_dir_all(v1.path().join(dir)).unwrap();
            std::fs::write(v1.path().join(dir).join(file), "").unwrap();
        }
        assert!(matches!(
            Hierarchy::detect_at(v1.path()),
            Some(Hierarchy::V1 { .. })
        ));
    }

    #[test]
    fn reads_oom_kills_in_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = Cgroup {
            dirs: vec![],
            memory: dir.path().to_owned(),
            v2: false,
        };
        std::fs::write(
            dir.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        )
        .unwrap();
        assert!(!v1.oom_killed());
        std::fs::write(
            dir.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert!(v1.oom_killed());
        let v2 = Cgroup {
            dirs: vec![],
            memory: dir.path().to_owned(),
            v2: true,
        };
        std::fs::write(
            dir.path().join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert!(v2.oom_killed());
    }
}
