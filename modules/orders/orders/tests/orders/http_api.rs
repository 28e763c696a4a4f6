//! Every endpoint of spec §3 Orders, with each of its errors.

use actix_web::test::{self, TestRequest};
use billing_contract::{MockBilling, PaymentStatus};
use catalog_contract::{CatalogError, MockCatalog, ReservationStatus};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{
    self, app, catalog_knowing, fixture, payment, product, reservation, settings,
};

use chassis::testing::assert_problem as problem;

fn happy_peers(item: &catalog_contract::Product) -> (MockCatalog, MockBilling) {
    let mut catalog = catalog_knowing(item);
    let mut billing = MockBilling::new();
    catalog
        .expect_reserve()
        .returning(|id, lines| Ok(reservation(id, ReservationStatus::Reserved, lines)));
    billing.expect_charge().returning(|c| {
        Ok(payment(
            c.order_id,
            c.amount.amount,
            PaymentStatus::Captured,
        ))
    });
    catalog
        .expect_commit()
        .returning(|id| Ok(reservation(id, ReservationStatus::Committed, &[])));
    billing
        .expect_refund()
        .returning(|id| Ok(payment(id, 0, PaymentStatus::Refunded)));
    catalog
        .expect_restock()
        .returning(|id| Ok(reservation(id, ReservationStatus::Restocked, &[])));
    (catalog, billing)
}

fn body(product_id: Uuid) -> Value {
    json!({"customer_email": "ada@example.com", "lines": [{"product_id": product_id, "quantity": 2}], "payment": {"token": "tok_visa"}})
}

async fn place_read_list_and_cancel_an_order() {
    let item = product(1250);
    let (catalog, billing) = happy_peers(&item);
    let fixture = fixture(catalog, billing, settings()).await;
    let service = test::init_service(app(fixture.service.clone())).await;

    let response = test::call_service(
        &service,
        TestRequest::post()
            .uri("/orders")
            .set_json(body(item.id))
            .to_request(),
    )
    .await;
    assert_eq!(response.status(), 201);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let order: Value = test::read_body_json(response).await;
    let id = order["id"].as_str().expect("id").to_owned();
    assert_eq!(location, Some(format!("/orders/{id}")));
    assert_eq!(order["status"], "confirmed");
    assert_eq!(order["total"], json!({"amount": 2500, "currency": "EUR"}));
    assert_eq!(
        order["lines"][0]["line_total"],
        json!({"amount": 2500, "currency": "EUR"})
    );
    assert_eq!(order["lines"][0]["name"], "Lamp");
    assert_eq!(order["rejection_reason"], Value::Null);

    let read: Value = test::call_and_read_body_json(
        &service,
        TestRequest::get()
            .uri(&format!("/orders/{id}"))
            .to_request(),
    )
    .await;
    assert_eq!(read, order);

    let second: Value = test::call_and_read_body_json(
        &service,
        TestRequest::post()
            .uri("/orders")
            .set_json(body(item.id))
            .to_request(),
    )
    .await;
    let page: Value = test::call_and_read_body_json(
        &service,
        TestRequest::get()
            .uri("/orders?customer_email=ada@example.com&limit=1")
            .to_request(),
    )
    .await;
    assert_eq!(page["items"][0]["id"], second["id"], "newest first");
    let cursor = page["next_cursor"].as_str().expect("a second page");
    let next: Value = test::call_and_read_body_json(
        &service,
        TestRequest::get()
            .uri(&format!(
                "/orders?customer_email=ada@example.com&limit=1&cursor={cursor}"
            ))
            .to_request(),
    )
    .await;
    assert_eq!(next["items"][0]["id"], order["id"]);
    assert_eq!(next["next_cursor"], Value::Null);

    let cancelled: Value = test::call_and_read_body_json(
        &service,
        TestRequest::post()
            .uri(&format!("/orders/{id}/cancel"))
            .to_request(),
    )
    .await;
    assert_eq!(cancelled["status"], "cancelled");
    let again: Value = test::call_and_read_body_json(
        &service,
        TestRequest::post()
            .uri(&format!("/orders/{id}/cancel"))
            .to_request(),
    )
    .await;
    assert_eq!(again, cancelled, "cancelling twice answers the same order");
}

