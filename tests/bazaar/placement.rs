//! Every placement of the four modules: each local or remote in any combination, or off,
//! through the one composition path; and what a remote peer's readiness check catches.

use std::time::{Duration, Instant};

use chassis::config::{ModuleMode, Placement};
use serde_json::{Value, json};

use crate::support::{self, ADMIN_TOKEN};

const MODULES: [&str; 4] = ["catalog", "orders", "billing", "notifications"];

fn set_mode(config: &mut bazaar::Config, module: &str, mode: ModuleMode, url: Option<&str>) {
    let settings = match module {
        "catalog" => &mut config.modules.catalog,
        "orders" => &mut config.modules.orders,
        "billing" => &mut config.modules.billing,
        _ => &mut config.modules.notifications,
    };
    settings.mode = Some(mode);
    settings.url = url.map(|url| url.parse().expect("url"));
}

/// Two processes, `home` and `away`, split the modules between them in each of the eight
/// ways that differ (the catalog stays home; the other three go either way), each reaching
/// the other's modules through their remote clients and events through one NATS server.
/// In each, an order placed where orders runs is confirmed with the catalog's stock and
/// billing's payment, and notifications sends its one e-mail.
#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_placement_of_the_modules_confirms_an_order_and_e_mails_it() {
    let http = support::http();
    for away_mask in 0..8_u8 {
        // A broker per placement: the previous placement's processes stop serving HTTP,
        // but their consumers live on in this test process until it ends.
        let Some(nats) = chassis::testing::NatsServer::start() else {
            return;
        };
        // Bit i of the mask sends orders / billing / notifications away.
        let away: Vec<&str> = MODULES[1..]
            .iter()
            .enumerate()
            .filter(|(bit, _)| away_mask & (1 << bit) != 0)
            .map(|(_, module)| *module)
            .collect();
        let home_listener = support::listener();
        let away_listener = support::listener();
        let home_url = format!("http://{}/", home_listener.local_addr().expect("address"));
        let away_url = format!("http://{}/", away_listener.local_addr().expect("address"));
        let home_dir = tempfile::tempdir().expect("tempdir");
        let away_dir = tempfile::tempdir().expect("tempdir");
        let mut home = support::config(home_dir.path());
        let mut away_config = support::config(away_dir.path());
        for config in [&mut home, &mut away_config] {
            config.bus.kind = chassis::config::BusKind::Nats;
            config.bus.url = Some(chassis::secret::SecretUrl::new(nats.url()));
            config.notifications.poll_interval = Duration::from_millis(100);
        }
        for module in MODULES {
            let (hosted_by, reached_by) = if away.contains(&module) {
                (&mut away_config, &mut home)
            } else {
                (&mut home, &mut away_config)
            };
            set_mode(hosted_by, module, ModuleMode::Local, None);
            let url = if away.contains(&module) {
                &away_url
            } else {
                &home_url
            };
            set_mode(reached_by, module, ModuleMode::Remote, Some(url));
        }
        let (home_base, home_server) = support::spawn_on(home, home_listener).await;
        let (away_base, away_server) = support::spawn_on(away_config, away_listener).await;
        let base_of = |module: &str| {
            if away.contains(&module) {
                away_base.clone()
            } else {
                home_base.clone()
            }
        };
        let placement = format!("away: {away:?}");

        for base in [&home_base, &away_base] {
            let ready = http
                .get(format!("{base}/health/ready"))
                .send()
                .await
                .expect("answers");
            let status = ready.status();
            let ready: Value = ready.json().await.expect("json");
            assert_eq!(status, 200, "{placement}: {ready}");
        }
        let modules: Value = support::get_json(&http, &format!("{home_base}/modules")).await;
        for module in modules["modules"].as_array().expect("modules") {
            let name = module["name"].as_str().expect("name");
            let expected = if away.contains(&name) {
                "remote"
            } else {
                "local"
            };
            assert_eq!(module["mode"], expected, "{placement}: {modules}");
        }

        let product: Value = http
            .post(format!("{}/catalog/products", base_of("catalog")))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"sku": "PLACED", "name": "Lamp", "price": {"amount": 4500, "currency": "EUR"}, "stock": 5}))
            .send()
            .await
            .expect("creates")
            .json()
            .await
            .expect("json");
        let order: Value = http
            .post(format!("{}/orders", base_of("orders")))
            .json(&json!({"customer_email": "ada@example.com", "lines": [{"product_id": product["id"], "quantity": 2}], "payment": {"token": "tok_visa"}}))
            .send()
            .await
            .expect("answers")
            .json()
            .await
            .expect("json");
        assert_eq!(order["status"], "confirmed", "{placement}: {order}");
        let order_id = order["id"].as_str().expect("id");
        let stock: Value = http
            .get(format!(
                "{}/catalog/products/{}",
                base_of("catalog"),
                product["id"].as_str().expect("id")
            ))
            .send()
            .await
            .expect("answers")
            .json()
            .await
            .expect("json");
        assert_eq!(
            stock["stock"],
            json!({"on_hand": 3, "reserved": 0, "available": 3}),
            "{placement}"
        );
        let payments: Value = support::get_json(
            &http,
            &format!(
                "{}/billing/payments?order_id={order_id}",
                base_of("billing")
            ),
        )
        .await;
        assert_eq!(payments["items"][0]["status"], "captured", "{placement}");
        assert_eq!(
            payments["items"][0]["amount"]["amount"], 9000,
            "{placement}"
        );

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let page: Value = support::get_json(
                &http,
                &format!(
                    "{}/notifications?order_id={order_id}",
                    base_of("notifications")
                ),
            )
            .await;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            if items.iter().any(|delivery| delivery["status"] == "sent") {
                assert_eq!(items.len(), 1, "{placement}: one e-mail: {page}");
                assert_eq!(items[0]["recipient"], "ada@example.com", "{placement}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{placement}: no e-mail sent: {page}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        home_server.stop(true).await;
        away_server.stop(true).await;
    }
}

