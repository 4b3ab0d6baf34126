//! What a running sandbox uses, read from its cgroup: memory now and its limit, and
//! the CPU time it has had. The sandbox's cgroup is found from its process
//! (`/proc/<pid>/cgroup`), as `warren/<name>` under each controller's root (see
//! `warren_runtime::cgroup`); a sandbox with no warren cgroup has no usage to show, and
//! the gateway's own cgroup is never reported in its place.
//!
//! cgroup v2 answers everything from one directory (`memory.current`, `memory.max`,
//! `cpu.stat`). On v1, memory comes from the memory controller
//! (`memory.usage_in_bytes`, `memory.limit_in_bytes`) and CPU from `cpuacct.usage`
//! where the sandbox has a cpuacct cgroup; warren makes none on hosts whose cpuacct is
//! mounted apart from cpu, and there the CPU time is the sum of what the kernel counts
//! for the cgroup's processes and the children they reaped (`/proc/<pid>/stat`).

use std::path::{Path, PathBuf};

use serde::Serialize;

/// A sandbox's resource use; a field is `None` where the host does not tell.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub memory_bytes: Option<u64>,
    /// `None` also when unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// CPU time since the sandbox started, user and system.
    pub cpu_ms: Option<u64>,
}

const ROOT: &str = "/sys/fs/cgroup";

/// The resource use of the sandbox whose first process is `pid`, if it has a warren
/// cgroup. Blocking (reads a few files under `/proc` and `/sys`).
pub fn of(pid: u32) -> Option<Usage> {
    let listing = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    of_listing(Path::new(ROOT), &listing)
}

/// `of`, for a `/proc/<pid>/cgroup` listing and controllers mounted under `root`.
fn of_listing(root: &Path, listing: &str) -> Option<Usage> {
    let lines: Vec<(&str, &str)> = listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            Some((controllers, path))
        })
        .collect();
    let warren_path = |wanted: &str| {
        lines.iter().find_map(|(controllers, path)| {
            let matches = if wanted.is_empty() {
                controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == wanted)
            };
            matches.then(|| warren_cgroup(path)).flatten()
        })
    };
    // A pure v2 host mounts the unified tree at the root itself.
    if root.join("cgroup.controllers").exists() {
        let dir = root.join(warren_path("")?);
        let cpu_ms = read(&dir.join("cpu.stat")).and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .map(|us| us / 1000)
        });
        return Some(Usage {
            memory_bytes: read_u64(&dir.join("memory.current")),
            memory_limit_bytes: read_u64(&dir.join("memory.max")),
            cpu_ms,
        });
    }
    let memory = root.join("memory").join(warren_path("memory")?);
    let cpu_ms = match warren_path("cpuacct") {
        Some(path) => read_u64(&root.join("cpuacct").join(path).join("cpuacct.usage"))
            .map(|ns| ns / 1_000_000),
        None => process_cpu_ms(&memory.join("cgroup.procs")),
    };
    Some(Usage {
        memory_bytes: read_u64(&memory.join("memory.usage_in_bytes")),
        // v1 says "unlimited" with a number near 2^63.
        memory_limit_bytes: read_u64(&memory.join("memory.limit_in_bytes"))
            .filter(|n| *n < 1 << 60),
        cpu_ms,
    })
}

/// `warren/<name>`, relative, from a cgroup path at or below a sandbox's cgroup.
fn warren_cgroup(path: &str) -> Option<PathBuf> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let at = parts.iter().position(|p| *p == "warren")?;
    let name = parts.get(at + 1)?;
    let mut dir: PathBuf = parts[..at].iter().collect();
    dir.push("warren");
    dir.push(name);
    Some(dir)
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn read_u64(path: &Path) -> Option<u64> {
    read(path)?.trim().parse().ok()
}

/// The CPU time of every process listed in `procs`, with what their reaped children
/// had, in milliseconds.
fn process_cpu_ms(procs: &Path) -> Option<u64> {
    // /proc counts in USER_HZ, which Linux fixes at 100 on every architecture warren
    // builds for.
    const TICKS_PER_SEC: u64 = 100;
    let ticks: u64 = read(procs)?
        .split_whitespace()
        .filter_map(|pid| read(&Path::new("/proc").join(pid).join("stat")))
        .filter_map(|stat| stat_ticks(&stat))
        .sum();
    Some(ticks * 1000 / TICKS_PER_SEC)
}

