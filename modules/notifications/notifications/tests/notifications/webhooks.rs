//! Webhooks against a local actix server on 127.0.0.1: the signature, retries on 500,
//! giving up, a slow endpoint that delays nobody else, endpoints that never answer and
//! still delay no e-mail, an attempt that outlived its lease, and a target that is no
//! longer allowed.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use chassis::db::{Backend, DbError};
use chassis::module::LocalModule;
use diesel::RunQueryDsl;
use hmac::{Hmac, Mac};
use notifications_contract::{
    Channel, CreateWebhook, Delivery, DeliveryStatus, NotificationsSettings,
};
use orders_contract::OrderStatus;
use sha2::Sha256;

use crate::support::{self, Local, all, order, order_event, quick_settings};

/// What the receiver got: the signature header and the body.
#[derive(Debug, Clone)]
struct Call {
    signature: Option<String>,
    body: Vec<u8>,
}

#[derive(Default)]
struct Receiver {
    calls: Mutex<Vec<Call>>,
    /// The statuses to answer, in turn; 200 once it is empty.
    script: Mutex<VecDeque<u16>>,
    delay: Mutex<Duration>,
    /// When set, the first call waits for this before it answers.
    hold_first: tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

async fn receive(
    state: web::Data<Receiver>,
    request: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let signature = request
        .headers()
        .get("X-Bazaar-Signature")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    state.calls.lock().expect("lock").push(Call {
        signature,
        body: body.to_vec(),
    });
    let held = state.hold_first.lock().await.take();
    if let Some(release) = held {
        let _released_or_test_over = release.await;
    }
    let delay = *state.delay.lock().expect("lock");
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = state
        .script
        .lock()
        .expect("lock")
        .pop_front()
        .unwrap_or(200);
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("status")).finish()
}

/// A receiver on a free port: its URL and state.
async fn receiver(script: &[u16], delay: Duration) -> (String, web::Data<Receiver>) {
    let state = web::Data::new(Receiver::default());
    state
        .script
        .lock()
        .expect("lock")
        .extend(script.iter().copied());
    *state.delay.lock().expect("lock") = delay;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let shared = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(shared.clone())
            .route("/hook", web::post().to(receive))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .expect("listen")
    .run();
    tokio::spawn(server);
    (format!("http://{address}/hook"), state)
}

fn expected_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn subscription(url: &str, secret: &str) -> CreateWebhook {
    CreateWebhook {
        url: url.into(),
        events: vec!["orders.order_confirmed".into()],
        secret: secret.into(),
    }
}

async fn a_webhook_gets_the_signed_envelope_once(backend: Backend) {
    let Some(local) = support::local(backend, quick_settings()).await else {
        return;
    };
    let (url, state) = receiver(&[], Duration::ZERO).await;
    let service = local.module.service();
    let webhook = service
        .create_webhook(subscription(&url, "s3cret"))
        .await
        .expect("created");
    let workers = local.module.spawn_workers();
    let order = order(OrderStatus::Confirmed, "ada@example.com");
    let event = order_event(&order);
    service.handle(&event).await.expect("handled");
    service.handle(&event).await.expect("handled");
    // A rejected order is not among the webhook's events.
    let other = support::order(OrderStatus::Rejected, "bob@example.com");
    service.handle(&order_event(&other)).await.expect("handled");

    let log = local.wait_for(order.id, all(2, DeliveryStatus::Sent)).await;
    let hook = log
        .iter()
        .find(|d| d.channel == Channel::Webhook)
        .expect("a webhook delivery");
    assert_eq!(hook.recipient, url);
    assert_eq!(hook.template, "orders.order_confirmed");
    let calls = state.calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert_eq!(
        call.signature.as_deref(),
        Some(expected_signature("s3cret", &call.body).as_str())
    );
    let body: serde_json::Value = serde_json::from_slice(&call.body).expect("json");
    assert_eq!(body["id"], event.id.to_string());
    assert_eq!(body["type"], "orders.order_confirmed");
    assert_eq!(body["payload"]["order"]["id"], order.id.to_string());
    let other_log = local.wait_for(other.id, all(1, DeliveryStatus::Sent)).await;
    assert_eq!(other_log[0].channel, Channel::File);
    assert!(webhook.events == vec!["orders.order_confirmed".to_owned()]);
    for worker in workers {
        worker.abort();
    }
}

