use async_trait::async_trait;
use chassis::remote::{Idempotency, RemoteClient, RemoteSettings};
use chassis::secret::Secret;
use url::Url;
use uuid::Uuid;

use crate::dto::{LookupRequest, LookupResponse, Product, Reservation, ReserveRequest, StockLine};
use crate::error::CatalogError;
use crate::port::Catalog;

/// The [`Catalog`] port over HTTP, for processes where the catalog runs elsewhere. Every
/// call is idempotent per order id, so every call may be retried.
#[derive(Debug, Clone)]
pub struct HttpCatalog {
    remote: RemoteClient,
}

impl HttpCatalog {
    /// `base_url` is the catalog process's root, e.g. `http://catalog:8080/`.
    pub fn new(
        base_url: Url,
        service_token: Option<Secret>,
        settings: RemoteSettings,
    ) -> Result<Self, CatalogError> {
        RemoteClient::new(crate::MODULE, base_url, service_token, settings)
            .map(|remote| Self { remote })
            .map_err(CatalogError::from)
    }

    /// The underlying client, for readiness probes.
    pub fn remote(&self) -> &RemoteClient {
        &self.remote
    }

    async fn transition(&self, order_id: Uuid, action: &str) -> Result<Reservation, CatalogError> {
        let path = format!("/internal/catalog/reservations/{order_id}/{action}");
        Ok(self
            .remote
            .post(&path, &serde_json::json!({}), Idempotency::Idempotent)
            .await?)
    }
}

#[async_trait]
impl Catalog for HttpCatalog {
    async fn products(&self, ids: &[Uuid]) -> Result<Vec<Product>, CatalogError> {
        let request = LookupRequest { ids: ids.to_vec() };
        let response: LookupResponse = self
            .remote
            .post(
                "/internal/catalog/products/lookup",
                &request,
                Idempotency::Idempotent,
            )
            .await?;
        Ok(response.items)
    }

    async fn reserve(
        &self,
        order_id: Uuid,
        lines: &[StockLine],
    ) -> Result<Reservation, CatalogError> {
        let request = ReserveRequest {
            lines: lines.to_vec(),
        };
        let path = format!("/internal/catalog/reservations/{order_id}");
        Ok(self
            .remote
            .post(&path, &request, Idempotency::Idempotent)
            .await?)
    }

    async fn release(&self, order_id: Uuid) -> Result<Reservation, CatalogError> {
        self.transition(order_id, "release").await
    }

    async fn commit(&self, order_id: Uuid) -> Result<Reservation, CatalogError> {
        self.transition(order_id, "commit").await
    }

    async fn restock(&self, order_id: Uuid) -> Result<Reservation, CatalogError> {
        self.transition(order_id, "restock").await
    }
}
