//! Charges under contention and after a crash: invoice numbers stay gap-free, and one
//! order is captured once however many calls race for it — on both backends. On
//! PostgreSQL each test spreads its calls round-robin over 4 instances of billing, each
//! with its own `Database` on the one test database and all with one gateway, as 4
//! replicas of the module would (one handle's writes may be run one after the other); on
//! SQLite, whose file belongs to one process, they all go through one instance.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use billing_contract::{BillingError, Payment, PaymentStatus, event_types};
use chassis::db::Backend;
use chassis::module::LocalModule as _;
use chassis::page::PageRequest;
use chrono::Datelike;
use futures::future::join_all;
use uuid::Uuid;

use crate::events::record;
use crate::support::{self, LocalBilling, Timing, charge, racing_instances};

fn all() -> PageRequest {
    PageRequest {
        limit: 200,
        after: None,
    }
}

async fn payments_of(billing: &LocalBilling, order: Uuid) -> Vec<Payment> {
    billing
        .module
        .service()
        .payments(Some(order), all())
        .await
        .expect("lists")
        .items
}

async fn twenty_orders_get_consecutive_invoice_numbers(backend: Backend) {
    let Some(billing) = support::local_instances(backend, racing_instances(backend)).await else {
        return;
    };
    let orders: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    let attempts = orders.iter().enumerate().map(|(i, &order)| {
        let port = billing.instance(i).port();
        tokio::spawn(async move { port.charge(charge(order, 1500, "tok_visa")).await })
    });
    for joined in join_all(attempts).await {
        let payment = joined.expect("task ran").expect("captured");
        assert_eq!(payment.status, PaymentStatus::Captured);
    }
    let service = billing.module.service();
    let mut numbers = Vec::new();
    let mut invoice_ids = HashSet::new();
    for &order in &orders {
        let invoice = service
            .invoice_of_order(order)
            .await
            .expect("reads")
            .expect("issued");
        assert_eq!(invoice.order_id, order);
        invoice_ids.insert(invoice.id);
        numbers.push(invoice.number);
    }
    assert_eq!(invoice_ids.len(), 20, "one invoice per payment");
    let year = chrono::Utc::now().year();
    let mut sequence: Vec<u32> = numbers
        .iter()
        .map(|number| {
            let digits = number
                .strip_prefix(&format!("INV-{year}-"))
                .unwrap_or_else(|| panic!("{number} is of {year}"));
            assert_eq!(digits.len(), 6, "{number}");
            digits.parse().expect("a number")
        })
        .collect();
    sequence.sort_unstable();
    assert_eq!(sequence, (1..=20).collect::<Vec<u32>>(), "{numbers:?}");
}

