//! Every notifications endpoint — admin `/notifications*` of spec §3 and
//! `/internal/notifications/*` — with each of its errors, and the remote client.

use actix_web::test::{self, TestRequest};
use chassis::db::Backend;
use chassis::remote::RemoteSettings;
use chassis::secret::Secret;
use notifications_contract::{
    DeliveryStatus, HttpNotifications, Notifications, NotificationsError,
};
use orders_contract::OrderStatus;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{
    self, ADMIN_TOKEN, RemoteServer, SERVICE_TOKEN, app, order, order_event, quick_settings,
};

fn admin(request: TestRequest) -> TestRequest {
    request.insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
}

fn internal(request: TestRequest) -> TestRequest {
    request.insert_header(("Authorization", format!("Bearer {SERVICE_TOKEN}")))
}

use chassis::testing::assert_problem as problem;

fn detail(body: &Value) -> &str {
    body["detail"].as_str().unwrap_or_default()
}

macro_rules! service {
    ($local:expr) => {
        test::init_service(app($local.module.clone())).await
    };
}

fn hook_body(url: &str) -> Value {
    json!({"url": url, "events": ["orders.order_confirmed"], "secret": "s3cret"})
}

#[actix_web::test]
async fn webhooks_are_created_listed_and_deleted() {
    let local = support::local(Backend::Sqlite, quick_settings())
        .await
        .expect("sqlite");
    let service = service!(local);
    let created = test::call_service(
        &service,
        admin(TestRequest::post().uri("/notifications/webhooks"))
            .set_json(hook_body("https://203.0.113.10/hook"))
            .to_request(),
    )
    .await;
    assert_eq!(created.status().as_u16(), 201);
    let created: Value = test::read_body_json(created).await;
    let mut keys: Vec<&str> = created
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["created_at", "events", "id", "url"],
        "never the secret"
    );
    assert_eq!(created["events"], json!(["orders.order_confirmed"]));

    let listed = test::call_service(
        &service,
        admin(TestRequest::get().uri("/notifications/webhooks?limit=10")).to_request(),
    )
    .await;
    assert_eq!(listed.status().as_u16(), 200);
    let listed: Value = test::read_body_json(listed).await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["items"][0]["id"], created["id"]);
    assert!(listed["items"][0].get("secret").is_none());
    assert_eq!(listed["next_cursor"], Value::Null);

    let id = created["id"].as_str().expect("id");
    let uri = format!("/notifications/webhooks/{id}");
    let deleted = test::call_service(
        &service,
        admin(TestRequest::delete().uri(&uri)).to_request(),
    )
    .await;
    assert_eq!(deleted.status().as_u16(), 204);
    let again = test::call_service(
        &service,
        admin(TestRequest::delete().uri(&uri)).to_request(),
    )
    .await;
    let body = problem(again, 404, "webhook_not_found").await;
    assert_eq!(body["webhook_id"], id);
    let garbage = test::call_service(
        &service,
        admin(TestRequest::delete().uri("/notifications/webhooks/not-a-uuid")).to_request(),
    )
    .await;
    problem(garbage, 404, "webhook_not_found").await;
}

