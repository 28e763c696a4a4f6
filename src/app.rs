use std::net::TcpListener;
use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;
use billing_contract::HttpBilling;
use catalog_contract::HttpCatalog;
use chassis::config::Placement;
use chassis::db::{Backend, Database, PoolOptions};
use chassis::events::dead_letters::DeadLetters;
use chassis::events::{EventBus, EventHandler, InProcessBus, OutboxRelay, Subscription};
use chassis::http::{
    Tokens, configure_extractors, problem_for_error_responses, record_request_metrics,
};
use chassis::module::{LocalModule, Ports};
use chassis::ops::{ModuleEntry, Operations, Probe};
use chassis::port::Mode;
use chassis::remote::RemoteClient;
use notifications_contract::HttpNotifications;
use orders_contract::HttpOrders;
use tracing_actix_web::TracingLogger;
use url::Url;

use crate::config::Config;

/// The modules of one process, wired: the local ones with their databases, the ports
/// other modules use (local or remote), and what the operations endpoints report.
pub struct Composition {
    pub local: Vec<Arc<dyn LocalModule>>,
    pub entries: Vec<ModuleEntry>,
    /// How events travel between this process's modules.
    pub bus: Arc<dyn EventBus>,
    /// Every port this process reaches (`Arc<dyn Catalog>`, …), wherever its module runs;
    /// a module that is absent here offers none.
    pub ports: Ports,
}

impl std::fmt::Debug for Composition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Composition")
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

/// Builds a module in this process from its config and the ports it needs (taken from
/// `ports`), and offers its own port there.
type BuildLocal = fn(&Config, Database, &mut Ports) -> anyhow::Result<Arc<dyn LocalModule>>;

/// Builds the remote client that reaches a module at `url`, offers its port in `ports`,
/// and answers the client for readiness probes.
type BuildRemote = fn(&Config, Url, &mut Ports) -> anyhow::Result<RemoteClient>;

/// One business module as the composition root sees it. Everything that differs from one
/// module to the next is here, so that [`compose`] is one loop for every module and every
/// placement; a new module is one more entry in [`MODULES`] (ARCHITECTURE.md, "Adding a
/// module").
#[derive(Debug)]
pub(crate) struct ModuleDescription {
    /// The module's name in config (`modules.<name>`), consumers and metrics.
    pub(crate) name: &'static str,
    /// The modules whose ports the local build takes; each must be local or remote here.
    pub(crate) needs: &'static [&'static str],
    /// The event types the module consumes wherever it runs (declared in its contract), so
    /// that a process publishing them can check they will reach it.
    pub(crate) consumes: &'static [&'static str],
    /// `None` when this binary was built without the module's cargo feature.
    pub(crate) local: Option<BuildLocal>,
    pub(crate) remote: BuildRemote,
}

/// Every business module, in the spec's order (which `/modules` follows).
pub(crate) const MODULES: [ModuleDescription; 4] = [
    ModuleDescription {
        name: catalog_contract::MODULE,
        needs: &[],
        consumes: &[],
        #[cfg(feature = "catalog")]
        local: Some(local_catalog),
        #[cfg(not(feature = "catalog"))]
        local: None,
        remote: remote_catalog,
    },
    ModuleDescription {
        name: orders_contract::MODULE,
        needs: &[catalog_contract::MODULE, billing_contract::MODULE],
        consumes: &[],
        #[cfg(feature = "orders")]
        local: Some(local_orders),
        #[cfg(not(feature = "orders"))]
        local: None,
        remote: remote_orders,
    },
    ModuleDescription {
        name: billing_contract::MODULE,
        needs: &[],
        consumes: &[],
        #[cfg(feature = "billing")]
        local: Some(local_billing),
        #[cfg(not(feature = "billing"))]
        local: None,
        remote: remote_billing,
    },
    ModuleDescription {
        name: notifications_contract::MODULE,
        needs: &[],
        consumes: &notifications_contract::CONSUMED_EVENT_TYPES,
        #[cfg(feature = "notifications")]
        local: Some(local_notifications),
        #[cfg(not(feature = "notifications"))]
        local: None,
        remote: remote_notifications,
    },
];

