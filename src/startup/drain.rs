//! Closing kept-alive connections cleanly at shutdown. Once a stop is under way every response
//! carries `Connection: close`, so each client learns from an answer, never from a dropped
//! connection, that it must go elsewhere; a connection closed while a request may be on its way
//! is what clients report as "disconnected without response".

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;
use actix_web::web;

/// How long a stopping server keeps answering on kept-alive connections (each answer closing
/// its connection) before it closes the idle ones: time for a busy client to send its next
/// request, short enough not to hold up a stop noticeably.
pub const WINDOW: Duration = Duration::from_secs(1);

/// Set once when the server starts stopping; shared by every worker.
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn start(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn started(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Marks the connection for closing after this response if a stop began before it was sent,
/// including while the request was being handled.
pub async fn close_when_draining(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let draining = req.app_data::<web::Data<Draining>>().cloned();
    let mut response = next.call(req).await?;
    if draining.is_some_and(|draining| draining.started()) {
        response
            .response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    Ok(response)
}
