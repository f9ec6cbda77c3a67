use rustls::version::{TLS12, TLS13};
use serde_json::Value;
use tessera::dev::pki::UNTRUSTED_CLIENT;

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

/// Issue 10 item 9: a certificate revoked by a CRL named in `server.client_crls` fails the next
/// handshake, and its kept-alive connection is refused on its next request, without a restart.
#[tokio::test]
async fn a_revoked_client_certificate_is_refused_on_new_and_kept_alive_connections() {
    use crate::boundaries::{TestCa, client, publish_ca, register, until_trusted};
    let ca = TestCa::new("Partner E CA");
    let crl = crate::helpers::scratch_dir().join(format!("{}.crl.pem", uuid::Uuid::new_v4()));
    std::fs::write(&crl, ca.crl(1, &[])).unwrap();
    let crl_setting = crl.clone();
    let app = crate::helpers::spawn_app_on(crate::helpers::TestDatabase::create().await, |s| {
        s.registry.cache_ttl = std::time::Duration::from_millis(200);
        s.server.client_crls = vec![crl_setting];
    })
    .await;
    let mut own = client("partner-e-client", "partner-e");
    own.tls_subject_dn = Some("CN=partner-e-client,O=Tessera Dev".into());
    own.tls_anchor = Some("partner".into());
    own.audiences = crate::boundaries::scopes_at(&[("https://ledger.test", "ledger:read")]);
    register(
        &app,
        tessera::dev::seed::Seed {
            clients: vec![own],
            ..tessera::dev::seed::Seed::default()
        },
    )
    .await;
    publish_ca(&app, "partner-e", &ca).await;
    let identity = ca.client_with_serial("partner-e-client", vec![], Some(0x4242));
    until_trusted(&app, &identity).await;
    let kept_alive = identity.http();
    let token = |http: reqwest::Client| {
        let url = app.url("/oauth2/token");
        async move {
            http.post(url)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", "partner-e-client"),
                    ("resource", "https://ledger.test"),
                ])
                .send()
                .await
                .map(|response| response.status().as_u16())
        }
    };
    assert_eq!(token(kept_alive.clone()).await.unwrap(), 200);

    std::fs::write(&crl, ca.crl(2, &[0x4242])).unwrap();
    let mut refused = false;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if token(kept_alive.clone()).await.unwrap() == 401 {
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "the kept-alive connection of a revoked certificate still authenticates"
    );
    assert_eq!(
        app.denial_reasons().await.last().map(String::as_str),
        Some("no client certificate")
    );
    let issued = app.audited("token_issued").await;
    assert!(
        token(identity.http()).await.is_err(),
        "a new handshake with a revoked certificate succeeded"
    );
    assert_eq!(app.audited("token_issued").await, issued);
}
