//! The `Billing` port's conformance suite: the sentences of the port's doc comments, run
//! against the local implementation and against `HttpBilling` talking to a real server,
//! on SQLite and PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use billing::BillingModule;
use billing_contract::{Billing, BillingError, HttpBilling, PaymentStatus};
use chassis::db::Backend;
use chassis::page::PageRequest;
use chassis::remote::RemoteSettings;
use chassis::secret::Secret;
use uuid::Uuid;

use crate::support::{self, HASTY, LocalBilling, RemoteServer, charge, eur};

/// Runs every check against `port`; `hasty` is the same billing (same database) with a
/// gateway timeout shorter than `tok_slow`'s delay. `billing` counts gateway calls and
/// reads invoices.
async fn suite(port: &dyn Billing, hasty: &dyn Billing, billing: &LocalBilling) {
    charge_captures_and_issues_an_invoice(port, billing).await;
    charge_is_idempotent_per_order(port, billing).await;
    a_declined_charge_answers_the_same_declined_payment(port, billing).await;
    charge_refuses_invalid_requests(port, billing).await;
    charge_conflicts_with_another_amount(port).await;
    refund_gives_a_captured_payment_back_once(port, billing).await;
    refund_of_an_order_never_charged_is_not_found_and_voids_it(port, billing).await;
    refund_of_a_declined_payment_is_not_refundable(port).await;
    unavailable_when_the_gateway_fails_and_charging_later_works(port, billing).await;
    a_refund_before_any_charge_went_through_declines_the_payment(port, billing).await;
    unavailable_when_the_gateway_answers_too_late(port, hasty, billing).await;
}

async fn charge_captures_and_issues_an_invoice(port: &dyn Billing, billing: &LocalBilling) {
    let order = Uuid::new_v4();
    let payment = port
        .charge(charge(order, 1999, "tok_visa"))
        .await
        .expect("captured");
    assert_eq!(payment.order_id, order);
    assert_eq!(payment.status, PaymentStatus::Captured);
    assert_eq!(payment.amount, eur(1999));
    assert_eq!(payment.refunded_amount, eur(0));
    assert!(
        payment
            .provider_ref
            .as_deref()
            .is_some_and(|reference| reference.starts_with("sim_")),
        "{payment:?}"
    );
    let invoice = billing
        .module
        .service()
        .invoice_of_order(order)
        .await
        .expect("reads")
        .expect("an invoice is issued with a captured payment");
    assert_eq!(invoice.amount, eur(1999));
    assert!(invoice.number.starts_with("INV-"), "{}", invoice.number);
    assert_eq!(billing.gateway.charges_of(order), 1);
}

async fn charge_is_idempotent_per_order(port: &dyn Billing, billing: &LocalBilling) {
    let order = Uuid::new_v4();
    let first = port
        .charge(charge(order, 500, "tok_visa"))
        .await
        .expect("captured");
    let again = port
        .charge(charge(order, 500, "tok_visa"))
        .await
        .expect("the same payment");
    assert_eq!(again, first);
    assert_eq!(billing.gateway.charges_of(order), 1, "money moved once");
    let service = billing.module.service();
    let listed = service
        .payments(
            Some(order),
            PageRequest {
                limit: 10,
                after: None,
            },
        )
        .await
        .expect("lists");
    assert_eq!(listed.items, vec![first], "one payment per order");
}

async fn a_declined_charge_answers_the_same_declined_payment(
    port: &dyn Billing,
    billing: &LocalBilling,
) {
    for token in ["tok_declined", "tok_unknown_card"] {
        let order = Uuid::new_v4();
        let declined = port
            .charge(charge(order, 700, token))
            .await
            .expect("answered");
        assert_eq!(declined.status, PaymentStatus::Declined, "{token}");
        assert_eq!(declined.provider_ref, None);
        assert_eq!(declined.refunded_amount, eur(0));
        let again = port
            .charge(charge(order, 700, "tok_visa"))
            .await
            .expect("answered");
        assert_eq!(
            again, declined,
            "charging again answers the declined payment"
        );
        assert_eq!(billing.gateway.charges_of(order), 1);
        let invoice = billing
            .module
            .service()
            .invoice_of_order(order)
            .await
            .expect("reads");
        assert_eq!(invoice, None, "no invoice for a declined payment");
    }
}

