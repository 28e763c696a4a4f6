use serde::{Deserialize, Serialize};

/// The `[catalog]` config section. It lives in the contract so that every process parses
/// the same config file, whether or not the catalog runs in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogSettings {
    /// `catalog.stock_low` is raised when a product's available stock falls below this.
    pub low_stock_threshold: i64,
}

impl Default for CatalogSettings {
    fn default() -> Self {
        Self {
            low_stock_threshold: 5,
        }
    }
}

impl CatalogSettings {
    /// Checks the section; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.low_stock_threshold < 0 {
            return Err("catalog.low_stock_threshold: must be at least 0".into());
        }
        Ok(())
    }
}
