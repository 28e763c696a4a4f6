//! Operations endpoints every process serves: `/health/live`, `/health/ready` (per module:
//! database, remote peers), `/modules`, `/metrics` (Prometheus text), `/openapi.json` and
//! `/docs` (Swagger UI bundled into the binary: no CDN).

use std::sync::{Arc, OnceLock};

use actix_web::{HttpResponse, web};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use url::Url;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::Placement;
use crate::db::{Database, Migrations};
use crate::http::Service;
use crate::remote::{INTERNAL_MODULES_PATH, PeerError, PeerModule, PeerModules, RemoteClient};

/// Something `/health/ready` checks for a module.
#[derive(Debug, Clone)]
pub enum Probe {
    Database(Database),
    /// The module's schema is at its latest migration.
    Schema(Database, Migrations),
    Peer(RemoteClient),
}

/// A module as this process sees it.
#[derive(Debug, Clone)]
pub struct ModuleEntry {
    pub name: &'static str,
    pub placement: Placement,
    pub probes: Vec<Probe>,
}

/// Everything the operations endpoints report on.
pub struct Operations {
    /// Random per server; `/internal/modules` tells it, so that a peer check can see that a
    /// "remote" module's URL leads back to the process that asks.
    pub instance: uuid::Uuid,
    pub modules: Vec<ModuleEntry>,
    /// How events travel; `/health/ready` checks it.
    pub bus: Arc<dyn crate::events::EventBus>,
    pub openapi: utoipa::openapi::OpenApi,
}

impl std::fmt::Debug for Operations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operations")
            .field("modules", &self.modules)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize)]
struct ReadyView {
    status: &'static str,
    bus: BusReady,
    modules: Vec<ModuleReady>,
}

#[derive(Debug, Serialize)]
struct BusReady {
    kind: &'static str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct ModuleReady {
    name: &'static str,
    mode: &'static str,
    status: &'static str,
    checks: serde_json::Map<String, serde_json::Value>,
}

fn mode(placement: &Placement) -> (&'static str, Option<&Url>) {
    match placement {
        Placement::Local => ("local", None),
        Placement::Remote(url) => ("remote", Some(url)),
        Placement::Absent => ("absent", None),
    }
}

impl Operations {
    /// Mounts the operations endpoints.
    pub fn configure(self: &Arc<Self>, cfg: &mut web::ServiceConfig) {
        // Installs the recorder before the first request is counted.
        let _ = prometheus();
        let data = web::Data::from(Arc::clone(self));
        let mut allowed = crate::http::AllowedMethods::from_openapi(&self.openapi);
        for pattern in [
            "/health/live",
            "/health/ready",
            "/modules",
            INTERNAL_MODULES_PATH,
            "/metrics",
            "/docs",
        ] {
            allowed.add(pattern, "GET");
        }
        cfg.app_data(web::Data::new(allowed));
        cfg.app_data(data)
            // Resources, not bare routes: another method answers 405 (with `Allow`), not 404.
            .service(web::resource("/health/live").get(live))
            .service(web::resource("/health/ready").get(ready))
            .service(web::resource("/modules").get(modules))
            .service(web::resource(INTERNAL_MODULES_PATH).get(internal_modules))
            .service(web::resource("/metrics").get(render_metrics))
            .service(web::resource("/docs").get(docs_redirect))
            .service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", self.openapi.clone()));
    }
}

