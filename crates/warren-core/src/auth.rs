//! The signed-URL scheme of the original, byte for byte.
//!
//! A credential is `userId`, `exp` (unix seconds) and `sig`, where `sig` is the base64url
//! encoding, without padding, of HMAC-SHA256 keyed by the signing secret over the bytes
//! `"<userId>.<exp>"`. It is valid while `now <= exp`. Signatures are compared in
//! constant time (`Mac::verify_slice`).
//!
//! The same credential travels three ways, and every route accepts all of them:
//! - query parameters `?userId=..&exp=..&sig=..` (the original's form);
//! - a header `Authorization: Bearer <userId>.<exp>.<sig>`;
//! - a cookie `<cookie_name>=<userId>.<exp>.<sig>`, which the gateway sets on first contact.
//!
//! The first source present decides: a request carrying a bad query credential is
//! refused even if it also carries a good cookie, so a client learns what it sent wrong.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::ErrorCode;
use crate::tenant::TenantId;

type HmacSha256 = Hmac<Sha256>;

/// The query parameter names of the original's signed URLs.
pub const QUERY_PARAMS: [&str; 3] = ["userId", "exp", "sig"];

/// A credential as it arrived, before its signature is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub user_id: String,
    pub exp: u64,
    pub sig: String,
    pub source: Source,
}

/// Where a credential was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Query,
    Header,
    Cookie,
}

/// Why a request is not authenticated. Each maps to its own stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no credentials: pass userId, exp and sig as query parameters, a Bearer header or the session cookie"
    )]
    Missing,
    #[error("credentials are malformed")]
    Malformed,
    #[error("the user id is not acceptable")]
    InvalidUserId,
    #[error("the signature does not match")]
    BadSignature,
    #[error("the credentials have expired")]
    Expired,
}

impl AuthError {
    pub fn code(self) -> ErrorCode {
        match self {
            AuthError::Missing => ErrorCode::AuthMissing,
            AuthError::Malformed => ErrorCode::AuthMalformed,
            AuthError::InvalidUserId => ErrorCode::AuthInvalidUserId,
            AuthError::BadSignature => ErrorCode::AuthBadSignature,
            AuthError::Expired => ErrorCode::AuthExpired,
        }
    }
}

/// Signs and verifies credentials with one secret.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl Signer {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: secret.to_vec(),
        }
    }

    fn mac(&self, user_id: &str, exp: u64) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(user_id.as_bytes());
        mac.update(b".");
        mac.update(exp.to_string().as_bytes());
        mac
    }

    /// The `sig` value for a user id and expiry.
    pub fn sign(&self, user_id: &TenantId, exp: u64) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(user_id.as_str(), exp).finalize().into_bytes())
    }

    /// The token with which warren speaks to `tenant`'s agent (OpenClaw's gateway
    /// token): derived from the signing key, so every gateway of the deployment knows
    /// it without storing it, and never shown to the user. Its message holds a NUL,
    /// which no `<userId>.<exp>` does: it is never a valid signature.
    pub fn agent_token(&self, tenant: &TenantId) -> crate::Secret {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(b"agent-token\0");
        mac.update(tenant.as_str().as_bytes());
        crate::Secret::new(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    /// The query string `userId=..&exp=..&sig=..` for a user id and expiry.
    pub fn query(&self, user_id: &TenantId, exp: u64) -> String {
        // Tenant ids hold only URL-safe characters, and base64url is URL-safe.
        format!("userId={user_id}&exp={exp}&sig={}", self.sign(user_id, exp))
    }

    /// The `<userId>.<exp>.<sig>` form used in the header and the cookie.
    pub fn token(&self, user_id: &TenantId, exp: u64) -> String {
        format!("{user_id}.{exp}.{}", self.sign(user_id, exp))
    }

    /// Checks a credential at time `now` (unix seconds) and returns the tenant it names.
    ///
    /// The signature is checked before the expiry, so a forged credential is reported
    /// as forged whatever its `exp`.
    pub fn verify(&self, cred: &Credential, now: u64) -> Result<TenantId, AuthError> {
        let user = TenantId::parse(&cred.user_id).map_err(|_| AuthError::InvalidUserId)?;
        let sig = URL_SAFE_NO_PAD
            .decode(cred.sig.as_bytes())
            .map_err(|_| AuthError::Malformed)?;
        self.mac(user.as_str(), cred.exp)
            .verify_slice(&sig)
            .map_err(|_| AuthError::BadSignature)?;
        if now > cred.exp {
            return Err(AuthError::Expired);
        }
        Ok(user)
    }
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Finds the credential a request carries, from its raw query string, its
/// `Authorization` header and its `Cookie` headers, in that order of precedence.
pub fn find_credential<'a>(
    query: Option<&str>,
    authorization: Option<&str>,
    cookies: impl IntoIterator<Item = &'a str>,
    cookie_name: &str,
) -> Result<Credential, AuthError> {
    if let Some(found) = query.and_then(|q| from_query(q).transpose()) {
        return found;
    }
    if let Some(value) = authorization {
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::Malformed)?;
        return from_token(token.trim(), Source::Header);
    }
    for header in cookies {
        for pair in header.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=')
                && name == cookie_name
            {
                return from_token(value, Source::Cookie);
            }
        }
    }
    Err(AuthError::Missing)
}

