//! Which webhook targets the server may call.
//!
//! Whoever can register a webhook makes the server POST wherever the URL points; without a
//! policy that reaches the loopback interface, the private network and the cloud metadata
//! service from inside (server-side request forgery). The same policy is applied when a
//! webhook is registered and again by the resolver every delivery connects through, so a
//! name that resolved to a public address at registration and to a private one later (DNS
//! rebinding) is refused, and the address checked is the address connected to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use url::{Host, Url};

/// Names of cloud metadata services. They resolve to link-local or private addresses the
/// address checks refuse anyway; naming them spares a lookup and holds even where a
/// resolver maps them elsewhere.
const METADATA_HOSTS: &[&str] = &[
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "metadata.azure.internal",
    "instance-data",
    "instance-data.ec2.internal",
];

/// Metadata services outside link-local space: AWS's IPv6 endpoint (otherwise only
/// "private") and Alibaba Cloud's (otherwise only "shared address space").
const METADATA_ADDRESSES: &[IpAddr] = &[
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
];

/// Why a target may not be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TargetError {
    /// The policy forbids it; calling again will not help.
    #[error("{0}")]
    Refused(String),
    /// The name did not resolve (now); at delivery this is worth another try.
    #[error("{0}")]
    Unresolved(String),
}

/// The webhook target policy (`notifications.allow_private_webhooks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TargetPolicy {
    pub(crate) allow_private: bool,
}

impl TargetPolicy {
    /// Why `ip` may not be called, if it may not.
    pub(crate) fn refusal(self, ip: IpAddr) -> Option<String> {
        let reason = |what: &str| Some(format!("{ip} is {what}"));
        if METADATA_ADDRESSES.contains(&ip) {
            return reason("a cloud metadata address");
        }
        match ip {
            IpAddr::V4(v4) => self.refusal_v4(v4).and_then(reason),
            IpAddr::V6(v6) => match embedded_ipv4(v6) {
                // `::ffff:127.0.0.1` reaches 127.0.0.1: judge the address it reaches.
                Some(v4) => self
                    .refusal(IpAddr::V4(v4))
                    .map(|why| format!("{ip} maps to {why}")),
                None => self.refusal_v6(v6).and_then(reason),
            },
        }
    }

    fn refusal_v4(self, ip: Ipv4Addr) -> Option<&'static str> {
        let [first, second, ..] = ip.octets();
        // 0.0.0.0/8 as a whole: Linux connects 0.0.0.0 to the local host.
        if first == 0 {
            Some("an unspecified address")
        } else if ip.is_link_local() {
            Some("a link-local address")
        } else if ip.is_multicast() {
            Some("a multicast address")
        } else if ip.is_broadcast() {
            Some("the broadcast address")
        } else if self.allow_private {
            None
        } else if ip.is_loopback() {
            Some(PRIVATE_HINT_LOOPBACK)
        } else if ip.is_private() {
            Some(PRIVATE_HINT_PRIVATE)
        } else if first == 100 && second & 0xc0 == 64 {
            // 100.64.0.0/10, carrier-grade NAT: inside the provider's network.
            Some(PRIVATE_HINT_SHARED)
        } else {
            None
        }
    }

    fn refusal_v6(self, ip: Ipv6Addr) -> Option<&'static str> {
        if ip.is_unspecified() {
            Some("an unspecified address")
        } else if ip.is_unicast_link_local() {
            Some("a link-local address")
        } else if ip.is_multicast() {
            Some("a multicast address")
        } else if self.allow_private {
            None
        } else if ip.is_loopback() {
            Some(PRIVATE_HINT_LOOPBACK)
        } else if ip.is_unique_local() || ip.segments()[0] & 0xffc0 == 0xfec0 {
            // fc00::/7 and the deprecated site-local fec0::/10, which some stacks still route.
            Some(PRIVATE_HINT_PRIVATE)
        } else {
            None
        }
    }

    /// Checks what `url` says without a lookup: the scheme, an address literal, the name
    /// of a metadata service.
    pub(crate) fn check_url(self, url: &Url) -> Result<(), TargetError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(TargetError::Refused(format!(
                "scheme {:?} is not http or https",
                url.scheme()
            )));
        }
        match url.host() {
            None => Err(TargetError::Refused("names no host".into())),
            Some(Host::Ipv4(ip)) => self.allowed(IpAddr::V4(ip)).map(drop),
            Some(Host::Ipv6(ip)) => self.allowed(IpAddr::V6(ip)).map(drop),
            Some(Host::Domain(name)) => Self::check_name(name),
        }
    }

    /// Checks `url` and resolves its host; answers the addresses to connect to, every one
    /// of them allowed. A name is refused when any of its addresses is: which one a client
    /// would pick is not ours to know.
    pub(crate) async fn resolve(
        self,
        url: &Url,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, TargetError> {
        self.check_url(url)?;
        let port = url.port_or_known_default().unwrap_or(80);
        match url.host() {
            Some(Host::Ipv4(ip)) => Ok(vec![(ip, port).into()]),
            Some(Host::Ipv6(ip)) => Ok(vec![(ip, port).into()]),
            Some(Host::Domain(name)) => self.resolve_name(name, port, timeout).await,
            None => Err(TargetError::Refused("names no host".into())),
        }
    }

    fn allowed(self, ip: IpAddr) -> Result<IpAddr, TargetError> {
        match self.refusal(ip) {
            Some(why) => Err(TargetError::Refused(why)),
            None => Ok(ip),
        }
    }

    /// Refuses the names of metadata services, whatever they resolve to.
    pub(crate) fn check_name(name: &str) -> Result<(), TargetError> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if METADATA_HOSTS.contains(&name.as_str()) {
            return Err(TargetError::Refused(format!(
                "{name} is a cloud metadata service"
            )));
        }
        Ok(())
    }

    /// Resolves `name` (a domain, never an address literal) and checks every address.
    pub(crate) async fn resolve_name(
        self,
        name: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, TargetError> {
        Self::check_name(name)?;
        let unresolved = || TargetError::Unresolved(format!("{name} does not resolve"));
        let addresses: Vec<SocketAddr> =
            tokio::time::timeout(timeout, tokio::net::lookup_host((name, port)))
                .await
                .map_err(|_| TargetError::Unresolved(format!("{name}: lookup timed out")))?
                .map_err(|_| unresolved())?
                .collect();
        if addresses.is_empty() {
            return Err(unresolved());
        }
        for address in &addresses {
            if let Some(why) = self.refusal(address.ip()) {
                return Err(TargetError::Refused(format!("{name} resolves to {why}")));
            }
        }
        Ok(addresses)
    }
}

