//! What the composition root needs from a module that runs in this process. Every module's
//! implementation crate provides one value of this trait, so the root treats them alike:
//! migrate, mount routes, document, probe.

use actix_web::web;

use crate::db::{Database, Migrations};
use crate::events::Subscription;

pub trait LocalModule: Send + Sync {
    /// The module's name: `catalog`, `orders`, `billing`, `notifications`.
    fn name(&self) -> &'static str;

    /// The module's own database; no other module ever sees it.
    fn database(&self) -> &Database;

    /// The module's embedded migrations.
    fn migrations(&self) -> Migrations;

    /// Mounts the module's public and `/internal/*` routes.
    fn configure(&self, cfg: &mut web::ServiceConfig);

    /// The OpenAPI document of the module's routes.
    fn openapi(&self) -> utoipa::openapi::OpenApi;

    /// The events the module reacts to, each with its handler; none by default. Consumer
    /// names are `<module>` or `<module>.<purpose>`, and handlers record what they handled
    /// in the module's inbox (`chassis::events::Inbox`).
    fn subscriptions(&self) -> Vec<Subscription> {
        Vec::new()
    }

    /// Starts the module's background work (a recovery worker, say) on the current
    /// runtime; none by default. Called once by `bazaar serve`, after migrations.
    fn spawn_workers(&self) -> Vec<tokio::task::JoinHandle<()>> {
        Vec::new()
    }
}
