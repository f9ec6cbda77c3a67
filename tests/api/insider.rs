//! What someone holding the application role (`tessera_app`) can attempt against keys and the
//! audit trail, each attempted for real through a login role that is a member of it.

use std::str::FromStr;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

use crate::helpers::{TestApp, TestDatabase, spawn_app, spawn_app_on};

/// A login role that is a member of `tessera_app`, connected to the app's database. Roles are
/// cluster-wide, so each test makes its own.
struct Insider {
    role: String,
    pool: PgPool,
    admin: PgPool,
}

impl Insider {
    async fn join(app_pool: &PgPool, database_url: &str) -> Self {
        let role = format!("insider_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {role} LOGIN IN ROLE tessera_app"
        )))
        .execute(app_pool)
        .await
        .unwrap();
        let options = PgConnectOptions::from_str(database_url)
            .unwrap()
            .username(&role)
            .password("");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .unwrap();
        let user: String = sqlx::query_scalar("SELECT current_user::text")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(user, role);
        Self {
            role,
            pool,
            admin: app_pool.clone(),
        }
    }

    async fn run(&self, statement: &str) -> Result<u64, sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(&self.pool)
            .await
            .map(|done| done.rows_affected())
    }

    async fn leave(self) {
        self.pool.close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE {}", self.role)))
            .execute(&self.admin)
            .await
            .unwrap();
    }
}

fn database_url(app: &TestApp) -> String {
    use secrecy::ExposeSecret;
    app.settings.database.url.expose_secret().to_owned()
}

/// The attacker's own ES256 key: its PKCS#8 and public JWK.
fn attacker_es256(kid: &str) -> (Vec<u8>, Value) {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = pair.public_key().as_ref();
    let jwk = json!({
        "kty": "EC", "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        "kid": kid, "alg": "ES256", "use": "sig",
    });
    (pkcs8.as_ref().to_vec(), jwk)
}

/// The attacker's own Ed25519 audit key, inserted as the newest `audit_keys` row.
async fn insert_attacker_audit_key(insider: &Insider, kid: &str) -> jsonwebtoken::EncodingKey {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let jwk = json!({
        "kty": "OKP", "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        "kid": kid, "alg": "EdDSA", "use": "sig",
    });
    sqlx::query(
        "INSERT INTO audit_keys (kid, public_jwk, sealed_private_key, wrapped_data_key, kek_id,
                                 created_at)
         VALUES ($1, $2, '\\x00', '\\x00', 'test', now() + interval '1 day')",
    )
    .bind(kid)
    .bind(jwk)
    .execute(&insider.pool)
    .await
    .unwrap();
    jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref())
}

