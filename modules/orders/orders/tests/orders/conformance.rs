//! The `Orders` port's conformance suite, run against the local service and against
//! `HttpOrders` talking to a real server.

use std::time::Duration;

use billing_contract::MockBilling;
use catalog_contract::CatalogError;
use chassis::remote::RemoteSettings;
use chassis::secret::Secret;
use orders_contract::{HttpOrders, Order, OrderStatus, Orders, OrdersError};
use uuid::Uuid;

use crate::support::{self, RemoteServer, catalog_knowing, fixture, product, request, settings};

/// The port's doc comment: `order` answers the order as it stands, and MUST return
/// `OrderNotFound` for an id it does not know.
async fn suite(port: &dyn Orders, placed: &Order) {
    let read = port
        .order(placed.id)
        .await
        .expect("the port reads the order");
    assert_eq!(&read, placed);
    let unknown = Uuid::new_v4();
    assert_eq!(
        port.order(unknown).await,
        Err(OrdersError::OrderNotFound(unknown))
    );
}

/// A fixture holding one order (rejected: out of stock), and that order.
async fn with_one_order() -> (support::Fixture, Order) {
    let item = product(100);
    let mut catalog = catalog_knowing(&item);
    let product_id = item.id;
    catalog
        .expect_reserve()
        .returning(move |_, _| Err(CatalogError::OutOfStock { product_id }));
    let fixture = fixture(catalog, MockBilling::new(), settings()).await;
    let placed = fixture
        .service
        .place(request(&item, 1, "tok_visa"), None)
        .await
        .expect("placed");
    assert_eq!(placed.status, OrderStatus::Rejected);
    (fixture, placed)
}

async fn local_orders_conform() {
    let (fixture, placed) = with_one_order().await;
    let port = orders::OrdersModule::from_service(fixture.service.clone()).port();
    suite(port.as_ref(), &placed).await;
}

async fn http_orders_conform_and_report_unavailable_when_the_process_is_gone() {
    let (fixture, placed) = with_one_order().await;
    let server =
        RemoteServer::start(&orders::OrdersModule::from_service(fixture.service.clone())).await;
    let settings = RemoteSettings {
        timeout: Duration::from_secs(2),
        retries: 1,
        retry_delay: Duration::from_millis(10),
        ..RemoteSettings::default()
    };
    let client = HttpOrders::new(
        server.url.clone(),
        Some(Secret::new(support::SERVICE_TOKEN)),
        settings,
    )
    .expect("builds");
    suite(&client, &placed).await;
    server.stop().await;
    let outcome = client.order(Uuid::new_v4()).await;
    assert!(
        matches!(outcome, Err(OrdersError::Unavailable(_))),
        "{outcome:?}"
    );
}

crate::support::on_both_backends!(
    local_orders_conform,
    http_orders_conform_and_report_unavailable_when_the_process_is_gone,
);
