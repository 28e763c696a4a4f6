//! Every branch of the order saga, with mockall mocks of `Catalog` and `Billing`: success,
//! out of stock, declined, transient gateway error, peer unreachable then back, peer
//! unreachable past the deadline, crash after each step, duplicate requests, cancellation.

use std::time::Duration;

use billing_contract::{BillingError, MockBilling, PaymentStatus};
use catalog_contract::{CatalogError, MockCatalog, ReservationStatus};
use chassis::events::outbox;
use mockall::Sequence;
use orders::Error;
use orders_contract::{OrderStatus, RejectionReason};

use crate::support::{
    self, catalog_knowing, fixture, payment, product, request, reservation, settings,
};

fn unavailable() -> CatalogError {
    CatalogError::Unavailable("connection refused".into())
}

async fn wait_until_settled(fixture: &support::Fixture, id: uuid::Uuid) -> orders_contract::Order {
    for _ in 0..200 {
        let _ = fixture.service.recover_due().await;
        let order = fixture.service.order(id).await.expect("reads");
        if order.status != OrderStatus::Pending {
            return order;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("order {id} stayed pending");
}

async fn a_paid_order_with_stock_is_confirmed_and_announced() {
    let item = product(1250);
    let mut catalog = catalog_knowing(&item);
    let mut billing = MockBilling::new();
    let mut order = Sequence::new();
    catalog
        .expect_reserve()
        .times(1)
        .in_sequence(&mut order)
        .returning(|id, lines| Ok(reservation(id, ReservationStatus::Reserved, lines)));
    billing
        .expect_charge()
        .times(1)
        .in_sequence(&mut order)
        .withf(|charge| charge.amount.amount == 2500 && charge.token == "tok_visa")
        .returning(|charge| {
            Ok(payment(
                charge.order_id,
                charge.amount.amount,
                PaymentStatus::Captured,
            ))
        });
    catalog
        .expect_commit()
        .times(1)
        .in_sequence(&mut order)
        .returning(|id| Ok(reservation(id, ReservationStatus::Committed, &[])));
    let fixture = fixture(catalog, billing, settings()).await;

    let placed = fixture
        .service
        .place(request(&item, 2, "tok_visa"), None)
        .await
        .expect("placed");
    assert_eq!(placed.status, OrderStatus::Confirmed);
    assert_eq!(placed.total.amount, 2500);
    assert_eq!(placed.lines[0].unit_price.amount, 1250, "price snapshotted");
    assert_eq!(placed.lines[0].sku, item.sku);
    assert_eq!(placed.rejection_reason, None);
    assert_eq!(
        outbox::stats(&fixture.db).await.expect("stats").pending,
        1,
        "orders.order_confirmed in the outbox"
    );
}

async fn an_order_out_of_stock_is_rejected_without_charging() {
    let item = product(100);
    let mut catalog = catalog_knowing(&item);
    let product_id = item.id;
    catalog
        .expect_reserve()
        .times(1)
        .returning(move |_, _| Err(CatalogError::OutOfStock { product_id }));
    let billing = MockBilling::new(); // any call would panic
    let fixture = fixture(catalog, billing, settings()).await;
    let placed = fixture
        .service
        .place(request(&item, 1, "tok_visa"), None)
        .await
        .expect("placed");
    assert_eq!(placed.status, OrderStatus::Rejected);
    assert_eq!(placed.rejection_reason, Some(RejectionReason::OutOfStock));
}

async fn a_declined_payment_releases_the_stock_and_rejects() {
    let item = product(100);
    let mut catalog = catalog_knowing(&item);
    let mut billing = MockBilling::new();
    catalog
        .expect_reserve()
        .times(1)
        .returning(|id, lines| Ok(reservation(id, ReservationStatus::Reserved, lines)));
    billing.expect_charge().times(1).returning(|charge| {
        Ok(payment(
            charge.order_id,
            charge.amount.amount,
            PaymentStatus::Declined,
        ))
    });
    catalog
        .expect_release()
        .times(1)
        .returning(|id| Ok(reservation(id, ReservationStatus::Released, &[])));
    catalog.expect_commit().never();
    let fixture = fixture(catalog, billing, settings()).await;
    let placed = fixture
        .service
        .place(request(&item, 1, "tok_declined"), None)
        .await
        .expect("placed");
    assert_eq!(placed.status, OrderStatus::Rejected);
    assert_eq!(
        placed.rejection_reason,
        Some(RejectionReason::PaymentDeclined)
    );
}

async fn a_transient_gateway_error_is_retried_until_the_charge_goes_through() {
    let item = product(100);
    let mut catalog = catalog_knowing(&item);
    let mut billing = MockBilling::new();
    catalog
        .expect_reserve()
        .times(1)
        .returning(|id, lines| Ok(reservation(id, ReservationStatus::Reserved, lines)));
    let mut attempts = Sequence::new();
    billing
        .expect_charge()
        .times(1)
        .in_sequence(&mut attempts)
        .returning(|_| Err(BillingError::Unavailable("gateway: transient error".into())));
    billing
        .expect_charge()
        .times(1)
        .in_sequence(&mut attempts)
        .returning(|charge| {
            Ok(payment(
                charge.order_id,
                charge.amount.amount,
                PaymentStatus::Captured,
            ))
        });
    catalog
        .expect_commit()
        .times(1)
        .returning(|id| Ok(reservation(id, ReservationStatus::Committed, &[])));
    let fixture = fixture(catalog, billing, settings()).await;
    let placed = fixture
        .service
        .place(request(&item, 1, "tok_error"), None)
        .await
        .expect("placed");
    assert_eq!(
        placed.status,
        OrderStatus::Pending,
        "answered pending while billing is unreachable"
    );
    let settled = wait_until_settled(&fixture, placed.id).await;
    assert_eq!(settled.status, OrderStatus::Confirmed);
}

async fn an_unreachable_catalog_that_comes_back_lets_the_order_through() {
    let item = product(100);
    let mut catalog = catalog_knowing(&item);
    let mut billing = MockBilling::new();
    let mut reserve = Sequence::new();
    catalog
        .expect_reserve()
        .times(2)
        .in_sequence(&mut reserve)
        .returning(|_, _| Err(unavailable()));
    catalog
        .expect_reserve()
        .times(1)
        .in_sequence(&mut reserve)
        .returning(|id, lines| Ok(reservation(id, ReservationStatus::Reserved, lines)));
    billing.expect_charge().times(1).returning(|charge| {
        Ok(payment(
            charge.order_id,
            charge.amount.amount,
            PaymentStatus::Captured,
        ))
    });
    catalog
        .expect_commit()
        .times(1)
        .returning(|id| Ok(reservation(id, ReservationStatus::Committed, &[])));
    let fixture = fixture(catalog, billing, settings()).await;
    let placed = fixture
        .service
        .place(request(&item, 1, "tok_visa"), None)
        .await
        .expect("placed");
    assert_eq!(placed.status, OrderStatus::Pending);
    assert_eq!(
        wait_until_settled(&fixture, placed.id).await.status,
        OrderStatus::Confirmed
    );
}

async fn a_peer_unreachable_past_the_deadline_is_compensated_and_rejected() {
    let item = product(100);
    let mut catalog = catalog_knowing(&item);
    let mut billing = MockBilling::new();
    catalog
        .expect_reserve()
        .times(1)
        .returning(|id, lines| Ok(reservation(id, ReservationStatus::Reserved, lines)));
    // Billing never answers: the charge keeps failing until the deadline passes.
    billing
        .expect_charge()
        .returning(|_| Err(BillingError::Unavailable("connection refused".into())));
    // Compensation: a refund (nothing was captured) and the release of the stock.
    billing
        .expect_refund()
        .times(1)
        .returning(|id| Err(BillingError::PaymentNotFound(id)));
    catalog
        .expect_release()
        .times(1)
        .returning(|id| Ok(reservation(id, ReservationStatus::Released, &[])));
    catalog.expect_commit().never();
    let short = orders_contract::OrdersSettings {
        sync_wait: Duration::from_millis(100),
        saga_deadline: Duration::from_millis(400),
        ..settings()
    };
    let fixture = fixture(catalog, billing, short).await;
    let placed = fixture
        .service
        .place(request(&item, 1, "tok_visa"), None)
        .await
        .expect("placed");
    assert_eq!(placed.status, OrderStatus::Pending);
    let settled = wait_until_settled(&fixture, placed.id).await;
    assert_eq!(settled.status, OrderStatus::Rejected);
    assert_eq!(
        settled.rejection_reason,
        Some(RejectionReason::DependencyUnavailable)
    );
}

async fn the_catalog_unreachable_at_placement_creates_no_order() {
    let item = product(100);
    let mut catalog = MockCatalog::new();
    catalog.expect_products().returning(|_| Err(unavailable()));
    let fixture = fixture(catalog, MockBilling::new(), settings()).await;
    let outcome = fixture
        .service
        .place(request(&item, 1, "tok_visa"), None)
        .await;
    assert!(matches!(outcome, Err(Error::Unavailable(_))), "{outcome:?}");
    let listed = fixture
        .service
        .list(
            "ada@example.com".into(),
            chassis::page::PageRequest {
                limit: 10,
                after: None,
            },
        )
        .await
        .expect("lists");
    assert!(listed.items.is_empty());
}

async fn an_unknown_product_is_refused_before_any_order_exists() {
    let item = product(100);
    let mut catalog = MockCatalog::new();
    let id = item.id;
    catalog
        .expect_products()
        .returning(move |_| Err(CatalogError::ProductNotFound(id)));
    let fixture = fixture(catalog, MockBilling::new(), settings()).await;
    let outcome = fixture
        .service
        .place(request(&item, 1, "tok_visa"), None)
        .await;
    assert!(
        matches!(outcome, Err(Error::UnknownProduct(unknown)) if unknown == id),
        "{outcome:?}"
    );
}

async fn the_same_idempotency_key_answers_the_same_order_and_charges_once() {
    let item = product(300);
    let mut catalog = catalog_knowing(&item);
    let mut billing = MockBilling::new();
    catalog
        .expect_reserve()
        .times(1)
        .returning(|id, lines| Ok(reservation(id, ReservationStatus::Reserved, lines)));
    billing.expect_charge().times(1).returning(|charge| {
        Ok(payment(
            charge.order_id,
            charge.amount.amount,
            PaymentStatus::Captured,
        ))
    });
    catalog
        .expect_commit()
        .times(1)
        .returning(|id| Ok(reservation(id, ReservationStatus::Committed, &[])));
    let fixture = fixture(catalog, billing, settings()).await;
    let key = Some("checkout-42".to_owned());
    let first = fixture
        .service
        .place(request(&item, 1, "tok_visa"), key.clone())
        .await
        .expect("placed");
    let again = fixture
        .service
        .place(request(&item, 1, "tok_visa"), key.clone())
        .await
        .expect("replayed");
    assert_eq!(again.id, first.id);
    assert_eq!(again.status, OrderStatus::Confirmed);
    let other = fixture
        .service
        .place(request(&item, 2, "tok_visa"), key)
        .await;
    assert!(
        matches!(other, Err(Error::IdempotencyKeyReused)),
        "{other:?}"
    );
}

/// Simulates a process that died right after recording `step`: a fresh service (another
/// process) must resume from exactly that step.
async fn resumes_after_a_crash_at(
    step_reached: &str,
    catalog: MockCatalog,
    billing: MockBilling,
    expected: OrderStatus,
) {
    let item = product(100);
    let mut catalog = catalog;
    let known = item.clone();
    catalog
        .expect_products()
        .returning(move |ids| Ok(ids.iter().map(|_| known.clone()).collect()));
    let fixture = fixture(catalog, billing, settings()).await;
    let id = crate::support::insert_pending(&fixture.db, &item, step_reached).await;
    assert_eq!(fixture.service.recover_due().await.expect("recovers"), 1);
    let order = fixture.service.order(id).await.expect("reads");
    assert_eq!(order.status, expected, "resumed at {step_reached}");
}

async fn a_crash_after_each_step_resumes_from_the_recorded_step() {
    // Crashed before reserving: everything runs.
    let mut catalog = MockCatalog::new();
    let mut billing = MockBilling::new();
    catalog
        .expect_reserve()
        .times(1)
        .returning(|id, lines| Ok(reservation(id, ReservationStatus::Reserved, lines)));
    billing.expect_charge().times(1).returning(|c| {
        Ok(payment(
            c.order_id,
            c.amount.amount,
            PaymentStatus::Captured,
        ))
    });
    catalog
        .expect_commit()
        .times(1)
        .returning(|id| Ok(reservation(id, ReservationStatus::Committed, &[])));
    resumes_after_a_crash_at("reserve", catalog, billing, OrderStatus::Confirmed).await;

    // Crashed after reserving: no second reservation.
    let mut catalog = MockCatalog::new();
    let mut billing = MockBilling::new();
    catalog.expect_reserve().never();
    billing.expect_charge().times(1).returning(|c| {
        Ok(payment(
            c.order_id,
            c.amount.amount,
            PaymentStatus::Captured,
        ))
    });
    catalog
        .expect_commit()
        .times(1)
        .returning(|id| Ok(reservation(id, ReservationStatus::Committed, &[])));
    resumes_after_a_crash_at("charge", catalog, billing, OrderStatus::Confirmed).await;

    // Crashed after charging: no second charge.
    let mut catalog = MockCatalog::new();
    let mut billing = MockBilling::new();
    billing.expect_charge().never();
    catalog
        .expect_commit()
        .times(1)
        .returning(|id| Ok(reservation(id, ReservationStatus::Committed, &[])));
    resumes_after_a_crash_at("commit", catalog, billing, OrderStatus::Confirmed).await;

    // Crashed while compensating: the refund, then the release.
    let mut catalog = MockCatalog::new();
    let mut billing = MockBilling::new();
    billing
        .expect_refund()
        .times(1)
        .returning(|id| Ok(payment(id, 100, PaymentStatus::Refunded)));
    catalog
        .expect_release()
        .times(1)
        .returning(|id| Ok(reservation(id, ReservationStatus::Released, &[])));
    resumes_after_a_crash_at("refund", catalog, billing, OrderStatus::Rejected).await;

    let mut catalog = MockCatalog::new();
    catalog
        .expect_release()
        .times(1)
        .returning(|id| Ok(reservation(id, ReservationStatus::Released, &[])));
    resumes_after_a_crash_at(
        "release",
        catalog,
        MockBilling::new(),
        OrderStatus::Rejected,
    )
    .await;
}

async fn a_confirmed_order_is_cancelled_once_with_refund_and_restock() {
    let item = product(100);
    let (mut catalog, mut billing) = support::confirming_once(&item);
    billing
        .expect_refund()
        .times(1)
        .returning(|id| Ok(payment(id, 100, PaymentStatus::Refunded)));
    catalog
        .expect_restock()
        .times(1)
        .returning(|id| Ok(reservation(id, ReservationStatus::Restocked, &[])));
    let fixture = fixture(catalog, billing, settings()).await;
    let placed = fixture
        .service
        .place(request(&item, 1, "tok_visa"), None)
        .await
        .expect("placed");
    assert_eq!(placed.status, OrderStatus::Confirmed);
    let cancelled = fixture.service.cancel(placed.id).await.expect("cancels");
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    let again = fixture
        .service
        .cancel(placed.id)
        .await
        .expect("same answer");
    assert_eq!(again, cancelled, "cancelling twice answers the same order");
    assert_eq!(
        outbox::stats(&fixture.db).await.expect("stats").pending,
        2,
        "confirmed, then cancelled"
    );
}

async fn only_a_confirmed_order_can_be_cancelled() {
    let item = product(100);
    let mut catalog = catalog_knowing(&item);
    let product_id = item.id;
    catalog
        .expect_reserve()
        .returning(move |_, _| Err(CatalogError::OutOfStock { product_id }));
    let fixture = fixture(catalog, MockBilling::new(), settings()).await;
    let rejected = fixture
        .service
        .place(request(&item, 1, "tok_visa"), None)
        .await
        .expect("placed");
    let outcome = fixture.service.cancel(rejected.id).await;
    assert!(
        matches!(outcome, Err(Error::NotCancellable { .. })),
        "{outcome:?}"
    );
    let unknown = uuid::Uuid::new_v4();
    assert!(
        matches!(fixture.service.cancel(unknown).await, Err(Error::OrderNotFound(id)) if id == unknown)
    );
}

/// A double click, a retrying client: cancels of one order at once run one cancellation
/// (one refund, one restock: `times(1)`), and every one of them answers the cancelled order.
/// On PostgreSQL the cancels spread over 4 instances, as 4 replicas of orders would get
/// them.
async fn concurrent_cancels_of_one_order_refund_and_restock_once() {
    let item = product(100);
    let (mut catalog, mut billing) = support::confirming_once(&item);
    // Slow enough that every cancel arrives while the first one's run is under way.
    billing.expect_refund().times(1).returning(|id| {
        std::thread::sleep(Duration::from_millis(100));
        Ok(payment(id, 100, PaymentStatus::Refunded))
    });
    catalog
        .expect_restock()
        .times(1)
        .returning(|id| Ok(reservation(id, ReservationStatus::Restocked, &[])));
    let fixture = support::racing_fixture(catalog, billing, settings()).await;
    let placed = fixture
        .service
        .place(request(&item, 1, "tok_visa"), None)
        .await
        .expect("placed");
    assert_eq!(placed.status, OrderStatus::Confirmed);
    let cancels = (0..8).map(|i| {
        let service = fixture.instance(i).clone();
        tokio::spawn(async move { service.cancel(placed.id).await })
    });
    for answer in futures::future::join_all(cancels).await {
        let order = answer
            .expect("task ran")
            .expect("every cancel answers the order");
        assert_eq!(order.status, OrderStatus::Cancelled);
    }
    assert_eq!(
        outbox::stats(&fixture.db).await.expect("stats").pending,
        2,
        "confirmed, then cancelled once"
    );
}

/// Identical requests with one Idempotency-Key at once: one order, one charge, and every
/// request answers that order. On PostgreSQL the requests spread over 4 instances, as 4
/// replicas of orders would get them.
async fn concurrent_identical_idempotent_orders_create_and_charge_once() {
    let item = product(100);
    let (catalog, billing) = support::confirming_once(&item);
    let fixture = support::racing_fixture(catalog, billing, settings()).await;
    let places = (0..8).map(|i| {
        let service = fixture.instance(i).clone();
        let request = request(&item, 1, "tok_visa");
        tokio::spawn(async move { service.place(request, Some("checkout-race".into())).await })
    });
    let answers: Vec<_> = futures::future::join_all(places)
        .await
        .into_iter()
        .map(|answer| {
            answer
                .expect("task ran")
                .expect("every request answers the order")
        })
        .collect();
    let first = answers[0].id;
    assert!(answers.iter().all(|order| order.id == first), "{answers:?}");
    let settled = wait_until_settled(&fixture, first).await;
    assert_eq!(settled.status, OrderStatus::Confirmed);
}

/// Past `orders.max_sagas_in_flight` orders being placed at once, a placement is refused
/// as unavailable (503) and creates nothing; every accepted one completes.
async fn orders_past_the_sagas_in_flight_bound_are_refused_and_create_nothing() {
    let item = product(100);
    let mut catalog = catalog_knowing(&item);
    let mut billing = MockBilling::new();
    catalog
        .expect_reserve()
        .returning(|id, lines| Ok(reservation(id, ReservationStatus::Reserved, lines)));
    // Slow enough that all placements overlap.
    billing.expect_charge().returning(|c| {
        std::thread::sleep(Duration::from_millis(300));
        Ok(payment(
            c.order_id,
            c.amount.amount,
            PaymentStatus::Captured,
        ))
    });
    catalog
        .expect_commit()
        .returning(|id| Ok(reservation(id, ReservationStatus::Committed, &[])));
    let bounded = orders_contract::OrdersSettings {
        max_sagas_in_flight: 2,
        ..settings()
    };
    let fixture = fixture(catalog, billing, bounded).await;
    let places = (0..6).map(|_| {
        let service = fixture.service.clone();
        let request = request(&item, 1, "tok_visa");
        tokio::spawn(async move { service.place(request, None).await })
    });
    let answers: Vec<_> = futures::future::join_all(places)
        .await
        .into_iter()
        .map(|answer| answer.expect("task ran"))
        .collect();
    let accepted: Vec<_> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
    let refused = answers
        .iter()
        .filter(|a| matches!(a, Err(Error::Unavailable(_))))
        .count();
    assert_eq!((accepted.len(), refused), (2, 4), "{answers:?}");
    let stored = fixture
        .service
        .list(
            "ada@example.com".into(),
            chassis::page::PageRequest {
                after: None,
                limit: 50,
            },
        )
        .await
        .expect("lists");
    assert_eq!(stored.items.len(), 2, "a refused placement stores nothing");
    for order in accepted {
        assert_eq!(
            wait_until_settled(&fixture, order.id).await.status,
            OrderStatus::Confirmed
        );
    }
}

crate::support::on_both_backends!(
    a_paid_order_with_stock_is_confirmed_and_announced,
    an_order_out_of_stock_is_rejected_without_charging,
    a_declined_payment_releases_the_stock_and_rejects,
    a_transient_gateway_error_is_retried_until_the_charge_goes_through,
    an_unreachable_catalog_that_comes_back_lets_the_order_through,
    a_peer_unreachable_past_the_deadline_is_compensated_and_rejected,
    the_catalog_unreachable_at_placement_creates_no_order,
    an_unknown_product_is_refused_before_any_order_exists,
    the_same_idempotency_key_answers_the_same_order_and_charges_once,
    a_crash_after_each_step_resumes_from_the_recorded_step,
    a_confirmed_order_is_cancelled_once_with_refund_and_restock,
    only_a_confirmed_order_can_be_cancelled,
    concurrent_cancels_of_one_order_refund_and_restock_once,
    concurrent_identical_idempotent_orders_create_and_charge_once,
    orders_past_the_sagas_in_flight_bound_are_refused_and_create_nothing,
);
