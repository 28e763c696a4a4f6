//! The catalog module: products, prices, stock and reservations.
//!
//! It owns its tables (see `schema.rs` and `migrations/catalog/`) and no other module
//! reads them. It implements the [`catalog_contract::Catalog`] port, serves the public
//! `/catalog/*` routes and the `/internal/catalog/*` routes behind `HttpCatalog`. It
//! depends on the chassis and on its own contract crate; it may depend on other modules'
//! contract crates, never on their implementation crates.

mod domain;
mod error;
mod http;
mod module;
mod repository;
mod schema;
mod service;

pub use domain::{NewProduct, ProductPatch, StockUpdate};
pub use error::Error;
pub use module::{CatalogModule, MIGRATIONS};
pub use service::CatalogService;