#[actix_web::test]
async fn webhooks_are_paged() {
    let local = support::local(Backend::Sqlite, quick_settings())
        .await
        .expect("sqlite");
    let service = service!(local);
    for n in 0..3 {
        let created = test::call_service(
            &service,
            admin(TestRequest::post().uri("/notifications/webhooks"))
                .set_json(hook_body(&format!("https://203.0.113.10/{n}")))
                .to_request(),
        )
        .await;
        assert_eq!(created.status().as_u16(), 201);
    }
    let first: Value = test::call_and_read_body_json(
        &service,
        admin(TestRequest::get().uri("/notifications/webhooks?limit=2")).to_request(),
    )
    .await;
    assert_eq!(first["items"].as_array().map(Vec::len), Some(2));
    let cursor = first["next_cursor"].as_str().expect("cursor");
    let second: Value = test::call_and_read_body_json(
        &service,
        admin(TestRequest::get().uri(&format!("/notifications/webhooks?limit=2&cursor={cursor}")))
            .to_request(),
    )
    .await;
    assert_eq!(second["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(second["items"][0]["url"], "https://203.0.113.10/2");
}

#[actix_web::test]
async fn invalid_webhooks_are_refused_naming_the_field() {
    let local = support::local(Backend::Sqlite, quick_settings())
        .await
        .expect("sqlite");
    let service = service!(local);
    let cases = [
        (
            json!({"url": "ftp://example.com", "events": ["orders.order_confirmed"], "secret": "s"}),
            "url",
        ),
        (
            json!({"url": "example.com/hook", "events": ["orders.order_confirmed"], "secret": "s"}),
            "url",
        ),
        (
            json!({"url": "https://example.com", "events": [], "secret": "s"}),
            "events",
        ),
        (
            json!({"url": "https://example.com", "events": ["orders.shipped"], "secret": "s"}),
            "events",
        ),
        (
            json!({"url": "https://example.com", "events": ["orders.order_confirmed"], "secret": ""}),
            "secret",
        ),
        (
            json!({"url": "https://shop:pa55w0rd@203.0.113.10/in", "events": ["orders.order_confirmed"], "secret": "s"}),
            "url: must not carry credentials",
        ),
    ];
    for (body, field) in cases {
        let response = test::call_service(
            &service,
            admin(TestRequest::post().uri("/notifications/webhooks"))
                .set_json(&body)
                .to_request(),
        )
        .await;
        let problem = problem(response, 422, "validation_failed").await;
        assert!(detail(&problem).contains(field), "{field}: {problem}");
        assert!(!problem.to_string().contains("pa55w0rd"), "{problem}");
    }
    let missing = test::call_service(
        &service,
        admin(TestRequest::post().uri("/notifications/webhooks"))
            .set_json(json!({"url": "https://example.com", "events": ["orders.order_confirmed"]}))
            .to_request(),
    )
    .await;
    assert!(
        matches!(missing.status().as_u16(), 400 | 422),
        "{}",
        missing.status()
    );
    let malformed = test::call_service(
        &service,
        admin(TestRequest::post().uri("/notifications/webhooks"))
            .insert_header(("content-type", "application/json"))
            .set_payload("{not json")
            .to_request(),
    )
    .await;
    problem(malformed, 400, "malformed_request").await;
}

/// Webhook targets on the server's own host or network, in the spellings the issue lists.
const PRIVATE_TARGETS: &[&str] = &[
    "http://127.0.0.1:8080/hook",
    "http://localhost:8080/hook",
    "http://2130706433/hook",
    "http://0x7f000001/hook",
    "http://127.1/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://10.0.0.1/hook",
];

/// Webhook targets refused whatever `notifications.allow_private_webhooks` says.
const ALWAYS_REFUSED: &[&str] = &[
    "http://169.254.169.254/latest/meta-data/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://[fe80::1]/hook",
    "http://0.0.0.0:8080/hook",
];

async fn register(
    local: &support::Local,
    url: &str,
) -> actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody> {
    let service = service!(local);
    test::call_service(
        &service,
        admin(TestRequest::post().uri("/notifications/webhooks"))
            .set_json(hook_body(url))
            .to_request(),
    )
    .await
}

#[actix_web::test]
async fn private_and_metadata_webhook_targets_are_refused_by_default() {
    let settings = notifications_contract::NotificationsSettings {
        allow_private_webhooks: false,
        ..quick_settings()
    };
    let local = support::local(Backend::Sqlite, settings)
        .await
        .expect("sqlite");
    for url in PRIVATE_TARGETS.iter().chain(ALWAYS_REFUSED) {
        let problem = problem(register(&local, url).await, 422, "validation_failed").await;
        assert!(detail(&problem).starts_with("url: "), "{url}: {problem}");
        assert!(
            detail(&problem).contains("address") || detail(&problem).contains("metadata"),
            "{url}: {problem}"
        );
    }
    let listed = test::call_service(
        &service!(local),
        admin(TestRequest::get().uri("/notifications/webhooks")).to_request(),
    )
    .await;
    let listed: Value = test::read_body_json(listed).await;
    assert_eq!(listed["items"], json!([]), "nothing registered");
}

#[actix_web::test]
async fn allow_private_webhooks_admits_private_targets_but_never_metadata() {
    let local = support::local(Backend::Sqlite, quick_settings())
        .await
        .expect("sqlite");
    for url in PRIVATE_TARGETS {
        let response = register(&local, url).await;
        assert_eq!(response.status().as_u16(), 201, "{url}");
    }
    for url in ALWAYS_REFUSED {
        let problem = problem(register(&local, url).await, 422, "validation_failed").await;
        assert!(detail(&problem).starts_with("url: "), "{url}: {problem}");
    }
}

#[actix_web::test]
async fn a_webhook_host_that_does_not_resolve_is_refused() {
    let local = support::local(Backend::Sqlite, quick_settings())
        .await
        .expect("sqlite");
    let problem = problem(
        register(&local, "https://nothing-here.invalid/hook").await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(
        detail(&problem),
        "url: nothing-here.invalid does not resolve"
    );
}

#[actix_web::test]
async fn every_admin_route_needs_the_admin_token() {
    let local = support::local(Backend::Sqlite, quick_settings())
        .await
        .expect("sqlite");
    let service = service!(local);
    let id = Uuid::new_v4();
    let requests = [
        TestRequest::get().uri("/notifications"),
        TestRequest::get().uri("/notifications/webhooks"),
        TestRequest::post()
            .uri("/notifications/webhooks")
            .set_json(hook_body("https://example.com")),
        TestRequest::delete().uri(&format!("/notifications/webhooks/{id}")),
    ];
    for request in requests {
        let response = test::call_service(&service, request.to_request()).await;
        problem(response, 401, "unauthorized").await;
    }
    // The service token is not the admin token, and the other way round.
    let response = test::call_service(
        &service,
        internal(TestRequest::get().uri("/notifications")).to_request(),
    )
    .await;
    problem(response, 401, "unauthorized").await;
    let response = test::call_service(
        &service,
        admin(TestRequest::get().uri(&format!("/internal/notifications/deliveries?order_id={id}")))
            .to_request(),
    )
    .await;
    problem(response, 401, "unauthorized").await;
}

#[actix_web::test]
async fn a_wrong_method_is_405() {
    let local = support::local(Backend::Sqlite, quick_settings())
        .await
        .expect("sqlite");
    let service = service!(local);
    for request in [
        TestRequest::put().uri("/notifications/webhooks"),
        TestRequest::post().uri("/notifications"),
        TestRequest::get().uri(&format!("/notifications/webhooks/{}", Uuid::new_v4())),
    ] {
        let response = test::call_service(&service, admin(request).to_request()).await;
        assert_eq!(response.status().as_u16(), 405);
    }
}

#[actix_web::test]
async fn the_delivery_log_is_filtered_by_order_and_paged() {
    let local = support::local(Backend::Sqlite, quick_settings())
        .await
        .expect("sqlite");
    let service = service!(local);
    let orders: Vec<_> = (0..3)
        .map(|n| order(OrderStatus::Confirmed, &format!("c{n}@example.com")))
        .collect();
    for order in &orders {
        local
            .module
            .service()
            .handle(&order_event(order))
            .await
            .expect("handled");
    }
    for order in &orders {
        local
            .wait_for(order.id, support::all(1, DeliveryStatus::Sent))
            .await;
    }

    let all: Value = test::call_and_read_body_json(
        &service,
        admin(TestRequest::get().uri("/notifications?limit=2")).to_request(),
    )
    .await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(2));
    let cursor = all["next_cursor"].as_str().expect("cursor");
    let rest: Value = test::call_and_read_body_json(
        &service,
        admin(TestRequest::get().uri(&format!("/notifications?limit=2&cursor={cursor}")))
            .to_request(),
    )
    .await;
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(rest["next_cursor"], Value::Null);

    let one: Value = test::call_and_read_body_json(
        &service,
        admin(TestRequest::get().uri(&format!("/notifications?order_id={}", orders[1].id)))
            .to_request(),
    )
    .await;
    let items = one["items"].as_array().expect("items");
    assert_eq!(items.len(), 1);
    let delivery = &items[0];
    let mut keys: Vec<&str> = delivery
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "attempts",
            "channel",
            "created_at",
            "event_id",
            "id",
            "last_error",
            "recipient",
            "status",
            "template"
        ]
    );
    assert_eq!(delivery["recipient"], "c1@example.com");
    assert_eq!(delivery["status"], "sent");
    assert_eq!(delivery["channel"], "file");

    for (uri, field) in [
        ("/notifications?order_id=nope", "order_id"),
        ("/notifications?limit=0", "limit"),
        ("/notifications?limit=201", "limit"),
        ("/notifications?cursor=***", "cursor"),
    ] {
        let response =
            test::call_service(&service, admin(TestRequest::get().uri(uri)).to_request()).await;
        let body = problem(response, 422, "validation_failed").await;
        assert!(detail(&body).contains(field), "{uri}: {body}");
    }
}

