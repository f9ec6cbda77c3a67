//! Issue 11: the admin API. Admins are certificate identities under the admin trust anchor
//! with roles; every change is committed with its audit record; widening changes wait for a
//! second admin.

use reqwest::Method;
use serde_json::{Value, json};
use tessera::domain::admin::Role;

use crate::boundaries::{TestCa, publish_ca, until_trusted};
use crate::helpers::{TestApp, TestDatabase, spawn_app, spawn_app_on};

/// Registers a dev-PKI certificate as an admin, as `tessera admin bootstrap` does, and makes
/// the dev CA the admin trust anchor (`admin.client_ca`), as `dev` does. The shared test
/// settings leave it unset, so that other tests see the operator's anchor alone.
async fn register_admin(app: &TestApp, name: &str, roles: &[Role]) {
    app.client_trust
        .replace_admin_roots(&crate::helpers::certificates(
            &crate::helpers::pki().ca_cert(),
        ))
        .unwrap();
    bootstrap_admin(app, name, roles).await;
}

async fn bootstrap_admin(app: &TestApp, name: &str, roles: &[Role]) {
    let (audit, writer) = crate::helpers::admin_audit_with_handle(app).await;
    let identity =
        tessera::cli::admin::certificate_identity(&crate::helpers::pki().client_cert(name))
            .unwrap();
    tessera::service::admin::bootstrap::register(&audit, name, identity, roles.to_vec(), "test")
        .await
        .unwrap();
    writer.finish().await;
}

/// The dev setup: `admin` edits, approves and audits; `admin-2` approves.
async fn admin_app() -> TestApp {
    let app = spawn_app().await;
    register_admin(
        &app,
        "admin",
        &[Role::Editor, Role::Approver, Role::Auditor],
    )
    .await;
    register_admin(&app, "admin-2", &[Role::Approver]).await;
    app
}

struct Reply {
    status: u16,
    etag: Option<String>,
    content_type: Option<String>,
    body: Value,
}

