//! An unauthenticated caller must not fail or slow anyone else's requests, nor grow memory,
//! metrics or tables without bound.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use secrecy::ExposeSecret;
use serde_json::Value;
use sqlx::Connection;
use tessera::audit::{AuditRecord, EventDetails, EventKind, Outcome, chained_hash};

use crate::helpers::{
    TestApp, TestDatabase, admin_audit, client_tls, http_client, spawn_app, spawn_app_on,
};

const CLIENT: &str = "partner-a-treasury";
const AUDIENCE: &str = "https://ledger.test";

async fn legitimate(app: &TestApp) -> (u16, Value) {
    app.client_credentials(Some("partner-a"), CLIENT, &[("resource", AUDIENCE)])
        .await
}

#[tokio::test]
async fn garbage_client_ids_are_refused_before_authentication_and_fail_no_one_else() {
    let app = spawn_app().await;
    let long = "x".repeat(4_000);
    let bad_ids = ["bad\0id", long.as_str()];
    let bad = (0..20).map(|n| {
        let client_id = bad_ids[n % 2];
        let app = &app;
        async move {
            app.post_form(
                None,
                "/oauth2/token",
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id),
                    ("resource", AUDIENCE),
                ],
            )
            .await
        }
    });
    let good = (0..40).map(|_| legitimate(&app));
    let (bad, good) = tokio::join!(join_all(bad), join_all(good));

    for (status, body) in bad {
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "invalid_request", "{body}");
    }
    for (status, body) in &good {
        assert_eq!(*status, 200, "a legitimate request failed: {body}");
    }
    assert_eq!(app.audited("token_issued").await, 40);

    // Every refusal is audited, with the value escaped and cut short.
    let audited: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT client_id FROM audit_events WHERE kind = 'client_authentication_failed'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(audited.len(), 20);
    for client_id in audited {
        let client_id = client_id.unwrap();
        assert!(!client_id.contains('\0'));
        assert!(client_id.chars().count() <= tessera::audit::AUDITED_VALUE_MAX_CHARS + 1);
        assert!(
            client_id == "bad\\u{0}id" || client_id.ends_with('…'),
            "{client_id}"
        );
    }
    assert_eq!(app.denial_reasons().await.len(), 20);
}

#[tokio::test]
async fn a_record_the_database_refuses_fails_only_its_own_request() {
    let app = spawn_app().await;
    let audit = admin_audit(&app).await;
    // Holding the table makes the writer queue everything below behind its first commit, so
    // the unstorable record shares a batch with the others.
    let mut blocker = sqlx::PgConnection::connect(app.settings.database.url.expose_secret())
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE audit_events IN EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let event = |n: usize| {
        let broken = n == 10;
        EventDetails {
            reason: Some(format!("event {n}")),
            // An exchanged token whose lineage cannot be stored.
            jti: broken.then(|| "not-a-uuid".to_owned()),
            parent_jti: broken.then(|| "neither".to_owned()),
            expires_at: broken.then_some(4_000_000_000),
            ..EventDetails::default()
        }
    };
    let recording = join_all((0..30).map(|n| {
        let audit = audit.clone();
        let details = event(n);
        async move {
            audit
                .record(EventKind::TokenExchanged, Outcome::Allow, details)
                .await
        }
    }));
    let release = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    };
    let (results, ()) = tokio::join!(recording, release);
    for (n, result) in results.iter().enumerate() {
        assert_eq!(result.is_err(), n == 10, "event {n}: {result:?}");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 29);
}