#[actix_web::test]
async fn internal_deliveries_answer_the_port() {
    let local = support::local(Backend::Sqlite, quick_settings())
        .await
        .expect("sqlite");
    let service = service!(local);
    let order = order(OrderStatus::Confirmed, "ada@example.com");
    local
        .module
        .service()
        .handle(&order_event(&order))
        .await
        .expect("handled");
    let answer: Value = test::call_and_read_body_json(
        &service,
        internal(TestRequest::get().uri(&format!(
            "/internal/notifications/deliveries?order_id={}",
            order.id
        )))
        .to_request(),
    )
    .await;
    assert_eq!(answer.as_array().map(Vec::len), Some(1));
    assert_eq!(answer[0]["status"], "retrying", "not sent yet");
    assert_eq!(answer[0]["attempts"], 0);
    for uri in [
        "/internal/notifications/deliveries",
        "/internal/notifications/deliveries?order_id=nope",
    ] {
        let response =
            test::call_service(&service, internal(TestRequest::get().uri(uri)).to_request()).await;
        problem(response, 422, "validation_failed").await;
    }
}

async fn the_remote_client_answers_like_the_service(backend: Backend) {
    let Some(local) = support::local(backend, quick_settings()).await else {
        return;
    };
    let order = order(OrderStatus::Confirmed, "ada@example.com");
    local
        .module
        .service()
        .handle(&order_event(&order))
        .await
        .expect("handled");
    local
        .wait_for(order.id, support::all(1, DeliveryStatus::Sent))
        .await;
    let server = RemoteServer::start(&local.module).await;
    let client = HttpNotifications::new(
        server.url.clone(),
        Some(Secret::new(SERVICE_TOKEN)),
        RemoteSettings::default(),
    )
    .expect("client");
    let remote = client.deliveries(order.id).await.expect("answered");
    let here = local
        .module
        .port()
        .deliveries(order.id)
        .await
        .expect("answered");
    assert_eq!(remote, here);
    assert_eq!(remote.len(), 1);
    assert!(
        client
            .deliveries(Uuid::new_v4())
            .await
            .expect("answered")
            .is_empty()
    );

    let stranger = HttpNotifications::new(
        server.url.clone(),
        Some(Secret::new("wrong")),
        RemoteSettings::default(),
    )
    .expect("client");
    assert!(matches!(
        stranger.deliveries(order.id).await,
        Err(NotificationsError::Internal(_))
    ));
    server.stop().await;

    let gone = client.deliveries(order.id).await;
    assert!(
        matches!(gone, Err(NotificationsError::Unavailable(_))),
        "{gone:?}"
    );
}

#[actix_web::test]
async fn the_remote_client_answers_like_the_service_sqlite() {
    the_remote_client_answers_like_the_service(Backend::Sqlite).await;
}

#[actix_web::test]
async fn the_remote_client_answers_like_the_service_postgres() {
    the_remote_client_answers_like_the_service(Backend::Postgres).await;
}
