use std::sync::Arc;

use async_trait::async_trait;
use chassis::port::{Mode, observe};
use uuid::Uuid;

use crate::dto::Order;
use crate::error::OrdersError;

/// Orders as other modules see them.
///
/// MUST return [`OrdersError::Unavailable`] when the orders module cannot be reached,
/// whether it runs in this process or not.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait Orders: Send + Sync {
    /// The order as it stands now. MUST return [`OrdersError::OrderNotFound`] for an id it
    /// does not know.
    async fn order(&self, id: Uuid) -> Result<Order, OrdersError>;
}

/// The port as the composition root hands it out, local or remote alike: each call is a
/// span and a latency sample (`chassis::port::observe`), so an order's trace and metrics
/// have the same shape wherever the module runs.
pub fn observed(port: Arc<dyn Orders>, mode: Mode) -> Arc<dyn Orders> {
    Arc::new(Observed { port, mode })
}

struct Observed {
    port: Arc<dyn Orders>,
    mode: Mode,
}

#[async_trait]
impl Orders for Observed {
    async fn order(&self, id: Uuid) -> Result<Order, OrdersError> {
        observe(crate::MODULE, "order", self.mode, self.port.order(id)).await
    }
}
