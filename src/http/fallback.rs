//! Standard bodies for the errors no handler writes itself: unknown paths, wrong methods,
//! oversized or mistyped bodies refused by extractors. OAuth endpoints answer RFC 6749 §5.2
//! JSON, every other path RFC 9457 problem details; never an empty or plain-text body.

use actix_web::body::MessageBody;
use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, PRAGMA};
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
use actix_web::{HttpResponse, ResponseError, web};
use serde_json::json;

use crate::http::problem::Problem;

/// Rewrites error responses that carry no JSON body.
pub fn error_bodies<B: MessageBody + 'static>() -> ErrorHandlers<B> {
    ErrorHandlers::new().default_handler(standard_body)
}

/// Answers every method a path does not serve with 405 and the methods it does; registered
/// after the path's own resources, which claim their methods first.
pub fn method_not_allowed(paths: &[&str], allow: &'static str) -> actix_web::Resource {
    web::resource(
        paths
            .iter()
            .map(|path| (*path).to_owned())
            .collect::<Vec<_>>(),
    )
    .to(move || async move {
        HttpResponse::MethodNotAllowed()
            .insert_header((header::ALLOW, allow))
            .finish()
    })
}

fn is_oauth(path: &str) -> bool {
    path == "/oauth2" || path.starts_with("/oauth2/")
}

fn standard_body<B>(response: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value.starts_with("application/json") || value.starts_with("application/problem+json")
        });
    if json {
        return Ok(ErrorHandlerResponse::Response(
            response.map_into_left_body(),
        ));
    }
    let (request, original) = response.into_parts();
    let status = original.status();
    let mut replacement = if is_oauth(request.path()) {
        oauth_error(status)
    } else {
        Problem::new(
            status,
            status.canonical_reason().unwrap_or("Error"),
            describe(status),
        )
        .error_response()
    };
    for (name, value) in original.headers() {
        if name != CONTENT_TYPE && name != header::CONTENT_LENGTH {
            // `append`: a header may repeat (`Vary`, `WWW-Authenticate`).
            replacement
                .headers_mut()
                .append(name.clone(), value.clone());
        }
    }
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(request, replacement)
            .map_into_boxed_body()
            .map_into_right_body(),
    ))
}

/// RFC 6749 §5.2 has no code for these statuses; a malformed request is `invalid_request`,
/// and a failure on our side the code clients already retry on.
fn oauth_error(status: StatusCode) -> HttpResponse {
    let code = if status.is_server_error() {
        "temporarily_unavailable"
    } else {
        "invalid_request"
    };
    let mut response = HttpResponse::build(status);
    response
        .insert_header((CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .insert_header((PRAGMA, HeaderValue::from_static("no-cache")));
    response.json(json!({ "error": code, "error_description": describe(status) }))
}

fn describe(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "no such endpoint",
        StatusCode::METHOD_NOT_ALLOWED => "the method is not allowed at this endpoint",
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is too large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "the request body's media type is not accepted",
        status if status.is_server_error() => "the request could not be completed; retry later",
        _ => "the request is malformed",
    }
}

#[cfg(test)]
mod tests {
    use actix_web::{App, test, web};

    use super::*;

    /// A status the endpoints never produce themselves (415) still gets a standard body in
    /// place of the plain text it came with.
    #[actix_web::test]
    async fn plain_text_errors_get_json_bodies() {
        let unsupported = || async { HttpResponse::UnsupportedMediaType().body("plain text") };
        let app = test::init_service(
            App::new()
                .wrap(error_bodies())
                .route("/oauth2/refuse", web::post().to(unsupported))
                .route("/other/refuse", web::post().to(unsupported)),
        )
        .await;
        for (path, content_type) in [
            ("/oauth2/refuse", "application/json"),
            ("/other/refuse", "application/problem+json"),
        ] {
            let request = test::TestRequest::post().uri(path).to_request();
            let response = test::call_service(&app, request).await;
            assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
            assert_eq!(
                response.headers().get(CONTENT_TYPE).unwrap(),
                content_type,
                "{path}"
            );
            let body: serde_json::Value = test::read_body_json(response).await;
            if content_type == "application/json" {
                assert_eq!(body["error"], "invalid_request");
            } else {
                assert_eq!(body["status"], 415);
            }
        }
    }
}
