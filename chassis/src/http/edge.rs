use actix_web::body::MessageBody;
use actix_web::dev::ServiceResponse;
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::header;
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
use actix_web::web;

use crate::problem::{PROBLEM_JSON, Problem, codes};

/// Largest request body accepted; larger ones get 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Registers the JSON, query and path extractor settings so that their errors become
/// problem documents. Call once per `App` (or scope) that serves module routes.
pub fn configure_extractors(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(BODY_LIMIT)
            .error_handler(|error, _req| json_problem(error).into()),
    )
    .app_data(web::PayloadConfig::default().limit(BODY_LIMIT))
    .app_data(web::QueryConfig::default().error_handler(|error, _req| query_problem(error).into()))
    .app_data(web::PathConfig::default().error_handler(|error, _req| path_problem(error).into()));
}

fn json_problem(error: JsonPayloadError) -> Problem {
    match error {
        JsonPayloadError::OverflowKnownLength { length, limit } => Problem::new(
            413,
            codes::PAYLOAD_TOO_LARGE,
            format!("body is {length} bytes; the limit is {limit}"),
        ),
        JsonPayloadError::Overflow { limit } => Problem::new(
            413,
            codes::PAYLOAD_TOO_LARGE,
            format!("body is over the limit of {limit} bytes"),
        ),
        JsonPayloadError::ContentType => Problem::new(
            415,
            codes::UNSUPPORTED_MEDIA_TYPE,
            "send the body as Content-Type: application/json",
        ),
        JsonPayloadError::Deserialize(error) if error.is_data() => {
            Problem::validation(error.to_string())
        }
        JsonPayloadError::Deserialize(error) => {
            Problem::malformed(format!("body is not valid JSON: {error}"))
        }
        other => Problem::malformed(other.to_string()),
    }
}

fn query_problem(error: QueryPayloadError) -> Problem {
    match error {
        QueryPayloadError::Deserialize(error) => Problem::validation(format!("query: {error}")),
        other => Problem::validation(other.to_string()),
    }
}

fn path_problem(error: PathError) -> Problem {
    Problem::new(404, codes::NOT_FOUND, format!("no such resource: {error}"))
}

/// The methods each route answers, keyed by route pattern (`/orders/{id}/cancel`): the
/// `Allow` header of a 405, which RFC 9110 requires. Registered as app data by the
/// operations endpoints, from the OpenAPI document and their own routes.
#[derive(Debug, Clone, Default)]
pub struct AllowedMethods(std::collections::HashMap<String, Vec<&'static str>>);

impl AllowedMethods {
    /// The methods of every operation `openapi` documents.
    pub fn from_openapi(openapi: &utoipa::openapi::OpenApi) -> Self {
        let mut allowed = Self::default();
        for (pattern, item) in &openapi.paths.paths {
            let methods = [
                ("GET", item.get.is_some()),
                ("PUT", item.put.is_some()),
                ("POST", item.post.is_some()),
                ("DELETE", item.delete.is_some()),
                ("PATCH", item.patch.is_some()),
            ];
            for (method, present) in methods {
                if present {
                    allowed.add(pattern, method);
                }
            }
        }
        allowed
    }

    pub fn add(&mut self, pattern: &str, method: &'static str) {
        let methods = self.0.entry(pattern.to_owned()).or_default();
        if !methods.contains(&method) {
            methods.push(method);
        }
    }

    fn header_for(&self, pattern: &str) -> Option<String> {
        self.0.get(pattern).map(|methods| methods.join(", "))
    }
}

/// Middleware that turns every error answer not already a problem document (unknown
/// routes, wrong methods, actix's own errors) into one, so that clients parse one shape.
pub fn problem_for_error_responses<B: MessageBody + 'static>() -> ErrorHandlers<B> {
    ErrorHandlers::new().default_handler(|response: ServiceResponse<B>| {
        // Answers a handler shaped on purpose (a problem document, the JSON of
        // `/health/ready`) pass through; actix's own bare or plain-text errors do not.
        let shaped = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| {
                value.starts_with(PROBLEM_JSON) || value.starts_with("application/json")
            });
        if shaped {
            return Ok(ErrorHandlerResponse::Response(
                response.map_into_left_body(),
            ));
        }
        let status = response.status();
        let problem = match status.as_u16() {
            404 => Problem::new(
                404,
                codes::NOT_FOUND,
                format!("no route for {}", response.request().path()),
            ),
            405 => Problem::new(
                405,
                codes::METHOD_NOT_ALLOWED,
                format!("{} is not allowed here", response.request().method()),
            ),
            413 => Problem::new(
                413,
                codes::PAYLOAD_TOO_LARGE,
                format!("the body limit is {BODY_LIMIT} bytes"),
            ),
            status if status >= 500 => {
                tracing::error!(
                    status,
                    path = response.request().path(),
                    "unhandled server error"
                );
                Problem::internal()
            }
            status => Problem::new(
                status,
                codes::MALFORMED_REQUEST,
                "the request could not be handled",
            ),
        };
        let allow = (status.as_u16() == 405)
            .then(|| {
                let request = response.request();
                let allowed = request.app_data::<web::Data<AllowedMethods>>()?;
                allowed.header_for(&request.match_pattern()?)
            })
            .flatten();
        let (request, _) = response.into_parts();
        let mut rendered = super::problem_response(&problem);
        if let Some(allow) = allow
            && let Ok(value) = header::HeaderValue::from_str(&allow)
        {
            rendered.headers_mut().insert(header::ALLOW, value);
        }
        let response = ServiceResponse::new(request, rendered).map_into_boxed_body();
        Ok(ErrorHandlerResponse::Response(
            response.map_into_right_body(),
        ))
    })
}
