//! Partner JWTs as subject tokens, accepted only under the partner's active trust profile,
//! with the partner's keys served by a real HTTPS server started by the test.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use actix_web::{App, HttpResponse, HttpServer, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestDatabase, pki, spawn_app_on};

pub(crate) const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub(crate) const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
pub(crate) const PARTNER_ISSUER: &str = "https://idp.partner-d.test";

pub(crate) use crate::fixtures::{ClientKey as PartnerKey, es256_key as partner_key};

/// The partner's identity provider: serves its JWKS over HTTPS, counts fetches, can go down.
pub(crate) struct PartnerIdp {
    pub(crate) url: String,
    pub(crate) fetches: Arc<AtomicUsize>,
    pub(crate) down: Arc<AtomicBool>,
    /// Answers after a second, or with a body larger than any key set.
    pub(crate) slow: Arc<AtomicBool>,
    pub(crate) huge: Arc<AtomicBool>,
}

pub(crate) async fn start_idp(jwks: Value) -> PartnerIdp {
    let fetches = Arc::new(AtomicUsize::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let slow = Arc::new(AtomicBool::new(false));
    let huge = Arc::new(AtomicBool::new(false));
    let (counter, switch) = (fetches.clone(), down.clone());
    let (slow_switch, huge_switch) = (slow.clone(), huge.clone());
    let jwks = web::Data::new(jwks);
    let pki = pki();
    use rustls::pki_types::pem::PemObject;
    let tls = rustls::ServerConfig::builder_with_provider(tessera::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            crate::helpers::certificates(&pki.server_cert()),
            rustls::pki_types::PrivateKeyDer::from_pem_file(pki.server_key()).unwrap(),
        )
        .unwrap();
    let server = HttpServer::new(move || {
        let (counter, switch) = (counter.clone(), switch.clone());
        let (slow, huge) = (slow_switch.clone(), huge_switch.clone());
        App::new().app_data(jwks.clone()).route(
            "/jwks.json",
            web::get().to(move |jwks: web::Data<Value>| {
                let (counter, switch) = (counter.clone(), switch.clone());
                let (slow, huge) = (slow.clone(), huge.clone());
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    if slow.load(Ordering::SeqCst) {
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    if switch.load(Ordering::SeqCst) {
                        HttpResponse::ServiceUnavailable().finish()
                    } else if huge.load(Ordering::SeqCst) {
                        let mut padded = jwks.get_ref().clone();
                        padded["padding"] = json!("x".repeat(1024 * 1024));
                        HttpResponse::Ok().json(padded)
                    } else {
                        HttpResponse::Ok().json(jwks.get_ref())
                    }
                }
            }),
        )
    })
    .workers(1)
    .bind_rustls_0_23("127.0.0.1:0", tls)
    .unwrap();
    let port = server.addrs()[0].port();
    tokio::spawn(server.run());
    PartnerIdp {
        url: format!("https://localhost:{port}/jwks.json"),
        fetches,
        down,
        slow,
        huge,
    }
}

pub(crate) struct Setup {
    pub(crate) app: TestApp,
    pub(crate) key: PartnerKey,
    pub(crate) idp: PartnerIdp,
}

pub(crate) async fn setup() -> Setup {
    let key = partner_key("d-1");
    let idp = start_idp(json!({ "keys": [key.jwk] })).await;
    let app = spawn_app_on(TestDatabase::create().await, |settings| {
        settings.jwks_ca_file = Some(pki().ca_cert());
    })
    .await;
    publish(&app, "partner-d", &idp.url, true).await;
    // Partner D consents to partner A's treasury acting on its subjects at the ledger.
    let audit = crate::helpers::admin_audit(&app).await;
    let now = time::OffsetDateTime::now_utc();
    tessera::storage::consents::create(
        &app.pool,
        &audit,
        &tessera::domain::consents::NewConsent {
            grantor: "partner-d".into(),
            grantee_partner: "partner-a".into(),
            grantee_client: Some("partner-a-treasury".into()),
            scopes: vec!["ledger:read".into()],
            audiences: vec!["https://ledger.test".into()],
            effective_from: now - time::Duration::hours(1),
            effective_until: now + time::Duration::hours(1),
            legal_basis: "contract".into(),
            constraints: json!({}),
        },
        "compliance-officer",
    )
    .await
    .unwrap();
    Setup { app, key, idp }
}

async fn publish(app: &TestApp, partner: &str, jwks_uri: &str, active: bool) -> i32 {
    publish_with(app, partner, jwks_uri, active, None).await
}

pub(crate) async fn publish_with(
    app: &TestApp,
    partner: &str,
    jwks_uri: &str,
    active: bool,
    client_ca_pem: Option<String>,
) -> i32 {
    tessera::storage::trust::publish(
        &app.pool,
        &crate::helpers::admin_audit(app).await,
        partner,
        &tessera::domain::trust::NewProfile {
            issuers: vec![PARTNER_ISSUER.into()],
            jwks_uri: Some(jwks_uri.into()),
            algorithms: vec!["ES256".into()],
            max_assertion_lifetime_s: 300,
            required_claims: json!({ "tenant": "d" }),
            single_use: true,
            audiences: vec!["https://ledger.test".into()],
            scopes: vec!["ledger:read".into()],
            region: "eu".into(),
            active,
            client_ca_pem,
            ..tessera::domain::trust::NewProfile::default()
        },
        "admin",
    )
    .await
    .unwrap()
}

pub(crate) fn claims() -> Value {
    let now = tessera::crypto::keys::unix_now();
    json!({
        "iss": PARTNER_ISSUER,
        "sub": "employee-42@partner-d",
        "aud": crate::helpers::ISSUER,
        "iat": now,
        "exp": now + 120,
        "jti": uuid::Uuid::new_v4().to_string(),
        "tenant": "d",
        "scope": "ledger:read",
    })
}

pub(crate) fn sign(key: &PartnerKey, kid: &str, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_ec_der(&key.pkcs8),
    )
    .unwrap()
}

