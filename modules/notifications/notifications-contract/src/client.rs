use async_trait::async_trait;
use chassis::remote::{RemoteClient, RemoteSettings};
use chassis::secret::Secret;
use url::Url;
use uuid::Uuid;

use crate::dto::Delivery;
use crate::error::NotificationsError;
use crate::port::Notifications;

/// The [`Notifications`] port over HTTP, for processes where notifications runs elsewhere.
/// Its one call is a read, so it may be retried.
#[derive(Debug, Clone)]
pub struct HttpNotifications {
    remote: RemoteClient,
}

impl HttpNotifications {
    /// `base_url` is the notifications process's root, e.g. `http://notifications:8080/`.
    pub fn new(
        base_url: Url,
        service_token: Option<Secret>,
        settings: RemoteSettings,
    ) -> Result<Self, NotificationsError> {
        RemoteClient::new(crate::MODULE, base_url, service_token, settings)
            .map(|remote| Self { remote })
            .map_err(NotificationsError::from)
    }

    /// The underlying client, for readiness probes.
    pub fn remote(&self) -> &RemoteClient {
        &self.remote
    }
}

#[async_trait]
impl Notifications for HttpNotifications {
    async fn deliveries(&self, order_id: Uuid) -> Result<Vec<Delivery>, NotificationsError> {
        Ok(self
            .remote
            .get(
                "/internal/notifications/deliveries",
                &[("order_id", order_id.to_string())],
            )
            .await?)
    }
}
