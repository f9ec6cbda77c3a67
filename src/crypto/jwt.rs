//! The one validation path for JWTs that others sign: client assertions (RFC 7523) and
//! partner JWTs presented as subject tokens (RFC 8693). Each caller states its rules; the
//! checks and their order are the same for all: pinned algorithms, no key named by the token
//! itself, explicit `typ`, registered keys only, exact issuer and audience, and times compared
//! with checked arithmetic on the numbers the sender chose.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::crypto::keys::{KeyError, KeySet};
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
    /// Our issuer identifier, which must be the audience.
    pub audience: &'a str,
    /// FAPI 2.0 client assertions: `aud` is the issuer as a single string, not an array.
    pub audience_as_string: bool,
    pub typ: Typ<'a>,
    /// The longest the token may claim to be valid, from `iat` (or now, without one).
    pub max_lifetime_s: i64,
    pub require_iat: bool,
    pub require_jti: bool,
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

/// Validates `token` against the keys its sender registered, under `rules`, at `now`. The
/// error is the reason for the audit trail.
pub fn validate(
    token: &str,
    keys: &PublicKeys,
    rules: &Rules<'_>,
    now: i64,
) -> Result<ForeignClaims, &'static str> {
    let header = header(token)?;
    if !rules.algorithms.contains(&header.alg) {
        return Err("algorithm not allowed");
    }
    if header.jku.is_some() || header.x5u.is_some() || header.jwk.is_some() {
        return Err("the JWT names its own key (jku, x5u or jwk)");
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
        return Err("typ not accepted");
    }
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
        return Err("signed by a key the sender has not registered (kid and alg)");
    }
    if candidates.len() > MAX_CANDIDATE_KEYS {
        return Err("too many registered keys match (name the key with kid)");
    }
    let mut validation = Validation::new(header.alg);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation.set_issuer(&[rules.issuer]);
    validation.set_audience(&[rules.audience]);
    // Times are checked below, with checked arithmetic and one leeway.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    let claims = candidates
        .iter()
        .filter_map(|jwk| serde_json::from_value::<Jwk>((*jwk).clone()).ok())
        .filter_map(|jwk| DecodingKey::from_jwk(&jwk).ok())
        .find_map(|key| jsonwebtoken::decode::<ForeignClaims>(token, &key, &validation).ok())
        .ok_or("signature or claims invalid (issuer, audience, numeric dates)")?
        .claims;
    if rules.audience_as_string && claims.aud.as_str() != Some(rules.audience) {
        return Err("aud is not the issuer as a single string");
    }
    if claims.sub.is_empty() {
        return Err("sub is empty");
    }
    check_times(&claims, rules, now)?;
    match claims.jti.as_deref() {
        Some(jti) if jti.is_empty() || jti.len() > MAX_JTI_LEN => Err("jti empty or too long"),
        None if rules.require_jti => Err("jti missing"),
        _ => Ok(claims),
    }
}

fn check_times(claims: &ForeignClaims, rules: &Rules<'_>, now: i64) -> Result<(), &'static str> {
    const OUT_OF_RANGE: &str = "a date is out of range";
    let latest_start = now
        .checked_add(FOREIGN_CLOCK_LEEWAY_S)
        .ok_or(OUT_OF_RANGE)?;
    if claims
        .exp
        .checked_add(FOREIGN_CLOCK_LEEWAY_S)
        .ok_or(OUT_OF_RANGE)?
        <= now
    {
        return Err("expired");
    }
    if claims.nbf.is_some_and(|nbf| nbf > latest_start) {
        return Err("not yet valid (nbf)");
    }
    if claims.iat.is_some_and(|iat| iat > latest_start) {
        return Err("iat is in the future");
    }
    if rules.require_iat && claims.iat.is_none() {
        return Err("iat is required to bound the token's lifetime");
    }
    let lifetime = claims
        .exp
        .checked_sub(claims.iat.unwrap_or(now))
        .ok_or(OUT_OF_RANGE)?;
    let remaining = claims.exp.checked_sub(now).ok_or(OUT_OF_RANGE)?;
    let cap = rules
        .max_lifetime_s
        .checked_add(FOREIGN_CLOCK_LEEWAY_S)
        .ok_or(OUT_OF_RANGE)?;
    if lifetime > rules.max_lifetime_s || remaining > cap {
        return Err("lives longer than allowed");
    }
    Ok(())
}

pub fn mint(keys: &KeySet, claims: &AccessTokenClaims) -> Result<String, KeyError> {
    let payload = serde_json::to_vec(claims).map_err(|_| KeyError::Crypto)?;
    keys.active.sign_access_token(&payload)
}

/// Validates a token this server issued: `typ: at+jwt`, a published `kid`, the pinned
/// algorithm of that key, our issuer, numeric `exp`/`iat`/`nbf`, not expired.
pub fn validate_own(
    keys: &KeySet,
    issuer: &str,
    token: &str,
    now: i64,
) -> Result<AccessTokenClaims, TokenRejection> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRejection::Malformed)?;
    if header.typ.as_deref() != Some("at+jwt") {
        return Err(TokenRejection::WrongType);
    }
    let kid = header.kid.as_deref().ok_or(TokenRejection::UnknownKey)?;
    let (algorithm, key) = keys.verifier(kid).ok_or(TokenRejection::UnknownKey)?;
    let mut validation = jsonwebtoken::Validation::new(algorithm);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.validate_aud = false;
    validation.validate_exp = false;
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<AccessTokenClaims>(token, &key, &validation)
        .map_err(|_| TokenRejection::Invalid)?
        .claims;
    if claims.exp <= now {
        return Err(TokenRejection::Expired);
    }
    Ok(claims)
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
        audience: "a",
        audience_as_string: false,
        typ: Typ::NotAccessToken,
        max_lifetime_s: 300,
        require_iat: true,
        require_jti: false,
    };

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
