use std::net::TcpListener;
use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;
use billing_contract::{Billing, HttpBilling};
use catalog_contract::{Catalog, HttpCatalog};
use chassis::config::Placement;
use chassis::db::{Backend, Database, PoolOptions};
use chassis::events::dead_letters::DeadLetters;
use chassis::events::{EventBus, EventHandler, InProcessBus, OutboxRelay, Subscription};
use chassis::http::{
    Tokens, configure_extractors, problem_for_error_responses, record_request_metrics,
};
use chassis::module::LocalModule;
use chassis::ops::{ModuleEntry, Operations, Probe};
use tracing_actix_web::TracingLogger;

use crate::config::{COMPILED_IN, Config};

/// The modules of one process, wired: the local ones with their databases, the ports
/// other modules use (local or remote), and what the operations endpoints report.
pub struct Composition {
    pub local: Vec<Arc<dyn LocalModule>>,
    pub entries: Vec<ModuleEntry>,
    /// How events travel between this process's modules.
    pub bus: Arc<dyn EventBus>,
    /// The catalog port, wherever the catalog runs; `None` when it is absent.
    pub catalog: Option<Arc<dyn Catalog>>,
    /// The billing port, wherever billing runs; `None` when it is absent.
    pub billing: Option<Arc<dyn Billing>>,
    #[cfg(feature = "catalog")]
    pub catalog_module: Option<catalog::CatalogModule>,
}

impl std::fmt::Debug for Composition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Composition")
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

fn open_database(config: &Config, name: &str) -> anyhow::Result<Database> {
    let settings = config.module(name);
    let url = settings.database_url_or_default(name, &config.data_dir);
    // PostgreSQL pools share the process's `database.max_connections`.
    let postgres_share = config
        .postgres_pools()?
        .into_iter()
        .find_map(|(module, size)| (module == name).then_some(size));
    let options = PoolOptions {
        max_size: postgres_share.unwrap_or(settings.pool_size.unwrap_or(8)),
        ..PoolOptions::default()
    };
    Database::open(&url, options)
        .with_context(|| format!("module {name}: cannot open its database {url}"))
}

/// The bus `bus.kind` names: in-process, or NATS JetStream (connected, its stream made).
async fn event_bus(config: &Config) -> anyhow::Result<Arc<dyn EventBus>> {
    #[cfg(feature = "nats")]
    if let Some(settings) = config.bus.nats() {
        let bus = chassis::events::NatsBus::connect(settings)
            .await
            .context("bus.kind = \"nats\": the event bus cannot start")?;
        return Ok(Arc::new(bus));
    }
    Ok(Arc::new(InProcessBus::new()))
}

