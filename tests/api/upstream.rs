//! The upstream bank-token broker against a real bank: an HTTPS server this test starts, with
//! its own CA (rcgen), requiring Tessera's client certificate, counting token requests, and
//! switchable into failures.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use tessera::domain::audiences::AudienceId;
use tessera::domain::ids::UpstreamConnectionId;
use tessera::domain::scopes::ScopeSet;
use tessera::domain::upstream::Delivery;
use tessera::storage::upstream::{Lease, NewConnection};

use crate::exchange::exchange;
use crate::helpers::{TestApp, TestDatabase, spawn_app, spawn_app_on};

const BANK_AUDIENCE: &str = "https://settlement.test";
const OTHER_BANK_AUDIENCE: &str = "https://payments.test";
const TREASURY: &str = "partner-a-treasury";
const TREASURY_IDENTITY: &str = "partner-a";
const CONNECTION: &str = "bank-one";

/// What the bank does with the next token request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Normal,
    /// 503 to everything.
    Down,
    /// Answers normally after a pause.
    Slow(Duration),
    Html,
    MissingExpiresIn,
    NegativeExpiresIn,
    /// 429 with `Retry-After` in seconds.
    RateLimited(u64),
    /// A well-formed token response padded past any sane size.
    Huge,
}

struct BankState {
    token_requests: AtomicU32,
    mode: Mutex<Mode>,
    expires_in: Mutex<i64>,
    issued: Mutex<Vec<String>>,
    revoked: Mutex<Vec<String>>,
}

/// A bank: its CA, Tessera's identity at it, and its token endpoint.
struct Bank {
    state: Arc<BankState>,
    port: u16,
    ca_pem: String,
    tessera_cert_pem: String,
    tessera_key_pkcs8: Vec<u8>,
    handle: actix_web::dev::ServerHandle,
}

impl Bank {
    fn requests(&self) -> u32 {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    fn set(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }
}

impl Drop for Bank {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        drop(tokio::spawn(async move { handle.stop(false).await }));
    }
}

async fn token_endpoint(
    state: web::Data<BankState>,
    form: web::Form<Vec<(String, String)>>,
) -> HttpResponse {
    let field = |name: &str| {
        form.iter()
            .find(|(key, _)| key == name)
            .map(|(_, v)| v.as_str())
    };
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    let mode = *state.mode.lock().unwrap();
    if let Mode::Slow(pause) = mode {
        tokio::time::sleep(pause).await;
    }
    if field("grant_type") != Some("client_credentials")
        || field("client_id") != Some("tessera-at-bank")
    {
        return HttpResponse::BadRequest().json(serde_json::json!({ "error": "invalid_request" }));
    }
    let token = format!("bank-token-{}", uuid::Uuid::new_v4().simple());
    let expires_in = *state.expires_in.lock().unwrap();
    let json = |body: Value| HttpResponse::Ok().json(body);
    state.issued.lock().unwrap().push(token.clone());
    match mode {
        Mode::Normal | Mode::Slow(_) => json(serde_json::json!({
            "access_token": token, "token_type": "Bearer", "expires_in": expires_in,
            "scope": field("scope"),
        })),
        Mode::Down => HttpResponse::ServiceUnavailable().finish(),
        Mode::Html => HttpResponse::Ok()
            .content_type("text/html")
            .body("<html><body>maintenance</body></html>"),
        Mode::MissingExpiresIn => {
            json(serde_json::json!({ "access_token": token, "token_type": "Bearer" }))
        }
        Mode::NegativeExpiresIn => json(serde_json::json!({
            "access_token": token, "token_type": "Bearer", "expires_in": -30,
        })),
        Mode::Huge => json(serde_json::json!({
            "access_token": token, "token_type": "Bearer", "expires_in": expires_in,
            "padding": "x".repeat(1 << 20),
        })),
        Mode::RateLimited(seconds) => HttpResponse::TooManyRequests()
            .insert_header(("Retry-After", seconds.to_string()))
            .finish(),
    }
}

