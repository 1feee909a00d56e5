//! Who may use the admin API's mutating endpoints (POST: force a breaker, reload).
//!
//! GET endpoints stay open: they only read, and Prometheus must scrape `/metrics`. POST
//! endpoints change what the proxy does, so:
//!
//! | admin address | token configured | request                 | decision |
//! |---------------|------------------|-------------------------|----------|
//! | any           | yes              | `Bearer <that token>`   | allowed  |
//! | any           | yes              | anything else / missing | 401      |
//! | loopback      | no               | anything                | allowed  |
//! | not loopback  | no               | anything                | 403      |
//!
//! A configured token is required even on loopback: whoever configured one asked for it, and
//! other local users or processes can reach loopback too. Without a token, a non-loopback
//! admin address refuses POST altogether rather than letting the network force breakers.

use std::net::IpAddr;

use http::HeaderValue;

/// The answer for one mutating request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// 401: a token is configured and the request did not present it.
    Unauthorized,
    /// 403: the admin listener is reachable from the network and no token is configured.
    Forbidden,
}

/// Decides whether a mutating request may proceed. `loopback`: the admin listener is bound to
/// a loopback address; `token`: the configured token (`None` when unset or empty);
/// `authorization`: the request's `Authorization` header.
pub fn authorize(
    loopback: bool,
    token: Option<&str>,
    authorization: Option<&HeaderValue>,
) -> Decision {
    match token {
        Some(expected) => match authorization.and_then(bearer) {
            Some(presented) if constant_time_eq(presented, expected.as_bytes()) => {
                Decision::Allowed
            }
            _ => Decision::Unauthorized,
        },
        None if loopback => Decision::Allowed,
        None => Decision::Forbidden,
    }
}

/// Why a mutating request looks like a browser's cross-site request, if it does: an `Origin`
/// that is not the admin's own (`http://` + the `Host` the request was sent to), or
/// `Sec-Fetch-Site` other than `same-origin` / `none`. A web page can make a browser send a
/// "simple" POST to a loopback address without any preflight; operators' tools (curl,
/// `fusebox status`, scripts) send neither header. Checked before the token, so that a
/// page cannot use the token-less loopback admin.
pub fn cross_site(headers: &http::HeaderMap) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return Some(format!(
                "Sec-Fetch-Site: {}",
                String::from_utf8_lossy(site.as_bytes())
            ));
        }
    }
    let origin = headers.get(http::header::ORIGIN)?;
    let own = headers
        .get(http::header::HOST)
        .map(|host| [b"http://".as_slice(), host.as_bytes()].concat());
    if own.is_some_and(|own| own.eq_ignore_ascii_case(origin.as_bytes())) {
        return None;
    }
    Some(format!(
        "Origin: {}",
        String::from_utf8_lossy(origin.as_bytes())
    ))
}

/// Whether the admin serves a request sent to `host` (its `Host` header), against DNS
/// rebinding: a web page on a name its attacker controls, re-pointed at the admin's address,
/// makes the browser send `Host: that name`. Served: no `Host` (not a browser), an IP
/// literal (a page can only be on that IP if it is the admin's own: nothing to rebind), a
/// loopback name (`localhost`, `*.localhost`, which browsers resolve locally), or a name in
/// `names` (`--admin-host`). Port and a trailing dot do not matter; case does not either.
pub fn serves_host(host: Option<&HeaderValue>, names: &[String]) -> bool {
    let Some(host) = host else {
        return true;
    };
    let Ok(authority) = http::uri::Authority::try_from(host.as_bytes()) else {
        return false;
    };
    let name = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name.parse::<IpAddr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || names.contains(&name)
}

