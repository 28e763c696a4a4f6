use std::sync::Arc;

use actix_web::web;
use catalog_contract::{Catalog, CatalogSettings};
use chassis::db::{Database, Migrations};
use chassis::module::LocalModule;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use utoipa::OpenApi;

use crate::http::{self, CatalogApi};
use crate::service::CatalogService;

static SQLITE_MIGRATIONS: EmbeddedMigrations =
    embed_migrations!("../../../migrations/catalog/sqlite");
static POSTGRES_MIGRATIONS: EmbeddedMigrations =
    embed_migrations!("../../../migrations/catalog/postgres");

/// The catalog's migrations for both backends.
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: &SQLITE_MIGRATIONS,
    postgres: &POSTGRES_MIGRATIONS,
};

/// The catalog running in this process: what the composition root wires.
#[derive(Debug, Clone)]
pub struct CatalogModule {
    db: Database,
    service: CatalogService,
}

impl CatalogModule {
    /// `currency` is the shop's one currency (`shop.currency`).
    pub fn new(db: Database, currency: impl Into<String>, settings: &CatalogSettings) -> Self {
        let service = CatalogService::new(db.clone(), currency, settings);
        Self { db, service }
    }

    /// The port, for other modules in this process.
    pub fn port(&self) -> Arc<dyn Catalog> {
        Arc::new(self.service.clone())
    }

    /// The service itself, for the CLI (`bazaar demo`) and tests.
    pub fn service(&self) -> &CatalogService {
        &self.service
    }
}

impl LocalModule for CatalogModule {
    fn name(&self) -> &'static str {
        catalog_contract::MODULE
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
        CatalogApi::openapi()
    }
}
