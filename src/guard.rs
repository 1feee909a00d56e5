//! Egress address guard: pure classification of IP addresses, no I/O.
//!
//! A policy's `allow_private` and `allow_link_local` (docs/ARCHITECTURE.md §3) say which kinds of
//! addresses a destination may reach. The checks here run on the addresses a host *resolves
//! to*, never on the host name in the request: a name is only a pointer, and anyone who
//! controls a DNS zone can point `innocent.example.com` at `169.254.169.254` (cloud metadata)
//! or `127.0.0.1`. Checking the name, or an IP literal only, would let such names through.
//!
//! Checking resolved addresses is only half of it. If fusebox checked one resolution and then
//! let the HTTP client resolve the name again to connect, an attacker's DNS server could answer
//! the first query with a public address and the second with a private one (DNS rebinding,
//! with a TTL of zero). So fusebox resolves once, passes the answers through
//! [`filter_allowed`], and connects to exactly the addresses it checked; the name is used only
//! for the `Host` header and TLS SNI. (smokescreen does the same; Envoy's dynamic forward proxy
//! does not.)
//!
//! IPv6 forms that carry an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
//! `::a.b.c.d`, NAT64 `64:ff9b::/96` and 6to4 `2002::/16`) are classified by the embedded IPv4
//! address, since on many hosts connecting to them reaches that IPv4 address.
//!
//! The ranges are written out explicitly rather than relying on `std`'s unstable helpers
//! (`is_global` and friends), so what is denied does not change with the toolchain.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// What kind of address an IP is, as far as the egress guard is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    /// Globally routable (or at least not in any range below).
    Public,
    /// Private networks: RFC 1918, CGNAT, IETF/benchmarking ranges, IPv6 ULA and site-local.
    Private,
    /// 127/8 and `::1`.
    Loopback,
    /// 169.254/16 and fe80::/10, where cloud metadata services live (plus AWS's IPv6 IMDS).
    LinkLocal,
    /// 0.0.0.0/8 and `::`; connecting to 0.0.0.0 reaches localhost on Linux.
    Unspecified,
    /// 224/4 and ff00::/8.
    Multicast,
    /// Reserved (240/4) and limited broadcast (255.255.255.255).
    Other,
}

impl AddrClass {
    /// Stable lower-case name, for logs, error messages and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            AddrClass::Public => "public",
            AddrClass::Private => "private",
            AddrClass::Loopback => "loopback",
            AddrClass::LinkLocal => "link-local",
            AddrClass::Unspecified => "unspecified",
            AddrClass::Multicast => "multicast",
            AddrClass::Other => "reserved",
        }
    }
}

impl fmt::Display for AddrClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Classify an address. IPv6 addresses that embed an IPv4 address are classified by it.
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// `true` when `ip` lies in `base/prefix_len`.
fn in_v4(ip: Ipv4Addr, base: [u8; 4], prefix_len: u32) -> bool {
    let mask = if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - prefix_len)
    };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(base)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    // 0.0.0.0/8: "this network" (RFC 791/1122). Connecting to 0.0.0.0 reaches localhost on Linux.
    if in_v4(ip, [0, 0, 0, 0], 8) {
        return AddrClass::Unspecified;
    }
    // 127.0.0.0/8: loopback (RFC 1122).
    if in_v4(ip, [127, 0, 0, 0], 8) {
        return AddrClass::Loopback;
    }
    // 169.254.0.0/16: link-local (RFC 3927); 169.254.169.254 is the cloud metadata service.
    if in_v4(ip, [169, 254, 0, 0], 16) {
        return AddrClass::LinkLocal;
    }
    // 224.0.0.0/4: multicast (RFC 5771).
    if in_v4(ip, [224, 0, 0, 0], 4) {
        return AddrClass::Multicast;
    }
    // 240.0.0.0/4: reserved (RFC 1112), which also holds 255.255.255.255, the limited
    // broadcast address (RFC 919).
    if in_v4(ip, [240, 0, 0, 0], 4) {
        return AddrClass::Other;
    }
    const PRIVATE: &[([u8; 4], u32)] = &[
        ([10, 0, 0, 0], 8),     // RFC 1918
        ([172, 16, 0, 0], 12),  // RFC 1918: 172.16.0.0 - 172.31.255.255
        ([192, 168, 0, 0], 16), // RFC 1918
        ([100, 64, 0, 0], 10),  // RFC 6598 shared address space (carrier-grade NAT)
        ([192, 0, 0, 0], 24),   // RFC 6890 IETF protocol assignments
        ([198, 18, 0, 0], 15),  // RFC 2544 benchmarking: 198.18.0.0 - 198.19.255.255
    ];
    if PRIVATE.iter().any(|&(base, len)| in_v4(ip, base, len)) {
        return AddrClass::Private;
    }
    AddrClass::Public
}