/// The newest record of the server's writer: (chain_id, node, seq, hash).
async fn server_chain(app: &TestApp) -> (uuid::Uuid, String, i64, Vec<u8>) {
    sqlx::query_as(
        "SELECT chain_id, record::jsonb ->> 'node', seq, hash FROM audit_events
          ORDER BY recorded_at DESC, seq DESC LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_chain_head_moved_under_the_writer_does_not_stop_it_nor_get_signed_over() {
    let app = spawn_app().await;
    assert_eq!(legitimate(&app).await.0, 200);
    // A well-formed next record of the writer's chain that the writer did not write (as the
    // database role could insert): its next commit conflicts with it.
    let (chain_id, node, seq, hash) = server_chain(&app).await;
    let record = AuditRecord {
        event_id: uuid::Uuid::new_v4().to_string(),
        chain_id: chain_id.to_string(),
        seq: seq + 1,
        recorded_at_us: 1,
        node,
        kind: EventKind::TokenDenied,
        outcome: Outcome::Deny,
        details: EventDetails::default(),
    };
    let text = record.canonical().unwrap();
    let next_hash = chained_hash(&hash, &text);
    sqlx::query(
        "INSERT INTO audit_events (chain_id, seq, record, prev_hash, hash, recorded_at, kind, outcome)
         VALUES ($1, $2, $3, $4, $5, now(), 'token_denied', 'deny')",
    )
    .bind(chain_id)
    .bind(seq + 1)
    .bind(&text)
    .bind(&hash)
    .bind(next_hash.as_slice())
    .execute(&app.pool)
    .await
    .unwrap();

    for _ in 0..5 {
        let (status, body) = legitimate(&app).await;
        assert_eq!(status, 200, "{body}");
    }
    let (new_chain, _, last, _) = server_chain(&app).await;
    assert_ne!(
        new_chain, chain_id,
        "the writer built on a record it did not write"
    );
    assert_eq!(last, 5);
    let old_last: i64 = sqlx::query_scalar("SELECT max(seq) FROM audit_events WHERE chain_id = $1")
        .bind(chain_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(old_last, seq + 1);
    let signed_over: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_checkpoints WHERE chain_id = $1 AND seq > $2",
    )
    .bind(chain_id)
    .bind(seq)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(signed_over, 0, "a checkpoint covers the foreign record");
}

#[tokio::test]
async fn a_stalled_audit_writer_answers_503_in_time_and_readyz_says_so() {
    let db = TestDatabase::create().await;
    let app = spawn_app_on(db, |settings| {
        settings.audit.wait_timeout = Duration::from_millis(500);
    })
    .await;
    assert_eq!(legitimate(&app).await.0, 200);

    let mut blocker = sqlx::PgConnection::connect(app.settings.database.url.expose_secret())
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let started = Instant::now();
    let stalled = tokio::time::timeout(Duration::from_secs(5), legitimate(&app))
        .await
        .expect("the request waited for the writer without limit");
    assert_eq!(stalled.0, 503, "{}", stalled.1);
    assert_eq!(stalled.1["error"], "temporarily_unavailable");
    assert!(started.elapsed() < Duration::from_secs(3));

    let client = app.client(None);
    let ready = client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["reason"], "audit writer stalled");

    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    let (status, body) = legitimate(&app).await;
    assert_eq!(status, 200, "{body}");
    let ready = client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

fn random_token(length: usize) -> String {
    let mut bytes = vec![0u8; length];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    bytes
        .iter()
        .map(|byte| char::from(b'A' + byte % 26))
        .collect()
}

#[tokio::test]
async fn metrics_stay_bounded_whatever_methods_and_paths_are_sent() {
    let app = spawn_app().await;
    let client = app.client(None);
    let scrape = || async {
        client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let invented = |rounds: usize| {
        let client = client.clone();
        let app = &app;
        async move {
            for round in 0..rounds {
                join_all((0..10).map(|_| {
                    let method =
                        reqwest::Method::from_bytes(random_token(1_000).as_bytes()).unwrap();
                    let path = if round % 2 == 0 {
                        format!("/{}", random_token(500))
                    } else {
                        "/oauth2/token".to_owned()
                    };
                    client.request(method, app.url(&path)).send()
                }))
                .await;
            }
        }
    };
    // The first invented requests (and scrape) create their fixed series; later ones add none.
    invented(2).await;
    scrape().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = scrape().await;
    invented(20).await;
    let after = scrape().await;
    let series = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.rsplit_once(' ').map(|(series, _)| series.to_owned()))
            .collect()
    };
    let added: Vec<_> = series(&after)
        .difference(&series(&before))
        .cloned()
        .collect();
    assert!(
        after.len() < before.len() + 256,
        "/metrics grew from {} to {} bytes: {added:?}",
        before.len(),
        after.len()
    );
    assert!(after.contains(r#"method="other""#), "{after}");
}

#[tokio::test]
async fn a_metrics_scrape_runs_no_sql() {
    let db = TestDatabase::create().await;
    let app = spawn_app_on(db, |settings| {
        settings.database.max_connections = 1;
        settings.database.connect_timeout = Duration::from_secs(3);
    })
    .await;
    // With the pool's only connection held, anything that needs the database waits.
    let held = app.pool.acquire().await.unwrap();
    let client = app.client(None);
    let started = Instant::now();
    let response = client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the scrape waited {:?} for the database",
        started.elapsed()
    );
    drop(held);
}

#[tokio::test]
async fn ops_bind_serves_probes_and_metrics_on_plain_http_and_takes_metrics_off_the_main_port() {
    let db = TestDatabase::create().await;
    let app = spawn_app_on(db, |settings| {
        settings.server.ops_bind = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let ops = app.ops_addr.unwrap();
    let plain = reqwest::Client::new();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = plain
            .get(format!("http://{ops}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let token_on_ops = plain
        .post(format!("http://{ops}/oauth2/token"))
        .send()
        .await
        .unwrap();
    assert_eq!(token_on_ops.status(), 404);

    let client = app.client(None);
    let metrics = client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 404, "metrics are still on the main port");
    // Load balancers in front of the main port still see its health there.
    for path in ["/healthz", "/readyz"] {
        let response = client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    assert_eq!(legitimate(&app).await.0, 200);
}

/// Opens `count` TCP connections from `source` that never send anything.
async fn idle_sockets(
    source: std::net::IpAddr,
    target: SocketAddr,
    count: usize,
) -> Vec<tokio::net::TcpStream> {
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        if let Ok(stream) = socket.connect(target).await {
            sockets.push(stream);
        }
    }
    sockets
}

/// Raises this process's open-file limit to its hard limit when the soft one is below
/// `needed` (without unsafe code: `prlimit` acts on a running process).
fn ensure_open_files(needed: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let parse = |field: &str| field.parse::<u64>().unwrap_or(u64::MAX);
    let (soft, hard) = (parse(fields[3]), parse(fields[4]));
    if soft >= needed {
        return;
    }
    assert!(
        hard >= needed,
        "open-file hard limit {hard} is below {needed}"
    );
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={hard}:{hard}"))
        .status()
        .unwrap();
    assert!(status.success(), "prlimit failed: {status}");
}

/// It measures latency, so it runs alone: `.ci/run` runs it after the suite, on a quiet
/// machine (`cargo test --test api -- --ignored --exact
/// availability::idle_connections_do_not_starve_legitimate_clients`).
#[tokio::test]
#[ignore = "measures latency: runs alone, after the suite (see .ci/run)"]
async fn idle_connections_do_not_starve_legitimate_clients() {
    // Both ends of every idle socket live in this process, beside the other tests' sockets.
    ensure_open_files(8_192);
    let app = spawn_app().await;
    // Warm: database connections and registry cache are not what is measured.
    for _ in 0..4 {
        assert_eq!(legitimate(&app).await.0, 200);
    }
    let attacker = "127.0.0.2".parse().unwrap();
    let idle = idle_sockets(attacker, app.addr, 2_000).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let tls = client_tls(Some("partner-a"), &[&rustls::version::TLS13]);
    // Started at a steady pace whatever the answers take, so that every request falling in a
    // stall is measured as stalled (one after another, the first would absorb it all).
    let mut pace = tokio::time::interval(Duration::from_millis(25));
    let mut requests = Vec::new();
    for _ in 0..150 {
        pace.tick().await;
        // A new connection (and handshake) for every request: what an attacker starving the
        // acceptor would delay.
        let client = http_client(tls.clone());
        let url = app.url("/oauth2/token");
        requests.push(tokio::spawn(async move {
            let started = Instant::now();
            let response = client
                .post(url)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", CLIENT),
                    ("resource", AUDIENCE),
                ])
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            (
                response.map(|response| response.status()),
                started.elapsed(),
            )
        }));
    }
    let mut latencies = Vec::new();
    for request in requests {
        let (status, latency) = request.await.unwrap();
        assert_eq!(status.unwrap(), 200);
        latencies.push(latency);
    }
    let opened = idle.len();
    drop(idle);
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100 - 1];
    assert!(
        p99 < Duration::from_millis(100),
        "p99 {p99:?} (max {:?}) with 2,000 idle connections open",
        latencies.last()
    );
    assert!(opened >= 1_900, "only {opened} idle sockets were opened");
}

#[tokio::test]
async fn one_source_address_holds_at_most_its_connection_limit() {
    let db = TestDatabase::create().await;
    let app = spawn_app_on(db, |settings| {
        settings.server.max_connections_per_address = 5;
    })
    .await;
    let source = "127.0.0.3".parse().unwrap();
    let _held = idle_sockets(source, app.addr, 5).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = idle_sockets(source, app.addr, 1).await.pop().unwrap();
    let mut buffer = [0u8; 1];
    let closed = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::io::AsyncReadExt::read(&mut extra, &mut buffer),
    )
    .await
    .expect("a connection over the limit was kept open");
    assert!(matches!(closed, Ok(0) | Err(_)));
    // Other addresses are unaffected.
    assert_eq!(legitimate(&app).await.0, 200);
}

#[tokio::test]
async fn a_handshake_never_started_is_closed_after_the_timeout() {
    let db = TestDatabase::create().await;
    let app = spawn_app_on(db, |settings| {
        settings.server.tls_handshake_timeout = Duration::from_millis(300);
    })
    .await;
    let mut idle = idle_sockets("127.0.0.4".parse().unwrap(), app.addr, 1)
        .await
        .pop()
        .unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 1];
    // Well below actix's own default (3 s), so the setting must be what closed it.
    let closed = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::io::AsyncReadExt::read(&mut idle, &mut buffer),
    )
    .await
    .expect("the silent connection was kept open");
    assert!(matches!(closed, Ok(0) | Err(_)));
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn a_body_trickled_byte_by_byte_is_cut_off() {
    let db = TestDatabase::create().await;
    let app = spawn_app_on(db, |settings| {
        settings.server.request_timeout = Duration::from_secs(1);
    })
    .await;
    let addr = app.addr;
    let tls = std::sync::Arc::new(client_tls(Some("partner-a"), &[&rustls::version::TLS13]));
    let (elapsed, answer) = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let connection = rustls::ClientConnection::new(tls, name).unwrap();
        let socket = std::net::TcpStream::connect(addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut stream = rustls::StreamOwned::new(connection, socket);
        stream
            .write_all(
                b"POST /oauth2/token HTTP/1.1\r\nHost: localhost\r\n\
                  Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n",
            )
            .unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        // One byte every 100 ms: ten seconds to send the body, if the server waited.
        while started.elapsed() < Duration::from_secs(10) {
            if stream
                .write_all(b"a")
                .and_then(|()| stream.flush())
                .is_err()
            {
                break;
            }
            let mut buffer = [0u8; 512];
            match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => {
                    answer.extend_from_slice(&buffer[..read]);
                    break;
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        (
            started.elapsed(),
            String::from_utf8_lossy(&answer).into_owned(),
        )
    })
    .await
    .unwrap();
    assert!(
        elapsed < Duration::from_secs(3),
        "the trickled body kept the request open for {elapsed:?}"
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer}"
    );
    assert_eq!(app.audited("token_issued").await, 0);
}
