//! Every public catalog endpoint of spec §3, with each of its errors.

use actix_web::http::StatusCode;
use actix_web::test::{self, TestRequest};
use catalog_contract::{Catalog, StockLine};
use chassis::db::Backend;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{self, ADMIN_TOKEN, SERVICE_TOKEN, app};

fn admin(request: TestRequest) -> TestRequest {
    request.insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
}

fn product_body(sku: &str) -> Value {
    json!({"sku": sku, "name": format!("Product {sku}"), "price": {"amount": 1250, "currency": "EUR"}, "stock": 7})
}

use chassis::testing::assert_problem as problem;

macro_rules! service {
    ($catalog:expr) => {
        test::init_service(app($catalog.module.clone())).await
    };
}

#[actix_web::test]
async fn create_product_answers_201_with_the_product() {
    let catalog = support::local(Backend::Sqlite).await.expect("sqlite");
    let service = service!(catalog);
    let request = admin(TestRequest::post().uri("/catalog/products"))
        .set_json(json!({"sku": "MUG-1", "name": "Mug", "description": "Blue", "price": {"amount": 1250, "currency": "EUR"}, "stock": 7}))
        .to_request();
    let response = test::call_service(&service, request).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = test::read_body_json(response).await;
    assert_eq!(
        location,
        Some(format!(
            "/catalog/products/{}",
            body["id"].as_str().expect("id")
        ))
    );
    assert_eq!(body["sku"], "MUG-1");
    assert_eq!(body["description"], "Blue");
    assert_eq!(body["price"], json!({"amount": 1250, "currency": "EUR"}));
    assert_eq!(
        body["stock"],
        json!({"on_hand": 7, "reserved": 0, "available": 7})
    );
    assert!(
        body["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "RFC 3339 UTC"
    );
}

#[actix_web::test]
async fn create_product_errors() {
    let catalog = support::local(Backend::Sqlite).await.expect("sqlite");
    let service = service!(catalog);

    let no_token = TestRequest::post()
        .uri("/catalog/products")
        .set_json(product_body("A"))
        .to_request();
    problem(
        test::call_service(&service, no_token).await,
        401,
        "unauthorized",
    )
    .await;
    let wrong_token = TestRequest::post()
        .uri("/catalog/products")
        .insert_header(("Authorization", "Bearer wrong"))
        .set_json(product_body("A"))
        .to_request();
    problem(
        test::call_service(&service, wrong_token).await,
        401,
        "unauthorized",
    )
    .await;

    let first = admin(TestRequest::post().uri("/catalog/products"))
        .set_json(product_body("DUP"))
        .to_request();
    assert_eq!(
        test::call_service(&service, first).await.status(),
        StatusCode::CREATED
    );
    let duplicate = admin(TestRequest::post().uri("/catalog/products"))
        .set_json(product_body("DUP"))
        .to_request();
    problem(
        test::call_service(&service, duplicate).await,
        409,
        "sku_taken",
    )
    .await;

    let malformed = admin(TestRequest::post().uri("/catalog/products"))
        .insert_header(("content-type", "application/json"))
        .set_payload("{\"sku\": ")
        .to_request();
    problem(
        test::call_service(&service, malformed).await,
        400,
        "malformed_request",
    )
    .await;

    let cases = [
        (
            json!({"name": "No sku", "price": {"amount": 1, "currency": "EUR"}}),
            "sku",
        ),
        (
            json!({"sku": "", "name": "x", "price": {"amount": 1, "currency": "EUR"}}),
            "sku",
        ),
        (
            json!({"sku": "s".repeat(65), "name": "x", "price": {"amount": 1, "currency": "EUR"}}),
            "sku",
        ),
        (
            json!({"sku": "N", "name": "", "price": {"amount": 1, "currency": "EUR"}}),
            "name",
        ),
        (
            json!({"sku": "N", "name": "n".repeat(201), "price": {"amount": 1, "currency": "EUR"}}),
            "name",
        ),
        (
            json!({"sku": "P", "name": "x", "price": {"amount": -1, "currency": "EUR"}}),
            "price.amount",
        ),
        (
            json!({"sku": "P", "name": "x", "price": {"amount": 1, "currency": "USD"}}),
            "price.currency",
        ),
        (
            json!({"sku": "P", "name": "x", "price": {"amount": 1, "currency": "EUR"}, "stock": -3}),
            "stock",
        ),
        (
            json!({"sku": "P", "name": "x", "price": {"amount": 1.5, "currency": "EUR"}}),
            "amount",
        ),
        (
            json!({"sku": "P", "name": "x", "price": {"amount": 1, "currency": "EUR"}, "colour": "red"}),
            "colour",
        ),
    ];
    for (body, field) in cases {
        let request = admin(TestRequest::post().uri("/catalog/products"))
            .set_json(&body)
            .to_request();
        let problem = problem(
            test::call_service(&service, request).await,
            422,
            "validation_failed",
        )
        .await;
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(field),
            "detail {detail:?} names {field} for {body}"
        );
    }

    let huge = json!({"sku": "BIG", "name": "x", "price": {"amount": 1, "currency": "EUR"}, "description": "d".repeat(70 * 1024)});
    let request = admin(TestRequest::post().uri("/catalog/products"))
        .set_json(huge)
        .to_request();
    problem(
        test::call_service(&service, request).await,
        413,
        "payload_too_large",
    )
    .await;

    let not_json = admin(TestRequest::post().uri("/catalog/products"))
        .insert_header(("content-type", "text/plain"))
        .set_payload("sku=A")
        .to_request();
    problem(
        test::call_service(&service, not_json).await,
        415,
        "unsupported_media_type",
    )
    .await;

    let listed: Value = test::call_and_read_body_json(
        &service,
        TestRequest::get().uri("/catalog/products").to_request(),
    )
    .await;
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(1),
        "only the first DUP was created"
    );
}

