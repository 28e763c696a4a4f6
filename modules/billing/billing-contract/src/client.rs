use async_trait::async_trait;
use chassis::remote::{Idempotency, RemoteClient, RemoteSettings};
use chassis::secret::Secret;
use url::Url;
use uuid::Uuid;

use crate::dto::{ChargeRequest, Payment};
use crate::error::BillingError;
use crate::port::Billing;

/// The [`Billing`] port over HTTP, for processes where billing runs elsewhere. Both calls
/// are idempotent per order id, so both may be retried.
#[derive(Debug, Clone)]
pub struct HttpBilling {
    remote: RemoteClient,
}

impl HttpBilling {
    /// `base_url` is the billing process's root, e.g. `http://billing:8080/`.
    pub fn new(
        base_url: Url,
        service_token: Option<Secret>,
        settings: RemoteSettings,
    ) -> Result<Self, BillingError> {
        RemoteClient::new(crate::MODULE, base_url, service_token, settings)
            .map(|remote| Self { remote })
            .map_err(BillingError::from)
    }

    /// The underlying client, for readiness probes.
    pub fn remote(&self) -> &RemoteClient {
        &self.remote
    }
}

#[async_trait]
impl Billing for HttpBilling {
    async fn charge(&self, request: ChargeRequest) -> Result<Payment, BillingError> {
        Ok(self
            .remote
            .post(
                "/internal/billing/charges",
                &request,
                Idempotency::Idempotent,
            )
            .await?)
    }

    async fn refund(&self, order_id: Uuid) -> Result<Payment, BillingError> {
        let path = format!("/internal/billing/payments/{order_id}/refund");
        Ok(self
            .remote
            .post(&path, &serde_json::json!({}), Idempotency::Idempotent)
            .await?)
    }
}
