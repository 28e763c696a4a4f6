//! Events in, deliveries out: exactly one e-mail per order outcome per recipient, the file
//! channel, the refund (with no event before it) and stock e-mails, on SQLite and PostgreSQL.

use chassis::db::Backend;
use chassis::events::{Applied, Envelope};
use chassis::module::LocalModule;
use notifications_contract::{Channel, DeliveryStatus};
use orders_contract::OrderStatus;
use uuid::Uuid;

use crate::support::{self, all, order, order_event, quick_settings, refund_event};

async fn redelivery_creates_no_second_message(backend: Backend) {
    let Some(local) = support::local(backend, quick_settings()).await else {
        return;
    };
    let service = local.module.service();
    let order = order(OrderStatus::Confirmed, "ada@example.com");
    let event = order_event(&order);
    assert_eq!(
        service.handle(&event).await.expect("handled"),
        Applied::Handled
    );
    // The same event again, as the bus redelivers it…
    assert_eq!(
        service.handle(&event).await.expect("handled"),
        Applied::Duplicate
    );
    // …and through the subscription's handler, as the consumer runtime calls it.
    let handler = &local.module.subscriptions()[0].handler;
    handler.handle(&event).await.expect("handled");
    // A second event about the same outcome (a new id) is no second e-mail either.
    let again = order_event(&order);
    assert_eq!(
        service.handle(&again).await.expect("handled"),
        Applied::Handled
    );

    // The handler sends the e-mail itself once recorded: nothing is left for the worker.
    let deliveries = local.wait_for(order.id, all(1, DeliveryStatus::Sent)).await;
    assert_eq!(service.deliver_due().await.expect("delivered"), 0);
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    let delivery = &deliveries[0];
    assert_eq!(delivery.status, DeliveryStatus::Sent);
    assert_eq!(delivery.channel, Channel::File);
    assert_eq!(delivery.recipient, "ada@example.com");
    assert_eq!(delivery.template, "order_confirmed");
    assert_eq!(delivery.event_id, event.id);
    assert_eq!(delivery.attempts, 1);
    assert_eq!(delivery.last_error, None);

    let files = local.eml_files();
    assert_eq!(files.len(), 1, "{files:?}");
    let eml = std::fs::read_to_string(&files[0]).expect("eml");
    assert!(eml.contains("To: ada@example.com"), "{eml}");
    assert!(eml.contains("From: Bazaar <shop@example.com>"), "{eml}");
    assert!(
        eml.contains(&format!("Subject: Your order {} is confirmed", order.id)),
        "{eml}"
    );
    assert!(
        eml.contains("text/plain") && eml.contains("text/html"),
        "{eml}"
    );
    assert!(eml.contains("25.00 EUR"), "{eml}");
}

#[tokio::test]
async fn redelivery_creates_no_second_message_sqlite() {
    redelivery_creates_no_second_message(Backend::Sqlite).await;
}

#[tokio::test]
async fn redelivery_creates_no_second_message_postgres() {
    redelivery_creates_no_second_message(Backend::Postgres).await;
}

async fn every_outcome_e_mails_its_customer_once(backend: Backend) {
    let Some(local) = support::local(backend, quick_settings()).await else {
        return;
    };
    let service = local.module.service();
    let workers = local.module.spawn_workers();

    let rejected = order(OrderStatus::Rejected, "bob@example.com");
    service
        .handle(&order_event(&rejected))
        .await
        .expect("handled");
    let rejected_log = local
        .wait_for(rejected.id, all(1, DeliveryStatus::Sent))
        .await;
    assert_eq!(rejected_log[0].template, "order_rejected");

    let mut cancelled = order(OrderStatus::Confirmed, "cy@example.com");
    service
        .handle(&order_event(&cancelled))
        .await
        .expect("handled");
    let refund = refund_event(&cancelled);
    service.handle(&refund).await.expect("handled");
    service.handle(&refund).await.expect("handled");
    cancelled.status = OrderStatus::Cancelled;
    service
        .handle(&order_event(&cancelled))
        .await
        .expect("handled");
    let log = local
        .wait_for(cancelled.id, all(3, DeliveryStatus::Sent))
        .await;
    let templates: Vec<&str> = log.iter().map(|d| d.template.as_str()).collect();
    assert_eq!(
        templates,
        ["order_confirmed", "payment_refunded", "order_cancelled"]
    );
    assert!(
        log.iter().all(|d| d.recipient == "cy@example.com"),
        "{log:?}"
    );
    assert_eq!(local.eml_files().len(), 4);
    for worker in workers {
        worker.abort();
    }
}

#[tokio::test]
async fn every_outcome_e_mails_its_customer_once_sqlite() {
    every_outcome_e_mails_its_customer_once(Backend::Sqlite).await;
}

#[tokio::test]
async fn every_outcome_e_mails_its_customer_once_postgres() {
    every_outcome_e_mails_its_customer_once(Backend::Postgres).await;
}

