//! The life of a sandbox, as the state store records it and `/api/status` reports it.

use serde::Serialize;

/// Where a tenant's sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// No sandbox runs; the next request starts one.
    Asleep,
    /// Admission, creation or the readiness probe is under way.
    Starting,
    /// The agent answered its readiness probe; requests are proxied.
    Ready,
    /// The sandbox is being stopped.
    Stopping,
}

impl SandboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Asleep => "asleep",
            SandboxState::Starting => "starting",
            SandboxState::Ready => "ready",
            SandboxState::Stopping => "stopping",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Asleep, Self::Starting, Self::Ready, Self::Stopping]
            .into_iter()
            .find(|s| s.as_str() == raw)
    }
}

/// Why a sandbox stopped, or failed to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopCause {
    /// Idle for `sleep_after`.
    Idle,
    /// Evicted to make room for another tenant at `max_instances`.
    Eviction,
    /// The agent exited on its own.
    Crash,
    /// The kernel killed the sandbox for going over its memory limit.
    Oom,
    /// The agent never became ready.
    StartFailed,
    /// The gateway shut down.
    Shutdown,
    /// An operator asked (a restore, a stop from the admin API).
    Admin,
}

impl StopCause {
    pub fn as_str(self) -> &'static str {
        match self {
            StopCause::Idle => "idle",
            StopCause::Eviction => "eviction",
            StopCause::Crash => "crash",
            StopCause::Oom => "oom",
            StopCause::StartFailed => "start_failed",
            StopCause::Shutdown => "shutdown",
            StopCause::Admin => "admin",
        }
    }

    /// Every cause, for parsing and tests.
    pub const ALL: [StopCause; 7] = [
        Self::Idle,
        Self::Eviction,
        Self::Crash,
        Self::Oom,
        Self::StartFailed,
        Self::Shutdown,
        Self::Admin,
    ];

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in [
            SandboxState::Asleep,
            SandboxState::Starting,
            SandboxState::Ready,
            SandboxState::Stopping,
        ] {
            assert_eq!(SandboxState::parse(s.as_str()), Some(s));
        }
        for c in StopCause::ALL {
            assert_eq!(StopCause::parse(c.as_str()), Some(c));
        }
    }
}
