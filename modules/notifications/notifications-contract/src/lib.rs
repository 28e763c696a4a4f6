//! The notifications module's contract: everything another module may know about
//! notifications.
//!
//! It holds the [`Notifications`] port (read the deliveries made for an order), its DTOs
//! ([`Delivery`], [`Webhook`]), its error enum, the `[notifications]` config section and
//! [`HttpNotifications`], the remote client that implements the port over
//! `/internal/notifications/…`. Notifications publishes no events: it consumes the other
//! modules' events. Other modules depend on this crate only, never on the `notifications`
//! implementation crate. It may depend on the chassis without features and on nothing else
//! of Bazaar.

mod client;
mod dto;
mod error;
mod port;
mod settings;

pub use client::HttpNotifications;
pub use dto::{Channel, CreateWebhook, Delivery, DeliveryStatus, Webhook};
pub use error::NotificationsError;
#[cfg(feature = "mocks")]
pub use port::MockNotifications;
pub use port::{Notifications, observed};
pub use settings::NotificationsSettings;

/// The module's name, as used in config (`modules.notifications`), consumers and metrics.
pub const MODULE: &str = "notifications";

/// The event types notifications consumes, wherever it runs. A process that publishes any
/// of them must get them to notifications, even when notifications runs in another
/// process: the composition root checks it at start-up. Spelled out here because this
/// crate may not depend on the publishers' contracts; the notifications crate's tests
/// check that its subscription is exactly this list.
pub const CONSUMED_EVENT_TYPES: [&str; 9] = [
    "orders.order_confirmed",
    "orders.order_rejected",
    "orders.order_cancelled",
    "billing.payment_captured",
    "billing.payment_declined",
    "billing.payment_refunded",
    "catalog.product_created",
    "catalog.price_changed",
    "catalog.stock_low",
];
