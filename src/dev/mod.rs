//! `tessera dev`: a working server on a fresh machine with no set-up. It finds a database (the
//! configured one, else the local default server, else a private cluster it starts itself),
//! generates a dev PKI if there is none, migrates, and serves HTTPS.

pub mod partner_idp;
pub mod pki;
pub mod postgres;
pub mod seed;
pub mod walkthrough;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use secrecy::SecretString;
use sqlx::Connection;

use crate::config::{Kek, Provisioned, Settings, TlsFiles};
use crate::dev::pki::DevPki;
use crate::dev::postgres::LocalCluster;
use crate::dev::seed::Seed;
use crate::startup::Application;

mod admins;

const DEV_DATABASE: &str = "tessera_dev";

#[derive(Debug, clap::Args)]
pub struct DevOptions {
    /// TOML settings file; anything it leaves out is provisioned.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where the dev PKI lives (generated if absent).
    #[arg(long, default_value = "certs/dev")]
    pub certs_dir: PathBuf,
    /// Where a private PostgreSQL cluster is kept when one is needed.
    #[arg(long, default_value = ".tessera/pgdata")]
    pub cluster_dir: PathBuf,
    #[arg(long, default_value_t = 54329)]
    pub cluster_port: u16,
    /// Demo partners, audiences and clients to upsert at start.
    #[arg(long, default_value = "seed/dev.toml")]
    pub seed: PathBuf,
    /// The dev key-encryption key (generated if absent; never use it outside dev).
    #[arg(long, default_value = ".tessera/dev-kek")]
    pub kek_file: PathBuf,
    /// The local default server tried before starting a private cluster.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub local_database_url: String,
}

