use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

/// The `[notifications]` config section. It lives in the contract so that every process
/// parses the same config file, whether or not notifications runs in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsSettings {
    /// The SMTP server: `smtp://host:25` (plain), `smtp://host:587?tls=required`
    /// (STARTTLS), `smtps://user:password@host:465` (TLS). Unset: the `file` channel, one
    /// `.eml` per message under `<data_dir>/outbox-mail/`.
    pub smtp_url: Option<chassis::secret::SecretUrl>,
    /// The sender of every e-mail.
    pub from: String,
    /// Who gets the shop's own messages (`catalog.stock_low`).
    pub operator_email: String,
    /// Attempts per delivery in all, the first included, before it is `failed`.
    pub max_attempts: u32,
    /// Longest wait for a webhook's answer.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// Longest wait for the SMTP server on one message.
    #[serde(with = "humantime_serde")]
    pub smtp_timeout: Duration,
    /// The wait after the first failed attempt; it doubles after each (with jitter).
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    /// The longest wait between two attempts.
    #[serde(with = "humantime_serde")]
    pub max_retry_delay: Duration,
    /// E-mails in flight at once.
    pub concurrency: usize,
    /// Webhook calls in flight at once. Slots of their own, apart from the e-mails', so
    /// that endpoints that are slow or never answer cannot hold up customer e-mails.
    pub webhook_concurrency: usize,
    /// How often the delivery worker looks for due deliveries when nothing wakes it.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Whether webhooks may target loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7)
    /// and shared (100.64/10) addresses: for a receiver on the same host or network, in
    /// development and tests. Link-local addresses and cloud metadata services are refused
    /// whatever this says.
    pub allow_private_webhooks: bool,
}

impl Default for NotificationsSettings {
    fn default() -> Self {
        Self {
            smtp_url: None,
            from: "Bazaar <shop@localhost>".into(),
            operator_email: "operator@localhost".into(),
            max_attempts: 8,
            webhook_timeout: Duration::from_secs(5),
            smtp_timeout: Duration::from_secs(10),
            retry_delay: Duration::from_secs(2),
            max_retry_delay: Duration::from_secs(600),
            concurrency: 16,
            webhook_concurrency: 16,
            poll_interval: Duration::from_secs(1),
            allow_private_webhooks: false,
        }
    }
}

/// Whether `text` looks like one e-mail address (`local@domain`, optionally as
/// `Name <local@domain>` when `named`).
fn plausible_address(text: &str, named: bool) -> bool {
    let address = match (named, text.rfind('<')) {
        (true, Some(start)) if text.ends_with('>') => &text[start + 1..text.len() - 1],
        _ => text,
    };
    match address.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !address.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

impl NotificationsSettings {
    /// Checks the section; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(smtp_url) = &self.smtp_url {
            let url = Url::parse(smtp_url.expose()).map_err(|error| {
                format!("notifications.smtp_url: {smtp_url} is not a URL ({error})")
            })?;
            if !matches!(url.scheme(), "smtp" | "smtps") {
                return Err(format!(
                    "notifications.smtp_url: scheme {:?} is not smtp or smtps",
                    url.scheme()
                ));
            }
            if url.host_str().is_none_or(str::is_empty) {
                return Err("notifications.smtp_url: names no host".into());
            }
        }
        if !plausible_address(&self.from, true) {
            return Err(format!(
                "notifications.from: {:?} is not an e-mail address",
                self.from
            ));
        }
        if !plausible_address(&self.operator_email, false) {
            return Err(format!(
                "notifications.operator_email: {:?} is not an e-mail address",
                self.operator_email
            ));
        }
        if self.max_attempts == 0 {
            return Err("notifications.max_attempts: must be at least 1".into());
        }
        for (key, value) in [
            ("webhook_timeout", self.webhook_timeout),
            ("smtp_timeout", self.smtp_timeout),
            ("retry_delay", self.retry_delay),
            ("poll_interval", self.poll_interval),
        ] {
            if value.is_zero() {
                return Err(format!("notifications.{key}: must be above 0"));
            }
        }
        if self.max_retry_delay < self.retry_delay {
            return Err("notifications.max_retry_delay: must be at least retry_delay".into());
        }
        if self.concurrency == 0 {
            return Err("notifications.concurrency: must be at least 1".into());
        }
        if self.webhook_concurrency == 0 {
            return Err("notifications.webhook_concurrency: must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_use_the_file_channel() {
        let settings = NotificationsSettings::default();
        assert_eq!(settings.validate(), Ok(()));
        assert_eq!(settings.smtp_url, None);
        assert_eq!(settings.max_attempts, 8);
        assert_eq!(settings.operator_email, "operator@localhost");
        assert_eq!(settings.webhook_timeout, Duration::from_secs(5));
        assert!(!settings.allow_private_webhooks);
    }

    #[test]
    fn every_error_names_its_key() {
        let cases = [
            NotificationsSettings {
                smtp_url: Some("not a url".into()),
                ..Default::default()
            },
            NotificationsSettings {
                smtp_url: Some("http://mail.example.com".into()),
                ..Default::default()
            },
            NotificationsSettings {
                operator_email: "nobody".into(),
                ..Default::default()
            },
            NotificationsSettings {
                from: "".into(),
                ..Default::default()
            },
            NotificationsSettings {
                max_attempts: 0,
                ..Default::default()
            },
            NotificationsSettings {
                webhook_timeout: Duration::ZERO,
                ..Default::default()
            },
            NotificationsSettings {
                concurrency: 0,
                ..Default::default()
            },
            NotificationsSettings {
                webhook_concurrency: 0,
                ..Default::default()
            },
        ];
        let keys = [
            "notifications.smtp_url",
            "notifications.smtp_url",
            "notifications.operator_email",
            "notifications.from",
            "notifications.max_attempts",
            "notifications.webhook_timeout",
            "notifications.concurrency",
            "notifications.webhook_concurrency",
        ];
        for (settings, key) in cases.iter().zip(keys) {
            let error = settings.validate().expect_err("refused");
            assert!(error.starts_with(key), "{error}");
        }
    }

    #[test]
    fn smtp_urls_of_every_kind_are_accepted() {
        for url in [
            "smtp://127.0.0.1:2525",
            "smtp://mail.example.com:587?tls=required",
            "smtps://user:pass@mail.example.com",
        ] {
            let settings = NotificationsSettings {
                smtp_url: Some(url.into()),
                ..Default::default()
            };
            assert_eq!(settings.validate(), Ok(()), "{url}");
        }
    }

    #[test]
    fn the_section_parses_humane_durations() {
        let settings: NotificationsSettings = serde_json::from_value(serde_json::json!({
            "smtp_url": "smtp://localhost:25",
            "webhook_timeout": "2s",
            "max_attempts": 3,
            "allow_private_webhooks": true
        }))
        .expect("parses");
        assert!(settings.allow_private_webhooks);
        assert_eq!(settings.webhook_timeout, Duration::from_secs(2));
        assert_eq!(settings.max_attempts, 3);
    }
}
