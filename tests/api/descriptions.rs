//! Issue 13 item 1: a scope refusal names the limit that lacks the scope (the subject, the
//! audience, the client's registration, the consent), for `client_credentials` as for token
//! exchange; the caller and the audit trail read the same reason, and nothing is issued.

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};
use crate::partner::{EXCHANGE, JWT_TYPE, PARTNER_ISSUER, Setup, setup, sign};

const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Tokens issued or exchanged so far.
async fn issued(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM audit_events
          WHERE kind IN ('token_issued', 'token_exchanged') AND outcome = 'allow'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// Asserts an `invalid_scope` refusal with exactly `description`, audited with that reason,
/// and that no token was issued or exchanged beyond the `before` already there.
async fn assert_names(app: &TestApp, before: i64, (status, body): (u16, Value), description: &str) {
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_scope", "{body}");
    assert_eq!(body["error_description"], description, "{body}");
    assert!(body.get("access_token").is_none());
    assert_eq!(issued(app).await, before, "a token was issued");
    let reasons = app.denial_reasons().await;
    assert!(
        reasons
            .last()
            .is_some_and(|reason| reason.ends_with(description)),
        "the refusal was not audited with its reason: {reasons:?}"
    );
}

#[tokio::test]
async fn client_credentials_names_the_audience_or_the_registration() {
    let cases = [
        (
            "https://ledger.test",
            "ledger:read ledger:admin",
            "the audience does not allow: ledger:admin",
        ),
        (
            "https://settlement.test",
            "settlement:instruct",
            "the client's registration for this audience does not allow: settlement:instruct",
        ),
    ];
    for (audience, scope, description) in cases {
        let app = spawn_app().await;
        let refused = app
            .client_credentials(
                Some("partner-a"),
                "partner-a-treasury",
                &[("resource", audience), ("scope", scope)],
            )
            .await;
        assert_names(&app, 0, refused, description).await;
    }
}

#[tokio::test]
async fn an_exchange_names_the_subject_when_the_subject_lacks_the_scope() {
    let app = spawn_app().await;
    // The broad payments token carries no ledger:write, which the audience and the client's
    // registration both allow.
    let broad = app
        .token("partner-a", "partner-a-treasury", "https://payments.test")
        .await;
    let before = issued(&app).await;
    let refused = app
        .post_form(
            Some("partner-a"),
            "/oauth2/token",
            &[
                ("grant_type", EXCHANGE),
                ("client_id", "partner-a-treasury"),
                ("subject_token", &broad),
                ("subject_token_type", ACCESS_TOKEN),
                ("audience", "https://ledger.test"),
                ("scope", "ledger:write"),
            ],
        )
        .await;
    assert_names(
        &app,
        before,
        refused,
        "the subject token does not allow: ledger:write",
    )
    .await;
}

#[tokio::test]
async fn an_exchange_names_the_consent_when_only_the_consent_lacks_the_scope() {
    let Setup { app, key, idp } = setup().await;
    // Partner D's profile now allows ledger:write; its consent to partner A still does not.
    tessera::trust::publish(
        &app.pool,
        &crate::helpers::admin_audit(&app).await,
        "partner-d",
        &tessera::trust::NewProfile {
            issuers: vec![PARTNER_ISSUER.into()],
            jwks_uri: Some(idp.url.clone()),
            algorithms: vec!["ES256".into()],
            max_assertion_lifetime_s: 300,
            required_claims: json!({}),
            single_use: true,
            audiences: vec!["https://ledger.test".into()],
            scopes: vec!["ledger:read".into(), "ledger:write".into()],
            region: "eu".into(),
            active: true,
            ..tessera::trust::NewProfile::default()
        },
        "admin",
    )
    .await
    .unwrap();
    let mut claims = crate::partner::claims();
    claims["scope"] = json!("ledger:read ledger:write");
    let refused = app
        .post_form(
            Some("partner-a"),
            "/oauth2/token",
            &[
                ("grant_type", EXCHANGE),
                ("client_id", "partner-a-treasury"),
                ("subject_token", &sign(&key, "d-1", &claims)),
                ("subject_token_type", JWT_TYPE),
                ("audience", "https://ledger.test"),
                ("scope", "ledger:write"),
            ],
        )
        .await;
    assert_names(&app, 0, refused, "the consent does not allow: ledger:write").await;
}
