//! RFC 9457 problem documents: the one error shape of Bazaar's HTTP API, and how error
//! enums describe themselves so that the HTTP edge can render them and remote clients can
//! turn them back into the same enums.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The media type of a problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Stable codes shared by every module.
pub mod codes {
    pub const MALFORMED_REQUEST: &str = "malformed_request";
    pub const VALIDATION_FAILED: &str = "validation_failed";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const NOT_FOUND: &str = "not_found";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    pub const DEPENDENCY_UNAVAILABLE: &str = "dependency_unavailable";
    pub const INTERNAL_ERROR: &str = "internal_error";
}

/// Seconds a client is told to wait (`Retry-After`) when a dependency is unavailable.
pub const DEFAULT_RETRY_AFTER_SECS: u64 = 5;

/// How an error enum presents itself on the wire. Implemented by every crate's error enum;
/// the blanket `From` below turns any such error into a [`Problem`].
pub trait ProblemCode: std::fmt::Display {
    /// The HTTP status code.
    fn status(&self) -> u16;
    /// The stable machine-readable code, e.g. `product_not_found`.
    fn code(&self) -> &'static str;
    /// Extension members (RFC 9457 §3.2) a remote client needs to rebuild the error.
    fn extensions(&self) -> Map<String, Value> {
        Map::new()
    }
}

/// An RFC 9457 problem document, plus the extension members an error chose to carry.
///
/// On the wire it also has `type` (`urn:bazaar:problem:<code>`) and `title` (the status
/// phrase); both follow from `code` and `status`, so they are not stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "ProblemDocument", from = "ProblemDocument")]
pub struct Problem {
    pub status: u16,
    /// Stable machine-readable code.
    pub code: String,
    pub detail: String,
    pub extensions: Map<String, Value>,
}

/// The wire form of [`Problem`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = Problem)]
struct ProblemDocument {
    /// A URI naming the problem type: `urn:bazaar:problem:<code>`.
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    /// Stable machine-readable code, e.g. `product_not_found`.
    code: String,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    extensions: Map<String, Value>,
}

impl From<Problem> for ProblemDocument {
    fn from(problem: Problem) -> Self {
        Self {
            kind: format!("urn:bazaar:problem:{}", problem.code),
            title: title_for(problem.status).to_owned(),
            status: problem.status,
            detail: problem.detail,
            code: problem.code,
            extensions: problem.extensions,
        }
    }
}

impl From<ProblemDocument> for Problem {
    fn from(document: ProblemDocument) -> Self {
        Self {
            status: document.status,
            code: document.code,
            detail: document.detail,
            extensions: document.extensions,
        }
    }
}

impl utoipa::PartialSchema for Problem {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        ProblemDocument::schema()
    }
}

impl ToSchema for Problem {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("Problem")
    }
}

impl Problem {
    pub fn new(status: u16, code: &str, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            code: code.to_owned(),
            extensions: Map::new(),
        }
    }

    pub fn with_extension(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.to_owned(), value.into());
        self
    }

    pub fn validation(detail: impl Into<String>) -> Self {
        Self::new(422, codes::VALIDATION_FAILED, detail)
    }

    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(400, codes::MALFORMED_REQUEST, detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(401, codes::UNAUTHORIZED, detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(503, codes::DEPENDENCY_UNAVAILABLE, detail)
    }

    /// A 500 whose detail never leaks internals; the cause is logged by the caller.
    pub fn internal() -> Self {
        Self::new(
            500,
            codes::INTERNAL_ERROR,
            "the server failed to handle the request; it has been logged",
        )
    }

    /// A string extension member, if present.
    pub fn extension_str(&self, key: &str) -> Option<&str> {
        self.extensions.get(key).and_then(Value::as_str)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.detail)
    }
}

impl std::error::Error for Problem {}

impl<E: ProblemCode> From<E> for Problem {
    fn from(error: E) -> Self {
        let status = error.status();
        if status >= 500 && status != 503 {
            tracing::error!(error = %error, code = error.code(), "internal error");
            let mut problem = Problem::internal();
            problem.code = error.code().to_owned();
            return problem;
        }
        let mut problem = Problem::new(status, error.code(), error.to_string());
        problem.extensions = error.extensions();
        problem
    }
}

fn title_for(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        500 => "Internal Server Error",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum SampleError {
        #[error("widget {0} not found")]
        NotFound(u32),
        #[error("database exploded: secret detail")]
        Broken,
    }

    impl ProblemCode for SampleError {
        fn status(&self) -> u16 {
            match self {
                SampleError::NotFound(_) => 404,
                SampleError::Broken => 500,
            }
        }
        fn code(&self) -> &'static str {
            match self {
                SampleError::NotFound(_) => "widget_not_found",
                SampleError::Broken => "internal_error",
            }
        }
        fn extensions(&self) -> Map<String, Value> {
            match self {
                SampleError::NotFound(id) => {
                    let mut map = Map::new();
                    map.insert("widget_id".into(), (*id).into());
                    map
                }
                SampleError::Broken => Map::new(),
            }
        }
    }

    #[test]
    fn problem_from_error_carries_status_code_detail_and_extensions() {
        let problem = Problem::from(SampleError::NotFound(7));
        let json = serde_json::to_value(&problem).expect("serializes");
        assert_eq!(json["type"], "urn:bazaar:problem:widget_not_found");
        assert_eq!(json["status"], 404);
        assert_eq!(json["code"], "widget_not_found");
        assert_eq!(json["title"], "Not Found");
        assert_eq!(json["detail"], "widget 7 not found");
        assert_eq!(json["widget_id"], 7);
    }

    #[test]
    fn internal_errors_do_not_leak_their_detail() {
        let problem = Problem::from(SampleError::Broken);
        assert_eq!(problem.status, 500);
        assert!(!problem.detail.contains("secret"));
    }

    #[test]
    fn problem_round_trips_through_json_with_extensions() {
        let problem =
            Problem::new(409, "sku_taken", "sku A-1 is taken").with_extension("sku", "A-1");
        let text = serde_json::to_string(&problem).expect("serializes");
        let back: Problem = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, problem);
        assert_eq!(back.extension_str("sku"), Some("A-1"));
    }
}
