//! JSON body and query extractors whose errors name the field at fault
//! (`price.amount: invalid type: floating point 1.5, expected i64`), so that a 422 tells
//! the client exactly what to fix. actix's own extractors report serde's message without
//! the path.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use serde::de::DeserializeOwned;

use crate::problem::{Problem, codes};

/// A JSON request body (`Content-Type: application/json`, at most `BODY_LIMIT` bytes).
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, actix_web::Error>>>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .map(str::trim)
            .is_some_and(|mime| mime == "application/json" || mime.ends_with("+json"));
        let body = web::Bytes::from_request(request, payload);
        Box::pin(async move {
            if !is_json {
                return Err(Problem::new(
                    415,
                    codes::UNSUPPORTED_MEDIA_TYPE,
                    "send the body as Content-Type: application/json",
                )
                .into());
            }
            let bytes = body.await.map_err(|error| {
                let status = actix_web::ResponseError::status_code(error.as_response_error());
                if status == actix_web::http::StatusCode::PAYLOAD_TOO_LARGE {
                    Problem::new(
                        413,
                        codes::PAYLOAD_TOO_LARGE,
                        format!("the body limit is {} bytes", super::BODY_LIMIT),
                    )
                } else {
                    Problem::malformed(format!("cannot read the body: {error}"))
                }
            })?;
            parse_json(&bytes).map(Json).map_err(actix_web::Error::from)
        })
    }
}

/// Parses a JSON document; errors name the path of the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_data() {
            Problem::validation(with_path(&path, &inner.to_string()))
        } else {
            Problem::malformed(format!("body is not valid JSON: {inner}"))
        }
    })?;
    deserializer
        .end()
        .map_err(|error| Problem::malformed(format!("body is not valid JSON: {error}")))?;
    Ok(value)
}

/// Query parameters; errors name the parameter.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T> Query<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, actix_web::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let pairs = serde_urlencoded::Deserializer::new(url::form_urlencoded::parse(
            request.query_string().as_bytes(),
        ));
        let parsed = serde_path_to_error::deserialize(pairs)
            .map(Query)
            .map_err(|error| {
                let path = error.path().to_string();
                Problem::validation(with_path(&path, &error.into_inner().to_string())).into()
            });
        std::future::ready(parsed)
    }
}

fn with_path(path: &str, message: &str) -> String {
    // Messages about a missing or unknown field already name it.
    if path == "." || path.is_empty() {
        message.to_owned()
    } else {
        format!("{path}: {message}")
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Order {
        price: Price,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Price {
        amount: i64,
    }

    #[test]
    fn a_wrong_type_names_the_path_and_is_422() {
        let problem = parse_json::<Order>(br#"{"price": {"amount": 1.5}}"#).expect_err("refused");
        assert_eq!(problem.status, 422);
        assert!(
            problem.detail.starts_with("price.amount: "),
            "{}",
            problem.detail
        );
    }

    #[test]
    fn broken_json_is_400() {
        let problem = parse_json::<Order>(br#"{"price": "#).expect_err("refused");
        assert_eq!(problem.status, 400);
        assert_eq!(problem.code, "malformed_request");
        let trailing = parse_json::<Order>(br#"{"price": {"amount": 1}} x"#).expect_err("refused");
        assert_eq!(trailing.status, 400);
    }
}
