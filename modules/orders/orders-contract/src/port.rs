use async_trait::async_trait;
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