/// Builds every module this process hosts or reaches, as config and features say.
pub async fn compose(config: &Config) -> anyhow::Result<Composition> {
    let mut composition = Composition {
        local: Vec::new(),
        entries: Vec::new(),
        bus: event_bus(config).await?,
        catalog: None,
        billing: None,
        #[cfg(feature = "catalog")]
        catalog_module: None,
    };
    // Peers first: orders needs the catalog's and billing's ports, wherever they run.
    for name in ["catalog", "billing", "orders", "notifications"] {
        let placement = config.placement(name)?;
        let mut probes = Vec::new();
        let remote_client = |url: &url::Url| -> anyhow::Result<chassis::remote::RemoteClient> {
            chassis::remote::RemoteClient::new(
                name,
                url.clone(),
                config.auth.service_token.clone(),
                config.remote.clone(),
            )
            .map_err(|error| {
                anyhow::anyhow!("module {name}: cannot build its remote client: {error}")
            })
        };
        match (name, &placement) {
            #[cfg(feature = "catalog")]
            ("catalog", Placement::Local) => {
                let db = open_database(config, name)?;
                probes.push(Probe::Database(db.clone()));
                let module =
                    catalog::CatalogModule::new(db, config.shop.currency.clone(), &config.catalog);
                composition.catalog = Some(module.port());
                composition.local.push(Arc::new(module.clone()));
                composition.catalog_module = Some(module);
            }
            ("catalog", Placement::Remote(url)) => {
                let client = HttpCatalog::new(
                    url.clone(),
                    config.auth.service_token.clone(),
                    config.remote.clone(),
                )
                .context("module catalog: cannot build its remote client")?;
                probes.push(Probe::Peer(client.remote().clone()));
                composition.catalog = Some(Arc::new(client));
            }
            #[cfg(feature = "billing")]
            ("billing", Placement::Local) => {
                let db = open_database(config, name)?;
                probes.push(Probe::Database(db.clone()));
                let module =
                    billing::BillingModule::new(db, config.shop.currency.clone(), &config.billing);
                composition.billing = Some(module.port());
                composition.local.push(Arc::new(module));
            }
            ("billing", Placement::Remote(url)) => {
                // A charge may take as long as the payment gateway is given: the client
                // must wait at least that long, or it would give up on charges that succeed
                // (and find them "in progress" on every retry).
                let mut settings = config.remote.clone();
                settings.timeout = settings
                    .timeout
                    .max(config.billing.gateway_timeout + std::time::Duration::from_secs(5));
                let client =
                    HttpBilling::new(url.clone(), config.auth.service_token.clone(), settings)
                        .context("module billing: cannot build its remote client")?;
                probes.push(Probe::Peer(client.remote().clone()));
                composition.billing = Some(Arc::new(client));
            }
            #[cfg(feature = "orders")]
            ("orders", Placement::Local) => {
                let needs = |peer: &str| {
                    anyhow::anyhow!(
                        "module orders needs {peer}: set modules.{peer}.mode = \"remote\" and modules.{peer}.url, \
                         or build with --features {peer}"
                    )
                };
                let catalog = composition
                    .catalog
                    .clone()
                    .ok_or_else(|| needs("catalog"))?;
                let billing = composition
                    .billing
                    .clone()
                    .ok_or_else(|| needs("billing"))?;
                let db = open_database(config, name)?;
                probes.push(Probe::Database(db.clone()));
                let module = orders::OrdersModule::new(
                    db,
                    config.shop.currency.clone(),
                    &config.orders,
                    catalog,
                    billing,
                );
                composition.local.push(Arc::new(module));
            }
            #[cfg(feature = "notifications")]
            ("notifications", Placement::Local) => {
                let db = open_database(config, name)?;
                probes.push(Probe::Database(db.clone()));
                let module = notifications::NotificationsModule::new(
                    db,
                    &config.data_dir,
                    &config.notifications,
                );
                composition.local.push(Arc::new(module));
            }
            // Nothing in this process calls orders or notifications through a port yet:
            // their remote placement is probed and reported, no client is kept.
            ("orders" | "notifications", Placement::Remote(url)) => {
                probes.push(Probe::Peer(remote_client(url)?));
            }
            _ => {}
        }
        if placement == Placement::Local
            && let Some(module) = composition.local.last()
        {
            probes.push(Probe::Schema(
                module.database().clone(),
                module.migrations(),
            ));
        }
        composition.entries.push(ModuleEntry {
            name,
            placement,
            probes,
        });
    }
    // `/modules` lists the modules in the spec's order.
    composition
        .entries
        .sort_by_key(|entry| COMPILED_IN.iter().position(|(name, _)| *name == entry.name));
    composition.check_event_sources(config)?;
    Ok(composition)
}

impl Composition {
    /// Every subscription of the local modules, with the retry policy of `events.*`.
    pub fn subscriptions(&self, config: &Config) -> Vec<Subscription> {
        self.local
            .iter()
            .flat_map(|module| module.subscriptions())
            .map(|subscription| Subscription {
                retry: config.events.retry(),
                ..subscription
            })
            .collect()
    }

    /// The handlers of the local consumers, by consumer name, for dead-letter replay.
    pub fn handlers(&self, config: &Config) -> Vec<(String, Arc<dyn EventHandler>)> {
        self.subscriptions(config)
            .into_iter()
            .map(|subscription| (subscription.consumer, subscription.handler))
            .collect()
    }

