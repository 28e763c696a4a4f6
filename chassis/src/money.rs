//! Money as every module speaks it: integer minor units in the shop's one currency.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::{OpenApi, Ref, RefOr};

/// An amount of money in integer minor units (cents), in the shop's one currency.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct Money {
    /// Minor units, e.g. 1999 for 19.99.
    #[serde(deserialize_with = "crate::integer::exact")]
    pub amount: i64,
    /// ISO 4217 code; must be the shop's currency.
    #[schema(value_type = Currency)]
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

/// The largest amount a price may have, in minor units: 10^12, ten billion in a
/// two-decimal currency. Sums of prices (line and order totals) may exceed it.
pub const MAX_PRICE: i64 = 1_000_000_000_000;

/// The name of the currency schema in the OpenAPI document.
const CURRENCY_SCHEMA: &str = "Currency";

/// The OpenAPI schema of a currency code: three capital letters. The document a running
/// Bazaar serves narrows it to its shop's one currency ([`document_currency`]), so that a
/// client generated from that document sends the one the shop accepts.
#[derive(Debug)]
pub struct Currency;

impl utoipa::PartialSchema for Currency {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("ISO 4217 code; must be the shop's currency."))
            .pattern(Some("^[A-Z]{3}$"))
            .examples(["EUR"])
            .into()
    }
}

impl ToSchema for Currency {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed(CURRENCY_SCHEMA)
    }
}

/// The OpenAPI schema of [`Money`] given as a price: 0 to [`MAX_PRICE`]. Used as the
/// `value_type` of price fields; the Rust type stays [`Money`].
#[derive(Debug)]
pub struct Price;

impl utoipa::PartialSchema for Price {
    fn schema() -> RefOr<Schema> {
        money_schema(
            "A price in minor units (cents), in the shop's currency.",
            0,
            MAX_PRICE,
        )
    }
}

impl ToSchema for Price {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((
            CURRENCY_SCHEMA.into(),
            <Currency as utoipa::PartialSchema>::schema(),
        ));
    }
}

/// The OpenAPI schema of [`Money`] given as an amount to charge: at least 1.
#[derive(Debug)]
pub struct ChargeAmount;

impl utoipa::PartialSchema for ChargeAmount {
    fn schema() -> RefOr<Schema> {
        money_schema(
            "An amount to charge in minor units (cents), in the shop's currency.",
            1,
            i64::MAX,
        )
    }
}

impl ToSchema for ChargeAmount {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((
            CURRENCY_SCHEMA.into(),
            <Currency as utoipa::PartialSchema>::schema(),
        ));
    }
}

fn money_schema(description: &str, minimum: i64, maximum: i64) -> RefOr<Schema> {
    let amount = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .description(Some("Minor units, e.g. 1999 for 19.99."))
        .minimum(Some(minimum))
        .maximum(Some(maximum));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .property("amount", amount)
        .property("currency", Ref::from_schema_name(CURRENCY_SCHEMA))
        .required("amount")
        .required("currency")
        .into()
}

/// Narrows the document's currency schema to `currency`, the one this shop sells in.
pub fn document_currency(doc: &mut OpenApi, currency: &str) {
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    if let Some(schema) = components.schemas.get_mut(CURRENCY_SCHEMA) {
        *schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("ISO 4217 code: the shop's one currency."))
            .enum_values(Some([currency]))
            .examples([currency])
            .into();
    }
}