const PRIVATE_HINT_LOOPBACK: &str =
    "a loopback address (allowed only with notifications.allow_private_webhooks)";
const PRIVATE_HINT_PRIVATE: &str =
    "a private address (allowed only with notifications.allow_private_webhooks)";
const PRIVATE_HINT_SHARED: &str =
    "a shared (CGNAT) address (allowed only with notifications.allow_private_webhooks)";

/// The IPv4 address an IPv6 address reaches, if it carries one: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, deprecated but still routed by some
/// stacks), NAT64 (`64:ff9b::a.b.c.d`), 6to4 (`2002:aabb:ccdd::/48`, the relay forwards to
/// a.b.c.d) and Teredo (`2001:0::/32`, the client's address inverted in the last 32 bits).
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    match ip.segments() {
        // `::` and `::1` are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, high, low]
        | [0x64, 0xff9b, 0, 0, 0, 0, high, low]
        | [0x2002, high, low, ..] => Some(ipv4_from(high, low)),
        [0x2001, 0, _, _, _, _, high, low] => Some(ipv4_from(!high, !low)),
        _ => None,
    }
}

fn ipv4_from(high: u16, low: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))
}

/// The resolver of the webhook client: every name a delivery connects to is resolved here
/// and checked, so the connection goes to an address the policy allowed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CheckedResolver {
    pub(crate) policy: TargetPolicy,
    pub(crate) timeout: Duration,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let CheckedResolver { policy, timeout } = *self;
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port in.
            let addresses = policy.resolve_name(name.as_str(), 0, timeout).await?;
            let addresses: reqwest::dns::Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

