//! Prometheus metrics: HTTP traffic, token governance and the audit writer.

use actix_web::http::Method;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use sqlx::PgPool;

/// The label of a request method: the standard ones by name, any other as `other`, so that
/// invented methods cannot grow the label set.
pub fn method_label(method: &Method) -> &'static str {
    static KNOWN: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    KNOWN
        .iter()
        .find(|known| *known == method)
        .map_or("other", Method::as_str)
}

/// The windows, in days, of the "unused clients" and "expiring certificates" gauges.
const GOVERNANCE_WINDOWS_DAYS: [i32; 2] = [30, 90];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    /// Issued tokens by grant type and audience.
    pub tokens_issued: IntCounterVec,
    /// Refusals by grant type and OAuth error code.
    pub tokens_denied: IntCounterVec,
    /// Presentations of revoked tokens (introspection, revocation, exchange).
    pub revoked_presentations: IntCounter,
    pub audit_write_seconds: Histogram,
    pub audit_batch_size: Histogram,
    unused_clients: IntGaugeVec,
    expiring_certificates: IntGaugeVec,
    /// Bank token fetches by audience and outcome (`rotated`, `failed`, `lease_lost`).
    pub upstream_rotations: IntCounterVec,
    /// The generation of each audience's current bank token.
    pub upstream_generation: IntGaugeVec,
    /// Bank tokens handed to callers, by audience.
    pub upstream_uses: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let labels = ["route", "method", "status"];
        let requests = IntCounterVec::new(
            Opts::new("tessera_http_requests_total", "HTTP requests served"),
            &labels,
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "tessera_http_request_duration_seconds",
                "Time from request head to response head",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &labels,
        )?;
        let tokens_issued = IntCounterVec::new(
            Opts::new("tessera_tokens_issued_total", "Access tokens issued"),
            &["grant", "audience"],
        )?;
        let tokens_denied = IntCounterVec::new(
            Opts::new(
                "tessera_tokens_denied_total",
                "Token, introspection and revocation requests refused, by OAuth error",
            ),
            &["grant", "error"],
        )?;
        let revoked_presentations = IntCounter::new(
            "tessera_revoked_token_presentations_total",
            "Revoked tokens presented to the server",
        )?;
        let audit_write_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tessera_audit_write_seconds",
                "Time to commit one audit batch",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
            ]),
        )?;
        let audit_batch_size = Histogram::with_opts(
            HistogramOpts::new("tessera_audit_batch_size", "Events per audit commit").buckets(
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
            ),
        )?;
        let unused_clients = IntGaugeVec::new(
            Opts::new(
                "tessera_clients_unused",
                "Active clients that have not authenticated within the window",
            ),
            &["days"],
        )?;
        let expiring_certificates = IntGaugeVec::new(
            Opts::new(
                "tessera_client_certificates_expiring",
                "Active clients whose last presented certificate expires within the window",
            ),
            &["days"],
        )?;
        let upstream_rotations = IntCounterVec::new(
            Opts::new(
                "tessera_upstream_rotations_total",
                "Bank token fetches by audience and outcome",
            ),
            &["audience", "outcome"],
        )?;
        let upstream_generation = IntGaugeVec::new(
            Opts::new(
                "tessera_upstream_generation",
                "Generation of the bank token this node last stored, by audience",
            ),
            &["audience"],
        )?;
        let upstream_uses = IntCounterVec::new(
            Opts::new(
                "tessera_upstream_uses_total",
                "Bank tokens handed to callers, by audience",
            ),
            &["audience"],
        )?;
        let registry = Registry::new();
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(tokens_issued.clone()))?;
        registry.register(Box::new(tokens_denied.clone()))?;
        registry.register(Box::new(revoked_presentations.clone()))?;
        registry.register(Box::new(audit_write_seconds.clone()))?;
        registry.register(Box::new(audit_batch_size.clone()))?;
        registry.register(Box::new(unused_clients.clone()))?;
        registry.register(Box::new(expiring_certificates.clone()))?;
        registry.register(Box::new(upstream_rotations.clone()))?;
        registry.register(Box::new(upstream_generation.clone()))?;
        registry.register(Box::new(upstream_uses.clone()))?;
        if let Some(refused) = crate::crypto::keys::unauthenticated_keys() {
            registry.register(Box::new(refused.clone()))?;
        }
        Ok(Self {
            registry,
            requests,
            latency,
            tokens_issued,
            tokens_denied,
            revoked_presentations,
            audit_write_seconds,
            audit_batch_size,
            unused_clients,
            expiring_certificates,
            upstream_rotations,
            upstream_generation,
            upstream_uses,
        })
    }

    /// Recomputes the registry-derived gauges. Runs in the background, never on a scrape, so
    /// that scraping cannot put load on the database. Every window is tried; the first
    /// failure is returned.
    pub async fn refresh_governance(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut failure = None;
        for days in GOVERNANCE_WINDOWS_DAYS {
            match crate::storage::governance::client_counts(pool, days).await {
                Ok((unused, expiring)) => {
                    let label = days.to_string();
                    self.unused_clients.with_label_values(&[&label]).set(unused);
                    self.expiring_certificates
                        .with_label_values(&[&label])
                        .set(expiring);
                }
                Err(error) => failure = failure.or(Some(error)),
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Everything, in the text format, from memory only.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather())
    }

    /// `route` must be a matched route pattern (or `unmatched`), never a request path.
    pub fn observe_request(&self, route: &str, method: &Method, status: u16, seconds: f64) {
        let status = status.to_string();
        let labels = [route, method_label(method), status.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.latency.with_label_values(&labels).observe(seconds);
    }
}
