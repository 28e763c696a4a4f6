//! Fixtures: an orders service on a throw-away database, with mock catalog and billing.

use std::sync::Arc;
use std::time::Duration;

use ::orders::{MIGRATIONS, OrdersService, PaymentMethod, PlaceOrder, PlaceOrderLine};
use billing_contract::{Billing, MockBilling, Payment, PaymentStatus};
use catalog_contract::{
    Catalog, MockCatalog, Money, Product, Reservation, ReservationStatus, StockLevels, StockLine,
};
use chassis::db::{Backend, Database};
use chassis::testing::TestDatabase;
use orders_contract::OrdersSettings;
use uuid::Uuid;

pub(crate) struct Fixture {
    pub(crate) service: OrdersService,
    pub(crate) db: Database,
    /// With [`fixture_instances`], the instances after `service`, each with a `Database`
    /// handle of its own on the same database, all with the same mocks.
    replicas: Vec<OrdersService>,
    _test_db: TestDatabase,
}

impl Fixture {
    /// The instance of the `i`-th of concurrent calls: round-robin over `service` and its
    /// replicas.
    pub(crate) fn instance(&self, i: usize) -> &OrdersService {
        match i % (1 + self.replicas.len()) {
            0 => &self.service,
            n => &self.replicas[n - 1],
        }
    }
}

pub(crate) fn settings() -> OrdersSettings {
    OrdersSettings {
        sync_wait: Duration::from_secs(2),
        saga_deadline: Duration::from_secs(60),
        recovery_interval: Duration::from_millis(50),
        saga_lease: Duration::from_secs(30),
        max_sagas_in_flight: 256,
    }
}

tokio::task_local! {
    /// The backend of the running test's fixtures; see [`on`].
    static BACKEND: Backend;
}

/// Runs one test of the suite with its fixtures on `backend`; on PostgreSQL unreachable
/// outside CI it prints why and skips (under CI `TestDatabase` fails instead).
pub(crate) async fn on(backend: Backend, test: impl std::future::Future<Output = ()>) {
    if backend == Backend::Postgres && TestDatabase::new(backend).is_none() {
        return;
    }
    BACKEND.scope(backend, test).await;
}

/// Declares each named `async fn` of the calling module as two tests, `sqlite::<name>` and
/// `postgres::<name>`: the orders suite runs on both backends.
macro_rules! on_both_backends {
    ($($test:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    crate::support::on(chassis::db::Backend::Sqlite, super::$test()).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    crate::support::on(chassis::db::Backend::Postgres, super::$test()).await;
                }
            )+
        }
    };
}
pub(crate) use on_both_backends;

/// Like [`on_both_backends`], for tests that need actix's runtime (`actix_web::test`).
macro_rules! on_both_backends_in_actix {
    ($($test:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[actix_web::test]
                async fn $test() {
                    crate::support::on(chassis::db::Backend::Sqlite, super::$test()).await;
                }
            )+
        }
        mod postgres {
            $(
                #[actix_web::test]
                async fn $test() {
                    crate::support::on(chassis::db::Backend::Postgres, super::$test()).await;
                }
            )+
        }
    };
}
pub(crate) use on_both_backends_in_actix;

/// The backend of the running test (SQLite outside [`on`]).
pub(crate) fn backend() -> Backend {
    BACKEND
        .try_with(|backend| *backend)
        .unwrap_or(Backend::Sqlite)
}

pub(crate) async fn fixture(
    catalog: MockCatalog,
    billing: MockBilling,
    settings: OrdersSettings,
) -> Fixture {
    fixture_instances(catalog, billing, settings, 1).await
}

/// A fixture for a race test: on PostgreSQL 4 instances of orders on the one database, as
/// 4 replicas would be, on SQLite one (`chassis::testing::racing_instances`).
pub(crate) async fn racing_fixture(
    catalog: MockCatalog,
    billing: MockBilling,
    settings: OrdersSettings,
) -> Fixture {
    let instances = chassis::testing::racing_instances(backend());
    fixture_instances(catalog, billing, settings, instances).await
}

/// Like [`fixture`], with `n` (at least one) orders services on the one database, each
/// with its own `Database` handle (its own pool), as separate processes of the module
/// would have; all call the same mocks, so their expectations count every instance's
/// calls. `db` is the first instance's.
async fn fixture_instances(
    catalog: MockCatalog,
    billing: MockBilling,
    settings: OrdersSettings,
    n: usize,
) -> Fixture {
    let test_db = TestDatabase::new(backend()).expect("the test database");
    let catalog: Arc<dyn Catalog> = Arc::new(catalog);
    let billing: Arc<dyn Billing> = Arc::new(billing);
    let mut instances = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        // A new pool on the same database each time; the migrations find nothing left to
        // do after the first.
        let db = test_db.open(MIGRATIONS).await;
        let service = OrdersService::new(
            db.clone(),
            "EUR",
            settings.clone(),
            Arc::clone(&catalog),
            Arc::clone(&billing),
        );
        instances.push((service, db));
    }
    let (service, db) = instances.remove(0);
    Fixture {
        service,
        db,
        replicas: instances.into_iter().map(|(service, _)| service).collect(),
        _test_db: test_db,
    }
}