/// Answers `/health/ready`'s status and body at `base`.
async fn ready(base: &str) -> (u16, Value) {
    let response = support::http()
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .expect("answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

/// The catalog's `peer` check in a `/health/ready` report.
fn catalog_peer_check(ready: &Value) -> &Value {
    &ready["modules"]
        .as_array()
        .expect("modules")
        .iter()
        .find(|module| module["name"] == "catalog")
        .expect("the catalog's entry")["checks"]["peer"]
}

/// A process hosting `module` alone (the others off), with `configure` applied; answers
/// its base URL and the handle that keeps it serving.
async fn spawn_only(
    dir: &std::path::Path,
    module: &str,
    configure: impl FnOnce(&mut bazaar::Config),
) -> (String, actix_web::dev::ServerHandle) {
    let mut config = support::config(dir);
    for other in MODULES.iter().filter(|other| **other != module) {
        set_mode(&mut config, other, ModuleMode::Off, None);
    }
    configure(&mut config);
    support::spawn_stoppable(config).await
}

/// The error of the `peer` check of a process whose catalog is remote at `catalog_url`.
async fn catalog_peer_error(catalog_url: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = support::config(dir.path());
    set_mode(
        &mut config,
        "catalog",
        ModuleMode::Remote,
        Some(catalog_url),
    );
    set_mode(&mut config, "notifications", ModuleMode::Off, None);
    let base = support::spawn(config).await;
    let (status, ready) = ready(&base).await;
    assert_eq!(status, 503, "{ready}");
    let check = catalog_peer_check(&ready);
    assert_eq!(check["status"], "error", "{ready}");
    check["error"].as_str().expect("a reason").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_host_the_module_fails_readiness_saying_what_it_hosts() {
    // A billing-only process stands where the catalog is expected.
    let billing_dir = tempfile::tempdir().expect("tempdir");
    let (billing_base, _billing) = spawn_only(billing_dir.path(), "billing", |_| {}).await;
    let error = catalog_peer_error(&format!("{billing_base}/")).await;
    assert!(
        error.contains("does not host") && error.contains("billing"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_refuses_the_service_token_fails_readiness_naming_the_key() {
    let catalog_dir = tempfile::tempdir().expect("tempdir");
    let (catalog_base, _catalog) = spawn_only(catalog_dir.path(), "catalog", |config| {
        config.auth.service_token = Some(chassis::secret::Secret::new("another-token"));
    })
    .await;
    let error = catalog_peer_error(&format!("{catalog_base}/")).await;
    assert!(error.contains("auth.service_token"), "{error}");
}

/// A module whose URL leads back to the asking process (a name the config check cannot
/// see through, say) is caught by the peer check's instance id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_remote_to_its_own_process_fails_readiness() {
    let listener = support::listener();
    let own = format!("http://{}/", listener.local_addr().expect("address"));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = support::config(dir.path());
    set_mode(&mut config, "catalog", ModuleMode::Remote, Some(&own));
    set_mode(&mut config, "orders", ModuleMode::Off, None);
    set_mode(&mut config, "notifications", ModuleMode::Off, None);
    let (base, _server) = support::spawn_on(config, listener).await;
    let (status, ready) = ready(&base).await;
    assert_eq!(status, 503, "{ready}");
    let error = catalog_peer_check(&ready)["error"]
        .as_str()
        .expect("a reason")
        .to_owned();
    assert!(error.contains("itself"), "{error}");
}

#[tokio::test]
async fn a_module_remote_to_its_own_address_is_a_start_up_error_naming_the_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = support::config(dir.path());
    config.server.bind = "0.0.0.0:8080".into();
    set_mode(
        &mut config,
        "catalog",
        ModuleMode::Remote,
        Some("http://localhost:8080/"),
    );
    let error = config.validate().expect_err("refused").to_string();
    assert!(
        error.contains("modules.catalog.url") && error.contains("server.bind"),
        "{error}"
    );
    set_mode(
        &mut config,
        "catalog",
        ModuleMode::Remote,
        Some("http://catalog:8080/"),
    );
    set_mode(&mut config, "notifications", ModuleMode::Off, None);
    config.validate().expect("another host is fine");
}

#[tokio::test]
async fn orders_without_a_peer_it_needs_is_a_start_up_error_naming_the_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = support::config(dir.path());
    set_mode(&mut config, "billing", ModuleMode::Off, None);
    let error = bazaar::compose(&config)
        .await
        .expect_err("orders needs billing")
        .to_string();
    assert!(
        error.contains("module orders needs billing") && error.contains("modules.billing.mode"),
        "{error}"
    );
}

#[tokio::test]
async fn remote_orders_and_notifications_offer_their_ports_and_are_probed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = support::config(dir.path());
    set_mode(
        &mut config,
        "orders",
        ModuleMode::Remote,
        Some("http://127.0.0.1:9/"),
    );
    set_mode(
        &mut config,
        "notifications",
        ModuleMode::Remote,
        Some("http://127.0.0.1:9/"),
    );
    // This process publishes what notifications consumes: only a broker could carry it,
    // so here the catalog and billing are off too and nothing is published.
    set_mode(&mut config, "catalog", ModuleMode::Off, None);
    set_mode(&mut config, "billing", ModuleMode::Off, None);
    let composition = bazaar::compose(&config).await.expect("composes");
    assert!(composition.local.is_empty());
    assert!(
        composition
            .ports
            .get::<dyn orders_contract::Orders>()
            .is_some()
    );
    assert!(
        composition
            .ports
            .get::<dyn notifications_contract::Notifications>()
            .is_some()
    );
    for entry in &composition.entries {
        if matches!(entry.placement, Placement::Remote(_)) {
            assert!(
                entry
                    .probes
                    .iter()
                    .any(|probe| matches!(probe, chassis::ops::Probe::Peer(_))),
                "{} is probed",
                entry.name
            );
        }
    }
}

/// `bazaar serve` logs a misconfigured peer as an error at start-up, saying what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misconfigured_peer_is_logged_as_an_error_at_start_up() {
    use std::io::{BufRead, BufReader};

    let billing_dir = tempfile::tempdir().expect("tempdir");
    let (billing_base, _billing) = spawn_only(billing_dir.path(), "billing", |_| {}).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let port = support::listener().local_addr().expect("address").port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bazaar"))
        .arg("serve")
        .current_dir(dir.path())
        .env("BAZAAR__DATA_DIR", dir.path())
        .env("BAZAAR__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("BAZAAR__AUTH__SERVICE_TOKEN", support::SERVICE_TOKEN)
        .env("BAZAAR__MODULES__CATALOG__MODE", "remote")
        .env("BAZAAR__MODULES__CATALOG__URL", format!("{billing_base}/"))
        .env("BAZAAR__MODULES__NOTIFICATIONS__MODE", "off")
        .env("BAZAAR__LOG__FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starts");
    let stderr = child.stderr.take().expect("stderr");
    let found = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("\"level\":\"ERROR\"") && line.contains("does not host this module") {
                return Some(line);
            }
            if Instant::now() > deadline {
                break;
            }
        }
        None
    });
    let found = tokio::time::timeout(Duration::from_secs(30), found).await;
    let _ = child.kill();
    let _ = child.wait();
    let line = found
        .expect("within 30 s")
        .expect("the reader ends")
        .expect("an ERROR line saying the peer does not host the catalog");
    assert!(
        line.contains("modules.catalog.url") && line.contains("billing"),
        "{line}"
    );
}