/// RFC 7009: remembers what it was asked to revoke.
async fn revocation_endpoint(
    state: web::Data<BankState>,
    form: web::Form<Vec<(String, String)>>,
) -> HttpResponse {
    if let Some((_, token)) = form.iter().find(|(key, _)| key == "token") {
        state.revoked.lock().unwrap().push(token.clone());
    }
    HttpResponse::Ok().finish()
}

/// Starts a bank whose tokens live `expires_in` seconds.
async fn start_bank(expires_in: i64) -> Bank {
    let provider = tessera::tls::crypto_provider();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let tessera_key = KeyPair::generate().unwrap();
    let mut tessera_params = CertificateParams::new(vec!["tessera.test".to_owned()]).unwrap();
    tessera_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let tessera_cert = tessera_params.signed_by(&tessera_key, &ca).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server_cert.der().clone()],
            PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    let state = Arc::new(BankState {
        token_requests: AtomicU32::new(0),
        mode: Mutex::new(Mode::Normal),
        expires_in: Mutex::new(expires_in),
        issued: Mutex::new(Vec::new()),
        revoked: Mutex::new(Vec::new()),
    });
    let data = web::Data::from(state.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/token", web::post().to(token_endpoint))
            .route("/revoke", web::post().to(revocation_endpoint))
    })
    .workers(2)
    .bind_rustls_0_23(("127.0.0.1", 0), tls)
    .unwrap();
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    Bank {
        state,
        port,
        ca_pem: ca.pem(),
        tessera_cert_pem: tessera_cert.pem(),
        tessera_key_pkcs8: tessera_key.serialize_der(),
        handle,
    }
}

/// Declares the bank as connection `bank-one` and backs `audiences` with it.
async fn connect(
    app_pool: &sqlx::PgPool,
    kek: &tessera::config::Kek,
    bank: &Bank,
    delivery: Delivery,
    audiences: &[&str],
) {
    let id = UpstreamConnectionId::parse(CONNECTION).unwrap();
    tessera::storage::upstream::create_connection(
        app_pool,
        kek,
        &NewConnection {
            id: &id,
            bank_name: "Bank One",
            token_endpoint: &bank.url("/token"),
            api_base_url: &bank.url("/api"),
            revocation_endpoint: Some(&bank.url("/revoke")),
            introspection_endpoint: None,
            probe_url: None,
            client_id: "tessera-at-bank",
            client_certificate_pem: &bank.tessera_cert_pem,
            client_key_pkcs8: &bank.tessera_key_pkcs8,
            server_ca_pem: &bank.ca_pem,
            single_live_token: false,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(3),
            rotation_threshold_percent: 75,
            delivery,
            requests_per_minute: 600,
        },
    )
    .await
    .unwrap();
    for audience in audiences {
        tessera::storage::upstream::back_audience(
            app_pool,
            &AudienceId::parse(audience).unwrap(),
            &id,
            &ScopeSet::parse("payments:read").unwrap(),
        )
        .await
        .unwrap();
    }
}

async fn bank_app(bank: &Bank, delivery: Delivery, audiences: &[&str]) -> TestApp {
    let app = spawn_app().await;
    connect(&app.pool, &app.settings.keys.kek, bank, delivery, audiences).await;
    app
}

/// Token exchange of the treasury's own token for the bank-backed `audience`.
async fn handout(app: &TestApp, audience: &str) -> (u16, Value) {
    let own = app
        .token(TREASURY_IDENTITY, TREASURY, "https://ledger.test")
        .await;
    exchange(
        app,
        TREASURY_IDENTITY,
        TREASURY,
        &own,
        &[("audience", audience)],
    )
    .await
}

/// The same, with the raw response (for headers).
async fn handout_response(app: &TestApp, audience: &str) -> reqwest::Response {
    let own = app
        .token(TREASURY_IDENTITY, TREASURY, "https://ledger.test")
        .await;
    app.client(Some(TREASURY_IDENTITY))
        .post(app.url("/oauth2/token"))
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("client_id", TREASURY),
            ("subject_token", own.as_str()),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("audience", audience),
        ])
        .send()
        .await
        .unwrap()
}