#[actix_web::test]
async fn list_products_filters_and_pages() {
    let catalog = support::local(Backend::Sqlite).await.expect("sqlite");
    let service = service!(catalog);
    for (sku, name) in [
        ("TEE-RED", "Red tee"),
        ("TEE-BLUE", "Blue tee"),
        ("MUG-RED", "Red mug"),
        ("CAP-1", "Cap"),
        ("50%-OFF", "Sale"),
    ] {
        let body = json!({"sku": sku, "name": name, "price": {"amount": 100, "currency": "EUR"}});
        let request = admin(TestRequest::post().uri("/catalog/products"))
            .set_json(body)
            .to_request();
        assert_eq!(
            test::call_service(&service, request).await.status(),
            StatusCode::CREATED
        );
    }
    let all: Value = test::call_and_read_body_json(
        &service,
        TestRequest::get().uri("/catalog/products").to_request(),
    )
    .await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(5));
    assert_eq!(all["next_cursor"], Value::Null);

    let red: Value = test::call_and_read_body_json(
        &service,
        TestRequest::get()
            .uri("/catalog/products?q=red")
            .to_request(),
    )
    .await;
    let skus: Vec<&str> = red["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|p| p["sku"].as_str())
        .collect();
    assert_eq!(
        skus,
        vec!["TEE-RED", "MUG-RED"],
        "name or sku, case-insensitive, in creation order"
    );
    let by_sku: Value = test::call_and_read_body_json(
        &service,
        TestRequest::get()
            .uri("/catalog/products?q=tee-b")
            .to_request(),
    )
    .await;
    assert_eq!(by_sku["items"][0]["sku"], "TEE-BLUE");
    let percent: Value = test::call_and_read_body_json(
        &service,
        TestRequest::get()
            .uri("/catalog/products?q=%25")
            .to_request(),
    )
    .await;
    assert_eq!(
        percent["items"].as_array().map(Vec::len),
        Some(1),
        "% is a literal, not a wildcard"
    );

    let mut seen = Vec::new();
    let mut uri = "/catalog/products?limit=2".to_owned();
    loop {
        let page: Value =
            test::call_and_read_body_json(&service, TestRequest::get().uri(&uri).to_request())
                .await;
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .filter_map(|p| p["sku"].as_str().map(str::to_owned)),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/catalog/products?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec!["TEE-RED", "TEE-BLUE", "MUG-RED", "CAP-1", "50%-OFF"]
    );

    for bad in ["limit=0", "limit=201", "limit=abc", "cursor=***"] {
        let request = TestRequest::get()
            .uri(&format!("/catalog/products?{bad}"))
            .to_request();
        let body = problem(
            test::call_service(&service, request).await,
            422,
            "validation_failed",
        )
        .await;
        let parameter = bad.split('=').next().unwrap_or_default();
        assert!(
            body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(parameter),
            "{body}"
        );
    }
}

