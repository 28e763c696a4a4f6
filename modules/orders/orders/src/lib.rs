//! The orders module: orders, the order saga and idempotency keys.
//!
//! It owns its tables (see `schema.rs` and `migrations/orders/`) and no other module reads
//! them. It implements the [`orders_contract::Orders`] port, serves the public `/orders`
//! routes and the `/internal/orders/*` routes behind `HttpOrders`, and runs each order's
//! saga against the catalog and billing through their ports only — local or remote, it
//! cannot tell. It depends on the chassis, its own contract crate and the catalog's and
//! billing's contract crates, never on their implementation crates.

mod domain;
mod error;
mod http;
mod module;
mod repository;
mod saga;
mod schema;
mod service;

pub use domain::{PaymentMethod, PlaceOrder, PlaceOrderLine};
pub use error::Error;
pub use module::{MIGRATIONS, OrdersModule};
pub use service::OrdersService;