fn sign(key: &jsonwebtoken::EncodingKey, kid: &str, typ: &str, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    header.typ = Some(typ.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

async fn metric(app: &TestApp, table: &str) -> u64 {
    let text = app
        .client(None)
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("tessera_unauthenticated_keys_total{{table=\"{table}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |value| value.trim().parse().unwrap())
}

async fn published_kids(app: &TestApp, path: &str) -> Vec<String> {
    let jwks: Value = app
        .client(None)
        .get(app.url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["kid"].as_str().unwrap().to_owned())
        .collect()
}

async fn verify(app: &TestApp) -> Result<tessera::audit::VerifySummary, tessera::audit::Broken> {
    tessera::audit::verify_all(&app.pool, &app.settings.keys, &app.settings.audit)
        .await
        .unwrap()
}

/// `tessera audit verify` run beside the app with the app's settings.
fn audit_verify_command(app: &TestApp) -> std::process::Output {
    use secrecy::ExposeSecret;
    let pki = crate::helpers::pki();
    let kek =
        base64::engine::general_purpose::STANDARD.encode(app.settings.keys.kek.key.expose_secret());
    std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["audit", "verify"])
        .env_clear()
        .env("TESSERA_SERVER__CERT", pki.server_cert())
        .env("TESSERA_SERVER__KEY", pki.server_key())
        .env("TESSERA_SERVER__CLIENT_CA", pki.ca_cert())
        .env("TESSERA_TOKENS__ISSUER", crate::helpers::ISSUER)
        .env("TESSERA_KEYS__KEK_ID", &app.settings.keys.kek.id)
        .env("TESSERA_KEYS__KEK", kek)
        .env("DATABASE_URL", database_url(app))
        .output()
        .unwrap()
}

/// `tessera audit verify --key` as an auditor runs it: a pinned copy of the published audit
/// key set and the database, no key-encryption key.
async fn audit_verify_pinned(app: &TestApp, jwks: Option<&Value>) -> std::process::Output {
    let published: Value = app
        .client(None)
        .get(app.url("/audit/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let file = crate::helpers::scratch_dir().join(format!("{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, jwks.unwrap_or(&published).to_string()).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["audit", "verify", "--key"])
        .arg(&file)
        .env_clear()
        .env("DATABASE_URL", database_url(app))
        .output()
        .unwrap()
}

async fn some_events(app: &TestApp, count: usize) {
    for _ in 0..count {
        app.token("partner-a", "partner-a-treasury", "https://ledger.test")
            .await;
    }
}

#[tokio::test]
async fn a_signing_key_the_database_role_writes_is_neither_published_nor_accepted() {
    let db = TestDatabase::create().await;
    let app = spawn_app_on(db, |settings| {
        settings.keys.refresh_interval = std::time::Duration::from_millis(100);
    })
    .await;
    let insider = Insider::join(&app.pool, &database_url(&app)).await;
    let before = metric(&app, "signing_keys").await;

    // A retired key still "published" whose public half is the attacker's.
    let kid = format!("forged-{}", uuid::Uuid::new_v4().simple());
    let (pkcs8, jwk) = attacker_es256(&kid);
    let inserted = insider
        .run(&format!(
            "INSERT INTO signing_keys (kid, algorithm, public_jwk, sealed_private_key,
                                       wrapped_data_key, kek_id, state, publish_until)
             VALUES ('{kid}', 'ES256', '{jwk}', '\\x00', '\\x00', 'test', 'retired',
                     now() + interval '1 day')"
        ))
        .await;
    assert_eq!(inserted.unwrap(), 1, "the app role may write signing_keys");
    // And a genuine published key whose public half is swapped for the attacker's.
    let next: String = sqlx::query_scalar("SELECT kid FROM signing_keys WHERE state = 'next'")
        .fetch_one(&insider.pool)
        .await
        .unwrap();
    let mut swapped = jwk.clone();
    swapped["kid"] = json!(next);
    insider
        .run(&format!(
            "UPDATE signing_keys SET public_jwk = '{swapped}' WHERE kid = '{next}'"
        ))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;

    let published = published_kids(&app, "/jwks.json").await;
    assert!(!published.contains(&kid), "{published:?}");
    assert!(!published.contains(&next), "{published:?}");
    let genuine = app
        .token("partner-a", "partner-a-treasury", "https://ledger.test")
        .await;
    assert!(published.contains(&jsonwebtoken::decode_header(&genuine).unwrap().kid.unwrap()));

    // A token with a genuine token's claims, signed with the attacker's key, under either kid.
    let mut claims: Value = jsonwebtoken::dangerous::insecure_decode::<Value>(&genuine)
        .unwrap()
        .claims;
    let key = jsonwebtoken::EncodingKey::from_ec_der(&pkcs8);
    for forged_kid in [&kid, &next] {
        claims["jti"] = json!(uuid::Uuid::new_v4().to_string());
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(forged_kid.clone());
        header.typ = Some("at+jwt".into());
        let forged = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        let (status, body) = app
            .post_form(
                Some("resource-server"),
                "/oauth2/introspect",
                &[("client_id", "ledger-rs"), ("token", &forged)],
            )
            .await;
        assert_eq!((status, &body["active"]), (200, &json!(false)), "{body}");
    }
    assert!(
        metric(&app, "signing_keys").await >= before + 2,
        "both refused rows are counted"
    );
    insider.leave().await;
}

#[tokio::test]
async fn a_tampered_next_key_is_replaced_instead_of_promoted() {
    let app = spawn_app().await;
    let insider = Insider::join(&app.pool, &database_url(&app)).await;
    let next: String = sqlx::query_scalar("SELECT kid FROM signing_keys WHERE state = 'next'")
        .fetch_one(&insider.pool)
        .await
        .unwrap();
    insider
        .run(&format!(
            "UPDATE signing_keys SET sealed_private_key = '\\x00' WHERE kid = '{next}'"
        ))
        .await
        .unwrap();
    let max_lifetime = app.settings.tokens.max_lifetime;
    let error = tessera::service::keys::rotate(&app.pool, &app.settings.keys, max_lifetime, false)
        .await
        .unwrap_err();
    assert!(error.to_string().contains(&next), "{error}");
    let active = tessera::crypto::keys::KeyRing::load(&app.pool, app.settings.keys.clone())
        .await
        .unwrap()
        .current()
        .active
        .kid
        .clone();
    assert_ne!(active, next);

    let rotation =
        tessera::service::keys::rotate(&app.pool, &app.settings.keys, max_lifetime, false)
            .await
            .unwrap()
            .unwrap();
    assert_ne!(rotation.activated, next);
    let ring = tessera::crypto::keys::KeyRing::load(&app.pool, app.settings.keys.clone())
        .await
        .unwrap();
    assert_eq!(ring.current().active.kid, rotation.activated);
    insider.leave().await;
}

#[tokio::test]
async fn a_bogus_newest_audit_key_neither_stops_a_node_nor_signs_for_it() {
    let db = TestDatabase::create().await;
    let pool = PgPool::connect(&db.url).await.unwrap();
    let insider = Insider::join(&pool, &db.url).await;
    // A real audit key exists (an earlier node), then the insider adds a newer one.
    let settings = crate::helpers::test_settings(&db.url);
    tessera::audit::AuditSigner::load(&pool, &settings.keys)
        .await
        .unwrap();
    let kid = format!("audit-forged-{}", uuid::Uuid::new_v4().simple());
    insert_attacker_audit_key(&insider, &kid).await;
    insider.leave().await;
    pool.close().await;

    let app = spawn_app_on(db, |adjusted| adjusted.keys = settings.keys.clone()).await;
    some_events(&app, 2).await;
    let signer = tessera::audit::AuditSigner::load(&app.pool, &app.settings.keys)
        .await
        .unwrap();
    let (chain, seq, hash): (uuid::Uuid, i64, Vec<u8>) =
        sqlx::query_as("SELECT chain_id, seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    signer
        .checkpoint(&app.pool, chain, seq, &hash.try_into().unwrap())
        .await
        .unwrap();
    let signers: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT kid FROM audit_checkpoints UNION SELECT kid FROM audit_chains",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(!signers.is_empty());
    assert!(!signers.contains(&kid), "{signers:?}");
    assert!(
        !published_kids(&app, "/audit/jwks.json")
            .await
            .contains(&kid)
    );
    assert!(metric(&app, "audit_keys").await >= 1);
    verify(&app).await.unwrap();
}

#[tokio::test]
async fn the_database_role_cannot_choose_the_retention_backdate_a_checkpoint_or_lift_append_only() {
    let app = spawn_app().await;
    some_events(&app, 3).await;
    let insider = Insider::join(&app.pool, &database_url(&app)).await;
    let (chain, seq, hash): (uuid::Uuid, i64, Vec<u8>) =
        sqlx::query_as("SELECT chain_id, seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_one(&insider.pool)
            .await
            .unwrap();
    let records = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_events")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    let before = records().await;

    // The retention is no argument, and its table is the owner's.
    let error = insider
        .run(&format!(
            "SELECT audit_prune('{chain}', {seq}, interval '0 seconds')"
        ))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("does not exist"), "{error}");
    let error = insider
        .run("UPDATE audit_retention SET minimum = interval '1 day'")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("permission denied"), "{error}");

    // An own audit key and a checkpoint it signed, back-dated to look old enough.
    let kid = format!("audit-forged-{}", uuid::Uuid::new_v4().simple());
    let key = insert_attacker_audit_key(&insider, &kid).await;
    let jws = sign(
        &key,
        &kid,
        "tessera-audit-checkpoint+jwt",
        &json!({
            "chain_id": chain.to_string(), "seq": seq,
            "head": URL_SAFE_NO_PAD.encode(&hash), "signed_at": 946_684_800,
        }),
    );
    sqlx::query(
        "INSERT INTO audit_checkpoints (chain_id, seq, head_hash, kid, jws, signed_at)
         VALUES ($1, $2, $3, $4, $5, '2000-01-01')",
    )
    .bind(chain)
    .bind(seq)
    .bind(&hash)
    .bind(&kid)
    .bind(&jws)
    .execute(&insider.pool)
    .await
    .unwrap();
    let error = insider
        .run(&format!("SELECT audit_prune('{chain}', {seq})"))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("older than the retention"),
        "{error}"
    );

    // Neither the old session setting nor the pruning role is available to the app role, and
    // a role that does hold DELETE cannot switch the append-only rule off either.
    for statement in [
        "SET ROLE tessera_audit_pruner",
        "SET session_replication_role = replica",
        "ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update_delete",
        "DELETE FROM audit_events",
    ] {
        let error = insider.run(statement).await.unwrap_err().to_string();
        assert!(
            error.contains("permission denied") || error.contains("must be owner"),
            "{statement}: {error}"
        );
    }
    // Nor can it make records it removed look pruned.
    let error = insider
        .run(&format!(
            "INSERT INTO audit_prunes (chain_id, through_seq) VALUES ('{chain}', {seq})"
        ))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("permission denied"), "{error}");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "GRANT DELETE ON audit_events TO {}",
        insider.role
    )))
    .execute(&app.pool)
    .await
    .unwrap();
    let mut session = insider.pool.acquire().await.unwrap();
    sqlx::query("SET tessera.audit_pruning = 'on'")
        .execute(&mut *session)
        .await
        .unwrap();
    let error = sqlx::query("DELETE FROM audit_events")
        .execute(&mut *session)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("append-only"), "{error}");
    drop(session);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "REVOKE DELETE ON audit_events FROM {}",
        insider.role
    )))
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(records().await, before);

    // Even once old enough by the owner's retention, a checkpoint no trusted key signed is no
    // place for the server's pruning to go to.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE audit_checkpoints SET signed_at = now() - interval '3 days' WHERE kid = $1",
    )
    .bind(&kid)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("UPDATE audit_retention SET minimum = interval '1 day'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        tessera::audit::prune(
            &app.pool,
            std::time::Duration::from_secs(86_400),
            &app.settings.keys,
        )
        .await
        .unwrap(),
        0
    );
    assert_eq!(records().await, before);
    let broken = verify(&app).await.unwrap_err();
    assert_eq!((broken.chain_id, broken.seq), (chain, seq));
    assert!(
        broken.problem.contains("not a trusted audit key"),
        "{broken}"
    );
    insider.leave().await;
}

