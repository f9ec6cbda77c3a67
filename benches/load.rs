//! Load generator: starts the real `tessera serve` binary (release build) on a fresh database
//! and drives it over mutual TLS from this process, on the same machine.
//!
//! `cargo bench --bench load` (set `LOAD_SECONDS` to change the measuring window, default 10).
//! Uses `DATABASE_URL` when set, otherwise a private PostgreSQL cluster under `target/`.

// A measuring tool, not server code: it indexes its own fixed-size buffers and responses.
#![allow(clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tessera::dev::pki::DevPki;
use tessera::dev::postgres::LocalCluster;
use tessera::dev::seed::{AudienceSeed, ClientSeed, PartnerSeed, Seed};

const ISSUER: &str = "https://tessera.bench";
const JWT_CLIENT: &str = "bench-jwt";

struct Bench {
    pki: DevPki,
    base_url: String,
    database_url: String,
    jwt_key: Vec<u8>,
    /// A token of bench-mtls for the ledger, exchanged in the exchange scenario.
    subject_token: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    ClientCredentials,
    FullHandshake,
    PrivateKeyJwt,
    Healthz,
    Exchange,
}

struct Report {
    name: String,
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Report {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let index = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[index] as f64 / 1000.0
    }

    fn print(&self) {
        println!(
            "{:<44} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  errors {}",
            self.name,
            self.rate(),
            self.percentile(0.50),
            self.percentile(0.99),
            self.percentile(1.0),
            self.errors
        );
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let seconds: u64 = std::env::var("LOAD_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(10);
    let window = Duration::from_secs(seconds);
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("load");
    std::fs::create_dir_all(&root)?;
    let (database_server, cluster) = database(&root).await?;
    println!(
        "machine: {} cores; window {seconds} s per scenario; server and load generator share the machine",
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
    );

    for audit in [true, false] {
        let database_name = format!("tessera_bench_{}", uuid::Uuid::new_v4().simple());
        let database_url =
            tessera::storage::ensure_database(&database_server, &database_name).await?;
        let (pki, _) = DevPki::ensure(&root.join("pki"))?;
        let jwt_key = prepare(&database_url).await?;
        let mut server = start_server(&pki, &database_url, audit)?;
        let mut bench = Bench {
            pki,
            base_url: server.1.clone(),
            database_url,
            jwt_key,
            subject_token: String::new(),
        };
        bench.subject_token = subject_token(&bench).await?;
        let bench = Arc::new(bench);
        let label = if audit { "audit on" } else { "audit off" };
        println!("\n== {label} ==");
        let scenarios: &[(Scenario, usize)] = if audit {
            &[
                (Scenario::Healthz, 64),
                (Scenario::ClientCredentials, 16),
                (Scenario::ClientCredentials, 64),
                (Scenario::FullHandshake, 16),
                (Scenario::PrivateKeyJwt, 64),
                (Scenario::Exchange, 64),
            ]
        } else {
            &[(Scenario::ClientCredentials, 64), (Scenario::Exchange, 64)]
        };
        let mut healthz_rate = None;
        for &(scenario, connections) in scenarios {
            let report = run(bench.clone(), scenario, connections, window).await?;
            report.print();
            if scenario == Scenario::Healthz {
                healthz_rate = Some(report.rate());
            }
            if let (Scenario::ClientCredentials, 64, Some(ceiling)) =
                (scenario, connections, healthz_rate)
            {
                println!(
                    "{:<44} {:>9.2}",
                    "(a) client_credentials / (d) healthz",
                    report.rate() / ceiling
                );
            }
        }
        println!(
            "{:<44} {:>9} MiB",
            "server peak RSS (VmHWM)",
            peak_rss_mib(server.0.id())
        );
        if audit {
            let issued: i64 = {
                use sqlx::Connection;
                let mut connection = sqlx::PgConnection::connect(&bench.database_url).await?;
                sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE kind = 'token_issued'")
                    .fetch_one(&mut connection)
                    .await?
            };
            println!("{:<44} {:>9}", "audit records of issued tokens", issued);
        }
        stop(&mut server.0)?;
    }
    if let Some(cluster) = cluster {
        cluster.stop().await?;
    }
    Ok(())
}

async fn database(root: &Path) -> Result<(String, Option<LocalCluster>)> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return Ok((url, None));
    }
    use std::os::unix::fs::PermissionsExt;
    let mut dir = Some(root);
    while let Some(path) = dir {
        let mut permissions = std::fs::metadata(path)?.permissions();
        permissions.set_mode(permissions.mode() | 0o005);
        std::fs::set_permissions(path, permissions)?;
        dir = path.parent();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let (cluster, _) = LocalCluster::start(&root.join("pgdata"), port).await?;
    Ok((cluster.admin_url(), Some(cluster)))
}

/// Migrates and seeds the registry; returns the private_key_jwt client's PKCS#8 key.
async fn prepare(database_url: &str) -> Result<Vec<u8>> {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let pool = sqlx::PgPool::connect(database_url).await?;
    tessera::storage::migrate(&pool).await?;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| anyhow!("key generation"))?
        .as_ref()
        .to_vec();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
        .map_err(|_| anyhow!("key parsing"))?;
    let point = pair.public_key().as_ref();
    let audiences: std::collections::BTreeMap<String, Vec<String>> = [
        (
            "https://ledger.bench".to_owned(),
            vec!["ledger:read".to_owned()],
        ),
        (
            "https://archive.bench".to_owned(),
            vec!["ledger:read".to_owned()],
        ),
    ]
    .into();
    let seed = Seed {
        partners: vec![PartnerSeed {
            id: "partner-a".into(),
            name: "Partner A".into(),
            region: "eu".into(),
            status: "active".into(),
        }],
        audiences: ["https://ledger.bench", "https://archive.bench"]
            .into_iter()
            .map(|id| AudienceSeed {
                id: id.into(),
                name: id.into(),
                scopes: vec!["ledger:read".into()],
                max_lifetime_s: 600,
                require_certificate_bound: false,
                region: "eu".into(),
                kind: "standard".into(),
                cross_region_allowed: false,
            })
            .collect(),
        clients: vec![
            ClientSeed {
                id: "bench-mtls".into(),
                partner: "partner-a".into(),
                name: "bench mTLS".into(),
                auth_method: "tls_client_auth".into(),
                tls_subject_dn: Some("CN=partner-a,O=Tessera Dev".into()),
                grant_types: vec![
                    "client_credentials".into(),
                    "urn:ietf:params:oauth:grant-type:token-exchange".into(),
                ],
                max_lifetime_s: 300,
                status: "active".into(),
                audiences: audiences.clone(),
                ..ClientSeed::default()
            },
            ClientSeed {
                id: JWT_CLIENT.into(),
                partner: "partner-a".into(),
                name: "bench private_key_jwt".into(),
                auth_method: "private_key_jwt".into(),
                jwks: Some(json!({ "keys": [{
                    "kty": "EC", "crv": "P-256", "kid": "bench", "alg": "ES256",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
                }] })),
                grant_types: vec!["client_credentials".into()],
                max_lifetime_s: 300,
                status: "active".into(),
                audiences,
                ..ClientSeed::default()
            },
        ],
        ..Seed::default()
    };
    seed.apply(&pool).await?;
    pool.close().await;
    Ok(pkcs8)
}

