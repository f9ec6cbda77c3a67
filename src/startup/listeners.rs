//! The sockets the server listens on: the partner-facing HTTPS port and, optionally, a plain
//! HTTP port for operations. Built on actix-server directly (not `HttpServer`) because the
//! per-address connection limit must act on the TCP connection, before any TLS work is spent
//! on it.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix_http::{HttpService, Request, Response};
use actix_server::ServerBuilder;
use actix_service::{IntoServiceFactory, Service, ServiceFactory, ServiceFactoryExt, map_config};
use actix_tls::accept::TlsError;
use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::body::MessageBody;
use actix_web::dev::AppConfig;
use actix_web::http::KeepAlive;
use actix_web::rt::net::TcpStream;

use crate::config::ServerSettings;

/// TLS handshakes one worker keeps in progress at once; further connections wait to be
/// accepted. Far above what a per-address limit lets one source hold, so that idle
/// connections from a few addresses cannot stall the handshakes of everyone else (actix
/// defaults to 256). Each pending handshake costs one rustls connection state.
const PENDING_HANDSHAKES_PER_WORKER: usize = 4_096;

/// How long an idle kept-alive connection stays open.
const KEEP_ALIVE: Duration = Duration::from_secs(75);

/// Open connections by source address (IPv6 by /64, which one host usually controls whole).
#[derive(Clone)]
pub struct ConnectionCounts {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_address: usize,
}

impl ConnectionCounts {
    pub fn new(max_per_address: usize) -> Self {
        Self {
            open: Arc::default(),
            max_per_address,
        }
    }

    /// A slot for one more connection from `peer`, held until the connection closes; `None`
    /// when the address already holds its maximum.
    pub fn admit(&self, peer: IpAddr) -> Option<Admitted> {
        let source = source_of(peer);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(source).or_default();
        if *count >= self.max_per_address {
            return None;
        }
        *count += 1;
        Some(Admitted {
            counts: self.clone(),
            source,
        })
    }
}

fn source_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !u128::from(u64::MAX);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// One admitted connection; dropping it frees the slot.
pub struct Admitted {
    counts: ConnectionCounts,
    source: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .counts
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// Connections the kernel queues for accepting. A burst of connections (an attacker's, say)
/// must not overflow a short queue, or everyone else's connection attempts are dropped and
/// retried only after seconds.
const ACCEPT_BACKLOG: u32 = 2_048;

/// Binds `addr` with [`ACCEPT_BACKLOG`]; needs a Tokio runtime.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)?.into_std()
}

/// A server builder with this process's worker, shutdown and handshake settings.
pub fn builder(settings: &ServerSettings) -> ServerBuilder {
    actix_tls::accept::max_concurrent_tls_connect(PENDING_HANDSHAKES_PER_WORKER);
    let mut builder = ServerBuilder::default()
        .shutdown_timeout(settings.shutdown_timeout.as_secs())
        .disable_signals();
    if settings.workers > 0 {
        builder = builder.workers(settings.workers);
    }
    builder
}

