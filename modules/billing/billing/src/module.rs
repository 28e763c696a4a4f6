use std::sync::Arc;

use actix_web::web;
use billing_contract::{Billing, BillingSettings};
use chassis::db::{Database, Migrations};
use chassis::module::LocalModule;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use utoipa::OpenApi;

use crate::gateway::PaymentGateway;
use crate::http::{self, BillingApi};
use crate::service::BillingService;

static SQLITE_MIGRATIONS: EmbeddedMigrations =
    embed_migrations!("../../../migrations/billing/sqlite");
static POSTGRES_MIGRATIONS: EmbeddedMigrations =
    embed_migrations!("../../../migrations/billing/postgres");

/// Billing's migrations for both backends.
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: &SQLITE_MIGRATIONS,
    postgres: &POSTGRES_MIGRATIONS,
};

/// Billing running in this process: what the composition root wires.
#[derive(Debug, Clone)]
pub struct BillingModule {
    db: Database,
    service: BillingService,
}

impl BillingModule {
    /// `currency` is the shop's one currency (`shop.currency`); `settings` is the validated
    /// `[billing]` section, whose only gateway is `simulated`.
    pub fn new(db: Database, currency: impl Into<String>, settings: &BillingSettings) -> Self {
        let service = BillingService::new(db.clone(), currency, settings);
        Self { db, service }
    }

    /// Like [`BillingModule::new`], with another payment gateway (tests use a simulated
    /// one with a short slow delay).
    pub fn with_gateway(
        db: Database,
        currency: impl Into<String>,
        settings: &BillingSettings,
        gateway: Arc<dyn PaymentGateway>,
    ) -> Self {
        let service = BillingService::with_gateway(db.clone(), currency, settings, gateway);
        Self { db, service }
    }

    /// The port, for other modules in this process.
    pub fn port(&self) -> Arc<dyn Billing> {
        Arc::new(self.service.clone())
    }

    /// The service itself, for the CLI and tests.
    pub fn service(&self) -> &BillingService {
        &self.service
    }
}

impl LocalModule for BillingModule {
    fn name(&self) -> &'static str {
        billing_contract::MODULE
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
        BillingApi::openapi()
    }
}
