use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The `[billing]` config section. It lives in the contract so that every process parses
/// the same config file, whether or not billing runs in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BillingSettings {
    /// The payment gateway: `simulated` (deterministic on the token, like a provider's
    /// test cards) is the only one in this version.
    pub gateway: String,
    /// Longest wait for the payment gateway on any call.
    #[serde(with = "humantime_serde")]
    pub gateway_timeout: Duration,
}

impl Default for BillingSettings {
    fn default() -> Self {
        Self {
            gateway: "simulated".into(),
            // `tok_slow` answers after 10 s, and must succeed.
            gateway_timeout: Duration::from_secs(15),
        }
    }
}

impl BillingSettings {
    /// Checks the section; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.gateway != "simulated" {
            return Err(format!(
                "billing.gateway: {:?} is not a gateway of this version (use \"simulated\")",
                self.gateway
            ));
        }
        if self.gateway_timeout.is_zero() {
            return Err("billing.gateway_timeout: must be above 0".into());
        }
        Ok(())
    }
}
