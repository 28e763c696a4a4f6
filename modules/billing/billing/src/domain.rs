//! Billing's rules for input and its own records, independent of storage and HTTP.

use billing_contract::{ChargeRequest, Money};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::Error;

/// Longest payment token accepted, in characters.
pub(crate) const TOKEN_MAX_CHARS: usize = 200;
/// Longest customer e-mail accepted, in characters: the longest address there can be.
pub(crate) const EMAIL_MAX_CHARS: usize = 254;

/// The invoice issued for a captured payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Invoice {
    pub id: Uuid,
    /// `INV-<year>-<number>`: numbered from 1 each year, without gaps.
    #[schema(example = "INV-2026-000001")]
    pub number: String,
    pub order_id: Uuid,
    pub amount: Money,
    pub issued_at: DateTime<Utc>,
}

/// Checks a charge; the message names the field at fault.
pub(crate) fn validate_charge(request: &ChargeRequest, currency: &str) -> Result<(), Error> {
    if request.amount.currency != currency {
        return Err(Error::Validation(format!(
            "amount.currency: the shop charges in {currency}, not {:?}",
            request.amount.currency
        )));
    }
    if request.amount.amount < 1 {
        return Err(Error::Validation(
            "amount.amount: must be at least 1".into(),
        ));
    }
    if request.token.trim().is_empty() {
        return Err(Error::Validation("token: must not be empty".into()));
    }
    if request.token.chars().count() > TOKEN_MAX_CHARS {
        return Err(Error::Validation(format!(
            "token: must be at most {TOKEN_MAX_CHARS} characters"
        )));
    }
    if request.customer_email.trim().is_empty() {
        return Err(Error::Validation(
            "customer_email: must not be empty".into(),
        ));
    }
    if request.customer_email.chars().count() > EMAIL_MAX_CHARS {
        return Err(Error::Validation(format!(
            "customer_email: must be at most {EMAIL_MAX_CHARS} characters"
        )));
    }
    Ok(())
}

/// The `number`-th invoice of `year`: `INV-2026-000001`.
pub(crate) fn invoice_number(year: i32, number: i64) -> String {
    format!("INV-{year:04}-{number:06}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge() -> ChargeRequest {
        ChargeRequest {
            order_id: Uuid::new_v4(),
            amount: Money::new(1999, "EUR"),
            token: "tok_visa".into(),
            customer_email: "ada@example.com".into(),
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
    fn a_valid_charge_passes() {
        assert!(validate_charge(&charge(), "EUR").is_ok());
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases = [
            (
                ChargeRequest {
                    amount: Money::new(0, "EUR"),
                    ..charge()
                },
                "amount.amount",
            ),
            (
                ChargeRequest {
                    amount: Money::new(-5, "EUR"),
                    ..charge()
                },
                "amount.amount",
            ),
            (
                ChargeRequest {
                    amount: Money::new(100, "USD"),
                    ..charge()
                },
                "amount.currency",
            ),
            (
                ChargeRequest {
                    token: String::new(),
                    ..charge()
                },
                "token",
            ),
            (
                ChargeRequest {
                    token: "  ".into(),
                    ..charge()
                },
                "token",
            ),
            (
                ChargeRequest {
                    token: "t".repeat(201),
                    ..charge()
                },
                "token",
            ),
            (
                ChargeRequest {
                    customer_email: String::new(),
                    ..charge()
                },
                "customer_email",
            ),
            (
                ChargeRequest {
                    customer_email: " ".into(),
                    ..charge()
                },
                "customer_email",
            ),
            (
                ChargeRequest {
                    customer_email: format!("{}@example.com", "a".repeat(243)),
                    ..charge()
                },
                "customer_email",
            ),
        ];
        for (request, field) in cases {
            let error = validate_charge(&request, "EUR").expect_err("refused");
            assert!(matches!(error, Error::Validation(_)), "{error:?}");
            assert_eq!(field_of(error), field, "{request:?}");
        }
    }

    #[test]
    fn limits_are_inclusive() {
        let at_limits = ChargeRequest {
            amount: Money::new(1, "EUR"),
            token: "t".repeat(200),
            customer_email: format!("{}@example.com", "a".repeat(242)),
            ..charge()
        };
        assert!(validate_charge(&at_limits, "EUR").is_ok());
    }

    #[test]
    fn invoice_numbers_have_the_year_and_six_digits() {
        assert_eq!(invoice_number(2026, 1), "INV-2026-000001");
        assert_eq!(invoice_number(2026, 123_456), "INV-2026-123456");
        assert_eq!(invoice_number(2027, 1_000_000), "INV-2027-1000000");
    }
}
