//! Every billing endpoint — admin `/billing/*` of spec §3 and `/internal/billing/*` — with
//! each of its errors.

use actix_web::http::StatusCode;
use actix_web::test::{self, TestRequest};
use billing_contract::Billing;
use chassis::db::Backend;
use chassis::module::LocalModule;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{self, ADMIN_TOKEN, SERVICE_TOKEN, app, charge};

fn admin(request: TestRequest) -> TestRequest {
    request.insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
}

fn internal(request: TestRequest) -> TestRequest {
    request.insert_header(("Authorization", format!("Bearer {SERVICE_TOKEN}")))
}

use chassis::testing::assert_problem as problem;

fn detail(body: &Value) -> &str {
    body["detail"].as_str().unwrap_or_default()
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .map(|object| object.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

macro_rules! service {
    ($billing:expr) => {
        test::init_service(app($billing.module.clone())).await
    };
}

#[actix_web::test]
async fn list_payments_answers_settled_payments_filtered_and_paged() {
    let billing = support::local(Backend::Sqlite).await.expect("sqlite");
    let service = service!(billing);
    let port = billing.module.port();
    let orders: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for (order, token) in orders.iter().zip(["tok_visa", "tok_declined", "tok_visa"]) {
        port.charge(charge(*order, 1000, token))
            .await
            .expect("answered");
    }
    port.refund(orders[2]).await.expect("refunded");
    // A charge without an answer stays pending, and pending payments are not listed.
    let unanswered = port.charge(charge(Uuid::new_v4(), 1000, "tok_error")).await;
    assert!(unanswered.is_err());

    let all: Value = test::call_and_read_body_json(
        &service,
        admin(TestRequest::get().uri("/billing/payments")).to_request(),
    )
    .await;
    let items = all["items"].as_array().expect("items");
    assert_eq!(all["next_cursor"], Value::Null);
    let listed: Vec<&str> = items
        .iter()
        .filter_map(|p| p["order_id"].as_str())
        .collect();
    let expected: Vec<String> = orders.iter().map(Uuid::to_string).collect();
    assert_eq!(listed, expected, "in creation order");
    let statuses: Vec<&str> = items.iter().filter_map(|p| p["status"].as_str()).collect();
    assert_eq!(statuses, vec!["captured", "declined", "refunded"]);
    assert_eq!(
        keys(&items[0]),
        vec![
            "amount",
            "created_at",
            "id",
            "invoice_id",
            "order_id",
            "provider_ref",
            "refunded_amount",
            "status"
        ]
    );
    assert_eq!(
        items[0]["amount"],
        json!({"amount": 1000, "currency": "EUR"})
    );
    assert_eq!(
        items[0]["refunded_amount"],
        json!({"amount": 0, "currency": "EUR"})
    );
    assert_eq!(items[1]["provider_ref"], Value::Null);
    assert_eq!(
        items[2]["refunded_amount"],
        json!({"amount": 1000, "currency": "EUR"})
    );
    assert!(
        items[0]["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "RFC 3339 UTC"
    );

    let one: Value = test::call_and_read_body_json(
        &service,
        admin(TestRequest::get().uri(&format!("/billing/payments?order_id={}", orders[1])))
            .to_request(),
    )
    .await;
    assert_eq!(one["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(one["items"][0]["order_id"], orders[1].to_string());
    let none: Value = test::call_and_read_body_json(
        &service,
        admin(TestRequest::get().uri(&format!("/billing/payments?order_id={}", Uuid::new_v4())))
            .to_request(),
    )
    .await;
    assert_eq!(none["items"], json!([]));

    let mut seen = Vec::new();
    let mut uri = "/billing/payments?limit=2".to_owned();
    loop {
        let page: Value = test::call_and_read_body_json(
            &service,
            admin(TestRequest::get().uri(&uri)).to_request(),
        )
        .await;
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .filter_map(|p| p["order_id"].as_str().map(str::to_owned)),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/billing/payments?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, expected);
}

#[actix_web::test]
async fn list_payments_errors() {
    let billing = support::local(Backend::Sqlite).await.expect("sqlite");
    let service = service!(billing);
    let no_token = TestRequest::get().uri("/billing/payments").to_request();
    problem(
        test::call_service(&service, no_token).await,
        401,
        "unauthorized",
    )
    .await;
    let wrong_token = TestRequest::get()
        .uri("/billing/payments")
        .insert_header(("Authorization", "Bearer wrong"))
        .to_request();
    problem(
        test::call_service(&service, wrong_token).await,
        401,
        "unauthorized",
    )
    .await;
    let service_token = internal(TestRequest::get().uri("/billing/payments")).to_request();
    problem(
        test::call_service(&service, service_token).await,
        401,
        "unauthorized",
    )
    .await;

    for bad in [
        "order_id=not-a-uuid",
        "order_id=",
        "limit=0",
        "limit=201",
        "limit=abc",
        "cursor=***",
    ] {
        let request =
            admin(TestRequest::get().uri(&format!("/billing/payments?{bad}"))).to_request();
        let body = problem(
            test::call_service(&service, request).await,
            422,
            "validation_failed",
        )
        .await;
        let parameter = bad.split('=').next().unwrap_or_default();
        assert!(detail(&body).starts_with(parameter), "{bad}: {body}");
    }
}

#[actix_web::test]
async fn get_invoice_by_id_or_404() {
    let billing = support::local(Backend::Sqlite).await.expect("sqlite");
    let service = service!(billing);
    let order = Uuid::new_v4();
    billing
        .module
        .port()
        .charge(charge(order, 2750, "tok_visa"))
        .await
        .expect("captured");
    let invoice = billing
        .module
        .service()
        .invoice_of_order(order)
        .await
        .expect("reads")
        .expect("issued");
    let uri = format!("/billing/invoices/{}", invoice.id);
    let found: Value =
        test::call_and_read_body_json(&service, admin(TestRequest::get().uri(&uri)).to_request())
            .await;
    assert_eq!(
        keys(&found),
        vec!["amount", "id", "issued_at", "number", "order_id"]
    );
    assert_eq!(found["id"], invoice.id.to_string());
    assert_eq!(found["order_id"], order.to_string());
    assert_eq!(found["amount"], json!({"amount": 2750, "currency": "EUR"}));
    let number = found["number"].as_str().expect("number");
    assert!(
        number.starts_with("INV-") && number.ends_with("-000001"),
        "the first invoice of the year: {number}"
    );
    assert!(
        found["issued_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    for id in [Uuid::new_v4().to_string(), "not-a-uuid".to_owned()] {
        let request =
            admin(TestRequest::get().uri(&format!("/billing/invoices/{id}"))).to_request();
        let body = problem(
            test::call_service(&service, request).await,
            404,
            "invoice_not_found",
        )
        .await;
        assert_eq!(body["invoice_id"], id);
    }
    let no_token = TestRequest::get().uri(&uri).to_request();
    problem(
        test::call_service(&service, no_token).await,
        401,
        "unauthorized",
    )
    .await;
    let wrong_token = TestRequest::get()
        .uri(&uri)
        .insert_header(("Authorization", "Bearer wrong"))
        .to_request();
    problem(
        test::call_service(&service, wrong_token).await,
        401,
        "unauthorized",
    )
    .await;
}

#[actix_web::test]
async fn internal_charge_answers_the_payment_and_its_errors() {
    let billing = support::local(Backend::Sqlite).await.expect("sqlite");
    let service = service!(billing);
    let order = Uuid::new_v4();
    let body = json!({"order_id": order, "amount": {"amount": 1234, "currency": "EUR"}, "token": "tok_visa", "customer_email": "ada@example.com"});

    let without = TestRequest::post()
        .uri("/internal/billing/charges")
        .set_json(&body)
        .to_request();
    problem(
        test::call_service(&service, without).await,
        401,
        "unauthorized",
    )
    .await;
    let with_admin = admin(TestRequest::post().uri("/internal/billing/charges"))
        .set_json(&body)
        .to_request();
    problem(
        test::call_service(&service, with_admin).await,
        401,
        "unauthorized",
    )
    .await;
    assert_eq!(
        billing.gateway.charges_of(order),
        0,
        "refused before charging"
    );

    let request = internal(TestRequest::post().uri("/internal/billing/charges"))
        .set_json(&body)
        .to_request();
    let response = test::call_service(&service, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let payment: Value = test::read_body_json(response).await;
    assert_eq!(payment["status"], "captured");
    assert_eq!(payment["order_id"], order.to_string());
    assert_eq!(
        payment["amount"],
        json!({"amount": 1234, "currency": "EUR"})
    );
    let again: Value = test::call_and_read_body_json(
        &service,
        internal(TestRequest::post().uri("/internal/billing/charges"))
            .set_json(&body)
            .to_request(),
    )
    .await;
    assert_eq!(again, payment, "idempotent per order");

    let conflict = internal(TestRequest::post().uri("/internal/billing/charges"))
        .set_json(json!({"order_id": order, "amount": {"amount": 999, "currency": "EUR"}, "token": "tok_visa", "customer_email": "ada@example.com"}))
        .to_request();
    let body = problem(
        test::call_service(&service, conflict).await,
        409,
        "charge_conflict",
    )
    .await;
    assert_eq!(body["order_id"], order.to_string());

    let malformed = internal(TestRequest::post().uri("/internal/billing/charges"))
        .insert_header(("content-type", "application/json"))
        .set_payload("{\"order_id\": ")
        .to_request();
    problem(
        test::call_service(&service, malformed).await,
        400,
        "malformed_request",
    )
    .await;
    let not_json = internal(TestRequest::post().uri("/internal/billing/charges"))
        .insert_header(("content-type", "text/plain"))
        .set_payload("order_id=1")
        .to_request();
    problem(
        test::call_service(&service, not_json).await,
        415,
        "unsupported_media_type",
    )
    .await;

    let fresh = Uuid::new_v4();
    let cases = [
        (
            json!({"order_id": fresh, "amount": {"amount": 0, "currency": "EUR"}, "token": "tok_visa", "customer_email": "ada@example.com"}),
            "amount.amount",
        ),
        (
            json!({"order_id": fresh, "amount": {"amount": 10, "currency": "USD"}, "token": "tok_visa", "customer_email": "ada@example.com"}),
            "amount.currency",
        ),
        (
            json!({"order_id": fresh, "amount": {"amount": 10, "currency": "EUR"}, "token": "", "customer_email": "ada@example.com"}),
            "token",
        ),
        (
            json!({"order_id": fresh, "amount": {"amount": 10, "currency": "EUR"}, "customer_email": "ada@example.com"}),
            "token",
        ),
        (
            json!({"order_id": fresh, "amount": {"amount": 10, "currency": "EUR"}, "token": "tok_visa", "customer_email": ""}),
            "customer_email",
        ),
        (
            json!({"order_id": fresh, "amount": {"amount": 10, "currency": "EUR"}, "token": "tok_visa"}),
            "customer_email",
        ),
        (
            json!({"order_id": "nope", "amount": {"amount": 10, "currency": "EUR"}, "token": "tok_visa", "customer_email": "ada@example.com"}),
            "order_id",
        ),
        (
            json!({"order_id": fresh, "amount": {"amount": 1.5, "currency": "EUR"}, "token": "tok_visa", "customer_email": "ada@example.com"}),
            "amount.amount",
        ),
    ];
    for (body, field) in cases {
        let request = internal(TestRequest::post().uri("/internal/billing/charges"))
            .set_json(&body)
            .to_request();
        let problem = problem(
            test::call_service(&service, request).await,
            422,
            "validation_failed",
        )
        .await;
        assert!(detail(&problem).contains(field), "{body}: {problem}");
    }
    assert_eq!(billing.gateway.charges_of(fresh), 0);

    let failing = internal(TestRequest::post().uri("/internal/billing/charges"))
        .set_json(json!({"order_id": Uuid::new_v4(), "amount": {"amount": 10, "currency": "EUR"}, "token": "tok_error", "customer_email": "ada@example.com"}))
        .to_request();
    let response = test::call_service(&service, failing).await;
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok()),
        Some("5")
    );
    problem(response, 503, "dependency_unavailable").await;
}

#[actix_web::test]
async fn internal_refund_answers_the_refunded_payment_and_its_errors() {
    let billing = support::local(Backend::Sqlite).await.expect("sqlite");
    let service = service!(billing);
    let port = billing.module.port();
    let order = Uuid::new_v4();
    port.charge(charge(order, 800, "tok_visa"))
        .await
        .expect("captured");
    let uri = format!("/internal/billing/payments/{order}/refund");

    let without = TestRequest::post().uri(&uri).to_request();
    problem(
        test::call_service(&service, without).await,
        401,
        "unauthorized",
    )
    .await;
    let with_admin = admin(TestRequest::post().uri(&uri)).to_request();
    problem(
        test::call_service(&service, with_admin).await,
        401,
        "unauthorized",
    )
    .await;

    let refunded: Value = test::call_and_read_body_json(
        &service,
        internal(TestRequest::post().uri(&uri))
            .set_json(json!({}))
            .to_request(),
    )
    .await;
    assert_eq!(refunded["status"], "refunded");
    assert_eq!(
        refunded["refunded_amount"],
        json!({"amount": 800, "currency": "EUR"})
    );
    let again: Value = test::call_and_read_body_json(
        &service,
        internal(TestRequest::post().uri(&uri)).to_request(),
    )
    .await;
    assert_eq!(again, refunded, "without a body too, and idempotent");

    let unknown = Uuid::new_v4();
    let request =
        internal(TestRequest::post().uri(&format!("/internal/billing/payments/{unknown}/refund")))
            .to_request();
    let body = problem(
        test::call_service(&service, request).await,
        404,
        "payment_not_found",
    )
    .await;
    assert_eq!(body["order_id"], unknown.to_string());

    let declined = Uuid::new_v4();
    port.charge(charge(declined, 800, "tok_declined"))
        .await
        .expect("declined");
    let request =
        internal(TestRequest::post().uri(&format!("/internal/billing/payments/{declined}/refund")))
            .to_request();
    let body = problem(
        test::call_service(&service, request).await,
        409,
        "payment_not_refundable",
    )
    .await;
    assert_eq!(body["payment_status"], "declined");

    let request = internal(TestRequest::post().uri("/internal/billing/payments/not-a-uuid/refund"))
        .to_request();
    let body = problem(
        test::call_service(&service, request).await,
        422,
        "validation_failed",
    )
    .await;
    assert!(detail(&body).starts_with("order_id"), "{body}");
}

#[actix_web::test]
async fn wrong_methods_answer_405_and_unknown_routes_404() {
    let billing = support::local(Backend::Sqlite).await.expect("sqlite");
    let service = service!(billing);
    let id = Uuid::new_v4();
    let wrong = [
        TestRequest::delete().uri("/billing/payments"),
        TestRequest::post().uri("/billing/payments"),
        TestRequest::put().uri(&format!("/billing/invoices/{id}")),
        TestRequest::get().uri("/internal/billing/charges"),
        TestRequest::get().uri(&format!("/internal/billing/payments/{id}/refund")),
    ];
    for request in wrong {
        let request = admin(request).to_request();
        let path = request.path().to_owned();
        let body = problem(
            test::call_service(&service, request).await,
            405,
            "method_not_allowed",
        )
        .await;
        assert!(!detail(&body).is_empty(), "{path}");
    }
    let unknown = admin(TestRequest::get().uri("/billing/refunds")).to_request();
    problem(
        test::call_service(&service, unknown).await,
        404,
        "not_found",
    )
    .await;
}

#[actix_web::test]
async fn the_openapi_document_has_every_route() {
    let billing = support::local(Backend::Sqlite).await.expect("sqlite");
    let document = billing.module.openapi();
    let paths: Vec<&String> = document.paths.paths.keys().collect();
    assert_eq!(
        paths,
        vec![
            "/billing/invoices/{id}",
            "/billing/payments",
            "/internal/billing/charges",
            "/internal/billing/payments/{order_id}/refund",
        ]
    );
    let _: &dyn Billing = billing.module.service();
}
