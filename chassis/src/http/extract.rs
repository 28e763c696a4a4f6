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
    if has_nul_escape(bytes) {
        refuse_kept_nul::<T>(bytes)?;
    }
    Ok(value)
}

/// Text with a NUL character is refused wherever the server keeps it: PostgreSQL cannot
/// store it, and no name, address or token has one. The OpenAPI document says so field by
/// field. Fields the server ignores may hold anything, as their schemas allow.
const NUL_REFUSED: &str = "text must not contain the NUL character (\\u0000)";

/// Refuses a body whose NUL character is in a field `T` reads, naming the field.
fn refuse_kept_nul<T: DeserializeOwned>(bytes: &[u8]) -> Result<(), Problem> {
    let Ok(mut document) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Ok(());
    };
    let mut ignored = Vec::new();
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    // Already parsed once: this pass only lists the fields `T` does not read.
    let _parsed: Result<T, _> = serde_ignored::deserialize(&mut deserializer, |path| {
        ignored.push(segments(&path));
    });
    for path in &ignored {
        remove(&mut document, path);
    }
    match nul_at(&document) {
        Some(path) => Err(Problem::validation(with_path(&path, NUL_REFUSED))),
        None => Ok(()),
    }
}

enum Segment {
    Key(String),
    Index(usize),
}

fn segments(path: &serde_ignored::Path<'_>) -> Vec<Segment> {
    use serde_ignored::Path;
    match path {
        Path::Root => Vec::new(),
        Path::Seq { parent, index } => {
            let mut segments = segments(parent);
            segments.push(Segment::Index(*index));
            segments
        }
        Path::Map { parent, key } => {
            let mut segments = segments(parent);
            segments.push(Segment::Key(key.clone()));
            segments
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => segments(parent),
    }
}

fn remove(document: &mut serde_json::Value, path: &[Segment]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = document;
    for segment in parents {
        let next = match segment {
            Segment::Key(key) => node.get_mut(key.as_str()),
            Segment::Index(index) => node.get_mut(*index),
        };
        let Some(next) = next else { return };
        node = next;
    }
    if let (Segment::Key(key), serde_json::Value::Object(object)) = (last, node) {
        object.remove(key);
    }
}

/// The path of the first text holding a NUL character, as in `lines[0].sku`.
fn nul_at(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(text) => text.contains('\0').then(String::new),
        serde_json::Value::Array(items) => items.iter().enumerate().find_map(|(index, item)| {
            nul_at(item).map(|rest| format!("[{index}]{}", dotted(&rest)))
        }),
        serde_json::Value::Object(object) => object.iter().find_map(|(key, item)| {
            if key.contains('\0') {
                return Some(key.replace('\0', "\\u0000"));
            }
            nul_at(item).map(|rest| format!("{key}{}", dotted(&rest)))
        }),
        _ => None,
    }
}

fn dotted(rest: &str) -> String {
    if rest.is_empty() || rest.starts_with('[') {
        rest.to_owned()
    } else {
        format!(".{rest}")
    }
}

/// Whether a JSON document holds a NUL character. Raw control characters are not valid
/// JSON, so the only way to write one is the escape `\u0000`; a backslash always starts
/// an escape, so skipping each escape's second character finds exactly those.
fn has_nul_escape(json: &[u8]) -> bool {
    let mut rest = json;
    while let Some(at) = rest.iter().position(|&byte| byte == b'\\') {
        let escape = &rest[at..];
        if escape.get(1..6) == Some(b"u0000".as_slice()) {
            return true;
        }
        rest = escape.get(2..).unwrap_or_default();
    }
    false
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
        let query = url::form_urlencoded::parse(request.query_string().as_bytes());
        if let Some((name, _)) = query.clone().find(|(_, value)| value.contains('\0')) {
            return std::future::ready(Err(
                Problem::validation(format!("{name}: {NUL_REFUSED}")).into()
            ));
        }
        let pairs = serde_urlencoded::Deserializer::new(query);
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

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Named {
        name: String,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Lines {
        lines: Vec<Named>,
    }

    #[test]
    fn text_with_a_nul_character_is_422_and_an_escaped_backslash_is_not_one() {
        for body in [r#"{"name": "a\u0000b"}"#, r#"{"name": "\\\u0000"}"#] {
            let problem = parse_json::<Named>(body.as_bytes()).expect_err(body);
            assert_eq!(problem.status, 422, "{body}");
            assert!(problem.detail.starts_with("name: "), "{}", problem.detail);
            assert!(problem.detail.contains("NUL"), "{}", problem.detail);
        }
        let nested = br#"{"lines": [{"name": "a"}, {"name": "\u0000"}]}"#;
        let problem = parse_json::<Lines>(nested).expect_err("refused");
        assert!(
            problem.detail.starts_with("lines[1].name: "),
            "{}",
            problem.detail
        );
        // An escaped backslash followed by the text `u0000` holds no NUL.
        let named = parse_json::<Named>(br#"{"name": "a\\u0000"}"#).expect("accepted");
        assert_eq!(named.name, r"a\u0000");
    }

    #[test]
    fn a_nul_character_in_a_field_the_server_ignores_is_accepted() {
        let body = br#"{"name": "kept", "extra\u0000": ["\u0000", {"deep": "\u0000"}]}"#;
        let named = parse_json::<Named>(body).expect("accepted");
        assert_eq!(named.name, "kept");
        let nested = br#"{"lines": [{"name": "a", "note": "\u0000"}]}"#;
        assert!(parse_json::<Lines>(nested).is_ok());
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
