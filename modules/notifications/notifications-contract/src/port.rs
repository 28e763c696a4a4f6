use std::sync::Arc;

use async_trait::async_trait;
use chassis::port::{Mode, observe};
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

/// The port as the composition root hands it out, local or remote alike: each call is a
/// span and a latency sample (`chassis::port::observe`), so an order's trace and metrics
/// have the same shape wherever the module runs.
pub fn observed(port: Arc<dyn Notifications>, mode: Mode) -> Arc<dyn Notifications> {
    Arc::new(Observed { port, mode })
}

struct Observed {
    port: Arc<dyn Notifications>,
    mode: Mode,
}

#[async_trait]
impl Notifications for Observed {
    async fn deliveries(&self, order_id: Uuid) -> Result<Vec<Delivery>, NotificationsError> {
        observe(
            crate::MODULE,
            "deliveries",
            self.mode,
            self.port.deliveries(order_id),
        )
        .await
    }
}
