//! Audiences: the resource servers tokens are issued for.

use std::fmt;
use std::time::Duration;

use crate::domain::scopes::ScopeSet;

/// A resource server identifier (an absolute URI, RFC 8707 §2).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AudienceId(String);

impl AudienceId {
    /// An absolute URI without a fragment, as RFC 8707 requires of `resource`.
    pub fn parse(value: &str) -> Option<Self> {
        let (scheme, rest) = value.split_once(':')?;
        let scheme_ok = scheme
            .chars()
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'));
        let rest_ok = !rest.is_empty()
            && !value.contains('#')
            && value.len() <= 512
            && !value.chars().any(|c| c.is_whitespace() || c.is_control());
        (scheme_ok && rest_ok).then(|| Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AudienceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone)]
pub struct Audience {
    pub id: AudienceId,
    pub name: String,
    pub scopes: ScopeSet,
    pub max_lifetime: Duration,
    pub require_certificate_bound: bool,
    pub region: String,
    /// "standard" or "settlement" (policy keeps settlement reachable by exchange only).
    pub kind: String,
    pub cross_region_allowed: bool,
    /// A bank-backed audience: token exchange for it hands out its upstream bank token.
    pub bank_backed: bool,
}

#[cfg(test)]
mod tests {
    use super::AudienceId;

    #[test]
    fn audience_ids_are_absolute_uris_without_fragments() {
        assert!(AudienceId::parse("https://ledger.example/api").is_some());
        assert!(AudienceId::parse("urn:tessera:settlement").is_some());
        assert!(AudienceId::parse("ledger").is_none());
        assert!(AudienceId::parse("https://x/#frag").is_none());
        assert!(AudienceId::parse("https://x/ y").is_none());
        assert!(AudienceId::parse("1http://x").is_none());
    }
}
