use serde_json::Value;

use crate::helpers::{TestApp, spawn_app};

async fn ledger_token(app: &TestApp) -> String {
    app.token("partner-a", "partner-a-treasury", "https://ledger.test")
        .await
}

async fn introspect(
    app: &TestApp,
    identity: Option<&str>,
    client_id: &str,
    token: &str,
) -> (u16, Value) {
    app.post_form(
        identity,
        "/oauth2/introspect",
        &[("client_id", client_id), ("token", token)],
    )
    .await
}

#[tokio::test]
async fn the_audiences_resource_server_sees_the_token_active_with_its_claims() {
    let app = spawn_app().await;
    let token = ledger_token(&app).await;
    let (status, body) = introspect(&app, Some("resource-server"), "ledger-rs", &token).await;
    assert_eq!(status, 200);
    assert_eq!(body["active"], true);
    assert_eq!(body["client_id"], "partner-a-treasury");
    assert_eq!(body["aud"], "https://ledger.test");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "ledger:read ledger:write");
    for claim in ["exp", "iat", "jti", "cnf"] {
        assert!(body.get(claim).is_some(), "{claim} missing: {body}");
    }
}

#[tokio::test]
async fn another_audiences_resource_server_sees_inactive() {
    let app = spawn_app().await;
    let token = ledger_token(&app).await;
    let (status, body) = introspect(&app, Some("resource-server"), "settlement-rs", &token).await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({ "active": false }));
}

#[tokio::test]
async fn introspection_requires_authentication() {
    let app = spawn_app().await;
    let token = ledger_token(&app).await;
    let (status, body) = introspect(&app, None, "ledger-rs", &token).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, body) = app
        .post_form(None, "/oauth2/introspect", &[("token", &token)])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
}

#[tokio::test]
async fn garbage_and_tampered_tokens_are_inactive() {
    let app = spawn_app().await;
    let token = ledger_token(&app).await;
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    for candidate in ["garbage", "a.b.c", tampered.as_str()] {
        let (status, body) =
            introspect(&app, Some("resource-server"), "ops-admin", candidate).await;
        assert_eq!(status, 200);
        assert_eq!(body["active"], false, "{candidate}");
    }
}

#[tokio::test]
async fn a_revoked_token_reads_inactive() {
    let app = spawn_app().await;
    let token = ledger_token(&app).await;
    let (status, _) = app
        .post_form(
            Some("partner-a"),
            "/oauth2/revoke",
            &[("client_id", "partner-a-treasury"), ("token", &token)],
        )
        .await;
    assert_eq!(status, 200);
    let (_, body) = introspect(&app, Some("resource-server"), "ledger-rs", &token).await;
    assert_eq!(body["active"], false);
    assert_eq!(app.audited("token_revoked").await, 1);
}

#[tokio::test]
async fn nobody_revokes_someone_elses_token() {
    let app = spawn_app().await;
    let token = ledger_token(&app).await;
    let (status, body) = app
        .post_form(
            Some("partner-b"),
            "/oauth2/revoke",
            &[("client_id", "partner-b-reconciliation"), ("token", &token)],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unauthorized_client"))
    );
    let (_, body) = introspect(&app, Some("resource-server"), "ledger-rs", &token).await;
    assert_eq!(body["active"], true, "the token must still be active");
    let revoked: i64 = sqlx::query_scalar("SELECT count(*) FROM revoked_tokens")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(revoked, 0);
}

#[tokio::test]
async fn an_admin_may_revoke_any_token_and_unknown_tokens_get_200() {
    let app = spawn_app().await;
    let token = ledger_token(&app).await;
    let (status, _) = app
        .post_form(
            Some("resource-server"),
            "/oauth2/revoke",
            &[("client_id", "ops-admin"), ("token", &token)],
        )
        .await;
    assert_eq!(status, 200);
    let (_, body) = introspect(&app, Some("resource-server"), "ledger-rs", &token).await;
    assert_eq!(body["active"], false);
    let (status, _) = app
        .post_form(
            Some("resource-server"),
            "/oauth2/revoke",
            &[("client_id", "ops-admin"), ("token", "unknown")],
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn revocation_is_503_never_200_when_the_store_cannot_record_it() {
    let app = spawn_app().await;
    let token = ledger_token(&app).await;
    sqlx::query("ALTER TABLE revoked_tokens RENAME TO revoked_tokens_away")
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, body) = app
        .post_form(
            Some("partner-a"),
            "/oauth2/revoke",
            &[("client_id", "partner-a-treasury"), ("token", &token)],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable"))
    );
}

#[tokio::test]
async fn a_revocation_on_one_node_reaches_another_within_its_cache_ttl() {
    use std::path::Path;
    let db = crate::helpers::seeded_database().await;
    let ttl = [("TESSERA_REGISTRY__CACHE_TTL_MS", Path::new("300"))];
    let mut nodes = [
        crate::helpers::ServerProcess::start_with(&db.url, &ttl),
        crate::helpers::ServerProcess::start_with(&db.url, &ttl),
    ];
    let partner = crate::helpers::client_with(Some("partner-a"), &[&rustls::version::TLS13]);
    let admin = crate::helpers::client_with(Some("resource-server"), &[&rustls::version::TLS13]);
    let token: Value = partner
        .post(nodes[0].url("/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "partner-a-treasury"),
            ("resource", "https://ledger.test"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    let active_on_b = || async {
        let body: Value = admin
            .post(nodes[1].url("/oauth2/introspect"))
            .form(&[("client_id", "ledger-rs"), ("token", token.as_str())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["active"].as_bool().unwrap()
    };
    assert!(active_on_b().await);
    let revoked = partner
        .post(nodes[0].url("/oauth2/revoke"))
        .form(&[
            ("client_id", "partner-a-treasury"),
            ("token", token.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(
        !active_on_b().await,
        "node B still trusts a token revoked on node A"
    );
    for node in &mut nodes {
        node.signal("-TERM");
        assert!(node.wait().success());
    }
}

/// Every refusal is audited, a missing `token` parameter too (introspection and revocation).
#[tokio::test]
async fn a_missing_token_parameter_is_refused_and_audited() {
    let app = spawn_app().await;
    for path in ["/oauth2/introspect", "/oauth2/revoke"] {
        let (status, body) = app
            .post_form(Some("resource-server"), path, &[("client_id", "ledger-rs")])
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{path}: {body}"
        );
    }
    assert_eq!(
        app.denial_reasons().await,
        [
            "invalid_request: parameter `token` is required",
            "invalid_request: parameter `token` is required",
        ]
    );
}
