//! Building and running the HTTPS server from validated settings.

pub mod drain;
pub mod listeners;
pub mod scheduler;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, web};
use sqlx::PgPool;

use crate::audit::{AuditLog, AuditSigner, CheckpointPolicy, WriterHandle};
use crate::config::Settings;
use crate::crypto::jwks::JwksCache;
use crate::crypto::keys::{KeyError, KeyRing};
use crate::http::{BodyDeadline, request_context};
use crate::policy::{PolicyEngine, PolicyError};
use crate::service::Services;
use crate::startup::listeners::ConnectionCounts;
use crate::startup::scheduler::{JobError, Scheduler};
use crate::storage::StorageError;
use crate::storage::clients::{RegistryError, UsageTracker};
use crate::storage::registry::Registry;
use crate::telemetry::metrics::Metrics;
use crate::tls::{ClientTrust, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("setting `{setting}`: cannot listen on {addr}: {source}")]
    Bind {
        setting: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("signing keys: {0}")]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("policies: {0}")]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Trust(#[from] crate::storage::trust::TrustError),
    #[error("setting `trust.jwks_ca_file`: {0}")]
    JwksClient(String),
    #[error("installing signal handlers: {source}")]
    Signals { source: std::io::Error },
}

pub struct Application {
    server: Server,
    local_addr: SocketAddr,
    ops_addr: Option<SocketAddr>,
    pool: PgPool,
    client_trust: Arc<ClientTrust>,
    scheduler: Scheduler,
    audit_writer: Option<WriterHandle>,
    stop_signals: StopSignals,
    draining: crate::startup::drain::Draining,
}

