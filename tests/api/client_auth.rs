use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tessera::dev::pki::UNTRUSTED_CLIENT;

use crate::fixtures::{self, JWT_CLIENT, JWT_KID};
use crate::helpers::{
    ISSUER, TestApp, certificates, client_tls_presenting, http_client, pki, spawn_app,
};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

async fn with_assertion(app: &TestApp, assertion: &str) -> (u16, Value) {
    app.post_form(
        None,
        "/oauth2/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
            ("resource", "https://reports.test"),
        ],
    )
    .await
}

fn claims_with(change: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut claims = fixtures::assertion_claims();
    if let Some(map) = claims.as_object_mut() {
        change(map);
    }
    claims
}

/// A compact JWS with an arbitrary header and signature bytes.
fn forged(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = sign(signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[tokio::test]
async fn mtls_refusals_are_invalid_client_and_issue_nothing() {
    let app = spawn_app().await;
    // No certificate at all.
    let refused = app
        .client_credentials(
            None,
            "partner-a-treasury",
            &[("resource", "https://ledger.test")],
        )
        .await;
    app.assert_refused(refused, 401, "invalid_client").await;
    // Another partner's (trusted) certificate with this client_id.
    let refused = app
        .client_credentials(
            Some("partner-b"),
            "partner-a-treasury",
            &[("resource", "https://ledger.test")],
        )
        .await;
    app.assert_refused(refused, 401, "invalid_client").await;
    // A suspended client, and a client of a suspended partner, with the right certificate.
    for client_id in ["partner-a-suspended", "partner-c-client"] {
        let refused = app
            .client_credentials(
                Some("partner-a"),
                client_id,
                &[("resource", "https://ledger.test")],
            )
            .await;
        app.assert_refused(refused, 401, "invalid_client").await;
    }
    // An unknown client, and a client registered for private_key_jwt, presenting a certificate.
    for client_id in ["nobody", JWT_CLIENT] {
        let refused = app
            .client_credentials(
                Some("partner-a"),
                client_id,
                &[("resource", "https://ledger.test")],
            )
            .await;
        app.assert_refused(refused, 401, "invalid_client").await;
    }
    let reasons = app.denial_reasons().await;
    assert_eq!(
        reasons,
        [
            "no client certificate",
            "certificate does not match the registered identity",
            "client or partner suspended",
            "client or partner suspended",
            "unknown client",
            "client is registered for private_key_jwt",
        ]
    );
}

/// RFC 6749 §5.2: a challenge only in the scheme the client used in `Authorization`; a
/// `Bearer` challenge to a client that sent none makes standard clients (openid-client) raise
/// a challenge error instead of reading the OAuth error.
#[tokio::test]
async fn invalid_client_challenges_only_in_the_scheme_the_client_used() {
    let app = spawn_app().await;
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "partner-a-treasury"),
    ];
    let basic = app
        .client(Some("partner-b"))
        .post(app.url("/oauth2/token"))
        .basic_auth("partner-a-treasury", Some("secret"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    assert_eq!(
        basic.headers()["www-authenticate"],
        r#"Basic realm="tessera""#
    );
    let response = app
        .client(Some("partner-b"))
        .post(app.url("/oauth2/token"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().get("www-authenticate").is_none());
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    // The reason stays in the audit trail.
    assert_eq!(body["error_description"], "client authentication failed");
}

#[tokio::test]
async fn the_same_dn_from_an_untrusted_ca_never_gets_past_the_handshake() {
    let app = spawn_app().await;
    let result = app
        .client(Some(UNTRUSTED_CLIENT))
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "partner-a-treasury"),
            ("resource", "https://ledger.test"),
        ])
        .send()
        .await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(app.audited("token_issued").await, 0);
}

#[tokio::test]
async fn appending_the_victims_certificate_to_the_chain_does_not_help() {
    let app = spawn_app().await;
    let pki = pki();
    let mut chain = certificates(&pki.client_cert("partner-b"));
    chain.extend(certificates(&pki.client_cert("partner-a")));
    use rustls::pki_types::pem::PemObject;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(pki.client_key("partner-b")).unwrap();
    let client = http_client(client_tls_presenting(
        Some((chain, key)),
        &[&rustls::version::TLS13],
    ));
    let response = client
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "partner-a-treasury"),
            ("resource", "https://ledger.test"),
        ])
        .send()
        .await
        .unwrap();
    let refused = (
        response.status().as_u16(),
        response.json::<Value>().await.unwrap(),
    );
    app.assert_refused(refused, 401, "invalid_client").await;
}

#[tokio::test]
async fn a_basic_authorization_header_is_refused() {
    let app = spawn_app().await;
    let response = app
        .client(Some("partner-a"))
        .post(app.url("/oauth2/token"))
        .basic_auth("partner-a-treasury", Some("secret"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "partner-a-treasury"),
            ("resource", "https://ledger.test"),
        ])
        .send()
        .await
        .unwrap();
    let refused = (
        response.status().as_u16(),
        response.json::<Value>().await.unwrap(),
    );
    app.assert_refused(refused, 401, "invalid_client").await;
}

