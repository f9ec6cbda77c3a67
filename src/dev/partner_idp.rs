//! Partner B's identity provider in the dev set-up: its ES256 signing key lives in the dev PKI
//! beside the certificates, its public key set is what partner B's seeded trust profile trusts,
//! and `tessera certs partner-jwt` signs the assertions it would issue for its traders, so the
//! walkthrough can show a partner vouching for a subject without running an identity provider.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

use crate::dev::pki::{DevPki, PkiError};

/// The issuer partner B's dev trust profile names.
pub const ISSUER: &str = "https://idp.partner-b.tessera.test";
/// The key id of the dev identity provider's one key.
pub const KID: &str = "partner-b-idp-1";
/// How long a minted assertion is valid; well under the seeded profile's maximum.
const LIFETIME_S: i64 = 120;

/// The private key (PKCS#8 PEM) of partner B's dev identity provider.
pub fn key_path(pki: &DevPki) -> PathBuf {
    pki.dir.join("partner-b-idp.key")
}

/// Its public key set (JWKS), which the seeded trust profile loads.
pub fn jwks_path(pki: &DevPki) -> PathBuf {
    pki.dir.join("partner-b-idp.jwks.json")
}

/// Generates the identity provider's key into the PKI directory.
pub fn generate(pki: &DevPki) -> Result<(), PkiError> {
    let name = "partner-b-idp";
    let key = rcgen::KeyPair::generate().map_err(|source| PkiError::Generate {
        name: name.into(),
        source,
    })?;
    // An uncompressed P-256 point: 0x04, then x and y of 32 bytes each.
    let point = key.public_key_raw();
    let (Some(x), Some(y)) = (point.get(1..33), point.get(33..65)) else {
        return Err(PkiError::Unusable {
            name: name.into(),
            reason: "not a P-256 public key",
        });
    };
    let jwks = json!({ "keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": KID,
        "x": URL_SAFE_NO_PAD.encode(x),
        "y": URL_SAFE_NO_PAD.encode(y),
    }] });
    pki.write_key(&key_path(pki), &key)?;
    pki.write(&jwks_path(pki), &jwks.to_string())
}

/// A partner assertion about `subject` for the Tessera at `audience` (its issuer), signed with
/// the dev identity provider's key, valid from now for two minutes, single-use by `jti`.
pub fn mint(
    certs_dir: &Path,
    subject: &str,
    audience: &str,
    scope: Option<&str>,
) -> anyhow::Result<String> {
    use anyhow::Context;
    let pki = DevPki {
        dir: certs_dir.to_owned(),
    };
    let path = key_path(&pki);
    let pem = std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (generate the dev PKI with `tessera certs dev`)",
            path.display()
        )
    })?;
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem)
        .with_context(|| format!("{} is not a PKCS#8 private key", path.display()))?;
    let key = jsonwebtoken::EncodingKey::from_ec_der(der.secret_pkcs8_der());
    let now = crate::crypto::keys::unix_now();
    let mut claims = json!({
        "iss": ISSUER,
        "sub": subject,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now.saturating_add(LIFETIME_S),
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    if let (Some(scope), Some(object)) = (scope, claims.as_object_mut()) {
        object.insert("scope".into(), json!(scope));
    }
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(KID.into());
    header.typ = Some("JWT".into());
    jsonwebtoken::encode(&header, &claims, &key).context("signing the partner assertion")
}
