//! The registry every test server starts with: `tests/fixtures/registry.toml` plus clients
//! whose keys are generated once per test run.

use std::path::Path;
use std::sync::OnceLock;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tessera::dev::seed::{ClientSeed, Seed};

pub const JWT_CLIENT: &str = "partner-a-jwt";
pub const SELF_SIGNED_CLIENT: &str = "partner-b-self-signed";
pub const JWT_KID: &str = "partner-a-jwt-1";

/// The private_key_jwt client's ES256 key (PKCS#8) and public JWK.
pub struct ClientKey {
    pub pkcs8: Vec<u8>,
    pub jwk: Value,
}

pub fn client_key() -> &'static ClientKey {
    static KEY: OnceLock<ClientKey> = OnceLock::new();
    KEY.get_or_init(|| es256_key(JWT_KID))
}

/// A fresh ES256 key pair and its public JWK under `kid`.
pub fn es256_key(kid: &str) -> ClientKey {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .unwrap()
        .as_ref()
        .to_vec();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8).unwrap();
    let point = pair.public_key().as_ref();
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    ClientKey { pkcs8, jwk }
}

/// A self-signed client certificate (RFC 8705 §2.2) and its key.
pub struct SelfSigned {
    pub certificate: CertificateDer<'static>,
    pub key: Vec<u8>,
}

impl SelfSigned {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }
}

pub fn self_signed() -> &'static SelfSigned {
    static CERT: OnceLock<SelfSigned> = OnceLock::new();
    CERT.get_or_init(|| {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["self-signed.partner-b.test".into()]).unwrap();
        let certificate = params.self_signed(&key).unwrap();
        SelfSigned {
            certificate: certificate.der().clone(),
            key: key.serialize_der(),
        }
    })
}

pub fn registry() -> Seed {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/registry.toml");
    let mut seed = Seed::from_file(&path).unwrap();
    seed.clients.push(ClientSeed {
        id: JWT_CLIENT.into(),
        partner: "partner-a".into(),
        name: "Partner A, private_key_jwt".into(),
        auth_method: "private_key_jwt".into(),
        jwks: Some(json!({ "keys": [client_key().jwk] })),
        grant_types: vec!["client_credentials".into()],
        max_lifetime_s: 300,
        status: "active".into(),
        audiences: [
            (
                "https://reports.test".to_owned(),
                vec!["reports:read".to_owned()],
            ),
            (
                "https://ledger.test".to_owned(),
                vec!["ledger:read".to_owned()],
            ),
        ]
        .into(),
        ..ClientSeed::default()
    });
    seed.clients.push(ClientSeed {
        id: SELF_SIGNED_CLIENT.into(),
        partner: "partner-b".into(),
        name: "Partner B, self-signed certificate".into(),
        auth_method: "self_signed_tls_client_auth".into(),
        jwks: Some(json!({ "keys": [{
            "kty": "EC", "crv": "P-256",
            "x": "AAAA", "y": "AAAA",
            "x5c": [STANDARD.encode(self_signed().certificate.as_ref())],
        }] })),
        grant_types: vec!["client_credentials".into()],
        max_lifetime_s: 300,
        status: "active".into(),
        audiences: [(
            "https://ledger.test".to_owned(),
            vec!["ledger:read".to_owned()],
        )]
        .into(),
        ..ClientSeed::default()
    });
    seed
}

/// Signs client-assertion claims with the private_key_jwt client's key, using an
/// independent JWT library.
pub fn assertion(claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(JWT_KID.into());
    assertion_with(header, claims)
}

pub fn assertion_with(header: jsonwebtoken::Header, claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_ec_der(&client_key().pkcs8);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// Valid claims for the private_key_jwt client, issued now.
pub fn assertion_claims() -> Value {
    let now = tessera::crypto::keys::unix_now();
    json!({
        "iss": JWT_CLIENT,
        "sub": JWT_CLIENT,
        "aud": crate::helpers::ISSUER,
        "iat": now,
        "exp": now + 60,
        "jti": uuid::Uuid::new_v4().to_string(),
    })
}
