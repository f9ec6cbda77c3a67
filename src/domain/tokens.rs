//! Access tokens (RFC 9068 JWTs): their claims and lifetime. Tokens are stateless; only
//! revocations and lineage are stored.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::ids::{ConsentId, Jti, TxnId};

/// RFC 8705 §3.1 confirmation: the SHA-256 thumbprint of the client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    pub iss: String,
    pub sub: String,
    /// Exactly one audience, always a string.
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: Jti,
    pub client_id: String,
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_id: Option<ConsentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<TxnId>,
    /// The version of the partner trust profile a partner's JWT was accepted under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_profile_version: Option<i32>,
    /// The data owner: the partner whose subject this token is about, and its region. Every
    /// later exchange decides consent, trust profile and residency against them, whoever holds
    /// the token then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_partner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_region: Option<String>,
    /// RFC 8693 §4.4: who may act for the subject; carried so that no later hop drops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub may_act: Option<serde_json::Value>,
}

/// The shortest of the caps, as whole seconds (at least one).
pub fn lifetime(caps: &[Duration]) -> Duration {
    let shortest = caps.iter().min().copied().unwrap_or(Duration::from_secs(1));
    Duration::from_secs(shortest.as_secs().max(1))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("not a JWT")]
    Malformed,
    #[error("not an access token (typ)")]
    WrongType,
    #[error("signed by a key this server does not publish")]
    UnknownKey,
    #[error("signature, issuer or claims invalid")]
    Invalid,
    #[error("expired")]
    Expired,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetime_is_the_smallest_cap() {
        let caps = [
            Duration::from_secs(300),
            Duration::from_secs(120),
            Duration::from_secs(900),
        ];
        assert_eq!(lifetime(&caps), Duration::from_secs(120));
        assert_eq!(
            lifetime(&[Duration::from_millis(10)]),
            Duration::from_secs(1)
        );
    }
}