async fn charge_refuses_invalid_requests(port: &dyn Billing, billing: &LocalBilling) {
    let order = Uuid::new_v4();
    let mut other_currency = charge(order, 100, "tok_visa");
    other_currency.amount.currency = "USD".into();
    let mut no_customer = charge(order, 100, "tok_visa");
    no_customer.customer_email = String::new();
    let cases = [
        (charge(order, 0, "tok_visa"), "amount.amount"),
        (charge(order, -100, "tok_visa"), "amount.amount"),
        (other_currency, "amount.currency"),
        (charge(order, 100, ""), "token"),
        (charge(order, 100, &"t".repeat(201)), "token"),
        (no_customer, "customer_email"),
    ];
    for (request, field) in cases {
        let outcome = port.charge(request.clone()).await;
        assert!(
            matches!(&outcome, Err(BillingError::InvalidRequest(message)) if message.starts_with(field)),
            "{request:?}: {outcome:?}"
        );
    }
    assert_eq!(billing.gateway.charges_of(order), 0, "nothing was sent");
    let valid = port
        .charge(charge(order, 100, "tok_visa"))
        .await
        .expect("a refused charge leaves nothing behind");
    assert_eq!(valid.status, PaymentStatus::Captured);
}

async fn charge_conflicts_with_another_amount(port: &dyn Billing) {
    for token in ["tok_visa", "tok_declined"] {
        let order = Uuid::new_v4();
        port.charge(charge(order, 1000, token))
            .await
            .expect("answered");
        assert_eq!(
            port.charge(charge(order, 1001, token)).await,
            Err(BillingError::ChargeConflict { order_id: order }),
            "{token}"
        );
    }
}

async fn refund_gives_a_captured_payment_back_once(port: &dyn Billing, billing: &LocalBilling) {
    let order = Uuid::new_v4();
    let captured = port
        .charge(charge(order, 2500, "tok_visa"))
        .await
        .expect("captured");
    let refunded = port.refund(order).await.expect("refunded");
    assert_eq!(refunded.status, PaymentStatus::Refunded);
    assert_eq!(refunded.refunded_amount, captured.amount);
    assert_eq!(
        (refunded.id, refunded.order_id, &refunded.amount),
        (captured.id, order, &captured.amount)
    );
    assert_eq!(port.refund(order).await.expect("as is"), refunded);
    assert_eq!(
        billing.gateway.refunds_of(order),
        1,
        "money given back once"
    );
    let charged_again = port
        .charge(charge(order, 2500, "tok_visa"))
        .await
        .expect("answered");
    assert_eq!(
        charged_again, refunded,
        "a refunded order is not charged again"
    );
    assert_eq!(billing.gateway.charges_of(order), 1);
}

/// A refund of an order billing has not seen voids it: the refund answers not found, and
/// a charge arriving later (an attempt delayed or retried after the caller gave the order
/// up) is refused without asking the provider.
async fn refund_of_an_order_never_charged_is_not_found_and_voids_it(
    port: &dyn Billing,
    billing: &LocalBilling,
) {
    let order = Uuid::new_v4();
    assert_eq!(
        port.refund(order).await,
        Err(BillingError::PaymentNotFound(order))
    );
    assert_eq!(
        port.refund(order).await,
        Err(BillingError::PaymentNotFound(order)),
        "refunding again answers the same"
    );
    assert_eq!(
        port.charge(charge(order, 900, "tok_visa")).await,
        Err(BillingError::ChargeVoided { order_id: order })
    );
    assert_eq!(
        billing.gateway.charges_of(order),
        0,
        "the provider is not asked"
    );
}

async fn refund_of_a_declined_payment_is_not_refundable(port: &dyn Billing) {
    let order = Uuid::new_v4();
    port.charge(charge(order, 300, "tok_declined"))
        .await
        .expect("declined");
    assert_eq!(
        port.refund(order).await,
        Err(BillingError::NotRefundable {
            order_id: order,
            status: PaymentStatus::Declined
        })
    );
}

/// A refund asked while no charge of the order ever went through (the payer is
/// compensating) declines the payment: nothing to give back, and no later charge captures.
async fn a_refund_before_any_charge_went_through_declines_the_payment(
    port: &dyn Billing,
    billing: &LocalBilling,
) {
    let order = Uuid::new_v4();
    let failed = port.charge(charge(order, 700, "tok_error")).await;
    assert!(
        matches!(failed, Err(BillingError::Unavailable(_))),
        "{failed:?}"
    );
    assert_eq!(
        port.refund(order).await,
        Err(BillingError::NotRefundable {
            order_id: order,
            status: PaymentStatus::Declined
        })
    );
    let later = port
        .charge(charge(order, 700, "tok_visa"))
        .await
        .expect("answers");
    assert_eq!(
        later.status,
        PaymentStatus::Declined,
        "a late charge cannot capture"
    );
    assert_eq!(billing.gateway.refunds_of(order), 0, "nothing to give back");
}

async fn unavailable_when_the_gateway_fails_and_charging_later_works(
    port: &dyn Billing,
    billing: &LocalBilling,
) {
    let order = Uuid::new_v4();
    let outcome = port.charge(charge(order, 4200, "tok_error")).await;
    assert!(
        matches!(outcome, Err(BillingError::Unavailable(_))),
        "{outcome:?}"
    );
    assert!(billing.gateway.charges_of(order) >= 1);
    let later = port
        .charge(charge(order, 4200, "tok_visa"))
        .await
        .expect("trying again later works");
    assert_eq!(later.status, PaymentStatus::Captured);
}

