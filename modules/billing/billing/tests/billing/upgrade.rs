//! Upgrades keep what was stored: an order voided before `billing-0004_charge_decisions`
//! (when voids had a table of their own) still refuses its charge, and a payment stored
//! before it still answers a repeated charge — on both backends.

use billing::{BillingModule, MIGRATIONS};
use billing_contract::{BillingError, BillingSettings, PaymentStatus};
use chassis::db::Backend;
use chassis::testing::TestDatabase;
use uuid::Uuid;

use crate::support::charge;

async fn voids_and_payments_survive_the_upgrade(backend: Backend) {
    let Some(db) = TestDatabase::new(backend) else {
        return;
    };
    let (voided, declined) = (Uuid::new_v4(), Uuid::new_v4());
    let at = "'2026-11-01 10:00:00'";
    let rows = format!(
        "INSERT INTO voided_charges (order_id, created_at) VALUES ('{voided}', {at}); \
         INSERT INTO payments (id, order_id, amount, currency, status, decline_reason, \
             refunded_amount, created_at, updated_at, customer_email) VALUES \
             ('{id}', '{declined}', 500, 'EUR', 'declined', 'card declined', 0, {at}, {at}, \
              'ada@example.com');",
        id = Uuid::new_v4()
    );
    db.store_at_version(MIGRATIONS, "billing0003", &rows);

    // Opening applies what is left: the chassis's tables and billing0004.
    let database = db.open(MIGRATIONS).await;
    let module = BillingModule::new(database, "EUR", &BillingSettings::default());
    let port = module.port();

    let refused = port.charge(charge(voided, 500, "tok_visa")).await;
    assert_eq!(
        refused,
        Err(BillingError::ChargeVoided { order_id: voided }),
        "the void stored before the upgrade"
    );
    let again = port
        .charge(charge(declined, 500, "tok_visa"))
        .await
        .expect("answers the payment stored before the upgrade");
    assert_eq!(again.status, PaymentStatus::Declined);

    // And the new table takes voids and first charges from now on.
    let (late, first) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(
        port.refund(late).await,
        Err(BillingError::PaymentNotFound(late))
    );
    assert_eq!(
        port.charge(charge(late, 500, "tok_visa")).await,
        Err(BillingError::ChargeVoided { order_id: late })
    );
    let captured = port
        .charge(charge(first, 500, "tok_visa"))
        .await
        .expect("a first charge");
    assert_eq!(captured.status, PaymentStatus::Captured);
}

#[tokio::test]
async fn voids_and_payments_stored_before_the_upgrade_survive_it_on_sqlite() {
    voids_and_payments_survive_the_upgrade(Backend::Sqlite).await;
}

#[tokio::test]
async fn voids_and_payments_stored_before_the_upgrade_survive_it_on_postgres() {
    voids_and_payments_survive_the_upgrade(Backend::Postgres).await;
}