fn forged(header: Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

pub(crate) async fn exchange(app: &TestApp, subject: &str) -> (u16, Value) {
    app.post_form(
        Some("partner-a"),
        "/oauth2/token",
        &[
            ("grant_type", EXCHANGE),
            ("client_id", "partner-a-treasury"),
            ("subject_token", subject),
            ("subject_token_type", JWT_TYPE),
            ("audience", "https://ledger.test"),
        ],
    )
    .await
}

pub(crate) async fn issued(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE kind = 'token_exchanged' AND outcome = 'allow'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_partner_jwt_becomes_a_tessera_token_under_consent() {
    let Setup { app, key, idp } = setup().await;
    let (status, body) = exchange(&app, &sign(&key, "d-1", &claims())).await;
    assert_eq!(status, 200, "{body}");
    let token = crate::client_credentials::verify_with_jwks(
        &app,
        body["access_token"].as_str().unwrap(),
        "https://ledger.test",
    )
    .await;
    assert_eq!(token["sub"], "employee-42@partner-d");
    assert_eq!(token["client_id"], "partner-a-treasury");
    assert_eq!(token["trust_profile_version"], 1);
    assert!(token.get("consent_id").is_some());
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);
    let version: Option<String> = sqlx::query_scalar(
        "SELECT record::jsonb ->> 'trust_profile_version' FROM audit_events WHERE kind = 'token_exchanged'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(version.as_deref(), Some("1"));
}

#[tokio::test]
async fn partner_jwt_refusals_are_invalid_request_and_issue_nothing() {
    let Setup { app, key, .. } = setup().await;
    let stranger = partner_key("e-1");
    // Partner E vouches through its own issuer and key.
    tessera::storage::trust::publish(
        &app.pool,
        &crate::helpers::admin_audit(&app).await,
        "partner-e",
        &tessera::domain::trust::NewProfile {
            issuers: vec!["https://idp.partner-e.test".into()],
            jwks: Some(json!({ "keys": [stranger.jwk] })),
            algorithms: vec!["ES256".into()],
            max_assertion_lifetime_s: 300,
            required_claims: json!({}),
            single_use: true,
            audiences: vec!["https://ledger.test".into()],
            scopes: vec!["ledger:read".into()],
            region: "eu".into(),
            active: true,
            ..tessera::domain::trust::NewProfile::default()
        },
        "admin",
    )
    .await
    .unwrap();
    let now = tessera::crypto::keys::unix_now();
    let with = |change: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut claims = claims();
        change(claims.as_object_mut().unwrap());
        claims
    };
    let public_jwk = key.jwk.to_string();
    let hs256 = {
        let base = claims();
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(json!({ "alg": "HS256", "kid": "d-1" }).to_string()),
            URL_SAFE_NO_PAD.encode(base.to_string())
        );
        let tag = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, public_jwk.as_bytes()),
            input.as_bytes(),
        );
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    };
    let cases: Vec<(&str, String)> = vec![
        ("alg none", forged(json!({ "alg": "none" }), &claims(), b"")),
        ("HS256 keyed with the public key", hs256),
        (
            "wrong aud",
            sign(
                &key,
                "d-1",
                &with(&|c| {
                    c.insert("aud".into(), json!("https://elsewhere.test"));
                }),
            ),
        ),
        (
            "issuer in no profile",
            sign(
                &key,
                "d-1",
                &with(&|c| {
                    c.insert("iss".into(), json!("https://idp.unknown.test"));
                }),
            ),
        ),
        (
            "lifetime over the profile maximum",
            sign(
                &key,
                "d-1",
                &with(&|c| {
                    c.insert("exp".into(), json!(now + 3600));
                }),
            ),
        ),
        (
            "missing required claim",
            sign(
                &key,
                "d-1",
                &with(&|c| {
                    c.remove("tenant");
                }),
            ),
        ),
        (
            "exp as a string",
            sign(
                &key,
                "d-1",
                &with(&|c| {
                    c.insert("exp".into(), json!((now + 60).to_string()));
                }),
            ),
        ),
        (
            "nbf as a string",
            sign(
                &key,
                "d-1",
                &with(&|c| {
                    c.insert("nbf".into(), json!(now.to_string()));
                }),
            ),
        ),
        (
            "signed by another partner's key",
            sign(&stranger, "d-1", &claims()),
        ),
        (
            "partner E's issuer signed with partner D's key",
            sign(
                &key,
                "e-1",
                &with(&|c| {
                    c.insert("iss".into(), json!("https://idp.partner-e.test"));
                }),
            ),
        ),
        (
            "expired",
            sign(
                &key,
                "d-1",
                &with(&|c| {
                    c.insert("iat".into(), json!(now - 200));
                    c.insert("exp".into(), json!(now - 100));
                }),
            ),
        ),
    ];
    for (case, subject) in &cases {
        let (status, body) = exchange(&app, subject).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{case}: {body}"
        );
    }
    assert_eq!(issued(&app).await, 0);
}

