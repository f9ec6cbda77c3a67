//! The one validation path for every JWT Tessera accepts: client assertions (RFC 7523),
//! partner JWTs presented as subject tokens (RFC 8693) and its own access tokens (RFC 9068).
//! Each caller states its rules; the checks and their order are the same for all: pinned
//! algorithms, no key named by the token itself, explicit `typ`, registered (or our own
//! published) keys only, exact issuer and audience, and times compared with checked
//! arithmetic and one leeway for clocks other than ours.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::crypto::keys::{KeyError, KeySet};
use crate::domain::ids::Kid;
use crate::domain::jwks::PublicKeys;
use crate::domain::tokens::{AccessTokenClaims, TokenRejection};

/// Allowance for clocks other than ours, in seconds: how far `exp` may lie behind and `iat` or
/// `nbf` ahead of our clock. Our own tokens get none.
pub const FOREIGN_CLOCK_LEEWAY_S: i64 = 10;

/// The longest `jti` stored in a replay table.
const MAX_JTI_LEN: usize = 256;
/// Signatures tried per token at most: a key set with many keys under one `kid` (or none)
/// must not turn one request into hundreds of signature checks.
const MAX_CANDIDATE_KEYS: usize = 4;

/// What the JOSE `typ` header must be (RFC 8725 §3.11).
#[derive(Debug, Clone, Copy)]
pub enum Typ<'a> {
    /// Absent, or this value (case-insensitively, RFC 7515 §4.1.9).
    AbsentOr(&'a str),
    /// Exactly this value.
    Required(&'a str),
    /// Anything but our own access-token type, which a foreign token must never pass for.
    NotAccessToken,
}

/// The rules of one kind of foreign JWT.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub algorithms: &'a [Algorithm],
    pub issuer: &'a str,
    /// Our issuer identifier, which must be the audience. Our own tokens are for other
    /// audiences, which their callers check.
    pub audience: Option<&'a str>,
    /// FAPI 2.0 client assertions: `aud` is the issuer as a single string, not an array.
    pub audience_as_string: bool,
    pub typ: Typ<'a>,
    /// The longest the token may claim to be valid, from `iat` (or now, without one).
    pub max_lifetime_s: i64,
    pub require_iat: bool,
    pub require_jti: bool,
    pub clock: Clock,
}

/// Whose clock set the token's times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// Ours: only expiry is checked, with no leeway (another node may have issued it a
    /// moment "ahead" of this one).
    Ours,
    /// Another party's: every time gets [`FOREIGN_CLOCK_LEEWAY_S`], and the lifetime is capped.
    Foreign,
}

/// The registered claims every foreign JWT is checked on, and the rest as sent.
#[derive(Debug, Clone, Deserialize)]
pub struct ForeignClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Value,
    pub exp: i64,
    pub iat: Option<i64>,
    /// Typed so that a non-numeric `nbf` fails (jsonwebtoken would skip it).
    pub nbf: Option<i64>,
    pub jti: Option<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The header of a token, if it is a JWT at all; callers use it to find the keys.
pub fn header(token: &str) -> Result<Header, &'static str> {
    jsonwebtoken::decode_header(token).map_err(|_| "not a JWT")
}

/// What a token says about itself before any signature is checked: enough to find its
/// sender's trust profile and keys, never to trust it.
#[derive(Debug, Clone)]
pub struct Peek {
    pub algorithm: String,
    pub kid: Option<String>,
    /// `jku`, `x5u` or `jwk`: the token names its own key, which no sender may do.
    pub names_own_key: bool,
    pub issuer: Option<String>,
}

