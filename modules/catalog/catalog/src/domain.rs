//! The catalog's rules for input, independent of storage and HTTP.

use std::collections::HashSet;

use catalog_contract::{CatalogError, MAX_RESERVATION_LINES, Money, StockLine};
use chassis::money::MAX_PRICE;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::Error;

pub(crate) const SKU_MAX_CHARS: usize = 64;
pub(crate) const NAME_MAX_CHARS: usize = 200;
pub(crate) const DESCRIPTION_MAX_CHARS: usize = 5000;
/// Upper bound for stock: far beyond any shop, far below `i64` overflow.
pub(crate) const MAX_QUANTITY: i64 = 1_000_000_000_000;

/// Body of `POST /catalog/products`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    /// 1 to 64 characters, no spaces; unique.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\x00-\x1f\x7f-\x9f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$"
    )]
    pub sku: String,
    /// 1 to 200 characters, not only spaces.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00]*[^\x00\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00]*$"
    )]
    pub name: String,
    #[schema(max_length = 5000, pattern = r"^[^\x00]*$")]
    pub description: Option<String>,
    /// At least 0, in the shop's currency.
    #[schema(value_type = chassis::money::Price)]
    pub price: Money,
    /// Units on hand, at least 0 (default 0).
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    #[serde(default, deserialize_with = "chassis::integer::optional")]
    pub stock: Option<i64>,
}

/// Body of `PATCH /catalog/products/{id}`: only the fields present change.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductPatch {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00]*[^\x00\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00]*$"
    )]
    pub name: Option<String>,
    /// A text sets the description; `null` clears it; absent leaves it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 5000, pattern = r"^[^\x00]*$")]
    pub description: Option<Option<String>>,
    #[schema(value_type = Option<chassis::money::Price>)]
    pub price: Option<Money>,
}

/// Tells a field given as `null` (`Some(None)`) from one left out (`None`).
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

/// Body of `PUT /catalog/products/{id}/stock`.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StockUpdate {
    /// Units on hand; not below the units reserved.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    #[serde(deserialize_with = "chassis::integer::exact")]
    pub on_hand: i64,
}

impl NewProduct {
    pub(crate) fn validate(&self, currency: &str) -> Result<(), Error> {
        validate_sku(&self.sku)?;
        validate_name(&self.name)?;
        validate_description(self.description.as_deref())?;
        validate_price(&self.price, currency)?;
        if let Some(stock) = self.stock {
            validate_count("stock", stock)?;
        }
        Ok(())
    }
}

impl ProductPatch {
    pub(crate) fn validate(&self, currency: &str) -> Result<(), Error> {
        if let Some(name) = &self.name {
            validate_name(name)?;
        }
        validate_description(self.description.as_ref().and_then(Option::as_deref))?;
        if let Some(price) = &self.price {
            validate_price(price, currency)?;
        }
        Ok(())
    }
}

impl StockUpdate {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        validate_count("on_hand", self.on_hand)
    }
}

fn validate_sku(sku: &str) -> Result<(), Error> {
    let chars = sku.chars().count();
    if chars == 0 || chars > SKU_MAX_CHARS {
        return Err(Error::Validation(format!(
            "sku: must be 1 to {SKU_MAX_CHARS} characters"
        )));
    }
    if sku.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::Validation(
            "sku: must not contain spaces or control characters".into(),
        ));
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), Error> {
    let chars = name.chars().count();
    if name.trim().is_empty() || chars > NAME_MAX_CHARS {
        return Err(Error::Validation(format!(
            "name: must be 1 to {NAME_MAX_CHARS} characters, not blank"
        )));
    }
    Ok(())
}

fn validate_description(description: Option<&str>) -> Result<(), Error> {
    match description {
        Some(text) if text.chars().count() > DESCRIPTION_MAX_CHARS => Err(Error::Validation(
            format!("description: must be at most {DESCRIPTION_MAX_CHARS} characters"),
        )),
        _ => Ok(()),
    }
}

fn validate_price(price: &Money, currency: &str) -> Result<(), Error> {
    if price.currency != currency {
        return Err(Error::Validation(format!(
            "price.currency: the shop sells in {currency}, not {:?}",
            price.currency
        )));
    }
    if !(0..=MAX_PRICE).contains(&price.amount) {
        return Err(Error::Validation(format!(
            "price.amount: must be between 0 and {MAX_PRICE}"
        )));
    }
    Ok(())
}

