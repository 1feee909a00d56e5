//! One canonical form for every address, so that no spelling of an address walks around a rule
//! written for another: policy matching, the deny list, the loop guard, destinations and metric
//! labels all see the form made here.
//!
//! An IPv4 address can be written in many ways that resolvers accept (`inet_aton`, and the URL
//! standard's host parser): `2130706433`, `127.1`, `0x7f000001`, `0177.0.0.1`, or as the IPv6
//! forms that embed it (`::ffff:127.0.0.1`, `::127.0.0.1`). Each is the dotted quad here. An
//! IPv6 address is its RFC 5952 text; a zone id (`fe80::1%eth0`) is refused, since a zone is
//! not part of an address a policy can name. Numeric IPv4 spellings follow the WHATWG URL
//! standard's IPv4 parser (the `url` crate's), which accepts what `inet_aton` accepts; a host
//! that ends in a number but is not a valid IPv4 address is refused rather than passed on as a
//! name.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv6 address that embeds an IPv4 one (IPv4-mapped `::ffff:a.b.c.d`, or the deprecated
/// IPv4-compatible `::a.b.c.d`) as that IPv4 address; any other address as it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.segments() {
            [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 => {
                IpAddr::V4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)))
            }
            _ => ip.to_canonical(),
        },
        IpAddr::V4(_) => ip,
    }
}

/// `ip:port` of an address in its canonical form, IPv6 in brackets: how an endpoint is named
/// (its `endpoint` label).
pub fn authority_text(addr: std::net::SocketAddr) -> String {
    std::net::SocketAddr::new(canonical(addr.ip()), addr.port()).to_string()
}

/// The canonical spelling of `host` (lower case, no brackets, no trailing dot): an IP address
/// in any spelling as its canonical text; a name as it is.
pub fn canonical_host(host: &str) -> Result<Cow<'_, str>, String> {
    // The common cases first, in one pass and without parsing: a name, or a dotted quad
    // already (the URL parser, for the other spellings, runs IDNA first).
    match shape(host.as_bytes()) {
        Shape::Name | Shape::DottedQuad => Ok(Cow::Borrowed(host)),
        Shape::MaybeIpv6 => ipv6(host),
        Shape::MaybeIpv4 => match url::Host::parse(host) {
            Ok(url::Host::Ipv4(ip)) => Ok(spelled(host, ip)),
            Ok(_) => Ok(Cow::Borrowed(host)),
            Err(_) => Err(format!(
                "{host:?} ends in a number but is not a valid IPv4 address"
            )),
        },
    }
}

/// What a host looks like, before any parsing.
enum Shape {
    /// Not an address in any spelling.
    Name,
    /// `a.b.c.d`, four decimal parts of at most 255 without leading zeros: canonical already.
    DottedQuad,
    /// Has a `:` or a `%`: an IPv6 address, or nothing valid.
    MaybeIpv6,
    /// Only digits, `x`, hex letters and dots, its last label starting with a digit (the URL
    /// standard's "ends in a number"): an IPv4 address in another spelling, or nothing valid.
    MaybeIpv4,
}

fn shape(host: &[u8]) -> Shape {
    // One pass: every request's host comes through here.
    let (mut parts, mut part_len, mut part_value) = (1u32, 0u32, 0u32);
    let (mut decimal, mut numeric, mut leading_zero) = (true, true, false);
    let mut last_starts_with_digit = false;
    for &b in host {
        match b {
            b':' | b'%' => return Shape::MaybeIpv6,
            b'.' => {
                decimal &= part_len > 0 && !leading_zero && part_value <= 255;
                (parts, part_len, part_value, leading_zero) = (parts + 1, 0, 0, false);
            }
            b'0'..=b'9' => {
                if part_len == 0 {
                    last_starts_with_digit = true;
                    leading_zero = false;
                } else if part_value == 0 {
                    leading_zero = true;
                }
                part_len += 1;
                part_value = part_value
                    .saturating_mul(10)
                    .saturating_add(u32::from(b - b'0'));
            }
            _ => {
                if part_len == 0 {
                    last_starts_with_digit = false;
                }
                part_len += 1;
                decimal = false;
                numeric &= b.is_ascii_hexdigit() || b == b'x';
            }
        }
    }
    decimal &= part_len > 0 && !leading_zero && part_value <= 255;
    if !numeric || !last_starts_with_digit || part_len == 0 {
        Shape::Name
    } else if decimal && parts == 4 {
        Shape::DottedQuad
    } else {
        Shape::MaybeIpv4
    }
}

