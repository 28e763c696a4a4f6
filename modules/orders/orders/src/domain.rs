//! The orders module's rules for input and for the saga's steps, independent of storage
//! and HTTP.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::Error;

pub(crate) const MAX_LINES: usize = 100;
pub(crate) const MAX_QUANTITY: u32 = 1000;
pub(crate) const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// Body of `POST /orders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    /// An e-mail address (`local@domain.tld`), at most 254 characters.
    #[schema(
        min_length = 3,
        max_length = 254,
        pattern = r"^[^@\x00-\x1f\x7f-\x9f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]{1,64}@[^@.\x00-\x1f\x7f-\x9f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+(\.[^@.\x00-\x1f\x7f-\x9f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+)+$"
    )]
    pub customer_email: String,
    /// 1 to 100 lines, each product at most once.
    #[schema(min_items = 1, max_items = 100)]
    pub lines: Vec<PlaceOrderLine>,
    pub payment: PaymentMethod,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderLine {
    pub product_id: Uuid,
    /// 1 to 1000.
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(deserialize_with = "chassis::integer::exact")]
    pub quantity: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentMethod {
    /// The payment provider's token for the customer's payment method.
    /// 1 to 200 characters, not only spaces.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00]*[^\x00\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00]*$"
    )]
    pub token: String,
}

impl PlaceOrder {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        validate_email(&self.customer_email)?;
        if self.lines.is_empty() || self.lines.len() > MAX_LINES {
            return Err(Error::Validation(format!(
                "lines: must have 1 to {MAX_LINES} lines"
            )));
        }
        let mut seen = HashSet::with_capacity(self.lines.len());
        for (index, line) in self.lines.iter().enumerate() {
            if !(1..=MAX_QUANTITY).contains(&line.quantity) {
                return Err(Error::Validation(format!(
                    "lines[{index}].quantity: must be between 1 and {MAX_QUANTITY}"
                )));
            }
            if !seen.insert(line.product_id) {
                return Err(Error::Validation(format!(
                    "lines[{index}].product_id: product {} appears twice",
                    line.product_id
                )));
            }
        }
        if self.payment.token.trim().is_empty() || self.payment.token.chars().count() > 200 {
            return Err(Error::Validation(
                "payment.token: must be 1 to 200 characters".into(),
            ));
        }
        Ok(())
    }

    /// A fingerprint of the request, to tell a retried request from another one under
    /// the same `Idempotency-Key`.
    pub(crate) fn fingerprint(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(canonical);
        digest.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

fn validate_email(email: &str) -> Result<(), Error> {
    let invalid = || {
        Error::Validation("customer_email: must be an e-mail address like ada@example.com".into())
    };
    if email.chars().count() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid());
    }
    let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
    let domain_ok = !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..");
    if local.is_empty() || local.chars().count() > 64 || !domain_ok {
        return Err(invalid());
    }
    Ok(())
}

pub(crate) fn validate_idempotency_key(key: &str) -> Result<(), Error> {
    let chars = key.chars().count();
    if chars == 0 || chars > MAX_IDEMPOTENCY_KEY_CHARS || key.chars().any(char::is_control) {
        return Err(Error::Validation(format!(
            "Idempotency-Key: must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable characters"
        )));
    }
    Ok(())
}

/// The saga's steps (spec §4). Every call a step makes is idempotent per order id, so a
/// step can be attempted again after any crash. Of the forward steps (reserve, charge,
/// commit), `reserve` is recorded with the order and a later one only when it is postponed:
/// a run that resumes after a crash takes them again from the one recorded, each call
/// answering what it did the first time; so how far a saga got is never known for sure,
/// and past the deadline all three compensate alike. Compensation steps are recorded
/// before they are attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Hold stock for every line.
    Reserve,
    /// Take the total through billing.
    Charge,
    /// Sell the held stock, then confirm the order.
    Commit,
    /// Compensation: give a captured payment back, then release.
    Refund,
    /// Compensation: give the held stock back, then reject the order.
    Release,
    /// Cancellation of a confirmed order: refund first …
    CancelRefund,
    /// … then put the stock back, and mark the order cancelled.
    CancelRestock,
}

