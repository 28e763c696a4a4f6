//! What the composition root needs from a module that runs in this process. Every module's
//! implementation crate provides one value of this trait, so the root treats them alike:
//! migrate, mount routes, document, probe.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

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

/// The ports a process's modules offer each other, by port type: `Arc<dyn Catalog>`, say,
/// whether the catalog runs here or is reached over HTTP. The composition root fills it as it
/// builds each module (locally or as a remote client) and hands it to the modules built
/// after, so the root needs no field, and no match arm, per module.
#[derive(Default)]
pub struct Ports(HashMap<TypeId, Box<dyn Any + Send + Sync>>);

impl Ports {
    /// Offers `port` to the modules built after this one; a second offer of one port type
    /// replaces the first.
    pub fn provide<P: ?Sized + Send + Sync + 'static>(&mut self, port: Arc<P>) {
        self.0.insert(TypeId::of::<Arc<P>>(), Box::new(port));
    }

    /// The port of type `P`, if a module offered one.
    pub fn get<P: ?Sized + Send + Sync + 'static>(&self) -> Option<Arc<P>> {
        self.0
            .get(&TypeId::of::<Arc<P>>())
            .and_then(|port| port.downcast_ref::<Arc<P>>())
            .map(Arc::clone)
    }
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ports")
            .field("count", &self.0.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    trait Greeter: Send + Sync {
        fn greet(&self) -> &'static str;
    }
    struct English;
    impl Greeter for English {
        fn greet(&self) -> &'static str {
            "hello"
        }
    }

    #[test]
    fn ports_answer_what_was_provided_by_trait_object_type() {
        let mut ports = Ports::default();
        assert!(ports.get::<dyn Greeter>().is_none());
        ports.provide::<dyn Greeter>(Arc::new(English));
        ports.provide(Arc::new(42_u32));
        assert_eq!(ports.get::<dyn Greeter>().map(|g| g.greet()), Some("hello"));
        assert_eq!(ports.get::<u32>().as_deref(), Some(&42));
        assert!(ports.get::<u64>().is_none());
    }
}
