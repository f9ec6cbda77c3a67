//! `POST /oauth2/introspect` (RFC 7662).

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse, post};
use serde_json::{Value, json};

use super::OAuthError;
use super::request::{caller, form, no_store};
use crate::http::{Facts, PeerCertificate, RequestId};
use crate::service::Services;

#[post("/oauth2/introspect")]
pub async fn introspect_endpoint(
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
    let claims = crate::service::introspect::introspect(&services, caller, token).await?;
    let body = match claims {
        None => json!({ "active": false }),
        Some(claims) => {
            let mut body = match serde_json::to_value(&claims) {
                Ok(Value::Object(claims)) => claims,
                _ => serde_json::Map::new(),
            };
            body.insert("active".into(), json!(true));
            body.insert("token_type".into(), json!("Bearer"));
            Value::Object(body)
        }
    };
    Ok(no_store(HttpResponse::Ok()).json(body))
}
