//! Fixtures: notifications on a throw-away database with a data folder of its own, events
//! as the other modules publish them, and a wait for the delivery worker.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chassis::db::Backend;
use chassis::events::Envelope;
use chassis::money::Money;
use chassis::testing::TestDatabase;
use chrono::Utc;
use notifications::{MIGRATIONS, NotificationsModule};
use notifications_contract::{Delivery, DeliveryStatus, NotificationsSettings};
use orders_contract::{Order, OrderLine, OrderStatus, RejectionReason};
use uuid::Uuid;

pub(crate) use chassis::testing::{
    ADMIN_TOKEN, SERVICE_TOKEN, TestServer as RemoteServer, module_app as app,
};

/// A TCP server on 127.0.0.1 that accepts every connection and never answers, holding it
/// open for as long as the test runs: a webhook receiver or SMTP server that hangs. Answers
/// its port and the count of connections accepted so far.
pub(crate) async fn hanging_server() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, accepted)
}

/// Waits until `accepted` reaches `count`.
pub(crate) async fn wait_for_connections(accepted: &AtomicUsize, count: usize) {
    for _ in 0..300 {
        if accepted.load(Ordering::SeqCst) >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "never {count} connections, only {}",
        accepted.load(Ordering::SeqCst)
    );
}

/// Settings with quick retries, for tests, allowing webhooks on 127.0.0.1 where the tests'
/// receivers listen.
pub(crate) fn quick_settings() -> NotificationsSettings {
    NotificationsSettings {
        from: "Bazaar <shop@example.com>".into(),
        operator_email: "operator@example.com".into(),
        max_attempts: 3,
        webhook_timeout: Duration::from_millis(500),
        smtp_timeout: Duration::from_secs(5),
        retry_delay: Duration::from_millis(20),
        max_retry_delay: Duration::from_millis(80),
        concurrency: 8,
        webhook_concurrency: 8,
        poll_interval: Duration::from_millis(20),
        allow_private_webhooks: true,
        ..NotificationsSettings::default()
    }
}

/// A notifications module on its own database and data folder, which live as long as this
/// value.
pub(crate) struct Local {
    pub(crate) module: NotificationsModule,
    pub(crate) data_dir: tempfile::TempDir,
    db: TestDatabase,
}

impl Local {
    /// Another notifications module on the same database and data folder, as after a
    /// restart with `settings`.
    pub(crate) async fn restarted(&self, settings: &NotificationsSettings) -> NotificationsModule {
        let database = self.db.open(MIGRATIONS).await;
        NotificationsModule::new(database, self.data_dir.path(), settings)
    }

    /// The `.eml` files written so far.
    pub(crate) fn eml_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> =
            match std::fs::read_dir(self.data_dir.path().join("outbox-mail")) {
                Ok(entries) => entries
                    .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                    .filter(|path| path.extension().is_some_and(|ext| ext == "eml"))
                    .collect(),
                Err(_) => Vec::new(),
            };
        files.sort();
        files
    }

    /// Waits until `count` `.eml` files are written, and answers them.
    pub(crate) async fn wait_for_eml_files(&self, count: usize) -> Vec<PathBuf> {
        for _ in 0..300 {
            let files = self.eml_files();
            if files.len() >= count {
                return files;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("never {count} e-mail files: {:?}", self.eml_files());
    }

    /// Waits until every delivery of `order_id` is settled the way `done` says, and
    /// answers them.
    pub(crate) async fn wait_for(
        &self,
        order_id: Uuid,
        done: impl Fn(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        let port = self.module.port();
        for _ in 0..300 {
            let deliveries = port.deliveries(order_id).await.expect("deliveries");
            if done(&deliveries) {
                return deliveries;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "deliveries of {order_id} never settled: {:?}",
            port.deliveries(order_id).await
        );
    }
}

/// Whether every delivery is in `status` and there are `count` of them.
pub(crate) fn all(count: usize, status: DeliveryStatus) -> impl Fn(&[Delivery]) -> bool {
    move |deliveries| {
        deliveries.len() == count && deliveries.iter().all(|delivery| delivery.status == status)
    }
}

/// Notifications on a fresh database of `backend`; `None` when PostgreSQL is unreachable
/// outside CI (the reason is printed).
pub(crate) async fn local(backend: Backend, settings: NotificationsSettings) -> Option<Local> {
    let db = TestDatabase::new(backend)?;
    let database = db.open(MIGRATIONS).await;
    let data_dir = tempfile::tempdir().expect("tempdir");
    let module = NotificationsModule::new(database, data_dir.path(), &settings);
    Some(Local {
        module,
        data_dir,
        db,
    })
}

pub(crate) fn eur(amount: i64) -> Money {
    Money::new(amount, "EUR")
}

pub(crate) fn order(status: OrderStatus, email: &str) -> Order {
    Order {
        id: Uuid::now_v7(),
        status,
        customer_email: email.into(),
        lines: vec![OrderLine {
            product_id: Uuid::new_v4(),
            sku: "MUG-1".into(),
            name: "Mug".into(),
            quantity: 2,
            unit_price: eur(1250),
            line_total: eur(2500),
        }],
        total: eur(2500),
        rejection_reason: (status == OrderStatus::Rejected).then_some(RejectionReason::OutOfStock),
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

/// The event orders publishes when `order` reaches its status.
pub(crate) fn order_event(order: &Order) -> Envelope {
    use orders_contract::event_types as types;
    let (event_type, payload) = match order.status {
        OrderStatus::Confirmed => (
            types::ORDER_CONFIRMED,
            serde_json::to_value(orders_contract::OrderConfirmed {
                order: order.clone(),
            }),
        ),
        OrderStatus::Rejected => (
            types::ORDER_REJECTED,
            serde_json::to_value(orders_contract::OrderRejected {
                order: order.clone(),
            }),
        ),
        _ => (
            types::ORDER_CANCELLED,
            serde_json::to_value(orders_contract::OrderCancelled {
                order: order.clone(),
            }),
        ),
    };
    Envelope::new("orders", event_type, order.id, &payload.expect("payload")).expect("event")
}

pub(crate) fn refund_event(order: &Order) -> Envelope {
    let payload = billing_contract::PaymentRefunded {
        payment_id: Uuid::new_v4(),
        order_id: order.id,
        amount: order.total.clone(),
        customer_email: order.customer_email.clone(),
    };
    Envelope::new(
        "billing",
        billing_contract::event_types::PAYMENT_REFUNDED,
        order.id,
        &payload,
    )
    .expect("event")
}
