//! A refund asked while the charge never went through: the saga's compensation past its
//! deadline must be able to finish.

use billing_contract::{BillingError, PaymentStatus};
use chassis::db::Backend;
use uuid::Uuid;

use crate::support::{self, charge};

async fn refund_of_a_failed_charge_abandons_it(backend: Backend) {
    let Some(billing) = support::local(backend).await else {
        return;
    };
    let port = billing.module.port();
    let order = Uuid::new_v4();
    let failed = port.charge(charge(order, 700, "tok_error")).await;
    assert!(
        matches!(failed, Err(BillingError::Unavailable(_))),
        "{failed:?}"
    );

    // The payer gives up: nothing was captured, and nothing may be any more.
    let refund = port.refund(order).await;
    assert_eq!(
        refund,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_of_a_charge_that_never_went_through_declines_it_on_sqlite() {
    refund_of_a_failed_charge_abandons_it(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_of_a_charge_that_never_went_through_declines_it_on_postgres() {
    refund_of_a_failed_charge_abandons_it(Backend::Postgres).await;
}
