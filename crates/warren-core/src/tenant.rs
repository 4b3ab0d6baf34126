//! Tenant ids. A tenant id names a directory, a process, a cgroup and a container, so
//! it is checked once, here, and every later use can trust it.
//!
//! Accepted: 1 to 128 ASCII letters, digits, `_`, `-` and `.`, not starting with `.`
//! (which also refuses `.` and `..`). Everything else, `/`, NUL, control characters and
//! any non-ASCII byte included, is refused.

use std::fmt;

/// The longest tenant id accepted, in bytes.
pub const MAX_LEN: usize = 128;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTenantId {
    #[error("tenant id is empty")]
    Empty,
    #[error("tenant id is longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("tenant id may not start with '.'")]
    LeadingDot,
    #[error("tenant id may only hold ASCII letters, digits, '_', '-' and '.'")]
    BadCharacter,
}

impl TenantId {
    pub fn parse(raw: &str) -> Result<Self, InvalidTenantId> {
        if raw.is_empty() {
            return Err(InvalidTenantId::Empty);
        }
        if raw.len() > MAX_LEN {
            return Err(InvalidTenantId::TooLong);
        }
        if raw.starts_with('.') {
            return Err(InvalidTenantId::LeadingDot);
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
        if !raw.bytes().all(allowed) {
            return Err(InvalidTenantId::BadCharacter);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant id in a config file (a `[tenants.<id>]` key) passes the same check.
impl<'de> serde::Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        TenantId::parse(&raw).map_err(|e| serde::de::Error::custom(format!("{raw:?}: {e}")))
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_original_ids_and_shared() {
        for ok in [
            "user_2abc",
            "shared",
            "user-1.backup",
            "A",
            &"a".repeat(MAX_LEN),
        ] {
            assert_eq!(TenantId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_ids_that_could_escape_a_path_or_a_name() {
        let cases: &[(&str, InvalidTenantId)] = &[
            ("", InvalidTenantId::Empty),
            ("..", InvalidTenantId::LeadingDot),
            (".", InvalidTenantId::LeadingDot),
            (".hidden", InvalidTenantId::LeadingDot),
            ("a/b", InvalidTenantId::BadCharacter),
            ("../etc", InvalidTenantId::LeadingDot),
            ("user\0x", InvalidTenantId::BadCharacter),
            ("user\nx", InvalidTenantId::BadCharacter),
            ("user\x7fx", InvalidTenantId::BadCharacter),
            ("usér", InvalidTenantId::BadCharacter),
            ("a b", InvalidTenantId::BadCharacter),
            ("a\\b", InvalidTenantId::BadCharacter),
        ];
        for (raw, want) in cases {
            assert_eq!(TenantId::parse(raw).unwrap_err(), *want, "{raw:?}");
        }
        let long = "a".repeat(MAX_LEN + 1);
        assert_eq!(
            TenantId::parse(&long).unwrap_err(),
            InvalidTenantId::TooLong
        );
    }
}
