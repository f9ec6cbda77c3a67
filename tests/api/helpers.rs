//! The harness every integration test uses: a real server on port 0 with real TLS, a PKI made
//! for the test run, a fresh PostgreSQL database per test (on `DATABASE_URL`, or on a throwaway
//! cluster this process starts), and HTTP clients presenting real certificates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use actix_web::dev::ServerHandle;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::SecretString;
use sqlx::{Connection, PgPool};
use tessera::app::Application;
use tessera::config::{Provisioned, Settings, TlsFiles};
use tessera::local_postgres::LocalCluster;
use tessera::pki::DevPki;
use tessera::tls::ClientTrust;
use tokio::sync::OnceCell;

/// Scratch space for this test process; directories of earlier, finished runs are removed.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tessera-tests");
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten() {
                let alive = entry
                    .file_name()
                    .to_str()
                    .is_some_and(|pid| Path::new("/proc").join(pid).exists());
                if !alive {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = root.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        allow_traversal(&dir);
        dir
    })
}

/// The private cluster runs as the `postgres` user when tests run as root; it must be able to
/// reach its data directory.
pub fn allow_traversal(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut current = Some(dir);
    while let Some(path) = current {
        if let Ok(meta) = std::fs::metadata(path) {
            let mut permissions = meta.permissions();
            if permissions.mode() & 0o005 != 0o005 {
                permissions.set_mode(permissions.mode() | 0o005);
                let _ = std::fs::set_permissions(path, permissions);
            }
        }
        current = path.parent();
    }
}

pub fn pki() -> &'static DevPki {
    static PKI: OnceLock<DevPki> = OnceLock::new();
    PKI.get_or_init(|| DevPki::ensure(&scratch_dir().join("pki")).unwrap().0)
}

/// A free port on loopback, for servers that must be told their port up front.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// URL of a database server on which tests may create databases.
async fn admin_url() -> &'static str {
    static URL: OnceCell<String> = OnceCell::const_new();
    URL.get_or_init(|| async {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return url;
        }
        let (cluster, _) = start_cluster(&scratch_dir().join("shared-cluster")).await;
        let url = cluster.admin_url();
        // Lives as long as this process: its watchdog stops postgres when the process exits.
        std::mem::forget(cluster);
        url
    })
    .await
}

pub async fn start_cluster(data_dir: &Path) -> (LocalCluster, bool) {
    allow_traversal(data_dir.parent().unwrap());
    LocalCluster::start(data_dir, free_port()).await.unwrap()
}

/// A database of its own for one test, migrated; dropped when the value is dropped.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    server_url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        Self::create_on(admin_url().await).await
    }

    pub async fn create_on(server_url: &str) -> Self {
        let server_url = server_url.to_owned();
        let name = format!("tessera_test_{}", uuid::Uuid::new_v4().simple());
        let url = tessera::storage::ensure_database(&server_url, &name)
            .await
            .unwrap();
        let pool = PgPool::connect(&url).await.unwrap();
        tessera::storage::migrate(&pool).await.unwrap();
        pool.close().await;
        Self {
            name,
            url,
            server_url,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let server_url = self.server_url.clone();
        let statement = format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut connection) = sqlx::PgConnection::connect(&server_url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(statement))
                        .execute(&mut connection)
                        .await;
                }
            });
        })
        .join();
    }
}

pub const ISSUER: &str = "https://tessera.test";

pub fn random_kek() -> tessera::config::Kek {
    use base64::Engine;
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).unwrap();
    tessera::config::Kek::parse(
        "keys.kek",
        "test",
        &base64::engine::general_purpose::STANDARD.encode(key),
    )
    .unwrap()
}

