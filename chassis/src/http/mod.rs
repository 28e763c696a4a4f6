//! The HTTP edge every module's routes share: problem+json rendering, extractor errors
//! mapped to 400 `malformed_request` / 422 `validation_failed`, the 64 KiB body limit
//! (413), bearer-token auth, and request metrics.

mod auth;
mod edge;
mod extract;
mod metrics;
mod openapi;

pub use auth::{Admin, Service, Tokens};
pub use edge::{AllowedMethods, BODY_LIMIT, configure_extractors, problem_for_error_responses};
pub use extract::{Json, Query, parse_json};
pub use metrics::record_request_metrics;
pub use openapi::complete_openapi;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

use crate::problem::{DEFAULT_RETRY_AFTER_SECS, PROBLEM_JSON, Problem};

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        problem_response(self)
    }
}

/// Renders a problem document, with `Retry-After` on 503.
pub fn problem_response(problem: &Problem) -> HttpResponse {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = HttpResponse::build(status);
    response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.insert_header((header::RETRY_AFTER, DEFAULT_RETRY_AFTER_SECS.to_string()));
    }
    response.body(serde_json::to_string(problem).unwrap_or_else(|_| String::from("{}")))
}

/// A path id: one that is not a UUID names no `thing` either, so it is a 404
/// `<thing>_not_found` like any unknown id (with the id as extension member `<thing>_id`).
pub fn path_id(raw: &str, thing: &str) -> Result<uuid::Uuid, Problem> {
    uuid::Uuid::parse_str(raw).map_err(|_| {
        Problem::new(
            404,
            &format!("{thing}_not_found"),
            format!("{thing} {raw} not found"),
        )
        .with_extension(&format!("{thing}_id"), raw)
    })
}

/// A UUID in a query parameter or an internal path: anything else is a 422 naming `field`.
pub fn uuid_param(raw: &str, field: &str) -> Result<uuid::Uuid, Problem> {
    uuid::Uuid::parse_str(raw)
        .map_err(|_| Problem::validation(format!("{field}: {raw:?} is not a UUID")))
}

/// The answer type of every handler: a response, or a problem document.
pub type ApiResult<T = HttpResponse> = Result<T, Problem>;