/// utime + stime + cutime + cstime (fields 14 to 17) of a `/proc/<pid>/stat` line.
fn stat_ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (the state).
    (11..15)
        .map(|i| fields.get(i)?.parse::<i64>().ok())
        .try_fold(0u64, |sum, n| Some(sum + n?.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_warren_cgroup_and_nothing_else() {
        assert_eq!(
            warren_cgroup("/warren/user_a-7-100"),
            Some("warren/user_a-7-100".into())
        );
        assert_eq!(
            warren_cgroup("/warren/warren-user_a-g7-100/libpod-abc"),
            Some("warren/warren-user_a-g7-100".into())
        );
        assert_eq!(
            warren_cgroup("/machine.slice/warren/x"),
            Some("machine.slice/warren/x".into())
        );
        assert_eq!(warren_cgroup("/process_api/89b4"), None);
        assert_eq!(warren_cgroup("/"), None);
        assert_eq!(warren_cgroup("/warren"), None);
    }

    #[test]
    fn reads_v1_memory_and_refuses_the_gateways_own_cgroup() {
        let root = tempfile::tempdir().unwrap();
        let memory = root.path().join("memory/warren/user_a-1-9");
        std::fs::create_dir_all(&memory).unwrap();
        std::fs::write(memory.join("memory.usage_in_bytes"), "1048576\n").unwrap();
        std::fs::write(
            memory.join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        std::fs::write(memory.join("cgroup.procs"), "").unwrap();
        let cpuacct = root.path().join("cpuacct/warren/user_a-1-9");
        std::fs::create_dir_all(&cpuacct).unwrap();
        std::fs::write(cpuacct.join("cpuacct.usage"), "2500000000\n").unwrap();
        let listing = "8:pids:/warren/user_a-1-9\n4:memory:/warren/user_a-1-9\n\
                       2:cpu,cpuacct:/warren/user_a-1-9\n0::/\n";
        let usage = of_listing(root.path(), listing).unwrap();
        assert_eq!(
            usage,
            Usage {
                memory_bytes: Some(1 << 20),
                memory_limit_bytes: None,
                cpu_ms: Some(2500),
            }
        );
        // Without a cpuacct cgroup of its own: its processes' counts (none here).
        let listing = "4:memory:/warren/user_a-1-9\n2:cpuacct:/\n1:cpu:/warren/user_a-1-9\n";
        assert_eq!(of_listing(root.path(), listing).unwrap().cpu_ms, Some(0));
        let gateway = "4:memory:/process_api/89b4\n2:cpuacct:/\n0::/\n";
        assert_eq!(of_listing(root.path(), gateway), None);
    }

    #[test]
    fn reads_v2() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        let dir = root.path().join("warren/user_b-2-9");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.current"), "4096\n").unwrap();
        std::fs::write(dir.join("memory.max"), "268435456\n").unwrap();
        std::fs::write(
            dir.join("cpu.stat"),
            "usage_usec 1234567\nuser_usec 1000000\n",
        )
        .unwrap();
        let usage = of_listing(root.path(), "0::/warren/user_b-2-9\n").unwrap();
        assert_eq!(
            usage,
            Usage {
                memory_bytes: Some(4096),
                memory_limit_bytes: Some(256 << 20),
                cpu_ms: Some(1234),
            }
        );
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        let usage = of_listing(root.path(), "0::/warren/user_b-2-9\n").unwrap();
        assert_eq!(usage.memory_limit_bytes, None);
        assert_eq!(of_listing(root.path(), "0::/system.slice/x\n"), None);
    }

    #[test]
    fn sums_a_processs_own_and_reaped_cpu_ticks() {
        let stat = "42 (agent (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 1 0 99 0 0";
        assert_eq!(stat_ticks(stat), Some(13));
        assert_eq!(stat_ticks("garbage"), None);
    }
}
