//! Notifications through the whole monolith: an order placed → one e-mail to its customer
//! and one signed call per matching webhook, visible in the delivery log.

use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::{self, ADMIN_TOKEN};

const SECRET: &str = "whsec-e2e";

#[derive(Default)]
struct Received {
    calls: Mutex<Vec<(String, Vec<u8>)>>,
}

async fn receive(
    request: HttpRequest,
    body: web::Bytes,
    received: web::Data<Received>,
) -> HttpResponse {
    let signature = request
        .headers()
        .get("X-Bazaar-Signature")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    received
        .calls
        .lock()
        .expect("lock")
        .push((signature, body.to_vec()));
    HttpResponse::Ok().finish()
}

fn expected_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_confirmed_order_sends_one_e_mail_and_one_signed_webhook_call() {
    let base = confirmed_order_sends_one_e_mail_and_one_signed_webhook_call(|_config| {}).await;
    let ready: Value = support::http()
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["bus"], json!({"kind": "in_process", "status": "ok"}));
}

/// The same flow with events through NATS JetStream (a `nats-server` of the test's own).
#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_confirmed_order_sends_one_e_mail_and_one_signed_webhook_call_through_nats() {
    let Some(mut nats) = chassis::testing::NatsServer::start() else {
        return;
    };
    let base = confirmed_order_sends_one_e_mail_and_one_signed_webhook_call(|config| {
        config.bus.kind = chassis::config::BusKind::Nats;
        config.bus.url = Some(chassis::secret::SecretUrl::new(nats.url()));
    })
    .await;
    let http = support::http();
    let ready = http
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .expect("answers");
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.expect("json");
    assert_eq!(
        ready["bus"],
        json!({"kind": "nats", "status": "ok"}),
        "{ready}"
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("answers")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("bazaar_bus_published_total"), "{metrics}");
    assert!(metrics.contains("bazaar_bus_acked_total"), "{metrics}");

    nats.kill();
    let ready = http
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .expect("answers");
    assert_eq!(ready.status(), 503, "the broker is gone");
    let ready: Value = ready.json().await.expect("json");
    assert_eq!(ready["bus"]["status"], "error", "{ready}");
}