/// AWS's instance metadata service over IPv6 (IMDS). It is inside the ULA range, so by prefix
/// it would be merely "private", and `allow_private` is on by default; it is classified as
/// link-local instead so that, like 169.254.169.254, it needs `allow_link_local`.
const AWS_IMDS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    let seg = ip.segments();

    // ::/128: unspecified (RFC 4291).
    if ip == Ipv6Addr::UNSPECIFIED {
        return AddrClass::Unspecified;
    }
    // ::1/128: loopback (RFC 4291).
    if ip == Ipv6Addr::LOCALHOST {
        return AddrClass::Loopback;
    }
    // ::ffff:0:0/96: IPv4-mapped (RFC 4291); the kernel connects to the IPv4 address.
    if seg[..5] == [0; 5] && seg[5] == 0xffff {
        return classify_v4(embedded_v4(seg[6], seg[7]));
    }
    // ::/96 (other than :: and ::1, handled above): IPv4-compatible, deprecated (RFC 4291).
    if seg[..6] == [0; 6] {
        return classify_v4(embedded_v4(seg[6], seg[7]));
    }
    // 64:ff9b::/96: NAT64 well-known prefix (RFC 6052); the translator connects to the IPv4
    // address in the last 32 bits.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return classify_v4(embedded_v4(seg[6], seg[7]));
    }
    // 2002::/16: 6to4 (RFC 3056); bits 16..48 are the IPv4 address of the relay endpoint.
    if seg[0] == 0x2002 {
        return classify_v4(embedded_v4(seg[1], seg[2]));
    }
    if ip == AWS_IMDS_V6 {
        return AddrClass::LinkLocal;
    }
    // ff00::/8: multicast (RFC 4291).
    if seg[0] & 0xff00 == 0xff00 {
        return AddrClass::Multicast;
    }
    // fe80::/10: link-local unicast (RFC 4291).
    if seg[0] & 0xffc0 == 0xfe80 {
        return AddrClass::LinkLocal;
    }
    // fec0::/10: site-local unicast, deprecated (RFC 3879) but still private in spirit.
    if seg[0] & 0xffc0 == 0xfec0 {
        return AddrClass::Private;
    }
    // fc00::/7: unique local addresses (RFC 4193).
    if seg[0] & 0xfe00 == 0xfc00 {
        return AddrClass::Private;
    }
    AddrClass::Public
}

fn embedded_v4(hi: u16, lo: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))
}

/// Which address classes a policy may reach beyond public ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardRules {
    /// Private and loopback addresses.
    pub allow_private: bool,
    /// Link-local addresses (cloud metadata).
    pub allow_link_local: bool,
}

/// An address the guard refused, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    pub ip: IpAddr,
    pub class: AddrClass,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = self.class.label();
        let article = match label.as_bytes().first() {
            Some(b'a' | b'e' | b'i' | b'o' | b'u') => "an",
            _ => "a",
        };
        write!(f, "{} is {article} {label} address", self.ip)
    }
}

impl std::error::Error for Denied {}

/// May `rules` connect to `ip`?
///
/// Public addresses always may; private and loopback ones need `allow_private`; link-local
/// ones need `allow_link_local`; unspecified, multicast and reserved/broadcast addresses never
/// may, whatever the rules say.
pub fn check(rules: GuardRules, ip: IpAddr) -> Result<(), Denied> {
    let class = classify(ip);
    let allowed = match class {
        AddrClass::Public => true,
        AddrClass::Private | AddrClass::Loopback => rules.allow_private,
        AddrClass::LinkLocal => rules.allow_link_local,
        AddrClass::Unspecified | AddrClass::Multicast | AddrClass::Other => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(Denied { ip, class })
    }
}

