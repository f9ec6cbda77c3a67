//! Operations endpoints: liveness, readiness, metrics, and the certificate identity a client
//! presented (what partners need to see when registering their certificate).

use actix_web::http::StatusCode;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpResponse, get, web};
use serde_json::json;
use sqlx::PgPool;

use crate::audit::AuditLog;
use crate::http::PeerCertificate;
use crate::http::problem::Problem;
use crate::telemetry::metrics::Metrics;

/// What the main port serves: liveness and readiness (load balancers in front of it check
/// them there), the certificate identity and the audit key set.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .service(healthz)
        .service(readyz)
        .service(identity)
        .service(audit_jwks)
        .service(crate::http::fallback::method_not_allowed(
            &["/healthz", "/readyz", "/mtls/identity", "/audit/jwks.json"],
            "GET",
        ));
}

/// What the operations listener (`server.ops_bind`) serves.
pub fn probes(config: &mut web::ServiceConfig) {
    config
        .service(healthz)
        .service(readyz)
        .service(metrics)
        .service(crate::http::fallback::method_not_allowed(
            &["/healthz", "/readyz", "/metrics"],
            "GET",
        ));
}

/// Metrics, on the main port only while there is no operations listener: they describe
/// traffic and clients, nothing a partner should read.
pub fn metrics_route(config: &mut web::ServiceConfig) {
    config
        .service(metrics)
        .service(crate::http::fallback::method_not_allowed(
            &["/metrics"],
            "GET",
        ));
}

/// The key set that verifies audit checkpoints, for auditors verifying exports offline: only
/// keys that authenticate under the key-encryption key.
#[get("/audit/jwks.json")]
async fn audit_jwks(
    pool: web::Data<PgPool>,
    services: web::Data<crate::service::Services>,
) -> Result<HttpResponse, Problem> {
    let settings = services.keys.settings();
    let jwks = crate::audit::audit_jwks(&pool, settings)
        .await
        .map_err(|error| {
            tracing::error!(%error, "audit keys unavailable");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                "the audit key set is temporarily unavailable",
            )
        })?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "public, max-age=300"))
        .json(jwks))
}

#[get("/healthz")]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Ready means a database round trip succeeds now and the audit writer is committing (no
/// token can be issued without it); the pool re-validates connections, so a database that
/// comes back makes this 200 again without a restart.
#[get("/readyz")]
async fn readyz(pool: web::Data<PgPool>, audit: web::Data<AuditLog>) -> HttpResponse {
    if let Err(error) = crate::storage::governance::ping(pool.get_ref()).await {
        tracing::warn!(%error, "readiness check failed");
        return HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "unavailable", "reason": "database unreachable" }));
    }
    match audit.unhealthy() {
        None => HttpResponse::Ok().json(json!({ "status": "ready" })),
        Some(reason) => {
            tracing::warn!(reason, "readiness check failed");
            HttpResponse::ServiceUnavailable()
                .json(json!({ "status": "unavailable", "reason": reason }))
        }
    }
}

/// Renders from memory only: a scrape never reaches the database.
#[get("/metrics")]
async fn metrics(metrics: web::Data<Metrics>) -> Result<HttpResponse, Problem> {
    let body = metrics.render().map_err(|error| {
        tracing::error!(%error, "rendering metrics failed");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            "metrics are unavailable",
        )
    })?;
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8"))
        .body(body))
}

#[get("/mtls/identity")]
async fn identity(peer: PeerCertificate) -> Result<HttpResponse, Problem> {
    let certificate = peer.0.ok_or_else(|| {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "Client Certificate Required",
            "no client certificate was presented on this connection",
        )
    })?;
    Ok(HttpResponse::Ok().json(json!({
        "subject": certificate.subject.to_string(),
        "subject_alt_names": certificate.subject_alt_names,
        "x5t#S256": certificate.thumbprint.to_base64url(),
        "trust_anchors": certificate.anchors.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })))
}