#[cfg(feature = "catalog")]
fn local_catalog(
    config: &Config,
    db: Database,
    ports: &mut Ports,
) -> anyhow::Result<Arc<dyn LocalModule>> {
    let module = catalog::CatalogModule::new(db, config.shop.currency.clone(), &config.catalog);
    ports.provide(catalog_contract::observed(module.port(), Mode::Local));
    // `bazaar demo` fills the local catalog through its service.
    ports.provide(Arc::new(module.clone()));
    Ok(Arc::new(module))
}

fn remote_catalog(config: &Config, url: Url, ports: &mut Ports) -> anyhow::Result<RemoteClient> {
    let client = HttpCatalog::new(
        url,
        config.auth.service_token.clone(),
        config.remote.clone(),
    )?;
    let remote = client.remote().clone();
    ports.provide(catalog_contract::observed(Arc::new(client), Mode::Remote));
    Ok(remote)
}

#[cfg(feature = "orders")]
fn local_orders(
    config: &Config,
    db: Database,
    ports: &mut Ports,
) -> anyhow::Result<Arc<dyn LocalModule>> {
    let catalog = ports
        .get::<dyn catalog_contract::Catalog>()
        .context("the catalog port is missing")?;
    let billing = ports
        .get::<dyn billing_contract::Billing>()
        .context("the billing port is missing")?;
    let module = orders::OrdersModule::new(
        db,
        config.shop.currency.clone(),
        &config.orders,
        catalog,
        billing,
    );
    ports.provide(orders_contract::observed(module.port(), Mode::Local));
    Ok(Arc::new(module))
}

fn remote_orders(config: &Config, url: Url, ports: &mut Ports) -> anyhow::Result<RemoteClient> {
    let client = HttpOrders::new(
        url,
        config.auth.service_token.clone(),
        config.remote.clone(),
    )?;
    let remote = client.remote().clone();
    ports.provide(orders_contract::observed(Arc::new(client), Mode::Remote));
    Ok(remote)
}

#[cfg(feature = "billing")]
fn local_billing(
    config: &Config,
    db: Database,
    ports: &mut Ports,
) -> anyhow::Result<Arc<dyn LocalModule>> {
    let module = billing::BillingModule::new(db, config.shop.currency.clone(), &config.billing);
    ports.provide(billing_contract::observed(module.port(), Mode::Local));
    Ok(Arc::new(module))
}

fn remote_billing(config: &Config, url: Url, ports: &mut Ports) -> anyhow::Result<RemoteClient> {
    // A charge may take as long as the payment gateway is given: the client must wait at
    // least that long, or it would give up on charges that succeed (and find them "in
    // progress" on every retry).
    let mut settings = config.remote.clone();
    settings.timeout = settings
        .timeout
        .max(config.billing.gateway_timeout + std::time::Duration::from_secs(5));
    let client = HttpBilling::new(url, config.auth.service_token.clone(), settings)?;
    let remote = client.remote().clone();
    ports.provide(billing_contract::observed(Arc::new(client), Mode::Remote));
    Ok(remote)
}

#[cfg(feature = "notifications")]
fn local_notifications(
    config: &Config,
    db: Database,
    ports: &mut Ports,
) -> anyhow::Result<Arc<dyn LocalModule>> {
    let module =
        notifications::NotificationsModule::new(db, &config.data_dir, &config.notifications);
    ports.provide(notifications_contract::observed(module.port(), Mode::Local));
    Ok(Arc::new(module))
}

fn remote_notifications(
    config: &Config,
    url: Url,
    ports: &mut Ports,
) -> anyhow::Result<RemoteClient> {
    let client = HttpNotifications::new(
        url,
        config.auth.service_token.clone(),
        config.remote.clone(),
    )?;
    let remote = client.remote().clone();
    ports.provide(notifications_contract::observed(
        Arc::new(client),
        Mode::Remote,
    ));
    Ok(remote)
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
    match config.bus.nats() {
        #[cfg(feature = "nats")]
        Some(settings) => {
            let bus = chassis::events::NatsBus::connect(settings)
                .await
                .context("bus.kind = \"nats\": the event bus cannot start")?;
            Ok(Arc::new(bus))
        }
        // Config validation refuses `nats` in a binary built without it.
        _ => Ok(Arc::new(InProcessBus::new())),
    }
}