/// The policy's verdict, if `error` (from reqwest) came from [`CheckedResolver`].
pub(crate) fn target_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a TargetError> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<TargetError>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: TargetPolicy = TargetPolicy {
        allow_private: false,
    };
    const PRIVATE_ALLOWED: TargetPolicy = TargetPolicy {
        allow_private: true,
    };
    const WAIT: Duration = Duration::from_secs(5);

    async fn check(policy: TargetPolicy, url: &str) -> Result<Vec<SocketAddr>, TargetError> {
        let url = Url::parse(url).expect("parses");
        policy.resolve(&url, WAIT).await
    }

    /// Loopback and private targets in every spelling the issue lists.
    const PRIVATE_TARGETS: &[&str] = &[
        "http://127.0.0.1:8080/hook",
        "http://localhost:8080/hook",
        "http://2130706433/hook",
        "http://0x7f000001/hook",
        "http://127.1/hook",
        "http://0177.0.0.1/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[::ffff:7f00:1]/hook",
        "http://[::127.0.0.1]/hook",
        "http://[64:ff9b::10.0.0.1]/hook",
        "http://10.0.0.1/hook",
        "http://172.16.5.4/hook",
        "http://192.168.1.1/hook",
        "http://100.64.0.1/hook",
        "http://[fd12:3456::1]/hook",
        "http://[fec0::1]/hook",
        "http://[2002:7f00:1::]/hook",
        "http://[2002:a00:1::1]/hook",
        "http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/hook",
    ];

    /// Targets refused whatever the setting.
    const ALWAYS_REFUSED: &[&str] = &[
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://[2002:a9fe:a9fe::]/",
        "http://[fe80::1]/hook",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://METADATA.google.internal./computeMetadata/v1/",
        "http://metadata/",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "http://0.0.0.0:8080/",
        "http://0/",
        "http://[::]/",
        "http://224.0.0.1/",
        "http://[ff02::1]/",
        "http://255.255.255.255/",
    ];

    #[test]
    fn the_url_crate_turns_numeric_ipv4_forms_into_dotted_ones() {
        for url in [
            "http://2130706433/",
            "http://0x7f000001/",
            "http://127.1/",
            "http://0177.0.0.1/",
        ] {
            let parsed = Url::parse(url).expect("parses");
            assert_eq!(
                parsed.host(),
                Some(Host::Ipv4(Ipv4Addr::LOCALHOST)),
                "{url}"
            );
        }
    }

    #[tokio::test]
    async fn loopback_and_private_targets_are_refused_by_default() {
        for url in PRIVATE_TARGETS {
            match check(DEFAULT, url).await {
                Err(TargetError::Refused(why)) => assert!(
                    why.contains("notifications.allow_private_webhooks"),
                    "{url}: {why}"
                ),
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn link_local_metadata_multicast_and_unspecified_targets_are_refused_always() {
        for policy in [DEFAULT, PRIVATE_ALLOWED] {
            for url in ALWAYS_REFUSED {
                let answer = check(policy, url).await;
                assert!(
                    matches!(answer, Err(TargetError::Refused(_))),
                    "{url} with {policy:?}: {answer:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn loopback_and_private_targets_are_allowed_when_the_setting_says_so() {
        for url in PRIVATE_TARGETS {
            let answer = check(PRIVATE_ALLOWED, url).await;
            assert!(answer.is_ok(), "{url}: {answer:?}");
        }
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_naming_the_address() {
        let answer = check(DEFAULT, "http://localhost:9/hook").await;
        let Err(TargetError::Refused(why)) = answer else {
            panic!("{answer:?}");
        };
        assert!(why.starts_with("localhost resolves to "), "{why}");
        assert!(why.contains("loopback"), "{why}");
    }

    #[tokio::test]
    async fn a_public_address_is_allowed_with_its_port() {
        let answer = check(DEFAULT, "https://203.0.113.10/hook").await;
        assert_eq!(
            answer,
            Ok(vec!["203.0.113.10:443".parse().expect("address")])
        );
        // IPv6 forms that carry a public IPv4 address are judged by it, and allowed.
        for (url, address) in [
            ("http://[2002:cb00:710a::1]/", "[2002:cb00:710a::1]:80"),
            ("http://[::ffff:203.0.113.10]/", "[::ffff:203.0.113.10]:80"),
            ("http://[2001:db8::1]:8443/", "[2001:db8::1]:8443"),
        ] {
            let answer = check(DEFAULT, url).await;
            assert_eq!(answer, Ok(vec![address.parse().expect("address")]), "{url}");
        }
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_unresolved() {
        let answer = check(DEFAULT, "https://nothing-here.invalid/hook").await;
        assert_eq!(
            answer,
            Err(TargetError::Unresolved(
                "nothing-here.invalid does not resolve".into()
            ))
        );
    }

    #[tokio::test]
    async fn schemes_other_than_http_and_https_are_refused() {
        for url in [
            "ftp://203.0.113.10/",
            "file:///etc/passwd",
            "gopher://203.0.113.10/",
        ] {
            let answer = check(PRIVATE_ALLOWED, url).await;
            assert!(
                matches!(answer, Err(TargetError::Refused(_))),
                "{url}: {answer:?}"
            );
        }
    }
}
