//! Issue 13, operator items: audit export filters, the dev issuer, configuration strictness,
//! standard error bodies and graceful shutdown.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tessera::audit::{EventDetails, EventKind, Outcome};

use crate::helpers::{PROCESS_KEK, TestDatabase, scratch_dir, spawn_app_on};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// `tessera` with a clean environment: no inherited `TESSERA_*` or `DATABASE_URL`.
fn tessera(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command
}

fn fresh_dir() -> PathBuf {
    let dir = scratch_dir().join(uuid::Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Issue 13 item 4: every export filter matches records whose filtered column is NULL in
/// other records (that made the row query fail half-way with "unexpected null"), writes a
/// complete file, and the file verifies offline with only the published audit key set. The
/// export and `keys rotate` need only the database and the key-encryption key (item 3): no
/// TLS files, no issuer.
#[tokio::test]
async fn audit_export_with_each_filter_verifies_offline() {
    let db = TestDatabase::create().await;
    let url = db.url.clone();
    let app = spawn_app_on(db, |settings| {
        settings.keys.kek = tessera::config::Kek::parse("keys.kek", "test", PROCESS_KEK).unwrap();
    })
    .await;
    let (audit, writer) = crate::helpers::admin_audit_with_handle(&app).await;
    let full = |partner: &str, client: &str, txn: &str| EventDetails {
        partner: Some(partner.into()),
        client_id: Some(client.into()),
        consent_id: Some(format!("consent-{partner}")),
        txn: Some(txn.into()),
        ..EventDetails::default()
    };
    // Records with every filtered column NULL sit before, between and after the matches.
    for details in [
        EventDetails::default(),
        full("partner-a", "partner-a-treasury", "txn-1"),
        EventDetails::default(),
        full("partner-b", "partner-b-reconciliation", "txn-2"),
        full("partner-a", "partner-a-treasury", "txn-2"),
        EventDetails::default(),
    ] {
        audit
            .record(EventKind::TokenIssued, Outcome::Allow, details)
            .await
            .unwrap();
    }
    // Its final checkpoint signs the records: export vouches only with checkpoints.
    writer.finish().await;

    let dir = fresh_dir();
    let jwks = app
        .client(None)
        .get(app.url("/audit/jwks.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let key = dir.join("audit-jwks.json");
    std::fs::write(&key, &jwks).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let rfc3339 = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let (since, until) = (
        rfc3339(now - time::Duration::hours(1)),
        rfc3339(now + time::Duration::hours(1)),
    );
    for (filter, value, expected) in [
        ("--client", "partner-a-treasury", 2),
        ("--partner", "partner-b", 1),
        ("--txn", "txn-2", 2),
        ("--consent", "consent-partner-a", 2),
        ("--client", "nobody", 0),
    ] {
        let out = dir.join(format!("{}-{value}.jsonl", filter.trim_start_matches('-')));
        let export = tessera(&["audit", "export", "--since", &since, "--until", &until])
            .args([filter, value, "--out"])
            .arg(&out)
            .env("DATABASE_URL", &url)
            .env("TESSERA_KEYS__KEK_ID", "test")
            .env("TESSERA_KEYS__KEK", PROCESS_KEK)
            .output()
            .unwrap();
        assert!(
            export.status.success(),
            "{filter} {value}: {}",
            stderr(&export)
        );
        let verify = verify_export(&out, &key);
        assert!(
            verify.status.success(),
            "{filter} {value}: {}",
            stderr(&verify)
        );
        let stdout = String::from_utf8_lossy(&verify.stdout);
        assert!(
            stdout.contains(&format!("export verifies: {expected} records")),
            "{filter} {value}: {stdout}"
        );
        assert!(!out.with_extension("partial").exists());
    }
    // Rotating keys needs the same and nothing more.
    let rotate = tessera(&["keys", "rotate"])
        .env("DATABASE_URL", &url)
        .env("TESSERA_KEYS__KEK_ID", "test")
        .env("TESSERA_KEYS__KEK", PROCESS_KEK)
        .output()
        .unwrap();
    assert!(rotate.status.success(), "{}", stderr(&rotate));
    app.handle.stop(true).await;
}

fn verify_export(file: &Path, key: &Path) -> Output {
    tessera(&["audit", "verify-export"])
        .arg(file)
        .arg("--key")
        .arg(key)
        .output()
        .unwrap()
}

/// `tessera serve` with a complete, valid environment (the database is not reachable: these
/// runs end at the settings or at the first database call).
fn serve(args: &[&str]) -> Command {
    let pki = crate::helpers::pki();
    let mut command = tessera(&["serve"]);
    command
        .args(args)
        .env("TESSERA_SERVER__BIND", "127.0.0.1:0")
        .env("TESSERA_SERVER__CERT", pki.server_cert())
        .env("TESSERA_SERVER__KEY", pki.server_key())
        .env("TESSERA_SERVER__CLIENT_CA", pki.ca_cert())
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .env("TESSERA_TOKENS__ISSUER", crate::helpers::ISSUER)
        .env("TESSERA_KEYS__KEK_ID", "test")
        .env("TESSERA_KEYS__KEK", PROCESS_KEK);
    command
}

fn failure(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(!output.status.success(), "expected a failure at start");
    stderr(&output)
}

/// Issue 13 item 3: misspelled settings in the file and in the environment are refused by
/// name, and every problem is listed in one run, secrets not shown.
#[test]
fn unknown_and_invalid_settings_are_all_reported_at_once() {
    let dir = fresh_dir();
    let file = dir.join("tessera.toml");
    std::fs::write(
        &file,
        "[tokens]\ndefault_lifetim_s = 60\n\n[server]\nrequest_timeout_ms = \"soon\"\n\n[sevrer]\nbind = \"x\"\n",
    )
    .unwrap();
    let secret_kek = "c2VjcmV0LWtlay10b28tc2hvcnQ=";
    let stderr = failure(
        serve(&["--config", file.to_str().unwrap()])
            .env("TESSERA_SERVER__BIND_ADDR", "127.0.0.1:8443")
            .env("TESSERA_AUDITT__ENABLED", "true")
            .env("TESSERA_KEYS__REFRESH_INTERVAL_MS", "0")
            .env("TESSERA_KEYS__KEK", secret_kek)
            .env(
                "DATABASE_URL",
                "postgres://tessera:pa55-secret@127.0.0.1:1/none",
            )
            .env_remove("TESSERA_TOKENS__ISSUER"),
    );
    let file_name = file.display().to_string();
    for expected in [
        format!(
            "unknown setting `tokens.default_lifetim_s` (in {file_name}; did you mean \
             `tokens.default_lifetime_s`?)"
        ),
        format!("unknown setting `sevrer` (in {file_name}; did you mean `server`?)"),
        "unknown setting `server.bind_addr` (environment variable `TESSERA_SERVER__BIND_ADDR`)"
            .to_owned(),
        "unknown setting `auditt` (environment variable `TESSERA_AUDITT__ENABLED`; did you mean \
         `audit`?)"
            .to_owned(),
        "setting `server.request_timeout_ms`".to_owned(),
        "setting `keys.refresh_interval_ms`".to_owned(),
        "setting `keys.kek`: must decode to exactly 32 bytes".to_owned(),
        "setting `tokens.issuer`: is required".to_owned(),
    ] {
        assert!(stderr.contains(&expected), "{expected}\n{stderr}");
    }
    assert!(stderr.contains("8 problems in the settings"), "{stderr}");
    assert!(!stderr.contains(secret_kek), "{stderr}");
    assert!(!stderr.contains("pa55-secret"), "{stderr}");
}

/// Issue 13 item 3: string settings from the environment are taken as strings (`1.2` was read
/// as a float, `2026` as a number), numbers still parse, and lists are written as in TOML.
#[test]
fn environment_strings_need_no_quoting() {
    let crls = crate::helpers::scratch_dir().join("no-such.crl");
    let stderr = failure(
        serve(&[])
            .env("TESSERA_SERVER__TLS_MIN_VERSION", "1.2")
            .env("TESSERA_KEYS__KEK_ID", "2026")
            .env("TESSERA_SERVER__REQUEST_TIMEOUT_MS", "2500")
            .env(
                "TESSERA_SERVER__CLIENT_CRLS",
                format!("[{}]", crls.display()),
            )
            // One certain problem, so that the run stops at the settings and lists them.
            .env("TESSERA_LOG__FORMATT", "json"),
    );
    assert!(stderr.contains("unknown setting `log.formatt`"), "{stderr}");
    for accepted in [
        "tls_min_version",
        "kek_id",
        "request_timeout_ms",
        "client_crls",
    ] {
        assert!(!stderr.contains(accepted), "{accepted}: {stderr}");
    }
}

/// Issue 13 item 3: `serve` on an empty database says to migrate instead of failing on a
/// missing table; `--migrate` migrates and serves; a superuser connection is warned about.
#[tokio::test]
async fn serve_on_an_empty_database_asks_for_migrations_or_migrates() {
    let db = TestDatabase::create().await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    for statement in ["DROP SCHEMA public CASCADE", "CREATE SCHEMA public"] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    pool.close().await;

    let stderr = failure(serve(&[]).env("DATABASE_URL", &db.url));
    assert!(stderr.contains("run `tessera migrate`"), "{stderr}");
    assert!(stderr.contains("`tessera serve --migrate`"), "{stderr}");
    assert_eq!(
        stderr.lines().filter(|line| !line.is_empty()).count(),
        1,
        "{stderr}"
    );

    let seen = serve_until_ready(serve(&["--migrate"]).env("DATABASE_URL", &db.url));
    // The test cluster's role is a superuser.
    let warning = seen
        .lines()
        .find(|line| line.contains("superuser"))
        .unwrap_or_else(|| panic!("no superuser warning:\n{seen}"));
    assert!(warning.contains("\"WARN\""), "{warning}");
}

/// Starts `tessera serve` with JSON logs, stops it with SIGTERM once it serves, and returns
/// the log lines up to "serving HTTPS"; the server must have served and stopped cleanly.
fn serve_until_ready(command: &mut Command) -> String {
    use std::io::{BufRead, BufReader};
    let mut child = command
        .env("TESSERA_LOG__FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let serving = line.contains("serving HTTPS");
        seen.push(line);
        if serving {
            break;
        }
    }
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).count());
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    rest.join().unwrap();
    let seen = seen.join("\n");
    assert!(seen.contains("serving HTTPS"), "{seen}");
    assert!(status.success(), "{seen}");
    seen
}

/// Issue 13 item 3: the superuser warning is about superusers only: the application role
/// starts without it.
#[tokio::test]
async fn serve_as_the_application_role_has_no_superuser_warning() {
    let db = crate::helpers::seeded_database().await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let role = format!("app_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN IN ROLE tessera_app"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let (scheme, rest) = db.url.split_once("://").unwrap();
    let (_, host) = rest.split_once('@').unwrap();
    let url = format!("{scheme}://{role}@{host}");
    let seen = serve_until_ready(serve(&[]).env("DATABASE_URL", &url));
    assert!(!seen.contains("superuser"), "{seen}");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE {role}")))
        .execute(&pool)
        .await
        .unwrap();
}

/// Issue 13 item 6: what no handler answers still gets a standard body: RFC 6749 JSON with
/// `Cache-Control: no-store` under `/oauth2/`, RFC 9457 problem details elsewhere.
#[tokio::test]
async fn statuses_no_handler_writes_are_json() {
    let app = crate::helpers::spawn_app().await;
    let client = app.client(Some("partner-a"));
    let oversized = "a".repeat(app.settings.server.body_limit_bytes + 1);
    let cases = [
        (client.get(app.url("/oauth2/token")), 405, true),
        (client.get(app.url("/oauth2/revoke")), 405, true),
        (client.post(app.url("/oauth2/nothing")), 404, true),
        (
            client
                .post(app.url("/oauth2/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("grant_type=client_credentials&pad={oversized}")),
            413,
            true,
        ),
        (client.get(app.url("/nothing")), 404, false),
        (client.post(app.url("/healthz")), 405, false),
        (client.post(app.url("/jwks.json")), 405, false),
    ];
    for (request, status, oauth) in cases {
        let response = request.send().await.unwrap();
        let url = response.url().to_string();
        assert_eq!(response.status().as_u16(), status, "{url}");
        let headers = response.headers().clone();
        let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap())
            .unwrap_or_else(|error| panic!("{url}: not JSON: {error}"));
        if oauth {
            assert_eq!(headers["content-type"], "application/json", "{url}");
            assert_eq!(headers["cache-control"], "no-store", "{url}");
            assert_eq!(body["error"], "invalid_request", "{url}: {body}");
            assert!(body["error_description"].is_string(), "{url}: {body}");
        } else {
            assert_eq!(headers["content-type"], "application/problem+json", "{url}");
            assert_eq!(body["status"], status, "{url}: {body}");
        }
        if status == 405 {
            assert!(headers.contains_key("allow"), "{url}");
        }
    }
    app.handle.stop(true).await;
}

/// Issue 13 item 6: SIGTERM under load from kept-alive clients completes every request already
/// sent; each client is told to close its connection in a response, so the only refusals are
/// new connections after the listener closed.
#[tokio::test]
async fn sigterm_under_kept_alive_load_drops_no_request() {
    let db = crate::helpers::seeded_database().await;
    let mut server = crate::helpers::ServerProcess::start_with(
        &db.url,
        &[("TESSERA_SERVER__SHUTDOWN_TIMEOUT_S", Path::new("5"))],
    );
    let url = server.url("/oauth2/token");
    let started = std::sync::Arc::new(tokio::sync::Barrier::new(7));
    let mut clients = Vec::new();
    for _ in 0..6 {
        let (url, started) = (url.clone(), started.clone());
        clients.push(tokio::spawn(async move {
            let client = crate::helpers::client_with(Some("partner-a"), &[&rustls::version::TLS13]);
            let (mut answered, mut failed) = (0u32, Vec::new());
            let mut waiting = Some(started);
            loop {
                let response = client
                    .post(&url)
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("client_id", "partner-a-treasury"),
                        ("resource", "https://ledger.test"),
                    ])
                    .send()
                    .await;
                match response {
                    Ok(response) if response.status() == 200 => answered += 1,
                    Ok(response) => failed.push(format!("status {}", response.status())),
                    // Refused at connect: never accepted, a load balancer's retry case.
                    Err(error) if error.is_connect() => break,
                    Err(error) => {
                        failed.push(format!("{error:?}"));
                        break;
                    }
                }
                if let Some(barrier) = waiting.take() {
                    barrier.wait().await;
                }
            }
            if let Some(barrier) = waiting.take() {
                barrier.wait().await;
            }
            (answered, failed)
        }));
    }
    started.wait().await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    server.signal("-TERM");
    let mut answered = 0;
    for client in clients {
        let (count, failed) = client.await.unwrap();
        assert!(failed.is_empty(), "dropped requests: {failed:?}");
        answered += count;
    }
    let status = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(answered >= 6, "{answered}");
}

/// Issue 13 item 6: a server whose log pipe has gone away still stops on SIGTERM (a failed log
/// write used to panic the task that stops the server).
#[tokio::test]
async fn sigterm_stops_the_server_after_its_log_pipe_closed() {
    use std::io::{BufRead, BufReader};
    let db = crate::helpers::seeded_database().await;
    let mut child = serve(&[])
        .env("DATABASE_URL", &db.url)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut serving = false;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        if line.unwrap().contains("serving HTTPS") {
            serving = true;
            break;
        }
    }
    assert!(serving);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    panic!("still running 10 s after SIGTERM");
}
