//! `X-Bazaar-Signature: sha256=<hex HMAC-SHA256 of the body under the webhook's secret>`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header a webhook call carries.
pub(crate) const HEADER: &str = "X-Bazaar-Signature";

/// The header's value for `body` under `secret`.
pub(crate) fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_known_hmac_sha256_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn another_secret_or_body_gives_another_signature() {
        let body = br#"{"id":"1"}"#;
        assert_ne!(sign("a", body), sign("b", body));
        assert_ne!(sign("a", body), sign("a", br#"{"id":"2"}"#));
        assert!(sign("a", body).starts_with("sha256="));
        assert_eq!(sign("a", body).len(), "sha256=".len() + 64);
    }
}
