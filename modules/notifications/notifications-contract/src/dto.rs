use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use uuid::Uuid;

/// How a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// An e-mail sent through SMTP (`notifications.smtp_url`).
    Email,
    /// An e-mail written as an `.eml` file under `<data_dir>/outbox-mail/` (no SMTP server
    /// configured: the embedded default).
    File,
    /// A signed POST of the event's envelope to a registered webhook.
    Webhook,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::File => "file",
            Channel::Webhook => "webhook",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "email" => Some(Channel::Email),
            "file" => Some(Channel::File),
            "webhook" => Some(Channel::Webhook),
            _ => None,
        }
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Delivered.
    Sent,
    /// Not delivered yet: an attempt is due (`attempts` 0 for one never tried yet), or one
    /// failed and another follows after a backoff.
    Retrying,
    /// Every attempt failed (`notifications.max_attempts`): given up, see `last_error`.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Retrying => "retrying",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "sent" => Some(DeliveryStatus::Sent),
            "retrying" => Some(DeliveryStatus::Retrying),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

impl std::fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message to one recipient (an e-mail address, or a webhook's URL) caused by one
/// event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    pub id: Uuid,
    /// The event that caused it.
    pub event_id: Uuid,
    pub channel: Channel,
    /// The e-mail address, or the webhook's URL.
    pub recipient: String,
    /// The template of an e-mail (`order_confirmed`, …), or the event type of a webhook
    /// call.
    pub template: String,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A webhook subscription. Its secret is never answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    /// The event types it receives, e.g. `orders.order_confirmed`.
    #[schema(value_type = Vec<EventType>)]
    pub events: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// Body of `POST /notifications/webhooks`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// An `http` or `https` URL without credentials, up to 2048 characters. Its host must
    /// resolve to addresses the target policy allows (`notifications.allow_private_webhooks`).
    #[schema(
        max_length = 2048,
        pattern = r"^\s*[Hh][Tt][Tt][Pp][Ss]?://[^\s\x00/?#@\\]+(?:[/?#][^\s\x00]*)?\s*$"
    )]
    pub url: String,
    /// At least one event type.
    #[schema(value_type = Vec<EventType>, min_items = 1)]
    pub events: Vec<String>,
    /// The HMAC-SHA256 key of `X-Bazaar-Signature`: 1 to 1024 characters, not only spaces.
    #[schema(
        min_length = 1,
        max_length = 1024,
        pattern = r"^[^\x00]*[^\x00\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00]*$"
    )]
    pub secret: String,
}

/// The OpenAPI schema of an event type a webhook may receive: one of
/// [`crate::CONSUMED_EVENT_TYPES`].
#[derive(Debug)]
pub(crate) struct EventType;

impl utoipa::PartialSchema for EventType {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(crate::CONSUMED_EVENT_TYPES))
            .examples(["orders.order_confirmed"])
            .into()
    }
}

impl ToSchema for EventType {}

impl std::fmt::Debug for CreateWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateWebhook")
            .field("url", &self.url)
            .field("events", &self.events)
            .field("secret", &"[redacted]")
            .finish()
    }
}