impl Application {
    /// Loads keys and trust, binds the listener and prepares the server; nothing is served
    /// until [`Self::run`].
    pub async fn build(settings: &Settings, pool: PgPool) -> Result<Self, StartupError> {
        // Every TLS client in the process (partner JWKS fetches) uses the same provider as
        // the server; an already installed default is the same one.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let signal_error = |source| StartupError::Signals { source };
        let stop_signals = StopSignals::install().map_err(signal_error)?;
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(signal_error)?;
        let client_roots =
            crate::tls::read_certificates("server.client_ca", &settings.server.tls.client_ca)?;
        let client_trust = ClientTrust::new(&client_roots)?;
        client_trust.replace_crls(crate::tls::read_crls(&settings.server.client_crls)?)?;
        if let Some(admin_ca) = &settings.admin_client_ca {
            client_trust.replace_admin_roots(&crate::tls::read_certificates(
                "admin.client_ca",
                admin_ca,
            )?)?;
        }
        let tls = crate::tls::server_config(
            &settings.server.tls,
            settings.server.tls_min_version,
            client_trust.clone(),
        )?;
        client_trust
            .replace_pinned(crate::storage::clients::self_signed_certificates(&pool).await?);
        let partner_cas = crate::storage::trust::client_cas(&pool).await?;
        if !partner_cas.is_empty() {
            client_trust.replace_partner_roots(&partner_cas);
        }
        crate::service::keys::ensure_keys(&pool, &settings.keys).await?;
        let keys = KeyRing::load(&pool, settings.keys.clone()).await?;
        let metrics = Metrics::new()?;
        let (audit, audit_writer) = if settings.audit.enabled {
            let signer = AuditSigner::load(&pool, &settings.keys).await?;
            // The writer's own connections live on this runtime; request handlers run on the
            // workers' runtimes, whose connections die with them at shutdown, before the
            // writer's last batch and checkpoint.
            let writer_pool = crate::storage::pool(&crate::config::DatabaseSettings {
                max_connections: 2,
                ..settings.database.clone()
            })?;
            let (audit, writer) = AuditLog::start(
                writer_pool,
                node_name(),
                settings.audit.batch_max,
                signer,
                CheckpointPolicy {
                    every_records: settings.audit.checkpoint_every_records,
                    every: settings.audit.checkpoint_interval,
                },
                Some(metrics.clone()),
            );
            (
                audit.with_wait_limit(settings.audit.wait_timeout),
                Some(writer),
            )
        } else {
            tracing::warn!("audit trail disabled: benchmark mode, never for production");
            (AuditLog::disabled(pool.clone()), None)
        };
        let usage = Arc::new(UsageTracker::default());
        let policy = Arc::new(PolicyEngine::load(&settings.policy_dir)?);
        let mut scheduler = Scheduler::default();
        schedule_usage_flush(&mut scheduler, usage.clone(), pool.clone());
        schedule_expiry(&mut scheduler, pool.clone());
        schedule_governance_refresh(&mut scheduler, metrics.clone(), pool.clone());
        schedule_policy_reload(&mut scheduler, policy.clone(), audit.clone(), hangup);
        schedule_key_maintenance(
            &mut scheduler,
            keys.clone(),
            pool.clone(),
            settings.tokens.max_lifetime,
            audit.clone(),
        );
        let trust_changed = Arc::new(tokio::sync::Notify::new());
        schedule_trust_refresh(
            &mut scheduler,
            client_trust.clone(),
            settings.server.client_crls.clone(),
            pool.clone(),
            settings.registry.cache_ttl,
            trust_changed.clone(),
        );
        let upstream = crate::service::upstream::Broker::new(
            pool.clone(),
            settings.keys.clone(),
            audit.clone(),
            metrics.clone(),
            format!("{}/{}", node_name(), uuid::Uuid::new_v4()),
        );
        schedule_upstream_rotation(&mut scheduler, upstream.clone());
        let services = web::Data::new(Services {
            pool: pool.clone(),
            registry: Registry::new(pool.clone(), settings.registry.cache_ttl),
            keys,
            audit,
            tokens: settings.tokens.clone(),
            rotation_interval: settings.keys.rotation_interval,
            metrics: metrics.clone(),
            usage,
            policy,
            max_delegation_depth: settings.max_delegation_depth,
            jwks: JwksCache::new(jwks_client(settings.jwks_ca_file.as_deref())?),
            revocations: crate::storage::revocations::RevocationCache::new(
                settings.registry.cache_ttl,
            ),
            upstream,
        });
        {
            let services = services.clone();
            // Its own connection: listening holds one for good, which must not be one that
            // requests wait for.
            let listener_pool = crate::storage::pool(&crate::config::DatabaseSettings {
                max_connections: 1,
                ..settings.database.clone()
            })?;
            scheduler.keep(crate::service::admin::propagation::listen(
                listener_pool,
                move || {
                    services.registry.forget_all();
                    trust_changed.notify_one();
                },
            ));
        }
        let metrics = web::Data::new(metrics);
        let pool_data = web::Data::new(pool.clone());
        let audit_data = web::Data::new(services.audit.clone());
        let trust_data = web::Data::from(client_trust.clone());
        let body_limit = settings.server.body_limit_bytes;
        let body_deadline = BodyDeadline(settings.server.request_timeout);
        let draining = crate::startup::drain::Draining::default();
        let draining_data = web::Data::new(draining.clone());
        let metrics_on_main_port = settings.server.ops_bind.is_none();

        let main_app = {
            let metrics = metrics.clone();
            let pool_data = pool_data.clone();
            let audit_data = audit_data.clone();
            let draining_data = draining_data.clone();
            move || {
                App::new()
                    .app_data(metrics.clone())
                    .app_data(pool_data.clone())
                    .app_data(audit_data.clone())
                    .app_data(trust_data.clone())
                    .app_data(services.clone())
                    .app_data(draining_data.clone())
                    .app_data(body_deadline)
                    .app_data(web::PayloadConfig::new(body_limit))
                    .app_data(web::FormConfig::default().limit(body_limit))
                    .app_data(web::JsonConfig::default().limit(body_limit))
                    .wrap(crate::http::fallback::error_bodies())
                    .wrap(from_fn(crate::startup::drain::close_when_draining))
                    .wrap(from_fn(request_context))
                    .configure(|config| {
                        if metrics_on_main_port {
                            crate::http::ops::metrics_route(config);
                        }
                    })
                    .configure(crate::http::ops::routes)
                    .configure(crate::http::oauth::routes)
                    .configure(crate::http::admin::routes)
            }
        };
        let builder = crate::startup::listeners::builder(&settings.server);
        let addr = settings.server.bind;
        let bind_error = |addr, setting, source| StartupError::Bind {
            setting,
            addr,
            source,
        };
        let (builder, local_addr) = crate::startup::listeners::https(
            builder,
            &settings.server,
            tls,
            ConnectionCounts::new(settings.server.max_connections_per_address),
            crate::tls::on_connect,
            main_app,
        )
        .map_err(|source| bind_error(addr, "server.bind", source))?;
        let (builder, ops_addr) = match settings.server.ops_bind {
            None => (builder, None),
            Some(ops_addr) => {
                let ops_app = move || {
                    App::new()
                        .app_data(metrics.clone())
                        .app_data(pool_data.clone())
                        .app_data(audit_data.clone())
                        .app_data(draining_data.clone())
                        .wrap(crate::http::fallback::error_bodies())
                        .wrap(from_fn(crate::startup::drain::close_when_draining))
                        .wrap(from_fn(request_context))
                        .configure(crate::http::ops::probes)
                };
                let (builder, bound) = crate::startup::listeners::plain(
                    builder,
                    ops_addr,
                    settings.server.request_timeout,
                    ops_app,
                )
                .map_err(|source| bind_error(ops_addr, "server.ops_bind", source))?;
                (builder, Some(bound))
            }
        };
        Ok(Self {
            server: builder.run(),
            local_addr,
            ops_addr,
            pool,
            client_trust,
            scheduler,
            audit_writer,
            stop_signals,
            draining,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The plain-HTTP operations listener's address, when `server.ops_bind` is set.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// The trust store behind client-certificate verification; replacing its roots takes
    /// effect on the next handshake.
    pub fn client_trust(&self) -> Arc<ClientTrust> {
        self.client_trust.clone()
    }

    /// Serves until stopped: SIGTERM or SIGINT stop accepting, close kept-alive connections
    /// through their responses for [`crate::startup::drain::WINDOW`], let in-flight requests finish
    /// (up to `server.shutdown_timeout_s`), then close the database pool.
    pub async fn run(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let stop_signals = self.stop_signals;
        let draining = self.draining;
        let signals = tokio::spawn(async move {
            stop_signals.recv().await;
            tracing::info!("stop signal received; draining in-flight requests");
            // Stopping closes idle kept-alive connections at once, racing any request a
            // client is sending on one. First, for a moment, nothing new is accepted and
            // every response tells its client to close the connection.
            draining.start();
            handle.pause().await;
            tokio::time::sleep(crate::startup::drain::WINDOW).await;
            handle.stop(true).await;
        });
        let result = self.server.await;
        signals.abort();
        self.scheduler.stop().await;
        if let Some(writer) = self.audit_writer {
            writer.finish().await;
        }
        self.pool.close().await;
        tracing::info!("server stopped");
        result
    }
}

/// SIGTERM and SIGINT, registered while the server is built: from then on they stop it
/// gracefully instead of killing the process.
struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// Names this process in audit records: host and process id.
fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".to_owned());
    format!("{host}/{}", std::process::id())
}

/// Keeps client-certificate trust in step with the database and the CRL files: the client CAs
/// of active partner trust profiles, each its partner's own anchor, the pinned self-signed
/// certificates of registered clients, and the revocation lists every anchor checks. Each of
/// the three is refreshed even when another fails.
fn schedule_trust_refresh(
    scheduler: &mut Scheduler,
    trust: Arc<ClientTrust>,
    crl_files: Vec<std::path::PathBuf>,
    pool: PgPool,
    interval: Duration,
    changed: Arc<tokio::sync::Notify>,
) {
    let current_partner_cas = Arc::new(std::sync::Mutex::new(Vec::new()));
    // A registry change (a new partner CA, a pinned certificate) is read at once.
    scheduler.every_or_when(
        "trust refresh",
        interval.max(Duration::from_millis(500)),
        changed,
        move || {
            let (trust, crl_files, pool) = (trust.clone(), crl_files.clone(), pool.clone());
            let current_partner_cas = current_partner_cas.clone();
            async move {
                let mut failures = Vec::new();
                match crate::storage::clients::self_signed_certificates(&pool).await {
                    Ok(certificates) => trust.replace_pinned(certificates),
                    Err(error) => failures.push(JobError::new(
                        "refreshing pinned client certificates failed",
                        error,
                    )),
                }
                // An unreadable CRL keeps the last one read: what it revoked stays revoked.
                match crate::tls::read_crls(&crl_files) {
                    Ok(crls) => {
                        if let Err(error) = trust.replace_crls(crls) {
                            tracing::error!(%error, "a CRL is unusable; the last one read stays");
                        }
                    }
                    Err(error) => failures.push(JobError::new("re-reading CRLs failed", error)),
                }
                match crate::storage::trust::client_cas(&pool).await {
                    Ok(partner_cas) => {
                        let mut current = current_partner_cas
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        if partner_cas != *current {
                            trust.replace_partner_roots(&partner_cas);
                            *current = partner_cas;
                        }
                    }
                    Err(error) => {
                        failures.push(JobError::new("refreshing partner CAs failed", error))
                    }
                }
                JobError::all(failures)
            }
        },
    );
}

/// Refreshes the signing keys on the configured interval, rotating them first when due.
fn schedule_key_maintenance(
    scheduler: &mut Scheduler,
    keys: Arc<KeyRing>,
    pool: PgPool,
    max_token_lifetime: Duration,
    audit: AuditLog,
) {
    let interval = keys.settings().refresh_interval;
    scheduler.every("key maintenance", interval, move || {
        let (keys, pool, audit) = (keys.clone(), pool.clone(), audit.clone());
        async move {
            crate::service::keys::maintain(&keys, &pool, max_token_lifetime, &audit)
                .await
                .map_err(|error| {
                    JobError::new(
                        "refreshing signing keys failed; keeping the current set",
                        error,
                    )
                })
        }
    });
}

/// The HTTPS client that fetches partners' key sets.
fn jwks_client(ca_file: Option<&std::path::Path>) -> Result<reqwest::Client, StartupError> {
    let builder = reqwest::Client::builder()
        .user_agent("tessera")
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none());
    let builder = match ca_file {
        None => builder,
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in crate::tls::read_certificates("trust.jwks_ca_file", path)? {
                roots
                    .add(certificate)
                    .map_err(|error| StartupError::JwksClient(error.to_string()))?;
            }
            let tls = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
                .with_safe_default_protocol_versions()
                .map_err(|error| StartupError::JwksClient(error.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.tls_backend_preconfigured(tls)
        }
    };
    builder
        .build()
        .map_err(|error| StartupError::JwksClient(error.to_string()))
}

/// Replay records, revocations and lineage are kept only while the tokens and assertions they
/// guard could still be presented (an exchanged token never outlives its parent). Every table
/// is cleaned even when another fails.
fn schedule_expiry(scheduler: &mut Scheduler, pool: PgPool) {
    use crate::storage::expiry::{Expiring, delete_expired};
    scheduler.every("expiry", Duration::from_secs(60), move || {
        let pool = pool.clone();
        async move {
            let mut failures = Vec::new();
            for table in Expiring::ALL {
                if let Err(error) = delete_expired(&pool, table).await {
                    let what = format!("expired rows not removed from {}", table.table());
                    failures.push(JobError::new(&what, error));
                }
            }
            JobError::all(failures)
        }
    });
}

/// Governance gauges come from the registry; they are recomputed here so that a scrape of
/// `/metrics` never runs SQL.
fn schedule_governance_refresh(scheduler: &mut Scheduler, metrics: Metrics, pool: PgPool) {
    scheduler.every("governance refresh", Duration::from_secs(30), move || {
        let (metrics, pool) = (metrics.clone(), pool.clone());
        async move {
            metrics
                .refresh_governance(&pool)
                .await
                .map_err(|error| JobError::new("governance gauges not refreshed", error))
        }
    });
}

/// Bank tokens are fetched before they are needed: each node looks every second for tokens
/// inside their refresh window, and the fenced claim lets exactly one node fetch each.
fn schedule_upstream_rotation(scheduler: &mut Scheduler, broker: crate::service::upstream::Broker) {
    scheduler.every("upstream rotation", Duration::from_secs(1), move || {
        let broker = broker.clone();
        async move { broker.rotate_due().await }
    });
}

fn schedule_usage_flush(scheduler: &mut Scheduler, usage: Arc<UsageTracker>, pool: PgPool) {
    scheduler.every("usage flush", Duration::from_secs(10), move || {
        let (usage, pool) = (usage.clone(), pool.clone());
        async move {
            usage
                .flush(&pool)
                .await
                .map_err(|error| JobError::new("client usage not recorded", error))
        }
    });
}

/// SIGHUP reloads the policies; an invalid set is refused and the running one stays.
fn schedule_policy_reload(
    scheduler: &mut Scheduler,
    policy: Arc<PolicyEngine>,
    audit: AuditLog,
    hangup: tokio::signal::unix::Signal,
) {
    scheduler.on_signal("policy reload", hangup, move || {
        let (policy, audit) = (policy.clone(), audit.clone());
        async move {
            let before = policy.hash();
            let (outcome, details) = match policy.reload() {
                Ok(hash) => {
                    tracing::info!(%hash, "policies reloaded");
                    (
                        crate::audit::Outcome::Allow,
                        crate::audit::EventDetails {
                            policy_set_hash: Some(hash.clone()),
                            changes: Some(serde_json::json!({ "before": before, "after": hash })),
                            ..crate::audit::EventDetails::default()
                        },
                    )
                }
                Err(error) => {
                    tracing::error!(%error, "policy reload refused; the running set stays");
                    (
                        crate::audit::Outcome::Deny,
                        crate::audit::EventDetails {
                            policy_set_hash: Some(before),
                            reason: Some(error.to_string()),
                            ..crate::audit::EventDetails::default()
                        },
                    )
                }
            };
            audit
                .record(crate::audit::EventKind::PolicyReloaded, outcome, details)
                .await
                .map_err(|error| JobError::severe("policy reload not audited", error))
        }
    });
}