#[tokio::test]
async fn a_replayed_single_use_assertion_is_refused() {
    let Setup { app, key, .. } = setup().await;
    let assertion = sign(&key, "d-1", &claims());
    assert_eq!(exchange(&app, &assertion).await.0, 200);
    let (status, body) = exchange(&app, &assertion).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    assert_eq!(issued(&app).await, 1);
}

#[tokio::test]
async fn an_unknown_key_gets_one_rate_limited_refetch_then_refusal() {
    let Setup { app, key, idp } = setup().await;
    assert_eq!(exchange(&app, &sign(&key, "d-1", &claims())).await.0, 200);
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);
    let unknown = partner_key("d-2");
    for attempt in 0..3 {
        let (status, body) = exchange(&app, &sign(&unknown, "d-2", &claims())).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{attempt}"
        );
    }
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        2,
        "one refetch for the unknown kid, then none within the interval"
    );
    assert_eq!(issued(&app).await, 1);
}

#[tokio::test]
async fn an_unreachable_jwks_is_503() {
    let Setup { app, key, idp } = setup().await;
    idp.down.store(true, Ordering::SeqCst);
    let (status, body) = exchange(&app, &sign(&key, "d-1", &claims())).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable"))
    );
    assert_eq!(issued(&app).await, 0);
}

