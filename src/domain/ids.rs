//! Identifiers, parsed once at the edge: a value of one of these types is known to be well
//! formed, and one kind of id cannot be passed where another is expected.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Letters, digits and `.` `_` `:` `-`, starting with a letter or digit, at most 128 bytes: the
/// shape of every registry id (clients, partners).
fn registry_id(value: &str) -> bool {
    (1..=128).contains(&value.len())
        && value
            .bytes()
            .next()
            .is_some_and(|first| first.is_ascii_alphanumeric())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Printable ASCII without spaces, at most `max` bytes: ids other parties choose (`jti`,
/// `txn`, `kid`), stored and audited, so bounded and free of control characters.
fn opaque_id(value: &str, max: usize) -> bool {
    (1..=max).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $valid:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: &str) -> Option<Self> {
                let valid: fn(&str) -> bool = $valid;
                valid(value).then(|| Self(value.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value).ok_or_else(|| format!("malformed {}", stringify!($name)))
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.0 == *other
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> Self {
                id.0
            }
        }
    };
}

string_id!(
    /// A registered OAuth client.
    ClientId,
    registry_id
);
string_id!(
    /// A partner institution: the owner of clients, trust profiles and data.
    PartnerId,
    registry_id
);
string_id!(
    /// A connection to a bank's token endpoint and API.
    UpstreamConnectionId,
    |value| {
        (1..=64).contains(&value.len())
            && value
                .bytes()
                .next()
                .is_some_and(|first| first.is_ascii_lowercase() || first.is_ascii_digit())
            && value.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
    }
);
string_id!(
    /// A JWT's `jti`: ours are UUIDs, other issuers' are at most 256 printable bytes.
    Jti,
    |value| opaque_id(value, 256)
);
string_id!(
    /// RFC 8417 transaction id, carried unchanged through every exchange.
    TxnId,
    |value| opaque_id(value, 256)
);
string_id!(
    /// A signing key's id (`kid`).
    Kid,
    |value| opaque_id(value, 256)
);

impl Jti {
    /// A fresh id for a token this server issues.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }
}

impl TxnId {
    /// A fresh transaction id, for a chain of exchanges that has none yet.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }
}

/// A consent record's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConsentId(uuid::Uuid);

impl ConsentId {
    pub fn parse(value: &str) -> Option<Self> {
        uuid::Uuid::parse_str(value).ok().map(Self)
    }

    pub fn from_uuid(id: uuid::Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }
}

impl fmt::Display for ConsentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_plain_tokens() {
        assert!(ClientId::parse("partner-a.settlement").is_some());
        assert!(ClientId::parse("").is_none());
        assert!(ClientId::parse("-lead").is_none());
        assert!(ClientId::parse("a b").is_none());
        assert!(ClientId::parse(&"a".repeat(129)).is_none());
    }

    #[test]
    fn opaque_ids_are_bounded_and_printable() {
        assert!(Jti::parse("abc-123").is_some());
        assert!(Jti::parse("").is_none());
        assert!(Jti::parse("a b").is_none());
        assert!(Jti::parse("a\nb").is_none());
        assert!(Jti::parse(&"j".repeat(257)).is_none());
        assert!(serde_json::from_str::<TxnId>(r#""t\u0000""#).is_err());
        assert!(PartnerId::parse("partner-a").is_some());
        assert!(ConsentId::parse("not-a-uuid").is_none());
    }
}
