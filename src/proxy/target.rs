//! Where a request wants to go, read from its request target (RFC 9112 §3.2): absolute-form
//! (`GET http://host/path`), origin-form with `Host`, or authority-form for `CONNECT`.
//! Anything else is the app's mistake and becomes a 400 `bad-request` with a message.

use std::borrow::Cow;

use http::uri::{Authority, Scheme};
use http::{header, Request};

use crate::address::canonical_host;

/// A destination as the app asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// Lowercase, IPv6 without brackets.
    pub host: Cow<'a, str>,
    pub port: u16,
    /// Whether the app named the port (`http://host:8080/`), as opposed to the scheme default.
    pub explicit_port: bool,
    /// The app asked for `https://` in absolute-form.
    pub https: bool,
}

/// The target of an HTTP request (not CONNECT).
pub fn http_target<B>(req: &Request<B>) -> Result<Target<'_>, String> {
    let uri = req.uri();
    let https = match uri.scheme() {
        None => false,
        Some(s) if *s == Scheme::HTTP => false,
        Some(s) if *s == Scheme::HTTPS => true,
        Some(other) => {
            return Err(format!(
                "unsupported scheme {other:?}: fusebox forwards http and https"
            ))
        }
    };
    let authority = match uri.authority() {
        Some(authority) => authority,
        None if uri.scheme().is_some() => return Err("absolute URI without a host".to_owned()),
        None => return host_header_target(req),
    };
    from_authority(authority, https)
}

fn host_header_target<B>(req: &Request<B>) -> Result<Target<'_>, String> {
    let host = req
        .headers()
        .get(header::HOST)
        .ok_or("origin-form request without a Host header: send absolute-form (http://host/path) or set Host")?;
    let host = host
        .to_str()
        .map_err(|_| "Host header is not valid text".to_owned())?;
    let authority: Authority = host
        .parse()
        .map_err(|_| format!("Host header {host:?} is not host[:port]"))?;
    let target = from_authority(&authority, false)?;
    Ok(Target {
        host: Cow::Owned(target.host.into_owned()),
        ..target
    })
}

fn from_authority(authority: &Authority, https: bool) -> Result<Target<'_>, String> {
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err("request target has an empty host".to_owned());
    }
    if authority.as_str().contains('@') {
        return Err("userinfo in the request target is not allowed".to_owned());
    }
    let port = authority.port_u16();
    Ok(Target {
        host: normalize(host)?,
        port: port.unwrap_or(if https { 443 } else { 80 }),
        explicit_port: port.is_some(),
        https,
    })
}

/// The target of a CONNECT request: `host:port`, port required.
pub fn connect_target<B>(req: &Request<B>) -> Result<Target<'_>, String> {
    let authority = req
        .uri()
        .authority()
        .ok_or("CONNECT needs an authority-form target: host:port")?;
    if authority.port_u16().is_none() {
        return Err(format!("CONNECT {authority} has no port: use host:port"));
    }
    from_authority(authority, false)
}

/// The one spelling of a host that policy matching and the guard see: lower case, without the
/// trailing dot of a fully qualified name (`API.example.com.` is `api.example.com`), an IP
/// address in its canonical form (`2130706433`, `127.1`, `0x7f000001`, `::ffff:127.0.0.1` are
/// `127.0.0.1`: [`crate::address`]), so that a policy that denies a name or an address cannot
/// be walked around by spelling it differently.
fn normalize(host: &str) -> Result<Cow<'_, str>, String> {
    let host = match host.strip_suffix('.') {
        Some(name) if name.is_empty() || name.ends_with('.') => {
            return Err(format!("request target host {host:?} is not a host name"))
        }
        Some(name) => name,
        None => host,
    };
    let refused = |e| format!("request target host {e}");
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        let lower = host.to_ascii_lowercase();
        let canonical = canonical_host(&lower).map_err(refused)?;
        return Ok(Cow::Owned(canonical.into_owned()));
    }
    canonical_host(host).map_err(refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn req(method: Method, uri: &str, host: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(host) = host {
            builder = builder.header("host", host);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn absolute_form() {
        let r = req(Method::GET, "http://API.example.com/x?y", None);
        let t = http_target(&r).unwrap();
        assert_eq!(
            (t.host.as_ref(), t.port, t.explicit_port, t.https),
            ("api.example.com", 80, false, false)
        );
        let r = req(Method::GET, "http://[::1]:8080/", None);
        let t = http_target(&r).unwrap();
        assert_eq!(
            (t.host.as_ref(), t.port, t.explicit_port),
            ("::1", 8080, true)
        );
        let r = req(Method::GET, "https://example.com/", None);
        assert_eq!(http_target(&r).unwrap().port, 443);
    }

    #[test]
    fn origin_form_uses_host() {
        let r = req(Method::GET, "/path", Some("svc.internal:8080"));
        let t = http_target(&r).unwrap();
        assert_eq!((t.host.as_ref(), t.port), ("svc.internal", 8080));
        let r = req(Method::GET, "/path", None);
        assert!(http_target(&r).unwrap_err().contains("Host"));
    }

    #[test]
    fn one_spelling_per_host() {
        for uri in [
            "http://api.example.com/",
            "http://API.Example.COM/",
            "http://api.example.com./",
            "http://API.EXAMPLE.COM.:80/",
        ] {
            let r = req(Method::GET, uri, None);
            assert_eq!(http_target(&r).unwrap().host, "api.example.com", "{uri}");
        }
        let r = req(Method::GET, "/", Some("Svc.Internal.:8080"));
        assert_eq!(http_target(&r).unwrap().host, "svc.internal");
        let r = req(Method::CONNECT, "localhost.:443", None);
        assert_eq!(connect_target(&r).unwrap().host, "localhost");
        for bad in ["http://example.com../", "http://./"] {
            assert!(http_target(&req(Method::GET, bad, None)).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_targets_are_explained() {
        assert!(http_target(&req(Method::GET, "ftp://example.com/", None))
            .unwrap_err()
            .contains("unsupported scheme"));
        assert!(
            http_target(&req(Method::GET, "http://user@example.com/", None))
                .unwrap_err()
                .contains("userinfo")
        );
        let connect = req(Method::CONNECT, "example.com:443", None);
        assert_eq!(connect_target(&connect).unwrap().port, 443);
    }
}