/// A credential from a query string, `None` if it names none of the three parameters.
fn from_query(query: &str) -> Result<Option<Credential>, AuthError> {
    let (mut user_id, mut exp, mut sig) = (None, None, None);
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match name {
            "userId" => &mut user_id,
            "exp" => &mut exp,
            "sig" => &mut sig,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(AuthError::Malformed); // a repeated parameter is ambiguous
        }
    }
    if user_id.is_none() && exp.is_none() && sig.is_none() {
        return Ok(None);
    }
    let (Some(user_id), Some(exp), Some(sig)) = (user_id, exp, sig) else {
        return Err(AuthError::Malformed);
    };
    let user_id = percent_decode(user_id).ok_or(AuthError::Malformed)?;
    Ok(Some(Credential {
        user_id,
        exp: parse_exp(exp)?,
        sig: sig.to_owned(),
        source: Source::Query,
    }))
}

/// A credential from `<userId>.<exp>.<sig>`. The user id may hold dots; `exp` and
/// `sig` never do, so the string splits from the right.
fn from_token(token: &str, source: Source) -> Result<Credential, AuthError> {
    let mut parts = token.rsplitn(3, '.');
    let (Some(sig), Some(exp), Some(user_id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(AuthError::Malformed);
    };
    Ok(Credential {
        user_id: user_id.to_owned(),
        exp: parse_exp(exp)?,
        sig: sig.to_owned(),
        source,
    })
}

fn parse_exp(raw: &str) -> Result<u64, AuthError> {
    if raw.is_empty() || raw.len() > 19 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthError::Malformed);
    }
    raw.parse().map_err(|_| AuthError::Malformed)
}