/// Every metric the shipped Grafana dashboard (`deploy/grafana/bazaar.json`) queries is in
/// `/metrics` once an order has gone through a process that reaches a remote catalog and
/// carries its events through NATS.
#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_metrics_that_exist_after_an_order() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/bazaar.json"
        ))
        .expect("the dashboard"),
    )
    .expect("JSON");
    let mut queried: Vec<String> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            let mut rest = expr;
            while let Some(start) = rest.find("bazaar_") {
                let name: String = rest[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[start + name.len()..];
                queried.push(name);
            }
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");

    let Some(nats) = chassis::testing::NatsServer::start() else {
        return;
    };
    let nats_settings = |config: &mut bazaar::Config| {
        config.bus.kind = chassis::config::BusKind::Nats;
        config.bus.url = Some(chassis::secret::SecretUrl::new(nats.url()));
        config.events.poll_interval = Duration::from_millis(200);
    };
    let catalog_dir = tempfile::tempdir().expect("tempdir");
    let (catalog_base, _catalog) = spawn_only(catalog_dir.path(), "catalog", nats_settings).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = support::config(dir.path());
    nats_settings(&mut config);
    set_mode(
        &mut config,
        "catalog",
        ModuleMode::Remote,
        Some(&format!("{catalog_base}/")),
    );
    let base = support::spawn(config).await;
    let http = support::http();
    let product = crate::orders::create_product(&http, &catalog_base, "DASH", 50, 700).await;
    let order: Value = http
        .post(format!("{base}/orders"))
        .json(&crate::orders::order_body(&product, 1, "tok_visa"))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(order["status"], "confirmed", "{order}");

    // Gauges refreshed by the relays and consumers come within a few of their intervals.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("answers")
            .text()
            .await
            .expect("text");
        let missing: Vec<&String> = queried
            .iter()
            .filter(|name| {
                !metrics.lines().any(|line| {
                    line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
                })
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard queries metrics /metrics does not have: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
