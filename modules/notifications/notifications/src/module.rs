use std::path::Path;
use std::sync::Arc;

use actix_web::web;
use async_trait::async_trait;
use chassis::db::{Database, Migrations};
use chassis::events::dead_letters::DeadLetters;
use chassis::events::{Envelope, EventHandler, HandlerError, RetryPolicy, Subscription};
use chassis::module::LocalModule;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use notifications_contract::{Notifications, NotificationsSettings};
use utoipa::OpenApi;

use crate::http::{self, NotificationsApi};
use crate::service::{CONSUMER, EVENT_TYPES, NotificationsService};

static SQLITE_MIGRATIONS: EmbeddedMigrations =
    embed_migrations!("../../../migrations/notifications/sqlite");
static POSTGRES_MIGRATIONS: EmbeddedMigrations =
    embed_migrations!("../../../migrations/notifications/postgres");

/// Notifications' migrations for both backends.
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: &SQLITE_MIGRATIONS,
    postgres: &POSTGRES_MIGRATIONS,
};

/// Notifications running in this process: what the composition root wires.
#[derive(Debug, Clone)]
pub struct NotificationsModule {
    db: Database,
    service: NotificationsService,
}

/// The module's event handler: records the deliveries an event asks for, once.
#[derive(Debug, Clone)]
pub struct NotificationsHandler {
    service: NotificationsService,
}

#[async_trait]
impl EventHandler for NotificationsHandler {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        self.service
            .handle(event)
            .await
            .map(|_| ())
            .map_err(HandlerError::new)
    }
}

impl NotificationsModule {
    /// `data_dir` is `data_dir` of the config (the `file` channel writes under
    /// `<data_dir>/outbox-mail/`); `settings` is the validated `[notifications]` section.
    pub fn new(db: Database, data_dir: &Path, settings: &NotificationsSettings) -> Self {
        let service = NotificationsService::new(db.clone(), data_dir, settings);
        Self { db, service }
    }

    /// The port, for other modules in this process.
    pub fn port(&self) -> Arc<dyn Notifications> {
        Arc::new(self.service.clone())
    }

    /// The service itself, for the CLI and tests.
    pub fn service(&self) -> &NotificationsService {
        &self.service
    }

    /// The handler of the module's subscription (for dead-letter replays).
    pub fn handler(&self) -> Arc<dyn EventHandler> {
        Arc::new(NotificationsHandler {
            service: self.service.clone(),
        })
    }
}

impl LocalModule for NotificationsModule {
    fn name(&self) -> &'static str {
        notifications_contract::MODULE
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
        NotificationsApi::openapi()
    }

    /// One consumer, `notifications`, for the order outcomes and refunds (customer
    /// e-mails), `catalog.stock_low` (the operator's e-mail) and every event type a webhook
    /// may subscribe to.
    fn subscriptions(&self) -> Vec<Subscription> {
        vec![Subscription {
            consumer: CONSUMER.to_owned(),
            event_types: EVENT_TYPES.iter().map(|t| (*t).to_owned()).collect(),
            handler: self.handler(),
            dead_letters: Arc::new(DeadLetters::new(self.db.clone())),
            retry: RetryPolicy::default(),
        }]
    }

    /// The delivery workers, one for e-mails and one for webhooks.
    fn spawn_workers(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.service.spawn_workers()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subscription_consumes_exactly_what_the_contract_declares() {
        let mut subscribed = EVENT_TYPES.to_vec();
        let mut declared = notifications_contract::CONSUMED_EVENT_TYPES.to_vec();
        subscribed.sort_unstable();
        declared.sort_unstable();
        assert_eq!(subscribed, declared);
    }
}