#[tokio::test]
async fn a_suspended_profile_refuses_and_versions_stay_readable() {
    let Setup { app, key, idp } = setup().await;
    let version = publish(&app, "partner-d", &idp.url, false).await;
    assert_eq!(version, 2);
    let (status, body) = exchange(&app, &sign(&key, "d-1", &claims())).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let versions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM trust_profiles WHERE partner_id = 'partner-d'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(versions, 2);
    assert_eq!(issued(&app).await, 0);
}

#[tokio::test]
async fn may_act_must_name_the_actor() {
    let Setup { app, key, .. } = setup().await;
    let mut subject = claims();
    subject["may_act"] = json!({ "sub": "someone-else" });
    let (_, actor) = app
        .client_credentials(
            Some("partner-a"),
            "partner-a-treasury",
            &[("resource", "https://ledger.test")],
        )
        .await;
    let (status, body) = app
        .post_form(
            Some("partner-a"),
            "/oauth2/token",
            &[
                ("grant_type", EXCHANGE),
                ("client_id", "partner-a-treasury"),
                ("subject_token", &sign(&key, "d-1", &subject)),
                ("subject_token_type", JWT_TYPE),
                ("actor_token", actor["access_token"].as_str().unwrap()),
                (
                    "actor_token_type",
                    "urn:ietf:params:oauth:token-type:access_token",
                ),
                ("audience", "https://ledger.test"),
            ],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    assert_eq!(issued(&app).await, 0);
}

#[tokio::test]
async fn a_profiles_client_ca_feeds_mtls_trust_without_a_restart() {
    let app = spawn_app_on(TestDatabase::create().await, |settings| {
        settings.registry.cache_ttl = std::time::Duration::from_millis(200);
    })
    .await;
    let untrusted = crate::helpers::client_with(
        Some(tessera::dev::pki::UNTRUSTED_CLIENT),
        &[&rustls::version::TLS13],
    );
    assert!(untrusted.get(app.url("/healthz")).send().await.is_err());
    let ca = std::fs::read_to_string(pki().untrusted_ca_cert()).unwrap();
    publish_with(
        &app,
        "partner-e",
        "https://idp.partner-e.test/jwks.json",
        true,
        Some(ca),
    )
    .await;
    let mut accepted = false;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let fresh = crate::helpers::client_with(
            Some(tessera::dev::pki::UNTRUSTED_CLIENT),
            &[&rustls::version::TLS13],
        );
        if fresh
            .get(app.url("/mtls/identity"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            accepted = true;
            break;
        }
    }
    assert!(accepted, "the partner's CA was not trusted within 4 s");
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE kind = 'trust_profile_changed'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);
}

#[tokio::test]
async fn an_issuer_vouches_for_one_partner_only() {
    let Setup { app, idp, .. } = setup().await;
    let claimed = tessera::storage::trust::publish(
        &app.pool,
        &crate::helpers::admin_audit(&app).await,
        "partner-e",
        &tessera::domain::trust::NewProfile {
            issuers: vec![PARTNER_ISSUER.into()],
            jwks_uri: Some(idp.url.clone()),
            algorithms: vec!["ES256".into()],
            max_assertion_lifetime_s: 300,
            required_claims: json!({}),
            audiences: vec!["https://ledger.test".into()],
            scopes: vec!["ledger:read".into()],
            region: "eu".into(),
            active: true,
            ..tessera::domain::trust::NewProfile::default()
        },
        "admin",
    )
    .await;
    assert!(
        claimed.is_err(),
        "partner E must not take over partner D's issuer"
    );
    let profiles: i64 =
        sqlx::query_scalar("SELECT count(*) FROM trust_profiles WHERE partner_id = 'partner-e'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(profiles, 0);
}