pub(crate) fn product(price: i64) -> Product {
    let now = chrono::Utc::now();
    Product {
        id: Uuid::new_v4(),
        sku: format!("SKU-{}", Uuid::new_v4().simple()),
        name: "Lamp".into(),
        description: None,
        price: Money::new(price, "EUR"),
        stock: StockLevels {
            on_hand: 10,
            reserved: 0,
            available: 10,
        },
        created_at: now,
        updated_at: now,
    }
}

pub(crate) fn request(product: &Product, quantity: u32, token: &str) -> PlaceOrder {
    PlaceOrder {
        customer_email: "ada@example.com".into(),
        lines: vec![PlaceOrderLine {
            product_id: product.id,
            quantity,
        }],
        payment: PaymentMethod {
            token: token.into(),
        },
    }
}

/// A catalog that knows `product`; stock calls are up to each test.
pub(crate) fn catalog_knowing(product: &Product) -> MockCatalog {
    let mut catalog = MockCatalog::new();
    let known = product.clone();
    catalog
        .expect_products()
        .returning(move |ids| Ok(ids.iter().map(|_| known.clone()).collect()));
    catalog
}

/// Mocks through which one order of `product` is confirmed: a reservation, a captured
/// charge and a commit, each exactly once; other calls are up to each test.
pub(crate) fn confirming_once(product: &Product) -> (MockCatalog, MockBilling) {
    let mut catalog = catalog_knowing(product);
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
    (catalog, billing)
}

pub(crate) fn reservation(
    order_id: Uuid,
    status: ReservationStatus,
    lines: &[StockLine],
) -> Reservation {
    Reservation {
        order_id,
        status,
        lines: lines.to_vec(),
    }
}

pub(crate) fn payment(order_id: Uuid, amount: i64, status: PaymentStatus) -> Payment {
    Payment {
        id: Uuid::new_v4(),
        order_id,
        amount: Money::new(amount, "EUR"),
        status,
        provider_ref: Some("sim_test".into()),
        invoice_id: None,
        refunded_amount: Money::new(
            if status == PaymentStatus::Refunded {
                amount
            } else {
                0
            },
            "EUR",
        ),
        created_at: chrono::Utc::now(),
    }
}

diesel::table! {
    #[sql_name = "orders"]
    stored_orders (id) {
        id -> Text,
        status -> Text,
        customer_email -> Text,
        total_amount -> BigInt,
        currency -> Text,
        rejection_reason -> Nullable<Text>,
        payment_token -> Nullable<Text>,
        saga_step -> Nullable<Text>,
        saga_deadline -> Timestamp,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        lines -> Text,
    }
}

/// Writes a pending order whose saga stopped right after recording `step`, as a process
/// that crashed there would have left it: no lease, nothing due later.
pub(crate) async fn insert_pending(db: &Database, item: &Product, step: &str) -> Uuid {
    use diesel::prelude::*;
    let id = Uuid::now_v7();
    let key = id.to_string();
    let now = chassis::db::utc_now();
    let compensating = matches!(step, "refund" | "release");
    let step = step.to_owned();
    let lines = serde_json::json!([{
        "product_id": item.id,
        "sku": item.sku,
        "name": item.name,
        "quantity": 1,
        "unit_price": item.price.amount,
        "line_total": item.price.amount,
    }])
    .to_string();
    let item = item.clone();
    db.write(move |conn| {
        diesel::insert_into(stored_orders::table)
            .values((
                stored_orders::id.eq(&key),
                stored_orders::status.eq("pending"),
                stored_orders::customer_email.eq("ada@example.com"),
                stored_orders::total_amount.eq(item.price.amount),
                stored_orders::currency.eq("EUR"),
                stored_orders::rejection_reason
                    .eq(compensating.then_some("dependency_unavailable")),
                stored_orders::payment_token.eq("tok_visa"),
                stored_orders::saga_step.eq(step.clone()),
                stored_orders::saga_deadline.eq(now + chrono::Duration::minutes(5)),
                stored_orders::created_at.eq(now),
                stored_orders::updated_at.eq(now),
                stored_orders::lines.eq(lines.clone()),
            ))
            .execute(conn)?;
        Ok::<_, orders::Error>(())
    })
    .await
    .expect("inserts");
    id
}

pub(crate) use chassis::testing::{SERVICE_TOKEN, TestServer as RemoteServer};

/// The app the composition root would build around the orders module.
pub(crate) fn app(
    service: OrdersService,
) -> actix_web::App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    chassis::testing::module_app(::orders::OrdersModule::from_service(service))
}
