//! Secrets from config (tokens, database passwords): never printed, never logged, and
//! compared in constant time.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret string. `Debug` and `Serialize` print `[redacted]`.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The secret itself; call only where it is used (a header, a connection).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_redacted_in_debug_and_serialization() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(
            serde_json::to_string(&secret).expect("serializes"),
            "\"[redacted]\""
        );
        assert_eq!(secret.expose(), "hunter2");
    }
}

/// Query parameters that carry a secret, whatever the scheme (`?password=` for libpq,
/// `?token=` for many services), compared without case.
const SECRET_PARAMETERS: [&str; 10] = [
    "password",
    "passwd",
    "pass",
    "pwd",
    "sslpassword",
    "secret",
    "token",
    "access_token",
    "api_key",
    "apikey",
];

/// `url` with its secrets replaced by `[redacted]`: the password of its userinfo and the
/// values of secret query parameters. A string that is not a URL is redacted as a whole
/// if it names a password at all (a libpq keyword string: `host=… password=…`).
pub(crate) fn redact_password(url: &str) -> String {
    const REDACTED: &str = "[redacted]";
    let Ok(mut parsed) = url::Url::parse(url) else {
        let lower = url.to_ascii_lowercase();
        return if SECRET_PARAMETERS
            .iter()
            .any(|name| lower.contains(&format!("{name}=")))
        {
            REDACTED.to_owned()
        } else {
            url.to_owned()
        };
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some(REDACTED));
    }
    let secret = |name: &str| {
        SECRET_PARAMETERS
            .iter()
            .any(|secret| name.eq_ignore_ascii_case(secret))
    };
    if parsed.query_pairs().any(|(name, _)| secret(&name)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if secret(&name) {
                    REDACTED.to_owned()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// A URL that may carry credentials (`smtp://user:password@host`): `Debug`, `Display` and
/// `Serialize` show it with the password replaced, so config can be printed safely.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL itself, password included; only for opening connections.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced.
    pub fn redacted(&self) -> String {
        redact_password(&self.0)
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(SecretUrl)
    }
}

#[cfg(test)]
mod url_tests {
    use super::SecretUrl;

    #[test]
    fn a_secret_url_hides_its_password_only() {
        let url = SecretUrl::new("smtp://shop:pa55@mail.example.com:587");
        assert_eq!(
            url.redacted(),
            "smtp://shop:%5Bredacted%5D@mail.example.com:587"
        );
        assert!(!format!("{url:?} {url}").contains("pa55"));
        assert_eq!(url.expose(), "smtp://shop:pa55@mail.example.com:587");
    }

    #[test]
    fn secrets_in_the_query_are_redacted_too() {
        let url = SecretUrl::new(
            "postgres://db.example.com/shop?user=shop&password=pa55&sslmode=require",
        );
        let shown = url.redacted();
        assert!(!shown.contains("pa55"), "{shown}");
        assert!(
            shown.contains("user=shop") && shown.contains("sslmode=require"),
            "{shown}"
        );
        let url = SecretUrl::new("nats://bus.example.com:4222?Token=t0ken");
        assert!(!url.redacted().contains("t0ken"), "{}", url.redacted());
    }

    #[test]
    fn a_keyword_string_with_a_password_is_redacted_whole() {
        let url = SecretUrl::new("host=db password=pa55 dbname=shop");
        assert_eq!(url.redacted(), "[redacted]");
        let plain = SecretUrl::new("./data/catalog.db");
        assert_eq!(plain.redacted(), "./data/catalog.db");
    }
}
