use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An event as it travels: `{id, type, source_module, occurred_at, key, trace_context,
/// payload}` in JSON. The payload carries what consumers need, so that none calls back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique per event; consumers record it in their inbox to apply each event once.
    pub id: Uuid,
    /// `<module>.<what_happened>`, e.g. `catalog.product_created`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub source_module: String,
    pub occurred_at: DateTime<Utc>,
    /// The aggregate the event is about (a product id, an order id): delivery is in order
    /// per key.
    pub key: String,
    /// W3C trace context (`traceparent`, `tracestate`) of the change that raised the event.
    #[serde(default)]
    pub trace_context: BTreeMap<String, String>,
    pub payload: serde_json::Value,
}

impl Envelope {
    /// A new event about `key`, raised now.
    pub fn new(
        source_module: &str,
        event_type: &str,
        key: impl ToString,
        payload: &impl Serialize,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            id: Uuid::now_v7(),
            event_type: event_type.to_owned(),
            source_module: source_module.to_owned(),
            occurred_at: Utc::now(),
            key: key.to_string(),
            trace_context: BTreeMap::new(),
            payload: serde_json::to_value(payload)?,
        })
    }

    /// The payload as the event type's struct.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_form_has_the_fields_of_the_spec() {
        let event = Envelope::new(
            "catalog",
            "catalog.price_changed",
            "p-1",
            &serde_json::json!({"amount": 5}),
        )
        .expect("serializes");
        let json = serde_json::to_value(&event).expect("serializes");
        for field in [
            "id",
            "type",
            "source_module",
            "occurred_at",
            "key",
            "trace_context",
            "payload",
        ] {
            assert!(json.get(field).is_some(), "{field} in {json}");
        }
        assert_eq!(json["type"], "catalog.price_changed");
        let back: Envelope = serde_json::from_value(json).expect("parses");
        assert_eq!(back, event);
        assert_eq!(
            back.payload_as::<serde_json::Value>().expect("payload")["amount"],
            5
        );
    }
}
