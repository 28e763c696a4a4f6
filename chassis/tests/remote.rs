//! The remote-client base against a real HTTP server on 127.0.0.1: retries for idempotent
//! calls only, problem documents handed back, timeouts, the circuit breaker, the
//! concurrency cap and the service token.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use chassis::problem::Problem;
use chassis::remote::{BreakerState, Idempotency, RemoteClient, RemoteError, RemoteSettings};
use chassis::secret::Secret;
use url::Url;

#[derive(Default)]
struct Counters {
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

async fn flaky(counters: web::Data<Counters>) -> HttpResponse {
    // The first call fails as an overloaded peer would; later ones succeed.
    if counters.calls.fetch_add(1, Ordering::SeqCst) == 0 {
        HttpResponse::ServiceUnavailable().finish()
    } else {
        HttpResponse::Ok().json(serde_json::json!({"ok": true}))
    }
}

async fn down(counters: web::Data<Counters>) -> HttpResponse {
    counters.calls.fetch_add(1, Ordering::SeqCst);
    HttpResponse::ServiceUnavailable().finish()
}

async fn gateway_down(counters: web::Data<Counters>) -> HttpResponse {
    counters.calls.fetch_add(1, Ordering::SeqCst);
    chassis::http::problem_response(&Problem::unavailable("the payment gateway timed out"))
}

async fn conflict() -> HttpResponse {
    let problem = Problem::new(409, "sku_taken", "sku A is taken").with_extension("sku", "A");
    chassis::http::problem_response(&problem)
}

#[derive(serde::Deserialize)]
struct Delay {
    ms: Option<u64>,
}

/// Answers after `?ms=` milliseconds, 150 by default.
async fn slow(counters: web::Data<Counters>, delay: web::Query<Delay>) -> HttpResponse {
    counters.calls.fetch_add(1, Ordering::SeqCst);
    let now = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(delay.ms.unwrap_or(150))).await;
    counters.in_flight.fetch_sub(1, Ordering::SeqCst);
    HttpResponse::Ok().json(serde_json::json!({"ok": true}))
}

async fn whoami(request: HttpRequest) -> HttpResponse {
    let authorization = request
        .headers()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    HttpResponse::Ok().json(serde_json::json!({ "authorization": authorization }))
}

struct Peer {
    url: Url,
    counters: Arc<Counters>,
    handle: ServerHandle,
}

async fn peer() -> Peer {
    let counters = Arc::new(Counters::default());
    let data = web::Data::from(Arc::clone(&counters));
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
    let address = listener.local_addr().expect("address");
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/flaky", web::route().to(flaky))
            .route("/down", web::route().to(down))
            .route("/conflict", web::get().to(conflict))
            .route("/gateway-down", web::get().to(gateway_down))
            .route("/slow", web::get().to(slow))
            .route("/whoami", web::get().to(whoami))
    })
    .workers(2)
    .disable_signals()
    .listen(listener)
    .expect("listens")
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    Peer {
        url: Url::parse(&format!("http://{address}/")).expect("url"),
        counters,
        handle,
    }
}

fn settings() -> RemoteSettings {
    RemoteSettings {
        timeout: Duration::from_secs(2),
        retries: 2,
        retry_delay: Duration::from_millis(5),
        breaker_failures: 5,
        breaker_cooldown: Duration::from_secs(60),
        max_concurrency: 8,
    }
}

