//! Issue 13 item 5: what an operator reads. A `tessera serve` process logs one JSON line per
//! request with the facts of its handling and never a token, assertion or key; with an OTLP
//! endpoint configured it exports spans that continue the caller's W3C trace.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::helpers::{ServerProcess, certificates, client_with, pki, seeded_database};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The `request completed` line of the request with this id, once the server has written it.
async fn request_line(server: &ServerProcess, request_id: &str) -> Value {
    for _ in 0..100 {
        let found = server
            .log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| {
                line["message"] == "request completed" && line["request_id"] == request_id
            });
        if let Some(line) = found {
            return line;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no log line for request {request_id}");
}

/// Posts a form as `identity`; returns the status, the body and the request id.
async fn post(
    server: &ServerProcess,
    identity: &str,
    path: &str,
    form: &[(&str, &str)],
) -> (u16, Value, String) {
    let response = client_with(Some(identity), TLS13)
        .post(server.url(path))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null);
    (status, body, request_id)
}

fn thumbprint(identity: &str) -> String {
    let der = certificates(&pki().client_cert(identity)).remove(0);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

#[tokio::test]
async fn a_json_log_line_per_request_carries_its_facts() {
    let db = seeded_database().await;
    let server = ServerProcess::start(&db.url);
    let (status, body, granted) = post(
        &server,
        "partner-a",
        "/oauth2/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "partner-a-treasury"),
            ("resource", "https://ledger.test"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body, refused) = post(
        &server,
        "partner-a",
        "/oauth2/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "partner-a-treasury"),
            ("resource", "https://ledger.test"),
            ("scope", "ledger:admin"),
        ],
    )
    .await;
    assert_eq!(status, 400, "{body}");

    let line = request_line(&server, &granted).await;
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["client_id"], "partner-a-treasury", "{line}");
    assert_eq!(line["grant"], "client_credentials", "{line}");
    assert_eq!(line["outcome"], "allow", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["peer_x5t_s256"], thumbprint("partner-a"), "{line}");
    assert!(line["latency_us"].as_u64().is_some(), "{line}");
    assert!(line.get("error").is_none(), "{line}");
    assert!(line.get("reason").is_none(), "{line}");

    let line = request_line(&server, &refused).await;
    assert_eq!(line["client_id"], "partner-a-treasury", "{line}");
    assert_eq!(line["grant"], "client_credentials", "{line}");
    assert_eq!(line["outcome"], "deny", "{line}");
    assert_eq!(line["error"], "invalid_scope", "{line}");
    assert_eq!(
        line["reason"], "invalid_scope: the audience does not allow: ledger:admin",
        "{line}"
    );
    assert_eq!(line["peer_x5t_s256"], thumbprint("partner-a"), "{line}");
    // The audit trail keeps the same reason under the same request id.
    let audited: String = sqlx::query_scalar(
        "SELECT record::jsonb ->> 'reason' FROM audit_events
          WHERE record::jsonb ->> 'request_id' = $1",
    )
    .bind(&refused)
    .fetch_one(&sqlx::PgPool::connect(&db.url).await.unwrap())
    .await
    .unwrap();
    assert_eq!(line["reason"], audited.as_str());
    stop(server).await;
}

/// Stops the server and waits for it: a server left running would keep the test's output open.
async fn stop(mut server: ServerProcess) {
    server.signal("-TERM");
    tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
}