/// [`MODULES`] in an order where every module comes after the modules it needs.
fn build_order() -> anyhow::Result<Vec<&'static ModuleDescription>> {
    let mut ordered: Vec<&'static ModuleDescription> = Vec::with_capacity(MODULES.len());
    while ordered.len() < MODULES.len() {
        let next = MODULES.iter().find(|module| {
            !ordered.iter().any(|done| done.name == module.name)
                && module
                    .needs
                    .iter()
                    .all(|need| ordered.iter().any(|done| done.name == *need))
        });
        match next {
            Some(module) => ordered.push(module),
            None => anyhow::bail!("the modules' `needs` form a cycle"),
        }
    }
    Ok(ordered)
}

/// Why a module built here cannot get the port of `peer`, which is absent here.
fn missing_peer(module: &str, peer: &str) -> anyhow::Error {
    let compiled_in = MODULES
        .iter()
        .any(|candidate| candidate.name == peer && candidate.local.is_some());
    if compiled_in {
        anyhow::anyhow!(
            "module {module} needs {peer}, which is off here (modules.{peer}.mode = \"off\"): \
             set modules.{peer}.mode = \"local\", or \"remote\" with modules.{peer}.url"
        )
    } else {
        anyhow::anyhow!(
            "module {module} needs {peer}: set modules.{peer}.mode = \"remote\" and modules.{peer}.url, \
             or build with --features {peer}"
        )
    }
}

/// Builds every module this process hosts or reaches, as config and features say: one
/// loop over [`MODULES`], whatever the placement.
pub async fn compose(config: &Config) -> anyhow::Result<Composition> {
    let bus = event_bus(config).await?;
    let mut ports = Ports::default();
    let mut local: Vec<Arc<dyn LocalModule>> = Vec::new();
    let mut entries = Vec::with_capacity(MODULES.len());
    for module in build_order()? {
        let name = module.name;
        let placement = config.placement(name)?;
        let mut probes = Vec::new();
        match &placement {
            Placement::Local => {
                let build = module
                    .local
                    .with_context(|| format!("module {name} is placed here but not compiled in"))?;
                for peer in module.needs {
                    if config.placement(peer)? == Placement::Absent {
                        return Err(missing_peer(name, peer));
                    }
                }
                let db = open_database(config, name)?;
                let built = build(config, db.clone(), &mut ports)
                    .with_context(|| format!("module {name} cannot start"))?;
                probes.push(Probe::Database(db.clone()));
                probes.push(Probe::Schema(db, built.migrations()));
                local.push(built);
            }
            Placement::Remote(url) => {
                let client = (module.remote)(config, url.clone(), &mut ports)
                    .with_context(|| format!("module {name}: cannot build its remote client"))?;
                probes.push(Probe::Peer(client));
            }
            Placement::Absent => {}
        }
        entries.push(ModuleEntry {
            name,
            placement,
            probes,
        });
    }
    // Routes, migrations, `/modules` and the relays follow the spec's order.
    let position = |name: &str| MODULES.iter().position(|module| module.name == name);
    entries.sort_by_key(|entry| position(entry.name));
    local.sort_by_key(|module| position(module.name()));
    let composition = Composition {
        local,
        entries,
        bus,
        ports,
    };
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
        for consumer in &MODULES {
            let remote = self.entries.iter().any(|entry| {
                entry.name == consumer.name && matches!(entry.placement, Placement::Remote(_))
            });
            if !remote {
                continue;
            }
            let lost: Vec<&str> = consumer
                .consumes
                .iter()
                .copied()
                .filter(|event_type| {
                    let source = event_type.split('.').next().unwrap_or_default();
                    self.local.iter().any(|module| module.name() == source)
                })
                .collect();
            if !lost.is_empty() {
                let consumer = consumer.name;
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
        instance: uuid::Uuid::new_v4(),
        bus: Arc::clone(&composition.bus),
        modules: composition.entries.clone(),
        openapi: composition.openapi(&config.shop.currency),
    });
    let _peer_check = operations.check_peers_at_startup();
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