async fn call(
    app: &TestApp,
    http: &reqwest::Client,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Reply {
    let mut request = http.request(method, app.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let (status, etag, content_type) = (
        response.status().as_u16(),
        header("etag"),
        header("content-type"),
    );
    let text = response.text().await.unwrap();
    Reply {
        status,
        etag,
        content_type,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

/// A request as the named dev-PKI identity.
async fn as_(
    app: &TestApp,
    identity: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Reply {
    call(
        app,
        &app.client(Some(identity)),
        method,
        path,
        headers,
        body,
    )
    .await
}

async fn admin_records(app: &TestApp, action: &str) -> Vec<Value> {
    sqlx::query_scalar::<_, String>(
        "SELECT record FROM audit_events WHERE kind = 'admin_change'
            AND record::jsonb ->> 'reason' = $1 ORDER BY recorded_at, seq",
    )
    .bind(action)
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .iter()
    .map(|record| serde_json::from_str(record).unwrap())
    .collect()
}

async fn denials(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT record::jsonb ->> 'reason' FROM audit_events WHERE kind = 'admin_denied'
          ORDER BY recorded_at, seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

async fn partner_row(app: &TestApp, id: &str) -> Option<(String, String, String, i32)> {
    sqlx::query_as("SELECT name, region, status, version FROM partners WHERE id = $1")
        .bind(id)
        .fetch_optional(&app.pool)
        .await
        .unwrap()
}

fn assert_problem(reply: &Reply, status: u16, kind: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(
        reply.content_type.as_deref(),
        Some("application/problem+json")
    );
    assert_eq!(reply.body["type"], kind, "{}", reply.body);
    assert_eq!(reply.body["status"], status);
}

#[tokio::test]
async fn an_admin_is_identified_by_its_certificate_under_the_admin_anchor_only() {
    let app = admin_app().await;
    let me = as_(&app, "admin", Method::GET, "/admin/v1/whoami", &[], None).await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.body["id"], "admin");
    assert_eq!(me.body["roles"], json!(["editor", "approver", "auditor"]));
    assert_eq!(me.etag.as_deref(), Some("\"1\""));

    // A partner's certificate from the operator's CA is no admin; nor is no certificate.
    for identity in [Some("partner-a"), Some("resource-server"), None] {
        let reply = call(
            &app,
            &app.client(identity),
            Method::GET,
            "/admin/v1/partners",
            &[],
            None,
        )
        .await;
        assert_problem(&reply, 401, "urn:tessera:problem:unauthenticated");
    }
    assert_eq!(
        denials(&app).await,
        [
            "no admin is registered with this certificate identity",
            "no admin is registered with this certificate identity",
            "a client certificate is required",
        ]
    );
}

/// A partner's CA that issues a certificate with the admin's exact subject and names
/// authenticates no admin: the identity counts only under the admin trust anchor.
#[tokio::test]
async fn a_partners_ca_cannot_issue_an_admin_identity() {
    let app = spawn_app_on(TestDatabase::create().await, |settings| {
        settings.registry.cache_ttl = std::time::Duration::from_millis(200);
    })
    .await;
    register_admin(&app, "admin", &[Role::Editor]).await;
    let ca = TestCa::new("Partner B CA");
    publish_ca(&app, "partner-b", &ca).await;
    let forged = ca.client(
        "admin",
        vec![rcgen::SanType::DnsName(
            "admin.tessera.test".try_into().unwrap(),
        )],
    );
    until_trusted(&app, &forged).await;
    let reply = call(
        &app,
        &forged.http(),
        Method::POST,
        "/admin/v1/partners",
        &[],
        Some(json!({"id": "forged", "name": "Forged", "region": "eu"})),
    )
    .await;
    assert_problem(&reply, 401, "urn:tessera:problem:unauthenticated");
    assert_eq!(partner_row(&app, "forged").await, None);
    assert_eq!(
        denials(&app).await,
        ["the certificate does not chain to the admin trust anchor"]
    );
}

/// An identity is an admin or an OAuth client, never both, whichever is registered first.
#[tokio::test]
async fn an_admin_identity_is_never_an_oauth_client() {
    let app = admin_app().await;
    // The resource servers' certificate belongs to OAuth clients: it cannot become an admin.
    let (audit, writer) = crate::helpers::admin_audit_with_handle(&app).await;
    let identity = tessera::cli::admin::certificate_identity(
        &crate::helpers::pki().client_cert("resource-server"),
    )
    .unwrap();
    let refused = tessera::service::admin::bootstrap::register(
        &audit,
        "resource-server",
        identity,
        vec![Role::Viewer],
        "test",
    )
    .await;
    writer.finish().await;
    assert!(
        matches!(
            refused,
            Err(tessera::service::admin::AdminError::Conflict(_))
        ),
        "{refused:?}"
    );
    let admins: i64 = sqlx::query_scalar("SELECT count(*) FROM admins")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(admins, 2);
    assert!(admin_records(&app, "admin_registered").await.len() == 2);

    // And an admin's certificate cannot be registered for a client, by DN or by SAN.
    for (dn, dns) in [
        (Some("CN=admin,O=Tessera Dev"), None),
        (None, Some("ADMIN-2.tessera.test")),
    ] {
        let mut client = crate::boundaries::client("sneaky", "partner-a");
        client.tls_subject_dn = dn.map(str::to_owned);
        client.tls_san_dns = dns.map(str::to_owned);
        client.tls_anchor = Some("server".into());
        let seeded = tessera::dev::seed::Seed {
            clients: vec![client],
            ..tessera::dev::seed::Seed::default()
        }
        .apply(&app.pool)
        .await;
        assert!(seeded.is_err(), "{dn:?} {dns:?}");
    }
}

/// Admin tokens are for the admin audience and bound to the certificate they were issued to.
#[tokio::test]
async fn an_admin_token_works_only_with_its_certificate_and_audience() {
    let app = admin_app().await;
    let issued = as_(&app, "admin", Method::POST, "/admin/v1/token", &[], None).await;
    assert_eq!(issued.status, 200, "{}", issued.body);
    let token = issued.body["access_token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");
    let me = as_(
        &app,
        "admin",
        Method::GET,
        "/admin/v1/whoami",
        &[("authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.body["id"], "admin");
    let admins = as_(
        &app,
        "admin",
        Method::GET,
        "/admin/v1/admins",
        &[("authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(
        admins.body.as_array().map(|admins| admins.len()),
        Some(2),
        "{}",
        admins.body
    );

    // Presented with another admin's certificate: refused.
    let stolen = as_(
        &app,
        "admin-2",
        Method::GET,
        "/admin/v1/partners",
        &[("authorization", &bearer)],
        None,
    )
    .await;
    assert_problem(&stolen, 401, "urn:tessera:problem:unauthenticated");

    // A token of ours for another audience, bound to the admin's certificate: refused.
    let keys = tessera::crypto::keys::KeyRing::load(&app.pool, app.settings.keys.clone())
        .await
        .unwrap();
    let thumbprint = tessera::tls::Thumbprint::of(
        crate::helpers::certificates(&crate::helpers::pki().client_cert("admin"))[0].as_ref(),
    )
    .to_base64url();
    let now = tessera::crypto::keys::unix_now();
    let other_audience = tessera::crypto::jwt::mint(
        &keys.current(),
        &tessera::domain::tokens::AccessTokenClaims {
            iss: crate::helpers::ISSUER.into(),
            sub: "admin".into(),
            aud: "https://ledger.test".into(),
            exp: now + 60,
            iat: now,
            nbf: now,
            jti: tessera::domain::ids::Jti::random(),
            client_id: "admin:admin".into(),
            scope: String::new(),
            cnf: Some(tessera::domain::tokens::Confirmation {
                x5t_s256: thumbprint,
            }),
            act: None,
            consent_id: None,
            txn: None,
            trust_profile_version: None,
            owner_partner: None,
            owner_region: None,
            may_act: None,
        },
    )
    .unwrap();
    let wrong_audience = as_(
        &app,
        "admin",
        Method::GET,
        "/admin/v1/partners",
        &[("authorization", &format!("Bearer {other_audience}"))],
        None,
    )
    .await;
    assert_problem(&wrong_audience, 401, "urn:tessera:problem:unauthenticated");

    // A valid token does not lend roles: admin-2's own token cannot create a partner.
    let second = as_(&app, "admin-2", Method::POST, "/admin/v1/token", &[], None).await;
    let second = format!("Bearer {}", second.body["access_token"].as_str().unwrap());
    let create = as_(
        &app,
        "admin-2",
        Method::POST,
        "/admin/v1/partners",
        &[("authorization", &second)],
        Some(json!({"id": "partner-x", "name": "X", "region": "eu"})),
    )
    .await;
    assert_problem(&create, 403, "urn:tessera:problem:forbidden");
    assert_eq!(partner_row(&app, "partner-x").await, None);

    // A revoked admin token is refused (here revoked by the operations client).
    let (status, _) = app
        .post_form(
            Some("resource-server"),
            "/oauth2/revoke",
            &[("client_id", "ops-admin"), ("token", &token)],
        )
        .await;
    assert_eq!(status, 200);
    let revoked = as_(
        &app,
        "admin",
        Method::GET,
        "/admin/v1/whoami",
        &[("authorization", &bearer)],
        None,
    )
    .await;
    assert_problem(&revoked, 401, "urn:tessera:problem:unauthenticated");
    assert_eq!(
        denials(&app).await,
        [
            "the access token is bound to another certificate",
            "the access token is not for the admin audience",
            "the `editor` role is required",
            "the access token is revoked",
        ]
    );
}

#[tokio::test]
async fn partners_are_created_read_and_updated_with_if_match() {
    let app = admin_app().await;
    let created = as_(
        &app,
        "admin",
        Method::POST,
        "/admin/v1/partners",
        &[],
        Some(json!({"id": "partner-x", "name": "Partner X", "region": "eu"})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.etag.as_deref(), Some("\"1\""));
    assert_eq!(created.body["status"], "active");

    let read = as_(
        &app,
        "admin-2",
        Method::GET,
        "/admin/v1/partners/partner-x",
        &[],
        None,
    )
    .await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body, created.body);

    let path = "/admin/v1/partners/partner-x";
    let renamed = as_(
        &app,
        "admin",
        Method::PATCH,
        path,
        &[("if-match", "\"1\"")],
        Some(json!({"name": "Partner X Ltd"})),
    )
    .await;
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    assert_eq!(renamed.etag.as_deref(), Some("\"2\""));
    assert_eq!(renamed.body["name"], "Partner X Ltd");

    let stale = as_(
        &app,
        "admin",
        Method::PATCH,
        path,
        &[("if-match", "\"1\"")],
        Some(json!({"name": "Lost update"})),
    )
    .await;
    assert_problem(&stale, 412, "urn:tessera:problem:stale-version");
    assert_eq!(stale.etag.as_deref(), Some("\"2\""));

    let unconditional = as_(
        &app,
        "admin",
        Method::PATCH,
        path,
        &[],
        Some(json!({"name": "Lost update"})),
    )
    .await;
    assert_problem(
        &unconditional,
        428,
        "urn:tessera:problem:precondition-required",
    );
    assert_eq!(unconditional.body["field"], "If-Match");

    let records_before = admin_records(&app, "partner_updated").await.len();
    for (body, field, rule) in [
        (json!({"name": "Fine", "region": "EU!"}), "region", "region"),
        (json!({"name": ""}), "name", "name"),
        (json!({"status": "gone"}), "status", "enum"),
        (json!({"colour": "red"}), "colour", "known_field"),
        (json!({"name": 7}), "name", "string"),
    ] {
        let invalid = as_(
            &app,
            "admin",
            Method::PATCH,
            path,
            &[("if-match", "\"2\"")],
            Some(body.clone()),
        )
        .await;
        assert_problem(&invalid, 422, "urn:tessera:problem:invalid-field");
        assert_eq!(
            (
                invalid.body["field"].as_str(),
                invalid.body["rule"].as_str()
            ),
            (Some(field), Some(rule)),
            "{body}"
        );
    }
    let invalid_create = as_(
        &app,
        "admin",
        Method::POST,
        "/admin/v1/partners",
        &[],
        Some(json!({"id": "Partner Y", "name": "Y", "region": "eu"})),
    )
    .await;
    assert_problem(&invalid_create, 422, "urn:tessera:problem:invalid-field");
    assert_eq!(invalid_create.body["field"], "id");

    // Nothing partial: the refused requests changed nothing and recorded no change.
    assert_eq!(
        partner_row(&app, "partner-x").await,
        Some(("Partner X Ltd".into(), "eu".into(), "active".into(), 2))
    );
    assert_eq!(partner_row(&app, "Partner Y").await, None);
    assert_eq!(
        admin_records(&app, "partner_updated").await.len(),
        records_before
    );

    // Each change is in the trail with who made it, before and after.
    let created = &admin_records(&app, "partner_created").await[0];
    assert_eq!(created["subject"], "admin");
    assert_eq!(created["partner"], "partner-x");
    assert_eq!(created["changes"]["before"], Value::Null);
    assert_eq!(created["changes"]["after"]["name"], "Partner X");
    let updated = &admin_records(&app, "partner_updated").await[0];
    assert_eq!(
        updated["changes"]["diff"],
        json!({"name": {"before": "Partner X", "after": "Partner X Ltd"}})
    );
    assert_eq!(updated["changes"]["before"]["version"], 1);
    assert_eq!(updated["changes"]["after"]["version"], 2);
}

/// Suspending narrows and is immediate; reactivating widens and waits for an approver who
/// is not its author.
#[tokio::test]
async fn widening_waits_for_a_second_admin_and_narrowing_is_immediate() {
    let app = admin_app().await;
    let path = "/admin/v1/partners/partner-b";
    let current = as_(&app, "admin", Method::GET, path, &[], None).await;
    let etag = current.etag.unwrap();
    let suspended = as_(
        &app,
        "admin",
        Method::PATCH,
        path,
        &[("if-match", &etag)],
        Some(json!({"status": "suspended"})),
    )
    .await;
    assert_eq!(suspended.status, 200, "{}", suspended.body);
    assert_eq!(partner_row(&app, "partner-b").await.unwrap().2, "suspended");

    let proposed = as_(
        &app,
        "admin",
        Method::PATCH,
        path,
        &[("if-match", suspended.etag.as_deref().unwrap())],
        Some(json!({"status": "active"})),
    )
    .await;
    assert_eq!(proposed.status, 202, "{}", proposed.body);
    assert_eq!(proposed.body["status"], "pending");
    assert_eq!(proposed.body["author"], "admin");
    assert_eq!(
        proposed.body["diff"],
        json!({"status": {"before": "suspended", "after": "active"}})
    );
    assert_eq!(
        partner_row(&app, "partner-b").await.unwrap().2,
        "suspended",
        "a proposal changes nothing"
    );
    let id = proposed.body["id"].as_str().unwrap();
    let approve = format!("/admin/v1/proposals/{id}/approve");

    let own = as_(&app, "admin", Method::POST, &approve, &[], None).await;
    assert_problem(&own, 403, "urn:tessera:problem:forbidden");
    assert_eq!(partner_row(&app, "partner-b").await.unwrap().2, "suspended");
    assert_eq!(
        denials(&app).await,
        ["the author of a proposal cannot decide it"]
    );

    let approved = as_(&app, "admin-2", Method::POST, &approve, &[], None).await;
    assert_eq!(approved.status, 200, "{}", approved.body);
    assert_eq!(approved.body["status"], "approved");
    assert_eq!(approved.body["decided_by"], "admin-2");
    let (_, _, status, version) = partner_row(&app, "partner-b").await.unwrap();
    assert_eq!((status.as_str(), version), ("active", 3));

    let again = as_(&app, "admin-2", Method::POST, &approve, &[], None).await;
    assert_problem(&again, 409, "urn:tessera:problem:conflict");

    let proposal_record = &admin_records(&app, "proposal_created").await[0];
    assert_eq!(proposal_record["subject"], "admin");
    assert_eq!(proposal_record["changes"]["after"]["status"], "active");
    let approval = &admin_records(&app, "proposal_approved").await[0];
    assert_eq!(approval["subject"], "admin-2");
    assert_eq!(approval["changes"]["author"], "admin");
    assert_eq!(
        approval["changes"]["applied"]["diff"],
        json!({"status": {"before": "suspended", "after": "active"}})
    );
}

#[tokio::test]
async fn a_rejected_proposal_changes_nothing_and_an_approval_of_a_stale_one_is_refused() {
    let app = admin_app().await;
    let path = "/admin/v1/partners/partner-a";
    let propose = |region: &'static str, etag: String| {
        let app = &app;
        async move {
            as_(
                app,
                "admin",
                Method::PATCH,
                path,
                &[("if-match", &etag)],
                Some(json!({ "region": region })),
            )
            .await
        }
    };
    let first = propose("us", "\"1\"".into()).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let second = propose("ap", "\"1\"".into()).await;
    assert_eq!(second.status, 202, "{}", second.body);
    let reject = format!(
        "/admin/v1/proposals/{}/reject",
        first.body["id"].as_str().unwrap()
    );
    let no_reason = as_(&app, "admin-2", Method::POST, &reject, &[], Some(json!({}))).await;
    assert_problem(&no_reason, 422, "urn:tessera:problem:invalid-field");
    assert_eq!(no_reason.body["field"], "reason");
    let rejected = as_(
        &app,
        "admin-2",
        Method::POST,
        &reject,
        &[],
        Some(json!({"reason": "residency stays in the EU"})),
    )
    .await;
    assert_eq!(rejected.status, 200, "{}", rejected.body);
    assert_eq!(rejected.body["status"], "rejected");
    assert_eq!(partner_row(&app, "partner-a").await.unwrap().1, "eu");

    // The partner changes after the second proposal was made: approving it would apply
    // something nobody reviewed.
    let renamed = as_(
        &app,
        "admin",
        Method::PATCH,
        path,
        &[("if-match", "\"1\"")],
        Some(json!({"name": "Partner A plc"})),
    )
    .await;
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    let approve = format!(
        "/admin/v1/proposals/{}/approve",
        second.body["id"].as_str().unwrap()
    );
    let stale = as_(&app, "admin-2", Method::POST, &approve, &[], None).await;
    assert_problem(&stale, 409, "urn:tessera:problem:conflict");
    assert_eq!(partner_row(&app, "partner-a").await.unwrap().1, "eu");
    let pending = as_(
        &app,
        "admin-2",
        Method::GET,
        "/admin/v1/proposals?status=pending",
        &[],
        None,
    )
    .await;
    assert_eq!(pending.body.as_array().unwrap().len(), 1);
    assert_eq!(admin_records(&app, "proposal_rejected").await.len(), 1);
    assert_eq!(admin_records(&app, "proposal_approved").await.len(), 0);
}

#[tokio::test]
async fn a_viewer_can_read_but_not_change() {
    let app = spawn_app().await;
    register_admin(&app, "admin-2", &[Role::Viewer]).await;
    let listed = as_(
        &app,
        "admin-2",
        Method::GET,
        "/admin/v1/partners",
        &[],
        None,
    )
    .await;
    assert_eq!(listed.status, 200);
    assert!(
        listed
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == "partner-a"),
        "{}",
        listed.body
    );
    let created = as_(
        &app,
        "admin-2",
        Method::POST,
        "/admin/v1/partners",
        &[],
        Some(json!({"id": "partner-x", "name": "X", "region": "eu"})),
    )
    .await;
    assert_problem(&created, 403, "urn:tessera:problem:forbidden");
    let suspended = as_(
        &app,
        "admin-2",
        Method::PATCH,
        "/admin/v1/partners/partner-a",
        &[("if-match", "\"1\"")],
        Some(json!({"status": "suspended"})),
    )
    .await;
    assert_problem(&suspended, 403, "urn:tessera:problem:forbidden");
    assert_eq!(partner_row(&app, "partner-x").await, None);
    assert_eq!(partner_row(&app, "partner-a").await.unwrap().2, "active");
    assert_eq!(
        denials(&app).await,
        [
            "the `editor` role is required",
            "the `editor` role is required"
        ]
    );
}

/// The change and its audit record are one transaction: when the record cannot be stored,
/// the change is not stored either.
#[tokio::test]
async fn an_audit_failure_leaves_nothing_changed() {
    let app = admin_app().await;
    // The database refuses this one record (as a full disk or a broken trail would).
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.partner = 'poison' THEN RAISE EXCEPTION 'audit store refuses'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_poison BEFORE INSERT ON audit_events
             FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let reply = as_(
        &app,
        "admin",
        Method::POST,
        "/admin/v1/partners",
        &[],
        Some(json!({"id": "poison", "name": "Poison", "region": "eu"})),
    )
    .await;
    assert_problem(&reply, 503, "urn:tessera:problem:unavailable");
    assert_eq!(partner_row(&app, "poison").await, None);

    // The trail goes on for everyone else.
    let fine = as_(
        &app,
        "admin",
        Method::POST,
        "/admin/v1/partners",
        &[],
        Some(json!({"id": "fine", "name": "Fine", "region": "eu"})),
    )
    .await;
    assert_eq!(fine.status, 201, "{}", fine.body);
    assert_eq!(admin_records(&app, "partner_created").await.len(), 1);
}

async fn exchange_status(setup: &crate::partner::Setup) -> u16 {
    let subject = crate::partner::sign(&setup.key, "d-1", &crate::partner::claims());
    crate::partner::exchange(&setup.app, &subject).await.0
}

/// Versions are stored, compared and activated; activation changes what token exchange
/// accepts at once; a roll-back that widens waits for a second admin; suspension is immediate.
#[tokio::test]
async fn trust_profile_versions_are_activated_rolled_back_and_suspended() {
    let setup = crate::partner::setup().await;
    let app = &setup.app;
    register_admin(app, "admin", &[Role::Editor, Role::Approver]).await;
    register_admin(app, "admin-2", &[Role::Approver]).await;
    assert_eq!(exchange_status(&setup).await, 200);
    let base = "/admin/v1/partners/partner-d/trust-profiles";
    let listed = as_(app, "admin", Method::GET, base, &[], None).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.body["active_version"], 1);
    assert_eq!(listed.etag.as_deref(), Some("\"1\""));
    let mut profile = listed.body["versions"][0].clone();
    for key in ["partner", "version", "active", "created_by"] {
        profile.as_object_mut().unwrap().remove(key);
    }

    // Invalid versions are refused, naming the field, and nothing is stored.
    for (change, field, rule) in [
        (
            json!({"algorithms": ["HS256"]}),
            "algorithms",
            "asymmetric_algorithms",
        ),
        (
            json!({"audiences": ["https://nowhere.test"]}),
            "audiences",
            "registered_audience",
        ),
        (
            json!({"jwks_uri": "http://idp.test/jwks"}),
            "jwks_uri",
            "https_url",
        ),
    ] {
        let mut invalid = profile.clone();
        for (key, value) in change.as_object().unwrap() {
            invalid[key] = value.clone();
        }
        let reply = as_(app, "admin", Method::POST, base, &[], Some(invalid)).await;
        assert_problem(&reply, 422, "urn:tessera:problem:invalid-field");
        assert_eq!(
            (reply.body["field"].as_str(), reply.body["rule"].as_str()),
            (Some(field), Some(rule))
        );
    }
    let mut shorter = profile.clone();
    shorter["max_assertion_lifetime_s"] = json!(60);
    let created = as_(app, "admin", Method::POST, base, &[], Some(shorter)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(
        (
            created.body["version"].as_i64(),
            created.body["active"].as_bool()
        ),
        (Some(2), Some(false))
    );

    let compared = as_(
        app,
        "admin-2",
        Method::GET,
        &format!("{base}/diff?from=2&to=1"),
        &[],
        None,
    )
    .await;
    assert_eq!(
        compared.body,
        json!({
            "from": 2, "to": 1,
            "diff": {"max_assertion_lifetime_s": {"before": 60, "after": 300}},
            "widens": ["longer assertion lifetime"],
        })
    );

    // Narrowing: immediate, and the exchange refuses what the new version refuses (the
    // test's assertions live 120 s).
    let activate_2 = format!("{base}/2/activate");
    let stale = as_(
        app,
        "admin",
        Method::POST,
        &activate_2,
        &[("if-match", "\"0\"")],
        None,
    )
    .await;
    assert_problem(&stale, 412, "urn:tessera:problem:stale-version");
    let activated = as_(
        app,
        "admin",
        Method::POST,
        &activate_2,
        &[("if-match", "\"1\"")],
        None,
    )
    .await;
    assert_eq!(activated.status, 200, "{}", activated.body);
    assert_eq!(exchange_status(&setup).await, 400);

    // Rolling back to version 1 widens: a proposal until admin-2 approves.
    let rollback = as_(
        app,
        "admin",
        Method::POST,
        &format!("{base}/1/activate"),
        &[("if-match", "\"2\"")],
        None,
    )
    .await;
    assert_eq!(rollback.status, 202, "{}", rollback.body);
    assert_eq!(
        rollback.body["diff"]["widens"],
        json!(["longer assertion lifetime"])
    );
    assert_eq!(exchange_status(&setup).await, 400);
    let approve = format!(
        "/admin/v1/proposals/{}/approve",
        rollback.body["id"].as_str().unwrap()
    );
    let approved = as_(app, "admin-2", Method::POST, &approve, &[], None).await;
    assert_eq!(approved.status, 200, "{}", approved.body);
    assert_eq!(exchange_status(&setup).await, 200);

    // Suspension: immediate, as a new version.
    let suspended = as_(
        app,
        "admin",
        Method::POST,
        &format!("{base}/suspend"),
        &[("if-match", "\"1\"")],
        None,
    )
    .await;
    assert_eq!(suspended.status, 200, "{}", suspended.body);
    assert_eq!(suspended.body["version"], 3);
    assert_eq!(suspended.body["status"], "suspended");
    assert_eq!(exchange_status(&setup).await, 400);

    let versions = as_(app, "admin", Method::GET, base, &[], None).await;
    assert_eq!(versions.body["active_version"], 3);
    assert_eq!(versions.body["versions"].as_array().unwrap().len(), 3);
    for action in [
        "trust_profile_version_created",
        "trust_profile_activated",
        "proposal_created",
        "proposal_approved",
        "trust_profile_suspended",
    ] {
        assert_eq!(admin_records(app, action).await.len(), 1, "{action}");
    }
    let activated = &admin_records(app, "trust_profile_activated").await[0];
    assert_eq!(
        activated["changes"]["diff"],
        json!({"max_assertion_lifetime_s": {"before": 300, "after": 60}})
    );
}

async fn introspected_active(app: &TestApp, token: &str) -> bool {
    let (status, body) = app
        .post_form(
            Some("resource-server"),
            "/oauth2/introspect",
            &[("client_id", "ledger-rs"), ("token", token)],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["active"].as_bool().unwrap()
}

async fn count(app: &TestApp, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Revoking a consent is immediate and makes its tokens inactive; granting one waits for a
/// second admin.
#[tokio::test]
async fn consents_are_listed_revoked_at_once_and_granted_with_four_eyes() {
    let setup = crate::partner::setup().await;
    let app = &setup.app;
    register_admin(app, "admin", &[Role::Editor, Role::Approver]).await;
    register_admin(app, "admin-2", &[Role::Approver]).await;
    let subject = crate::partner::sign(&setup.key, "d-1", &crate::partner::claims());
    let (status, issued) = crate::partner::exchange(app, &subject).await;
    assert_eq!(status, 200, "{issued}");
    let token = issued["access_token"].as_str().unwrap();
    assert!(introspected_active(app, token).await);

    for (query, expected) in [
        ("grantor=partner-d", 1),
        ("grantee=partner-a&audience=https://ledger.test", 1),
        ("grantee=partner-b", 0),
        ("status=revoked", 0),
    ] {
        let listed = as_(
            app,
            "admin",
            Method::GET,
            &format!("/admin/v1/consents?{query}"),
            &[],
            None,
        )
        .await;
        assert_eq!(
            listed.body.as_array().map(Vec::len),
            Some(expected),
            "{query}: {}",
            listed.body
        );
    }
    let listed = as_(app, "admin", Method::GET, "/admin/v1/consents", &[], None).await;
    let id = listed.body[0]["id"].as_str().unwrap().to_owned();
    let revoke = format!("/admin/v1/consents/{id}/revoke");
    let no_reason = as_(
        app,
        "admin",
        Method::POST,
        &revoke,
        &[("if-match", "\"1\"")],
        Some(json!({})),
    )
    .await;
    assert_problem(&no_reason, 422, "urn:tessera:problem:invalid-field");
    assert_eq!(no_reason.body["field"], "reason");
    let unconditional = as_(
        app,
        "admin",
        Method::POST,
        &revoke,
        &[],
        Some(json!({"reason": "contract ended"})),
    )
    .await;
    assert_problem(
        &unconditional,
        428,
        "urn:tessera:problem:precondition-required",
    );
    assert!(introspected_active(app, token).await, "nothing changed yet");
    let revoked = as_(
        app,
        "admin",
        Method::POST,
        &revoke,
        &[("if-match", "\"1\"")],
        Some(json!({"reason": "contract ended"})),
    )
    .await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_eq!(revoked.etag.as_deref(), Some("\"2\""));
    assert_eq!(revoked.body["status"], "revoked");
    assert_eq!(revoked.body["revocation_reason"], "contract ended");
    assert!(!introspected_active(app, token).await);
    let record = &admin_records(app, "consent_revoked").await[0];
    assert_eq!(record["consent_id"], id);
    assert_eq!(record["changes"]["before"]["status"], "active");
    assert_eq!(record["changes"]["after"]["status"], "revoked");
    assert_eq!(record["changes"]["reason"], "contract ended");

    // A grant waits for a second admin; invalid grants store nothing.
    let now = time::OffsetDateTime::now_utc();
    let at = |offset: time::Duration| {
        (now + offset)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let grant = json!({
        "grantor": "partner-d",
        "grantee_partner": "partner-b",
        "scopes": ["ledger:read"],
        "audiences": ["https://ledger.test"],
        "effective_from": at(time::Duration::ZERO),
        "effective_until": at(time::Duration::days(30)),
        "legal_basis": "contract",
    });
    let proposals_before = count(app, "proposals").await;
    for (change, field) in [
        (
            json!({"effective_until": at(-time::Duration::days(1))}),
            "effective_until",
        ),
        (json!({"grantor": "nobody"}), "grantor"),
        (
            json!({"grantee_client": "partner-a-treasury"}),
            "grantee_client",
        ),
        (json!({"effective_from": "yesterday"}), "effective_from"),
    ] {
        let mut invalid = grant.clone();
        for (key, value) in change.as_object().unwrap() {
            invalid[key] = value.clone();
        }
        let reply = as_(
            app,
            "admin",
            Method::POST,
            "/admin/v1/consents",
            &[],
            Some(invalid),
        )
        .await;
        assert_problem(&reply, 422, "urn:tessera:problem:invalid-field");
        assert_eq!(reply.body["field"], field);
    }
    assert_eq!(count(app, "proposals").await, proposals_before);
    let proposed = as_(
        app,
        "admin",
        Method::POST,
        "/admin/v1/consents",
        &[],
        Some(grant),
    )
    .await;
    assert_eq!(proposed.status, 202, "{}", proposed.body);
    let for_b = "/admin/v1/consents?grantee=partner-b";
    let none = as_(app, "admin", Method::GET, for_b, &[], None).await;
    assert_eq!(none.body, json!([]));
    let approve = format!(
        "/admin/v1/proposals/{}/approve",
        proposed.body["id"].as_str().unwrap()
    );
    let approved = as_(app, "admin-2", Method::POST, &approve, &[], None).await;
    assert_eq!(approved.status, 200, "{}", approved.body);
    let granted = as_(app, "admin", Method::GET, for_b, &[], None).await;
    assert_eq!(granted.body.as_array().unwrap().len(), 1);
    assert_eq!(granted.body[0]["status"], "active");
    assert_eq!(granted.body[0]["changed_by"], "admin-2");
}

/// A new client waits for a second admin; an identity that is an admin's is refused at once;
/// narrowing a client is immediate and widening it a proposal.
#[tokio::test]
async fn clients_are_proposed_approved_narrowed_and_widened() {
    let app = admin_app().await;
    let current = as_(
        &app,
        "admin",
        Method::GET,
        "/admin/v1/clients/partner-a-treasury",
        &[],
        None,
    )
    .await;
    assert_eq!(current.status, 200, "{}", current.body);
    assert_eq!(current.etag.as_deref(), Some("\"1\""));
    let lifetime = current.body["max_lifetime_s"].as_i64().unwrap();

    let new_client = json!({
        "id": "partner-a-new",
        "partner": "partner-a",
        "name": "Partner A, new system",
        "auth_method": "tls_client_auth",
        "tls_subject_dn": "CN=partner-a-new,O=Tessera Dev",
        "tls_anchor": "server",
        "grant_types": ["client_credentials"],
        "max_lifetime_s": 300,
        "audiences": {"https://ledger.test": ["ledger:read"]},
    });
    let proposals_before = count(&app, "proposals").await;
    for (change, status, field) in [
        (
            json!({"tls_subject_dn": "CN=admin,O=Tessera Dev"}),
            409,
            None,
        ),
        // Another spelling of the admin's name is the same name.
        (
            json!({"tls_subject_dn": "cn = admin , o=Tessera Dev"}),
            409,
            None,
        ),
        (
            json!({"tls_subject_dn": "not a name"}),
            422,
            Some("tls_subject_dn"),
        ),
        (json!({"auth_method": "password"}), 422, Some("auth_method")),
        (
            json!({"audiences": {"https://nowhere.test": ["x"]}}),
            422,
            Some("audiences"),
        ),
        (
            json!({"grant_types": ["implicit"]}),
            422,
            Some("grant_types"),
        ),
        (json!({"tls_anchor": null}), 422, Some("tls_anchor")),
    ] {
        let mut invalid = new_client.clone();
        for (key, value) in change.as_object().unwrap() {
            invalid[key] = value.clone();
        }
        let reply = as_(
            &app,
            "admin",
            Method::POST,
            "/admin/v1/clients",
            &[],
            Some(invalid),
        )
        .await;
        assert_eq!(reply.status, status, "{change}: {}", reply.body);
        if let Some(field) = field {
            assert_eq!(reply.body["field"], field, "{change}");
        }
    }
    assert_eq!(count(&app, "proposals").await, proposals_before);

    let proposed = as_(
        &app,
        "admin",
        Method::POST,
        "/admin/v1/clients",
        &[],
        Some(new_client),
    )
    .await;
    assert_eq!(proposed.status, 202, "{}", proposed.body);
    let path = "/admin/v1/clients/partner-a-new";
    assert_eq!(
        as_(&app, "admin", Method::GET, path, &[], None)
            .await
            .status,
        404
    );
    let approve = format!(
        "/admin/v1/proposals/{}/approve",
        proposed.body["id"].as_str().unwrap()
    );
    let approved = as_(&app, "admin-2", Method::POST, &approve, &[], None).await;
    assert_eq!(approved.status, 200, "{}", approved.body);
    let created = as_(&app, "admin", Method::GET, path, &[], None).await;
    assert_eq!(created.status, 200);
    assert_eq!(
        created.body["audiences"],
        json!({"https://ledger.test": ["ledger:read"]})
    );

    let treasury = "/admin/v1/clients/partner-a-treasury";
    let shorter = as_(
        &app,
        "admin",
        Method::PATCH,
        treasury,
        &[("if-match", "\"1\"")],
        Some(json!({"max_lifetime_s": lifetime - 60})),
    )
    .await;
    assert_eq!(shorter.status, 200, "{}", shorter.body);
    assert_eq!(shorter.etag.as_deref(), Some("\"2\""));
    let stale = as_(
        &app,
        "admin",
        Method::PATCH,
        treasury,
        &[("if-match", "\"1\"")],
        Some(json!({"max_lifetime_s": 60})),
    )
    .await;
    assert_problem(&stale, 412, "urn:tessera:problem:stale-version");
    let longer = as_(
        &app,
        "admin",
        Method::PATCH,
        treasury,
        &[("if-match", "\"2\"")],
        Some(json!({"max_lifetime_s": lifetime})),
    )
    .await;
    assert_eq!(longer.status, 202, "{}", longer.body);
    assert_eq!(
        longer.body["diff"]["widens"],
        json!(["longer lifetime cap"])
    );
    let unchanged = as_(&app, "admin", Method::GET, treasury, &[], None).await;
    assert_eq!(unchanged.body["max_lifetime_s"], lifetime - 60);
    assert_eq!(admin_records(&app, "client_updated").await.len(), 1);
    assert_eq!(admin_records(&app, "proposal_created").await.len(), 2);
}

#[tokio::test]
async fn audiences_are_created_narrowed_at_once_and_widened_by_proposal() {
    let app = admin_app().await;
    let created = as_(
        &app,
        "admin",
        Method::POST,
        "/admin/v1/audiences",
        &[],
        Some(json!({
            "id": "https://analytics.test",
            "name": "Analytics",
            "scopes": ["analytics:read"],
            "max_lifetime_s": 300,
            "region": "eu",
        })),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let path = "/admin/v1/audiences/https://analytics.test";
    let read = as_(&app, "admin-2", Method::GET, path, &[], None).await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.body["require_certificate_bound"], true);
    for (body, field) in [
        (json!({"kind": "settlement"}), "kind"),
        (json!({"max_lifetime_s": 0}), "max_lifetime_s"),
        (json!({"scopes": []}), "scopes"),
    ] {
        let invalid = as_(
            &app,
            "admin",
            Method::PATCH,
            path,
            &[("if-match", "\"1\"")],
            Some(body),
        )
        .await;
        assert_problem(&invalid, 422, "urn:tessera:problem:invalid-field");
        assert_eq!(invalid.body["field"], field);
    }
    let narrowed = as_(
        &app,
        "admin",
        Method::PATCH,
        path,
        &[("if-match", "\"1\"")],
        Some(json!({"max_lifetime_s": 120})),
    )
    .await;
    assert_eq!(narrowed.status, 200, "{}", narrowed.body);
    assert_eq!(narrowed.body["version"], 2);
    let widened = as_(
        &app,
        "admin",
        Method::PATCH,
        path,
        &[("if-match", "\"2\"")],
        Some(json!({"require_certificate_bound": false})),
    )
    .await;
    assert_eq!(widened.status, 202, "{}", widened.body);
    assert_eq!(
        widened.body["diff"]["widens"],
        json!(["bearer tokens accepted"])
    );
    let approve = format!(
        "/admin/v1/proposals/{}/approve",
        widened.body["id"].as_str().unwrap()
    );
    assert_eq!(
        as_(&app, "admin-2", Method::POST, &approve, &[], None)
            .await
            .status,
        200
    );
    let after = as_(&app, "admin", Method::GET, path, &[], None).await;
    assert_eq!(
        (
            after.body["require_certificate_bound"].as_bool(),
            after.etag.as_deref()
        ),
        (Some(false), Some("\"3\""))
    );
    let created_record = &admin_records(&app, "audience_created").await[0];
    assert_eq!(created_record["audience"], "https://analytics.test");
    assert_eq!(admin_records(&app, "audience_updated").await.len(), 1);
}

/// Another node on the same database, as a second server process would be.
async fn second_node(app: &TestApp) -> std::net::SocketAddr {
    let pool = tessera::storage::pool(&app.settings.database).unwrap();
    let node = tessera::startup::Application::build(&app.settings, pool)
        .await
        .unwrap();
    let addr = node.local_addr();
    tokio::spawn(node.run());
    addr
}

/// A change made on one node reaches the other within 2 s, although registry entries are
/// cached for a minute: the change's commit notifies every node.
#[tokio::test]
async fn a_change_reaches_every_node_within_two_seconds() {
    let app = spawn_app_on(TestDatabase::create().await, |settings| {
        settings.registry.cache_ttl = std::time::Duration::from_secs(60);
    })
    .await;
    register_admin(&app, "admin", &[Role::Editor]).await;
    let other = second_node(&app).await;
    let token_on_other = || async {
        app.client(Some("partner-a"))
            .post(format!("https://localhost:{}/oauth2/token", other.port()))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "partner-a-treasury"),
                ("resource", "https://ledger.test"),
            ])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    // The other node has the client cached now.
    assert_eq!(token_on_other().await, 200);
    let suspended = as_(
        &app,
        "admin",
        Method::PATCH,
        "/admin/v1/clients/partner-a-treasury",
        &[("if-match", "\"1\"")],
        Some(json!({"status": "suspended"})),
    )
    .await;
    assert_eq!(suspended.status, 200, "{}", suspended.body);
    let changed = std::time::Instant::now();
    loop {
        if token_on_other().await != 200 {
            break;
        }
        assert!(
            changed.elapsed() < std::time::Duration::from_secs(2),
            "the other node still issues tokens to the suspended client"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// "Why was I denied": the token endpoint's refusal carries its request id, and an auditor
/// reads the decision by it, with the reason, the policy set's hash and the determining
/// policies; the trail pages by time, client and outcome.
#[tokio::test]
async fn an_auditor_finds_a_denial_by_its_request_id_and_pages_through_the_trail() {
    let policies =
        crate::helpers::scratch_dir().join(format!("policies-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&policies).unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for file in ["schema.cedarschema", "tessera.cedar"] {
        std::fs::copy(shipped.join(file), policies.join(file)).unwrap();
    }
    std::fs::write(
        policies.join("closed.cedar"),
        r#"@id("settlement-closed") forbid (principal, action, resource) when { resource.kind == "settlement" };"#,
    )
    .unwrap();
    let app = spawn_app_on(TestDatabase::create().await, |settings| {
        settings.policy_dir = policies.clone();
    })
    .await;
    register_admin(&app, "admin", &[Role::Auditor]).await;
    register_admin(&app, "admin-2", &[Role::Approver]).await;
    for _ in 0..3 {
        app.token("partner-a", "partner-a-treasury", "https://ledger.test")
            .await;
    }
    let refused = app
        .client(Some("partner-a"))
        .post(app.url("/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "partner-a-treasury"),
            ("resource", "https://settlement.test"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let request_id = refused.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let error: Value = refused.json().await.unwrap();
    assert!(error["error"].is_string(), "RFC 6749 shape: {error}");

    let why = as_(
        &app,
        "admin",
        Method::GET,
        &format!("/admin/v1/audit?request_id={request_id}"),
        &[],
        None,
    )
    .await;
    assert_eq!(why.status, 200, "{}", why.body);
    let records = why.body["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{}", why.body);
    let denial = &records[0];
    assert_eq!(denial["outcome"], "deny");
    assert_eq!(denial["request_id"], request_id.as_str());
    assert!(
        denial["reason"]
            .as_str()
            .is_some_and(|reason| !reason.is_empty())
    );
    assert!(
        denial["policy_set_hash"]
            .as_str()
            .is_some_and(|hash| !hash.is_empty())
    );
    assert_eq!(denial["policies"], json!(["settlement-closed"]));

    // Only auditors read the trail.
    let not_auditor = as_(&app, "admin-2", Method::GET, "/admin/v1/audit", &[], None).await;
    assert_problem(&not_auditor, 403, "urn:tessera:problem:forbidden");

    // Page through the client's allowed issuances one by one.
    let mut seen = Vec::new();
    let mut path =
        "/admin/v1/audit?client=partner-a-treasury&outcome=allow&kind=token_issued&limit=1"
            .to_owned();
    loop {
        let page = as_(&app, "admin", Method::GET, &path, &[], None).await;
        assert_eq!(page.status, 200, "{}", page.body);
        for record in page.body["records"].as_array().unwrap() {
            seen.push(record["jti"].as_str().unwrap().to_owned());
        }
        match page.body["next"].as_str() {
            Some(next) => {
                path = format!(
                    "/admin/v1/audit?client=partner-a-treasury&outcome=allow&kind=token_issued&limit=1&after={next}"
                )
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    seen.dedup();
    assert_eq!(seen.len(), 3);

    let invalid = as_(
        &app,
        "admin",
        Method::GET,
        "/admin/v1/audit?since=yesterday",
        &[],
        None,
    )
    .await;
    assert_problem(&invalid, 422, "urn:tessera:problem:invalid-field");
    assert_eq!(invalid.body["field"], "since");
}

#[tokio::test]
async fn keys_are_listed_and_rotated_and_policy_decisions_are_dry_run() {
    let app = admin_app().await;
    let keys = as_(&app, "admin-2", Method::GET, "/admin/v1/keys", &[], None).await;
    assert_eq!(keys.status, 200, "{}", keys.body);
    let state_of = |keys: &Value, state: &str| {
        keys.as_array()
            .unwrap()
            .iter()
            .find(|key| key["state"] == state)
            .map(|key| key["kid"].as_str().unwrap().to_owned())
    };
    let next = state_of(&keys.body, "next").unwrap();
    assert!(keys.body[0]["age_s"].as_i64().is_some());
    assert!(keys.body[0].get("sealed_private_key").is_none());

    let refused = as_(
        &app,
        "admin-2",
        Method::POST,
        "/admin/v1/keys/rotate",
        &[],
        None,
    )
    .await;
    assert_problem(&refused, 403, "urn:tessera:problem:forbidden");
    let rotated = as_(
        &app,
        "admin",
        Method::POST,
        "/admin/v1/keys/rotate",
        &[],
        None,
    )
    .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    assert_eq!(rotated.body["activated"], next.as_str());
    let after = as_(&app, "admin", Method::GET, "/admin/v1/keys", &[], None).await;
    assert_eq!(state_of(&after.body, "active"), Some(next));
    assert_eq!(app.audited("key_rotated").await, 1);

    let policy = as_(&app, "admin-2", Method::GET, "/admin/v1/policy", &[], None).await;
    let hash = policy.body["policy_set_hash"].as_str().unwrap().to_owned();
    let decided = as_(
        &app,
        "admin-2",
        Method::POST,
        "/admin/v1/policy/decide",
        &[],
        Some(json!({
            "action": "issue",
            "client_id": "partner-a-treasury",
            "audience": "https://ledger.test",
            "scopes": ["ledger:read"],
        })),
    )
    .await;
    assert_eq!(decided.status, 200, "{}", decided.body);
    assert_eq!(decided.body["decision"], "allow");
    assert_eq!(decided.body["policy_set_hash"], hash.as_str());
    assert!(
        !decided.body["determining_policies"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        app.audited("token_issued").await,
        0,
        "a dry run issues nothing"
    );
    let unknown = as_(
        &app,
        "admin-2",
        Method::POST,
        "/admin/v1/policy/decide",
        &[],
        Some(json!({"action": "issue", "client_id": "nobody", "audience": "https://ledger.test"})),
    )
    .await;
    assert_problem(&unknown, 422, "urn:tessera:problem:invalid-field");
    assert_eq!(unknown.body["field"], "client_id");
}

/// The admin trust anchor is a setting: without it no certificate is an admin's, registered
/// or not; with it (here the dev CA, as in `dev`) the registered ones are.
#[tokio::test]
async fn admins_are_accepted_only_under_the_configured_admin_anchor() {
    let without = spawn_app().await;
    bootstrap_admin(&without, "admin", &[Role::Viewer]).await;
    let refused = as_(
        &without,
        "admin",
        Method::GET,
        "/admin/v1/whoami",
        &[],
        None,
    )
    .await;
    assert_problem(&refused, 401, "urn:tessera:problem:unauthenticated");
    assert_eq!(
        denials(&without).await,
        ["the certificate does not chain to the admin trust anchor"]
    );

    let with = spawn_app_on(TestDatabase::create().await, |settings| {
        settings.admin_client_ca = Some(crate::helpers::pki().ca_cert());
    })
    .await;
    bootstrap_admin(&with, "admin", &[Role::Viewer]).await;
    let accepted = as_(&with, "admin", Method::GET, "/admin/v1/whoami", &[], None).await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
}

/// `tessera admin call` against a running server: a table, JSON, a conditional update, and a
/// refusal that exits non-zero.
#[tokio::test]
async fn the_command_line_calls_the_admin_api() {
    let app = admin_app().await;
    let pki = crate::helpers::pki();
    let run = |args: Vec<String>| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tessera"));
        command
            .args(["admin", "call", "--url"])
            .arg(format!("https://localhost:{}", app.addr.port()))
            .arg("--cert")
            .arg(pki.client_cert("admin"))
            .arg("--key")
            .arg(pki.client_key("admin"))
            .arg("--ca")
            .arg(pki.ca_cert())
            .args(args)
            .env_clear()
            .kill_on_drop(true);
        async move {
            let output = command.output().await.unwrap();
            (
                output.status.success(),
                String::from_utf8(output.stdout).unwrap(),
                String::from_utf8(output.stderr).unwrap(),
            )
        }
    };
    let args = |list: &[&str]| list.iter().map(|arg| (*arg).to_owned()).collect::<Vec<_>>();

    let (ok, table, _) = run(args(&["GET", "partners"])).await;
    assert!(ok);
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("REGION"),
        "{table}"
    );
    assert!(
        table.lines().any(|line| line.starts_with("partner-a ")),
        "{table}"
    );

    let (ok, json, status) = run(args(&["GET", "/admin/v1/partners/partner-a", "--json"])).await;
    assert!(ok);
    assert!(status.contains("ETag \"1\""), "{status}");
    assert_eq!(
        serde_json::from_str::<Value>(&json).unwrap()["id"],
        "partner-a"
    );

    let rename = [
        "PATCH",
        "partners/partner-a",
        "--if-match",
        "1",
        "--data",
        r#"{"name":"Partner A plc"}"#,
    ];
    let (ok, _, status) = run(args(&rename)).await;
    assert!(ok, "{status}");
    assert_eq!(
        partner_row(&app, "partner-a").await.unwrap().0,
        "Partner A plc"
    );
    let (ok, refusal, _) = run(args(&rename)).await;
    assert!(!ok, "a stale update exits non-zero");
    assert_eq!(
        serde_json::from_str::<Value>(&refusal).unwrap()["status"],
        412
    );
}

/// More roles wait for a second admin, who may not be the one gaining them; suspension is
/// immediate and locks the admin out.
#[tokio::test]
async fn admin_roles_grow_only_by_approval_and_suspension_is_immediate() {
    let app = admin_app().await;
    let path = "/admin/v1/admins/admin-2";
    let more = as_(
        &app,
        "admin",
        Method::PATCH,
        path,
        &[("if-match", "\"1\"")],
        Some(json!({"roles": ["approver", "editor"]})),
    )
    .await;
    assert_eq!(more.status, 202, "{}", more.body);
    assert_eq!(more.body["diff"]["widens"], json!(["more roles"]));
    let approve = format!(
        "/admin/v1/proposals/{}/approve",
        more.body["id"].as_str().unwrap()
    );
    let own = as_(&app, "admin-2", Method::POST, &approve, &[], None).await;
    assert_problem(&own, 403, "urn:tessera:problem:forbidden");
    let me = as_(&app, "admin-2", Method::GET, "/admin/v1/whoami", &[], None).await;
    assert_eq!(me.body["roles"], json!(["approver"]));
    assert_eq!(
        denials(&app).await,
        ["an admin cannot decide a change of their own roles or status"]
    );

    let invalid = as_(
        &app,
        "admin",
        Method::PATCH,
        path,
        &[("if-match", "\"1\"")],
        Some(json!({"roles": ["root"]})),
    )
    .await;
    assert_problem(&invalid, 422, "urn:tessera:problem:invalid-field");
    assert_eq!(invalid.body["field"], "roles");

    let suspended = as_(
        &app,
        "admin",
        Method::PATCH,
        path,
        &[("if-match", "\"1\"")],
        Some(json!({"status": "suspended"})),
    )
    .await;
    assert_eq!(suspended.status, 200, "{}", suspended.body);
    assert_eq!(suspended.etag.as_deref(), Some("\"2\""));
    let locked_out = as_(&app, "admin-2", Method::GET, "/admin/v1/whoami", &[], None).await;
    assert_problem(&locked_out, 403, "urn:tessera:problem:forbidden");
    let record = &admin_records(&app, "admin_updated").await[0];
    assert_eq!(
        record["changes"]["diff"],
        json!({"active": {"before": true, "after": false}})
    );
}