#[tokio::test]
async fn client_assertion_refusals() {
    let app = spawn_app().await;
    let now = tessera::crypto::keys::unix_now();
    let es256 = |claims: Value| fixtures::assertion(&claims);
    let mut cases: Vec<(&str, String)> = vec![
        (
            "wrong iss",
            es256(claims_with(|c| {
                c.insert("iss".into(), json!("partner-b"));
            })),
        ),
        (
            "missing iss",
            es256(claims_with(|c| {
                c.remove("iss");
            })),
        ),
        (
            "wrong sub",
            es256(claims_with(|c| {
                c.insert("sub".into(), json!("partner-a-treasury"));
            })),
        ),
        (
            "missing aud",
            es256(claims_with(|c| {
                c.remove("aud");
            })),
        ),
        (
            "wrong aud",
            es256(claims_with(|c| {
                c.insert("aud".into(), json!("https://other.test"));
            })),
        ),
        (
            "aud as array",
            es256(claims_with(|c| {
                c.insert("aud".into(), json!([ISSUER]));
            })),
        ),
        (
            "aud is the token endpoint",
            es256(claims_with(|c| {
                c.insert("aud".into(), json!(format!("{ISSUER}/oauth2/token")));
            })),
        ),
        (
            "expired",
            es256(claims_with(|c| {
                c.insert("exp".into(), json!(now - 120));
            })),
        ),
        (
            "missing exp",
            es256(claims_with(|c| {
                c.remove("exp");
            })),
        ),
        (
            "iat 70 s ahead",
            es256(claims_with(|c| {
                c.insert("iat".into(), json!(now + 70));
            })),
        ),
        (
            "nbf 70 s ahead",
            es256(claims_with(|c| {
                c.insert("nbf".into(), json!(now + 70));
            })),
        ),
        (
            "exp a string",
            es256(claims_with(|c| {
                c.insert("exp".into(), json!((now + 60).to_string()));
            })),
        ),
        (
            "lives a day",
            es256(claims_with(|c| {
                c.insert("exp".into(), json!(now + 86_400));
            })),
        ),
        (
            "missing jti",
            es256(claims_with(|c| {
                c.remove("jti");
            })),
        ),
    ];
    let claims = fixtures::assertion_claims();
    cases.push((
        "RS256",
        forged(&json!({ "alg": "RS256", "kid": JWT_KID }), &claims, |_| {
            vec![1; 256]
        }),
    ));
    cases.push((
        "alg none",
        forged(&json!({ "alg": "none" }), &claims, |_| Vec::new()),
    ));
    let public_jwk = fixtures::client_key().jwk.to_string();
    cases.push((
        "HS256 keyed with the public key",
        forged(
            &json!({ "alg": "HS256", "kid": JWT_KID }),
            &claims,
            |input| {
                let key = hmac::Key::new(hmac::HMAC_SHA256, public_jwk.as_bytes());
                hmac::sign(&key, input).as_ref().to_vec()
            },
        ),
    ));
    let mut jku = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    jku.kid = Some(JWT_KID.into());
    jku.jku = Some("https://attacker.test/jwks.json".into());
    cases.push(("jku header", fixtures::assertion_with(jku, &claims)));
    let mut unknown_kid = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    unknown_kid.kid = Some("someone-else".into());
    cases.push((
        "unknown kid",
        fixtures::assertion_with(unknown_kid, &claims),
    ));
    let mut at_jwt = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    at_jwt.kid = Some(JWT_KID.into());
    at_jwt.typ = Some("at+jwt".into());
    cases.push(("typ at+jwt", fixtures::assertion_with(at_jwt, &claims)));
    cases.push(("not a JWT", "definitely.not.ajwt".to_owned()));

    for (case, assertion) in &cases {
        let (status, body) = with_assertion(&app, assertion).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{case}: {body}"
        );
    }
    assert_eq!(app.audited("token_issued").await, 0);
    assert_eq!(
        app.audited("client_authentication_failed").await,
        cases.len() as i64
    );
}

#[tokio::test]
async fn a_client_assertion_is_single_use() {
    let app = spawn_app().await;
    let assertion = fixtures::assertion(&fixtures::assertion_claims());
    let (status, _) = with_assertion(&app, &assertion).await;
    assert_eq!(status, 200);
    let (status, body) = with_assertion(&app, &assertion).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    assert_eq!(app.audited("token_issued").await, 1);
    assert_eq!(
        app.denial_reasons().await,
        ["client assertion jti replayed"]
    );
}

#[tokio::test]
async fn a_client_id_that_differs_from_the_assertion_is_refused() {
    let app = spawn_app().await;
    let assertion = fixtures::assertion(&fixtures::assertion_claims());
    let refused = app
        .post_form(
            None,
            "/oauth2/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "partner-a-treasury"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &assertion),
                ("resource", "https://reports.test"),
            ],
        )
        .await;
    app.assert_refused(refused, 401, "invalid_client").await;
}
