use async_trait::async_trait;
use uuid::Uuid;

use crate::dto::Delivery;
use crate::error::NotificationsError;

/// Notifications as other modules see it: what was sent about an order.
///
/// Every method MUST return [`NotificationsError::Unavailable`] when notifications (its
/// database) cannot be reached — callers MUST treat that as "try again later".
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait Notifications: Send + Sync {
    /// The deliveries (e-mails and webhook calls) caused by events about `order_id`, oldest
    /// first, whatever their status. An order nothing was sent about MUST answer an empty
    /// list, not an error.
    async fn deliveries(&self, order_id: Uuid) -> Result<Vec<Delivery>, NotificationsError>;
}