#[actix_web::test]
async fn get_product_by_id_or_404() {
    let catalog = support::local(Backend::Sqlite).await.expect("sqlite");
    let service = service!(catalog);
    let created = support::product(&catalog.module, "Lamp", 2).await;
    let found: Value = test::call_and_read_body_json(
        &service,
        TestRequest::get()
            .uri(&format!("/catalog/products/{}", created.id))
            .to_request(),
    )
    .await;
    assert_eq!(found["id"], created.id.to_string());
    assert_eq!(found["name"], "Lamp");
    for id in [Uuid::new_v4().to_string(), "not-a-uuid".to_owned()] {
        let request = TestRequest::get()
            .uri(&format!("/catalog/products/{id}"))
            .to_request();
        problem(
            test::call_service(&service, request).await,
            404,
            "product_not_found",
        )
        .await;
    }
}

#[actix_web::test]
async fn patch_product_changes_only_given_fields() {
    let catalog = support::local(Backend::Sqlite).await.expect("sqlite");
    let service = service!(catalog);
    let created = support::product(&catalog.module, "Chair", 2).await;
    let uri = format!("/catalog/products/{}", created.id);
    let request = admin(TestRequest::patch().uri(&uri))
        .set_json(json!({"price": {"amount": 4200, "currency": "EUR"}, "description": "Oak"}))
        .to_request();
    let response = test::call_service(&service, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = test::read_body_json(response).await;
    assert_eq!(body["price"]["amount"], 4200);
    assert_eq!(body["description"], "Oak");
    assert_eq!(body["name"], "Chair", "unchanged");
    assert_ne!(body["updated_at"], body["created_at"]);
    let cleared = admin(TestRequest::patch().uri(&uri))
        .set_json(json!({"description": null}))
        .to_request();
    let body: Value = test::call_and_read_body_json(&service, cleared).await;
    assert_eq!(body["description"], Value::Null, "null clears");
    assert_eq!(body["price"]["amount"], 4200, "unchanged");

    let no_token = TestRequest::patch()
        .uri(&uri)
        .set_json(json!({"name": "x"}))
        .to_request();
    problem(
        test::call_service(&service, no_token).await,
        401,
        "unauthorized",
    )
    .await;
    let unknown = admin(TestRequest::patch().uri(&format!("/catalog/products/{}", Uuid::new_v4())))
        .set_json(json!({"name": "x"}))
        .to_request();
    problem(
        test::call_service(&service, unknown).await,
        404,
        "product_not_found",
    )
    .await;
    for (body, field) in [
        (json!({"name": ""}), "name"),
        (
            json!({"price": {"amount": 1, "currency": "GBP"}}),
            "price.currency",
        ),
        (json!({"sku": "X"}), "sku"),
    ] {
        let request = admin(TestRequest::patch().uri(&uri))
            .set_json(&body)
            .to_request();
        let problem = problem(
            test::call_service(&service, request).await,
            422,
            "validation_failed",
        )
        .await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(field),
            "{problem}"
        );
    }
    let malformed = admin(TestRequest::patch().uri(&uri))
        .insert_header(("content-type", "application/json"))
        .set_payload("nope")
        .to_request();
    problem(
        test::call_service(&service, malformed).await,
        400,
        "malformed_request",
    )
    .await;
}

#[actix_web::test]
async fn put_stock_sets_on_hand_but_not_below_reserved() {
    let catalog = support::local(Backend::Sqlite).await.expect("sqlite");
    let service = service!(catalog);
    let created = support::product(&catalog.module, "Desk", 5).await;
    let uri = format!("/catalog/products/{}/stock", created.id);
    let request = admin(TestRequest::put().uri(&uri))
        .set_json(json!({"on_hand": 9}))
        .to_request();
    let body: Value = test::call_and_read_body_json(&service, request).await;
    assert_eq!(
        body["stock"],
        json!({"on_hand": 9, "reserved": 0, "available": 9})
    );

    catalog
        .module
        .port()
        .reserve(
            Uuid::new_v4(),
            &[StockLine {
                product_id: created.id,
                quantity: 4,
            }],
        )
        .await
        .expect("reserved");
    let below = admin(TestRequest::put().uri(&uri))
        .set_json(json!({"on_hand": 3}))
        .to_request();
    problem(
        test::call_service(&service, below).await,
        409,
        "stock_below_reserved",
    )
    .await;
    let at_reserved = admin(TestRequest::put().uri(&uri))
        .set_json(json!({"on_hand": 4}))
        .to_request();
    let body: Value = test::call_and_read_body_json(&service, at_reserved).await;
    assert_eq!(
        body["stock"],
        json!({"on_hand": 4, "reserved": 4, "available": 0})
    );

    let negative = admin(TestRequest::put().uri(&uri))
        .set_json(json!({"on_hand": -1}))
        .to_request();
    problem(
        test::call_service(&service, negative).await,
        422,
        "validation_failed",
    )
    .await;
    let no_token = TestRequest::put()
        .uri(&uri)
        .set_json(json!({"on_hand": 1}))
        .to_request();
    problem(
        test::call_service(&service, no_token).await,
        401,
        "unauthorized",
    )
    .await;
    let unknown =
        admin(TestRequest::put().uri(&format!("/catalog/products/{}/stock", Uuid::new_v4())))
            .set_json(json!({"on_hand": 1}))
            .to_request();
    problem(
        test::call_service(&service, unknown).await,
        404,
        "product_not_found",
    )
    .await;
}