#[tokio::test]
async fn logs_never_carry_the_tokens_or_assertions_a_client_used() {
    let db = seeded_database().await;
    let server = ServerProcess::start(&db.url);
    let mut secrets = Vec::new();
    let (_, body, _) = post(
        &server,
        "partner-a",
        "/oauth2/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "partner-a-treasury"),
            ("resource", "https://payments.test"),
        ],
    )
    .await;
    let broad = body["access_token"].as_str().unwrap().to_owned();
    let (status, body, _) = post(
        &server,
        "partner-a",
        "/oauth2/token",
        &[
            ("grant_type", EXCHANGE),
            ("client_id", "partner-a-treasury"),
            ("subject_token", &broad),
            ("subject_token_type", ACCESS_TOKEN),
            ("audience", "https://settlement.test"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let narrow = body["access_token"].as_str().unwrap().to_owned();
    // A refused exchange whose subject token is garbage that looks like a token.
    let forged = format!("{}x", &broad[..broad.len() - 1]);
    let (status, _, _) = post(
        &server,
        "partner-a",
        "/oauth2/token",
        &[
            ("grant_type", EXCHANGE),
            ("client_id", "partner-a-treasury"),
            ("subject_token", &forged),
            ("subject_token_type", ACCESS_TOKEN),
            ("audience", "https://settlement.test"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) = post(
        &server,
        "resource-server",
        "/oauth2/introspect",
        &[("client_id", "ledger-rs"), ("token", &narrow)],
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = post(
        &server,
        "partner-a",
        "/oauth2/revoke",
        &[("client_id", "partner-a-treasury"), ("token", &broad)],
    )
    .await;
    assert_eq!(status, 200);
    // A private_key_jwt client's assertion, and one replayed (refused).
    let assertion = crate::fixtures::assertion(&crate::fixtures::assertion_claims());
    for expected in [200, 401] {
        let response = client_with(None, TLS13)
            .post(server.url("/oauth2/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", crate::fixtures::JWT_CLIENT),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", &assertion),
                ("resource", "https://reports.test"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), expected);
        let body: Value = response.json().await.unwrap();
        if let Some(token) = body["access_token"].as_str() {
            secrets.push(token.to_owned());
        }
    }
    secrets.extend([broad, narrow, forged, assertion]);

    // Every request's line is written before its response leaves; wait for the last one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = server.log.lock().unwrap().join("\n");
    let completed = log.matches("request completed").count();
    assert!(completed >= 7, "only {completed} request lines:\n{log}");
    for secret in &secrets {
        // Any of a JWT's parts would do: the signature alone is a bearer secret's proof.
        for part in secret.split('.') {
            assert!(
                !log.contains(part),
                "the log carries part of a secret:\n{log}"
            );
        }
    }
    stop(server).await;
}

/// A real OTLP/HTTP receiver: accepts `POST /v1/traces` and keeps each body and content type.
async fn start_receiver() -> (u16, Arc<Mutex<Vec<(String, Vec<u8>)>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let server = HttpServer::new(move || {
        let sink = sink.clone();
        App::new().route(
            "/v1/traces",
            web::post().to(move |req: HttpRequest, body: web::Bytes| {
                let sink = sink.clone();
                async move {
                    let content_type = req
                        .headers()
                        .get("content-type")
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    sink.lock().unwrap().push((content_type, body.to_vec()));
                    HttpResponse::Ok()
                        .content_type("application/x-protobuf")
                        .finish()
                }
            }),
        )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let port = server.addrs()[0].port();
    tokio::spawn(server.run());
    (port, received)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tokio::test]
async fn spans_reach_the_otlp_collector_in_the_callers_trace() {
    let (port, received) = start_receiver().await;
    let db = seeded_database().await;
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut server = ServerProcess::start_with(
        &db.url,
        &[(
            "TESSERA_LOG__OTLP_ENDPOINT",
            std::path::Path::new(&endpoint),
        )],
    );
    let mut trace_id = [0u8; 16];
    aws_lc_rs::rand::fill(&mut trace_id).unwrap();
    let traceparent = format!("00-{}-{}-01", hex(&trace_id), "00f067aa0ba902b7");
    let response = client_with(Some("partner-a"), TLS13)
        .post(server.url("/oauth2/token"))
        .header("traceparent", &traceparent)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "partner-a-treasury"),
            ("resource", "https://ledger.test"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Stopping flushes the spans still buffered.
    server.signal("-TERM");
    let status = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
    assert!(status.success(), "{status}");

    let received = received.lock().unwrap();
    assert!(!received.is_empty(), "no spans arrived");
    assert!(
        received
            .iter()
            .all(|(content_type, _)| content_type == "application/x-protobuf"),
        "not OTLP/HTTP protobuf: {:?}",
        received.iter().map(|(kind, _)| kind).collect::<Vec<_>>()
    );
    // OTLP protobuf carries trace ids as their 16 raw bytes.
    assert!(
        received
            .iter()
            .any(|(_, body)| body.windows(16).any(|window| window == trace_id)),
        "no exported span carries the caller's trace id"
    );
    assert!(
        received
            .iter()
            .any(|(_, body)| body.windows(7).any(|window| window == b"request")),
        "the request span was not exported"
    );
}

/// A partner's key-set endpoint over HTTPS that records the `traceparent` of each fetch.
async fn start_jwks(jwks: Value) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    use rustls::pki_types::pem::PemObject;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let tls = rustls::ServerConfig::builder_with_provider(tessera::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            certificates(&pki().server_cert()),
            rustls::pki_types::PrivateKeyDer::from_pem_file(pki().server_key()).unwrap(),
        )
        .unwrap();
    let server = HttpServer::new(move || {
        let (sink, jwks) = (sink.clone(), jwks.clone());
        App::new().route(
            "/jwks.json",
            web::get().to(move |req: HttpRequest| {
                let (sink, jwks) = (sink.clone(), jwks.clone());
                async move {
                    let traceparent = req
                        .headers()
                        .get("traceparent")
                        .and_then(|value| value.to_str().ok())
                        .map(str::to_owned);
                    sink.lock().unwrap().push(traceparent);
                    HttpResponse::Ok().json(jwks)
                }
            }),
        )
    })
    .workers(1)
    .bind_rustls_0_23("127.0.0.1:0", tls)
    .unwrap();
    let port = server.addrs()[0].port();
    tokio::spawn(server.run());
    (format!("https://localhost:{port}/jwks.json"), seen)
}

#[tokio::test]
async fn a_partner_key_set_fetch_carries_the_callers_trace() {
    let (otlp_port, _) = start_receiver().await;
    let key = crate::fixtures::es256_key("d-1");
    let (jwks_uri, seen) = start_jwks(serde_json::json!({ "keys": [key.jwk] })).await;
    let db = seeded_database().await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let settings = crate::helpers::process_settings(&db.url);
    let signer = tessera::audit::AuditSigner::load(&pool, &settings.keys)
        .await
        .unwrap();
    let (audit, writer) = tessera::audit::AuditLog::start(
        pool.clone(),
        "test-admin".into(),
        8,
        signer,
        tessera::audit::CheckpointPolicy {
            every_records: 100,
            every: Duration::from_secs(60),
        },
        None,
    );
    tessera::storage::trust::publish(
        &pool,
        &audit,
        "partner-d",
        &tessera::domain::trust::NewProfile {
            issuers: vec![crate::partner::PARTNER_ISSUER.into()],
            jwks_uri: Some(jwks_uri),
            algorithms: vec!["ES256".into()],
            max_assertion_lifetime_s: 300,
            required_claims: serde_json::json!({}),
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
    writer.finish().await;
    pool.close().await;

    let endpoint = format!("http://127.0.0.1:{otlp_port}");
    let server = ServerProcess::start_with(
        &db.url,
        &[
            (
                "TESSERA_LOG__OTLP_ENDPOINT",
                std::path::Path::new(&endpoint),
            ),
            ("TESSERA_TRUST__JWKS_CA_FILE", &pki().ca_cert()),
        ],
    );
    let mut trace_id = [0u8; 16];
    aws_lc_rs::rand::fill(&mut trace_id).unwrap();
    let caller_span = "00f067aa0ba902b7";
    let assertion = crate::partner::sign(&key, "d-1", &crate::partner::claims());
    let response = client_with(Some("partner-a"), TLS13)
        .post(server.url("/oauth2/token"))
        .header(
            "traceparent",
            format!("00-{}-{caller_span}-01", hex(&trace_id)),
        )
        .form(&[
            ("grant_type", EXCHANGE),
            ("client_id", "partner-a-treasury"),
            ("subject_token", assertion.as_str()),
            ("subject_token_type", crate::partner::JWT_TYPE),
            ("audience", "https://ledger.test"),
        ])
        .send()
        .await
        .unwrap();
    // No consent from partner D here: the exchange is refused, after the keys were fetched.
    assert_eq!(response.status(), 400);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let traceparent = seen[0].clone().expect("the fetch carried no traceparent");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(
        parts[1],
        hex(&trace_id),
        "not the caller's trace: {traceparent}"
    );
    assert_ne!(
        parts[2], caller_span,
        "the fetch is a span of its own: {traceparent}"
    );
    stop(server).await;
}

#[test]
fn a_start_up_error_is_printed_once_without_repeated_causes_or_colour() {
    let pki = pki();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TESSERA_SERVER__BIND", "127.0.0.1:0")
        .env("TESSERA_SERVER__CERT", pki.server_cert())
        .env("TESSERA_SERVER__KEY", pki.server_key())
        .env("TESSERA_SERVER__CLIENT_CA", pki.ca_cert())
        .env("TESSERA_TOKENS__ISSUER", crate::helpers::ISSUER)
        .env("TESSERA_KEYS__KEK_ID", "test")
        .env("TESSERA_KEYS__KEK", crate::helpers::PROCESS_KEK)
        .env("TESSERA_DATABASE__CONNECT_TIMEOUT_MS", "200")
        // Nothing listens there.
        .env(
            "DATABASE_URL",
            format!(
                "postgres://postgres@127.0.0.1:{}/none",
                crate::helpers::free_port()
            ),
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes off a terminal: {stderr:?}"
    );
    let reported: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("tessera:"))
        .collect();
    assert_eq!(reported.len(), 1, "{stderr}");
    let parts: Vec<&str> = reported[0].split(": ").collect();
    for (index, part) in parts.iter().enumerate() {
        assert!(
            !parts[index + 1..].contains(part),
            "`{part}` repeated: {}",
            reported[0]
        );
    }
}

#[test]
fn an_otlp_endpoint_that_is_no_http_url_is_refused_naming_the_setting() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TESSERA_LOG__OTLP_ENDPOINT", "collector:4318")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(
            "setting `log.otlp_endpoint`: expected the http(s) URL of an OTLP collector, such \
             as http://127.0.0.1:4318"
        ),
        "{stderr}"
    );
}
