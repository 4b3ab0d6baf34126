//! Stable error codes. A client sees an HTTP status, one of these codes and a message;
//! the codes never change meaning once shipped, so clients may branch on them.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    AuthMissing,
    AuthMalformed,
    AuthInvalidUserId,
    AuthBadSignature,
    AuthExpired,
    /// The request is not one the gateway can serve (a broken WebSocket handshake).
    BadRequest,
    /// Every sandbox slot is busy and the admission queue is full or timed out.
    CapacityExhausted,
    /// The user went over their request rate or their cap of open WebSockets.
    RateLimited,
    /// The sandbox did not become ready, or exited while starting.
    SandboxStartFailed,
    /// The sandbox was reachable but the request to it failed.
    SandboxUnreachable,
    /// The gateway is shutting down.
    ShuttingDown,
    /// The store cannot be reached, and the workspace cannot be prepared without it.
    StoreUnavailable,
    /// The admin API was called without its bearer token, or with a wrong one.
    AdminUnauthorized,
    /// The operation needs the sandbox stopped (say so, e.g. `stop=true`).
    SandboxRunning,
    /// The thing asked for does not exist.
    NotFound,
    /// The admin API was asked about a tenant this gateway knows nothing of: no
    /// sandbox ever, no tier an operator chose, no `[tenants.<id>]` table.
    UnknownTenant,
    /// An agent's request through an egress port could not reach its upstream.
    EgressUnreachable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AuthMissing => "auth_missing",
            ErrorCode::AuthMalformed => "auth_malformed",
            ErrorCode::AuthInvalidUserId => "auth_invalid_user_id",
            ErrorCode::AuthBadSignature => "auth_bad_signature",
            ErrorCode::AuthExpired => "auth_expired",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::CapacityExhausted => "capacity_exhausted",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::SandboxStartFailed => "sandbox_start_failed",
            ErrorCode::SandboxUnreachable => "sandbox_unreachable",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::AdminUnauthorized => "admin_unauthorized",
            ErrorCode::SandboxRunning => "sandbox_running",
            ErrorCode::NotFound => "not_found",
            ErrorCode::UnknownTenant => "unknown_tenant",
            ErrorCode::EgressUnreachable => "egress_unreachable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status this code is served with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::AuthMissing
            | ErrorCode::AuthMalformed
            | ErrorCode::AuthInvalidUserId
            | ErrorCode::AuthBadSignature
            | ErrorCode::AuthExpired
            | ErrorCode::AdminUnauthorized => 401,
            ErrorCode::SandboxRunning => 409,
            ErrorCode::NotFound | ErrorCode::UnknownTenant => 404,
            ErrorCode::BadRequest => 400,
            ErrorCode::RateLimited => 429,
            ErrorCode::CapacityExhausted
            | ErrorCode::ShuttingDown
            | ErrorCode::StoreUnavailable => 503,
            ErrorCode::SandboxStartFailed
            | ErrorCode::SandboxUnreachable
            | ErrorCode::EgressUnreachable => 502,
            ErrorCode::Internal => 500,
        }
    }

    /// Whether the same request may succeed if retried later.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::CapacityExhausted
                | ErrorCode::RateLimited
                | ErrorCode::SandboxStartFailed
                | ErrorCode::SandboxUnreachable
                | ErrorCode::EgressUnreachable
                | ErrorCode::ShuttingDown
                | ErrorCode::StoreUnavailable
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialized_code_matches_as_str() {
        for code in [
            ErrorCode::AuthMissing,
            ErrorCode::CapacityExhausted,
            ErrorCode::RateLimited,
            ErrorCode::AuthInvalidUserId,
        ] {
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
        }
    }
}