    /// The dead letters of every local module.
    pub fn dead_letters(&self) -> Vec<(&'static str, DeadLetters)> {
        self.local
            .iter()
            .map(|module| (module.name(), DeadLetters::new(module.database().clone())))
            .collect()
    }

    /// An in-process bus carries events between local modules only: a local consumer of a
    /// remote module's events would wait forever, so that is a start-up error.
    fn check_event_sources(&self, config: &Config) -> anyhow::Result<()> {
        if config.bus.kind != chassis::config::BusKind::InProcess {
            return Ok(());
        }
        for subscription in self.subscriptions(config) {
            for event_type in &subscription.event_types {
                let source = event_type.split('.').next().unwrap_or_default();
                let remote = self.entries.iter().any(|entry| {
                    entry.name == source && matches!(entry.placement, Placement::Remote(_))
                });
                if remote {
                    let consumer_module =
                        subscription.consumer.split('.').next().unwrap_or_default();
                    anyhow::bail!(
                        "consumer {} needs {event_type} events from the remote module {source}, which an \
                         in-process bus cannot carry: run {source} in this process (modules.{source}.mode = \"local\"), \
                         or run {consumer_module} where {source} runs (modules.{consumer_module}.mode = \"remote\" \
                         and modules.{consumer_module}.url), or carry events through a broker (bus.kind = \"nats\" \
                         and bus.url)",
                        subscription.consumer
                    );
                }
            }
        }
        self.check_event_destinations()
    }

    /// The reverse of the check above: an in-process bus cannot get a local module's events
    /// to a consumer in another process either; the relay would mark them sent to nobody.
    /// So a process that publishes what a remote consumer needs refuses to start.
    fn check_event_destinations(&self) -> anyhow::Result<()> {
        let consumers = [(
            notifications_contract::MODULE,
            &notifications_contract::CONSUMED_EVENT_TYPES[..],
        )];
        for (consumer, event_types) in consumers {
            let remote = self.entries.iter().any(|entry| {
                entry.name == consumer && matches!(entry.placement, Placement::Remote(_))
            });
            if !remote {
                continue;
            }
            let lost: Vec<&str> = event_types
                .iter()
                .copied()
                .filter(|event_type| {
                    let source = event_type.split('.').next().unwrap_or_default();
                    self.local.iter().any(|module| module.name() == source)
                })
                .collect();
            if !lost.is_empty() {
                anyhow::bail!(
                    "{consumer} runs in another process (modules.{consumer}.mode = \"remote\") and consumes {}, \
                     which this process publishes; an in-process bus cannot carry events between processes: \
                     run {consumer} here (modules.{consumer}.mode = \"local\"), or set modules.{consumer}.mode = \"off\" \
                     to run without it, or carry events through a broker (bus.kind = \"nats\" and bus.url)",
                    lost.join(", ")
                );
            }
        }
        Ok(())
    }