fn start_server(pki: &DevPki, database_url: &str, audit: bool) -> Result<(Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_tessera"));
    let child = Command::new(binary)
        .arg("serve")
        .env("TESSERA_SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("TESSERA_SERVER__CERT", pki.server_cert())
        .env("TESSERA_SERVER__KEY", pki.server_key())
        .env("TESSERA_SERVER__CLIENT_CA", pki.ca_cert())
        .env("TESSERA_TOKENS__ISSUER", ISSUER)
        .env("TESSERA_KEYS__KEK_ID", "bench")
        .env(
            "TESSERA_KEYS__KEK",
            "YmVuY2hiZW5jaGJlbmNoYmVuY2hiZW5jaGJlbmNoYmU=",
        )
        .env("TESSERA_AUDIT__ENABLED", audit.to_string())
        .env("TESSERA_DATABASE__MAX_CONNECTIONS", "32")
        .env("TESSERA_LOG__FILTER", "warn")
        .env("DATABASE_URL", database_url)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting tessera serve")?;
    let address = format!("127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(&address).is_ok() {
            return Ok((child, format!("https://localhost:{port}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(anyhow!("server did not start"))
}

fn stop(child: &mut Child) -> Result<()> {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    child.wait()?;
    Ok(())
}

fn peak_rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}

fn tls(bench: &Bench, identity: Option<&str>) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(bench.pki.ca_cert())? {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(tessera::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(name) => {
            let chain = CertificateDer::pem_file_iter(bench.pki.client_cert(name))?
                .collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_file(bench.pki.client_key(name))?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    // Every handshake in the full-handshake scenario must be a full one.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

fn client(bench: &Bench, identity: Option<&str>, keep_alive: bool) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls(bench, identity)?)
        .http1_only();
    builder = if keep_alive {
        builder.pool_max_idle_per_host(1)
    } else {
        builder.pool_max_idle_per_host(0)
    };
    Ok(builder.build()?)
}

async fn subject_token(bench: &Bench) -> Result<String> {
    let response: serde_json::Value = client(bench, Some("partner-a"), true)?
        .post(format!("{}/oauth2/token", bench.base_url))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "bench-mtls"),
            ("resource", "https://ledger.bench"),
        ])
        .send()
        .await?
        .json()
        .await?;
    response["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no subject token: {response}"))
}

fn assertion(key: &[u8]) -> Result<String> {
    let now = tessera::crypto::keys::unix_now();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("bench".into());
    let claims = json!({
        "iss": JWT_CLIENT, "sub": JWT_CLIENT, "aud": ISSUER,
        "iat": now, "exp": now + 60, "jti": uuid::Uuid::new_v4().to_string(),
    });
    Ok(jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_der(key),
    )?)
}