async fn schema_check(db: &Database, migrations: Migrations) -> Result<(), String> {
    match db.pending_migrations(migrations).await {
        Ok(pending) if pending.is_empty() => Ok(()),
        Ok(pending) => Err(format!(
            "not at its latest migration: {} pending; run `bazaar migrate`",
            pending.join(", ")
        )),
        Err(error) => Err(error.to_string()),
    }
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

async fn ready(ops: web::Data<Operations>) -> HttpResponse {
    let mut all_ok = true;
    let mut reports = Vec::with_capacity(ops.modules.len());
    for module in &ops.modules {
        let mut checks = serde_json::Map::new();
        let mut module_ok = true;
        for probe in &module.probes {
            let (key, outcome) = match probe {
                Probe::Database(db) => ("database", db.ping().await.map_err(|e| e.to_string())),
                Probe::Schema(db, migrations) => ("schema", schema_check(db, *migrations).await),
                Probe::Peer(client) => (
                    "peer",
                    client
                        .check_peer(ops.instance)
                        .await
                        .map_err(|error| format!("{} {error}", client.base_url())),
                ),
            };
            module_ok &= outcome.is_ok();
            checks.insert(
                key.to_owned(),
                match outcome {
                    Ok(()) => serde_json::json!({ "status": "ok" }),
                    Err(error) => serde_json::json!({ "status": "error", "error": error }),
                },
            );
            if let Probe::Peer(client) = probe {
                checks.insert(
                    "circuit_breaker".into(),
                    client.breaker_state().as_str().into(),
                );
            }
        }
        all_ok &= module_ok;
        reports.push(ModuleReady {
            name: module.name,
            mode: mode(&module.placement).0,
            status: if module_ok { "ok" } else { "error" },
            checks,
        });
    }
    let bus_check = ops.bus.check().await;
    all_ok &= bus_check.is_ok();
    let view = ReadyView {
        status: if all_ok { "ok" } else { "error" },
        bus: BusReady {
            kind: ops.bus.kind(),
            status: if bus_check.is_ok() { "ok" } else { "error" },
            error: bus_check.err(),
        },
        modules: reports,
    };
    if all_ok {
        HttpResponse::Ok().json(view)
    } else {
        HttpResponse::ServiceUnavailable().json(view)
    }
}

fn module_views(ops: &Operations) -> Vec<PeerModule> {
    ops.modules
        .iter()
        .map(|module| {
            let (mode, url) = mode(&module.placement);
            PeerModule {
                name: module.name.to_owned(),
                mode: mode.to_owned(),
                url: url.cloned(),
            }
        })
        .collect()
}

async fn modules(ops: web::Data<Operations>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "modules": module_views(&ops) }))
}

/// `/modules` for peers, with the instance id: behind the service token, so that a peer
/// check also proves that both processes share it.
async fn internal_modules(_: Service, ops: web::Data<Operations>) -> HttpResponse {
    HttpResponse::Ok().json(PeerModules {
        instance: ops.instance,
        modules: module_views(&ops),
    })
}

impl Operations {
    /// Checks every remote peer once, in the background, and logs what is wrong: an error
    /// for a peer that refuses the service token, does not host its module or is this
    /// process (configuration to fix), a warning for one not reached yet (it may still be
    /// starting; `/health/ready` keeps reporting it).
    pub fn check_peers_at_startup(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let ops = Arc::clone(self);
        tokio::spawn(async move {
            for module in &ops.modules {
                for probe in &module.probes {
                    let Probe::Peer(client) = probe else { continue };
                    match client.check_peer(ops.instance).await {
                        Ok(()) => {
                            tracing::info!(module = module.name, url = %client.base_url(), "remote module is reachable")
                        }
                        Err(error @ PeerError::Unreachable(_)) => tracing::warn!(
                            module = module.name, url = %client.base_url(), %error,
                            "remote module not reachable yet; /health/ready reports it until it is"
                        ),
                        Err(error) => tracing::error!(
                            module = module.name, url = %client.base_url(), %error,
                            "remote module is misconfigured: modules.{}.url must point at a process that hosts it, with the same auth.service_token",
                            module.name
                        ),
                    }
                }
            }
        })
    }
}

async fn render_metrics(ops: web::Data<Operations>) -> HttpResponse {
    // Taken from the databases' own counters at scrape time: counting them as metrics on
    // every statement would cost a registry lookup per statement.
    for module in &ops.modules {
        let database = module.probes.iter().find_map(|probe| match probe {
            Probe::Database(db) => Some(db),
            _ => None,
        });
        if let Some(db) = database {
            let counts = db.work_counts();
            metrics::counter!("bazaar_db_statements_total", "module" => module.name)
                .absolute(counts.statements);
            metrics::counter!("bazaar_db_transactions_total", "module" => module.name)
                .absolute(counts.transactions);
            metrics::counter!("bazaar_db_writes_total", "module" => module.name)
                .absolute(counts.writes);
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(prometheus().render())
}

async fn docs_redirect() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header(("Location", "/docs/"))
        .finish()
}

/// The process-wide Prometheus recorder. The `metrics` facade is global by design; this
/// installs it once and hands out the handle that renders it.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        const LATENCY_BUCKETS: &[f64] = &[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let builder = PrometheusBuilder::new();
        let builder = match builder.set_buckets(LATENCY_BUCKETS) {
            Ok(builder) => builder,
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let _already_installed = metrics::set_global_recorder(recorder);
        handle
    })
}
