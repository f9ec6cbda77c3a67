use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::{allow_traversal, free_port, pki, scratch_dir};

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

fn serve_env(command: &mut Command) -> &mut Command {
    let pki = pki();
    command
        .env("TESSERA_SERVER__BIND", "127.0.0.1:0")
        .env("TESSERA_SERVER__CERT", pki.server_cert())
        .env("TESSERA_SERVER__KEY", pki.server_key())
        .env("TESSERA_SERVER__CLIENT_CA", pki.ca_cert())
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .env("TESSERA_TOKENS__ISSUER", crate::helpers::ISSUER)
        .env("TESSERA_KEYS__KEK_ID", "test")
        .env(
            "TESSERA_KEYS__KEK",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
}

fn start_failure(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(!output.status.success(), "expected failure at start");
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn a_missing_certificate_file_names_the_setting() {
    let stderr = start_failure(
        serve_env(&mut tessera(&["serve"])).env("TESSERA_SERVER__CERT", "/nonexistent/server.pem"),
    );
    assert!(stderr.contains("setting `server.cert`"), "{stderr}");
    assert!(stderr.contains("/nonexistent/server.pem"), "{stderr}");
}

#[test]
fn a_bad_port_names_the_setting() {
    let stderr = start_failure(
        serve_env(&mut tessera(&["serve"])).env("TESSERA_SERVER__BIND", "127.0.0.1:99999"),
    );
    assert!(
        stderr.contains("setting `server.bind`: invalid port `99999`"),
        "{stderr}"
    );
}

#[test]
fn an_unreadable_key_names_the_setting() {
    let garbage = scratch_dir().join("garbage.key");
    std::fs::write(&garbage, "not a key").unwrap();
    let stderr =
        start_failure(serve_env(&mut tessera(&["serve"])).env("TESSERA_SERVER__KEY", &garbage));
    assert!(stderr.contains("setting `server.key`"), "{stderr}");

    let stderr = start_failure(
        serve_env(&mut tessera(&["serve"])).env("TESSERA_SERVER__KEY", scratch_dir()),
    );
    assert!(stderr.contains("setting `server.key`"), "{stderr}");
}

#[test]
fn a_missing_database_url_names_the_setting() {
    let stderr = start_failure(serve_env(&mut tessera(&["serve"])).env_remove("DATABASE_URL"));
    assert!(
        stderr.contains("setting `database.url`: is required"),
        "{stderr}"
    );
}

#[test]
fn a_malformed_setting_in_the_file_names_it() {
    let file = scratch_dir().join("bad.toml");
    std::fs::write(&file, "[server]\nrequest_timeout_ms = \"soon\"\n").unwrap();
    let stderr = start_failure(serve_env(&mut tessera(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
    ])));
    assert!(stderr.contains("server.request_timeout_ms"), "{stderr}");
}

#[test]
fn a_key_encryption_key_of_the_wrong_size_names_the_setting() {
    let stderr =
        start_failure(serve_env(&mut tessera(&["serve"])).env("TESSERA_KEYS__KEK", "c2hvcnQ="));
    assert!(
        stderr.contains("setting `keys.kek`: must decode to exactly 32 bytes"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_starts_from_the_example_configuration_and_stops_on_sigterm() {
    let db = crate::helpers::TestDatabase::create().await;
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("tessera.example.toml");
    let mut child = serve_env(&mut tessera(&[
        "serve",
        "--config",
        example.to_str().unwrap(),
    ]))
    .env("DATABASE_URL", &db.url)
    .env("TESSERA_LOG__FORMAT", "json")
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    for line in stderr.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        if line.contains("serving HTTPS") {
            let event: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(event["level"], "INFO");
            break;
        }
    }
    assert!(seen.contains("serving HTTPS"), "{seen}");
    let rest = std::thread::spawn(move || stderr.map_while(Result::ok).collect::<Vec<_>>());
    let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        stop_with_sigterm(&mut child)
    }));
    let rest = rest.join().unwrap().join("\n");
    assert!(stopped.is_ok(), "{rest}");
    assert!(rest.contains("server stopped"), "{rest}");
}

struct Dev {
    child: Child,
    url: String,
    banner: String,
}

fn start_dev(root: &Path, cluster_port: u16) -> Dev {
    let mut child = tessera(&[
        "dev",
        "--certs-dir",
        root.join("certs").to_str().unwrap(),
        "--cluster-dir",
        root.join("pgdata").to_str().unwrap(),
        "--cluster-port",
        &cluster_port.to_string(),
        // Nothing listens on port 1: dev must fall back to its private cluster.
        "--local-database-url",
        "postgres://postgres@127.0.0.1:1/postgres",
    ])
    .env("TESSERA_SERVER__BIND", "127.0.0.1:0")
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut banner = String::new();
    let mut url = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if let Some(value) = line.trim().strip_prefix("URL:") {
            url = Some(value.trim().to_owned());
        }
        if line.trim().starts_with("Stop:") {
            break;
        }
    }
    let url = url.unwrap_or_else(|| panic!("no URL in dev output:\n{banner}"));
    Dev { child, url, banner }
}

