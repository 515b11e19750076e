//! Where Tally may send outbound HTTP (event deliveries to an app's endpoints): an absolute
//! `https` URL whose host resolves only to public addresses. Loopback, private, link-local
//! (cloud metadata services live there), unspecified and other non-public destinations are
//! refused unless the deployment allows private destinations (`TALLY_WEBHOOK_ALLOW_PRIVATE`),
//! which also allows `http`. The address is checked again at every attempt, on what the name
//! resolves to then (a name may be pointed elsewhere after it was checked).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::Host;
pub use url::Url;

/// Longest endpoint URL, in characters.
pub const URL_CHARS_MAX: usize = 2048;

/// Why a URL may not be called; the message names the rule it breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Checks what can be checked without resolving the host: length, form, scheme, and a literal
/// address.
pub fn check_url(text: &str, allow_private: bool) -> Result<Url, Refused> {
    if text.is_empty() || text.chars().count() > URL_CHARS_MAX {
        return Err(Refused(format!("must be 1 to {URL_CHARS_MAX} characters")));
    }
    let url =
        Url::parse(text).map_err(|error| Refused(format!("is not an absolute URL ({error})")))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => return Err(Refused("must use https".into())),
        _ => return Err(Refused("must be an https URL".into())),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refused("must not carry credentials".into()));
    }
    match url.host() {
        None => return Err(Refused("must name a host".into())),
        Some(Host::Ipv4(ip)) => check_address(IpAddr::V4(ip), allow_private)?,
        Some(Host::Ipv6(ip)) => check_address(IpAddr::V6(ip), allow_private)?,
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if !allow_private && (name == "localhost" || name.ends_with(".localhost")) {
                return Err(Refused("must not be a loopback host".into()));
            }
        }
    }
    Ok(url)
}

/// Resolves the URL's host and checks every address; the addresses to connect to.
pub async fn resolve(url: &Url, allow_private: bool) -> Result<Vec<SocketAddr>, Refused> {
    let port = url
        .port_or_known_default()
        .ok_or_else(|| Refused("has no port".into()))?;
    let addresses: Vec<SocketAddr> = match url.host() {
        None => return Err(Refused("must name a host".into())),
        Some(Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        Some(Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        Some(Host::Domain(name)) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|error| Refused(format!("host does not resolve ({error})")))?
            .collect(),
    };
    if addresses.is_empty() {
        return Err(Refused("host resolves to no address".into()));
    }
    for address in &addresses {
        check_address(address.ip(), allow_private)?;
    }
    Ok(addresses)
}

/// Refuses a destination that is not public, unless private ones are allowed.
pub fn check_address(ip: IpAddr, allow_private: bool) -> Result<(), Refused> {
    if allow_private || is_public(ip) {
        Ok(())
    } else {
        Err(Refused(format!(
            "resolves to {ip}, a loopback, private, link-local or otherwise non-public address"
        )))
    }
}

/// Whether `ip` is an address of the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(ip),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, _, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // Shared address space (carrier-grade NAT), 100.64.0.0/10.
        || (a == 100 && (64..128).contains(&b))
        // Protocol assignments, 192.0.0.0/24, and benchmarking, 198.18.0.0/15.
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || (a == 198 && (18..20).contains(&b))
        // Reserved, 240.0.0.0/4.
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local, fc00::/7.
        || (first & 0xfe00) == 0xfc00
        // Link-local, fe80::/10.
        || (first & 0xffc0) == 0xfe80
        // Documentation, 2001:db8::/32.
        || (first == 0x2001 && ip.segments()[1] == 0x0db8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_addresses_pass_and_the_others_do_not() {
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.4.4",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
    }

    #[test]
    fn urls_must_be_https_to_a_public_host_unless_private_ones_are_allowed() {
        assert!(check_url("https://hooks.example.com/tally", false).is_ok());
        assert!(check_url("http://hooks.example.com/tally", false).is_err());
        assert!(check_url("http://127.0.0.1:8080/hook", true).is_ok());
        for refused in [
            "",
            "/relative",
            "ftp://example.com/",
            "https://127.0.0.1/",
            "https://[::1]/",
            "https://localhost/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://user:pass@example.com/",
        ] {
            assert!(check_url(refused, false).is_err(), "{refused}");
        }
        let long = format!("https://example.com/{}", "a".repeat(URL_CHARS_MAX));
        assert!(check_url(&long, true).is_err());
    }

    #[tokio::test]
    async fn a_name_is_refused_when_it_resolves_to_a_private_address() {
        let url = Url::parse("https://localhost:4443/").unwrap();
        assert!(resolve(&url, false).await.is_err());
        assert!(resolve(&url, true).await.is_ok());
    }
}