async fn wait_for(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Audited records of `kind` with `outcome`, as JSON.
async fn records(app: &TestApp, kind: &str, outcome: &str) -> Vec<Value> {
    sqlx::query_scalar::<_, String>(
        "SELECT record FROM audit_events WHERE kind = $1 AND outcome = $2 ORDER BY recorded_at, seq",
    )
    .bind(kind)
    .bind(outcome)
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .iter()
    .map(|record| serde_json::from_str(record).unwrap())
    .collect()
}

/// Everything stored about credentials and the audit trail, as text.
async fn stored_text(pool: &sqlx::PgPool) -> String {
    let credentials: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(c)::text FROM upstream_credentials c")
            .fetch_all(pool)
            .await
            .unwrap();
    let audit: Vec<String> = sqlx::query_scalar("SELECT record FROM audit_events")
        .fetch_all(pool)
        .await
        .unwrap();
    format!("{}\n{}", credentials.join("\n"), audit.join("\n"))
}

#[tokio::test]
async fn handout_serves_the_bank_token_and_rotates_it_before_expiry_without_a_gap() {
    let bank = start_bank(4).await;
    let app = bank_app(&bank, Delivery::Handout, &[BANK_AUDIENCE]).await;

    let (status, body) = handout(&app, BANK_AUDIENCE).await;
    assert_eq!(status, 200, "{body}");
    let first = body["access_token"].as_str().unwrap().to_owned();
    assert!(first.starts_with("bank-token-"), "{body}");
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].as_u64().unwrap() <= 4, "{body}");
    assert_eq!(body["scope"], "payments:read");

    // For longer than two lifetimes every call is served, and the token changes before
    // it expires: rotation happens inside the window, proactively.
    let mut seen = vec![first.clone()];
    let until = tokio::time::Instant::now() + Duration::from_secs(9);
    while tokio::time::Instant::now() < until {
        let (status, body) = handout(&app, BANK_AUDIENCE).await;
        assert_eq!(status, 200, "a caller saw a gap: {body}");
        assert!(body["expires_in"].as_u64().unwrap() <= 4, "{body}");
        let token = body["access_token"].as_str().unwrap().to_owned();
        if seen.last() != Some(&token) {
            seen.push(token);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(seen.len() >= 3, "rotated {} times", seen.len() - 1);
    // Let rotation settle: the next token lives long, and once it is stored nothing is due.
    *bank.state.expires_in.lock().unwrap() = 600;
    wait_for("a long-lived token", Duration::from_secs(10), async || {
        sqlx::query_scalar::<_, bool>(
            "SELECT expires_at - issued_at > interval '100 seconds' FROM upstream_credentials",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    })
    .await;
    let (status, body) = handout(&app, BANK_AUDIENCE).await;
    assert_eq!(status, 200, "{body}");
    let last = body["access_token"].as_str().unwrap().to_owned();
    if seen.last() != Some(&last) {
        seen.push(last);
    }
    // One bank request per rotation, each seen by callers.
    let requests = bank.requests() as usize;
    assert_eq!(requests, seen.len(), "bank requests against tokens served");
    // Each fetch is audited just after its commit.
    wait_for(
        "every rotation audited",
        Duration::from_secs(10),
        async || records(&app, "upstream_token_rotated", "allow").await.len() >= requests,
    )
    .await;
    let rotations = records(&app, "upstream_token_rotated", "allow").await;
    assert_eq!(rotations.len(), requests);
    let generations: Vec<i64> = rotations
        .iter()
        .map(|record| record["upstream_generation"].as_i64().unwrap())
        .collect();
    assert!(
        generations.windows(2).all(|pair| pair[0] < pair[1]),
        "{generations:?}"
    );

    let metrics = app
        .client(None)
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rotated = format!(
        r#"tessera_upstream_rotations_total{{audience="{BANK_AUDIENCE}",outcome="rotated"}} {requests}"#
    );
    assert!(metrics.contains(&rotated), "{metrics}");
    assert!(metrics.contains(&format!(
        r#"tessera_upstream_generation{{audience="{BANK_AUDIENCE}"}} {}"#,
        generations.last().unwrap()
    )));

    let uses = records(&app, "upstream_token_used", "allow").await;
    assert!(!uses.is_empty());
    assert!(metrics.contains(&format!(
        r#"tessera_upstream_uses_total{{audience="{BANK_AUDIENCE}"}}"#
    )));
    assert!(uses.iter().all(|use_| use_["upstream_generation"].is_i64()
        && use_["client_id"] == TREASURY
        && use_["audience"] == BANK_AUDIENCE));
    // The stored rows and the audit trail never hold a bank token in clear.
    let stored = stored_text(&app.pool).await;
    for token in &seen {
        assert!(
            !stored.contains(token.as_str()),
            "a bank token is stored in clear"
        );
        let hex: String = token.bytes().map(|b| format!("{b:02x}")).collect();
        assert!(
            !stored.contains(&hex),
            "a bank token is stored in clear (bytea)"
        );
    }
}

#[tokio::test]
async fn concurrent_callers_on_two_nodes_cause_one_bank_request() {
    let bank = start_bank(600).await;
    bank.set(Mode::Slow(Duration::from_millis(400)));
    let app = spawn_app().await;
    // A second node on the same database, with its own scheduler and lease holder.
    let second_pool = tessera::storage::pool(&app.settings.database).unwrap();
    let second = tessera::startup::Application::build(&app.settings, second_pool)
        .await
        .unwrap();
    let second_port = second.local_addr().port();
    let second_handle = second.handle();
    tokio::spawn(second.run());
    connect(
        &app.pool,
        &app.settings.keys.kek,
        &bank,
        Delivery::Handout,
        &[BANK_AUDIENCE],
    )
    .await;

    let own = app
        .token(TREASURY_IDENTITY, TREASURY, "https://ledger.test")
        .await;
    let calls = (0..60).map(|index| {
        let own = own.clone();
        let url = if index % 2 == 0 {
            app.url("/oauth2/token")
        } else {
            format!("https://localhost:{second_port}/oauth2/token")
        };
        let client = app.client(Some(TREASURY_IDENTITY));
        async move {
            let response = client
                .post(url)
                .form(&[
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:token-exchange",
                    ),
                    ("client_id", TREASURY),
                    ("subject_token", own.as_str()),
                    (
                        "subject_token_type",
                        "urn:ietf:params:oauth:token-type:access_token",
                    ),
                    ("audience", BANK_AUDIENCE),
                ])
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let tokens: std::collections::HashSet<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            body["access_token"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(tokens.len(), 1, "callers got different tokens");
    assert_eq!(
        bank.requests(),
        1,
        "more than one bank request for one token"
    );
    // The scheduled jobs of both nodes keep not asking while the token is fresh.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(bank.requests(), 1);
    second_handle.stop(false).await;
}

#[tokio::test]
async fn a_claim_after_a_lost_lease_gets_the_next_generation_and_a_late_commit_changes_nothing() {
    let db = TestDatabase::create().await;
    let settings = crate::helpers::test_settings(&db.url);
    let pool = tessera::storage::pool(&settings.database).unwrap();
    crate::fixtures::registry().apply(&pool).await.unwrap();
    // No server runs here: nothing but this test claims.
    let bank = start_bank(60).await;
    connect(
        &pool,
        &settings.keys.kek,
        &bank,
        Delivery::Handout,
        &[BANK_AUDIENCE],
    )
    .await;
    let audience = AudienceId::parse(BANK_AUDIENCE).unwrap();
    use tessera::storage::upstream::{claim, commit, credential};
    // Everything below runs as the application role, with only the grants it has.
    let owner = pool;
    let role = format!("app_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN IN ROLE tessera_app"
    )))
    .execute(&owner)
    .await
    .unwrap();
    let options = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&db.url)
        .unwrap()
        .username(&role);
    let pool = sqlx::PgPool::connect_with(options).await.unwrap();
    // The application role spends the budget but cannot point the connection elsewhere.
    let id = UpstreamConnectionId::parse(CONNECTION).unwrap();
    assert!(
        tessera::storage::upstream::spend_budget(&pool, &id)
            .await
            .unwrap()
    );
    let redirected =
        sqlx::query("UPDATE upstream_connections SET token_endpoint = 'https://evil.test/'")
            .execute(&pool)
            .await
            .unwrap_err();
    assert!(
        redirected.to_string().contains("permission denied"),
        "{redirected}"
    );

    let first = claim(&pool, &audience, "node-a", Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    // While node-a's lease lives, nobody else can claim.
    assert_eq!(
        claim(&pool, &audience, "node-b", Duration::from_secs(30))
            .await
            .unwrap(),
        None
    );
    // node-a stalls past its lease (killed after the bank call, before its commit).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = claim(&pool, &audience, "node-b", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.generation, first.generation + 1);

    let sealed = |marker: u8| tessera::crypto::envelope::Envelope {
        sealed_private_key: vec![marker; 40],
        wrapped_data_key: vec![marker; 60],
        kek_id: "test".into(),
    };
    let late = Lease {
        audience: &audience,
        generation: first.generation,
        holder: "node-a",
    };
    assert!(
        !commit(
            &pool,
            &late,
            Duration::from_secs(60),
            0.75,
            &sealed(1),
            None
        )
        .await
        .unwrap()
    );
    // Neither the old generation under the new holder's name, nor the new generation under
    // the old holder's.
    let forged = Lease {
        audience: &audience,
        generation: second.generation,
        holder: "node-a",
    };
    assert!(
        !commit(
            &pool,
            &forged,
            Duration::from_secs(60),
            0.75,
            &sealed(2),
            None
        )
        .await
        .unwrap()
    );
    let row = credential(&pool, &audience).await.unwrap().unwrap();
    assert!(row.token.is_none(), "a late commit stored a token");
    assert_eq!(row.generation, second.generation);

    let current = Lease {
        audience: &audience,
        generation: second.generation,
        holder: "node-b",
    };
    assert!(
        commit(
            &pool,
            &current,
            Duration::from_secs(60),
            0.75,
            &sealed(3),
            None
        )
        .await
        .unwrap()
    );
    let row = credential(&pool, &audience).await.unwrap().unwrap();
    let token = row.token.unwrap();
    assert_eq!(token.generation, second.generation);
    assert_eq!(token.token.sealed_private_key, vec![3; 40]);
    // A fresh token is outside its refresh window: nothing to claim.
    assert_eq!(
        claim(&pool, &audience, "node-a", Duration::from_secs(30))
            .await
            .unwrap(),
        None
    );
    // A second commit by the holder of a finished lease changes nothing either.
    assert!(
        !commit(
            &pool,
            &current,
            Duration::from_secs(60),
            0.75,
            &sealed(4),
            None
        )
        .await
        .unwrap()
    );
    assert_eq!(bank.requests(), 0);
    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE {role}")))
        .execute(&owner)
        .await
        .unwrap();
    owner.close().await;
}

#[tokio::test]
async fn bank_down_serves_the_valid_token_then_503_after_expiry_then_recovers() {
    let bank = start_bank(3).await;
    let app = bank_app(&bank, Delivery::Handout, &[BANK_AUDIENCE]).await;
    let (status, body) = handout(&app, BANK_AUDIENCE).await;
    assert_eq!(status, 200, "{body}");
    let first = body["access_token"].as_str().unwrap().to_owned();
    bank.set(Mode::Down);
    let expires_at: time::OffsetDateTime =
        sqlx::query_scalar("SELECT expires_at FROM upstream_credentials WHERE audience_id = $1")
            .bind(BANK_AUDIENCE)
            .fetch_one(&app.pool)
            .await
            .unwrap();

    // Until it expires the token keeps being served, although its rotation fails.
    loop {
        let now: time::OffsetDateTime = sqlx::query_scalar("SELECT now()")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if now >= expires_at - Duration::from_millis(300) {
            break;
        }
        let (status, body) = handout(&app, BANK_AUDIENCE).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["access_token"], first.as_str());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(bank.requests() >= 2, "the rotation was not attempted");
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Expired: never served; the caller is told when to come back.
    let response = handout_response(&app, BANK_AUDIENCE).await;
    assert_eq!(response.status().as_u16(), 503);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(body.get("access_token").is_none());
    let failures = records(&app, "upstream_token_rotated", "deny").await;
    assert!(
        failures
            .iter()
            .any(|record| record["reason"].as_str().unwrap().contains("HTTP 503")),
        "{failures:?}"
    );
    let refusals = records(&app, "upstream_token_used", "deny").await;
    assert!(!refusals.is_empty(), "the refused use was not audited");

    bank.set(Mode::Normal);
    let mut recovered = None;
    wait_for("recovery", Duration::from_secs(60), async || {
        let (status, body) = handout(&app, BANK_AUDIENCE).await;
        if status == 200 {
            recovered = body["access_token"].as_str().map(str::to_owned);
        }
        status == 200
    })
    .await;
    assert_ne!(recovered.unwrap(), first);
}

#[tokio::test]
async fn a_bank_429_with_retry_after_stops_every_call_until_then() {
    let bank = start_bank(2).await;
    let app = bank_app(&bank, Delivery::Handout, &[BANK_AUDIENCE]).await;
    wait_for("the first token", Duration::from_secs(10), async || {
        bank.requests() >= 1
    })
    .await;
    bank.set(Mode::RateLimited(6));
    let stored = async || {
        sqlx::query_scalar::<_, bool>(
            "SELECT retry_after IS NOT NULL FROM upstream_credentials WHERE audience_id = $1",
        )
        .bind(BANK_AUDIENCE)
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    wait_for("the 429 stored", Duration::from_secs(10), stored).await;
    let limited_at = tokio::time::Instant::now();
    let after_429 = bank.requests();
    let retry_after: bool = sqlx::query_scalar(
        "SELECT retry_after > now() + interval '4 seconds' FROM upstream_credentials WHERE audience_id = $1",
    )
    .bind(BANK_AUDIENCE)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(retry_after, "Retry-After not stored in the row");
    // Callers keep coming (and the token expires) but nobody calls the bank.
    while limited_at.elapsed() < Duration::from_secs(5) {
        let (status, _) = handout(&app, BANK_AUDIENCE).await;
        assert!(status == 200 || status == 503);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        bank.requests(),
        after_429,
        "the bank was called before its Retry-After"
    );
    let response = handout_response(&app, BANK_AUDIENCE).await;
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let failures = records(&app, "upstream_token_rotated", "deny").await;
    assert!(
        failures
            .iter()
            .any(|record| record["reason"].as_str().unwrap().contains("429"))
    );
    bank.set(Mode::Normal);
    wait_for(
        "recovery after Retry-After",
        Duration::from_secs(60),
        async || handout(&app, BANK_AUDIENCE).await.0 == 200,
    )
    .await;
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_audience_or_generation_does_not_open() {
    let bank = start_bank(600).await;
    let app = bank_app(
        &bank,
        Delivery::Handout,
        &[BANK_AUDIENCE, OTHER_BANK_AUDIENCE],
    )
    .await;
    let (status, settlement) = handout(&app, BANK_AUDIENCE).await;
    assert_eq!(status, 200, "{settlement}");
    let (status, payments) = handout(&app, OTHER_BANK_AUDIENCE).await;
    assert_eq!(status, 200, "{payments}");
    assert_ne!(
        settlement["access_token"], payments["access_token"],
        "audiences share a token"
    );

    // The database role copies one audience's sealed token onto the other.
    sqlx::query(
        "UPDATE upstream_credentials AS target
            SET sealed_token = source.sealed_token, token_data_key = source.token_data_key
           FROM upstream_credentials AS source
          WHERE source.audience_id = $1 AND target.audience_id = $2",
    )
    .bind(BANK_AUDIENCE)
    .bind(OTHER_BANK_AUDIENCE)
    .execute(&app.pool)
    .await
    .unwrap();
    let (status, body) = handout(&app, OTHER_BANK_AUDIENCE).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.get("access_token").is_none());

    // Or claims a token was fetched under another generation.
    sqlx::query(
        "UPDATE upstream_credentials SET token_generation = token_generation + 1,
                generation = generation + 1
          WHERE audience_id = $1",
    )
    .bind(BANK_AUDIENCE)
    .execute(&app.pool)
    .await
    .unwrap();
    let (status, body) = handout(&app, BANK_AUDIENCE).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.get("access_token").is_none());
    let refusals = records(&app, "upstream_token_used", "deny").await;
    assert_eq!(refusals.len(), 2);
    assert!(
        refusals
            .iter()
            .all(|record| record["reason"].as_str().unwrap().contains("does not open"))
    );
}

#[tokio::test]
async fn a_caller_without_the_policy_permission_gets_nothing_and_causes_no_bank_call() {
    let bank = start_bank(600).await;
    let app = bank_app(&bank, Delivery::Handout, &[BANK_AUDIENCE]).await;
    // Partner B (region us) is registered for the audience, but policy keeps the bank token
    // of an eu audience in its region.
    sqlx::query(
        "INSERT INTO client_audiences (client_id, audience_id, scopes)
         VALUES ('partner-b-reconciliation', $1, '{settlement:read}')",
    )
    .bind(BANK_AUDIENCE)
    .execute(&app.pool)
    .await
    .unwrap();
    wait_for("the proactive fetch", Duration::from_secs(10), async || {
        bank.requests() == 1
    })
    .await;

    let own = app
        .token(
            "partner-b",
            "partner-b-reconciliation",
            "https://ledger.test",
        )
        .await;
    let (status, body) = exchange(
        &app,
        "partner-b",
        "partner-b-reconciliation",
        &own,
        &[("audience", BANK_AUDIENCE)],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_target");
    assert!(body.get("access_token").is_none());
    let refusals = records(&app, "upstream_token_used", "deny").await;
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0]["client_id"], "partner-b-reconciliation");
    assert!(
        refusals[0]["policies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|policy| policy == "residency-stays-in-region"),
        "{}",
        refusals[0]
    );
    assert!(refusals[0].get("upstream_generation").is_none());

    // A caller presenting someone else's token is refused before policy, too.
    let treasury = app
        .token(TREASURY_IDENTITY, TREASURY, "https://ledger.test")
        .await;
    let (status, body) = exchange(
        &app,
        "partner-b",
        "partner-b-reconciliation",
        &treasury,
        &[("audience", BANK_AUDIENCE)],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request");
    assert_eq!(records(&app, "upstream_token_used", "deny").await.len(), 2);
    assert!(
        records(&app, "upstream_token_used", "allow")
            .await
            .is_empty()
    );
    assert_eq!(bank.requests(), 1, "a refused caller caused a bank call");
}

#[tokio::test]
async fn an_inject_only_connection_never_hands_its_token_out() {
    let bank = start_bank(600).await;
    let app = bank_app(&bank, Delivery::Inject, &[BANK_AUDIENCE]).await;
    wait_for("the proactive fetch", Duration::from_secs(10), async || {
        bank.requests() == 1
    })
    .await;
    let (status, body) = handout(&app, BANK_AUDIENCE).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_target");
    assert!(body.get("access_token").is_none());
    let refusals = records(&app, "upstream_token_used", "deny").await;
    assert_eq!(refusals.len(), 1);
    assert_eq!(bank.requests(), 1);
}

#[tokio::test]
async fn malformed_bank_responses_are_handled_and_audited() {
    let bank = start_bank(600).await;
    bank.set(Mode::Html);
    let db = TestDatabase::create().await;
    let app = spawn_app_on(db, |_| {}).await;
    let cases = [
        (Mode::Html, "malformed"),
        (Mode::MissingExpiresIn, "no `expires_in`"),
        (Mode::NegativeExpiresIn, "malformed"),
        (Mode::Down, "HTTP 503"),
        (Mode::Huge, "longer than 65536 bytes"),
        // Slower than the connection's 3 s request timeout.
        (Mode::Slow(Duration::from_secs(5)), "unreachable"),
    ];
    connect(
        &app.pool,
        &app.settings.keys.kek,
        &bank,
        Delivery::Handout,
        &[BANK_AUDIENCE],
    )
    .await;
    for (mode, expected) in cases {
        let before = records(&app, "upstream_token_rotated", "deny").await.len();
        bank.set(mode);
        // Skip the backoff the previous case left, so each case is tried at once.
        sqlx::query("UPDATE upstream_credentials SET next_try = 'epoch'")
            .execute(&app.pool)
            .await
            .unwrap();
        // A call in flight when the mode changed may still fail the previous way.
        wait_for(expected, Duration::from_secs(20), async || {
            records(&app, "upstream_token_rotated", "deny").await[before..]
                .iter()
                .any(|record| record["reason"].as_str().unwrap().contains(expected))
        })
        .await;
        let (status, body) = handout(&app, BANK_AUDIENCE).await;
        assert_eq!(status, 503, "{mode:?}: {body}");
        assert_eq!(body["error"], "temporarily_unavailable");
    }
    assert!(
        records(&app, "upstream_token_rotated", "allow")
            .await
            .is_empty()
    );
    assert!(
        !stored_text(&app.pool).await.contains("bank-token-"),
        "a refused token was stored"
    );
    let state: String = sqlx::query_scalar("SELECT state FROM upstream_credentials")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(state, "initialized");
    bank.set(Mode::Normal);
    sqlx::query("UPDATE upstream_credentials SET next_try = 'epoch'")
        .execute(&app.pool)
        .await
        .unwrap();
    wait_for("recovery", Duration::from_secs(10), async || {
        handout(&app, BANK_AUDIENCE).await.0 == 200
    })
    .await;
}

#[tokio::test]
async fn a_node_that_loses_its_lease_mid_fetch_discards_and_revokes_its_token() {
    let bank = start_bank(600).await;
    bank.set(Mode::Slow(Duration::from_millis(1500)));
    let app = bank_app(&bank, Delivery::Handout, &[BANK_AUDIENCE]).await;
    wait_for("the fetch to start", Duration::from_secs(10), async || {
        bank.requests() == 1
    })
    .await;
    // While the bank is answering, another node takes the lease over (as after this one's
    // lease ran out): the generation moves on.
    let taken: u64 = sqlx::query(
        "UPDATE upstream_credentials
            SET generation = generation + 1, lease_holder = 'another-node'
          WHERE audience_id = $1 AND state = 'rotating'",
    )
    .bind(BANK_AUDIENCE)
    .execute(&app.pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(taken, 1);
    wait_for("the revocation", Duration::from_secs(10), async || {
        !bank.state.revoked.lock().unwrap().is_empty()
    })
    .await;
    let issued = bank.state.issued.lock().unwrap().clone();
    assert_eq!(
        *bank.state.revoked.lock().unwrap(),
        issued,
        "the discarded token was not the one revoked"
    );
    let row = tessera::storage::upstream::credential(
        &app.pool,
        &AudienceId::parse(BANK_AUDIENCE).unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(row.token.is_none(), "the late commit stored its token");
    // The refusal is audited once the bank has answered the revocation.
    wait_for("the audited refusal", Duration::from_secs(10), async || {
        !records(&app, "upstream_token_rotated", "deny")
            .await
            .is_empty()
    })
    .await;
    let refused = records(&app, "upstream_token_rotated", "deny").await;
    assert_eq!(refused.len(), 1);
    let reason = refused[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("lease lost") && reason.contains("revoked at the bank"),
        "{reason}"
    );
    assert!(
        records(&app, "upstream_token_rotated", "allow")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn the_request_budget_bounds_bank_calls_from_every_node() {
    let bank = start_bank(600).await;
    bank.set(Mode::Down);
    let app = bank_app(&bank, Delivery::Handout, &[BANK_AUDIENCE]).await;
    sqlx::query("UPDATE upstream_connections SET requests_per_minute = 2")
        .execute(&app.pool)
        .await
        .unwrap();
    // Retries are forced far faster than any backoff would allow; the budget still holds.
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        sqlx::query("UPDATE upstream_credentials SET next_try = 'epoch'")
            .execute(&app.pool)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(bank.requests(), 2, "the per-minute budget was exceeded");
    let failures = records(&app, "upstream_token_rotated", "deny").await;
    assert!(
        failures.iter().any(|record| record["reason"]
            .as_str()
            .unwrap()
            .contains("request budget")),
        "{failures:?}"
    );
}