/// Whether an address only accepts local connections (IPv4-mapped loopback included).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The token of `Bearer <token>` (scheme case-insensitive, as RFC 9110 says).
fn bearer(value: &HeaderValue) -> Option<&[u8]> {
    let bytes = value.as_bytes();
    let (scheme, rest) = bytes.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compares without returning early on the first differing byte, so the time taken does not
/// tell an attacker how much of a guess was right. (The length may leak; the token's entropy
/// does not depend on hiding it.)
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(value: &str) -> HeaderValue {
        HeaderValue::from_str(value).unwrap()
    }

    #[test]
    fn loopback_without_a_token_is_open() {
        assert_eq!(authorize(true, None, None), Decision::Allowed);
        assert_eq!(
            authorize(true, None, Some(&header("Bearer whatever"))),
            Decision::Allowed
        );
    }

    #[test]
    fn network_without_a_token_is_refused_whatever_is_sent() {
        assert_eq!(authorize(false, None, None), Decision::Forbidden);
        assert_eq!(
            authorize(false, None, Some(&header("Bearer s3cret"))),
            Decision::Forbidden
        );
    }

    #[test]
    fn a_configured_token_is_required_everywhere() {
        for loopback in [true, false] {
            let token = Some("s3cret");
            assert_eq!(authorize(loopback, token, None), Decision::Unauthorized);
            assert_eq!(
                authorize(loopback, token, Some(&header("Bearer wrong!"))),
                Decision::Unauthorized
            );
            assert_eq!(
                authorize(loopback, token, Some(&header("Bearer s3cre"))),
                Decision::Unauthorized
            );
            assert_eq!(
                authorize(loopback, token, Some(&header("Basic s3cret"))),
                Decision::Unauthorized
            );
            assert_eq!(
                authorize(loopback, token, Some(&header("s3cret"))),
                Decision::Unauthorized
            );
            assert_eq!(
                authorize(loopback, token, Some(&header("Bearer "))),
                Decision::Unauthorized
            );
            assert_eq!(
                authorize(loopback, token, Some(&header("Bearer s3cret"))),
                Decision::Allowed
            );
            assert_eq!(
                authorize(loopback, token, Some(&header("bearer  s3cret "))),
                Decision::Allowed
            );
        }
    }

    #[test]
    fn cross_site_browser_requests_are_recognised() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut map = http::HeaderMap::new();
            for (name, value) in pairs {
                map.insert(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    header(value),
                );
            }
            map
        };
        let host = ("host", "127.0.0.1:9901");
        assert_eq!(cross_site(&headers(&[host])), None, "curl sends neither");
        assert_eq!(
            cross_site(&headers(&[host, ("origin", "http://127.0.0.1:9901")])),
            None
        );
        assert_eq!(
            cross_site(&headers(&[host, ("sec-fetch-site", "same-origin")])),
            None
        );
        for refused in [
            vec![host, ("origin", "http://evil.example")],
            vec![host, ("origin", "null")],
            vec![host, ("origin", "http://127.0.0.1:9902")],
            vec![("origin", "http://127.0.0.1:9901")],
            vec![host, ("sec-fetch-site", "cross-site")],
            vec![host, ("sec-fetch-site", "same-site")],
        ] {
            assert!(cross_site(&headers(&refused)).is_some(), "{refused:?}");
        }
    }

    #[test]
    fn only_the_admins_own_names_are_served() {
        let names = ["fusebox-admin.svc".to_owned()];
        let served = |host: &str| serves_host(Some(&header(host)), &names);
        for own in [
            "127.0.0.1:9901",
            "[::1]:9901",
            "10.1.2.3:9901",
            "localhost:9901",
            "LocalHost.:9901",
            "app.localhost",
            "fusebox-admin.svc:9901",
            "FUSEBOX-ADMIN.svc.",
        ] {
            assert!(served(own), "{own}");
        }
        for foreign in [
            "evil.test:9901",
            "localhost.evil.test",
            "127.0.0.1.evil.test",
            "a b",
            "",
        ] {
            assert!(!served(foreign), "{foreign}");
        }
        assert!(serves_host(None, &[]), "no Host: not a browser");
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("127.0.0.1".parse().unwrap()));
        assert!(is_loopback("127.3.2.1".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("0.0.0.0".parse().unwrap()));
        assert!(!is_loopback("::".parse().unwrap()));
        assert!(!is_loopback("10.0.0.7".parse().unwrap()));
    }

    #[test]
    fn constant_time_eq_compares_bytes() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
