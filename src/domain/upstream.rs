//! Upstream bank credentials: their life cycle, when each is refreshed, how failures back off,
//! and what a bank's token response must say before it is believed. Times are arguments.

use std::time::Duration;

use time::OffsetDateTime;

/// The latest point of a token's lifetime at which it may still be rotated.
pub const MAX_THRESHOLD_PERCENT: u8 = 90;
/// The share of the refresh window over which audiences are spread, so that the audiences of
/// one connection do not all ask the bank at once.
const SPREAD_SHARE: f64 = 0.5;
/// Backoff after the first failure, and its ceiling.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// The longest token lifetime believed; a bank claiming more is treated as claiming this.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// `INITIALIZED → ACTIVE → EXPIRING → ROTATING → ACTIVE`, `REVOKED` at end of life. The
/// transitions are single conditional statements in `storage::upstream` (claim: any live
/// state, or `ROTATING` whose lease ran out, to `ROTATING`; commit: `ROTATING` to `ACTIVE`;
/// failure: `ROTATING` back to `EXPIRING`, or `INITIALIZED` without a token), since only the
/// database can fence them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialState {
    /// No token fetched yet.
    Initialized,
    /// A token before its refresh time.
    Active,
    /// A token past its refresh time, or whose rotation failed.
    Expiring,
    /// A node holds the lease and is fetching the next token.
    Rotating,
    Revoked,
}

impl CredentialState {
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "initialized" => Self::Initialized,
            "active" => Self::Active,
            "expiring" => Self::Expiring,
            "rotating" => Self::Rotating,
            "revoked" => Self::Revoked,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initialized => "initialized",
            Self::Active => "active",
            Self::Expiring => "expiring",
            Self::Rotating => "rotating",
            Self::Revoked => "revoked",
        }
    }
}

/// When a token is refreshed, as a share of its lifetime: at `threshold_percent` (capped at
/// 90 %), plus a per-audience offset inside the first half of the window up to 90 %, so that
/// audiences sharing a connection are spread instead of fired together.
pub fn refresh_share(threshold_percent: u8, audience: &str) -> f64 {
    let threshold = f64::from(threshold_percent.min(MAX_THRESHOLD_PERCENT)) / 100.0;
    let latest = f64::from(MAX_THRESHOLD_PERCENT) / 100.0;
    threshold + (latest - threshold) * SPREAD_SHARE * spread(audience)
}

/// A stable number in [0, 1) for an audience (FNV-1a), the same on every node.
pub fn spread(audience: &str) -> f64 {
    let hash = audience
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    // The top 53 bits fill an f64's mantissa exactly.
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// Exponential backoff with full jitter after `attempts` failures in a row (`unit` a uniform
/// random number in [0, 1)), never earlier than the bank's `Retry-After`.
pub fn backoff(attempts: u32, unit: f64, retry_after: Option<Duration>) -> Duration {
    let ceiling = BACKOFF_BASE
        .checked_mul(2u32.saturating_pow(attempts.min(20)))
        .unwrap_or(BACKOFF_CAP)
        .min(BACKOFF_CAP);
    let jittered = ceiling.mul_f64(unit.clamp(0.0, 1.0));
    retry_after.map_or(jittered, |wait| jittered.max(wait))
}

/// Why a bank's token response is not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseProblem {
    #[error("the bank's token response has no `expires_in`")]
    MissingLifetime,
    #[error("the bank's token response has a zero `expires_in`")]
    ZeroLifetime,
    #[error("the bank's token response has an empty access token")]
    EmptyToken,
    #[error("the bank's token type `{0}` is not Bearer")]
    NotBearer(String),
}

/// The lifetime a bank's `expires_in` gives a token, capped at a day.
pub fn lifetime(expires_in: Option<Duration>) -> Result<Duration, ResponseProblem> {
    let lifetime = expires_in.ok_or(ResponseProblem::MissingLifetime)?;
    if lifetime.is_zero() {
        return Err(ResponseProblem::ZeroLifetime);
    }
    Ok(lifetime.min(MAX_LIFETIME))
}

/// Whether a token may be served at `now`: never once expired.
pub fn servable(expires_at: OffsetDateTime, now: OffsetDateTime) -> bool {
    now < expires_at
}

/// Whole seconds a token has left, rounded down (a caller is never told it lives longer).
pub fn remaining_seconds(expires_at: OffsetDateTime, now: OffsetDateTime) -> u64 {
    u64::try_from((expires_at - now).whole_seconds()).unwrap_or(0)
}

/// How a connection's token reaches its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Tessera forwards the caller's request with the token added (certificate-bound tokens).
    Inject,
    /// Token exchange hands the token out (plain bearer tokens only).
    Handout,
}

impl Delivery {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "inject" => Some(Self::Inject),
            "handout" => Some(Self::Handout),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inject => "inject",
            Self::Handout => "handout",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(seconds).unwrap()
    }

    #[test]
    fn states_round_trip_through_their_names() {
        use CredentialState::*;
        for state in [Initialized, Active, Expiring, Rotating, Revoked] {
            assert_eq!(CredentialState::parse(state.as_str()), Some(state));
        }
        assert_eq!(CredentialState::parse("ACTIVE"), None);
    }

    #[test]
    fn refresh_is_between_the_threshold_and_ninety_percent_and_spread() {
        for audience in ["https://a", "https://b", "https://c", "urn:x:y"] {
            let share = refresh_share(75, audience);
            assert!((0.75..0.825).contains(&share), "{share}");
            assert_eq!(refresh_share(99, audience), 0.9);
        }
        assert_ne!(
            refresh_share(75, "https://a"),
            refresh_share(75, "https://b")
        );
        assert_eq!(spread("https://a"), spread("https://a"));
    }

    #[test]
    fn backoff_is_jittered_capped_and_honours_retry_after() {
        assert_eq!(backoff(0, 0.0, None), Duration::ZERO);
        assert!(backoff(0, 0.999_999, None) <= BACKOFF_BASE);
        assert!(backoff(3, 1.0, None) <= BACKOFF_BASE * 8);
        assert_eq!(backoff(u32::MAX, 1.0, None), BACKOFF_CAP);
        assert_eq!(
            backoff(0, 0.5, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn lifetimes_must_be_given_and_positive() {
        assert_eq!(lifetime(None), Err(ResponseProblem::MissingLifetime));
        assert_eq!(
            lifetime(Some(Duration::ZERO)),
            Err(ResponseProblem::ZeroLifetime)
        );
        assert_eq!(
            lifetime(Some(Duration::from_secs(60))),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            lifetime(Some(Duration::from_secs(u64::MAX))),
            Ok(MAX_LIFETIME)
        );
        assert!(servable(at(10), at(9)));
        assert!(!servable(at(10), at(10)));
        assert_eq!(remaining_seconds(at(10), at(20)), 0);
    }
}
