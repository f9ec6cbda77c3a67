//! Trust boundaries between partners: a certificate identifies a client only through its own
//! partner's trust anchor, and authority granted by one partner (its consent, its trust
//! profile, its residency) bounds every later exchange hop. Each test is an attack that
//! succeeded before the fix, with the exact error, proof that nothing was issued and the
//! audited reason.

use std::sync::atomic::Ordering;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tessera::dev::seed::{AudienceSeed, ClientSeed, Seed};

use crate::helpers::{TestApp, TestDatabase, client_tls_presenting, http_client, spawn_app_on};

use crate::partner::{
    EXCHANGE, JWT_TYPE, PARTNER_ISSUER, Setup, claims as partner_claims, exchange as exchange_jwt,
    issued, partner_key, setup, sign,
};

const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A certificate authority made by the test, standing for a partner's own CA.
pub(crate) struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub(crate) fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    pub(crate) fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A client certificate `CN=<cn>,O=Tessera Dev` with the given SANs.
    pub(crate) fn client(&self, cn: &str, sans: Vec<SanType>) -> Identity {
        self.client_with_serial(cn, sans, None)
    }

    pub(crate) fn client_with_serial(
        &self,
        cn: &str,
        sans: Vec<SanType>,
        serial: Option<u64>,
    ) -> Identity {
        let key = KeyPair::generate().unwrap();
        let mut params = client_params(cn, sans);
        params.serial_number = serial.map(rcgen::SerialNumber::from);
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        Identity {
            chain: vec![certificate.der().clone()],
            key: key.serialize_der(),
        }
    }
}

impl TestCa {
    /// A CRL of this CA revoking these serial numbers, as PEM.
    pub(crate) fn crl(&self, number: u64, revoked: &[u64]) -> String {
        let now = time::OffsetDateTime::now_utc();
        rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(1),
            next_update: now + time::Duration::days(1),
            crl_number: rcgen::SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*serial),
                    revocation_time: now - time::Duration::minutes(1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }
}

fn client_params(cn: &str, sans: Vec<SanType>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Tessera Dev");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params
}

/// A certificate chain and its key, presented by an HTTP client.
pub(crate) struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

impl Identity {
    fn self_signed(cn: &str, sans: Vec<SanType>) -> Self {
        let key = KeyPair::generate().unwrap();
        let certificate = client_params(cn, sans).self_signed(&key).unwrap();
        Self {
            chain: vec![certificate.der().clone()],
            key: key.serialize_der(),
        }
    }

    pub(crate) fn http(&self) -> reqwest::Client {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
        http_client(client_tls_presenting(
            Some((self.chain.clone(), key)),
            &[&rustls::version::TLS13],
        ))
    }
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().unwrap())
}

fn uri(value: &str) -> SanType {
    SanType::URI(value.try_into().unwrap())
}