fn stop_with_sigterm(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exited with {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("did not stop within 10 s of SIGTERM");
}

#[tokio::test]
async fn dev_twice_in_a_row_reuses_the_cluster_and_the_pki() {
    let root = scratch_dir().join(format!("dev-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&root).unwrap();
    allow_traversal(&root);
    let port = free_port();

    let mut first = start_dev(&root, port);
    assert!(first.banner.contains("generated"), "{}", first.banner);
    assert!(first.banner.contains("(initialised)"), "{}", first.banner);
    let client = client_for(&root.join("certs"));
    let response = client
        .get(format!("{}/mtls/identity", first.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Issue 13 item 2: the printed URL is the issuer itself, verbatim.
    let metadata: serde_json::Value = client
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            first.url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["issuer"], first.url.as_str(), "{}", first.banner);
    let ca_before = std::fs::read(root.join("certs/ca.pem")).unwrap();
    stop_with_sigterm(&mut first.child);

    let mut second = start_dev(&root, port);
    assert!(second.banner.contains("reused;"), "{}", second.banner);
    assert!(second.banner.contains("(reused)"), "{}", second.banner);
    assert_eq!(std::fs::read(root.join("certs/ca.pem")).unwrap(), ca_before);
    let response = client_for(&root.join("certs"))
        .get(format!("{}/readyz", second.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    stop_with_sigterm(&mut second.child);
}

fn client_for(certs: &Path) -> reqwest::Client {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in crate::helpers::certificates(&certs.join("ca.pem")) {
        roots.add(cert).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(tessera::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            crate::helpers::certificates(&certs.join("partner-a.pem")),
            rustls::pki_types::PrivateKeyDer::from_pem_file(certs.join("partner-a.key")).unwrap(),
        )
        .unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap()
}

/// Issue 10 item 8: the database link can be TLS, verified against a named CA and host
/// (`sslmode=verify-full`), with rustls on aws-lc-rs; a server the CA does not vouch for, and
/// a plaintext connection to a server that requires TLS, are refused.
#[tokio::test]
async fn the_database_link_is_tls_verified_against_its_ca_and_host() {
    use sqlx::Connection;
    let pki = crate::helpers::pki();
    let data_dir = crate::helpers::scratch_dir()
        .join(format!("tls-cluster-{}", uuid::Uuid::new_v4().simple()))
        .join("data");
    let port = crate::helpers::free_port();
    let (cluster, _) = crate::helpers::start_cluster(&data_dir).await;
    cluster.stop().await.unwrap();
    for (from, to) in [
        (pki.server_cert(), "server.pem"),
        (pki.server_key(), "server.key"),
    ] {
        std::fs::copy(from, data_dir.join(to)).unwrap();
        // As root the cluster runs as `postgres`, which must own its key; otherwise the files
        // already belong to the cluster's user and this chown fails harmlessly.
        let _ = std::process::Command::new("chown")
            .args(["postgres:postgres", to])
            .current_dir(&data_dir)
            .status();
        std::fs::set_permissions(
            data_dir.join(to),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    }
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(data_dir.join("postgresql.auto.conf"))
        .unwrap()
        .write_all(b"ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n")
        .unwrap();
    std::fs::write(
        data_dir.join("pg_hba.conf"),
        "hostssl all all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 reject\n",
    )
    .unwrap();
    let (cluster, _) = tessera::dev::postgres::LocalCluster::start(&data_dir, port)
        .await
        .unwrap();

    let ca = pki.ca_cert();
    let verified = format!(
        "postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={}",
        ca.display()
    );
    let db = crate::helpers::TestDatabase::create_on(&verified).await;
    let app = crate::helpers::spawn_app_on(db, |_| {}).await;
    let on_tls: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(on_tls);
    app.token("partner-a", "partner-a-treasury", "https://ledger.test")
        .await;

    let untrusted = format!(
        "postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={}",
        pki.untrusted_ca_cert().display()
    );
    assert!(sqlx::PgConnection::connect(&untrusted).await.is_err());
    let plaintext = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable");
    assert!(sqlx::PgConnection::connect(&plaintext).await.is_err());
    app.handle.stop(true).await;
    drop(app);
    cluster.stop().await.unwrap();
}