    /// Subscribes the local consumers and starts one outbox relay per local module.
    pub async fn start_events(
        &self,
        config: &Config,
    ) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
        for subscription in self.subscriptions(config) {
            let consumer = subscription.consumer.clone();
            self.bus
                .subscribe(subscription)
                .await
                .with_context(|| format!("cannot subscribe consumer {consumer}"))?;
        }
        Ok(self
            .local
            .iter()
            .map(|module| {
                OutboxRelay::new(
                    module.name(),
                    module.database().clone(),
                    Arc::clone(&self.bus),
                    config.events.relay(),
                )
                .spawn()
            })
            .collect())
    }

    /// Applies the pending migrations of every local module; answers what was applied.
    pub async fn migrate(&self) -> anyhow::Result<Vec<(&'static str, Vec<String>)>> {
        let mut applied = Vec::new();
        for module in &self.local {
            let versions = module
                .database()
                .migrate(module.migrations())
                .await
                .with_context(|| format!("module {}: migrations failed", module.name()))?;
            applied.push((module.name(), versions));
        }
        Ok(applied)
    }

    /// The OpenAPI document of this process: the local modules' routes, amounts in the
    /// shop's `currency`.
    pub fn openapi(&self, currency: &str) -> utoipa::openapi::OpenApi {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let mut doc = utoipa::openapi::OpenApiBuilder::new()
            .info(
                utoipa::openapi::InfoBuilder::new()
                    .title("Bazaar")
                    .version(env!("CARGO_PKG_VERSION"))
                    .description(Some("E-commerce backend: a modular monolith built for later extraction into services"))
                    .build(),
            )
            .build();
        for module in &self.local {
            doc.merge(module.openapi());
        }
        let components = doc.components.get_or_insert_with(Default::default);
        for scheme in ["admin_token", "service_token"] {
            components.add_security_scheme(
                scheme,
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
        chassis::http::complete_openapi(&mut doc);
        chassis::money::document_currency(&mut doc, currency);
        doc
    }

    pub fn backend_summary(&self) -> Vec<(&'static str, Backend)> {
        self.local
            .iter()
            .map(|module| (module.name(), module.database().backend()))
            .collect()
    }
}

/// Migrates, then serves the API on `listener` until SIGTERM / Ctrl-C; in-flight requests
/// get `server.shutdown_timeout` to finish.
pub async fn serve(config: Config, listener: TcpListener) -> anyhow::Result<()> {
    start(config, listener).await?.await?;
    tracing::info!("bazaar stopped");
    Ok(())
}

/// Composes and migrates, then answers the running server: a future that ends when the
/// server stops, and a handle to stop it.
pub async fn start(
    config: Config,
    listener: TcpListener,
) -> anyhow::Result<actix_web::dev::Server> {
    let composition = compose(&config).await?;
    for module in &composition.local {
        module
            .database()
            .serve_exclusively()
            .with_context(|| format!("module {}: cannot serve its database", module.name()))?;
    }
    for (module, versions) in composition.migrate().await? {
        if !versions.is_empty() {
            tracing::info!(module, ?versions, "applied migrations");
        }
    }
    let _relays = composition.start_events(&config).await?;
    let _workers: Vec<_> = composition
        .local
        .iter()
        .flat_map(|module| module.spawn_workers())
        .collect();
    if config.auth.admin_token.is_none() {
        tracing::warn!(
            "auth.admin_token is not set: admin endpoints answer 401; set BAZAAR__AUTH__ADMIN_TOKEN or [auth] admin_token"
        );
    }
    if config.auth.service_token.is_none() {
        tracing::warn!(
            "auth.service_token is not set: /internal endpoints answer 401; set BAZAAR__AUTH__SERVICE_TOKEN or [auth] service_token"
        );
    }
    let operations = Arc::new(Operations {
        bus: Arc::clone(&composition.bus),
        modules: composition.entries.clone(),
        openapi: composition.openapi(&config.shop.currency),
    });
    let tokens = web::Data::new(Tokens::from_settings(&config.auth));
    let modules = composition.local.clone();
    let address = listener.local_addr()?;
    let mut server = HttpServer::new(move || {
        let operations = Arc::clone(&operations);
        let modules = modules.clone();
        App::new()
            .wrap(problem_for_error_responses())
            .wrap(from_fn(record_request_metrics))
            .wrap(TracingLogger::default())
            .app_data(tokens.clone())
            .configure(configure_extractors)
            .configure(move |cfg| operations.configure(cfg))
            .configure(move |cfg| {
                for module in &modules {
                    module.configure(cfg);
                }
            })
    })
    .listen(listener)?
    .shutdown_timeout(config.server.shutdown_timeout.as_secs());
    if let Some(workers) = config.server.workers {
        server = server.workers(workers);
    }
    let local: Vec<String> = composition
        .backend_summary()
        .iter()
        .map(|(name, backend)| format!("{name} ({})", backend.as_str()))
        .collect();
    tracing::info!(%address, modules = ?local, "bazaar is serving");
    Ok(server.run())
}