/// Adds the HTTPS listener on `settings.bind`: a connection from an address over its limit is
/// closed on arrival; the handshake must finish within `tls_handshake_timeout`, the request
/// head within `request_timeout`. Returns the bound address.
pub fn https<F, I, S, B>(
    builder: ServerBuilder,
    settings: &ServerSettings,
    tls: rustls::ServerConfig,
    counts: ConnectionCounts,
    on_connect: fn(&dyn std::any::Any, &mut actix_web::dev::Extensions),
    app: F,
) -> std::io::Result<(ServerBuilder, SocketAddr)>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let listener = listen(settings.bind)?;
    let addr = listener.local_addr()?;
    let shutdown = builder.graceful_shutdown_signal();
    let handshake_timeout = settings.tls_handshake_timeout;
    let request_timeout = settings.request_timeout;
    let builder = builder.listen(format!("tessera-https-{addr}"), listener, move || {
        let shutdown = shutdown.clone();
        let tls_service = HttpService::build()
            .graceful_shutdown_signal(move || {
                let shutdown = shutdown.clone();
                async move { shutdown.notified().await }
            })
            .keep_alive(KeepAlive::Timeout(KEEP_ALIVE))
            .client_request_timeout(request_timeout)
            .client_disconnect_timeout(request_timeout)
            .local_addr(addr)
            .on_connect_ext(move |io: &TlsStream<TcpStream>, extensions| {
                on_connect(io as &dyn std::any::Any, extensions)
            })
            .finish(application(&app))
            .rustls_0_23_with_config(
                tls.clone(),
                actix_http::TlsAcceptorConfig::default().handshake_timeout(handshake_timeout),
            );
        let counts = counts.clone();
        actix_service::apply_fn_factory(tls_service, move |io: TcpStream, service| {
            let admitted = io.peer_addr().ok().and_then(|peer| counts.admit(peer.ip()));
            // Over the limit, the stream is dropped here, which closes it.
            let connection = admitted.is_some().then(|| service.call(io));
            async move {
                let Some(connection) = connection else {
                    return Ok::<(), TlsError<std::io::Error, _>>(());
                };
                let _slot = admitted;
                connection.await
            }
        })
    })?;
    Ok((builder, addr))
}

/// Adds a plain-HTTP listener on `addr` (operations endpoints, for a trusted network only).
pub fn plain<F, I, S, B>(
    builder: ServerBuilder,
    addr: SocketAddr,
    request_timeout: Duration,
    app: F,
) -> std::io::Result<(ServerBuilder, SocketAddr)>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let listener = listen(addr)?;
    let addr = listener.local_addr()?;
    let shutdown = builder.graceful_shutdown_signal();
    let builder = builder.listen(format!("tessera-ops-{addr}"), listener, move || {
        let shutdown = shutdown.clone();
        HttpService::build()
            .graceful_shutdown_signal(move || {
                let shutdown = shutdown.clone();
                async move { shutdown.notified().await }
            })
            .keep_alive(KeepAlive::Timeout(KEEP_ALIVE))
            .client_request_timeout(request_timeout)
            .client_disconnect_timeout(request_timeout)
            .local_addr(addr)
            .finish(application(&app))
            .tcp()
    })?;
    Ok((builder, addr))
}

/// The actix-web application as an HTTP service. Its `AppConfig` (host and scheme for URL
/// generation) is the default: nothing here generates URLs from it; they come from the issuer.
fn application<F, I, S, B>(
    app: &F,
) -> impl ServiceFactory<
    Request,
    Config = (),
    Response = S::Response,
    Error = Response<actix_web::body::BoxBody>,
    InitError = S::InitError,
> + use<F, I, S, B>
where
    F: Fn() -> I,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::Response: Into<Response<B>> + 'static,
{
    let factory = app()
        .into_factory()
        .map_err(|error| Response::from(error.into().error_response()));
    map_config(factory, |_: ()| AppConfig::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_limit_and_slots_come_back() {
        let counts = ConnectionCounts::new(2);
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let first = counts.admit(peer).unwrap();
        let _second = counts.admit(peer).unwrap();
        assert!(counts.admit(peer).is_none());
        assert!(counts.admit("192.0.2.2".parse().unwrap()).is_some());
        drop(first);
        assert!(counts.admit(peer).is_some());
    }

    #[test]
    fn ipv6_counts_by_64_prefix_and_mapped_ipv4_as_ipv4() {
        let counts = ConnectionCounts::new(1);
        let _held = counts.admit("2001:db8::1".parse().unwrap()).unwrap();
        assert!(counts.admit("2001:db8::2".parse().unwrap()).is_none());
        assert!(counts.admit("2001:db8:0:1::1".parse().unwrap()).is_some());
        let _v4 = counts.admit("192.0.2.1".parse().unwrap()).unwrap();
        assert!(counts.admit("::ffff:192.0.2.1".parse().unwrap()).is_none());
    }
}
