use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The `[orders]` config section. It lives in the contract so that every process parses
/// the same config file, whether or not orders run in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrdersSettings {
    /// How long `POST /orders` waits for the saga before answering the order as `pending`.
    #[serde(with = "humantime_serde")]
    pub sync_wait: Duration,
    /// How long a saga may keep retrying unreachable peers before it compensates and
    /// rejects the order with `dependency_unavailable`.
    #[serde(with = "humantime_serde")]
    pub saga_deadline: Duration,
    /// How often the recovery worker looks for sagas to resume.
    #[serde(with = "humantime_serde")]
    pub recovery_interval: Duration,
    /// How long one process owns a running saga; another process resumes it after that.
    #[serde(with = "humantime_serde")]
    pub saga_lease: Duration,
    /// Most orders whose saga this process runs at once after placing them; past it,
    /// `POST /orders` answers 503 with `Retry-After` and creates nothing, so that a flood
    /// cannot queue work (and memory) without end.
    pub max_sagas_in_flight: usize,
}

impl Default for OrdersSettings {
    fn default() -> Self {
        Self {
            sync_wait: Duration::from_secs(2),
            saga_deadline: Duration::from_secs(300),
            recovery_interval: Duration::from_secs(1),
            saga_lease: Duration::from_secs(30),
            max_sagas_in_flight: 256,
        }
    }
}

impl OrdersSettings {
    /// Checks the section; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.saga_deadline <= self.sync_wait {
            return Err("orders.saga_deadline: must be longer than orders.sync_wait".into());
        }
        if self.recovery_interval.is_zero() {
            return Err("orders.recovery_interval: must be above 0".into());
        }
        if self.max_sagas_in_flight == 0 {
            return Err("orders.max_sagas_in_flight: must be at least 1".into());
        }
        if self.saga_lease < Duration::from_secs(1) {
            return Err("orders.saga_lease: must be at least 1s".into());
        }
        Ok(())
    }
}
