//! Billing's events, through its outbox, the relay and the in-process bus:
//! `billing.payment_captured`, `billing.payment_declined`, `billing.payment_refunded`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use billing_contract::{
    BillingError, PaymentCaptured, PaymentDeclined, PaymentRefunded, event_types,
};
use chassis::db::Backend;
use chassis::events::dead_letters::DeadLetters;
use chassis::events::{
    Envelope, EventBus, EventHandler, HandlerError, InProcessBus, OutboxRelay, RelaySettings,
    RetryPolicy, Subscription,
};
use chassis::module::LocalModule;
use uuid::Uuid;

use crate::support::{self, CUSTOMER, LocalBilling, charge, eur};

#[derive(Default)]
pub(crate) struct Recorder {
    seen: Mutex<Vec<Envelope>>,
}

#[async_trait]
impl EventHandler for Recorder {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        self.seen.lock().expect("lock").push(event.clone());
        Ok(())
    }
}

impl Recorder {
    pub(crate) fn types(&self) -> Vec<String> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .map(|e| e.event_type.clone())
            .collect()
    }

    /// Waits for `count` events, then a little longer to see that no more follow.
    pub(crate) async fn wait_for(&self, count: usize) -> Vec<Envelope> {
        for _ in 0..250 {
            let seen = self.seen.lock().expect("lock").clone();
            if seen.len() >= count {
                tokio::time::sleep(Duration::from_millis(150)).await;
                return self.seen.lock().expect("lock").clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("expected {count} events, saw {:?}", self.types());
    }
}

/// Records every billing event published from `billing`'s outbox, until the answer's
/// relay task is aborted.
pub(crate) async fn record(billing: &LocalBilling) -> (Arc<Recorder>, tokio::task::JoinHandle<()>) {
    let db = billing.module.database().clone();
    let bus = Arc::new(InProcessBus::new());
    let recorder = Arc::new(Recorder::default());
    bus.subscribe(Subscription {
        consumer: "recorder".into(),
        event_types: vec![
            event_types::PAYMENT_CAPTURED.into(),
            event_types::PAYMENT_DECLINED.into(),
            event_types::PAYMENT_REFUNDED.into(),
        ],
        handler: recorder.clone(),
        dead_letters: Arc::new(DeadLetters::new(db.clone())),
        retry: RetryPolicy::default(),
    })
    .await
    .expect("subscribes");
    let settings = RelaySettings {
        poll_interval: Duration::from_millis(100),
        ..RelaySettings::default()
    };
    let relay = OutboxRelay::new("billing", db, bus.clone(), settings).spawn();
    (recorder, relay)
}

async fn events_of_payments(backend: Backend) {
    let Some(billing) = support::local(backend).await else {
        return;
    };
    let (recorder, relay) = record(&billing).await;
    let port = billing.module.port();

    let paid = Uuid::new_v4();
    let mut paid_charge = charge(paid, 4999, "tok_visa");
    paid_charge.customer_email = "cy@example.com".into();
    let payment = port.charge(paid_charge).await.expect("captured");
    let seen = recorder.wait_for(1).await;
    assert_eq!(seen[0].event_type, event_types::PAYMENT_CAPTURED);
    assert_eq!(seen[0].source_module, "billing");
    assert_eq!(seen[0].key, paid.to_string(), "keyed on the order");
    let captured: PaymentCaptured = seen[0].payload_as().expect("payload");
    let invoice = billing
        .module
        .service()
        .invoice_of_order(paid)
        .await
        .expect("reads")
        .expect("issued");
    assert_eq!(
        captured,
        PaymentCaptured {
            payment_id: payment.id,
            order_id: paid,
            amount: eur(4999),
            invoice_id: invoice.id,
            invoice_number: invoice.number,
            customer_email: "cy@example.com".into(),
        }
    );

    let refused = Uuid::new_v4();
    let declined_payment = port
        .charge(charge(refused, 120, "tok_nonsense"))
        .await
        .expect("declined");
    let seen = recorder.wait_for(2).await;
    assert_eq!(seen[1].event_type, event_types::PAYMENT_DECLINED);
    assert_eq!(
        seen[1].payload_as::<PaymentDeclined>().expect("payload"),
        PaymentDeclined {
            payment_id: declined_payment.id,
            order_id: refused,
            amount: eur(120),
            reason: "unknown test token".into(),
            customer_email: CUSTOMER.into(),
        }
    );

    port.refund(paid).await.expect("refunded");
    let seen = recorder.wait_for(3).await;
    assert_eq!(seen[2].event_type, event_types::PAYMENT_REFUNDED);
    assert_eq!(seen[2].key, paid.to_string());
    assert_eq!(
        seen[2].payload_as::<PaymentRefunded>().expect("payload"),
        PaymentRefunded {
            payment_id: payment.id,
            order_id: paid,
            amount: eur(4999),
            // Kept with the payment since the charge.
            customer_email: "cy@example.com".into(),
        }
    );

    // Repeated and refused calls raise nothing.
    port.charge(charge(paid, 4999, "tok_visa"))
        .await
        .expect("answered");
    port.charge(charge(refused, 120, "tok_visa"))
        .await
        .expect("answered");
    port.refund(paid).await.expect("answered");
    assert_eq!(
        port.refund(refused).await,
        Err(BillingError::NotRefundable {
            order_id: refused,
            status: billing_contract::PaymentStatus::Declined
        })
    );
    let failing = port.charge(charge(Uuid::new_v4(), 100, "tok_error")).await;
    assert!(matches!(failing, Err(BillingError::Unavailable(_))));
    let invalid = port.charge(charge(Uuid::new_v4(), 0, "tok_visa")).await;
    assert!(matches!(invalid, Err(BillingError::InvalidRequest(_))));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(recorder.types().len(), 3, "{:?}", recorder.types());
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_publishes_its_events_through_the_outbox_on_sqlite() {
    events_of_payments(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_publishes_its_events_through_the_outbox_on_postgres() {
    events_of_payments(Backend::Postgres).await;
}