#[tokio::test]
async fn an_export_vouches_with_a_trusted_checkpoint_even_beside_a_forged_one() {
    // The node signs its chain at the fifth record: after the forged checkpoints below.
    let app = crate::helpers::spawn_app_on(crate::helpers::TestDatabase::create().await, |s| {
        s.audit.checkpoint_every_records = 5;
    })
    .await;
    some_events(&app, 3).await;
    let insider = Insider::join(&app.pool, &database_url(&app)).await;
    let (chain, seq): (uuid::Uuid, i64) =
        sqlx::query_as("SELECT chain_id, seq FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_one(&insider.pool)
            .await
            .unwrap();
    let kid = format!("audit-forged-{}", uuid::Uuid::new_v4().simple());
    let key = insert_attacker_audit_key(&insider, &kid).await;
    for at in [seq - 1, seq] {
        let jws = sign(
            &key,
            &kid,
            "tessera-audit-checkpoint+jwt",
            &json!({ "chain_id": chain.to_string(), "seq": at, "head": "x", "signed_at": 1 }),
        );
        sqlx::query(
            "INSERT INTO audit_checkpoints (chain_id, seq, head_hash, kid, jws)
             SELECT chain_id, seq, hash, $3, $4 FROM audit_events WHERE chain_id = $1 AND seq = $2",
        )
        .bind(chain)
        .bind(at)
        .bind(&kid)
        .bind(&jws)
        .execute(&insider.pool)
        .await
        .unwrap();
    }
    insider.leave().await;
    // The node's own checkpoints come after the forged ones: export vouches with those.
    some_events(&app, 2).await;
    crate::helpers::wait_until_signed(&app.pool).await;

    let signer = tessera::audit::AuditSigner::load(&app.pool, &app.settings.keys)
        .await
        .unwrap();
    let filter = crate::helpers::export_window(None);
    let mut exported = Vec::new();
    tessera::audit::export(&app.pool, &signer, &filter, &mut exported)
        .await
        .unwrap();
    let jwks: jsonwebtoken::jwk::JwkSet = app
        .client(None)
        .get(app.url("/audit/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let summary = tessera::audit::verify_export(exported.as_slice(), &jwks)
        .unwrap_or_else(|problem| panic!("{problem}"));
    assert_eq!((summary.records, summary.checkpoints), (5, 1));
}

/// Stores a fabricated chain through the insider's connection.
async fn insert_fabricated_chain(insider: &Insider, chain: uuid::Uuid, count: i64) {
    for (seq, record, prev_hash, hash) in fabricated_chain(chain, count) {
        sqlx::query(
            "INSERT INTO audit_events (chain_id, seq, record, prev_hash, hash, recorded_at, kind,
                                       outcome, client_id)
             VALUES ($1, $2, $3, $4, $5, now(), 'token_issued', 'allow', 'partner-a-treasury')",
        )
        .bind(chain)
        .bind(seq)
        .bind(&record)
        .bind(prev_hash.as_slice())
        .bind(hash.as_slice())
        .execute(&insider.pool)
        .await
        .unwrap();
    }
}

/// A chain's records as a node would write them, with valid hashes.
fn fabricated_chain(chain: uuid::Uuid, count: i64) -> Vec<(i64, String, [u8; 32], [u8; 32])> {
    let mut head = tessera::audit::GENESIS;
    let now = time::OffsetDateTime::now_utc();
    (1..=count)
        .map(|seq| {
            let record = tessera::audit::AuditRecord {
                event_id: uuid::Uuid::new_v4().to_string(),
                chain_id: chain.to_string(),
                seq,
                recorded_at_us: i64::try_from(now.unix_timestamp_nanos() / 1_000).unwrap() + seq,
                node: "node-a/1".into(),
                kind: tessera::audit::EventKind::TokenIssued,
                outcome: tessera::audit::Outcome::Allow,
                details: tessera::audit::EventDetails {
                    client_id: Some("partner-a-treasury".into()),
                    ..Default::default()
                },
            }
            .canonical()
            .unwrap();
            let hash = tessera::audit::chained_hash(&head, &record);
            let row = (seq, record, head, hash);
            head = hash;
            row
        })
        .collect()
}

#[tokio::test]
async fn a_fabricated_chain_does_not_verify_even_with_an_own_registration() {
    let app = spawn_app().await;
    some_events(&app, 2).await;
    verify(&app).await.unwrap();
    let insider = Insider::join(&app.pool, &database_url(&app)).await;
    let chain = uuid::Uuid::new_v4();
    insert_fabricated_chain(&insider, chain, 3).await;
    let broken = verify(&app).await.unwrap_err();
    assert_eq!((broken.chain_id, broken.seq), (chain, 1));
    assert!(
        broken.problem.contains("not opened by a Tessera node"),
        "{broken}"
    );
    let output = audit_verify_command(&app);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "audit trail broken: chain {chain} at seq 1: the chain was not opened by a Tessera node"
        )),
        "{stderr}"
    );

    let kid = format!("audit-forged-{}", uuid::Uuid::new_v4().simple());
    let key = insert_attacker_audit_key(&insider, &kid).await;
    let jws = sign(
        &key,
        &kid,
        "tessera-audit-chain+jwt",
        &json!({ "chain_id": chain.to_string(), "node": "node-a/1", "opened_at": 1 }),
    );
    sqlx::query("INSERT INTO audit_chains (chain_id, node, kid, jws) VALUES ($1, $2, $3, $4)")
        .bind(chain)
        .bind("node-a/1")
        .bind(&kid)
        .bind(&jws)
        .execute(&insider.pool)
        .await
        .unwrap();
    let broken = verify(&app).await.unwrap_err();
    assert_eq!(broken.chain_id, chain);
    assert!(
        broken
            .problem
            .contains("chain registration is signed by a key that is not a trusted"),
        "{broken}"
    );
    let pinned = audit_verify_pinned(&app, None).await;
    let stderr = String::from_utf8_lossy(&pinned.stderr);
    assert!(!pinned.status.success());
    assert!(
        stderr.contains("chain registration is signed by a key that is not a trusted"),
        "{stderr}"
    );
    insider.leave().await;
}