/// Keep the resolved addresses `rules` allows, in their original order.
///
/// If addresses were given but none is allowed, the first denial is returned, so the error
/// names a real address. No input gives `Ok` with an empty list (resolution failures are the
/// caller's to report).
pub fn filter_allowed(
    rules: GuardRules,
    addrs: impl IntoIterator<Item = SocketAddr>,
) -> Result<Vec<SocketAddr>, Denied> {
    let mut allowed = Vec::new();
    let mut first_denial = None;
    for addr in addrs {
        match check(rules, addr.ip()) {
            Ok(()) => allowed.push(addr),
            Err(denied) => {
                first_denial.get_or_insert(denied);
            }
        }
    }
    match first_denial {
        Some(denied) if allowed.is_empty() => Err(denied),
        _ => Ok(allowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AddrClass::*;

    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or_else(|e| panic!("bad test address {s}: {e}"))
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse()
            .unwrap_or_else(|e| panic!("bad test socket address {s}: {e}"))
    }

    const CLASSES: &[(&str, AddrClass)] = &[
        // IPv4 public
        ("8.8.8.8", Public),
        ("1.1.1.1", Public),
        ("172.15.255.255", Public),
        ("172.32.0.1", Public),
        ("100.63.255.255", Public),
        ("100.128.0.0", Public),
        ("192.0.1.1", Public),
        ("192.167.255.255", Public),
        ("192.169.0.0", Public),
        ("198.17.255.255", Public),
        ("198.20.0.0", Public),
        ("169.253.255.255", Public),
        ("169.255.0.0", Public),
        ("223.255.255.255", Public),
        ("9.255.255.255", Public),
        ("11.0.0.0", Public),
        // IPv4 private
        ("10.0.0.0", Private),
        ("10.1.2.3", Private),
        ("10.255.255.255", Private),
        ("172.16.0.1", Private),
        ("172.31.255.255", Private),
        ("192.168.1.1", Private),
        ("192.168.0.0", Private),
        ("100.64.0.1", Private),
        ("100.127.255.255", Private),
        ("100.100.100.200", Private),
        ("192.0.0.1", Private),
        ("192.0.0.255", Private),
        ("198.18.0.1", Private),
        ("198.19.255.255", Private),
        // IPv4 loopback
        ("127.0.0.1", Loopback),
        ("127.0.0.0", Loopback),
        ("127.1.2.3", Loopback),
        ("127.255.255.254", Loopback),
        ("127.255.255.255", Loopback),
        // IPv4 link-local
        ("169.254.169.254", LinkLocal),
        ("169.254.0.0", LinkLocal),
        ("169.254.255.255", LinkLocal),
        ("169.254.170.2", LinkLocal),
        // IPv4 unspecified / this network
        ("0.0.0.0", Unspecified),
        ("0.1.2.3", Unspecified),
        ("0.255.255.255", Unspecified),
        // IPv4 multicast
        ("224.0.0.1", Multicast),
        ("224.0.0.0", Multicast),
        ("239.255.255.250", Multicast),
        // IPv4 reserved / broadcast
        ("240.0.0.1", Other),
        ("250.1.2.3", Other),
        ("255.255.255.254", Other),
        ("255.255.255.255", Other),
        // IPv6 public
        ("2001:4860:4860::8888", Public),
        ("2606:4700:4700::1111", Public),
        ("2001:db8::1", Public),
        ("fbff:ffff::1", Public),
        ("fe00::1", Public),
        ("::2:0:0:1", Public),
        ("::fffe:a00:1", Public),
        ("64:ff9b:0:0:0:1:a00:1", Public),
        ("2003::a00:1", Public),
        // IPv6 special
        ("::1", Loopback),
        ("::", Unspecified),
        ("fc00::1", Private),
        ("fc00::", Private),
        ("fd12:3456:789a::1", Private),
        ("fdff::1", Private),
        ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Private),
        ("fec0::1", Private),
        ("feff:ffff::1", Private),
        ("fe80::1", LinkLocal),
        ("fe80::1ff:fe23:4567:890a", LinkLocal),
        ("febf:ffff::1", LinkLocal),
        ("fd00:ec2::254", LinkLocal),
        ("fd00:ec2::253", Private),
        ("ff02::1", Multicast),
        ("ff00::", Multicast),
        ("ff05::1:3", Multicast),
        ("ff0e::1", Multicast),
        // IPv4-mapped
        ("::ffff:10.0.0.1", Private),
        ("::ffff:169.254.169.254", LinkLocal),
        ("::ffff:127.0.0.1", Loopback),
        ("::ffff:8.8.8.8", Public),
        ("::ffff:0.0.0.0", Unspecified),
        ("::ffff:224.0.0.1", Multicast),
        ("::ffff:255.255.255.255", Other),
        ("::ffff:a9fe:a9fe", LinkLocal),
        // IPv4-compatible
        ("::10.0.0.1", Private),
        ("::127.0.0.1", Loopback),
        ("::169.254.169.254", LinkLocal),
        ("::8.8.8.8", Public),
        ("::0.0.0.2", Unspecified),
        // NAT64 well-known prefix
        ("64:ff9b::a9fe:a9fe", LinkLocal),
        ("64:ff9b::169.254.169.254", LinkLocal),
        ("64:ff9b::7f00:1", Loopback),
        ("64:ff9b::10.0.0.1", Private),
        ("64:ff9b::8.8.8.8", Public),
        ("64:ff9b::", Unspecified),
        // 6to4
        ("2002:a9fe:a9fe::1", LinkLocal),
        ("2002:7f00:1::", Loopback),
        ("2002:a00:1::1", Private),
        ("2002:c0a8:101:1::1", Private),
        ("2002:0808:0808::1", Public),
        ("2002::1", Unspecified),
        ("2002:e000:1::1", Multicast),
    ];

    #[test]
    fn classifies_addresses() {
        let mut failures = Vec::new();
        for &(addr, expected) in CLASSES {
            let got = classify(ip(addr));
            if got != expected {
                failures.push(format!("{addr}: expected {expected:?}, got {got:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    const NONE: GuardRules = GuardRules {
        allow_private: false,
        allow_link_local: false,
    };
    const PRIVATE: GuardRules = GuardRules {
        allow_private: true,
        allow_link_local: false,
    };
    const LINK_LOCAL: GuardRules = GuardRules {
        allow_private: false,
        allow_link_local: true,
    };
    const ALL: GuardRules = GuardRules {
        allow_private: true,
        allow_link_local: true,
    };

    /// (rules, address, allowed?)
    const CHECKS: &[(GuardRules, &str, bool)] = &[
        // public: always
        (NONE, "8.8.8.8", true),
        (NONE, "172.32.0.1", true),
        (NONE, "2001:4860:4860::8888", true),
        (NONE, "::ffff:8.8.8.8", true),
        (NONE, "2002:0808:0808::1", true),
        (ALL, "8.8.8.8", true),
        // private and loopback: allow_private
        (NONE, "10.1.2.3", false),
        (NONE, "172.16.0.1", false),
        (NONE, "192.168.1.1", false),
        (NONE, "100.64.0.1", false),
        (NONE, "127.0.0.1", false),
        (NONE, "::1", false),
        (NONE, "fc00::1", false),
        (NONE, "::ffff:10.0.0.1", false),
        (NONE, "::ffff:127.0.0.1", false),
        (LINK_LOCAL, "10.1.2.3", false),
        (LINK_LOCAL, "127.0.0.1", false),
        (PRIVATE, "10.1.2.3", true),
        (PRIVATE, "172.31.255.255", true),
        (PRIVATE, "127.255.255.254", true),
        (PRIVATE, "::1", true),
        (PRIVATE, "fdff::1", true),
        (PRIVATE, "::ffff:10.0.0.1", true),
        (PRIVATE, "2002:a00:1::1", true),
        // link-local: allow_link_local, never implied by allow_private
        (NONE, "169.254.169.254", false),
        (PRIVATE, "169.254.169.254", false),
        (PRIVATE, "fe80::1", false),
        (PRIVATE, "fd00:ec2::254", false),
        (PRIVATE, "::ffff:169.254.169.254", false),
        (PRIVATE, "64:ff9b::a9fe:a9fe", false),
        (PRIVATE, "2002:a9fe:a9fe::1", false),
        (LINK_LOCAL, "169.254.169.254", true),
        (LINK_LOCAL, "fe80::1", true),
        (LINK_LOCAL, "fd00:ec2::254", true),
        (LINK_LOCAL, "64:ff9b::a9fe:a9fe", true),
        (ALL, "169.254.169.254", true),
        // never, whatever the rules
        (ALL, "0.0.0.0", false),
        (ALL, "0.1.2.3", false),
        (ALL, "::", false),
        (ALL, "::ffff:0.0.0.0", false),
        (ALL, "224.0.0.1", false),
        (ALL, "ff02::1", false),
        (ALL, "240.0.0.1", false),
        (ALL, "255.255.255.255", false),
        (ALL, "::ffff:255.255.255.255", false),
    ];

    #[test]
    fn checks_addresses_against_rules() {
        let mut failures = Vec::new();
        for &(rules, addr, expected) in CHECKS {
            let got = check(rules, ip(addr));
            if got.is_ok() != expected {
                failures.push(format!(
                    "{rules:?} {addr}: expected allowed={expected}, got {got:?}"
                ));
            }
            if let Err(denied) = got {
                assert_eq!(denied.ip, ip(addr));
                assert_eq!(denied.class, classify(ip(addr)));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn every_class_is_decided_consistently() {
        // Across all four rule sets, each class is allowed exactly when documented.
        let samples = [
            ("8.8.8.8", [true, true, true, true]),
            ("10.0.0.1", [false, true, false, true]),
            ("127.0.0.1", [false, true, false, true]),
            ("169.254.169.254", [false, false, true, true]),
            ("0.0.0.0", [false, false, false, false]),
            ("224.0.0.1", [false, false, false, false]),
            ("255.255.255.255", [false, false, false, false]),
        ];
        for (addr, expected) in samples {
            for (rules, want) in [NONE, PRIVATE, LINK_LOCAL, ALL].into_iter().zip(expected) {
                assert_eq!(check(rules, ip(addr)).is_ok(), want, "{rules:?} {addr}");
            }
        }
    }

    #[test]
    fn labels() {
        let table = [
            (Public, "public"),
            (Private, "private"),
            (Loopback, "loopback"),
            (LinkLocal, "link-local"),
            (Unspecified, "unspecified"),
            (Multicast, "multicast"),
            (Other, "reserved"),
        ];
        for (class, label) in table {
            assert_eq!(class.label(), label);
            assert_eq!(class.to_string(), label);
        }
    }

    #[test]
    fn denial_messages() {
        let table = [
            ("10.0.0.1", "10.0.0.1 is a private address"),
            ("127.0.0.1", "127.0.0.1 is a loopback address"),
            ("169.254.169.254", "169.254.169.254 is a link-local address"),
            ("fe80::1", "fe80::1 is a link-local address"),
            ("0.0.0.0", "0.0.0.0 is an unspecified address"),
            ("ff02::1", "ff02::1 is a multicast address"),
            ("255.255.255.255", "255.255.255.255 is a reserved address"),
        ];
        for (addr, message) in table {
            let denied = check(NONE, ip(addr)).expect_err(addr);
            assert_eq!(denied.to_string(), message);
        }
    }

    #[test]
    fn filter_keeps_allowed_in_order() {
        let addrs = [
            sa("10.0.0.1:443"),
            sa("8.8.8.8:443"),
            sa("169.254.169.254:80"),
            sa("[2001:4860:4860::8888]:443"),
            sa("1.1.1.1:443"),
        ];
        assert_eq!(
            filter_allowed(NONE, addrs),
            Ok(vec![
                sa("8.8.8.8:443"),
                sa("[2001:4860:4860::8888]:443"),
                sa("1.1.1.1:443"),
            ])
        );
        assert_eq!(
            filter_allowed(PRIVATE, addrs),
            Ok(vec![
                sa("10.0.0.1:443"),
                sa("8.8.8.8:443"),
                sa("[2001:4860:4860::8888]:443"),
                sa("1.1.1.1:443"),
            ])
        );
        assert_eq!(filter_allowed(ALL, addrs), Ok(addrs.to_vec()));
    }

    #[test]
    fn filter_reports_first_denial_when_nothing_allowed() {
        let addrs = [sa("169.254.169.254:80"), sa("10.0.0.1:80"), sa("[::1]:80")];
        assert_eq!(
            filter_allowed(NONE, addrs),
            Err(Denied {
                ip: ip("169.254.169.254"),
                class: LinkLocal,
            })
        );
        // With private allowed, the link-local one is dropped and the rest kept.
        assert_eq!(
            filter_allowed(PRIVATE, addrs),
            Ok(vec![sa("10.0.0.1:80"), sa("[::1]:80")])
        );
        // Never-allowed addresses stay denied with every rule set.
        assert_eq!(
            filter_allowed(ALL, [sa("0.0.0.0:80"), sa("[ff02::1]:80")]),
            Err(Denied {
                ip: ip("0.0.0.0"),
                class: Unspecified,
            })
        );
    }

    #[test]
    fn filter_empty_is_ok_and_empty() {
        assert_eq!(filter_allowed(NONE, []), Ok(vec![]));
        assert_eq!(filter_allowed(ALL, Vec::new()), Ok(vec![]));
    }

    #[test]
    fn filter_accepts_any_iterator() {
        let resolved = ["10.0.0.7:8443", "8.8.4.4:8443"].into_iter().map(sa);
        let kept = filter_allowed(NONE, resolved).unwrap();
        assert_eq!(kept, vec![sa("8.8.4.4:8443")]);
    }
}
