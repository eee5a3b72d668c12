//! Trusted gateway headers: an authenticating proxy in front of the API names the user (`X-Remote-User`, or the
//! `X-User-Email` of the system CLS replaces) and its groups (`X-Remote-Group`, repeated or comma-separated).
//! They count only when the gateway is configured and the connection comes from one of its addresses; from
//! anywhere else they are ignored and the request needs a token like any other.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

#[derive(Clone, Debug, Default)]
pub struct GatewayConfig {
    /// Addresses (or networks) the gateway connects from.
    pub trusted: Vec<IpNet>,
}

impl GatewayConfig {
    /// Parses `ADDRESS` or `ADDRESS/PREFIX` entries.
    pub fn parse(entries: &[String]) -> Result<GatewayConfig, String> {
        let trusted = entries
            .iter()
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("not an address or network: {entry:?}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(GatewayConfig { trusted })
    }

    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
            v4 => v4,
        };
        self.trusted.iter().any(|network| network.contains(&peer))
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim).filter(|value| !value.is_empty())
}

/// The user and groups the gateway asserts, if it names a user.
pub fn identity_headers(headers: &HeaderMap) -> Option<(String, Vec<String>)> {
    let user = header(headers, "x-remote-user").or_else(|| header(headers, "x-user-email"))?;
    let groups = headers
        .get_all("x-remote-group")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|group| !group.is_empty())
        .map(str::to_owned)
        .collect();
    Some((user.to_owned(), groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_addresses_are_trusted() {
        let gateway = GatewayConfig::parse(&["10.0.0.0/8".into(), "127.0.0.2".into()]).expect("parses");
        assert!(gateway.trusts("10.1.2.3".parse().expect("ip")));
        assert!(gateway.trusts("127.0.0.2".parse().expect("ip")));
        assert!(gateway.trusts("::ffff:127.0.0.2".parse().expect("ip")));
        assert!(!gateway.trusts("127.0.0.1".parse().expect("ip")));
        assert!(GatewayConfig::parse(&["nope".into()]).is_err());
    }

    #[test]
    fn user_and_groups_come_from_the_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(identity_headers(&headers), None);
        headers.insert("x-user-email", "a@example.com".parse().expect("header"));
        assert_eq!(identity_headers(&headers), Some(("a@example.com".into(), vec![])));
        headers.insert("x-remote-user", "alice".parse().expect("header"));
        headers.append("x-remote-group", "devs, ops".parse().expect("header"));
        headers.append("x-remote-group", "qa".parse().expect("header"));
        assert_eq!(identity_headers(&headers), Some(("alice".into(), vec!["devs".into(), "ops".into(), "qa".into()])));
    }
}