fn validate_count(field: &str, value: i64) -> Result<(), Error> {
    if (0..=MAX_QUANTITY).contains(&value) {
        Ok(())
    } else {
        Err(Error::Validation(format!(
            "{field}: must be between 0 and {MAX_QUANTITY}"
        )))
    }
}

/// Whether a change takes a product's available stock from at or above the low-stock
/// threshold to below it, which raises `catalog.stock_low`: once per crossing, not on
/// every later sale.
pub(crate) fn falls_low(threshold: i64, available_before: i64, available_after: i64) -> bool {
    available_before >= threshold && available_after < threshold
}

/// Checks the lines of a reservation and answers them sorted by product id: a fixed
/// order makes equal requests compare equal and makes concurrent reservations touch
/// products in the same order (no deadlocks on PostgreSQL).
pub(crate) fn normalize_lines(lines: &[StockLine]) -> Result<Vec<StockLine>, CatalogError> {
    if lines.is_empty() || lines.len() > MAX_RESERVATION_LINES {
        return Err(CatalogError::InvalidRequest(format!(
            "lines: must have 1 to {MAX_RESERVATION_LINES} lines"
        )));
    }
    let mut seen = HashSet::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        if line.quantity == 0 {
            return Err(CatalogError::InvalidRequest(format!(
                "lines[{index}].quantity: must be at least 1"
            )));
        }
        if !seen.insert(line.product_id) {
            return Err(CatalogError::InvalidRequest(format!(
                "lines[{index}].product_id: product {} appears twice",
                line.product_id
            )));
        }
    }
    let mut sorted = lines.to_vec();
    sorted.sort_by_key(|line| line.product_id);
    Ok(sorted)
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn product() -> NewProduct {
        NewProduct {
            sku: "TEE-RED-M".into(),
            name: "Red tee".into(),
            description: None,
            price: Money {
                amount: 1999,
                currency: "EUR".into(),
            },
            stock: Some(3),
        }
    }

    fn field_of(error: Error) -> String {
        error
            .to_string()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn a_valid_product_passes() {
        assert!(product().validate("EUR").is_ok());
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases: Vec<(NewProduct, &str)> = vec![
            (
                NewProduct {
                    sku: String::new(),
                    ..product()
                },
                "sku",
            ),
            (
                NewProduct {
                    sku: "x".repeat(65),
                    ..product()
                },
                "sku",
            ),
            (
                NewProduct {
                    sku: "has space".into(),
                    ..product()
                },
                "sku",
            ),
            (
                NewProduct {
                    name: " ".into(),
                    ..product()
                },
                "name",
            ),
            (
                NewProduct {
                    name: "n".repeat(201),
                    ..product()
                },
                "name",
            ),
            (
                NewProduct {
                    price: Money {
                        amount: -1,
                        currency: "EUR".into(),
                    },
                    ..product()
                },
                "price.amount",
            ),
            (
                NewProduct {
                    price: Money {
                        amount: 1,
                        currency: "USD".into(),
                    },
                    ..product()
                },
                "price.currency",
            ),
            (
                NewProduct {
                    stock: Some(-1),
                    ..product()
                },
                "stock",
            ),
        ];
        for (input, field) in cases {
            let error = input.validate("EUR").expect_err("refused");
            assert_eq!(field_of(error), field);
        }
    }

    #[test]
    fn limits_are_inclusive() {
        let at_limits = NewProduct {
            sku: "s".repeat(64),
            name: "n".repeat(200),
            ..product()
        };
        assert!(at_limits.validate("EUR").is_ok());
        let free = NewProduct {
            price: Money {
                amount: 0,
                currency: "EUR".into(),
            },
            stock: Some(0),
            ..product()
        };
        assert!(free.validate("EUR").is_ok());
    }

    #[test]
    fn reservation_lines_are_checked_and_sorted() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let lines = [
            StockLine {
                product_id: a,
                quantity: 1,
            },
            StockLine {
                product_id: b,
                quantity: 2,
            },
        ];
        let sorted = normalize_lines(&lines).expect("valid");
        assert!(
            sorted
                .windows(2)
                .all(|pair| pair[0].product_id < pair[1].product_id)
        );
        assert!(normalize_lines(&[]).is_err());
        assert!(
            normalize_lines(&[StockLine {
                product_id: a,
                quantity: 0
            }])
            .is_err()
        );
        let twice = [
            StockLine {
                product_id: a,
                quantity: 1,
            },
            StockLine {
                product_id: a,
                quantity: 1,
            },
        ];
        assert!(
            matches!(normalize_lines(&twice), Err(CatalogError::InvalidRequest(m)) if m.contains("twice"))
        );
    }
}
