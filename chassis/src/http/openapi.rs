//! What every operation of the OpenAPI document says the same way, written once here
//! rather than in each module's annotations: every response has a description (OpenAPI
//! requires one), error bodies are `application/problem+json`, a 503 says when to retry,
//! and the statuses the edge itself answers are documented for every operation they apply
//! to (400, 413 and 415 for a body, 401 behind a token, 422 for parameters or a body, 503
//! for a database or peer out of reach).

use utoipa::openapi::path::Operation;
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Response};

use crate::problem::PROBLEM_JSON;

/// Completes `doc` in place; the composition root calls it on the merged document.
pub fn complete_openapi(doc: &mut OpenApi) {
    for item in doc.paths.paths.values_mut() {
        let operations = [
            item.get.as_mut(),
            item.put.as_mut(),
            item.post.as_mut(),
            item.delete.as_mut(),
            item.patch.as_mut(),
        ];
        for operation in operations.into_iter().flatten() {
            complete_operation(operation);
        }
    }
}

fn complete_operation(operation: &mut Operation) {
    let has_body = operation.request_body.is_some();
    let has_parameters = operation
        .parameters
        .as_ref()
        .is_some_and(|parameters| !parameters.is_empty());
    let behind_token = operation
        .security
        .as_ref()
        .is_some_and(|security| !security.is_empty());
    let mut edge: Vec<(&str, &str)> = vec![(
        "503",
        "dependency_unavailable: a database or peer cannot be reached; nothing was changed, retry after Retry-After",
    )];
    if has_body {
        edge.push(("400", "malformed_request: the body is not JSON"));
        edge.push(("413", "payload_too_large: the body is over 64 KiB"));
        edge.push((
            "415",
            "unsupported_media_type: the body is not application/json",
        ));
    }
    if has_body || has_parameters {
        edge.push((
            "422",
            "validation_failed: the detail names the field or parameter",
        ));
    }
    if behind_token {
        edge.push(("401", "unauthorized: the bearer token is missing or wrong"));
    }
    let responses = &mut operation.responses.responses;
    for (status, description) in edge {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::T(problem_response(description)));
    }
    for (status, response) in responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        if response.description.trim().is_empty() {
            response.description = reason(status).to_owned();
        }
        if status.starts_with('4') || status.starts_with('5') {
            if let Some(json) = response.content.shift_remove("application/json") {
                response.content.insert(PROBLEM_JSON.to_owned(), json);
            }
            if status == "503" && !response.headers.contains_key("Retry-After") {
                response
                    .headers
                    .insert("Retry-After".into(), RefOr::T(retry_after()));
            }
        }
    }
}

fn problem_response(description: &str) -> Response {
    let mut response = Response::new(description);
    response.content.insert(
        PROBLEM_JSON.to_owned(),
        RefOr::T(Content::new(Some(Ref::from_schema_name("Problem")))),
    );
    response
}

fn retry_after() -> utoipa::openapi::header::Header {
    let mut header = utoipa::openapi::header::Header::new(
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Integer)
            .build(),
    );
    header.description = Some("seconds to wait before retrying".into());
    header
}

fn reason(status: &str) -> &'static str {
    status
        .parse::<u16>()
        .ok()
        .and_then(|code| actix_web::http::StatusCode::from_u16(code).ok())
        .and_then(|code| code.canonical_reason())
        .unwrap_or("Response")
}

#[cfg(test)]
mod tests {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem, PathsBuilder};
    use utoipa::openapi::request_body::RequestBody;
    use utoipa::openapi::security::SecurityRequirement;
    use utoipa::openapi::{OpenApiBuilder, ResponseBuilder};

    use super::*;

    fn operation(doc: &OpenApi) -> &Operation {
        doc.paths
            .paths
            .get("/things")
            .and_then(|item| item.post.as_ref())
            .expect("the operation")
    }

    #[test]
    fn every_response_is_described_and_every_error_is_a_problem_document() {
        let bare = OperationBuilder::new()
            .request_body(Some(RequestBody::new()))
            .security(SecurityRequirement::new(
                "admin_token",
                Vec::<String>::new(),
            ))
            .response(
                "201",
                ResponseBuilder::new().content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name("Thing"))),
                ),
            )
            .response(
                "404",
                ResponseBuilder::new().content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name("Problem"))),
                ),
            )
            .build();
        let mut doc = OpenApiBuilder::new()
            .paths(PathsBuilder::new().path("/things", PathItem::new(HttpMethod::Post, bare)))
            .build();
        complete_openapi(&mut doc);
        let completed = operation(&doc);
        let responses = &completed.responses.responses;
        for status in ["201", "400", "401", "404", "413", "415", "422", "503"] {
            let Some(RefOr::T(response)) = responses.get(status) else {
                panic!("{status} is documented");
            };
            assert!(
                !response.description.is_empty(),
                "{status} has a description"
            );
            let error = status != "201";
            assert_eq!(
                response.content.contains_key(PROBLEM_JSON),
                error,
                "{status}: problem+json for errors only"
            );
        }
        let Some(RefOr::T(unavailable)) = responses.get("503") else {
            panic!("503 is documented");
        };
        assert!(unavailable.headers.contains_key("Retry-After"));
    }
}
