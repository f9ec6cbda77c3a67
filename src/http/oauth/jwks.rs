//! `GET /jwks.json` (RFC 7517).

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{HttpResponse, get, web};

use crate::service::Services;

/// RFC 7517 key set. Caches may keep it for at most a quarter of the rotation interval, so a
/// `next` key is in every cache well before it starts signing.
#[get("/jwks.json")]
pub async fn jwks_endpoint(services: web::Data<Services>) -> HttpResponse {
    let rotation = services.rotation_interval.as_secs();
    let max_age = if rotation == 0 {
        300
    } else {
        (rotation / 4).clamp(1, 300)
    };
    HttpResponse::Ok()
        .insert_header((CACHE_CONTROL, format!("public, max-age={max_age}")))
        .insert_header((CONTENT_TYPE, "application/jwk-set+json"))
        .body(services.keys.current().jwks.to_string())
}
