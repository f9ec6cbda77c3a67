//! Building and running the HTTPS server from validated settings.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::http::KeepAlive;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use sqlx::PgPool;

use crate::config::Settings;
use crate::http::{Metrics, request_context};
use crate::storage::StorageError;
use crate::tls::{ClientTrust, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("setting `server.bind`: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
}

pub struct Application {
    server: Server,
    local_addr: SocketAddr,
    pool: PgPool,
    client_trust: Arc<ClientTrust>,
}

impl Application {
    /// Binds the listener and prepares the server; nothing is served until [`Self::run`].
    pub fn build(settings: &Settings, pool: PgPool) -> Result<Self, StartupError> {
        let client_roots =
            crate::tls::read_certificates("server.client_ca", &settings.server.tls.client_ca)?;
        let client_trust = ClientTrust::new(&client_roots)?;
        let tls = crate::tls::server_config(
            &settings.server.tls,
            settings.server.tls_min_version,
            client_trust.clone(),
        )?;
        let metrics = web::Data::new(Metrics::new()?);
        let pool_data = web::Data::new(pool.clone());
        let trust_data = web::Data::from(client_trust.clone());
        let body_limit = settings.server.body_limit_bytes;

        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(metrics.clone())
                .app_data(pool_data.clone())
                .app_data(trust_data.clone())
                .app_data(web::PayloadConfig::new(body_limit))
                .app_data(web::FormConfig::default().limit(body_limit))
                .app_data(web::JsonConfig::default().limit(body_limit))
                .wrap(from_fn(request_context))
                .configure(crate::ops::routes)
        })
        .on_connect(crate::tls::on_connect)
        .client_request_timeout(settings.server.request_timeout)
        .client_disconnect_timeout(settings.server.request_timeout)
        .keep_alive(KeepAlive::Timeout(std::time::Duration::from_secs(75)))
        .shutdown_timeout(settings.server.shutdown_timeout.as_secs())
        .disable_signals();
        if settings.server.workers > 0 {
            server = server.workers(settings.server.workers);
        }
        let addr = settings.server.bind;
        let server = server
            .bind_rustls_0_23(addr, tls)
            .map_err(|source| StartupError::Bind { addr, source })?;
        let local_addr = server
            .addrs()
            .first()
            .copied()
            .ok_or_else(|| StartupError::Bind {
                addr,
                source: std::io::Error::other("no address bound"),
            })?;
        Ok(Self {
            server: server.run(),
            local_addr,
            pool,
            client_trust,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// The trust store behind client-certificate verification; replacing its roots takes
    /// effect on the next handshake.
    pub fn client_trust(&self) -> Arc<ClientTrust> {
        self.client_trust.clone()
    }

    /// Serves until stopped: SIGTERM or SIGINT stop accepting, let in-flight requests finish
    /// (up to `server.shutdown_timeout_s`), then close the database pool.
    pub async fn run(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let signals = tokio::spawn(async move {
            wait_for_stop_signal().await;
            tracing::info!("stop signal received; draining in-flight requests");
            handle.stop(true).await;
        });
        let result = self.server.await;
        signals.abort();
        self.pool.close().await;
        tracing::info!("server stopped");
        result
    }
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}