async fn one_request(bench: &Bench, client: &reqwest::Client, scenario: Scenario) -> Result<()> {
    let response = match scenario {
        Scenario::Healthz => {
            client
                .get(format!("{}/healthz", bench.base_url))
                .send()
                .await?
        }
        Scenario::ClientCredentials | Scenario::FullHandshake => {
            client
                .post(format!("{}/oauth2/token", bench.base_url))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", "bench-mtls"),
                    ("resource", "https://ledger.bench"),
                ])
                .send()
                .await?
        }
        Scenario::Exchange => {
            client
                .post(format!("{}/oauth2/token", bench.base_url))
                .form(&[
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:token-exchange",
                    ),
                    ("client_id", "bench-mtls"),
                    ("subject_token", bench.subject_token.as_str()),
                    (
                        "subject_token_type",
                        "urn:ietf:params:oauth:token-type:access_token",
                    ),
                    ("audience", "https://archive.bench"),
                ])
                .send()
                .await?
        }
        Scenario::PrivateKeyJwt => {
            let assertion = assertion(&bench.jwt_key)?;
            client
                .post(format!("{}/oauth2/token", bench.base_url))
                .form(&[
                    ("grant_type", "client_credentials"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", assertion.as_str()),
                    ("resource", "https://ledger.bench"),
                ])
                .send()
                .await?
        }
    };
    let status = response.status();
    response.bytes().await?;
    if status.is_success() {
        Ok(())
    } else {
        Err(anyhow!("status {status}"))
    }
}

async fn run(
    bench: Arc<Bench>,
    scenario: Scenario,
    connections: usize,
    window: Duration,
) -> Result<Report> {
    let name = match scenario {
        Scenario::ClientCredentials => format!("(a) client_credentials, {connections} kept-alive"),
        Scenario::FullHandshake => {
            format!("(b) full TLS 1.3 mTLS handshake each, {connections} conc.")
        }
        Scenario::PrivateKeyJwt => format!("(c) private_key_jwt, {connections} kept-alive"),
        Scenario::Healthz => format!("(d) /healthz, {connections} kept-alive"),
        Scenario::Exchange => format!("(e) token exchange, {connections} kept-alive"),
    };
    let identity = match scenario {
        Scenario::PrivateKeyJwt => None,
        _ => Some("partner-a"),
    };
    let warmup = Duration::from_secs(1);
    let start = Instant::now() + warmup;
    let end = start + window;
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let bench = bench.clone();
        let client = client(&bench, identity, scenario != Scenario::FullHandshake)?;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(16_384);
            let mut errors = 0usize;
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let result = one_request(&bench, &client, scenario).await;
                if began >= start {
                    match result {
                        Ok(()) => latencies.push(began.elapsed().as_micros() as u64),
                        Err(_) => errors += 1,
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, task_errors) = task.await?;
        latencies_us.extend(latencies);
        errors += task_errors;
    }
    latencies_us.sort_unstable();
    Ok(Report {
        name,
        requests: latencies_us.len(),
        errors,
        elapsed: window,
        latencies_us,
    })
}