/// Decodes `%XX` escapes (and `+` as space, as forms do). `None` if an escape is broken
/// or the result is not UTF-8; the tenant-id check refuses whatever odd bytes remain.
fn percent_decode(raw: &str) -> Option<String> {
    if !raw.contains(['%', '+']) {
        return Some(raw.to_owned());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = raw.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The query string with the credential's parameters removed, so the signature is never
/// forwarded to a sandbox. `None` when nothing remains.
pub fn strip_credential_params(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
            !pair.is_empty() && !QUERY_PARAMS.contains(&name)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_token_is_per_tenant_stable_and_never_a_signature() {
        let signer = Signer::new(b"0123456789abcdef0123456789abcdef");
        let other = Signer::new(b"fedcba9876543210fedcba9876543210");
        let a = TenantId::parse("alice").unwrap();
        let b = TenantId::parse("bob").unwrap();
        let token = signer.agent_token(&a);
        assert_eq!(token.expose(), signer.agent_token(&a).expose());
        assert_ne!(token.expose(), signer.agent_token(&b).expose());
        assert_ne!(token.expose(), other.agent_token(&a).expose());
        assert!(token.expose().len() >= 43);
        for exp in [0, 1, u64::MAX] {
            assert_ne!(token.expose(), signer.sign(&a, exp));
        }
    }

    // Computed independently of this code:
    //   printf 'user_abc.1700000000' | openssl dgst -sha256 -hmac 'test-secret' -binary \
    //     | base64 | tr '+/' '-_' | tr -d '='
    const VECTOR_SECRET: &[u8] = b"test-secret";
    const VECTOR_SIG: &str = "jCU4dDtdjzNI01yW5d5YrFMYYZM3mmK_dertcq5L4vc";

    fn user(id: &str) -> TenantId {
        TenantId::parse(id).unwrap()
    }

    fn cred(user_id: &str, exp: u64, sig: &str) -> Credential {
        Credential {
            user_id: user_id.into(),
            exp,
            sig: sig.into(),
            source: Source::Query,
        }
    }

    #[test]
    fn signature_matches_an_openssl_vector() {
        let signer = Signer::new(VECTOR_SECRET);
        assert_eq!(signer.sign(&user("user_abc"), 1_700_000_000), VECTOR_SIG);
        let ok = signer.verify(&cred("user_abc", 1_700_000_000, VECTOR_SIG), 1_700_000_000);
        assert_eq!(ok.unwrap(), user("user_abc"));
    }

    #[test]
    fn verify_distinguishes_every_failure() {
        let signer = Signer::new(b"k");
        let sig = signer.sign(&user("user_a"), 100);
        assert_eq!(
            signer.verify(&cred("user_a", 100, &sig), 100).unwrap(),
            user("user_a")
        );
        assert_eq!(
            signer.verify(&cred("user_a", 100, &sig), 101),
            Err(AuthError::Expired)
        );
        assert_eq!(
            signer.verify(&cred("user_b", 100, &sig), 50),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            signer.verify(&cred("user_a", 101, &sig), 50),
            Err(AuthError::BadSignature)
        );
        let other = Signer::new(b"other").sign(&user("user_a"), 100);
        assert_eq!(
            signer.verify(&cred("user_a", 100, &other), 50),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            signer.verify(&cred("user_a", 100, "not base64!"), 50),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            signer.verify(&cred("../x", 100, &sig), 50),
            Err(AuthError::InvalidUserId)
        );
        // Padding is not part of the scheme.
        assert_eq!(
            signer.verify(&cred("user_a", 100, &format!("{sig}=")), 50),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn finds_credentials_in_query_header_and_cookie() {
        let q = find_credential(Some("a=1&userId=user_a&exp=5&sig=xyz"), None, [], "s").unwrap();
        assert_eq!(
            q,
            Credential {
                user_id: "user_a".into(),
                exp: 5,
                sig: "xyz".into(),
                source: Source::Query
            }
        );

        let h = find_credential(None, Some("Bearer user.a.5.xyz"), [], "s").unwrap();
        assert_eq!(
            (h.user_id.as_str(), h.exp, h.sig.as_str(), h.source),
            ("user.a", 5, "xyz", Source::Header)
        );

        let c = find_credential(Some("x=1"), None, ["a=b; s=user_a.5.xyz"], "s").unwrap();
        assert_eq!((c.user_id.as_str(), c.source), ("user_a", Source::Cookie));

        // The query wins over the cookie, even when it is the bad one.
        let bad = find_credential(Some("userId=user_a&exp=5"), None, ["s=user_a.5.xyz"], "s");
        assert_eq!(bad, Err(AuthError::Malformed));
    }

    #[test]
    fn refuses_missing_and_malformed_credentials() {
        assert_eq!(
            find_credential(None, None, [], "s"),
            Err(AuthError::Missing)
        );
        assert_eq!(
            find_credential(Some("a=1"), None, ["t=1"], "s"),
            Err(AuthError::Missing)
        );
        for q in [
            "userId=a&exp=1",
            "userId=a&sig=x",
            "exp=1&sig=x",
            "userId=a&exp=x&sig=y",
            "userId=a&exp=-1&sig=y",
            "userId=a&userId=b&exp=1&sig=y",
            "userId=%zz&exp=1&sig=y",
            "userId=a&exp=99999999999999999999&sig=y",
        ] {
            assert_eq!(
                find_credential(Some(q), None, [], "s"),
                Err(AuthError::Malformed),
                "{q}"
            );
        }
        assert_eq!(
            find_credential(None, Some("Basic abc"), [], "s"),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            find_credential(None, Some("Bearer nodots"), [], "s"),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            find_credential(None, None, ["s=a.b"], "s"),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn percent_encoded_ids_are_decoded_then_checked() {
        let c = find_credential(Some("userId=user%5Fa&exp=1&sig=x"), None, [], "s").unwrap();
        assert_eq!(c.user_id, "user_a");
        let c = find_credential(Some("userId=..%2Fetc&exp=1&sig=x"), None, [], "s").unwrap();
        assert_eq!(
            Signer::new(b"k").verify(&c, 0),
            Err(AuthError::InvalidUserId)
        );
        let c = find_credential(Some("userId=a%00b&exp=1&sig=x"), None, [], "s").unwrap();
        assert_eq!(
            Signer::new(b"k").verify(&c, 0),
            Err(AuthError::InvalidUserId)
        );
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn strips_only_the_credential_from_a_query() {
        assert_eq!(strip_credential_params("userId=a&exp=1&sig=x"), None);
        assert_eq!(
            strip_credential_params("q=1&userId=a&exp=1&sig=x&r=2").as_deref(),
            Some("q=1&r=2")
        );
        assert_eq!(
            strip_credential_params("userIdx=1").as_deref(),
            Some("userIdx=1")
        );
    }
}
