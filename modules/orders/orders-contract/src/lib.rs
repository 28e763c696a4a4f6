//! The orders module's contract: everything another module may know about orders.
//!
//! It holds the [`Orders`] port (read an order), its DTOs, its error enum, its event types
//! — which carry what a consumer needs (customer, lines, total, reason), so that none calls
//! back — and [`HttpOrders`], the remote client over `/internal/orders/…`. Other modules
//! depend on this crate only, never on the `orders` implementation crate. It may depend on
//! the chassis without features and on nothing else of Bazaar.

mod client;
mod dto;
mod error;
mod events;
mod port;
mod settings;

pub use client::HttpOrders;
pub use dto::{Order, OrderLine, OrderStatus, RejectionReason};
pub use error::OrdersError;
pub use events::{OrderCancelled, OrderConfirmed, OrderRejected, event_types};
#[cfg(feature = "mocks")]
pub use port::MockOrders;
pub use port::{Orders, observed};
pub use settings::OrdersSettings;

pub use chassis::money::Money;

/// The module's name, as used in config (`modules.orders`), events and metrics.
pub const MODULE: &str = "orders";
