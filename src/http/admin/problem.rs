//! The admin API's RFC 9457 problem documents: `type`, `title`, `status`, `detail`, and for
//! refused input the `field` and the `rule` it broke.

use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::service::admin::AdminError;

#[derive(Debug, Serialize, thiserror::Error)]
#[error("{title}: {detail}")]
pub struct AdminProblem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'static str>,
    /// For 412: the version that is current, also sent as the `ETag`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<i32>,
}

impl From<AdminError> for AdminProblem {
    fn from(error: AdminError) -> Self {
        let detail = error.to_string();
        let (status, kind, title) = match &error {
            AdminError::Unauthenticated(_) => (
                StatusCode::UNAUTHORIZED,
                "urn:tessera:problem:unauthenticated",
                "Not authenticated as an admin",
            ),
            AdminError::Forbidden(_) => (
                StatusCode::FORBIDDEN,
                "urn:tessera:problem:forbidden",
                "Not allowed",
            ),
            AdminError::NotFound(_) => (
                StatusCode::NOT_FOUND,
                "urn:tessera:problem:not-found",
                "Not found",
            ),
            AdminError::Invalid(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "urn:tessera:problem:invalid-field",
                "Invalid input",
            ),
            AdminError::PreconditionRequired => (
                StatusCode::PRECONDITION_REQUIRED,
                "urn:tessera:problem:precondition-required",
                "If-Match required",
            ),
            AdminError::PreconditionFailed { .. } => (
                StatusCode::PRECONDITION_FAILED,
                "urn:tessera:problem:stale-version",
                "Stale version",
            ),
            AdminError::Conflict(_) => (
                StatusCode::CONFLICT,
                "urn:tessera:problem:conflict",
                "Conflict",
            ),
            AdminError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "urn:tessera:problem:unavailable",
                "Temporarily unavailable",
            ),
        };
        let (field, rule) = match &error {
            AdminError::Invalid(invalid) => (Some(invalid.field.clone()), Some(invalid.rule)),
            AdminError::PreconditionRequired => (Some("If-Match".to_owned()), Some("required")),
            _ => (None, None),
        };
        let current_version = match error {
            AdminError::PreconditionFailed { current } => Some(current),
            _ => None,
        };
        Self {
            kind,
            title,
            status: status.as_u16(),
            detail,
            field,
            rule,
            current_version,
        }
    }
}

impl ResponseError for AdminProblem {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response
            .insert_header((CONTENT_TYPE, "application/problem+json"))
            .insert_header((CACHE_CONTROL, "no-store"));
        if let Some(current) = self.current_version {
            response.insert_header((ETAG, format!("\"{current}\"")));
        }
        response.body(serde_json::to_string(self).unwrap_or_default())
    }
}
