use std::sync::Arc;

use actix_web::web;
use billing_contract::Billing;
use catalog_contract::Catalog;
use chassis::db::{Database, Migrations};
use chassis::module::LocalModule;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use orders_contract::{Orders, OrdersSettings};
use utoipa::OpenApi;

use crate::http::{self, OrdersApi};
use crate::service::OrdersService;

static SQLITE_MIGRATIONS: EmbeddedMigrations =
    embed_migrations!("../../../migrations/orders/sqlite");
static POSTGRES_MIGRATIONS: EmbeddedMigrations =
    embed_migrations!("../../../migrations/orders/postgres");

/// The orders module's migrations for both backends.
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: &SQLITE_MIGRATIONS,
    postgres: &POSTGRES_MIGRATIONS,
};

/// The orders module running in this process: what the composition root wires.
#[derive(Debug, Clone)]
pub struct OrdersModule {
    db: Database,
    service: OrdersService,
}

impl OrdersModule {
    /// `catalog` and `billing` are those modules' ports, local or remote.
    pub fn new(
        db: Database,
        currency: impl Into<String>,
        settings: &OrdersSettings,
        catalog: Arc<dyn Catalog>,
        billing: Arc<dyn Billing>,
    ) -> Self {
        let service = OrdersService::new(db.clone(), currency, settings.clone(), catalog, billing);
        Self { db, service }
    }

    /// A module around an existing service (tests build the service with mock peers).
    pub fn from_service(service: OrdersService) -> Self {
        Self {
            db: service.database().clone(),
            service,
        }
    }

    /// The port, for other modules in this process.
    pub fn port(&self) -> Arc<dyn Orders> {
        Arc::new(self.service.clone())
    }

    pub fn service(&self) -> &OrdersService {
        &self.service
    }
}

impl LocalModule for OrdersModule {
    fn name(&self) -> &'static str {
        orders_contract::MODULE
    }

    fn database(&self) -> &Database {
        &self.db
    }

    fn migrations(&self) -> Migrations {
        MIGRATIONS
    }

    fn configure(&self, cfg: &mut web::ServiceConfig) {
        http::configure(cfg, self.service.clone());
    }

    fn openapi(&self) -> utoipa::openapi::OpenApi {
        OrdersApi::openapi()
    }

    fn spawn_workers(&self) -> Vec<tokio::task::JoinHandle<()>> {
        vec![self.service.spawn_recovery()]
    }
}