async fn post(
    app: &TestApp,
    http: &reqwest::Client,
    path: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let response = http.post(app.url(path)).form(form).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn fast_app() -> TestApp {
    spawn_app_on(TestDatabase::create().await, |settings| {
        settings.registry.cache_ttl = std::time::Duration::from_millis(200);
        settings.jwks_ca_file = Some(crate::helpers::pki().ca_cert());
    })
    .await
}

pub(crate) async fn register(app: &TestApp, seed: Seed) {
    seed.apply(&app.pool).await.unwrap();
}

/// Audience id → the scopes a client may have there.
pub(crate) fn scopes_at(
    grants: &[(&str, &str)],
) -> std::collections::BTreeMap<String, Vec<String>> {
    grants
        .iter()
        .map(|(audience, scope)| ((*audience).to_owned(), vec![(*scope).to_owned()]))
        .collect()
}

/// A `ledger:read` audience in `region` that no other region's subjects may reach.
pub(crate) fn ledger_audience(id: &str, region: &str, bound: bool) -> AudienceSeed {
    AudienceSeed {
        id: id.into(),
        name: format!("Ledger ({region})"),
        scopes: vec!["ledger:read".into()],
        max_lifetime_s: 300,
        require_certificate_bound: bound,
        region: region.into(),
        kind: "standard".into(),
        cross_region_allowed: false,
    }
}

pub(crate) fn client(id: &str, partner: &str) -> ClientSeed {
    ClientSeed {
        id: id.into(),
        partner: partner.into(),
        name: id.into(),
        auth_method: "tls_client_auth".into(),
        grant_types: vec!["client_credentials".into(), EXCHANGE.into()],
        max_lifetime_s: 300,
        status: "active".into(),
        ..ClientSeed::default()
    }
}

pub(crate) async fn publish_ca(app: &TestApp, partner: &str, ca: &TestCa) {
    tessera::storage::trust::publish(
        &app.pool,
        &crate::helpers::admin_audit(app).await,
        partner,
        &tessera::domain::trust::NewProfile {
            issuers: vec![format!("https://idp.{partner}.test")],
            jwks: Some(json!({ "keys": [] })),
            algorithms: vec!["ES256".into()],
            max_assertion_lifetime_s: 300,
            required_claims: json!({}),
            single_use: true,
            client_ca_pem: Some(ca.pem()),
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
}

/// Waits until the server's trust refresh accepts `identity` at the TLS layer.
pub(crate) async fn until_trusted(app: &TestApp, identity: &Identity) {
    for _ in 0..50 {
        let accepted = identity
            .http()
            .get(app.url("/mtls/identity"))
            .send()
            .await
            .is_ok_and(|response| response.status() == 200);
        if accepted {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the certificate was not trusted within 5 s");
}

async fn last_denial(app: &TestApp) -> String {
    app.denial_reasons().await.pop().unwrap_or_default()
}

/// Issue 9 item 1: partner E's CA issues certificates carrying partner A's DN and the resource servers'
/// identities; they authenticate nobody but partner E's own clients.
#[tokio::test]
async fn a_partners_ca_authenticates_only_that_partners_clients() {
    let app = fast_app().await;
    let ca = TestCa::new("Partner E CA");
    let mut own = client("partner-e-client", "partner-e");
    own.tls_subject_dn = Some("CN=partner-e-client,O=Tessera Dev".into());
    own.tls_anchor = Some("partner".into());
    own.audiences = scopes_at(&[("https://ledger.test", "ledger:read")]);
    register(
        &app,
        Seed {
            clients: vec![own],
            ..Seed::default()
        },
    )
    .await;
    publish_ca(&app, "partner-e", &ca).await;
    let forged_a = ca.client(
        "partner-a",
        vec![
            dns("partner-a.tessera.test"),
            uri("spiffe://tessera.test/resource-server"),
        ],
    );
    let forged_resource_server =
        ca.client("resource-server", vec![dns("resource-server.tessera.test")]);
    until_trusted(&app, &forged_a).await;

    for (identity, client_id, path) in [
        (&forged_a, "partner-a-treasury", "/oauth2/token"),
        (&forged_a, "partner-a-ops", "/oauth2/token"),
        (&forged_a, "ops-admin", "/oauth2/introspect"),
        (&forged_resource_server, "ledger-rs", "/oauth2/introspect"),
        (&forged_resource_server, "settlement-rs", "/oauth2/revoke"),
    ] {
        let (status, body) = post(
            &app,
            &identity.http(),
            path,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("resource", "https://ledger.test"),
                ("token", "x"),
            ],
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{client_id}"
        );
        assert_eq!(
            last_denial(&app).await,
            "certificate is not verified by the client's trust anchor",
            "{client_id}"
        );
    }
    assert_eq!(app.audited("token_issued").await, 0);
    assert_eq!(app.audited("token_introspected").await, 0);

    // The same CA does authenticate partner E's own client, registered under it.
    let own_identity = ca.client("partner-e-client", vec![]);
    let (status, body) = post(
        &app,
        &own_identity.http(),
        "/oauth2/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "partner-e-client"),
            ("resource", "https://ledger.test"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Registration refuses a second client with the same certificate identity under the same
/// anchor; the database enforces it, not a read before the insert.
#[tokio::test]
async fn one_certificate_identity_per_anchor() {
    let app = fast_app().await;
    let mut twin = client("partner-b-twin", "partner-b");
    twin.tls_subject_dn = Some("cn = partner-a , o=Tessera Dev".into());
    let refused = Seed {
        clients: vec![twin.clone()],
        ..Seed::default()
    }
    .apply(&app.pool)
    .await
    .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("clients_one_identity_per_anchor"),
        "{refused}"
    );
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM clients WHERE id = 'partner-b-twin'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored, 0);
    // Under the partner's own anchor the same name is another identity.
    twin.tls_anchor = Some("partner".into());
    register(
        &app,
        Seed {
            clients: vec![twin],
            ..Seed::default()
        },
    )
    .await;
}

/// Issue 9 item 2: a certificate pinned for partner B's self-signed client, carrying partner
/// A's DN and partner B's SAN, authenticates that one client and no `tls_client_auth` client.
#[tokio::test]
async fn a_pinned_certificate_authenticates_only_its_own_client() {
    let app = fast_app().await;
    let pinned = Identity::self_signed(
        "partner-a",
        vec![
            dns("partner-b.tessera.test"),
            uri("spiffe://tessera.test/partner-a"),
        ],
    );
    use base64::Engine;
    let mut own = client("partner-b-pinned", "partner-b");
    own.auth_method = "self_signed_tls_client_auth".into();
    own.jwks = Some(json!({ "keys": [{
        "kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(pinned.chain[0].as_ref())],
    }] }));
    own.audiences = scopes_at(&[("https://ledger.test", "ledger:read")]);
    register(
        &app,
        Seed {
            clients: vec![own],
            ..Seed::default()
        },
    )
    .await;
    until_trusted(&app, &pinned).await;
    for client_id in ["partner-a-treasury", "partner-b-reconciliation"] {
        let (status, body) = post(
            &app,
            &pinned.http(),
            "/oauth2/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("resource", "https://ledger.test"),
            ],
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{client_id}"
        );
    }
    assert_eq!(
        app.denial_reasons().await,
        [
            "certificate is not verified by the client's trust anchor",
            "certificate is not verified by the client's trust anchor",
        ]
    );
    assert_eq!(app.audited("token_issued").await, 0);
    let (status, body) = post(
        &app,
        &pinned.http(),
        "/oauth2/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "partner-b-pinned"),
            ("resource", "https://ledger.test"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Partner A's treasury exchanges a partner JWT for the ledger, acting with `actor`.
async fn exchange_jwt_with_actor(app: &TestApp, subject: &str, actor: &str) -> (u16, Value) {
    app.post_form(
        Some("partner-a"),
        "/oauth2/token",
        &[
            ("grant_type", EXCHANGE),
            ("client_id", "partner-a-treasury"),
            ("subject_token", subject),
            ("subject_token_type", JWT_TYPE),
            ("actor_token", actor),
            ("actor_token_type", ACCESS_TOKEN),
            ("audience", "https://ledger.test"),
        ],
    )
    .await
}

fn token_of(body: &Value) -> String {
    body["access_token"].as_str().unwrap().to_owned()
}

fn decoded(token: &str) -> Value {
    jsonwebtoken::dangerous::insecure_decode::<Value>(token)
        .unwrap()
        .claims
}

async fn consent(
    app: &TestApp,
    grantor: &str,
    grantee: &str,
    client: Option<&str>,
    audiences: &[&str],
    scopes: &[&str],
) -> uuid::Uuid {
    let now = time::OffsetDateTime::now_utc();
    tessera::storage::consents::create(
        &app.pool,
        &crate::helpers::admin_audit(app).await,
        &tessera::domain::consents::NewConsent {
            grantor: grantor.into(),
            grantee_partner: grantee.into(),
            grantee_client: client.map(str::to_owned),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            audiences: audiences.iter().map(|s| (*s).to_owned()).collect(),
            effective_from: now - time::Duration::hours(1),
            effective_until: now + time::Duration::hours(1),
            legal_basis: "contract".into(),
            constraints: json!({}),
        },
        "compliance-officer",
    )
    .await
    .unwrap()
    .id
}

/// Publishes a new active version of partner D's profile with these audiences.
async fn publish_profile(
    app: &TestApp,
    idp: &crate::partner::PartnerIdp,
    audiences: &[&str],
    required_typ: Option<&str>,
) {
    tessera::storage::trust::publish(
        &app.pool,
        &crate::helpers::admin_audit(app).await,
        "partner-d",
        &tessera::domain::trust::NewProfile {
            issuers: vec![PARTNER_ISSUER.into()],
            jwks_uri: Some(idp.url.clone()),
            algorithms: vec!["ES256".into()],
            max_assertion_lifetime_s: 300,
            required_claims: json!({ "tenant": "d" }),
            single_use: true,
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            scopes: vec!["ledger:read".into()],
            region: "eu".into(),
            active: true,
            required_typ: required_typ.map(str::to_owned),
            ..tessera::domain::trust::NewProfile::default()
        },
        "admin",
    )
    .await
    .unwrap();
}

async fn exchanged_allowed(app: &TestApp) -> i64 {
    issued(app).await
}

/// Issue 9 item 3: a partner-D subject exchanged by partner A under a consent for the ledger
/// only cannot reach the payments audience by exchanging the result again.
#[tokio::test]
async fn a_second_hop_stays_within_the_original_consent() {
    let Setup { app, key, idp } = setup().await;
    // The profile reaches both audiences; the consent only the ledger.
    publish_profile(
        &app,
        &idp,
        &["https://ledger.test", "https://payments.test"],
        None,
    )
    .await;
    let (status, body) = exchange_jwt(&app, &sign(&key, "d-1", &partner_claims())).await;
    assert_eq!(status, 200, "{body}");
    let first = token_of(&body);
    let claims = decoded(&first);
    assert_eq!(claims["owner_partner"], "partner-d");
    assert_eq!(claims["owner_region"], "eu");
    assert!(claims["consent_id"].is_string());

    let refused = crate::exchange::exchange(
        &app,
        "partner-a",
        "partner-a-treasury",
        &first,
        &[
            ("audience", "https://payments.test"),
            ("scope", "ledger:read"),
        ],
    )
    .await;
    assert_eq!(
        (refused.0, refused.1["error"].as_str()),
        (400, Some("invalid_request")),
        "{}",
        refused.1
    );
    assert_eq!(
        last_denial(&app).await,
        "the consent does not cover this audience"
    );
    assert_eq!(
        exchanged_allowed(&app).await,
        1,
        "only the first hop issued"
    );
}

/// Issue 9 item 3: the trust profile's audiences bound later hops even where a consent is
/// broader.
#[tokio::test]
async fn a_second_hop_stays_within_the_owners_trust_profile() {
    let Setup { app, key, .. } = setup().await;
    consent(
        &app,
        "partner-d",
        "partner-a",
        Some("partner-a-treasury"),
        &["https://ledger.test", "https://payments.test"],
        &["ledger:read"],
    )
    .await;
    let (_, body) = exchange_jwt(&app, &sign(&key, "d-1", &partner_claims())).await;
    let first = token_of(&body);
    let refused = crate::exchange::exchange(
        &app,
        "partner-a",
        "partner-a-treasury",
        &first,
        &[("audience", "https://payments.test")],
    )
    .await;
    assert_eq!(
        (refused.0, refused.1["error"].as_str()),
        (400, Some("invalid_target")),
        "{}",
        refused.1
    );
    assert_eq!(
        last_denial(&app).await,
        "audience not in the data owner's trust profile (issued-under or active version)"
    );
    assert_eq!(exchanged_allowed(&app).await, 1);
}

/// Issue 9 item 3: residency is decided against the data owner's region at every hop, not
/// against whoever holds the token.
#[tokio::test]
async fn a_second_hop_keeps_the_owners_residency() {
    let Setup { app, key, idp } = setup().await;
    let mut us_client = client("partner-b-us", "partner-b");
    us_client.tls_san_uri = Some("spiffe://tessera.test/partner-b".into());
    us_client.audiences = scopes_at(&[
        ("https://ledger.test", "ledger:read"),
        ("https://us-ledger.test", "ledger:read"),
    ]);
    register(
        &app,
        Seed {
            audiences: vec![ledger_audience("https://us-ledger.test", "us", true)],
            clients: vec![us_client],
            ..Seed::default()
        },
    )
    .await;
    // Partner D's profile and consent both name the US ledger: only residency forbids it.
    publish_profile(
        &app,
        &idp,
        &["https://ledger.test", "https://us-ledger.test"],
        None,
    )
    .await;
    consent(
        &app,
        "partner-d",
        "partner-b",
        Some("partner-b-us"),
        &["https://ledger.test", "https://us-ledger.test"],
        &["ledger:read"],
    )
    .await;
    let (status, body) = app
        .post_form(
            Some("partner-b"),
            "/oauth2/token",
            &[
                ("grant_type", EXCHANGE),
                ("client_id", "partner-b-us"),
                ("subject_token", &sign(&key, "d-1", &partner_claims())),
                ("subject_token_type", JWT_TYPE),
                ("audience", "https://ledger.test"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let refused = crate::exchange::exchange(
        &app,
        "partner-b",
        "partner-b-us",
        &token_of(&body),
        &[("audience", "https://us-ledger.test")],
    )
    .await;
    assert_eq!(
        (refused.0, refused.1["error"].as_str()),
        (400, Some("invalid_target")),
        "{}",
        refused.1
    );
    let policies: Vec<String> = sqlx::query_scalar(
        "SELECT jsonb_array_elements_text(record::jsonb -> 'policies') FROM audit_events
          WHERE kind = 'token_exchanged' AND outcome = 'deny'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(policies, ["residency-stays-in-region"]);
    assert_eq!(exchanged_allowed(&app).await, 1);
}

/// Revoking the consent deactivates every descendant, however many hops away.
#[tokio::test]
async fn revoking_the_consent_deactivates_every_descendant() {
    let Setup { app, key, .. } = setup().await;
    let (_, body) = exchange_jwt(&app, &sign(&key, "d-1", &partner_claims())).await;
    let first = token_of(&body);
    let (status, body) = crate::exchange::exchange(
        &app,
        "partner-a",
        "partner-a-treasury",
        &first,
        &[("audience", "https://ledger.test")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let second = token_of(&body);
    assert_eq!(
        decoded(&second)["consent_id"],
        decoded(&first)["consent_id"]
    );
    let consent_id =
        uuid::Uuid::parse_str(decoded(&second)["consent_id"].as_str().unwrap()).unwrap();
    tessera::storage::consents::revoke(
        &app.pool,
        &crate::helpers::admin_audit(&app).await,
        consent_id,
        "compliance-officer",
        "partner D withdrew",
    )
    .await
    .unwrap();
    for token in [&first, &second] {
        let (_, body) = app
            .post_form(
                Some("resource-server"),
                "/oauth2/introspect",
                &[("client_id", "ops-admin"), ("token", token)],
            )
            .await;
        assert_eq!(body["active"], false);
    }
}

/// Issue 9 item 4: exchange refuses a cnf-less token for an audience that requires binding,
/// as `client_credentials` does.
#[tokio::test]
async fn exchange_enforces_certificate_binding() {
    let app = fast_app().await;
    let mut jwt_client = client(crate::fixtures::JWT_CLIENT, "partner-a");
    jwt_client.auth_method = "private_key_jwt".into();
    jwt_client.jwks = Some(json!({ "keys": [crate::fixtures::client_key().jwk] }));
    jwt_client.audiences = scopes_at(&[
        ("https://bearer-ledger.test", "ledger:read"),
        ("https://ledger.test", "ledger:read"),
    ]);
    register(
        &app,
        Seed {
            audiences: vec![ledger_audience("https://bearer-ledger.test", "eu", false)],
            clients: vec![jwt_client],
            ..Seed::default()
        },
    )
    .await;
    let assertion = || crate::fixtures::assertion(&crate::fixtures::assertion_claims());
    let (status, body) = app
        .post_form(
            None,
            "/oauth2/token",
            &[
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    tessera::service::authenticate::JWT_BEARER_ASSERTION,
                ),
                ("client_assertion", &assertion()),
                ("resource", "https://bearer-ledger.test"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, refused) = app
        .post_form(
            None,
            "/oauth2/token",
            &[
                ("grant_type", EXCHANGE),
                (
                    "client_assertion_type",
                    tessera::service::authenticate::JWT_BEARER_ASSERTION,
                ),
                ("client_assertion", &assertion()),
                ("subject_token", &token_of(&body)),
                ("subject_token_type", ACCESS_TOKEN),
                ("audience", "https://ledger.test"),
            ],
        )
        .await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (400, Some("invalid_request")),
        "{refused}"
    );
    assert_eq!(
        last_denial(&app).await,
        "audience requires certificate-bound tokens"
    );
    assert_eq!(exchanged_allowed(&app).await, 0);
}

/// Issue 9 item 5: a subject whose `may_act` names an actor cannot be exchanged without one,
/// nor, at a later hop, with another.
#[tokio::test]
async fn may_act_cannot_be_bypassed_by_omitting_the_actor() {
    let Setup { app, key, .. } = setup().await;
    let treasury = app
        .token("partner-a", "partner-a-treasury", "https://ledger.test")
        .await;
    let mut subject = partner_claims();
    subject["may_act"] = json!({ "sub": "partner-a-treasury" });
    let (status, body) = exchange_jwt(&app, &sign(&key, "d-1", &subject)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    assert_eq!(
        last_denial(&app).await,
        "the subject's may_act requires an actor_token naming that actor"
    );
    assert_eq!(exchanged_allowed(&app).await, 0);

    subject["jti"] = json!(uuid::Uuid::new_v4().to_string());
    let (status, body) =
        exchange_jwt_with_actor(&app, &sign(&key, "d-1", &subject), &treasury).await;
    assert_eq!(status, 200, "{body}");
    let delegated = token_of(&body);
    assert_eq!(decoded(&delegated)["may_act"]["sub"], "partner-a-treasury");
    // An actor token about someone else is refused, even when its `sub` is the name
    // `may_act` expects: partner D's identity provider chose that `sub`, not Tessera.
    let mut impostor = partner_claims();
    impostor["sub"] = json!("partner-a-treasury");
    let (status, body) = exchange_jwt(&app, &sign(&key, "d-1", &impostor)).await;
    assert_eq!(status, 200, "{body}");
    subject["jti"] = json!(uuid::Uuid::new_v4().to_string());
    let (status, body) =
        exchange_jwt_with_actor(&app, &sign(&key, "d-1", &subject), &token_of(&body)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    assert_eq!(
        last_denial(&app).await,
        "the actor_token must be the client's own token about itself"
    );
    // The next hop keeps the actor that may act: allowed without a new actor token.
    let (status, body) = crate::exchange::exchange(
        &app,
        "partner-a",
        "partner-a-treasury",
        &delegated,
        &[("audience", "https://ledger.test")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Issue 9 item 6 and the two revocation mechanisms, each pinned without the other: the
/// ancestor query at validation (the copy of descendants missed a token whose lineage
/// committed after the revocation), and the copy made at revocation (the lineage row is gone).
#[tokio::test]
async fn revoking_an_actor_token_revokes_what_was_issued_with_it() {
    let app = fast_app().await;
    let subject = app
        .token("partner-a", "partner-a-treasury", "https://ledger.test")
        .await;
    let actor = app
        .token("partner-a", "partner-a-treasury", "https://ledger.test")
        .await;
    let delegate = |subject: String, actor: String| {
        let app = &app;
        async move {
            let (status, body) = crate::exchange::exchange(
                app,
                "partner-a",
                "partner-a-treasury",
                &subject,
                &[
                    ("actor_token", &actor),
                    ("actor_token_type", ACCESS_TOKEN),
                    ("audience", "https://ledger.test"),
                ],
            )
            .await;
            assert_eq!(status, 200, "{body}");
            token_of(&body)
        }
    };
    let issued_with_actor = delegate(subject.clone(), actor.clone()).await;
    let active = |token: String| {
        let app = &app;
        async move {
            let (_, body) = app
                .post_form(
                    Some("partner-a"),
                    "/oauth2/introspect",
                    &[("client_id", "partner-a-treasury"), ("token", &token)],
                )
                .await;
            body["active"] == true
        }
    };
    assert!(active(issued_with_actor.clone()).await);
    let revoke = |token: String| {
        let app = &app;
        async move {
            let (status, _) = app
                .post_form(
                    Some("partner-a"),
                    "/oauth2/revoke",
                    &[("client_id", "partner-a-treasury"), ("token", &token)],
                )
                .await;
            assert_eq!(status, 200);
        }
    };
    revoke(actor.clone()).await;
    assert!(
        !active(issued_with_actor.clone()).await,
        "actor revocation did not cascade"
    );

    // The ancestor query alone: forget the copied revocation of the descendant.
    let other_actor = app
        .token("partner-a", "partner-a-treasury", "https://ledger.test")
        .await;
    let late = delegate(subject.clone(), other_actor.clone()).await;
    revoke(other_actor.clone()).await;
    sqlx::query("DELETE FROM revoked_tokens WHERE jti = $1::uuid")
        .bind(decoded(&late)["jti"].as_str().unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !active(late.clone()).await,
        "the ancestor query missed the actor link"
    );

    // The copy alone: the lineage row is gone, the descendant's own revocation remains.
    let third_actor = app
        .token("partner-a", "partner-a-treasury", "https://ledger.test")
        .await;
    let copied = delegate(subject.clone(), third_actor.clone()).await;
    revoke(third_actor).await;
    sqlx::query("DELETE FROM token_lineage WHERE jti = $1::uuid")
        .bind(decoded(&copied)["jti"].as_str().unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !active(copied).await,
        "the descendant's revocation was not copied"
    );
}

/// Issue 9 item 7: partner JWTs get the same time and type checks as client assertions, with
/// checked arithmetic on the partner's numbers, and a profile may require a `typ`.
#[tokio::test]
async fn partner_jwts_check_nbf_typ_and_never_overflow() {
    let Setup { app, key, idp } = setup().await;
    let now = tessera::crypto::keys::unix_now();
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut claims = partner_claims();
        edit(&mut claims);
        claims
    };
    let mut typed = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    typed.kid = Some("d-1".into());
    typed.typ = Some("at+jwt".into());
    let signed_with = |header: &jsonwebtoken::Header, claims: &Value| {
        jsonwebtoken::encode(
            header,
            claims,
            &jsonwebtoken::EncodingKey::from_ec_der(&key.pkcs8),
        )
        .unwrap()
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "nbf ten minutes ahead",
            sign(&key, "d-1", &with(&|c| c["nbf"] = json!(now + 600))),
            "partner subject_token: not yet valid (nbf)",
        ),
        (
            "iat far in the past wraps",
            sign(&key, "d-1", &with(&|c| c["iat"] = json!(i64::MIN + 5))),
            "partner subject_token: a date is out of range",
        ),
        (
            "exp at the end of time",
            sign(&key, "d-1", &with(&|c| c["exp"] = json!(i64::MAX))),
            "partner subject_token: a date is out of range",
        ),
        (
            "typed as our access token",
            signed_with(&typed, &partner_claims()),
            "partner subject_token: typ not accepted",
        ),
    ];
    for (case, token, reason) in &cases {
        let (status, body) = exchange_jwt(&app, token).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{case}: {body}"
        );
        assert_eq!(last_denial(&app).await, *reason, "{case}");
    }
    // A profile that requires a typ refuses a JWT without it and accepts one with it.
    publish_profile(&app, &idp, &["https://ledger.test"], Some("subject+jwt")).await;
    let (status, _) = exchange_jwt(&app, &sign(&key, "d-1", &partner_claims())).await;
    assert_eq!(status, 400);
    assert_eq!(
        last_denial(&app).await,
        "partner subject_token: typ not accepted"
    );
    assert_eq!(issued(&app).await, 0);
    let mut subject_typed = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    subject_typed.kid = Some("d-1".into());
    subject_typed.typ = Some("subject+jwt".into());
    let (status, body) = exchange_jwt(&app, &signed_with(&subject_typed, &partner_claims())).await;
    assert_eq!(status, 200, "{body}");
}

/// Issue 9 item 8: the declared subject token type must be what the token is; only access
/// tokens are issued, and the response says so.
#[tokio::test]
async fn token_types_are_checked_and_reported() {
    let Setup { app, key, .. } = setup().await;
    let own = app
        .token("partner-a", "partner-a-treasury", "https://ledger.test")
        .await;
    let partner_jwt = sign(&key, "d-1", &partner_claims());
    // (case, subject token, its declared type, extra parameters, the audited reason)
    type Case<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "our token declared a jwt",
            &own,
            JWT_TYPE,
            vec![],
            "partner subject_token: this server's own issuer is never a partner's",
        ),
        (
            "a partner jwt declared an access token",
            &partner_jwt,
            ACCESS_TOKEN,
            vec![],
            "subject_token not an access token (typ)",
        ),
        (
            "a jwt requested",
            &own,
            ACCESS_TOKEN,
            vec![("requested_token_type", JWT_TYPE)],
            "invalid_request: only access tokens are issued: `requested_token_type` must be \
             access_token",
        ),
        (
            "a refresh token requested",
            &own,
            ACCESS_TOKEN,
            vec![(
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:refresh_token",
            )],
            "invalid_request: unsupported `requested_token_type`",
        ),
        (
            "an actor declared a jwt",
            &own,
            ACCESS_TOKEN,
            vec![
                ("actor_token", own.as_str()),
                ("actor_token_type", JWT_TYPE),
            ],
            "invalid_request: `actor_token_type` must be an access token issued by this server",
        ),
    ];
    for (case, subject, declared, extra, reason) in cases {
        let mut form = vec![
            ("grant_type", EXCHANGE),
            ("client_id", "partner-a-treasury"),
            ("subject_token", subject),
            ("subject_token_type", declared),
            ("audience", "https://ledger.test"),
        ];
        form.extend(extra);
        let (status, body) = app
            .post_form(Some("partner-a"), "/oauth2/token", &form)
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{case}: {body}"
        );
        assert_eq!(last_denial(&app).await, reason, "{case}");
    }
    assert_eq!(issued(&app).await, 0);
    let (status, body) = crate::exchange::exchange(
        &app,
        "partner-a",
        "partner-a-treasury",
        &own,
        &[
            ("audience", "https://ledger.test"),
            ("requested_token_type", ACCESS_TOKEN),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN);
}

/// Issue 9 item 9: a failing or slow key endpoint is called once, not once per request.
#[tokio::test]
async fn partner_key_fetches_are_single_flight_and_negatively_cached() {
    let Setup { app, key, idp } = setup().await;
    idp.slow.store(true, Ordering::SeqCst);
    let requests = (0..8).map(|_| {
        let token = sign(&key, "d-1", &partner_claims());
        let app = &app;
        async move { exchange_jwt(app, &token).await.0 }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        1,
        "one fetch for eight requests"
    );

    // An unknown kid while the endpoint is down: one attempt, then fast refusals.
    idp.slow.store(false, Ordering::SeqCst);
    idp.down.store(true, Ordering::SeqCst);
    let unknown = partner_key("d-9");
    for _ in 0..4 {
        let (status, _) = exchange_jwt(&app, &sign(&unknown, "d-9", &partner_claims())).await;
        assert_eq!(status, 400);
    }
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 2);
    // The known key keeps working meanwhile.
    let (status, body) = exchange_jwt(&app, &sign(&key, "d-1", &partner_claims())).await;
    assert_eq!(status, 200, "{body}");
}

/// Issue 9 item 9: a key set larger than the limit is refused, as an unreachable one is.
#[tokio::test]
async fn an_oversized_key_set_is_refused() {
    let Setup { app, key, idp } = setup().await;
    idp.huge.store(true, Ordering::SeqCst);
    let (status, body) = exchange_jwt(&app, &sign(&key, "d-1", &partner_claims())).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "{body}"
    );
    assert_eq!(issued(&app).await, 0);
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);
}

/// Issue 9 item 10: the dev registry's resource servers are not admins.
#[test]
fn the_dev_registry_has_no_admin_clients() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seed/dev.toml");
    let seed = Seed::from_file(&path).unwrap();
    let admins: Vec<&str> = seed
        .clients
        .iter()
        .filter(|client| client.is_admin)
        .map(|client| client.id.as_str())
        .collect();
    assert!(admins.is_empty(), "{admins:?}");
}

/// Pinning the client-assertion algorithm allow-list: with a registered key that names no
/// algorithm, the key filter no longer hides a missing check.
#[tokio::test]
async fn the_assertion_algorithm_allow_list_holds_for_keys_without_alg() {
    let app = fast_app().await;
    let mut jwk = crate::fixtures::client_key().jwk.clone();
    jwk.as_object_mut().unwrap().remove("alg");
    let mut loose = client(crate::fixtures::JWT_CLIENT, "partner-a");
    loose.auth_method = "private_key_jwt".into();
    loose.jwks = Some(json!({ "keys": [jwk] }));
    loose.audiences = scopes_at(&[("https://reports.test", "reports:read")]);
    register(
        &app,
        Seed {
            clients: vec![loose],
            ..Seed::default()
        },
    )
    .await;
    let public = jwk_text();
    for alg in ["HS256", "RS256"] {
        let header = json!({ "alg": alg, "kid": crate::fixtures::JWT_KID });
        let claims = crate::fixtures::assertion_claims();
        use base64::Engine;
        let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let input = format!(
            "{}.{}",
            encode(header.to_string().as_bytes()),
            encode(claims.to_string().as_bytes())
        );
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, public.as_bytes());
        let signature = aws_lc_rs::hmac::sign(&key, input.as_bytes());
        let assertion = format!("{input}.{}", encode(signature.as_ref()));
        let refused = app
            .post_form(
                None,
                "/oauth2/token",
                &[
                    ("grant_type", "client_credentials"),
                    (
                        "client_assertion_type",
                        tessera::service::authenticate::JWT_BEARER_ASSERTION,
                    ),
                    ("client_assertion", &assertion),
                    ("resource", "https://reports.test"),
                ],
            )
            .await;
        app.assert_refused(refused, 401, "invalid_client").await;
        assert_eq!(last_denial(&app).await, "algorithm not allowed", "{alg}");
    }
}

fn jwk_text() -> String {
    crate::fixtures::client_key().jwk.to_string()
}

/// Pinning the exchange holder rule: a client of the same partner that neither holds the
/// token nor serves its audience cannot exchange it (no consent check stands in front).
#[tokio::test]
async fn a_same_partner_client_that_does_not_hold_the_token_cannot_exchange_it() {
    let app = fast_app().await;
    let ledger = app
        .token("partner-a", "partner-a-treasury", "https://ledger.test")
        .await;
    let refused = crate::exchange::exchange(
        &app,
        "partner-a",
        "partner-a-ops",
        &ledger,
        &[("audience", "https://ledger.test")],
    )
    .await;
    assert_eq!(
        (refused.0, refused.1["error"].as_str()),
        (400, Some("invalid_request"))
    );
    assert_eq!(
        last_denial(&app).await,
        "the client is neither the subject token's client nor its audience"
    );
    assert_eq!(issued(&app).await, 0);
}

/// One issuer vouches for one partner even when two partners claim it at the same moment: the
/// database key decides, not a read before the insert.
#[tokio::test]
async fn concurrent_claims_of_one_issuer_leave_it_with_one_partner() {
    let app = fast_app().await;
    let audit = crate::helpers::admin_audit(&app).await;
    let profile = tessera::domain::trust::NewProfile {
        issuers: vec!["https://idp.contested.test".into()],
        jwks: Some(json!({ "keys": [] })),
        algorithms: vec!["ES256".into()],
        max_assertion_lifetime_s: 300,
        required_claims: json!({}),
        single_use: true,
        audiences: vec!["https://ledger.test".into()],
        scopes: vec!["ledger:read".into()],
        region: "eu".into(),
        active: true,
        ..tessera::domain::trust::NewProfile::default()
    };
    for _ in 0..5 {
        let (d, e) = tokio::join!(
            tessera::storage::trust::publish(&app.pool, &audit, "partner-d", &profile, "admin"),
            tessera::storage::trust::publish(&app.pool, &audit, "partner-e", &profile, "admin"),
        );
        let owners: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT p.partner_id FROM trust_profiles p
               JOIN trust_profile_heads h
                 ON h.partner_id = p.partner_id AND h.active_version = p.version
              WHERE 'https://idp.contested.test' = ANY (p.issuers)",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        assert_eq!(owners.len(), 1, "{owners:?}");
        assert!(
            d.is_ok() != e.is_ok(),
            "exactly one claim stands: {d:?} {e:?}"
        );
    }
}