pub async fn run(options: DevOptions) -> anyhow::Result<()> {
    let (pki, generated) = DevPki::ensure(&options.certs_dir)?;
    let pki_origin = if generated { "generated" } else { "reused" };

    let configured = Settings::configured_database_url(options.config.as_deref())?;
    let database_configured = configured.is_some();
    let (database_url, database_origin, cluster) = match configured {
        Some(url) => (
            url,
            "configured (DATABASE_URL or database.url)".to_owned(),
            None,
        ),
        None => find_or_start_database(&options).await?,
    };
    // The walkthrough's audit command names the database only when `dev` found or made it:
    // a configured one is in the shell's environment or the settings file already.
    let tour_database = (!database_configured).then(|| database_url.clone());
    // The issuer names the port, so an ephemeral port is chosen before the server binds.
    let port = match Settings::configured_port(options.config.as_deref())? {
        0 => std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|listener| listener.local_addr())
            .context("choosing a free port")?
            .port(),
        port => port,
    };
    let mut settings = Settings::load_with(
        options.config.as_deref(),
        Provisioned {
            tls: Some(TlsFiles {
                cert: pki.server_cert(),
                key: pki.server_key(),
                client_ca: pki.ca_cert(),
            }),
            database_url: Some(SecretString::from(database_url)),
            // The dev server certificate names localhost (and 127.0.0.1).
            issuer: Some(format!("https://localhost:{port}")),
            kek: Some(dev_kek(&options.kek_file)?),
        },
    )?;
    // Operators should not expose metrics on the partner-facing port; in dev they go to
    // loopback over plain HTTP unless configured otherwise.
    settings.server.ops_bind = settings
        .server
        .ops_bind
        .or(Some(std::net::SocketAddr::from((
            std::net::Ipv4Addr::LOCALHOST,
            0,
        ))));
    settings.server.bind.set_port(port);
    // In dev the dev CA is the admin trust anchor too.
    settings.admin_client_ca = settings.admin_client_ca.or(Some(pki.ca_cert()));
    let tracing = crate::telemetry::init(&settings.log);

    let pool = crate::storage::pool(&settings.database)?;
    crate::storage::migrate(&pool)
        .await
        .context("migrating the dev database")?;
    let seed = Seed::from_file(&options.seed)?;
    seed.apply(&pool).await?;
    walkthrough::seed_agreements(&seed, &pool, &settings, &pki.dir).await?;
    admins::register(&pool, &settings, &pki).await?;
    let client_ids: Vec<&str> = seed
        .clients
        .iter()
        .map(|client| client.id.as_str())
        .collect();
    let application = Application::build(&settings, pool).await?;
    // Clients discover and check the issuer; any other spelling of the address breaks that.
    let url = &settings.tokens.issuer;
    let ops = application
        .ops_addr()
        .map(|addr| format!("http://{addr}/metrics, /healthz, /readyz"))
        .unwrap_or_default();
    let certs = pki.dir.display();
    let tour = walkthrough::Tour {
        issuer: url,
        certs_dir: &pki.dir,
        kek_file: &options.kek_file,
        config: options.config.as_deref(),
        database_url: tour_database.as_deref(),
    };
    let tour: String = tour
        .lines()
        .iter()
        .map(|line| format!("    {line}\n"))
        .collect();
    let banner = format!(
        "Tessera dev server\n  \
         URL:       {url}\n  \
         Database:  {database_origin}\n  \
         Dev PKI:   {certs} ({pki_origin}; CA {certs}/ca.pem, clients partner-a, partner-b, settlement, resource-server; admins admin, admin-2; partner B's identity provider key)\n  \
         Clients:   {clients} (seeded from {seed})\n  \
         Try:       curl --cacert {certs}/ca.pem --cert {certs}/partner-a.pem --key {certs}/partner-a.key \\\n               \
         -d grant_type=client_credentials -d client_id=partner-a-treasury \\\n               \
         -d resource=https://ledger.tessera.test {url}/oauth2/token\n  \
         Identity:  curl --cacert {certs}/ca.pem --cert {certs}/partner-a.pem --key {certs}/partner-a.key {url}/mtls/identity\n  \
         Ops:       {ops}\n\
         Walkthrough (run these lines in order in one bash shell):\n\
         {tour}\n  \
         Stop:      Ctrl-C\n",
        clients = client_ids.join(", "),
        seed = options.seed.display(),
    );
    // Written in one piece, and a reader that stopped reading (a closed pipe) is no reason
    // to stop the server, as `println!` would.
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(banner.as_bytes())
        .and_then(|()| stdout.flush());
    drop(stdout);
    let served = application.run().await;
    tracing.shutdown().await;
    if let Some(cluster) = cluster {
        cluster.stop().await?;
    }
    served.context("server failed")
}

async fn find_or_start_database(
    options: &DevOptions,
) -> anyhow::Result<(String, String, Option<LocalCluster>)> {
    let local_answers = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::PgConnection::connect(&options.local_database_url),
    )
    .await
    .is_ok_and(|connected| connected.is_ok());
    if local_answers {
        let url =
            crate::storage::ensure_database(&options.local_database_url, DEV_DATABASE).await?;
        return Ok((
            url,
            "local default server, database tessera_dev".to_owned(),
            None,
        ));
    }
    let (cluster, initialised) = LocalCluster::start(&options.cluster_dir, options.cluster_port)
        .await
        .context("no database configured and none answering locally; starting a private cluster")?;
    let url = crate::storage::ensure_database(&cluster.admin_url(), DEV_DATABASE).await?;
    let origin = format!(
        "private cluster in {} on port {} ({})",
        cluster.data_dir().display(),
        cluster.port(),
        if initialised { "initialised" } else { "reused" }
    );
    Ok((url, origin, Some(cluster)))
}

fn dev_kek(path: &std::path::Path) -> anyhow::Result<Kek> {
    use base64::Engine;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if !path.is_file() {
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key).map_err(|_| anyhow::anyhow!("no system randomness"))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut file| {
                file.write_all(
                    base64::engine::general_purpose::STANDARD
                        .encode(key)
                        .as_bytes(),
                )
            })
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let encoded =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Kek::parse("--kek-file", "dev", &encoded)?)
}