async fn placing_errors() {
    let item = product(100);
    let mut catalog = MockCatalog::new();
    let known = item.clone();
    catalog.expect_products().returning(move |ids| {
        ids.iter()
            .map(|id| {
                if *id == known.id {
                    Ok(known.clone())
                } else {
                    Err(CatalogError::ProductNotFound(*id))
                }
            })
            .collect()
    });
    catalog
        .expect_reserve()
        .returning(|id, lines| Ok(reservation(id, ReservationStatus::Reserved, lines)));
    catalog
        .expect_commit()
        .returning(|id| Ok(reservation(id, ReservationStatus::Committed, &[])));
    let mut billing = MockBilling::new();
    billing.expect_charge().returning(|c| {
        Ok(payment(
            c.order_id,
            c.amount.amount,
            PaymentStatus::Captured,
        ))
    });
    let fixture = fixture(catalog, billing, settings()).await;
    let service = test::init_service(app(fixture.service.clone())).await;

    let malformed = TestRequest::post()
        .uri("/orders")
        .insert_header(("content-type", "application/json"))
        .set_payload("{")
        .to_request();
    problem(
        test::call_service(&service, malformed).await,
        400,
        "malformed_request",
    )
    .await;

    let cases = [
        (
            json!({"customer_email": "nope", "lines": [{"product_id": item.id, "quantity": 1}], "payment": {"token": "t"}}),
            "customer_email",
        ),
        (
            json!({"customer_email": "a@example.com", "lines": [], "payment": {"token": "t"}}),
            "lines",
        ),
        (
            json!({"customer_email": "a@example.com", "lines": [{"product_id": item.id, "quantity": 0}], "payment": {"token": "t"}}),
            "quantity",
        ),
        (
            json!({"customer_email": "a@example.com", "lines": [{"product_id": item.id, "quantity": 1001}], "payment": {"token": "t"}}),
            "quantity",
        ),
        (
            json!({"customer_email": "a@example.com", "lines": [{"product_id": item.id, "quantity": 1}, {"product_id": item.id, "quantity": 1}], "payment": {"token": "t"}}),
            "product_id",
        ),
        (
            json!({"customer_email": "a@example.com", "lines": [{"product_id": item.id, "quantity": 1}], "payment": {"token": ""}}),
            "payment.token",
        ),
        (
            json!({"customer_email": "a@example.com", "lines": [{"product_id": "not-a-uuid", "quantity": 1}], "payment": {"token": "t"}}),
            "product_id",
        ),
        (
            json!({"customer_email": "a@example.com", "lines": [{"product_id": item.id, "quantity": 1}]}),
            "payment",
        ),
    ];
    for (request, field) in cases {
        let response = test::call_service(
            &service,
            TestRequest::post()
                .uri("/orders")
                .set_json(&request)
                .to_request(),
        )
        .await;
        let body = problem(response, 422, "validation_failed").await;
        assert!(
            body["detail"].as_str().unwrap_or_default().contains(field),
            "{field}: {body}"
        );
    }

    let unknown = json!({"customer_email": "a@example.com", "lines": [{"product_id": Uuid::new_v4(), "quantity": 1}], "payment": {"token": "t"}});
    problem(
        test::call_service(
            &service,
            TestRequest::post()
                .uri("/orders")
                .set_json(&unknown)
                .to_request(),
        )
        .await,
        422,
        "unknown_product",
    )
    .await;

    let keyed = |request: &Value| {
        TestRequest::post()
            .uri("/orders")
            .insert_header(("Idempotency-Key", "k-1"))
            .set_json(request)
            .to_request()
    };
    let first: Value = test::call_and_read_body_json(&service, keyed(&body(item.id))).await;
    let replay: Value = test::call_and_read_body_json(&service, keyed(&body(item.id))).await;
    assert_eq!(replay["id"], first["id"]);
    let mut other = body(item.id);
    other["customer_email"] = json!("bob@example.com");
    problem(
        test::call_service(&service, keyed(&other)).await,
        422,
        "idempotency_key_reused",
    )
    .await;

    let listed = test::call_service(&service, TestRequest::get().uri("/orders").to_request()).await;
    problem(listed, 422, "validation_failed").await;
    let bad_limit = test::call_service(
        &service,
        TestRequest::get()
            .uri("/orders?customer_email=a@example.com&limit=0")
            .to_request(),
    )
    .await;
    problem(bad_limit, 422, "validation_failed").await;
}

async fn an_unreachable_catalog_answers_503_with_retry_after() {
    let mut catalog = MockCatalog::new();
    catalog
        .expect_products()
        .returning(|_| Err(CatalogError::Unavailable("connection refused".into())));
    let fixture = fixture(catalog, MockBilling::new(), settings()).await;
    let service = test::init_service(app(fixture.service.clone())).await;
    let response = test::call_service(
        &service,
        TestRequest::post()
            .uri("/orders")
            .set_json(body(Uuid::new_v4()))
            .to_request(),
    )
    .await;
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    problem(response, 503, "dependency_unavailable").await;
}

