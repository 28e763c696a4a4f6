//! One order, one trace (spec §7): in the monolith, with spans kept in memory, an order
//! placed with a caller's `traceparent` yields the HTTP span, the port calls, the saga's
//! steps and the event handlers' spans, all in the caller's trace, each under the right
//! parent. Its own test binary: it installs the process-wide subscriber.

use std::collections::HashMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "trace-admin";

fn span<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|span| span.name == name)
        .unwrap_or_else(|| {
            let names: Vec<&str> = spans.iter().map(|span| span.name.as_ref()).collect();
            panic!("no span {name:?} among {names:?}")
        })
}

fn parent_of<'a>(spans: &'a [SpanData], child: &SpanData) -> Option<&'a SpanData> {
    spans
        .iter()
        .find(|span| span.span_context.span_id() == child.parent_span_id)
}

/// The spans under `parent` as an indented tree, in start order.
fn render(spans: &[SpanData], parent: SpanId, depth: usize) -> String {
    let mut children: Vec<&SpanData> = spans
        .iter()
        .filter(|span| span.parent_span_id == parent)
        .collect();
    children.sort_by_key(|span| span.start_time);
    children
        .into_iter()
        .map(|span| {
            let micros = span
                .end_time
                .duration_since(span.start_time)
                .unwrap_or_default()
                .as_micros();
            format!(
                "{}{} ({:.1} ms)\n{}",
                "  ".repeat(depth),
                span.name,
                micros as f64 / 1000.0,
                render(spans, span.span_context.span_id(), depth + 1)
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_order_is_one_trace_from_the_post_to_the_e_mail() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    chassis::telemetry::install(&chassis::config::LogSettings::default(), Some(provider));

    let data = tempfile::tempdir().expect("tempdir");
    let mut config = bazaar::Config {
        data_dir: data.path().to_owned(),
        ..bazaar::Config::default()
    };
    config.auth.admin_token = Some(chassis::secret::Secret::new(ADMIN_TOKEN));
    config.notifications.poll_interval = Duration::from_millis(100);
    config.server.workers = Some(1);
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let server = bazaar::start(config, listener).await.expect("starts");
    tokio::spawn(server);

    chassis::remote::install_tls_provider();
    let http = reqwest::Client::new();
    let product: Value = http
        .post(format!("{base}/catalog/products"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"sku": "TRACE", "name": "Lamp", "price": {"amount": 4500, "currency": "EUR"}, "stock": 50}))
        .send()
        .await
        .expect("creates")
        .json()
        .await
        .expect("json");
    let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace id");
    let caller = SpanId::from_hex("00f067aa0ba902b7").expect("span id");
    let order: Value = http
        .post(format!("{base}/orders"))
        .header("traceparent", format!("00-{trace_id}-{caller}-01"))
        .json(&json!({"customer_email": "ada@example.com", "lines": [{"product_id": product["id"], "quantity": 1}], "payment": {"token": "tok_visa"}}))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(order["status"], "confirmed", "{order}");

    // The handlers run after the answer: wait for the e-mail's span.
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans: Vec<SpanData> = exporter
            .get_finished_spans()
            .expect("spans")
            .into_iter()
            .filter(|span| span.span_context.trace_id() == trace_id)
            .collect();
        let handled = |name: &str| spans.iter().any(|span| span.name == name);
        if handled("process orders.order_confirmed")
            && handled("process billing.payment_captured")
            && handled("send file")
        {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "handlers' spans missing: {:?}",
            spans.iter().map(|span| &span.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The tree, printed for whoever reads the test's output (README shows one).
    eprintln!("{}", render(&spans, caller, 0));

    // The request continues the caller's span.
    let post = span(&spans, "POST /orders");
    assert_eq!(
        post.parent_span_id, caller,
        "the caller's span is the parent"
    );
    assert!(post.parent_span_is_remote);
    // The product lookup is the request's own port call; the rest belong to saga steps.
    let lookup = span(&spans, "catalog.products");
    assert_eq!(lookup.parent_span_id, post.span_context.span_id());
    let mut steps: HashMap<&str, &SpanData> = HashMap::new();
    for (step, port_call) in [
        ("saga reserve", "catalog.reserve"),
        ("saga charge", "billing.charge"),
        ("saga commit", "catalog.commit"),
    ] {
        let step_span = span(&spans, step);
        assert_eq!(
            step_span.parent_span_id,
            post.span_context.span_id(),
            "{step} runs in the request's trace"
        );
        let call = span(&spans, port_call);
        assert_eq!(
            call.parent_span_id,
            step_span.span_context.span_id(),
            "{port_call} is made by {step}"
        );
        steps.insert(step, step_span);
    }
    // Events continue the span that wrote them: the order's from the commit step, the
    // payment's from billing's charge.
    // The e-mail (the `file` channel here) is sent by the handler of the order's event.
    let sent = span(&spans, "send file");
    assert_eq!(
        parent_of(&spans, sent).map(|parent| parent.name.as_ref()),
        Some("process orders.order_confirmed"),
    );
    // (a `create` span when it is written, the handler's `process` span under it).
    for (event, writer) in [
        ("orders.order_confirmed", "saga commit"),
        ("billing.payment_captured", "billing.charge"),
    ] {
        let created = span(&spans, &format!("create {event}"));
        assert_eq!(
            parent_of(&spans, created).map(|parent| parent.name.as_ref()),
            Some(writer),
            "{event} is created by {writer}"
        );
        let handled = span(&spans, &format!("process {event}"));
        assert_eq!(
            handled.parent_span_id,
            created.span_context.span_id(),
            "{event}'s handler continues its creation"
        );
    }
}

/// With `telemetry.otlp_endpoint` set, `bazaar serve`'s log lines inside a request carry
/// its trace and span ids, in JSON as fields and in human lines at the end; without it there
/// is no tracing at all, and no ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_carry_the_trace_and_span_ids() {
    use std::io::{BufRead, BufReader};

    // Nothing listens there: the exports fail, quietly, which changes nothing here.
    let collector = format!(
        "http://{}",
        TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
    );
    for (format, traced) in [("json", true), ("human", true), ("json", false)] {
        let data = tempfile::tempdir().expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bazaar"));
        command
            .arg("serve")
            .current_dir(data.path())
            .env("BAZAAR__DATA_DIR", data.path())
            .env("BAZAAR__SERVER__BIND", format!("127.0.0.1:{port}"))
            .env("BAZAAR__AUTH__ADMIN_TOKEN", ADMIN_TOKEN)
            .env("BAZAAR__LOG__FORMAT", format)
            .env("BAZAAR__LOG__LEVEL", "info,orders=debug")
            .env_remove("RUST_LOG")
            .env_remove("BAZAAR__TELEMETRY__OTLP_ENDPOINT")
            .stderr(std::process::Stdio::piped());
        if traced {
            command.env("BAZAAR__TELEMETRY__OTLP_ENDPOINT", &collector);
        }
        let mut child = command.spawn().expect("starts");
        let stderr = child.stderr.take().expect("stderr");
        let trace_id = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
        let wanted = trace_id.clone();
        let reader = tokio::task::spawn_blocking(move || {
            BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .find(|line| line.contains("saga ended") && (!traced || line.contains(&wanted)))
        });

        let base = format!("http://127.0.0.1:{port}");
        chassis::remote::install_tls_provider();
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http
            .get(format!("{base}/health/live"))
            .send()
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "bazaar serve did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let product: Value = http
            .post(format!("{base}/catalog/products"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"sku": "LOG", "name": "Lamp", "price": {"amount": 100, "currency": "EUR"}, "stock": 50}))
            .send()
            .await
            .expect("creates")
            .json()
            .await
            .expect("json");
        let answer = http
            .post(format!("{base}/orders"))
            .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
            .json(&json!({"customer_email": "ada@example.com", "lines": [{"product_id": product["id"], "quantity": 1}], "payment": {"token": "tok_visa"}}))
            .send()
            .await
            .expect("answers");
        assert_eq!(answer.status(), 201);
        let line = tokio::time::timeout(Duration::from_secs(20), reader).await;
        let _ = child.kill();
        let _ = child.wait();
        let line = line
            .expect("within 20 s")
            .expect("the reader ends")
            .unwrap_or_else(|| {
                panic!("{format}: no log line of the saga with trace id {trace_id}")
            });
        if !traced {
            let fields: Value = serde_json::from_str(&line).expect("a JSON line");
            assert!(
                fields["trace_id"].is_null() && !line.contains(&trace_id),
                "no tracing without an endpoint: {line}"
            );
        } else if format == "json" {
            let fields: Value = serde_json::from_str(&line).expect("a JSON line");
            assert_eq!(fields["trace_id"], trace_id.as_str(), "{line}");
            assert_eq!(fields["span_id"].as_str().map(str::len), Some(16), "{line}");
        } else {
            assert!(
                line.contains(&format!("trace_id={trace_id} span_id=")),
                "{line}"
            );
        }
    }
}
