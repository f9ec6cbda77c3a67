//! `POST /oauth2/revoke` (RFC 7009).

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse, post};

use super::OAuthError;
use super::request::{caller, form, no_store};
use crate::http::{Facts, PeerCertificate, RequestId};
use crate::service::Services;

#[post("/oauth2/revoke")]
pub async fn revoke_endpoint(
    req: HttpRequest,
    body: Bytes,
    peer: PeerCertificate,
    request_id: RequestId,
    facts: Facts,
    services: web::Data<Services>,
) -> Result<HttpResponse, OAuthError> {
    let params = form(&req, &body)?;
    let request_id = request_id.0.to_string();
    let caller = caller(&req, &params, &request_id, &facts, peer);
    let token = params.require("token");
    crate::service::revoke::revoke(&services, caller, token).await?;
    Ok(no_store(HttpResponse::Ok()).finish())
}