#[actix_web::test]
async fn internal_routes_need_the_service_token() {
    let catalog = support::local(Backend::Sqlite).await.expect("sqlite");
    let service = service!(catalog);
    let created = support::product(&catalog.module, "Internal", 1).await;
    let body = json!({"ids": [created.id]});
    let without = TestRequest::post()
        .uri("/internal/catalog/products/lookup")
        .set_json(&body)
        .to_request();
    problem(
        test::call_service(&service, without).await,
        401,
        "unauthorized",
    )
    .await;
    let with_admin = admin(TestRequest::post().uri("/internal/catalog/products/lookup"))
        .set_json(&body)
        .to_request();
    problem(
        test::call_service(&service, with_admin).await,
        401,
        "unauthorized",
    )
    .await;
    let with_service = TestRequest::post()
        .uri("/internal/catalog/products/lookup")
        .insert_header(("Authorization", format!("Bearer {SERVICE_TOKEN}")))
        .set_json(&body)
        .to_request();
    let found: Value = test::call_and_read_body_json(&service, with_service).await;
    assert_eq!(found["items"][0]["id"], created.id.to_string());
    let _: &dyn Catalog = catalog.module.service();
}

#[actix_web::test]
async fn unknown_routes_and_methods_answer_problem_documents() {
    let catalog = support::local(Backend::Sqlite).await.expect("sqlite");
    let service = service!(catalog);
    problem(
        test::call_service(
            &service,
            TestRequest::get().uri("/catalog/nothing").to_request(),
        )
        .await,
        404,
        "not_found",
    )
    .await;
    let response = test::call_service(
        &service,
        TestRequest::delete().uri("/catalog/products").to_request(),
    )
    .await;
    assert!(response.status().is_client_error());
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
}

/// JSON has one number type: `1250.0` is the integer 1250, as the schema's `integer` says;
/// a fraction is still refused, naming the field.
#[actix_web::test]
async fn integers_are_accepted_in_any_json_form_and_fractions_refused() {
    let catalog = support::local(Backend::Sqlite).await.expect("sqlite");
    let service = service!(catalog);
    let request = admin(TestRequest::post().uri("/catalog/products"))
        .set_json(json!({"sku": "FLOAT-1", "name": "Float", "price": {"amount": 1250.0, "currency": "EUR"}, "stock": 7e0}))
        .to_request();
    let created: Value = test::call_and_read_body_json(&service, request).await;
    assert_eq!(created["price"]["amount"], 1250);
    assert_eq!(created["stock"]["on_hand"], 7);
    let id = created["id"].as_str().expect("id");
    let request = admin(TestRequest::put().uri(&format!("/catalog/products/{id}/stock")))
        .set_json(json!({"on_hand": 12.0}))
        .to_request();
    let updated: Value = test::call_and_read_body_json(&service, request).await;
    assert_eq!(updated["stock"]["on_hand"], 12);
    let request = admin(TestRequest::post().uri("/catalog/products"))
        .set_json(json!({"sku": "FLOAT-2", "name": "Float", "price": {"amount": 12.5, "currency": "EUR"}}))
        .to_request();
    let response = test::call_service(&service, request).await;
    let body = problem(response, 422, "validation_failed").await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|detail| detail.starts_with("price.amount")),
        "{body}"
    );
}
