use serde_json::{Value, json};

use crate::client_credentials::verify_with_jwks;
use crate::helpers::{TestApp, certificates, pki, spawn_app};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

async fn token(app: &TestApp, identity: &str, client_id: &str, audience: &str) -> String {
    app.token(identity, client_id, audience).await
}

/// Partner A's treasury token for the broad payments audience.
async fn broad_token(app: &TestApp) -> String {
    token(
        app,
        "partner-a",
        "partner-a-treasury",
        "https://payments.test",
    )
    .await
}

/// `broad` narrowed by its holder to the settlement audience.
async fn settlement_token(app: &TestApp, broad: &str) -> String {
    let (status, body) = exchange(
        app,
        "partner-a",
        "partner-a-treasury",
        broad,
        &[("audience", "https://settlement.test")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

pub(crate) async fn exchange(
    app: &TestApp,
    identity: &str,
    client_id: &str,
    subject: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", EXCHANGE),
        ("client_id", client_id),
        ("subject_token", subject),
        ("subject_token_type", ACCESS_TOKEN),
    ];
    form.extend_from_slice(extra);
    app.post_form(Some(identity), "/oauth2/token", &form).await
}

fn claims(token: &str) -> Value {
    jsonwebtoken::dangerous::insecure_decode::<Value>(token)
        .unwrap()
        .claims
}

async fn exchanged(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE kind = 'token_exchanged' AND outcome = 'allow'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

async fn lineage(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM token_lineage")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// A refusal case: name, extra form fields, expected error.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

/// Asserts a refused exchange: status, error, nothing issued, the refusal audited.
async fn assert_exchange_refused(app: &TestApp, (status, body): (u16, Value), error: &str) {
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some(error)),
        "{body}"
    );
    assert!(body.get("access_token").is_none());
    assert_eq!(exchanged(app).await, 0, "a token was exchanged");
    assert_eq!(lineage(app).await, 0, "lineage was recorded");
    let refusals: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE kind = 'token_exchanged' AND outcome = 'deny'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(refusals > 0, "the refusal was not audited");
}

#[tokio::test]
async fn settlement_narrowing_one_audience_fewer_scopes_shorter_life_bound_to_the_exchanger() {
    let app = spawn_app().await;
    let broad = broad_token(&app).await;
    let (status, body) = exchange(
        &app,
        "partner-a",
        "partner-a-treasury",
        &broad,
        &[
            ("audience", "https://settlement.test"),
            ("scope", "settlement:read"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "settlement:read");
    assert_eq!(
        body["expires_in"], 120,
        "the settlement audience caps it at 120 s"
    );
    let narrow = verify_with_jwks(
        &app,
        body["access_token"].as_str().unwrap(),
        "https://settlement.test",
    )
    .await;
    let parent = claims(&broad);
    assert_eq!(narrow["aud"], "https://settlement.test");
    assert_eq!(narrow["sub"], parent["sub"]);
    assert!(narrow["exp"].as_i64().unwrap() <= parent["exp"].as_i64().unwrap());
    let leaf = certificates(&pki().client_cert("partner-a")).remove(0);
    let thumbprint = {
        use base64::Engine;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf.as_ref());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
    };
    assert_eq!(narrow["cnf"]["x5t#S256"], thumbprint.as_str());
    assert!(
        uuid::Uuid::parse_str(narrow["txn"].as_str().unwrap()).is_ok(),
        "txn minted at the first hop"
    );
    let recorded: (String, String) =
        sqlx::query_as("SELECT jti::text, parent_jti::text FROM token_lineage")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        recorded,
        (
            narrow["jti"].as_str().unwrap().to_owned(),
            parent["jti"].as_str().unwrap().to_owned()
        )
    );
    let policy_hash: Option<String> = sqlx::query_scalar(
        "SELECT record::jsonb ->> 'policy_set_hash' FROM audit_events WHERE kind = 'token_exchanged'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(policy_hash.map(|hash| hash.len()), Some(64));
}

#[tokio::test]
async fn two_hop_delegation_nests_the_actor_chain_and_carries_txn() {
    let app = spawn_app().await;
    let broad = broad_token(&app).await;
    let treasury_actor = token(
        &app,
        "partner-a",
        "partner-a-treasury",
        "https://ledger.test",
    )
    .await;
    let (status, first) = exchange(
        &app,
        "partner-a",
        "partner-a-treasury",
        &broad,
        &[
            ("audience", "https://settlement.test"),
            ("actor_token", &treasury_actor),
            ("actor_token_type", ACCESS_TOKEN),
        ],
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let first = first["access_token"].as_str().unwrap().to_owned();
    // Hop two: the settlement audience's own service acts on the token it received.
    let ops_actor = token(&app, "partner-a", "partner-a-ops", "https://ledger.test").await;
    let (status, second) = exchange(
        &app,
        "partner-a",
        "partner-a-ops",
        &first,
        &[
            ("audience", "https://settlement.test"),
            ("actor_token", &ops_actor),
            ("actor_token_type", ACCESS_TOKEN),
        ],
    )
    .await;
    assert_eq!(status, 200, "{second}");
    let second = claims(second["access_token"].as_str().unwrap());
    assert_eq!(
        second["act"],
        json!({
            "sub": "partner-a-ops", "client_id": "partner-a-ops",
            "act": { "sub": "partner-a-treasury", "client_id": "partner-a-treasury" },
        })
    );
    assert_eq!(second["sub"], "partner-a-treasury");
    assert_eq!(second["txn"], claims(&first)["txn"]);
    assert_eq!(lineage(&app).await, 2);
}

#[tokio::test]
async fn a_chain_deeper_than_the_cap_is_refused() {
    let app = spawn_app().await;
    let broad = broad_token(&app).await;
    let mut current = settlement_token(&app, &broad).await;
    for hop in 1..=4 {
        let actor = token(&app, "partner-a", "partner-a-ops", "https://ledger.test").await;
        let (status, body) = exchange(
            &app,
            "partner-a",
            "partner-a-ops",
            &current,
            &[
                ("audience", "https://settlement.test"),
                ("actor_token", &actor),
                ("actor_token_type", ACCESS_TOKEN),
            ],
        )
        .await;
        if hop <= 3 {
            assert_eq!(status, 200, "hop {hop}: {body}");
            current = body["access_token"].as_str().unwrap().to_owned();
        } else {
            assert_eq!(
                (status, body["error"].as_str()),
                (400, Some("invalid_request")),
                "{body}"
            );
        }
    }
    assert_eq!(lineage(&app).await, 4);
    assert_eq!(
        claims(&current)["act"]["act"]["act"]["sub"],
        "partner-a-ops"
    );
}

#[tokio::test]
async fn refusals_with_their_exact_errors() {
    let app = spawn_app().await;
    let broad = broad_token(&app).await;
    let cases: Vec<Case> = vec![
        (
            "widened scope",
            vec![
                ("audience", "https://settlement.test"),
                ("scope", "settlement:instruct"),
            ],
            "invalid_scope",
        ),
        (
            "scope beyond the subject",
            vec![
                ("audience", "https://ledger.test"),
                ("scope", "ledger:write"),
            ],
            "invalid_scope",
        ),
        (
            "audience not allowed",
            vec![("audience", "https://reports.test")],
            "invalid_target",
        ),
        (
            "two audiences",
            vec![
                ("audience", "https://settlement.test"),
                ("resource", "https://ledger.test"),
            ],
            "invalid_target",
        ),
        ("no audience", vec![], "invalid_target"),
        (
            "unsupported requested type",
            vec![
                ("audience", "https://settlement.test"),
                (
                    "requested_token_type",
                    "urn:ietf:params:oauth:token-type:saml2",
                ),
            ],
            "invalid_request",
        ),
        (
            "actor without type",
            vec![
                ("audience", "https://settlement.test"),
                ("actor_token", "x"),
            ],
            "invalid_request",
        ),
        (
            "garbage actor",
            vec![
                ("audience", "https://settlement.test"),
                ("actor_token", "x.y.z"),
                ("actor_token_type", ACCESS_TOKEN),
            ],
            "invalid_request",
        ),
    ];
    for (case, extra, error) in &cases {
        let refused = exchange(&app, "partner-a", "partner-a-treasury", &broad, extra).await;
        assert_eq!(
            (refused.0, refused.1["error"].as_str()),
            (400, Some(*error)),
            "{case}: {}",
            refused.1
        );
    }
    assert_exchange_refused(
        &app,
        exchange(
            &app,
            "partner-a",
            "partner-a-treasury",
            &broad,
            &[
                ("audience", "https://settlement.test"),
                ("subject_token_type", "urn:x"),
            ],
        )
        .await,
        "invalid_request",
    )
    .await;
}

#[tokio::test]
async fn subject_token_refusals_are_invalid_request() {
    let app = spawn_app().await;
    let broad = broad_token(&app).await;
    let header = |alg: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(json!({ "alg": alg, "typ": "at+jwt" }).to_string())
    };
    let payload = broad.split('.').nth(1).unwrap();
    let forged_none = format!("{}.{payload}.", header("none"));
    let mut tampered = broad.clone();
    tampered.pop();
    tampered.push(if broad.ends_with('A') { 'B' } else { 'A' });
    for subject in ["not-a-jwt", forged_none.as_str(), tampered.as_str()] {
        let refused = exchange(
            &app,
            "partner-a",
            "partner-a-treasury",
            subject,
            &[("audience", "https://settlement.test")],
        )
        .await;
        assert_eq!(
            (refused.0, refused.1["error"].as_str()),
            (400, Some("invalid_request")),
            "{subject}"
        );
    }
    // Held by neither its client nor its audience.
    let refused = exchange(
        &app,
        "partner-b",
        "partner-b-reconciliation",
        &broad,
        &[("audience", "https://ledger.test")],
    )
    .await;
    assert_exchange_refused(&app, refused, "invalid_request").await;
    // Missing subject_token is not some other grant.
    let refused = app
        .post_form(
            Some("partner-a"),
            "/oauth2/token",
            &[
                ("grant_type", EXCHANGE),
                ("client_id", "partner-a-treasury"),
                ("subject_token_type", ACCESS_TOKEN),
                ("audience", "https://settlement.test"),
            ],
        )
        .await;
    assert_exchange_refused(&app, refused, "invalid_request").await;
}

#[tokio::test]
async fn a_revoked_subject_or_ancestor_stops_the_whole_lineage() {
    let app = spawn_app().await;
    let broad = broad_token(&app).await;
    let child = settlement_token(&app, &broad).await;
    let (status, _) = app
        .post_form(
            Some("partner-a"),
            "/oauth2/revoke",
            &[("client_id", "partner-a-treasury"), ("token", &broad)],
        )
        .await;
    assert_eq!(status, 200);
    // The child reads inactive to its audience's resource server...
    let (_, introspected) = app
        .post_form(
            Some("partner-a"),
            "/oauth2/introspect",
            &[("client_id", "partner-a-ops"), ("token", &child)],
        )
        .await;
    assert_eq!(introspected["active"], false);
    // ...and neither the revoked token nor its descendant can be exchanged again.
    for subject in [&broad, &child] {
        let (status, body) = exchange(
            &app,
            "partner-a",
            "partner-a-ops",
            subject,
            &[("audience", "https://settlement.test")],
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{body}"
        );
    }
    assert_eq!(exchanged(&app).await, 1);
}

#[tokio::test]
async fn an_expired_or_unknown_key_subject_is_refused() {
    let app = spawn_app().await;
    let ring = tessera::crypto::keys::KeyRing::load(&app.pool, app.settings.keys.clone())
        .await
        .unwrap();
    let now = tessera::crypto::keys::unix_now();
    let mut expired = serde_json::from_value::<tessera::domain::tokens::AccessTokenClaims>(claims(
        &broad_token(&app).await,
    ))
    .unwrap();
    expired.jti = tessera::domain::ids::Jti::random();
    expired.iat = now - 600;
    expired.nbf = now - 600;
    expired.exp = now - 1;
    let expired = tessera::crypto::jwt::mint(&ring.current(), &expired).unwrap();
    let refused = exchange(
        &app,
        "partner-a",
        "partner-a-treasury",
        &expired,
        &[("audience", "https://settlement.test")],
    )
    .await;
    assert_exchange_refused(&app, refused, "invalid_request").await;
}

struct Consents {
    pool: sqlx::PgPool,
    audit: tessera::audit::AuditLog,
}

impl Consents {
    async fn new(app: &TestApp) -> Self {
        let audit = crate::helpers::admin_audit(app).await;
        Self {
            pool: app.pool.clone(),
            audit,
        }
    }

    async fn grant(
        &self,
        scopes: &[&str],
        audiences: &[&str],
        from_hours: i64,
        until_hours: i64,
    ) -> uuid::Uuid {
        let now = time::OffsetDateTime::now_utc();
        tessera::storage::consents::create(
            &self.pool,
            &self.audit,
            &tessera::domain::consents::NewConsent {
                grantor: "partner-a".into(),
                grantee_partner: "partner-b".into(),
                grantee_client: None,
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                audiences: audiences.iter().map(|s| s.to_string()).collect(),
                effective_from: now + time::Duration::hours(from_hours),
                effective_until: now + time::Duration::hours(until_hours),
                legal_basis: "contract".into(),
                constraints: json!({}),
            },
            "compliance-officer",
        )
        .await
        .unwrap()
        .id
    }
}

async fn introspect_as_ledger(app: &TestApp, token: &str) -> Value {
    app.post_form(
        Some("resource-server"),
        "/oauth2/introspect",
        &[("client_id", "ledger-rs"), ("token", token)],
    )
    .await
    .1
}

/// Partner B's payments service exchanges partner A's token for the ledger.
async fn cross_partner(app: &TestApp, subject: &str, scope: &str) -> (u16, Value) {
    exchange(
        app,
        "partner-b",
        "payments-rs",
        subject,
        &[("audience", "https://ledger.test"), ("scope", scope)],
    )
    .await
}

/// Decisions compare a consent's window with the request's moment to the sub-second: a consent
/// that takes effect as it is created is in force for the very next request, not from the next
/// whole second on.
#[tokio::test]
async fn a_consent_effective_from_now_is_in_force_at_once() {
    let app = spawn_app().await;
    let consents = Consents::new(&app).await;
    let subject = broad_token(&app).await;
    let consent = consents
        .grant(&["ledger:read"], &["https://ledger.test"], 0, 1)
        .await;
    let (status, body) = cross_partner(&app, &subject, "ledger:read").await;
    assert_eq!(status, 200, "{body}");
    let issued = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(claims(&issued)["consent_id"], consent.to_string());
    assert_eq!(introspect_as_ledger(&app, &issued).await["active"], true);
}

#[tokio::test]
async fn another_partners_subject_is_exchanged_only_under_active_consent() {
    let app = spawn_app().await;
    let consents = Consents::new(&app).await;
    let subject = broad_token(&app).await;

    assert_exchange_refused(
        &app,
        cross_partner(&app, &subject, "ledger:read").await,
        "invalid_request",
    )
    .await;

    let consent = consents
        .grant(&["ledger:read"], &["https://ledger.test"], -1, 1)
        .await;
    let (status, body) = cross_partner(&app, &subject, "ledger:read").await;
    assert_eq!(status, 200, "{body}");
    let issued = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(claims(&issued)["consent_id"], consent.to_string());

    assert_eq!(introspect_as_ledger(&app, &issued).await["active"], true);

    tessera::storage::consents::revoke(
        &app.pool,
        &consents.audit,
        consent,
        "compliance-officer",
        "contract ended",
    )
    .await
    .unwrap();
    assert_eq!(
        introspect_as_ledger(&app, &issued).await["active"],
        false,
        "revoking the consent deactivates its tokens"
    );
    let (status, body) = cross_partner(&app, &subject, "ledger:read").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let reasons: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT record::jsonb ->> 'reason' FROM audit_events WHERE kind IN ('token_exchanged', 'consent_changed') ORDER BY recorded_at",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let reasons: Vec<String> = reasons.into_iter().flatten().collect();
    assert!(
        reasons.iter().any(|r| r == "the consent was revoked"),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("revoked (contract ended)")),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn expired_not_yet_effective_or_narrower_consents_do_not_cover() {
    let app = spawn_app().await;
    let consents = Consents::new(&app).await;
    let subject = broad_token(&app).await;
    consents
        .grant(&["ledger:read"], &["https://ledger.test"], -3, -1)
        .await;
    consents
        .grant(&["ledger:read"], &["https://ledger.test"], 1, 3)
        .await;
    assert_exchange_refused(
        &app,
        cross_partner(&app, &subject, "ledger:read").await,
        "invalid_request",
    )
    .await;
    // A consent that covers the audience but not the scope.
    consents
        .grant(&["settlement:read"], &["https://ledger.test"], -1, 1)
        .await;
    assert_exchange_refused(
        &app,
        cross_partner(&app, &subject, "ledger:read").await,
        "invalid_scope",
    )
    .await;
}

#[tokio::test]
async fn cross_region_without_the_audiences_allowance_is_refused_by_policy() {
    let app = spawn_app().await;
    let consents = Consents::new(&app).await;
    consents
        .grant(&["settlement:read"], &["https://settlement.test"], -1, 1)
        .await;
    let subject = broad_token(&app).await;
    // Partner B's service is in the US; the settlement audience keeps data in the EU.
    let refused = exchange(
        &app,
        "partner-b",
        "payments-rs",
        &subject,
        &[("audience", "https://settlement.test")],
    )
    .await;
    assert_exchange_refused(&app, refused, "invalid_target").await;
    let policies: String = sqlx::query_scalar(
        "SELECT record::jsonb ->> 'policies' FROM audit_events WHERE kind = 'token_exchanged' AND outcome = 'deny'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(policies, r#"["residency-stays-in-region"]"#);
}