pub fn peek(token: &str) -> Result<Peek, &'static str> {
    let header = header(token)?;
    let unverified = jsonwebtoken::dangerous::insecure_decode::<Value>(token)
        .map_err(|_| "unreadable claims")?;
    Ok(Peek {
        algorithm: algorithm_name(header.alg),
        kid: header.kid,
        names_own_key: header.jku.is_some() || header.x5u.is_some() || header.jwk.is_some(),
        issuer: unverified
            .claims
            .get("iss")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// The JOSE name of an algorithm.
fn algorithm_name(algorithm: Algorithm) -> String {
    serde_json::to_value(algorithm)
        .ok()
        .and_then(|name| name.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Whether `name` is a JOSE signature algorithm this server can verify.
pub fn is_algorithm(name: &str) -> bool {
    name.parse::<Algorithm>().is_ok()
}

/// The algorithms named, skipping names that are none.
pub fn algorithms(names: &[String]) -> Vec<Algorithm> {
    names.iter().filter_map(|name| name.parse().ok()).collect()
}

/// The registered claims the path checks, whichever claims type a caller decodes into.
trait Registered: DeserializeOwned {
    fn sub(&self) -> &str;
    fn aud(&self) -> Option<&Value>;
    fn times(&self) -> Times;
    fn jti(&self) -> Option<&str>;
}

#[derive(Debug, Clone, Copy)]
struct Times {
    exp: i64,
    iat: Option<i64>,
    nbf: Option<i64>,
}

impl Registered for ForeignClaims {
    fn sub(&self) -> &str {
        &self.sub
    }
    fn aud(&self) -> Option<&Value> {
        Some(&self.aud)
    }
    fn times(&self) -> Times {
        Times {
            exp: self.exp,
            iat: self.iat,
            nbf: self.nbf,
        }
    }
    fn jti(&self) -> Option<&str> {
        self.jti.as_deref()
    }
}

impl Registered for AccessTokenClaims {
    fn sub(&self) -> &str {
        &self.sub
    }
    fn aud(&self) -> Option<&Value> {
        None
    }
    fn times(&self) -> Times {
        Times {
            exp: self.exp,
            iat: Some(self.iat),
            nbf: Some(self.nbf),
        }
    }
    fn jti(&self) -> Option<&str> {
        Some(self.jti.as_str())
    }
}

/// Where the verifying keys come from.
#[derive(Clone, Copy)]
enum Keys<'a> {
    /// The sender's registered key set.
    Registered(&'a PublicKeys),
    /// The keys this server publishes, each pinned to its algorithm.
    Ours(&'a KeySet),
}

/// Why a token failed, by stage; each kind of token words it for its own audience.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    NotJwt,
    Algorithm,
    NamesOwnKey,
    Typ,
    UnknownKey,
    TooManyKeys,
    Invalid,
    AudienceNotString,
    EmptySubject,
    Expired,
    Time(&'static str),
    Jti(&'static str),
}

impl Failure {
    fn reason(self) -> &'static str {
        match self {
            Self::NotJwt => "not a JWT",
            Self::Algorithm => "algorithm not allowed",
            Self::NamesOwnKey => "the JWT names its own key (jku, x5u or jwk)",
            Self::Typ => "typ not accepted",
            Self::UnknownKey => "signed by a key the sender has not registered (kid and alg)",
            Self::TooManyKeys => "too many registered keys match (name the key with kid)",
            Self::Invalid => "signature or claims invalid (issuer, audience, numeric dates)",
            Self::AudienceNotString => "aud is not the issuer as a single string",
            Self::EmptySubject => "sub is empty",
            Self::Expired => "expired",
            Self::Time(reason) | Self::Jti(reason) => reason,
        }
    }

    fn rejection(self) -> TokenRejection {
        match self {
            Self::NotJwt => TokenRejection::Malformed,
            Self::Typ => TokenRejection::WrongType,
            Self::UnknownKey | Self::TooManyKeys => TokenRejection::UnknownKey,
            Self::Expired => TokenRejection::Expired,
            _ => TokenRejection::Invalid,
        }
    }
}

/// Validates `token` against the keys its sender registered, under `rules`, at `now`. The
/// error is the reason for the audit trail.
pub fn validate(
    token: &str,
    keys: &PublicKeys,
    rules: &Rules<'_>,
    now: i64,
) -> Result<ForeignClaims, &'static str> {
    check(token, Keys::Registered(keys), rules, now).map_err(Failure::reason)
}

/// Validates a token this server issued: `typ: at+jwt`, a published `kid` and that key's
/// algorithm, our issuer, numeric dates, not expired.
pub fn validate_own(
    keys: &KeySet,
    issuer: &str,
    token: &str,
    now: i64,
) -> Result<AccessTokenClaims, TokenRejection> {
    let rules = Rules {
        algorithms: OUR_ALGORITHMS,
        issuer,
        audience: None,
        audience_as_string: false,
        typ: Typ::Required("at+jwt"),
        max_lifetime_s: i64::MAX,
        require_iat: false,
        require_jti: true,
        clock: Clock::Ours,
    };
    check(token, Keys::Ours(keys), &rules, now).map_err(Failure::rejection)
}

/// The algorithms this server signs with; each of our keys is pinned to one of them.
const OUR_ALGORITHMS: &[Algorithm] = &[Algorithm::ES256, Algorithm::EdDSA, Algorithm::PS256];

fn check<T: Registered>(
    token: &str,
    keys: Keys<'_>,
    rules: &Rules<'_>,
    now: i64,
) -> Result<T, Failure> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| Failure::NotJwt)?;
    if !rules.algorithms.contains(&header.alg) {
        return Err(Failure::Algorithm);
    }
    if header.jku.is_some() || header.x5u.is_some() || header.jwk.is_some() {
        return Err(Failure::NamesOwnKey);
    }
    let typ = header.typ.as_deref();
    let typ_ok = match rules.typ {
        Typ::AbsentOr(expected) => typ.is_none_or(|typ| typ.eq_ignore_ascii_case(expected)),
        Typ::Required(expected) => typ.is_some_and(|typ| typ.eq_ignore_ascii_case(expected)),
        Typ::NotAccessToken => !typ.is_some_and(|typ| {
            typ.eq_ignore_ascii_case("at+jwt") || typ.eq_ignore_ascii_case("application/at+jwt")
        }),
    };
    if !typ_ok {
        return Err(Failure::Typ);
    }
    let candidates = candidate_keys(keys, &header)?;
    let mut validation = Validation::new(header.alg);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation.set_issuer(&[rules.issuer]);
    match rules.audience {
        Some(audience) => validation.set_audience(&[audience]),
        None => validation.validate_aud = false,
    }
    // Times are checked below, with checked arithmetic and one leeway.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    let claims: T = candidates
        .iter()
        .find_map(|key| jsonwebtoken::decode::<T>(token, key, &validation).ok())
        .ok_or(Failure::Invalid)?
        .claims;
    if let Some(audience) = rules.audience
        && rules.audience_as_string
        && claims.aud().and_then(Value::as_str) != Some(audience)
    {
        return Err(Failure::AudienceNotString);
    }
    if claims.sub().is_empty() {
        return Err(Failure::EmptySubject);
    }
    check_times(claims.times(), rules, now)?;
    match claims.jti() {
        Some(jti) if jti.is_empty() || jti.len() > MAX_JTI_LEN => {
            Err(Failure::Jti("jti empty or too long"))
        }
        None if rules.require_jti => Err(Failure::Jti("jti missing")),
        _ => Ok(claims),
    }
}

/// The keys that may have signed a token with this header: ours by `kid` (pinned to the
/// algorithm we gave the key), or the sender's that match its `kid` and `alg`.
fn candidate_keys(
    keys: Keys<'_>,
    header: &Header,
) -> Result<Vec<std::sync::Arc<DecodingKey>>, Failure> {
    match keys {
        Keys::Ours(keys) => {
            let kid = header
                .kid
                .as_deref()
                .and_then(Kid::parse)
                .ok_or(Failure::UnknownKey)?;
            let (algorithm, key) = keys.verifier(&kid).ok_or(Failure::UnknownKey)?;
            if algorithm != header.alg {
                return Err(Failure::Invalid);
            }
            Ok(vec![key])
        }
        Keys::Registered(keys) => {
            let algorithm = serde_json::to_value(header.alg).ok();
            let candidates: Vec<&Value> = keys
                .keys()
                .iter()
                .filter(
                    |jwk| match (&header.kid, jwk.get("kid").and_then(Value::as_str)) {
                        (Some(wanted), Some(kid)) => wanted == kid,
                        (Some(_), None) => false,
                        (None, _) => true,
                    },
                )
                .filter(|jwk| {
                    jwk.get("alg")
                        .is_none_or(|alg| Some(alg) == algorithm.as_ref())
                })
                .collect();
            if candidates.is_empty() {
                return Err(Failure::UnknownKey);
            }
            if candidates.len() > MAX_CANDIDATE_KEYS {
                return Err(Failure::TooManyKeys);
            }
            Ok(candidates
                .into_iter()
                .filter_map(|jwk| serde_json::from_value::<Jwk>(jwk.clone()).ok())
                .filter_map(|jwk| DecodingKey::from_jwk(&jwk).ok())
                .map(std::sync::Arc::new)
                .collect())
        }
    }
}

fn check_times(times: Times, rules: &Rules<'_>, now: i64) -> Result<(), Failure> {
    const OUT_OF_RANGE: Failure = Failure::Time("a date is out of range");
    let leeway = match rules.clock {
        Clock::Ours => 0,
        Clock::Foreign => FOREIGN_CLOCK_LEEWAY_S,
    };
    if times.exp.checked_add(leeway).ok_or(OUT_OF_RANGE)? <= now {
        return Err(Failure::Expired);
    }
    if rules.clock == Clock::Ours {
        return Ok(());
    }
    let latest_start = now.checked_add(leeway).ok_or(OUT_OF_RANGE)?;
    if times.nbf.is_some_and(|nbf| nbf > latest_start) {
        return Err(Failure::Time("not yet valid (nbf)"));
    }
    if times.iat.is_some_and(|iat| iat > latest_start) {
        return Err(Failure::Time("iat is in the future"));
    }
    if rules.require_iat && times.iat.is_none() {
        return Err(Failure::Time(
            "iat is required to bound the token's lifetime",
        ));
    }
    let lifetime = times
        .exp
        .checked_sub(times.iat.unwrap_or(now))
        .ok_or(OUT_OF_RANGE)?;
    let remaining = times.exp.checked_sub(now).ok_or(OUT_OF_RANGE)?;
    let cap = rules
        .max_lifetime_s
        .checked_add(leeway)
        .ok_or(OUT_OF_RANGE)?;
    if lifetime > rules.max_lifetime_s || remaining > cap {
        return Err(Failure::Time("lives longer than allowed"));
    }
    Ok(())
}

/// Signs our access token.
pub fn mint(keys: &KeySet, claims: &AccessTokenClaims) -> Result<String, KeyError> {
    let payload = serde_json::to_vec(claims).map_err(|_| KeyError::Crypto)?;
    keys.active.sign_access_token(&payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64, iat: Option<i64>, nbf: Option<i64>) -> ForeignClaims {
        ForeignClaims {
            iss: "i".into(),
            sub: "s".into(),
            aud: Value::Null,
            exp,
            iat,
            nbf,
            jti: None,
            other: Map::new(),
        }
    }

    const RULES: Rules<'static> = Rules {
        algorithms: &[Algorithm::ES256],
        issuer: "i",
        audience: Some("a"),
        audience_as_string: false,
        typ: Typ::NotAccessToken,
        max_lifetime_s: 300,
        require_iat: true,
        require_jti: false,
        clock: Clock::Foreign,
    };

    fn check_times(
        claims: &ForeignClaims,
        rules: &Rules<'_>,
        now: i64,
    ) -> Result<(), &'static str> {
        super::check_times(claims.times(), rules, now).map_err(Failure::reason)
    }

    #[test]
    fn times_use_one_leeway_and_never_overflow() {
        let now = 1_000_000;
        assert!(check_times(&claims(now + 60, Some(now), None), &RULES, now).is_ok());
        assert_eq!(
            check_times(&claims(now - 11, Some(now - 100), None), &RULES, now),
            Err("expired")
        );
        assert_eq!(
            check_times(&claims(now + 60, Some(now), Some(now + 600)), &RULES, now),
            Err("not yet valid (nbf)")
        );
        assert_eq!(
            check_times(&claims(now + 60, Some(now + 11), None), &RULES, now),
            Err("iat is in the future")
        );
        assert_eq!(
            check_times(&claims(now + 60, None, None), &RULES, now),
            Err("iat is required to bound the token's lifetime")
        );
        assert_eq!(
            check_times(&claims(now + 60, Some(i64::MIN), None), &RULES, now),
            Err("a date is out of range")
        );
        assert_eq!(
            check_times(&claims(i64::MAX, Some(now), None), &RULES, now),
            Err("a date is out of range")
        );
        assert_eq!(
            check_times(&claims(now + 900, Some(now - 10), None), &RULES, now),
            Err("lives longer than allowed")
        );
    }
}
