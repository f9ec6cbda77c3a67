use rustls::version::{TLS12, TLS13};
use serde_json::Value;
use tessera::pki::UNTRUSTED_CLIENT;

use crate::helpers::{TestDatabase, certificates, client_with, pki, spawn_app, spawn_app_on};

async fn requests_counted(app: &crate::helpers::TestApp, route: &str) -> u64 {
    let metrics = app
        .client(None)
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .filter(|line| {
            line.starts_with("tessera_http_requests_total")
                && line.contains(&format!("route=\"{route}\""))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn a_client_without_certificate_reaches_healthz() {
    let app = spawn_app().await;
    let response = app
        .client(None)
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn the_handler_sees_the_partner_certificate_thumbprint_and_dn() {
    let app = spawn_app().await;
    let response = app
        .client(Some("partner-a"))
        .get(app.url("/mtls/identity"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();

    let leaf = certificates(&pki().client_cert("partner-a")).remove(0);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf.as_ref());
    use base64::Engine;
    let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
    assert_eq!(body["x5t#S256"], expected.as_str());
    assert_eq!(body["subject"], "CN=partner-a,O=Tessera Dev");
    assert_eq!(
        body["subject_alt_names"],
        serde_json::json!([
            { "type": "dns", "value": "partner-a.tessera.test" },
            { "type": "uri", "value": "spiffe://tessera.test/partner-a" },
            { "type": "email", "value": "partner-a@tessera.test" },
        ])
    );
    assert_eq!(body["trust_anchors"], serde_json::json!(["server"]));
}

#[tokio::test]
async fn without_a_certificate_the_identity_endpoint_is_a_401_problem() {
    let app = spawn_app().await;
    let response = app
        .client(None)
        .get(app.url("/mtls/identity"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}

#[tokio::test]
async fn a_certificate_from_an_untrusted_ca_fails_the_handshake() {
    let app = spawn_app().await;
    let result = app
        .client(Some(UNTRUSTED_CLIENT))
        .get(app.url("/healthz"))
        .send()
        .await;
    // TLS 1.3: the client believes the handshake done; the server's alert closes the connection.
    assert!(
        result.is_err(),
        "expected a refused connection, got {result:?}"
    );
    assert_eq!(requests_counted(&app, "/healthz").await, 0);
}

#[tokio::test]
async fn a_tls12_only_client_is_refused_by_default() {
    let app = spawn_app().await;
    let result = client_with(Some("partner-a"), &[&TLS12])
        .get(app.url("/healthz"))
        .send()
        .await;
    assert!(
        result.is_err(),
        "expected a refused handshake, got {result:?}"
    );
    assert_eq!(requests_counted(&app, "/healthz").await, 0);
}

#[tokio::test]
async fn tls12_is_accepted_when_opted_into() {
    let db = TestDatabase::create().await;
    let app = spawn_app_on(db, |settings| {
        settings.server.tls_min_version = tessera::config::TlsVersion::Tls12;
    })
    .await;
    let response = client_with(Some("partner-a"), &[&TLS12])
        .get(app.url("/mtls/identity"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn client_trust_is_swapped_at_run_time_and_checked_on_kept_alive_connections() {
    let app = spawn_app().await;
    let partner = client_with(Some("partner-a"), &[&TLS13]);
    let before = partner.get(app.url("/mtls/identity")).send().await.unwrap();
    assert_eq!(before.status(), 200);

    let untrusted_ca = certificates(&pki().untrusted_ca_cert());
    app.client_trust.replace_roots(&untrusted_ca).unwrap();

    // The kept-alive connection was verified under the old roots; the request re-checks.
    let kept_alive = partner.get(app.url("/mtls/identity")).send().await.unwrap();
    assert_eq!(kept_alive.status(), 401);
    // A new handshake with the formerly trusted certificate fails outright...
    let fresh = client_with(Some("partner-a"), &[&TLS13])
        .get(app.url("/healthz"))
        .send()
        .await;
    assert!(
        fresh.is_err(),
        "expected a refused handshake, got {fresh:?}"
    );
    // ...and the newly trusted CA's client is accepted, all without a restart.
    let newly_trusted = client_with(Some(UNTRUSTED_CLIENT), &[&TLS13])
        .get(app.url("/mtls/identity"))
        .send()
        .await
        .unwrap();
    assert_eq!(newly_trusted.status(), 200);
}