/// `billing.payment_refunded` names the customer: its e-mail goes to them even when no other
/// event about the order came before it.
async fn a_refund_with_no_earlier_event_is_e_mailed_to_the_customer_it_names(backend: Backend) {
    let Some(local) = support::local(backend, quick_settings()).await else {
        return;
    };
    let service = local.module.service();
    let order = order(OrderStatus::Confirmed, "dee@example.com");
    assert_eq!(
        service
            .handle(&refund_event(&order))
            .await
            .expect("handled"),
        Applied::Handled
    );
    let log = local.wait_for(order.id, all(1, DeliveryStatus::Sent)).await;
    assert_eq!(
        (log[0].template.as_str(), log[0].recipient.as_str()),
        ("payment_refunded", "dee@example.com")
    );
    let files = local.eml_files();
    assert_eq!(files.len(), 1, "{files:?}");
    let eml = std::fs::read_to_string(&files[0]).expect("eml");
    assert!(eml.contains("To: dee@example.com"), "{eml}");
}

#[tokio::test]
async fn a_refund_with_no_earlier_event_is_e_mailed_to_the_customer_it_names_sqlite() {
    a_refund_with_no_earlier_event_is_e_mailed_to_the_customer_it_names(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_refund_with_no_earlier_event_is_e_mailed_to_the_customer_it_names_postgres() {
    a_refund_with_no_earlier_event_is_e_mailed_to_the_customer_it_names(Backend::Postgres).await;
}

#[tokio::test]
async fn stock_low_e_mails_the_operator() {
    let local = support::local(Backend::Sqlite, quick_settings())
        .await
        .expect("sqlite");
    let service = local.module.service();
    let stock = catalog_contract::StockLow {
        product_id: Uuid::new_v4(),
        sku: "MUG-1".into(),
        name: "Mug".into(),
        available: 2,
        threshold: 5,
    };
    let event = Envelope::new(
        "catalog",
        catalog_contract::event_types::STOCK_LOW,
        stock.product_id,
        &stock,
    )
    .expect("event");
    service.handle(&event).await.expect("handled");
    service.handle(&event).await.expect("handled");
    let files = local.wait_for_eml_files(1).await;
    assert_eq!(service.deliver_due().await.expect("delivered"), 0);
    assert_eq!(files.len(), 1);
    let eml = std::fs::read_to_string(&files[0]).expect("eml");
    assert!(eml.contains("To: operator@example.com"), "{eml}");
    assert!(eml.contains("Subject: Stock low: Mug (MUG-1)"), "{eml}");
}

/// A payment captured asks for no e-mail: unless a webhook wants it, handling it writes
/// nothing at all — not even the inbox record, as the same event handled once a webhook
/// wants it shows.
#[tokio::test]
async fn an_event_nothing_asks_for_records_nothing() {
    let local = support::local(Backend::Sqlite, quick_settings())
        .await
        .expect("sqlite");
    let service = local.module.service();
    let order = order(OrderStatus::Confirmed, "ada@example.com");
    let captured = Envelope::new(
        "billing",
        billing_contract::event_types::PAYMENT_CAPTURED,
        order.id,
        &billing_contract::PaymentCaptured {
            payment_id: Uuid::new_v4(),
            order_id: order.id,
            amount: order.total.clone(),
            invoice_id: Uuid::new_v4(),
            invoice_number: "2026-000001".into(),
            customer_email: order.customer_email.clone(),
        },
    )
    .expect("event");

    assert_eq!(
        service.handle(&captured).await.expect("handled"),
        Applied::Handled
    );
    assert_eq!(service.deliver_due().await.expect("delivered"), 0);
    let port = local.module.port();
    assert!(port.deliveries(order.id).await.expect("log").is_empty());
    assert!(local.eml_files().is_empty());

    service
        .create_webhook(notifications_contract::CreateWebhook {
            url: "http://127.0.0.1:9/hook".into(),
            events: vec![billing_contract::event_types::PAYMENT_CAPTURED.into()],
            secret: "k".into(),
        })
        .await
        .expect("webhook");
    // Not a duplicate: the first handling left no inbox record behind.
    assert_eq!(
        service.handle(&captured).await.expect("handled"),
        Applied::Handled
    );
    assert_eq!(
        service.handle(&captured).await.expect("handled"),
        Applied::Duplicate
    );
    let deliveries = port.deliveries(order.id).await.expect("log");
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0].channel, Channel::Webhook);
    assert_eq!(deliveries[0].event_id, captured.id);
}

#[tokio::test]
async fn the_module_subscribes_as_notifications_to_the_events_it_e_mails_about() {
    let local = support::local(Backend::Sqlite, quick_settings())
        .await
        .expect("sqlite");
    let subscriptions = local.module.subscriptions();
    assert_eq!(subscriptions.len(), 1);
    assert_eq!(subscriptions[0].consumer, "notifications");
    for event_type in [
        "orders.order_confirmed",
        "orders.order_rejected",
        "orders.order_cancelled",
        "billing.payment_refunded",
        "catalog.stock_low",
    ] {
        assert!(
            subscriptions[0].event_types.iter().any(|t| t == event_type),
            "{event_type}"
        );
    }
    assert_eq!(local.module.name(), "notifications");
}