fn client(url: &Url, settings: RemoteSettings) -> RemoteClient {
    RemoteClient::new(
        "peer",
        url.clone(),
        Some(Secret::new("svc-token")),
        settings,
    )
    .expect("builds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_calls_are_retried_after_a_transient_failure() {
    let peer = peer().await;
    let answer: serde_json::Value = client(&peer.url, settings())
        .get("/flaky", &[])
        .await
        .expect("second try works");
    assert_eq!(answer["ok"], true);
    assert_eq!(peer.counters.calls.load(Ordering::SeqCst), 2);
    peer.handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_calls_are_not_retried() {
    let peer = peer().await;
    let outcome: Result<serde_json::Value, _> = client(&peer.url, settings())
        .post("/flaky", &serde_json::json!({}), Idempotency::NotIdempotent)
        .await;
    assert!(
        matches!(outcome, Err(RemoteError::Unavailable { .. })),
        "{outcome:?}"
    );
    assert_eq!(peer.counters.calls.load(Ordering::SeqCst), 1, "called once");
    peer.handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problem_documents_come_back_whole_and_are_not_retried() {
    let peer = peer().await;
    let outcome: Result<serde_json::Value, _> =
        client(&peer.url, settings()).get("/conflict", &[]).await;
    match outcome {
        Err(RemoteError::Problem(problem)) => {
            assert_eq!(problem.status, 409);
            assert_eq!(problem.code, "sku_taken");
            assert_eq!(problem.extension_str("sku"), Some("A"));
        }
        other => panic!("expected a problem, got {other:?}"),
    }
    peer.handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_slower_than_the_timeout_is_unavailable() {
    let peer = peer().await;
    let quick = RemoteSettings {
        timeout: Duration::from_millis(50),
        retries: 0,
        ..settings()
    };
    let outcome: Result<serde_json::Value, _> = client(&peer.url, quick).get("/slow", &[]).await;
    match outcome {
        Err(RemoteError::Unavailable { reason, .. }) => {
            assert!(reason.contains("timed out"), "{reason}")
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    peer.handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_after_consecutive_failures_and_stops_calling() {
    let peer = peer().await;
    let breaking = RemoteSettings {
        retries: 0,
        breaker_failures: 3,
        ..settings()
    };
    let client = client(&peer.url, breaking);
    for _ in 0..3 {
        let outcome: Result<serde_json::Value, _> = client.get("/down", &[]).await;
        assert!(matches!(outcome, Err(RemoteError::Unavailable { .. })));
    }
    assert_eq!(client.breaker_state(), BreakerState::Open);
    let outcome: Result<serde_json::Value, _> = client.get("/down", &[]).await;
    match outcome {
        Err(RemoteError::Unavailable { reason, .. }) => {
            assert!(reason.contains("circuit breaker"), "{reason}")
        }
        other => panic!("expected the breaker to refuse, got {other:?}"),
    }
    assert_eq!(
        peer.counters.calls.load(Ordering::SeqCst),
        3,
        "the open breaker did not call"
    );
    peer.handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_are_capped() {
    let peer = peer().await;
    let capped = RemoteSettings {
        max_concurrency: 2,
        ..settings()
    };
    let client = client(&peer.url, capped);
    let calls = (0..6).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { client.get::<serde_json::Value>("/slow", &[]).await })
    });
    for call in futures::future::join_all(calls).await {
        call.expect("task ran").expect("call succeeded");
    }
    assert_eq!(peer.counters.max_in_flight.load(Ordering::SeqCst), 2);
    peer.handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_token_is_sent_as_a_bearer_token() {
    let peer = peer().await;
    let answer: serde_json::Value = client(&peer.url, settings())
        .get("/whoami", &[])
        .await
        .expect("answers");
    assert_eq!(answer["authorization"], "Bearer svc-token");
    peer.handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_peer_is_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
    let url = Url::parse(&format!(
        "http://{}/",
        listener.local_addr().expect("address")
    ))
    .expect("url");
    drop(listener);
    let outcome: Result<serde_json::Value, _> =
        client(&url, settings()).get("/anything", &[]).await;
    assert!(
        matches!(outcome, Err(RemoteError::Unavailable { .. })),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_a_call_failed_does_not_name_the_peer_address() {
    // A peer that takes each connection and closes it without an answer.
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
    let address = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            drop(stream);
        }
    });
    let url = Url::parse(&format!("http://{address}/")).expect("url");
    let outcome: Result<serde_json::Value, _> =
        client(&url, settings()).get("/anything", &[]).await;
    match outcome {
        Err(RemoteError::Unavailable { reason, .. }) => {
            assert_eq!(reason, "the request failed");
            assert!(!reason.contains(&address.to_string()), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_problem_from_a_live_peer_is_handed_back_without_tripping_the_breaker() {
    let peer = peer().await;
    let sensitive = RemoteSettings {
        breaker_failures: 1,
        ..settings()
    };
    let client = client(&peer.url, sensitive);
    for _ in 0..3 {
        let outcome: Result<serde_json::Value, _> = client.get("/gateway-down", &[]).await;
        match outcome {
            Err(RemoteError::Problem(problem)) => {
                assert_eq!(problem.status, 503);
                assert_eq!(
                    problem.detail, "the payment gateway timed out",
                    "the detail survives"
                );
            }
            other => panic!("expected the peer's problem, got {other:?}"),
        }
    }
    assert_eq!(
        client.breaker_state(),
        BreakerState::Closed,
        "the peer is up"
    );
    assert_eq!(
        peer.counters.calls.load(Ordering::SeqCst),
        3,
        "not retried: the peer answered"
    );
    peer.handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_probe_dropped_before_its_answer_lets_a_later_probe_through() {
    let peer = peer().await;
    let cooldown = Duration::from_millis(200);
    let client = client(
        &peer.url,
        RemoteSettings {
            retries: 0,
            breaker_failures: 1,
            breaker_cooldown: cooldown,
            ..settings()
        },
    );
    let outcome: Result<serde_json::Value, _> = client.get("/down", &[]).await;
    assert!(matches!(outcome, Err(RemoteError::Unavailable { .. })));
    assert_eq!(client.breaker_state(), BreakerState::Open);
    tokio::time::sleep(cooldown).await;

    // The probe reaches the peer, and its caller gives up on it before the answer.
    let probe = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .get::<serde_json::Value>("/slow", &[("ms", "1000".to_owned())])
                .await
        })
    };
    for _ in 0..200 {
        if peer.counters.in_flight.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        peer.counters.in_flight.load(Ordering::SeqCst),
        1,
        "probe sent"
    );
    probe.abort();
    assert!(probe.await.expect_err("aborted").is_cancelled());

    // The abandoned probe says nothing about the peer: one cool-down later, another goes.
    tokio::time::sleep(cooldown).await;
    let answer: serde_json::Value = client
        .get("/whoami", &[])
        .await
        .expect("the next probe goes through");
    assert_eq!(answer["authorization"], "Bearer svc-token");
    assert_eq!(client.breaker_state(), BreakerState::Closed);
    peer.handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_refused_by_the_concurrency_cap_is_neither_retried_nor_counted_against_the_peer() {
    let peer = peer().await;
    let client = client(
        &peer.url,
        RemoteSettings {
            timeout: Duration::from_millis(1000),
            // A retry of the refused call would find the slot free at 1400 ms.
            retries: 2,
            breaker_failures: 1,
            max_concurrency: 1,
            ..settings()
        },
    );
    // A call waits for a slot at most the timeout, so it is refused only behind two calls
    // that each answer within it: the first holds the slot 0-700 ms, the second 700-1400 ms,
    // and the third gives up waiting at 1000 ms.
    let slow_call = |started: Duration| {
        let client = client.clone();
        tokio::spawn(async move {
            tokio::time::sleep(started).await;
            client
                .get::<serde_json::Value>("/slow", &[("ms", "700".to_owned())])
                .await
        })
    };
    let first = slow_call(Duration::ZERO);
    let second = slow_call(Duration::from_millis(50));
    let refused = slow_call(Duration::from_millis(100));
    match refused.await.expect("task ran") {
        Err(RemoteError::Unavailable { reason, .. }) => {
            assert!(reason.contains("too many calls in flight"), "{reason}")
        }
        other => panic!("expected the cap to refuse, got {other:?}"),
    }
    assert_eq!(
        client.breaker_state(),
        BreakerState::Closed,
        "a refusal at the cap is not the peer failing"
    );
    first.await.expect("task ran").expect("first call answered");
    second
        .await
        .expect("task ran")
        .expect("second call answered");
    assert_eq!(
        peer.counters.calls.load(Ordering::SeqCst),
        2,
        "the refused call never reached the peer"
    );
    let answer: serde_json::Value = client
        .get("/whoami", &[])
        .await
        .expect("the peer is still called");
    assert_eq!(answer["authorization"], "Bearer svc-token");
    peer.handle.stop(false).await;
}