/// An IPv6 address (or one that embeds an IPv4 address) in its canonical text.
fn ipv6(host: &str) -> Result<Cow<'_, str>, String> {
    let ip: Ipv6Addr =
        host.parse()
            .map_err(|_| match (host.contains(':'), host.contains('%')) {
                (true, true) => format!("{host:?}: IPv6 zone ids are not supported"),
                (true, false) => format!("{host:?} is not an IPv6 address"),
                _ => format!("{host:?} is not a host name: a `%` is in no name or address"),
            })?;
    let text = canonical(IpAddr::V6(ip)).to_string();
    Ok(if text == host {
        Cow::Borrowed(host)
    } else {
        Cow::Owned(text)
    })
}

/// The dotted quad of `ip`, borrowing `host` when it already is that.
fn spelled(host: &str, ip: Ipv4Addr) -> Cow<'_, str> {
    let text = ip.to_string();
    if text == host {
        Cow::Borrowed(host)
    } else {
        Cow::Owned(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_an_address_is_one() {
        for spelling in [
            "127.0.0.1",
            "2130706433",
            "127.1",
            "127.0.1",
            "0x7f000001",
            "0x7f.0.0.1",
            "0x7F.0x0.0x0.0x1",
            "0177.0.0.1",
            "017700000001",
            "0177.1",
            "::ffff:127.0.0.1",
            "::ffff:7f00:1",
            "0:0:0:0:0:ffff:127.0.0.1",
            "::127.0.0.1",
        ] {
            assert_eq!(
                canonical_host(spelling).as_deref(),
                Ok("127.0.0.1"),
                "{spelling}"
            );
        }
        for (spelling, canonical) in [
            ("255.255.255.255", "255.255.255.255"),
            ("0.0.0.0", "0.0.0.0"),
            ("01.2.3.4", "1.2.3.4"),
            ("1.2.3", "1.2.0.3"),
            ("0:0:0:0:0:0:0:1", "::1"),
            ("2001:DB8::1", "2001:db8::1"),
            ("2001:0db8:0000::0001", "2001:db8::1"),
        ] {
            assert_eq!(
                canonical_host(spelling).as_deref(),
                Ok(canonical),
                "{spelling}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn the_one_pass_shape_agrees_with_the_parsers(host in "[0-9a-fx.:%]{0,20}") {
            let quad = host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.to_string() == host);
            proptest::prop_assert_eq!(matches!(shape(host.as_bytes()), Shape::DottedQuad), quad);
            if let Ok(canonical) = canonical_host(&host) {
                let again = canonical_host(&canonical);
                proptest::prop_assert_eq!(again.as_deref(), Ok(&*canonical));
            }
        }
    }

    #[test]
    fn names_stay_and_bad_numbers_are_refused() {
        for name in [
            "example.com",
            "cafe.be",
            "1e100.net",
            "deadbeef",
            "a1.b2",
            "x",
        ] {
            assert_eq!(canonical_host(name).as_deref(), Ok(name));
        }
        for bad in [
            "256.0.0.1",
            "1.2.3.4.5",
            "08.0.0.1",
            "4294967296",
            "0x100000000",
            "1.16777216",
            "fe80::1%eth0",
            "fe80::1%25eth0",
            "::g",
            "ex%61mple.com",
        ] {
            assert!(canonical_host(bad).is_err(), "{bad}");
        }
    }
}