pub fn test_settings(database_url: &str) -> Settings {
    let pki = pki();
    let mut settings = Settings::load_with(
        None,
        Provisioned {
            tls: Some(TlsFiles {
                cert: pki.server_cert(),
                key: pki.server_key(),
                client_ca: pki.ca_cert(),
            }),
            database_url: Some(SecretString::from(database_url.to_owned())),
            issuer: Some(ISSUER.to_owned()),
            kek: Some(random_kek()),
        },
    )
    .unwrap();
    // `DATABASE_URL` names the server tests create their databases on; it must not replace
    // the test's own database.
    settings.database.url = SecretString::from(database_url.to_owned());
    settings.server.bind = "127.0.0.1:0".parse().unwrap();
    settings.server.workers = 2;
    settings.server.shutdown_timeout = std::time::Duration::from_secs(10);
    settings
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// The plain-HTTP operations listener, when `server.ops_bind` is set.
    pub ops_addr: Option<SocketAddr>,
    pub settings: Settings,
    pub pool: PgPool,
    pub handle: ServerHandle,
    pub client_trust: Arc<ClientTrust>,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
    // Declared last: the server and pool go before the database is dropped.
    _db: TestDatabase,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// Posts a form to an OAuth endpoint as the given certificate identity.
    pub async fn post_form(
        &self,
        identity: Option<&str>,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        let response = self
            .client(identity)
            .post(self.url(path))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// `client_credentials` for the tls_client_auth client `client_id`, presenting `identity`.
    pub async fn client_credentials(
        &self,
        identity: Option<&str>,
        client_id: &str,
        extra: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
        ];
        form.extend_from_slice(extra);
        self.post_form(identity, "/oauth2/token", &form).await
    }

    /// An access token for `audience`, which must be granted.
    pub async fn token(&self, identity: &str, client_id: &str, audience: &str) -> String {
        let (status, body) = self
            .client_credentials(Some(identity), client_id, &[("resource", audience)])
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// How many audit records of `kind` exist.
    pub async fn audited(&self, kind: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE kind = $1")
            .bind(kind)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// The reasons of audited refusals, oldest first.
    pub async fn denial_reasons(&self) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT record::jsonb ->> 'reason' FROM audit_events WHERE outcome = 'deny'
              ORDER BY recorded_at, seq",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// Asserts the refusal's status and error code, that a refusal was audited, and that no
    /// token was issued.
    pub async fn assert_refused(
        &self,
        (status, body): (u16, serde_json::Value),
        expected_status: u16,
        error: &str,
    ) {
        assert_eq!(status, expected_status, "{body}");
        assert_eq!(body["error"], error, "{body}");
        assert!(body.get("access_token").is_none());
        assert_eq!(self.audited("token_issued").await, 0, "a token was issued");
        assert!(
            !self.denial_reasons().await.is_empty(),
            "the refusal was not audited"
        );
    }

    /// A client presenting the named dev-PKI identity, or none.
    pub fn client(&self, identity: Option<&str>) -> reqwest::Client {
        client_with(identity, &[&rustls::version::TLS13])
    }
}

pub async fn spawn_app() -> TestApp {
    let db = TestDatabase::create().await;
    spawn_app_on(db, |_| {}).await
}

/// Starts the server on `db` after seeding the test registry into it.
pub async fn spawn_app_on(db: TestDatabase, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings(&db.url);
    adjust(&mut settings);
    let pool = tessera::storage::pool(&settings.database).unwrap();
    crate::fixtures::registry().apply(&pool).await.unwrap();
    let application = Application::build(&settings, pool.clone()).await.unwrap();
    let addr = application.local_addr();
    let ops_addr = application.ops_addr();
    let handle = application.handle();
    let client_trust = application.client_trust();
    let server = tokio::spawn(application.run());
    TestApp {
        addr,
        ops_addr,
        settings,
        pool,
        handle,
        client_trust,
        server,
        _db: db,
    }
}

pub fn certificates(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A rustls client configuration trusting the dev CA, optionally presenting an identity.
pub fn client_tls(
    identity: Option<&str>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let pki = pki();
    let identity = identity.map(|name| {
        (
            certificates(&pki.client_cert(name)),
            PrivateKeyDer::from_pem_file(pki.client_key(name)).unwrap(),
        )
    });
    client_tls_presenting(identity, versions)
}

/// A rustls client configuration trusting the dev CA and presenting exactly this chain.
pub fn client_tls_presenting(
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(&pki().ca_cert()) {
        roots.add(cert).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(tessera::tls::crypto_provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    }
}

pub fn http_client(tls: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap()
}

pub fn client_with(
    identity: Option<&str>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> reqwest::Client {
    http_client(client_tls(identity, versions))
}

/// A `tessera serve` process on `database_url` (already migrated and seeded), on a free port.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub port: u16,
    /// The server's log lines, as they arrive.
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServerProcess {
    pub fn start(database_url: &str) -> Self {
        Self::start_with(database_url, &[])
    }

    /// Starts with extra `TESSERA_*` settings in the environment.
    pub fn start_with(database_url: &str, settings: &[(&str, &std::path::Path)]) -> Self {
        use std::io::{BufRead, BufReader};
        let pki = pki();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TESSERA_SERVER__BIND", "127.0.0.1:0")
            .env("TESSERA_SERVER__CERT", pki.server_cert())
            .env("TESSERA_SERVER__KEY", pki.server_key())
            .env("TESSERA_SERVER__CLIENT_CA", pki.ca_cert())
            .env("TESSERA_TOKENS__ISSUER", ISSUER)
            .env("TESSERA_KEYS__KEK_ID", "test")
            .env("TESSERA_KEYS__KEK", PROCESS_KEK)
            .env("TESSERA_LOG__FORMAT", "json")
            .env("DATABASE_URL", database_url)
            .envs(settings.iter().map(|(name, value)| (*name, *value)))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut port = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line.contains("serving HTTPS") {
                let event: serde_json::Value = serde_json::from_str(&line).unwrap();
                let addr: SocketAddr = event["addr"].as_str().unwrap().parse().unwrap();
                port = Some(addr.port());
                break;
            }
        }
        // Keep draining the log so the server never blocks on a full pipe.
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            port: port.expect("server did not start"),
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    pub fn signal(&self, signal: &str) {
        std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

/// The key-encryption key of server processes started by tests (one per database is enough;
/// tests that share a database between processes must share it).
pub const PROCESS_KEK: &str = "dGVzc2VyYS10ZXN0LWtlay0wMTIzNDU2Nzg5YWJjZGU=";

/// The settings of server processes started by tests, as tools run beside them see them.
pub fn process_settings(database_url: &str) -> Settings {
    let mut settings = test_settings(database_url);
    settings.keys.kek = tessera::config::Kek::parse("keys.kek", "test", PROCESS_KEK).unwrap();
    settings
}

/// A migrated, seeded database for server processes.
pub async fn seeded_database() -> TestDatabase {
    let db = TestDatabase::create().await;
    let pool = PgPool::connect(&db.url).await.unwrap();
    crate::fixtures::registry().apply(&pool).await.unwrap();
    pool.close().await;
    db
}

/// An audit log of its own, as an admin tool has.
pub async fn admin_audit(app: &TestApp) -> tessera::audit::AuditLog {
    admin_audit_with_handle(app).await.0
}

/// An admin tool's audit log and the handle that stops it with a final signed checkpoint.
pub async fn admin_audit_with_handle(
    app: &TestApp,
) -> (tessera::audit::AuditLog, tessera::audit::WriterHandle) {
    let signer = tessera::audit::AuditSigner::load(&app.pool, &app.settings.keys)
        .await
        .unwrap();
    tessera::audit::AuditLog::start(
        app.pool.clone(),
        "test-admin".into(),
        8,
        signer,
        tessera::audit::CheckpointPolicy {
            every_records: 100,
            every: std::time::Duration::from_secs(60),
        },
        None,
    )
}

/// Waits until every audit chain's newest record is covered by a checkpoint its node signed:
/// exports vouch only with those.
pub async fn wait_until_signed(pool: &PgPool) {
    for _ in 0..100 {
        let unsigned: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT chain_id, max(seq) AS head FROM audit_events
                                    GROUP BY chain_id) chains
              WHERE NOT EXISTS (SELECT 1 FROM audit_checkpoints c
                                 WHERE c.chain_id = chains.chain_id AND c.seq >= chains.head)",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if unsigned == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("audit chains were not checkpointed within 5 s");
}

/// An export of the hour around now, optionally of one client's records.
pub fn export_window(client: Option<&str>) -> tessera::audit::ExportFilter {
    let now = time::OffsetDateTime::now_utc();
    tessera::audit::ExportFilter {
        since: now - time::Duration::hours(1),
        until: now + time::Duration::hours(1),
        partner: None,
        client: client.map(str::to_owned),
        consent: None,
        txn: None,
    }
}