#[tokio::test]
async fn a_webhook_gets_the_signed_envelope_once_sqlite() {
    a_webhook_gets_the_signed_envelope_once(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_webhook_gets_the_signed_envelope_once_postgres() {
    a_webhook_gets_the_signed_envelope_once(Backend::Postgres).await;
}

/// The events recorded in one batch read the subscriptions once, and a subscription
/// deleted in the batch is gone for the events after it: of two confirmed orders recorded
/// in one batch with the webhook's delete between them, the first's event is queued for
/// the webhook and the second's is not.
async fn a_webhook_deleted_in_a_batch_is_gone_for_the_events_after_it(backend: Backend) {
    let Some(local) = support::local(backend, quick_settings()).await else {
        return;
    };
    let (url, _state) = receiver(&[], Duration::ZERO).await;
    let service = local.module.service();
    let webhook = service
        .create_webhook(subscription(&url, "s3cret"))
        .await
        .expect("created");
    // The writer is held while the three queue behind it, in this order (`join!` polls
    // them in turn, and each reaches the writer at its first poll): one batch.
    let db = local.module.database().clone();
    let holder = tokio::spawn(async move {
        db.write(|_conn| {
            std::thread::sleep(Duration::from_millis(300));
            Ok::<_, DbError>(())
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = order(OrderStatus::Confirmed, "ada@example.com");
    let after = order(OrderStatus::Confirmed, "bob@example.com");
    let (event_before, event_after) = (order_event(&before), order_event(&after));
    let (recorded_before, deleted, recorded_after) = tokio::join!(
        service.handle(&event_before),
        service.delete_webhook(webhook.id),
        service.handle(&event_after),
    );
    holder.await.expect("task ran").expect("the holder commits");
    recorded_before.expect("handled");
    deleted.expect("deleted");
    recorded_after.expect("handled");
    let channels = |deliveries: Vec<Delivery>| {
        let mut channels: Vec<Channel> = deliveries.iter().map(|d| d.channel).collect();
        channels.sort_by_key(|channel| channel.as_str());
        channels
    };
    let before_deliveries = local.wait_for(before.id, |d| d.len() == 2).await;
    assert_eq!(
        channels(before_deliveries),
        [Channel::File, Channel::Webhook],
        "the webhook was there for the first"
    );
    let after_deliveries = local.wait_for(after.id, |d| !d.is_empty()).await;
    assert_eq!(
        channels(after_deliveries),
        [Channel::File],
        "the webhook was gone for the second"
    );
}

#[tokio::test]
async fn a_webhook_deleted_in_a_batch_is_gone_for_the_events_after_it_sqlite() {
    a_webhook_deleted_in_a_batch_is_gone_for_the_events_after_it(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_webhook_deleted_in_a_batch_is_gone_for_the_events_after_it_postgres() {
    a_webhook_deleted_in_a_batch_is_gone_for_the_events_after_it(Backend::Postgres).await;
}

async fn a_500_is_retried_until_it_succeeds(backend: Backend) {
    let Some(local) = support::local(backend, quick_settings()).await else {
        return;
    };
    let (url, state) = receiver(&[500, 503], Duration::ZERO).await;
    let service = local.module.service();
    service
        .create_webhook(subscription(&url, "k"))
        .await
        .expect("created");
    let workers = local.module.spawn_workers();
    let order = order(OrderStatus::Confirmed, "ada@example.com");
    service.handle(&order_event(&order)).await.expect("handled");
    let log = local.wait_for(order.id, all(2, DeliveryStatus::Sent)).await;
    let hook = log
        .iter()
        .find(|d| d.channel == Channel::Webhook)
        .expect("hook");
    assert_eq!(hook.attempts, 3, "{hook:?}");
    assert_eq!(state.calls.lock().expect("lock").len(), 3);
    for worker in workers {
        worker.abort();
    }
}

#[tokio::test]
async fn a_500_is_retried_until_it_succeeds_sqlite() {
    a_500_is_retried_until_it_succeeds(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_500_is_retried_until_it_succeeds_postgres() {
    a_500_is_retried_until_it_succeeds(Backend::Postgres).await;
}

#[tokio::test]
async fn a_webhook_that_keeps_failing_is_given_up_after_max_attempts() {
    let local = support::local(Backend::Sqlite, quick_settings())
        .await
        .expect("sqlite");
    let (url, state) = receiver(&[500; 10], Duration::ZERO).await;
    let service = local.module.service();
    service
        .create_webhook(subscription(&url, "k"))
        .await
        .expect("created");
    let workers = local.module.spawn_workers();
    let order = order(OrderStatus::Confirmed, "ada@example.com");
    service.handle(&order_event(&order)).await.expect("handled");
    let log = local
        .wait_for(order.id, |log| {
            log.len() == 2
                && log
                    .iter()
                    .any(|d| d.channel == Channel::Webhook && d.status == DeliveryStatus::Failed)
        })
        .await;
    let hook = log
        .iter()
        .find(|d| d.channel == Channel::Webhook)
        .expect("hook");
    assert_eq!(hook.attempts, 3);
    assert!(
        hook.last_error
            .as_deref()
            .is_some_and(|e| e.contains("HTTP 500")),
        "{hook:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        state.calls.lock().expect("lock").len(),
        3,
        "no call after giving up"
    );
    for worker in workers {
        worker.abort();
    }
}

#[tokio::test]
async fn a_slow_webhook_delays_no_other_delivery() {
    let local = support::local(Backend::Sqlite, quick_settings())
        .await
        .expect("sqlite");
    // Slower than `webhook_timeout` (500 ms): every call times out.
    let (slow_url, _slow) = receiver(&[], Duration::from_secs(3)).await;
    let (fast_url, fast) = receiver(&[], Duration::ZERO).await;
    let service = local.module.service();
    service
        .create_webhook(subscription(&slow_url, "k"))
        .await
        .expect("created");
    service
        .create_webhook(subscription(&fast_url, "k"))
        .await
        .expect("created");
    let workers = local.module.spawn_workers();
    let started = std::time::Instant::now();
    let order = order(OrderStatus::Confirmed, "ada@example.com");
    service.handle(&order_event(&order)).await.expect("handled");
    for _ in 0..100 {
        if !fast.calls.lock().expect("lock").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fast.calls.lock().expect("lock").len(), 1);
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    let log = local
        .wait_for(order.id, |log| {
            log.iter()
                .any(|d| d.recipient == slow_url && d.status == DeliveryStatus::Failed)
        })
        .await;
    let slow = log.iter().find(|d| d.recipient == slow_url).expect("slow");
    assert!(
        slow.last_error
            .as_deref()
            .is_some_and(|e| e.contains("timed out")),
        "{slow:?}"
    );
    for worker in workers {
        worker.abort();
    }
}

#[tokio::test]
async fn a_deleted_webhook_gets_no_more_calls() {
    let local = support::local(Backend::Sqlite, quick_settings())
        .await
        .expect("sqlite");
    let (url, state) = receiver(&[], Duration::ZERO).await;
    let service = local.module.service();
    let webhook = service
        .create_webhook(subscription(&url, "k"))
        .await
        .expect("created");
    let order = order(OrderStatus::Confirmed, "ada@example.com");
    service.handle(&order_event(&order)).await.expect("handled");
    service.delete_webhook(webhook.id).await.expect("deleted");
    service.deliver_due().await.expect("delivered");
    let log = local.wait_for(order.id, |log| log.len() == 2).await;
    let hook = log
        .iter()
        .find(|d| d.channel == Channel::Webhook)
        .expect("hook");
    assert_eq!(hook.status, DeliveryStatus::Failed);
    assert_eq!(hook.last_error.as_deref(), Some("webhook deleted"));
    assert!(state.calls.lock().expect("lock").is_empty());
}

/// Waits at most `within` for the e-mail about `order_id` to be as `wanted` says.
async fn e_mail_within(
    local: &Local,
    order_id: uuid::Uuid,
    within: Duration,
    wanted: impl Fn(&Delivery) -> bool,
) -> Delivery {
    let started = std::time::Instant::now();
    let port = local.module.port();
    loop {
        let log = port.deliveries(order_id).await.expect("log");
        let e_mail = log
            .into_iter()
            .find(|d| matches!(d.channel, Channel::File | Channel::Email))
            .expect("an e-mail is recorded with the event");
        if wanted(&e_mail) {
            return e_mail;
        }
        assert!(
            started.elapsed() < within,
            "after {:?}: {e_mail:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Webhook calls have slots of their own (`notifications.webhook_concurrency`): while
/// endpoints that never answer hold every one of them, with more calls queued behind, an
/// order's e-mail is still sent at once, and so is an e-mail the worker retries, well
/// before any webhook call times out.
async fn hanging_webhooks_never_delay_an_e_mail(backend: Backend) {
    let settings = NotificationsSettings {
        webhook_timeout: Duration::from_secs(5),
        concurrency: 4,
        webhook_concurrency: 4,
        ..quick_settings()
    };
    let Some(local) = support::local(backend, settings).await else {
        return;
    };
    let (port, accepted) = support::hanging_server().await;
    let service = local.module.service();
    for n in 0..12 {
        service
            .create_webhook(subscription(
                &format!("http://127.0.0.1:{port}/hook-{n}"),
                "k",
            ))
            .await
            .expect("created");
    }
    let workers = local.module.spawn_workers();
    let first = order(OrderStatus::Confirmed, "ada@example.com");
    service.handle(&order_event(&first)).await.expect("handled");
    // Every webhook slot is taken by a call that hangs.
    support::wait_for_connections(&accepted, 4).await;
    let prompt = Duration::from_secs(1);

    // An e-mail the handler sends itself.
    let second = order(OrderStatus::Confirmed, "bob@example.com");
    service
        .handle(&order_event(&second))
        .await
        .expect("handled");
    let sent = |d: &Delivery| d.status == DeliveryStatus::Sent;
    let e_mail = e_mail_within(&local, second.id, prompt, sent).await;
    assert_eq!(e_mail.recipient, "bob@example.com");
    assert_eq!(local.eml_files().len(), 2, "both e-mails are written");

    // An e-mail the worker sends: the retry of one whose first attempt failed, because the
    // folder of `.eml` files was a file for a moment.
    let folder = local.data_dir.path().join("outbox-mail");
    std::fs::remove_dir_all(&folder).expect("removed");
    std::fs::write(&folder, b"").expect("a file in the folder's place");
    let third = order(OrderStatus::Confirmed, "cy@example.com");
    service.handle(&order_event(&third)).await.expect("handled");
    e_mail_within(&local, third.id, prompt, |d| d.attempts == 1).await;
    std::fs::remove_file(&folder).expect("removed");
    let e_mail = e_mail_within(&local, third.id, prompt, sent).await;
    assert_eq!(e_mail.attempts, 2, "{e_mail:?}");

    // Meanwhile the webhooks hang: no call has ended.
    let port = local.module.port();
    let mut hooks = Vec::new();
    for order in [&first, &second, &third] {
        hooks.extend(port.deliveries(order.id).await.expect("log"));
    }
    hooks.retain(|d| d.channel == Channel::Webhook);
    assert_eq!(hooks.len(), 36);
    assert!(
        hooks
            .iter()
            .all(|d| d.status == DeliveryStatus::Retrying && d.attempts == 0),
        "{hooks:?}"
    );
    for worker in workers {
        worker.abort();
    }
}

#[tokio::test]
async fn hanging_webhooks_never_delay_an_e_mail_sqlite() {
    hanging_webhooks_never_delay_an_e_mail(Backend::Sqlite).await;
}

#[tokio::test]
async fn hanging_webhooks_never_delay_an_e_mail_postgres() {
    hanging_webhooks_never_delay_an_e_mail(Backend::Postgres).await;
}

/// An attempt that outlives its lease, while another attempt claims the delivery again and
/// delivers it, records nothing when it ends: the newer attempt's result stands.
async fn a_stale_attempt_changes_nothing_once_the_delivery_is_claimed_again(backend: Backend) {
    let settings = NotificationsSettings {
        // Longer than the test: no call times out.
        webhook_timeout: Duration::from_secs(30),
        ..quick_settings()
    };
    let Some(local) = support::local(backend, settings).await else {
        return;
    };
    // Statuses go out in the order calls end: the newer attempt's 200 first, then the
    // stale attempt's 500.
    let (url, state) = receiver(&[200, 500], Duration::ZERO).await;
    let (release, held) = tokio::sync::oneshot::channel();
    *state.hold_first.lock().await = Some(held);
    let service = local.module.service().clone();
    service
        .create_webhook(subscription(&url, "k"))
        .await
        .expect("created");
    let order = order(OrderStatus::Confirmed, "ada@example.com");
    service.handle(&order_event(&order)).await.expect("handled");
    let hook = |log: Vec<Delivery>| {
        let hook = log
            .into_iter()
            .find(|d| d.channel == Channel::Webhook)
            .expect("a webhook delivery");
        (hook.status, hook.attempts, hook.last_error)
    };

    // The first attempt claims the delivery; its call is held at the receiver.
    let stale = tokio::spawn({
        let service = service.clone();
        async move { service.deliver_due().await }
    });
    for _ in 0..200 {
        if !state.calls.lock().expect("lock").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        state.calls.lock().expect("lock").len(),
        1,
        "first call made"
    );
    // Its lease lapses, as it would if the attempt took longer than the lease…
    local
        .module
        .database()
        .write(|conn| {
            chassis::per_backend!(conn, |conn| {
                diesel::sql_query(
                    "UPDATE deliveries SET claimed_until = '2000-01-01 00:00:00' \
                     WHERE channel = 'webhook'",
                )
                .execute(conn)
            })
            .map_err(DbError::from)
        })
        .await
        .expect("lease lapsed");
    // …and a second attempt claims the delivery again and delivers it.
    assert_eq!(service.deliver_due().await.expect("delivered"), 1);
    let port = local.module.port();
    assert_eq!(
        hook(port.deliveries(order.id).await.expect("log")),
        (DeliveryStatus::Sent, 1, None)
    );

    // The stale attempt's call ends now, failed: recorded, it would have the delivered
    // webhook called again.
    release.send(()).expect("the first call is held");
    assert_eq!(stale.await.expect("ran").expect("attempted"), 1);
    assert_eq!(state.calls.lock().expect("lock").len(), 2);
    assert_eq!(
        hook(port.deliveries(order.id).await.expect("log")),
        (DeliveryStatus::Sent, 1, None),
        "the stale attempt's 500 is not recorded"
    );
}

#[tokio::test]
async fn a_stale_attempt_changes_nothing_once_the_delivery_is_claimed_again_sqlite() {
    a_stale_attempt_changes_nothing_once_the_delivery_is_claimed_again(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_stale_attempt_changes_nothing_once_the_delivery_is_claimed_again_postgres() {
    a_stale_attempt_changes_nothing_once_the_delivery_is_claimed_again(Backend::Postgres).await;
}

async fn a_target_no_longer_allowed_is_never_called(backend: Backend) {
    let Some(local) = support::local(backend, quick_settings()).await else {
        return;
    };
    let (url, state) = receiver(&[], Duration::ZERO).await;
    local
        .module
        .service()
        .create_webhook(subscription(&url, "s3cret"))
        .await
        .expect("registered while private targets were allowed");
    let strict = local
        .restarted(&NotificationsSettings {
            allow_private_webhooks: false,
            ..quick_settings()
        })
        .await;
    let workers = strict.spawn_workers();
    let order = order(OrderStatus::Confirmed, "ada@example.com");
    strict
        .service()
        .handle(&order_event(&order))
        .await
        .expect("handled");

    let log = local
        .wait_for(order.id, |log| {
            log.len() == 2 && log.iter().all(|d| d.status != DeliveryStatus::Retrying)
        })
        .await;
    let hook = log
        .iter()
        .find(|d| d.channel == Channel::Webhook)
        .expect("a webhook delivery");
    assert_eq!(hook.status, DeliveryStatus::Failed, "{hook:?}");
    assert_eq!(hook.attempts, 1, "given up at once: {hook:?}");
    let last_error = hook.last_error.as_deref().unwrap_or_default();
    assert!(
        last_error.starts_with(&format!(
            "POST {url}: target not allowed: 127.0.0.1 is a loopback address"
        )),
        "{last_error}"
    );
    assert!(state.calls.lock().expect("lock").is_empty(), "never called");
    for worker in workers {
        worker.abort();
    }
}

#[tokio::test]
async fn a_target_no_longer_allowed_is_never_called_sqlite() {
    a_target_no_longer_allowed_is_never_called(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_target_no_longer_allowed_is_never_called_postgres() {
    a_target_no_longer_allowed_is_never_called(Backend::Postgres).await;
}
