//! Integers as JSON writes them. JSON has one number type, and `5522.0` is the integer
//! 5522 to JavaScript, Python's `json` with floats, and JSON Schema's `integer`; serde's
//! integer types refuse it. Fields the API documents as integers use these instead, so
//! that any JSON form of an integer is accepted and a fraction (`5522.5`) still is not.
//! `#[serde(deserialize_with = "chassis::integer::exact")]`, or `optional` for an
//! `Option` (with `#[serde(default)]`).

use std::fmt;

use serde::Deserializer;
use serde::de::{Error, Visitor};

/// An integer field that also accepts a JSON number with no fraction.
pub fn exact<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    deserializer.deserialize_any(Exact(std::marker::PhantomData))
}

/// Like [`exact`], for an optional field: `null` is `None`.
pub fn optional<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    deserializer.deserialize_option(Optional(std::marker::PhantomData))
}

struct Exact<T>(std::marker::PhantomData<T>);

impl<T: TryFrom<i64> + TryFrom<u64>> Visitor<'_> for Exact<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: Error>(self, value: i64) -> Result<T, E> {
        T::try_from(value).map_err(|_| E::custom(format!("{value} is out of range")))
    }

    fn visit_u64<E: Error>(self, value: u64) -> Result<T, E> {
        T::try_from(value).map_err(|_| E::custom(format!("{value} is out of range")))
    }

    fn visit_f64<E: Error>(self, value: f64) -> Result<T, E> {
        // i64's range as floats: below 2^63 every float with no fraction is exact.
        const LIMIT: f64 = 9_223_372_036_854_775_808.0;
        if value.fract() == 0.0 && (-LIMIT..LIMIT).contains(&value) {
            #[allow(clippy::cast_possible_truncation)] // whole and within range: exact
            self.visit_i64(value as i64)
        } else {
            Err(E::custom(format!("{value} is not an integer")))
        }
    }
}

struct Optional<T>(std::marker::PhantomData<T>);

impl<'de, T: TryFrom<i64> + TryFrom<u64>> Visitor<'de> for Optional<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer or null")
    }

    fn visit_none<E: Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_unit<E: Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<T>, D::Error> {
        exact(deserializer).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Sample {
        #[serde(deserialize_with = "super::exact")]
        count: u32,
        #[serde(default, deserialize_with = "super::optional")]
        stock: Option<i64>,
    }

    fn parse(json: &str) -> Result<Sample, String> {
        serde_json::from_str(json).map_err(|error| error.to_string())
    }

    #[test]
    fn any_json_form_of_an_integer_is_accepted() {
        assert_eq!(
            parse(r#"{"count": 5522.0, "stock": 1e3}"#),
            Ok(Sample {
                count: 5522,
                stock: Some(1000)
            })
        );
        assert_eq!(
            parse(r#"{"count": 7, "stock": null}"#),
            Ok(Sample {
                count: 7,
                stock: None
            })
        );
        assert_eq!(
            parse(r#"{"count": 7}"#),
            Ok(Sample {
                count: 7,
                stock: None
            })
        );
    }

    #[test]
    fn fractions_strings_and_out_of_range_numbers_are_refused() {
        for json in [
            r#"{"count": 5522.5}"#,
            r#"{"count": "7"}"#,
            r#"{"count": -1}"#,
            r#"{"count": 4294967296}"#,
            r#"{"count": 1, "stock": 1e19}"#,
        ] {
            assert!(parse(json).is_err(), "{json}");
        }
    }
}
