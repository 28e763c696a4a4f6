//! Money as every module speaks it: integer minor units in the shop's one currency.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An amount of money in integer minor units (cents), in the shop's one currency.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct Money {
    /// Minor units, e.g. 1999 for 19.99.
    #[serde(deserialize_with = "crate::integer::exact")]
    pub amount: i64,
    /// ISO 4217 code; must be the shop's currency.
    #[schema(example = "EUR")]
    pub currency: String,
}

impl Money {
    pub fn new(amount: i64, currency: impl Into<String>) -> Self {
        Self {
            amount,
            currency: currency.into(),
        }
    }

    /// Nothing, in `currency`.
    pub fn zero(currency: impl Into<String>) -> Self {
        Self::new(0, currency)
    }
}
