use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{ServerProcess, TestApp, seeded_database, spawn_app};

/// Runs `statement` with triggers off, as a superuser could: the tampering the chain must expose.
async fn tamper(pool: &PgPool, statement: &str) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn issue(client: &reqwest::Client, url: &str, client_id: &str) -> Value {
    client
        .post(url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("resource", "https://ledger.test"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn some_events(app: &TestApp, count: usize) {
    let client = app.client(Some("partner-a"));
    for index in 0..count {
        let client_id = if index % 3 == 0 {
            "partner-b-reconciliation"
        } else {
            "partner-a-treasury"
        };
        issue(&client, &app.url("/oauth2/token"), client_id).await;
    }
}

fn verified(
    result: Result<tessera::audit::VerifySummary, tessera::audit::Broken>,
) -> tessera::audit::VerifySummary {
    result.unwrap_or_else(|broken| panic!("audit trail broken: {broken}"))
}

#[tokio::test]
async fn chains_from_two_server_processes_verify_after_concurrent_mixed_load() {
    let db = seeded_database().await;
    let mut servers = [ServerProcess::start(&db.url), ServerProcess::start(&db.url)];
    let partner_a = crate::helpers::client_with(Some("partner-a"), &[&rustls::version::TLS13]);
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let client = partner_a.clone();
        let url = servers[worker % 2].url("/oauth2/token");
        let introspect = servers[(worker + 1) % 2].url("/oauth2/introspect");
        tasks.push(tokio::spawn(async move {
            for round in 0..25 {
                // Issued, refused (wrong certificate for the client), and introspected.
                let client_id = if round % 4 == 0 {
                    "partner-b-reconciliation"
                } else {
                    "partner-a-treasury"
                };
                let body = issue(&client, &url, client_id).await;
                if let Some(token) = body["access_token"].as_str() {
                    client
                        .post(&introspect)
                        .form(&[("client_id", "partner-a-treasury"), ("token", token)])
                        .send()
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for server in &mut servers {
        server.signal("-TERM");
        assert!(server.wait().success());
    }
    let logs: Vec<String> = servers
        .iter()
        .flat_map(|server| server.log.lock().unwrap().clone())
        .filter(|line| !line.contains("\"INFO\""))
        .collect();
    let pool = PgPool::connect(&db.url).await.unwrap();
    let settings = crate::helpers::process_settings(&db.url);
    let summary = verified(
        tessera::audit::verify_all(&pool, &settings.keys, &settings.audit)
            .await
            .unwrap(),
    );
    assert_eq!(summary.chains, 2);
    // 8 workers × 25 rounds, every fourth refused: 144 issued and introspected, 56 refused.
    assert_eq!(summary.records, 144 + 144 + 56);
    assert!(
        summary.checkpoints >= 2,
        "each node signs its head when it stops: {logs:#?}"
    );
}

#[tokio::test]
async fn altering_deleting_or_inserting_records_is_detected_and_located() {
    let cases = [
        (
            "UPDATE audit_events SET record = replace(record, 'partner-a-treasury', 'partner-b-reconciliation') WHERE seq = 2",
            2,
            "hash does not match the record",
        ),
        (
            "UPDATE audit_events SET client_id = 'someone-else' WHERE seq = 3",
            3,
            "columns disagree with the hashed record",
        ),
        ("DELETE FROM audit_events WHERE seq = 4", 5, "records 4..4 are missing"),
        (
            "INSERT INTO audit_events (chain_id, seq, record, prev_hash, hash, recorded_at, kind, outcome)
             SELECT chain_id, seq + 1, record, hash, hash, now(), kind, outcome
               FROM audit_events WHERE seq = (SELECT max(seq) FROM audit_events)",
            7,
            "hash does not match the record",
        ),
    ];
    for (statement, seq, problem) in cases {
        // Each case tampers with its own, intact trail.
        let fresh = spawn_app().await;
        some_events(&fresh, 6).await;
        verified(
            tessera::audit::verify_all(&fresh.pool, &fresh.settings.keys, &fresh.settings.audit)
                .await
                .unwrap(),
        );
        let chain: uuid::Uuid = sqlx::query_scalar("SELECT chain_id FROM audit_events LIMIT 1")
            .fetch_one(&fresh.pool)
            .await
            .unwrap();
        tamper(&fresh.pool, statement).await;
        let broken =
            tessera::audit::verify_all(&fresh.pool, &fresh.settings.keys, &fresh.settings.audit)
                .await
                .unwrap()
                .expect_err(statement);
        assert_eq!(
            (broken.chain_id, broken.seq, broken.problem.as_str()),
            (chain, seq, problem)
        );
    }
}

#[tokio::test]
async fn the_table_refuses_update_and_delete_and_the_server_role_cannot_lift_that() {
    let app = spawn_app().await;
    some_events(&app, 1).await;
    for statement in [
        "UPDATE audit_events SET outcome = 'allow'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ] {
        let error = sqlx::query(statement).execute(&app.pool).await.unwrap_err();
        assert!(
            error.to_string().contains("append-only"),
            "{statement}: {error}"
        );
    }
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL ROLE tessera_app")
        .execute(&mut *tx)
        .await
        .unwrap();
    let error =
        sqlx::query("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update_delete")
            .execute(&mut *tx)
            .await
            .unwrap_err();
    assert!(error.to_string().contains("must be owner"), "{error}");
}

#[tokio::test]
async fn an_export_verifies_with_only_the_published_key_and_fails_after_a_one_byte_change() {
    let app = crate::helpers::spawn_app_on(crate::helpers::TestDatabase::create().await, |s| {
        s.audit.checkpoint_every_records = 1;
    })
    .await;
    some_events(&app, 9).await;
    crate::helpers::wait_until_signed(&app.pool).await;
    let signer = tessera::audit::AuditSigner::load(&app.pool, &app.settings.keys)
        .await
        .unwrap();
    let filter = crate::helpers::export_window(Some("partner-b-reconciliation"));
    let mut exported = Vec::new();
    let summary = tessera::audit::export(&app.pool, &signer, &filter, &mut exported)
        .await
        .unwrap();
    assert_eq!(summary.records, 3, "only partner-b's records in full");
    assert!(summary.links > 0, "the others as bare links");
    assert_eq!(summary.checkpoints, 1);

    // The auditor has the file and the published key set, nothing else.
    let jwks = app
        .client(None)
        .get(app.url("/audit/jwks.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let dir = crate::helpers::scratch_dir().join(uuid::Uuid::new_v4().to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let (file, key) = (dir.join("export.jsonl"), dir.join("audit-jwks.json"));
    std::fs::write(&file, &exported).unwrap();
    std::fs::write(&key, &jwks).unwrap();
    let verify = |file: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["audit", "verify-export"])
            .arg(file)
            .arg("--key")
            .arg(&key)
            .env_clear()
            .output()
            .unwrap()
    };
    let output = verify(&file);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("export verifies: 3 records"));

    // One byte of one exported record's client id.
    let text = String::from_utf8(exported).unwrap();
    let position = text.find("partner-b-reconciliation").unwrap();
    let mut bytes = text.into_bytes();
    bytes[position] = b'P';
    let tampered = dir.join("tampered.jsonl");
    std::fs::write(&tampered, &bytes).unwrap();
    let output = verify(&tampered);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not verify: line"), "{stderr}");
}

#[tokio::test]
async fn when_the_audit_insert_fails_the_token_request_gets_503_and_no_token() {
    let app = spawn_app().await;
    sqlx::query("ALTER TABLE audit_events RENAME TO audit_events_away")
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, body) = app
        .client_credentials(
            Some("partner-a"),
            "partner-a-treasury",
            &[("resource", "https://ledger.test")],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable"))
    );
    assert!(body.get("access_token").is_none());

    sqlx::query("ALTER TABLE audit_events_away RENAME TO audit_events")
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, _) = app
        .client_credentials(
            Some("partner-a"),
            "partner-a-treasury",
            &[("resource", "https://ledger.test")],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(app.audited("token_issued").await, 1);
    verified(
        tessera::audit::verify_all(&app.pool, &app.settings.keys, &app.settings.audit)
            .await
            .unwrap(),
    );
}

#[tokio::test]
async fn a_server_killed_under_load_leaves_no_token_without_its_committed_record() {
    let db = seeded_database().await;
    let server = ServerProcess::start(&db.url);
    let url = server.url("/oauth2/token");
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = crate::helpers::client_with(Some("partner-a"), &[&rustls::version::TLS13]);
        let url = url.clone();
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok(response) = client
                    .post(&url)
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("client_id", "partner-a-treasury"),
                        ("resource", "https://ledger.test"),
                    ])
                    .send()
                    .await
                else {
                    break;
                };
                let Ok(body) = response.json::<Value>().await else {
                    break;
                };
                if let Some(token) = body["access_token"].as_str() {
                    let claims: Value = jsonwebtoken::dangerous::insecure_decode(token)
                        .unwrap()
                        .claims;
                    received
                        .lock()
                        .unwrap()
                        .push(claims["jti"].as_str().unwrap().to_owned());
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.signal("-KILL");
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    let received = received.lock().unwrap().clone();
    assert!(
        received.len() > 50,
        "the load did not get going: {}",
        received.len()
    );
    let pool = PgPool::connect(&db.url).await.unwrap();
    let recorded: HashSet<String> =
        sqlx::query_scalar("SELECT jti FROM audit_events WHERE kind = 'token_issued'")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let unrecorded: Vec<&String> = received
        .iter()
        .filter(|jti| !recorded.contains(*jti))
        .collect();
    assert!(
        unrecorded.is_empty(),
        "tokens without audit records: {unrecorded:?}"
    );
    let settings = crate::helpers::process_settings(&db.url);
    verified(
        tessera::audit::verify_all(&pool, &settings.keys, &settings.audit)
            .await
            .unwrap(),
    );
}

#[tokio::test]
async fn pruning_goes_only_to_an_old_checkpoint_and_the_rest_still_verifies() {
    let app = spawn_app().await;
    some_events(&app, 5).await;
    let signer = tessera::audit::AuditSigner::load(&app.pool, &app.settings.keys)
        .await
        .unwrap();
    let (chain, seq, hash): (uuid::Uuid, i64, Vec<u8>) = sqlx::query_as(
        "SELECT chain_id, seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1 OFFSET 2",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    signer
        .checkpoint(&app.pool, chain, seq, &hash.try_into().unwrap())
        .await
        .unwrap();
    // The database owner's retention bounds what pruning may remove.
    sqlx::query("UPDATE audit_retention SET minimum = interval '1 day'")
        .execute(&app.pool)
        .await
        .unwrap();
    let retention = Duration::from_secs(86_400);
    // A fresh checkpoint is inside the retention period: nothing goes.
    assert_eq!(
        tessera::audit::prune(&app.pool, retention, &app.settings.keys)
            .await
            .unwrap(),
        0
    );
    tamper(
        &app.pool,
        &format!(
            "UPDATE audit_checkpoints SET signed_at = now() - interval '3 days' WHERE seq = {seq}"
        ),
    )
    .await;
    assert_eq!(
        tessera::audit::prune(&app.pool, retention, &app.settings.keys)
            .await
            .unwrap(),
        seq
    );
    let summary = verified(
        tessera::audit::verify_all(&app.pool, &app.settings.keys, &app.settings.audit)
            .await
            .unwrap(),
    );
    assert_eq!(summary.records, 5 - seq as u64);
}