async fn reading_and_cancelling_unknown_or_unfinished_orders() {
    let item = product(100);
    let mut catalog = catalog_knowing(&item);
    let product_id = item.id;
    catalog
        .expect_reserve()
        .returning(move |_, _| Err(CatalogError::OutOfStock { product_id }));
    let fixture = fixture(catalog, MockBilling::new(), settings()).await;
    let service = test::init_service(app(fixture.service.clone())).await;
    for uri in [
        format!("/orders/{}", Uuid::new_v4()),
        "/orders/not-a-uuid".to_owned(),
    ] {
        problem(
            test::call_service(&service, TestRequest::get().uri(&uri).to_request()).await,
            404,
            "order_not_found",
        )
        .await;
    }
    problem(
        test::call_service(
            &service,
            TestRequest::post()
                .uri(&format!("/orders/{}/cancel", Uuid::new_v4()))
                .to_request(),
        )
        .await,
        404,
        "order_not_found",
    )
    .await;
    let rejected: Value = test::call_and_read_body_json(
        &service,
        TestRequest::post()
            .uri("/orders")
            .set_json(body(item.id))
            .to_request(),
    )
    .await;
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(rejected["rejection_reason"], "out_of_stock");
    let id = rejected["id"].as_str().expect("id");
    problem(
        test::call_service(
            &service,
            TestRequest::post()
                .uri(&format!("/orders/{id}/cancel"))
                .to_request(),
        )
        .await,
        409,
        "order_not_cancellable",
    )
    .await;
    problem(
        test::call_service(
            &service,
            TestRequest::delete()
                .uri(&format!("/orders/{id}"))
                .to_request(),
        )
        .await,
        405,
        "method_not_allowed",
    )
    .await;
}

async fn the_internal_route_needs_the_service_token() {
    let item = product(100);
    let (catalog, billing) = happy_peers(&item);
    let fixture = fixture(catalog, billing, settings()).await;
    let service = test::init_service(app(fixture.service.clone())).await;
    let order: Value = test::call_and_read_body_json(
        &service,
        TestRequest::post()
            .uri("/orders")
            .set_json(body(item.id))
            .to_request(),
    )
    .await;
    let uri = format!("/internal/orders/{}", order["id"].as_str().expect("id"));
    problem(
        test::call_service(&service, TestRequest::get().uri(&uri).to_request()).await,
        401,
        "unauthorized",
    )
    .await;
    let read: Value = test::call_and_read_body_json(
        &service,
        TestRequest::get()
            .uri(&uri)
            .insert_header((
                "Authorization",
                format!("Bearer {}", support::SERVICE_TOKEN),
            ))
            .to_request(),
    )
    .await;
    assert_eq!(read, order);
}

/// A cancellation that cannot reach billing now is under way, not failed: 202 with the
/// order (still `confirmed`) and where to poll it; it ends `cancelled` once billing answers.
async fn a_cancellation_waiting_for_a_peer_is_accepted_and_finished_later() {
    let item = product(100);
    let (mut catalog, mut billing) = support::confirming_once(&item);
    let mut refunds = mockall::Sequence::new();
    billing
        .expect_refund()
        .times(1)
        .in_sequence(&mut refunds)
        .returning(|_| Err(billing_contract::BillingError::Unavailable("down".into())));
    billing
        .expect_refund()
        .in_sequence(&mut refunds)
        .returning(|id| Ok(payment(id, 200, PaymentStatus::Refunded)));
    catalog
        .expect_restock()
        .returning(|id| Ok(reservation(id, ReservationStatus::Restocked, &[])));
    let fixture = fixture(catalog, billing, settings()).await;
    let service = test::init_service(app(fixture.service.clone())).await;
    let order: Value = test::call_and_read_body_json(
        &service,
        TestRequest::post()
            .uri("/orders")
            .set_json(body(item.id))
            .to_request(),
    )
    .await;
    assert_eq!(order["status"], "confirmed");
    let id = order["id"].as_str().expect("id");
    let response = test::call_service(
        &service,
        TestRequest::post()
            .uri(&format!("/orders/{id}/cancel"))
            .to_request(),
    )
    .await;
    assert_eq!(response.status(), 202);
    assert_eq!(
        response
            .headers()
            .get("location")
            .and_then(|value| value.to_str().ok()),
        Some(format!("/orders/{id}").as_str())
    );
    let underway: Value = test::read_body_json(response).await;
    assert_eq!(underway["status"], "confirmed");
    let mut status = String::new();
    for _ in 0..100 {
        fixture.service.recover_due().await.expect("recovers");
        let order = fixture
            .service
            .order(id.parse().expect("uuid"))
            .await
            .expect("reads");
        status = order.status.as_str().to_owned();
        if status == "cancelled" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, "cancelled", "the recovery worker finished it");
}

crate::support::on_both_backends_in_actix!(
    place_read_list_and_cancel_an_order,
    placing_errors,
    an_unreachable_catalog_answers_503_with_retry_after,
    reading_and_cancelling_unknown_or_unfinished_orders,
    the_internal_route_needs_the_service_token,
    a_cancellation_waiting_for_a_peer_is_accepted_and_finished_later,
);