#[tokio::test]
async fn verify_reports_every_chain_by_node_bounds_the_unsigned_tail_and_names_a_missing_chain() {
    let app = spawn_app().await;
    some_events(&app, 4).await;
    // A tool's chain: written, checkpointed when it stops.
    let signer = tessera::audit::AuditSigner::load(&app.pool, &app.settings.keys)
        .await
        .unwrap();
    let (tool, writer) = tessera::audit::AuditLog::start(
        app.pool.clone(),
        "tool-node".into(),
        8,
        signer,
        tessera::audit::CheckpointPolicy {
            every_records: 100,
            every: std::time::Duration::from_secs(60),
        },
        None,
    );
    for _ in 0..3 {
        tool.record(
            tessera::audit::EventKind::PolicyReloaded,
            tessera::audit::Outcome::Allow,
            tessera::audit::EventDetails::default(),
        )
        .await
        .unwrap();
    }
    writer.finish().await;

    let summary = verify(&app).await.unwrap();
    let nodes: Vec<(Option<&str>, u64, i64, u64)> = summary
        .report
        .iter()
        .map(|chain| {
            (
                chain.node.as_deref(),
                chain.records,
                chain.signed_through,
                chain.unsigned_tail,
            )
        })
        .collect();
    assert!(nodes.contains(&(Some("tool-node"), 3, 3, 0)), "{nodes:?}");
    let server = summary
        .report
        .iter()
        .find(|chain| chain.records == 4)
        .unwrap_or_else(|| panic!("{nodes:?}"));
    assert_eq!((server.signed_through, server.unsigned_tail), (0, 4));
    assert_eq!(summary.unsigned_tail, 4);
    assert!(
        server.to_string().contains("4 unsigned at the end"),
        "{server}"
    );
    let output = audit_verify_command(&app);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("(tool-node): records 1..3, signed through 3, 0 unsigned"),
        "{stdout}"
    );
    assert!(
        stdout.contains("4 records after the newest checkpoint"),
        "{stdout}"
    );
    let pinned = audit_verify_pinned(&app, None).await;
    assert!(
        pinned.status.success(),
        "{}",
        String::from_utf8_lossy(&pinned.stderr)
    );
    assert_eq!(pinned.stdout, output.stdout);
    // Pinning a set without the node's key trusts nothing the node signed.
    let pinned = audit_verify_pinned(&app, Some(&json!({ "keys": [] }))).await;
    let stderr = String::from_utf8_lossy(&pinned.stderr);
    assert!(!pinned.status.success());
    assert!(stderr.contains("not a trusted audit key"), "{stderr}");

    // A verifier that allows less unsigned tail than the server left refuses it.
    let mut strict = app.settings.audit.clone();
    strict.checkpoint_every_records = 1;
    strict.batch_max = 1;
    let broken = tessera::audit::verify_all(&app.pool, &app.settings.keys, &strict)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!((broken.chain_id, broken.seq), (server.chain_id, 1));
    assert!(
        broken
            .problem
            .contains("follow the newest signed checkpoint"),
        "{broken}"
    );

    // Every record of the tool's chain removed by someone who bypasses the triggers.
    let tool_chain = summary
        .report
        .iter()
        .find(|chain| chain.node.as_deref() == Some("tool-node"))
        .unwrap()
        .chain_id;
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_events WHERE chain_id = $1")
        .bind(tool_chain)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let broken = verify(&app).await.unwrap_err();
    assert_eq!((broken.chain_id, broken.seq), (tool_chain, 3));
    assert!(broken.problem.contains("the chain is missing"), "{broken}");
    let output = audit_verify_command(&app);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("the chain is missing"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn rewrap_moves_the_audit_key_too_and_a_node_starts_without_the_old_kek() {
    let app = spawn_app().await;
    some_events(&app, 1).await;
    let audit_kid: String = sqlx::query_scalar("SELECT kid FROM audit_keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let mut new_kek = crate::helpers::random_kek();
    new_kek.id = "kek-2".into();
    let mut rotating = app.settings.keys.clone();
    rotating.previous_keks = vec![rotating.kek.clone()];
    rotating.kek = new_kek.clone();
    let rewrapped = tessera::service::keys::rewrap(&app.pool, &rotating)
        .await
        .unwrap();
    assert_eq!(
        (
            rewrapped.signing_keys,
            rewrapped.audit_keys,
            rewrapped.refused
        ),
        (2, 1, 0)
    );

    let mut settings = app.settings.clone();
    settings.keys.kek = new_kek;
    settings.keys.previous_keks = Vec::new();
    let restarted = tessera::startup::Application::build(&settings, app.pool.clone())
        .await
        .unwrap();
    drop(restarted);
    let audit_keys: Vec<(String, String)> = sqlx::query_as("SELECT kid, kek_id FROM audit_keys")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(audit_keys, [(audit_kid, "kek-2".to_owned())]);
    tessera::audit::verify_all(&app.pool, &settings.keys, &settings.audit)
        .await
        .unwrap()
        .unwrap();
}

/// `tessera serve` with a complete environment but for what the test sets.
fn serve_failure(extra: &[(&str, &str)]) -> String {
    let pki = crate::helpers::pki();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TESSERA_SERVER__BIND", "127.0.0.1:0")
        .env("TESSERA_SERVER__CERT", pki.server_cert())
        .env("TESSERA_SERVER__KEY", pki.server_key())
        .env("TESSERA_SERVER__CLIENT_CA", pki.ca_cert())
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .env("TESSERA_TOKENS__ISSUER", crate::helpers::ISSUER)
        .env("TESSERA_KEYS__KEK_ID", "test")
        .env("TESSERA_KEYS__KEK", crate::helpers::PROCESS_KEK)
        .envs(extra.iter().copied())
        .output()
        .unwrap();
    assert!(!output.status.success(), "expected failure at start");
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn key_encryption_keys_in_the_wrong_shape_are_never_echoed() {
    let secret = "b2xkLWtleS1lbmNyeXB0aW9uLWtleS0wMTIzNDU2Nzg=";
    let file = crate::helpers::scratch_dir().join(format!("{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&file, format!("[keys]\nkek = \"{secret}\nkek_id = 1\n")).unwrap();
    let file = file.to_str().unwrap().to_owned();
    for (extra, setting) in [
        (
            vec![("TESSERA_KEYS__PREVIOUS_KEKS", secret)],
            "keys.previous_keks",
        ),
        (
            vec![(
                "TESSERA_KEYS__PREVIOUS_KEKS",
                &format!("{{old=[{secret}]}}") as &str,
            )],
            "keys.previous_keks",
        ),
        (
            vec![("TESSERA_KEYS__KEK", &format!("[{secret}]") as &str)],
            "keys.kek",
        ),
        (
            vec![("TESSERA_KEYS__KEK", &format!("{secret}!") as &str)],
            "keys.kek",
        ),
    ] {
        let stderr = serve_failure(&extra);
        assert!(!stderr.contains(secret), "{stderr}");
        assert!(stderr.contains(setting), "{stderr}");
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--config", &file])
        .env_clear()
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!output.status.success());
    assert!(!stderr.contains(secret), "{stderr}");
}

/// Export never signs what the database holds: records the database role fabricates — a whole
/// chain, or hash-valid records appended to a node's unsigned tail — are left out and counted,
/// and no checkpoint is written for them, so `audit verify` keeps refusing them.
#[tokio::test]
async fn an_export_signs_nothing_the_database_role_wrote() {
    let app = spawn_app().await;
    some_events(&app, 3).await;
    let insider = Insider::join(&app.pool, &database_url(&app)).await;
    let fabricated = uuid::Uuid::new_v4();
    insert_fabricated_chain(&insider, fabricated, 2).await;
    insider.leave().await;
    let checkpoints = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_checkpoints")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    let before = checkpoints().await;
    let signer = tessera::audit::AuditSigner::load(&app.pool, &app.settings.keys)
        .await
        .unwrap();
    let filter = crate::helpers::export_window(None);
    let mut exported = Vec::new();
    let summary = tessera::audit::export(&app.pool, &signer, &filter, &mut exported)
        .await
        .unwrap();
    assert_eq!(
        summary.records, 0,
        "nothing a node signed covers these records yet"
    );
    assert_eq!(
        summary.unsigned, 5,
        "the node's 3 unsigned records and the 2 fabricated"
    );
    assert_eq!(checkpoints().await, before, "export signed a checkpoint");
    let broken = verify(&app).await.unwrap_err();
    assert_eq!(broken.chain_id, fabricated);
}
