//! The catalog's events, through its outbox, the relay and the in-process bus:
//! `catalog.product_created`, `catalog.price_changed`, `catalog.stock_low`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use catalog::{ProductPatch, StockUpdate};
use catalog_contract::{Money, PriceChanged, ProductCreated, StockLine, StockLow, event_types};
use chassis::db::Backend;
use chassis::events::dead_letters::DeadLetters;
use chassis::events::{
    Envelope, EventBus, EventHandler, HandlerError, InProcessBus, OutboxRelay, RelaySettings,
    RetryPolicy, Subscription,
};
use chassis::module::LocalModule;
use uuid::Uuid;

use crate::support::{self, product};

#[derive(Default)]
struct Recorder {
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
    fn types(&self) -> Vec<String> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .map(|e| e.event_type.clone())
            .collect()
    }

    async fn wait_for(&self, count: usize) -> Vec<Envelope> {
        for _ in 0..200 {
            let seen = self.seen.lock().expect("lock").clone();
            if seen.len() >= count {
                // Nothing more should follow.
                tokio::time::sleep(Duration::from_millis(150)).await;
                return self.seen.lock().expect("lock").clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("expected {count} events, saw {:?}", self.types());
    }
}

async fn events_of_a_product(backend: Backend) {
    let Some(catalog) = support::local(backend).await else {
        return;
    };
    let db = catalog.module.database().clone();
    let bus = Arc::new(InProcessBus::new());
    let recorder = Arc::new(Recorder::default());
    bus.subscribe(Subscription {
        consumer: "recorder".into(),
        event_types: vec![
            event_types::PRODUCT_CREATED.into(),
            event_types::PRICE_CHANGED.into(),
            event_types::STOCK_LOW.into(),
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
    let relay = OutboxRelay::new("catalog", db, bus.clone(), settings).spawn();
    let service = catalog.module.service();
    let port = catalog.module.port();

    let created = product(&catalog.module, "Kettle", 10).await;
    let seen = recorder.wait_for(1).await;
    assert_eq!(seen[0].event_type, event_types::PRODUCT_CREATED);
    assert_eq!(seen[0].source_module, "catalog");
    assert_eq!(seen[0].key, created.id.to_string());
    assert_eq!(
        seen[0]
            .payload_as::<ProductCreated>()
            .expect("payload")
            .product,
        created
    );

    let renamed = ProductPatch {
        name: Some("Steel kettle".into()),
        ..ProductPatch::default()
    };
    service
        .update_product(created.id, renamed)
        .await
        .expect("renames");
    let repriced = ProductPatch {
        price: Some(Money {
            amount: 2500,
            currency: "EUR".into(),
        }),
        ..ProductPatch::default()
    };
    service
        .update_product(created.id, repriced)
        .await
        .expect("reprices");
    let seen = recorder.wait_for(2).await;
    assert_eq!(seen.len(), 2, "a rename raises nothing");
    let change: PriceChanged = seen[1].payload_as().expect("payload");
    assert_eq!(
        (change.old_price.amount, change.new_price.amount),
        (1000, 2500)
    );

    let line = |quantity| {
        [StockLine {
            product_id: created.id,
            quantity,
        }]
    };
    port.reserve(Uuid::new_v4(), &line(5))
        .await
        .expect("reserves"); // 10 -> 5: not below 5
    port.reserve(Uuid::new_v4(), &line(1))
        .await
        .expect("reserves"); // 5 -> 4: crosses
    port.reserve(Uuid::new_v4(), &line(1))
        .await
        .expect("reserves"); // 4 -> 3: already low
    let seen = recorder.wait_for(3).await;
    assert_eq!(
        seen.len(),
        3,
        "stock_low once per crossing: {:?}",
        recorder.types()
    );
    let low: StockLow = seen[2].payload_as().expect("payload");
    assert_eq!(
        (low.available, low.threshold, low.sku.as_str()),
        (4, 5, created.sku.as_str())
    );

    service
        .set_stock(created.id, StockUpdate { on_hand: 20 })
        .await
        .expect("restocks"); // 13 available
    service
        .set_stock(created.id, StockUpdate { on_hand: 9 })
        .await
        .expect("shrinks"); // 2 available
    let seen = recorder.wait_for(4).await;
    assert_eq!(seen.len(), 4);
    assert_eq!(
        seen[3].payload_as::<StockLow>().expect("payload").available,
        2
    );

    // A refused change raises nothing.
    let duplicate = service
        .create_product(catalog::NewProduct {
            sku: created.sku.clone(),
            name: "Twin".into(),
            description: None,
            price: Money {
                amount: 1,
                currency: "EUR".into(),
            },
            stock: None,
        })
        .await;
    assert!(duplicate.is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(recorder.types().len(), 4);
    assert!(seen.iter().all(|event| event.key == created.id.to_string()));
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_publishes_its_events_through_the_outbox_on_sqlite() {
    events_of_a_product(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_publishes_its_events_through_the_outbox_on_postgres() {
    events_of_a_product(Backend::Postgres).await;
}
