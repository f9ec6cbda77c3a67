use base64::Engine;
use serde_json::Value;

use crate::fixtures::{self, JWT_CLIENT, SELF_SIGNED_CLIENT};
use crate::helpers::{
    ISSUER, TestApp, certificates, client_tls_presenting, http_client, pki, spawn_app,
};

/// Verifies a token with only what a resource server has: the published JWKS.
pub async fn verify_with_jwks(app: &TestApp, token: &str, audience: &str) -> Value {
    let jwks: jsonwebtoken::jwk::JwkSet = app
        .client(None)
        .get(app.url("/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[ISSUER]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap()
        .claims
}

fn thumbprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

#[tokio::test]
async fn tls_client_auth_by_subject_dn_gets_a_certificate_bound_audience_bound_token() {
    let app = spawn_app().await;
    let (status, body) = app
        .client_credentials(
            Some("partner-a"),
            "partner-a-treasury",
            &[
                ("resource", "https://ledger.test"),
                ("scope", "ledger:read"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "ledger:read");
    // The smallest of default 300 s, client cap 900 s and audience cap 600 s.
    assert_eq!(body["expires_in"], 300);

    let claims = verify_with_jwks(
        &app,
        body["access_token"].as_str().unwrap(),
        "https://ledger.test",
    )
    .await;
    assert_eq!(
        claims["aud"], "https://ledger.test",
        "exactly one audience, as a string"
    );
    assert_eq!(claims["sub"], "partner-a-treasury");
    assert_eq!(claims["client_id"], "partner-a-treasury");
    assert_eq!(claims["scope"], "ledger:read");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300
    );
    assert_eq!(claims["nbf"], claims["iat"]);
    let leaf = certificates(&pki().client_cert("partner-a")).remove(0);
    assert_eq!(
        claims["cnf"]["x5t#S256"],
        thumbprint(leaf.as_ref()).as_str()
    );
    assert!(uuid::Uuid::parse_str(claims["jti"].as_str().unwrap()).is_ok());
    assert_eq!(app.audited("token_issued").await, 1);
}

#[tokio::test]
async fn the_shortest_cap_sets_the_lifetime_and_omitted_scope_means_all_allowed() {
    let app = spawn_app().await;
    // partner-b-reconciliation's own cap is 60 s.
    let (status, body) = app
        .client_credentials(
            Some("partner-b"),
            "partner-b-reconciliation",
            &[("audience", "https://ledger.test")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 60);
    assert_eq!(body["scope"], "ledger:read");
}

#[tokio::test]
async fn self_signed_tls_client_auth_matches_the_registered_certificate() {
    let app = spawn_app().await;
    let presented = fixtures::self_signed();
    let client = http_client(client_tls_presenting(
        Some((vec![presented.certificate.clone()], presented.key())),
        &[&rustls::version::TLS13],
    ));
    let response = client
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", SELF_SIGNED_CLIENT),
            ("resource", "https://ledger.test"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", app.denial_reasons().await);
    let body: Value = response.json().await.unwrap();
    let claims = verify_with_jwks(
        &app,
        body["access_token"].as_str().unwrap(),
        "https://ledger.test",
    )
    .await;
    assert_eq!(
        claims["cnf"]["x5t#S256"],
        thumbprint(presented.certificate.as_ref()).as_str()
    );

    // The same pinned certificate cannot pose as another client.
    let response = client
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "partner-b-reconciliation"),
            ("resource", "https://ledger.test"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn private_key_jwt_without_a_certificate_gets_an_unbound_token_for_a_bearer_audience() {
    let app = spawn_app().await;
    let assertion = fixtures::assertion(&fixtures::assertion_claims());
    let (status, body) = app
        .post_form(
            None,
            "/oauth2/token",
            &[
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", &assertion),
                ("resource", "https://reports.test"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let claims = verify_with_jwks(
        &app,
        body["access_token"].as_str().unwrap(),
        "https://reports.test",
    )
    .await;
    assert_eq!(claims["client_id"], JWT_CLIENT);
    assert!(claims.get("cnf").is_none());
}

#[tokio::test]
async fn private_key_jwt_over_mtls_binds_the_token_to_the_certificate() {
    let app = spawn_app().await;
    let assertion = fixtures::assertion(&fixtures::assertion_claims());
    let (status, body) = app
        .post_form(
            Some("partner-a"),
            "/oauth2/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", JWT_CLIENT),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", &assertion),
                ("resource", "https://ledger.test"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let claims = verify_with_jwks(
        &app,
        body["access_token"].as_str().unwrap(),
        "https://ledger.test",
    )
    .await;
    let leaf = certificates(&pki().client_cert("partner-a")).remove(0);
    assert_eq!(
        claims["cnf"]["x5t#S256"],
        thumbprint(leaf.as_ref()).as_str()
    );
}

#[tokio::test]
async fn a_certificate_bound_audience_refuses_a_client_without_certificate() {
    let app = spawn_app().await;
    let assertion = fixtures::assertion(&fixtures::assertion_claims());
    let refused = app
        .post_form(
            None,
            "/oauth2/token",
            &[
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", &assertion),
                ("resource", "https://ledger.test"),
            ],
        )
        .await;
    app.assert_refused(refused, 400, "invalid_request").await;
}

#[tokio::test]
async fn target_and_scope_refusals() {
    let app = spawn_app().await;
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "invalid_target"),
        (&[("resource", "https://reports.test")], "invalid_target"),
        (&[("resource", "https://unknown.test")], "invalid_target"),
        (&[("resource", "not a uri")], "invalid_target"),
        (
            &[
                ("resource", "https://ledger.test"),
                ("audience", "https://settlement.test"),
            ],
            "invalid_target",
        ),
        (
            &[
                ("resource", "https://ledger.test"),
                ("resource", "https://settlement.test"),
            ],
            "invalid_target",
        ),
        (
            &[
                ("resource", "https://ledger.test"),
                ("scope", "ledger:read ledger:admin"),
            ],
            "invalid_scope",
        ),
        (
            &[
                ("resource", "https://settlement.test"),
                ("scope", "settlement:instruct"),
            ],
            "invalid_scope",
        ),
        (
            &[("resource", "https://ledger.test"), ("scope", "bad\"scope")],
            "invalid_scope",
        ),
    ];
    for (extra, error) in cases {
        let refused = app
            .client_credentials(Some("partner-a"), "partner-a-treasury", extra)
            .await;
        app.assert_refused(refused, 400, error).await;
    }
}

#[tokio::test]
async fn malformed_requests_get_standard_errors() {
    let app = spawn_app().await;
    let client = app.client(Some("partner-a"));
    let url = app.url("/oauth2/token");

    let unsupported = app
        .post_form(
            Some("partner-a"),
            "/oauth2/token",
            &[
                ("grant_type", "password"),
                ("client_id", "partner-a-treasury"),
            ],
        )
        .await;
    app.assert_refused(unsupported, 400, "unsupported_grant_type")
        .await;

    let missing = app
        .post_form(
            Some("partner-a"),
            "/oauth2/token",
            &[("client_id", "partner-a-treasury")],
        )
        .await;
    app.assert_refused(missing, 400, "invalid_request").await;

    let repeated = client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&client_id=partner-a-treasury&scope=a&scope=b")
        .send()
        .await
        .unwrap();
    assert_eq!(repeated.status(), 400);
    assert_eq!(
        repeated.json::<Value>().await.unwrap()["error"],
        "invalid_request"
    );

    let json_body = client
        .post(&url)
        .json(&serde_json::json!({ "grant_type": "client_credentials" }))
        .send()
        .await
        .unwrap();
    assert_eq!(json_body.status(), 400);
    assert_eq!(json_body.headers()["cache-control"], "no-store");
    assert_eq!(
        json_body.json::<Value>().await.unwrap()["error"],
        "invalid_request"
    );

    let oversized = client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&pad={}",
            "x".repeat(128 * 1024)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);
    assert_eq!(app.audited("token_issued").await, 0);
}

#[tokio::test]
async fn policy_keeps_settlement_audiences_out_of_reach_of_client_credentials() {
    let app = spawn_app().await;
    let refused = app
        .client_credentials(
            Some("partner-a"),
            "partner-a-treasury",
            &[
                ("resource", "https://settlement.test"),
                ("scope", "settlement:read"),
            ],
        )
        .await;
    app.assert_refused(refused, 400, "invalid_target").await;
    let (policies, hash): (String, String) = sqlx::query_as(
        "SELECT record::jsonb ->> 'policies', record::jsonb ->> 'policy_set_hash'
           FROM audit_events WHERE kind = 'token_denied'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    // Default deny: no permit matched, so no policy determined the outcome.
    assert_eq!(policies, "[]");
    assert_eq!(hash.len(), 64);
}