/// Answers the server's base URL.
async fn confirmed_order_sends_one_e_mail_and_one_signed_webhook_call(
    configure: impl FnOnce(&mut bazaar::Config),
) -> String {
    let received = web::Data::new(Received::default());
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
    let hook_url = format!("http://{}/hook", listener.local_addr().expect("address"));
    let data = received.clone();
    let receiver = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/hook", web::post().to(receive))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .expect("listens")
    .run();
    let receiver_handle = receiver.handle();
    tokio::spawn(receiver);

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = support::config(dir.path());
    config.notifications.poll_interval = Duration::from_millis(100);
    // The receiver listens on 127.0.0.1.
    config.notifications.allow_private_webhooks = true;
    configure(&mut config);
    let base = support::spawn(config).await;
    let http = support::http();
    let hook = http
        .post(format!("{base}/notifications/webhooks"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"url": hook_url, "events": ["orders.order_confirmed"], "secret": SECRET}))
        .send()
        .await
        .expect("answers");
    assert_eq!(hook.status(), 201);
    let product: Value = http
        .post(format!("{base}/catalog/products"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"sku": "NOTIFY", "name": "Kettle", "price": {"amount": 3200, "currency": "EUR"}, "stock": 50}))
        .send()
        .await
        .expect("creates")
        .json()
        .await
        .expect("json");
    let order: Value = http
        .post(format!("{base}/orders"))
        .json(&json!({"customer_email": "grace@example.com", "lines": [{"product_id": product["id"], "quantity": 1}], "payment": {"token": "tok_visa"}}))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(order["status"], "confirmed");
    let order_id = order["id"].as_str().expect("id").to_owned();

    let deadline = Instant::now() + Duration::from_secs(20);
    let deliveries = loop {
        let page: Value = http
            .get(format!("{base}/notifications?order_id={order_id}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("lists")
            .json()
            .await
            .expect("json");
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= 2 && items.iter().all(|delivery| delivery["status"] == "sent") {
            break items;
        }
        assert!(Instant::now() < deadline, "deliveries not sent: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // In the embedded default e-mails go through the `file` channel.
    let emails: Vec<&Value> = deliveries
        .iter()
        .filter(|d| d["channel"] != "webhook")
        .collect();
    assert_eq!(emails.len(), 1, "one e-mail: {deliveries:?}");
    assert_eq!(emails[0]["recipient"], "grace@example.com");
    let files: Vec<_> = std::fs::read_dir(dir.path().join("outbox-mail"))
        .expect("the file channel's folder")
        .filter_map(Result::ok)
        .collect();
    assert_eq!(files.len(), 1, "one .eml written");
    let message = std::fs::read_to_string(files[0].path()).expect("reads");
    assert!(
        message.contains("grace@example.com") && message.contains(&order_id),
        "{message}"
    );

    let calls = received.calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 1, "one webhook call");
    let (signature, body) = &calls[0];
    assert_eq!(
        signature,
        &expected_signature(body),
        "signed with the subscription's secret"
    );
    let envelope: Value = serde_json::from_slice(body).expect("the envelope JSON");
    assert_eq!(envelope["type"], "orders.order_confirmed");
    assert_eq!(envelope["payload"]["order"]["id"], order["id"]);
    receiver_handle.stop(false).await;
    base
}

#[tokio::test]
async fn a_local_consumer_of_a_remote_modules_events_is_a_start_up_error_naming_what_to_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = support::config(dir.path());
    config.modules.catalog.mode = Some(chassis::config::ModuleMode::Remote);
    config.modules.catalog.url = Some("http://127.0.0.1:9/".parse().expect("url"));
    let error = bazaar::compose(&config)
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("modules.catalog.mode") && error.contains("modules.notifications.mode"),
        "{error}"
    );
}

#[tokio::test]
async fn a_local_publisher_of_what_a_remote_consumer_needs_is_a_start_up_error_naming_the_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = support::config(dir.path());
    config.modules.notifications.mode = Some(chassis::config::ModuleMode::Remote);
    config.modules.notifications.url = Some("http://127.0.0.1:9/".parse().expect("url"));
    let error = bazaar::compose(&config)
        .await
        .expect_err("refused")
        .to_string();
    for needed in [
        "orders.order_confirmed",
        "billing.payment_refunded",
        "catalog.stock_low",
        "modules.notifications.mode",
    ] {
        assert!(error.contains(needed), "{needed} missing from: {error}");
    }
}

/// The same placement starts when a broker carries the events to the other process.
#[cfg(feature = "nats")]
#[tokio::test]
async fn a_local_publisher_of_what_a_remote_consumer_needs_starts_when_a_broker_carries_them() {
    let Some(nats) = chassis::testing::NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = support::config(dir.path());
    config.modules.notifications.mode = Some(chassis::config::ModuleMode::Remote);
    config.modules.notifications.url = Some("http://127.0.0.1:9/".parse().expect("url"));
    config.bus.kind = chassis::config::BusKind::Nats;
    config.bus.url = Some(chassis::secret::SecretUrl::new(nats.url()));
    let composition = bazaar::compose(&config).await.expect("composes");
    assert_eq!(composition.bus.kind(), "nats");
}

#[tokio::test]
async fn a_module_turned_off_is_neither_hosted_nor_reached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = support::config(dir.path());
    config.modules.notifications.mode = Some(chassis::config::ModuleMode::Off);
    let composition = bazaar::compose(&config).await.expect("composes");
    assert!(
        composition
            .local
            .iter()
            .all(|module| module.name() != "notifications"),
        "not hosted"
    );
    let entry = composition
        .entries
        .iter()
        .find(|entry| entry.name == "notifications")
        .expect("listed");
    assert_eq!(entry.placement, chassis::config::Placement::Absent);
    assert!(!dir.path().join("notifications.db").exists(), "no database");
}
