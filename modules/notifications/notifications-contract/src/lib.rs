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
pub use port::Notifications;
pub use settings::NotificationsSettings;

/// The module's name, as used in config (`modules.notifications`), consumers and metrics.
pub const MODULE: &str = "notifications";
