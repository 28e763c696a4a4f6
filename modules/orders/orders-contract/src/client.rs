use async_trait::async_trait;
use chassis::remote::{RemoteClient, RemoteSettings};
use chassis::secret::Secret;
use url::Url;
use uuid::Uuid;

use crate::dto::Order;
use crate::error::OrdersError;
use crate::port::Orders;

/// The [`Orders`] port over HTTP, for processes where orders run elsewhere.
#[derive(Debug, Clone)]
pub struct HttpOrders {
    remote: RemoteClient,
}

impl HttpOrders {
    /// `base_url` is the orders process's root, e.g. `http://orders:8080/`.
    pub fn new(
        base_url: Url,
        service_token: Option<Secret>,
        settings: RemoteSettings,
    ) -> Result<Self, OrdersError> {
        RemoteClient::new(crate::MODULE, base_url, service_token, settings)
            .map(|remote| Self { remote })
            .map_err(OrdersError::from)
    }

    /// The underlying client, for readiness probes.
    pub fn remote(&self) -> &RemoteClient {
        &self.remote
    }
}

#[async_trait]
impl Orders for HttpOrders {
    async fn order(&self, id: Uuid) -> Result<Order, OrdersError> {
        Ok(self
            .remote
            .get(&format!("/internal/orders/{id}"), &[])
            .await?)
    }
}