impl Step {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Step::Reserve => "reserve",
            Step::Charge => "charge",
            Step::Commit => "commit",
            Step::Refund => "refund",
            Step::Release => "release",
            Step::CancelRefund => "cancel_refund",
            Step::CancelRestock => "cancel_restock",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "reserve" => Some(Step::Reserve),
            "charge" => Some(Step::Charge),
            "commit" => Some(Step::Commit),
            "refund" => Some(Step::Refund),
            "release" => Some(Step::Release),
            "cancel_refund" => Some(Step::CancelRefund),
            "cancel_restock" => Some(Step::CancelRestock),
            _ => None,
        }
    }

    /// Whether this is a forward step (reserve, charge, commit): written only with the
    /// order or when postponed, never on the way to it.
    pub(crate) fn is_forward(self) -> bool {
        matches!(self, Step::Reserve | Step::Charge | Step::Commit)
    }

    /// Past the deadline a forward step turns to compensation: refund (which voids a charge
    /// billing has not seen, so that it can never go through later), then release.
    /// Compensation and cancellation never give up.
    pub(crate) fn compensation_after_deadline(self) -> Option<Step> {
        self.is_forward().then_some(Step::Refund)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> PlaceOrder {
        PlaceOrder {
            customer_email: "ada@example.com".into(),
            lines: vec![PlaceOrderLine {
                product_id: Uuid::new_v4(),
                quantity: 1,
            }],
            payment: PaymentMethod {
                token: "tok_visa".into(),
            },
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
    fn a_valid_order_passes() {
        assert!(order().validate().is_ok());
    }

    #[test]
    fn each_rule_names_its_field() {
        let product = Uuid::new_v4();
        let cases: Vec<(PlaceOrder, &str)> = vec![
            (
                PlaceOrder {
                    customer_email: "nobody".into(),
                    ..order()
                },
                "customer_email",
            ),
            (
                PlaceOrder {
                    customer_email: "a@b".into(),
                    ..order()
                },
                "customer_email",
            ),
            (
                PlaceOrder {
                    customer_email: "a b@example.com".into(),
                    ..order()
                },
                "customer_email",
            ),
            (
                PlaceOrder {
                    lines: vec![],
                    ..order()
                },
                "lines",
            ),
            (
                PlaceOrder {
                    lines: (0..101)
                        .map(|_| PlaceOrderLine {
                            product_id: Uuid::new_v4(),
                            quantity: 1,
                        })
                        .collect(),
                    ..order()
                },
                "lines",
            ),
            (
                PlaceOrder {
                    lines: vec![PlaceOrderLine {
                        product_id: product,
                        quantity: 0,
                    }],
                    ..order()
                },
                "lines[0].quantity",
            ),
            (
                PlaceOrder {
                    lines: vec![PlaceOrderLine {
                        product_id: product,
                        quantity: 1001,
                    }],
                    ..order()
                },
                "lines[0].quantity",
            ),
            (
                PlaceOrder {
                    lines: vec![
                        PlaceOrderLine {
                            product_id: product,
                            quantity: 1,
                        },
                        PlaceOrderLine {
                            product_id: product,
                            quantity: 2,
                        },
                    ],
                    ..order()
                },
                "lines[1].product_id",
            ),
            (
                PlaceOrder {
                    payment: PaymentMethod { token: " ".into() },
                    ..order()
                },
                "payment.token",
            ),
        ];
        for (input, field) in cases {
            assert_eq!(field_of(input.validate().expect_err("refused")), field);
        }
    }

    #[test]
    fn limits_are_inclusive() {
        let many = PlaceOrder {
            lines: (0..100)
                .map(|_| PlaceOrderLine {
                    product_id: Uuid::new_v4(),
                    quantity: 1000,
                })
                .collect(),
            ..order()
        };
        assert!(many.validate().is_ok());
    }

    #[test]
    fn the_fingerprint_tells_requests_apart() {
        let first = order();
        assert_eq!(first.fingerprint(), first.clone().fingerprint());
        let other = PlaceOrder {
            customer_email: "bob@example.com".into(),
            ..first.clone()
        };
        assert_ne!(first.fingerprint(), other.fingerprint());
    }

    #[test]
    fn steps_round_trip_and_forward_steps_compensate_after_the_deadline() {
        for step in [
            Step::Reserve,
            Step::Charge,
            Step::Commit,
            Step::Refund,
            Step::Release,
            Step::CancelRefund,
            Step::CancelRestock,
        ] {
            assert_eq!(Step::parse(step.as_str()), Some(step));
        }
        assert_eq!(
            Step::Reserve.compensation_after_deadline(),
            Some(Step::Refund)
        );
        assert_eq!(
            Step::Charge.compensation_after_deadline(),
            Some(Step::Refund)
        );
        assert_eq!(
            Step::Commit.compensation_after_deadline(),
            Some(Step::Refund)
        );
        assert_eq!(Step::Release.compensation_after_deadline(), None);
        assert_eq!(Step::CancelRefund.compensation_after_deadline(), None);
    }
}
