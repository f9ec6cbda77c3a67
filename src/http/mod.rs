//! HTTP plumbing shared by every route: the request context middleware (request id, one log
//! line per request, Prometheus metrics) and the extractor for the client certificate.

pub mod admin;
pub mod fallback;
pub mod oauth;
pub mod ops;
pub mod problem;

use std::future::{Ready, ready};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_http::BoxedPayloadStream;
use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use futures_util::StreamExt;
use tracing::Instrument;

use crate::service::RequestFacts;
use crate::telemetry::metrics::Metrics;
use crate::tls::{ClientCertificate, ClientTrust};

pub mod facts;

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Identifies one request across the log line, the response header and (later) its audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(pub uuid::Uuid);

/// What the use case notes about the request for its log line.
#[derive(Debug, Clone)]
pub struct Facts(pub Arc<RequestFacts>);

impl FromRequest for Facts {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let facts = req.extensions().get::<Facts>().cloned();
        ready(Ok(facts.unwrap_or_else(|| Facts(Arc::default()))))
    }
}

impl FromRequest for RequestId {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let id = req.extensions().get::<RequestId>().copied();
        ready(Ok(id.unwrap_or(RequestId(uuid::Uuid::nil()))))
    }
}

/// The client certificate of the connection with the anchors that verify it now, if the client
/// presented one and some anchor still does; a certificate whose CA was removed since the
/// handshake reads as none.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Option<ClientCertificate>);

impl FromRequest for PeerCertificate {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let certificate = req
            .conn_data::<ClientCertificate>()
            .and_then(|certificate| {
                let trust = req.app_data::<web::Data<ClientTrust>>()?;
                let verified = trust.verified(certificate);
                if verified.is_none() {
                    tracing::warn!(
                        subject = %certificate.subject,
                        "client certificate no longer chains to a trusted anchor"
                    );
                }
                verified
            });
        ready(Ok(Self(certificate)))
    }
}

/// How long a request may take to deliver its body, counted from its head; a client sending
/// a byte now and then cannot hold a connection and a worker's attention indefinitely.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline(pub Duration);

fn with_deadline(payload: Payload, limit: Duration) -> BoxedPayloadStream {
    let expiry = Box::pin(tokio::time::sleep(limit));
    Box::pin(futures_util::stream::unfold(
        Some((payload, expiry)),
        |state| async move {
            let (mut payload, mut expiry) = state?;
            tokio::select! {
                chunk = payload.next() => chunk.map(|chunk| (chunk, Some((payload, expiry)))),
                () = &mut expiry => {
                    let late = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "request body not received in time",
                    );
                    Some((Err(PayloadError::Io(late)), None))
                }
            }
        },
    ))
}

/// Gives every request an id (echoed in `X-Request-Id`), a tracing span, one log line when it
/// completes, and its count and latency in the metrics, labelled by route pattern so that
/// arbitrary paths cannot explode the label set.
pub async fn request_context(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    if let Some(BodyDeadline(limit)) = req.app_data::<BodyDeadline>().copied() {
        let payload = req.take_payload();
        if !matches!(payload, Payload::None) {
            req.set_payload(Payload::from(with_deadline(payload, limit)));
        }
    }
    let request_id = RequestId(uuid::Uuid::new_v4());
    req.extensions_mut().insert(request_id);
    let noted = Arc::new(RequestFacts::default());
    req.extensions_mut().insert(Facts(noted.clone()));
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id.0,
        method = crate::telemetry::metrics::method_label(&method),
        %route
    );
    crate::telemetry::set_incoming_parent(&span, req.headers());
    let peer_x5t_s256 = req
        .conn_data::<ClientCertificate>()
        .map(|certificate| certificate.thumbprint.to_base64url());

    let result = next.call(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = match &result {
        Ok(response) => response.status(),
        Err(error) => error.as_response_error().status_code(),
    };
    if let Some(metrics) = metrics {
        metrics.observe_request(&route, &method, status.as_u16(), elapsed.as_secs_f64());
    }
    let facts = noted.snapshot();
    let error = result.as_ref().ok().and_then(|response| {
        response
            .response()
            .extensions()
            .get::<facts::OAuthErrorCode>()
            .map(|code| code.0)
    });
    span.in_scope(|| {
        tracing::info!(
            request_id = %request_id.0,
            status = status.as_u16(),
            latency_us = elapsed.as_micros() as u64,
            outcome = facts::outcome(status),
            client_id = facts.client_id.as_deref(),
            grant = facts.grant,
            error,
            reason = facts.reason.as_deref(),
            peer_x5t_s256 = peer_x5t_s256.as_deref(),
            "request completed"
        );
    });
    let mut response = result?;
    if let Ok(value) = HeaderValue::from_str(&request_id.0.to_string()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    Ok(response)
}