async fn ten_calls_for_one_order_capture_once(backend: Backend) {
    let Some(billing) = support::local_instances(backend, racing_instances(backend)).await else {
        return;
    };
    let (recorder, relay) = record(&billing).await;
    let port = billing.module.port();
    let order = Uuid::new_v4();
    // `tok_slow` keeps the first call at the gateway while the others arrive.
    let attempts = (0..10).map(|i| {
        let port = billing.instance(i).port();
        tokio::spawn(async move { port.charge(charge(order, 990, "tok_slow")).await })
    });
    let mut answered = Vec::new();
    for joined in join_all(attempts).await {
        match joined.expect("task ran") {
            Ok(payment) => answered.push(payment),
            Err(BillingError::Unavailable(reason)) => {
                assert!(reason.contains("in progress"), "{reason}");
            }
            Err(other) => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(
        !answered.is_empty(),
        "the call that went to the gateway answers"
    );
    let first = answered[0].clone();
    assert_eq!(first.status, PaymentStatus::Captured);
    assert!(answered.iter().all(|payment| *payment == first));
    assert_eq!(
        billing.gateway.charges_of(order),
        1,
        "one call to the gateway"
    );
    assert_eq!(payments_of(&billing, order).await, vec![first.clone()]);
    let invoice = billing
        .module
        .service()
        .invoice_of_order(order)
        .await
        .expect("reads");
    assert!(invoice.is_some_and(|invoice| invoice.amount == first.amount));
    let again = port
        .charge(charge(order, 990, "tok_slow"))
        .await
        .expect("answered");
    assert_eq!(again, first);
    let seen = recorder.wait_for(1).await;
    assert_eq!(
        recorder.types(),
        vec![event_types::PAYMENT_CAPTURED],
        "captured once: {seen:?}"
    );
    relay.abort();
}

async fn ten_refunds_of_one_order_refund_once(backend: Backend) {
    let Some(billing) = support::local_instances(backend, racing_instances(backend)).await else {
        return;
    };
    let (recorder, relay) = record(&billing).await;
    let port = billing.module.port();
    let order = Uuid::new_v4();
    let captured = port
        .charge(charge(order, 640, "tok_visa"))
        .await
        .expect("captured");
    let attempts = (0..10).map(|i| {
        let port = billing.instance(i).port();
        tokio::spawn(async move { port.refund(order).await })
    });
    let answers: Vec<Payment> = join_all(attempts)
        .await
        .into_iter()
        .map(|joined| joined.expect("task ran").expect("refunded"))
        .collect();
    assert!(answers.iter().all(|payment| *payment == answers[0]));
    assert_eq!(answers[0].status, PaymentStatus::Refunded);
    assert_eq!(
        answers[0].refunded_amount, captured.amount,
        "refunded in full, once"
    );
    assert_eq!(payments_of(&billing, order).await, vec![answers[0].clone()]);
    recorder.wait_for(2).await;
    assert_eq!(
        recorder.types(),
        vec![event_types::PAYMENT_CAPTURED, event_types::PAYMENT_REFUNDED],
        "refunded once"
    );
    relay.abort();
}

/// The gateway call of the first attempt "crashes" (its task panics, as its process
/// would die): the payment stays pending. Until the attempt is `gateway_timeout` old,
/// other calls answer "in progress"; then one takes the charge over.
async fn a_crashed_charge_is_taken_over(backend: Backend) {
    // Long enough for the "meanwhile" call to come before the attempt is stale, even when
    // the crash's panic prints a backtrace (RUST_BACKTRACE=1 symbolizes it, which took
    // over 400 ms on a loaded machine).
    let timing = Timing {
        slow_delay: Duration::from_millis(50),
        gateway_timeout: Duration::from_secs(2),
    };
    let Some(billing) =
        support::local_instances_with(backend, timing, racing_instances(backend)).await
    else {
        return;
    };
    // The `i`-th call goes to instance `i`: on PostgreSQL the other calls come from other
    // replicas than the one that crashed.
    let port = |i: usize| billing.instance(i).port();
    let order = Uuid::new_v4();
    billing.gateway.crash_next_charge();
    let started = Instant::now();
    let crashed = port(0).charge(charge(order, 1200, "tok_visa")).await;
    assert!(
        matches!(crashed, Err(BillingError::Internal(_))),
        "{crashed:?}"
    );
    let meanwhile = port(1).charge(charge(order, 1200, "tok_visa")).await;
    assert_eq!(
        meanwhile,
        Err(BillingError::Unavailable(
            "a charge for this order is in progress".into()
        ))
    );
    assert!(
        payments_of(&billing, order).await.is_empty(),
        "pending is never shown"
    );
    assert_eq!(billing.gateway.charges_of(order), 1);

    let stale = timing.gateway_timeout + Duration::from_millis(50);
    tokio::time::sleep(stale.saturating_sub(started.elapsed())).await;
    let taken_over = port(2)
        .charge(charge(order, 1200, "tok_visa"))
        .await
        .expect("captured by the next call");
    assert_eq!(taken_over.status, PaymentStatus::Captured);
    assert_eq!(
        billing.gateway.charges_of(order),
        2,
        "the gateway was asked again"
    );
    assert_eq!(payments_of(&billing, order).await, vec![taken_over.clone()]);
    assert!(
        billing
            .module
            .service()
            .invoice_of_order(order)
            .await
            .expect("reads")
            .is_some()
    );
    let conflict = port(3).charge(charge(order, 1300, "tok_visa")).await;
    assert_eq!(
        conflict,
        Err(BillingError::ChargeConflict { order_id: order })
    );
}

/// The invoice number of `order`'s capture, as a number.
async fn invoice_number_of(billing: &LocalBilling, order: Uuid) -> u32 {
    let invoice = billing
        .module
        .service()
        .invoice_of_order(order)
        .await
        .expect("reads")
        .expect("issued");
    let year = chrono::Utc::now().year();
    invoice
        .number
        .strip_prefix(&format!("INV-{year}-"))
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("{} is a number of {year}", invoice.number))
}

/// Captures settled in one transaction take the year's counter once: the first takes its
/// number from the counter (locking its row until the commit), the next number on from it,
/// and the counter's advance by their count goes in at the batch's end. The numbers stay
/// gap-free, and the capture after them numbers on from the last.
async fn captures_settled_together_take_the_invoice_counter_once(backend: Backend) {
    // `tok_slow` answers after 600 ms: time for the charges to begin, and for the writer
    // to be held when they settle.
    let timing = Timing {
        slow_delay: Duration::from_millis(600),
        gateway_timeout: Duration::from_secs(5),
    };
    let Some(billing) = support::local_with(backend, timing).await else {
        return;
    };
    let port = billing.module.port();
    let first = Uuid::new_v4();
    port.charge(charge(first, 1500, "tok_visa"))
        .await
        .expect("captured: the year's counter is there");
    let orders: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    let charges = orders.iter().map(|&order| {
        let port = port.clone();
        tokio::spawn(async move { port.charge(charge(order, 1500, "tok_slow")).await })
    });
    let charges: Vec<_> = charges.collect();
    // The six have begun (their payments are pending) and wait for the gateway: the
    // writer is held from now until after they answer, so their settlements queue behind
    // the holder and commit together.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let db = billing.module.database().clone();
    let before = db.work_counts();
    let holder = tokio::spawn({
        let db = db.clone();
        async move {
            db.write(|_conn| {
                std::thread::sleep(Duration::from_millis(600));
                Ok::<_, chassis::db::DbError>(())
            })
            .await
        }
    });
    for joined in join_all(charges).await {
        let payment = joined.expect("task ran").expect("captured");
        assert_eq!(payment.status, PaymentStatus::Captured);
    }
    holder.await.expect("task ran").expect("the holder commits");
    let after = db.work_counts();
    assert_eq!(
        after.writes - before.writes,
        7,
        "the holder and six settlements"
    );
    assert_eq!(
        after.transactions - before.transactions,
        2,
        "the holder's transaction, and one for the six settlements"
    );
    // The holder writes nothing. The six: one `UPDATE` of the counter (the first's), and
    // at the batch's end the counter's advance by five; the settlements of the payments
    // (on PostgreSQL one statement, on SQLite one a row); the invoices' rows and the six
    // events to the outbox (on PostgreSQL parts of the batch's last update statement, on
    // SQLite one a row and one); `BEGIN` and `COMMIT` of both transactions (on PostgreSQL
    // the holder's commit begins the next in one round trip).
    let (rows_statements, begin_and_commit) = match backend {
        Backend::Postgres => (1, 3),
        Backend::Sqlite => (13, 4),
    };
    assert_eq!(
        after.statements - before.statements,
        1 + 1 + rows_statements + begin_and_commit,
        "statements of the holder and the six settlements"
    );
    let mut numbers = Vec::new();
    for &order in &orders {
        numbers.push(invoice_number_of(&billing, order).await);
    }
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (2..=7).collect::<Vec<u32>>(),
        "gap-free after the first"
    );
    let next = Uuid::new_v4();
    port.charge(charge(next, 1500, "tok_visa"))
        .await
        .expect("captured");
    assert_eq!(
        invoice_number_of(&billing, next).await,
        8,
        "the counter stands at the last number given"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn captures_settled_together_take_the_invoice_counter_once_on_sqlite() {
    captures_settled_together_take_the_invoice_counter_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn captures_settled_together_take_the_invoice_counter_once_on_postgres() {
    captures_settled_together_take_the_invoice_counter_once(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_charges_get_twenty_consecutive_invoice_numbers_on_sqlite() {
    twenty_orders_get_consecutive_invoice_numbers(Backend::Sqlite).await;
}

/// The calls spread over 4 instances, as 4 replicas of billing would make them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_charges_get_twenty_consecutive_invoice_numbers_on_postgres() {
    twenty_orders_get_consecutive_invoice_numbers(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_charges_of_one_order_capture_once_on_sqlite() {
    ten_calls_for_one_order_capture_once(Backend::Sqlite).await;
}

/// The calls spread over 4 instances, as 4 replicas of billing would make them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_charges_of_one_order_capture_once_on_postgres() {
    ten_calls_for_one_order_capture_once(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_refunds_of_one_order_refund_once_on_sqlite() {
    ten_refunds_of_one_order_refund_once(Backend::Sqlite).await;
}

/// The calls spread over 4 instances, as 4 replicas of billing would make them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_refunds_of_one_order_refund_once_on_postgres() {
    ten_refunds_of_one_order_refund_once(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_charge_is_taken_over_after_the_gateway_timeout_on_sqlite() {
    a_crashed_charge_is_taken_over(Backend::Sqlite).await;
}

/// The calls spread over 4 instances, as 4 replicas of billing would make them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_charge_is_taken_over_after_the_gateway_timeout_on_postgres() {
    a_crashed_charge_is_taken_over(Backend::Postgres).await;
}

/// A refund of an order billing has not seen yet, racing that order's first charge: either
/// the refund comes first, voids the order and the charge is refused, or the charge comes
/// first and the refund finds its payment. Never money taken after a refund answered that
/// there was nothing to refund.
async fn a_refund_racing_the_first_charge(backend: Backend) {
    let Some(billing) = support::local_instances(backend, racing_instances(backend)).await else {
        return;
    };
    let (mut voided, mut charged) = (0, 0);
    for round in 0..30 {
        let order = Uuid::new_v4();
        let charging = {
            let port = billing.instance(2 * round).port();
            tokio::spawn(async move { port.charge(charge(order, 500, "tok_visa")).await })
        };
        let refunding = {
            let port = billing.instance(2 * round + 1).port();
            tokio::spawn(async move { port.refund(order).await })
        };
        let charged_with = charging.await.expect("task ran");
        let refunded_with = refunding.await.expect("task ran");
        match (&charged_with, &refunded_with) {
            (Err(BillingError::ChargeVoided { .. }), Err(BillingError::PaymentNotFound(_))) => {
                assert_eq!(billing.gateway.charges_of(order), 0);
                voided += 1;
            }
            (Ok(payment), _) if payment.status == PaymentStatus::Captured => {
                assert!(
                    !matches!(refunded_with, Err(BillingError::PaymentNotFound(_))),
                    "money taken after the refund found nothing: {refunded_with:?}"
                );
                charged += 1;
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(voided + charged, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_racing_the_first_charge_never_lets_money_through_on_sqlite() {
    a_refund_racing_the_first_charge(Backend::Sqlite).await;
}

/// The calls spread over 4 instances, as 4 replicas of billing would make them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_racing_the_first_charge_never_lets_money_through_on_postgres() {
    a_refund_racing_the_first_charge(Backend::Postgres).await;
}