async fn unavailable_when_the_gateway_answers_too_late(
    port: &dyn Billing,
    hasty: &dyn Billing,
    billing: &LocalBilling,
) {
    let order = Uuid::new_v4();
    let started = std::time::Instant::now();
    let outcome = hasty.charge(charge(order, 800, "tok_slow")).await;
    assert!(
        matches!(outcome, Err(BillingError::Unavailable(_))),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < HASTY.slow_delay,
        "gave up at the gateway timeout"
    );
    // With a timeout longer than the provider's delay, the same charge goes through.
    let later = port
        .charge(charge(order, 800, "tok_slow"))
        .await
        .expect("captured");
    assert_eq!(later.status, PaymentStatus::Captured);
    let invoice = billing
        .module
        .service()
        .invoice_of_order(order)
        .await
        .expect("reads");
    assert!(invoice.is_some());
}

fn remote_settings() -> RemoteSettings {
    RemoteSettings {
        timeout: Duration::from_secs(3),
        retries: 1,
        retry_delay: Duration::from_millis(10),
        // The suite provokes gateway failures on purpose; they must not open the breaker.
        breaker_failures: 100,
        ..RemoteSettings::default()
    }
}

fn client(server: &RemoteServer) -> HttpBilling {
    HttpBilling::new(
        server.url.clone(),
        Some(Secret::new(support::SERVICE_TOKEN)),
        remote_settings(),
    )
    .expect("client builds")
}

async fn run_local(backend: Backend) {
    let Some(billing) = support::local(backend).await else {
        return;
    };
    let port = billing.module.port();
    let hasty = billing.sibling(HASTY).port();
    suite(port.as_ref(), hasty.as_ref(), &billing).await;
}

async fn run_remote(backend: Backend) {
    let Some(billing) = support::local(backend).await else {
        return;
    };
    let server = RemoteServer::start(&billing.module).await;
    let hasty_server = RemoteServer::start(&billing.sibling(HASTY)).await;
    let port = client(&server);
    let hasty = client(&hasty_server);
    suite(&port, &hasty, &billing).await;
    hasty_server.stop().await;

    // When the process serving billing is gone, the port says Unavailable.
    server.stop().await;
    let outcome = port.charge(charge(Uuid::new_v4(), 100, "tok_visa")).await;
    assert!(
        matches!(outcome, Err(BillingError::Unavailable(_))),
        "{outcome:?}"
    );
    let outcome = port.refund(Uuid::new_v4()).await;
    assert!(
        matches!(outcome, Err(BillingError::Unavailable(_))),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_billing_conforms_on_sqlite() {
    run_local(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_billing_conforms_on_postgres() {
    run_local(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_billing_conforms_on_sqlite() {
    run_remote(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_billing_conforms_on_postgres() {
    run_remote(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_billing_with_a_wrong_service_token_is_refused() {
    let Some(billing) = support::local(Backend::Sqlite).await else {
        return;
    };
    let server = RemoteServer::start(&billing.module).await;
    let client = HttpBilling::new(
        server.url.clone(),
        Some(Secret::new("wrong")),
        remote_settings(),
    )
    .expect("client builds");
    let order = Uuid::new_v4();
    let outcome = client.charge(charge(order, 100, "tok_visa")).await;
    assert!(
        matches!(&outcome, Err(BillingError::Internal(message)) if message.contains("unauthorized")),
        "{outcome:?}"
    );
    assert_eq!(billing.gateway.charges_of(order), 0, "nothing was charged");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_billing_reports_unavailable_when_postgres_refuses_connections() {
    let Some(db) = chassis::testing::TestDatabase::postgres() else {
        return;
    };
    let options = chassis::db::PoolOptions {
        max_size: 2,
        connection_timeout: Duration::from_millis(500),
    };
    let database = chassis::db::Database::open(db.url(), options).expect("opens");
    database
        .migrate(billing::MIGRATIONS)
        .await
        .expect("migrates");
    let module = BillingModule::new(
        database,
        "EUR",
        &billing_contract::BillingSettings::default(),
    );
    let port: Arc<dyn Billing> = module.port();
    db.refuse_connections();
    let outcome = port.charge(charge(Uuid::new_v4(), 100, "tok_visa")).await;
    assert!(
        matches!(outcome, Err(BillingError::Unavailable(_))),
        "{outcome:?}"
    );
    let outcome = port.refund(Uuid::new_v4()).await;
    assert!(
        matches!(outcome, Err(BillingError::Unavailable(_))),
        "{outcome:?}"
    );
}
