//! Header rules for a proxy: hop-by-hop headers are removed in both directions (RFC 9110
//! §7.6.1), `Via` is added, and a request that already carries this instance's `Via` entry is
//! a loop.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that only describe one connection, never forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Whether the message asks to switch protocols (`Connection: upgrade` with `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers: the fixed list, `Upgrade` (unless `upgrading`), and every
/// header that `Connection` names. When upgrading, `Connection: upgrade` is put back.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    // Most messages carry none of them: one pass over the names instead of nine lookups.
    let any = headers
        .keys()
        .any(|name| name == header::UPGRADE || HOP_BY_HOP.contains(name));
    if !any {
        if upgrading {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|name| !(upgrading && name == header::UPGRADE))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Appends this instance's `Via` entry.
pub fn add_via(headers: &mut HeaderMap, via: &HeaderValue) {
    headers.append(header::VIA, via.clone());
}

/// Whether `Via` already names this instance: the request went around and came back.
pub fn has_looped(headers: &HeaderMap, via_token: &str) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|entry| entry.split_whitespace().nth(1) == Some(via_token))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn removes_fixed_and_connection_named_headers() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("connection", "close"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic Zm9v"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
            ("authorization", "Bearer kept"),
        ]);
        remove_hop_by_hop(&mut map, false);
        let mut left: Vec<_> = map.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        assert_eq!(left, ["authorization", "x-kept"]);
    }

    #[test]
    fn keeps_upgrade_when_upgrading() {
        let mut map = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("keep-alive", "1"),
        ]);
        assert!(is_upgrade(&map));
        remove_hop_by_hop(&mut map, true);
        assert_eq!(map.get("upgrade").unwrap(), "websocket");
        assert_eq!(map.get("connection").unwrap(), "upgrade");
        assert!(map.get("keep-alive").is_none());
    }

    #[test]
    fn upgrade_needs_both_headers() {
        assert!(!is_upgrade(&headers(&[("upgrade", "websocket")])));
        assert!(!is_upgrade(&headers(&[("connection", "upgrade")])));
    }

    #[test]
    fn loop_detection_matches_only_our_token() {
        let map = headers(&[
            ("via", "1.0 fred, 1.1 fusebox-0000abcd"),
            ("via", "1.1 other"),
        ]);
        assert!(has_looped(&map, "fusebox-0000abcd"));
        assert!(!has_looped(&map, "fusebox-0000abc"));
        assert!(!has_looped(&HeaderMap::new(), "fusebox-0000abcd"));
    }

    #[test]
    fn via_is_appended() {
        let mut map = headers(&[("via", "1.0 fred")]);
        add_via(&mut map, &HeaderValue::from_static("1.1 fusebox-1"));
        let all: Vec<_> = map.get_all("via").iter().collect();
        assert_eq!(all, ["1.0 fred", "1.1 fusebox-1"]);
    }
}
