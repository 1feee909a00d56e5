//! Listener conflicts: the route listeners (`listen`) that `fusebox run` could not bind,
//! known from the files alone. `fusebox check`, the start of `fusebox run` and every reload ask
//! the same question, so that `check` refuses exactly what `run` would refuse
//! (docs/ARCHITECTURE.md §3, §10).
//!
//! Two sockets collide when they share a port (other than 0, "any free port") and either have
//! the same address or one of them is unspecified and covers the other: `0.0.0.0` covers every
//! IPv4 address, `[::]` every address (Linux binds it dual-stack).

use std::net::SocketAddr;

use super::keys::Keys;
use super::{PolicyError, PolicySet};

/// A listener that does not come from a policy file: the egress listener or the admin server.
#[derive(Debug, Clone, Copy)]
pub struct FixedListener {
    /// How an operator sets it, e.g. "the egress listener (--listen)".
    pub what: &'static str,
    pub addr: SocketAddr,
}

impl FixedListener {
    pub fn egress(addr: SocketAddr) -> Self {
        FixedListener {
            what: "the egress listener (--listen)",
            addr,
        }
    }

    pub fn admin(addr: SocketAddr) -> Self {
        FixedListener {
            what: "the admin server (--admin)",
            addr,
        }
    }
}

/// Do sockets bound to `a` and `b` collide?
pub fn collide(a: SocketAddr, b: SocketAddr) -> bool {
    let covers =
        |x: SocketAddr, y: SocketAddr| x.ip().is_unspecified() && (x.is_ipv6() || y.is_ipv4());
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

/// One error for each route listener that collides with a fixed listener or with the route
/// listener of a policy earlier by name (the one `run` binds first), at the `listen` value.
pub fn listener_conflicts(set: &PolicySet, fixed: &[FixedListener]) -> Vec<PolicyError> {
    let mut errors = Vec::new();
    let routes: Vec<_> = set.routes().filter_map(|p| Some((p, p.listen?))).collect();
    for (index, &(policy, addr)) in routes.iter().enumerate() {
        let clash = fixed
            .iter()
            .find(|f| collide(addr, f.addr))
            .map(|f| format!("{} on {}", f.what, f.addr))
            .or_else(|| {
                routes[..index]
                    .iter()
                    .find(|(_, other)| collide(addr, *other))
                    .map(|(other, other_addr)| {
                        let keys = Keys::new(std::fs::read_to_string(&other.file).ok());
                        let (line, col) = keys.at("listen", None);
                        format!(
                            "the route listener of policy `{}` (`listen` = \"{other_addr}\" at \
                             {}:{line}:{col})",
                            other.name,
                            other.file.display()
                        )
                    })
            });
        let Some(clash) = clash else { continue };
        let (line, col) = Keys::new(std::fs::read_to_string(&policy.file).ok()).at("listen", None);
        errors.push(PolicyError {
            file: policy.file.clone(),
            line,
            col,
            message: format!(
                "`listen` = \"{addr}\" collides with {clash}: `fusebox run` cannot bind both; \
                 give this route listener an address of its own"
            ),
        });
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load_dir;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sockets_collide_on_one_port_when_an_address_covers_the_other() {
        assert!(collide(addr("127.0.0.1:80"), addr("127.0.0.1:80")));
        assert!(collide(addr("0.0.0.0:80"), addr("127.0.0.1:80")));
        assert!(collide(addr("127.0.0.1:80"), addr("0.0.0.0:80")));
        assert!(collide(addr("[::]:80"), addr("127.0.0.1:80")));
        assert!(collide(addr("[::]:80"), addr("0.0.0.0:80")));
        assert!(!collide(addr("0.0.0.0:80"), addr("[::1]:80")));
        assert!(!collide(addr("127.0.0.1:80"), addr("127.0.0.2:80")));
        assert!(!collide(addr("127.0.0.1:80"), addr("127.0.0.1:81")));
        assert!(!collide(addr("127.0.0.1:0"), addr("127.0.0.1:0")));
    }

    fn conflicts(files: &[(&str, &str)], fixed: &[FixedListener]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let set = load_dir(dir.path()).unwrap();
        listener_conflicts(&set, fixed)
            .iter()
            .map(|e| {
                let file = e.file.file_name().unwrap().to_string_lossy();
                format!("{file}:{}:{}: {}", e.line, e.col, e.message)
            })
            .collect()
    }

    const ROUTE_A: &str = "# a\nlisten = \"127.0.0.1:10000\"\nendpoints = [\"u:1\"]\n";

    #[test]
    fn the_later_of_two_routes_on_one_address_is_an_error_naming_the_earlier() {
        let errors = conflicts(&[("a.toml", ROUTE_A), ("b.toml", ROUTE_A)], &[]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("b.toml:2:10: `listen` = \"127.0.0.1:10000\""));
        assert!(errors[0].contains("policy `a`"), "{}", errors[0]);
        assert!(errors[0].contains("a.toml:2:10"), "{}", errors[0]);
    }

    #[test]
    fn a_route_on_the_egress_or_admin_address_is_an_error() {
        let fixed = [
            FixedListener::egress(addr("127.0.0.1:15001")),
            FixedListener::admin(addr("0.0.0.0:10000")),
        ];
        let errors = conflicts(&[("a.toml", ROUTE_A)], &fixed);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("the admin server (--admin) on 0.0.0.0:10000"));
        let egress = [FixedListener::egress(addr("127.0.0.1:10000"))];
        assert_eq!(conflicts(&[("a.toml", ROUTE_A)], &egress).len(), 1);
    }

    #[test]
    fn distinct_addresses_and_port_zero_are_not_conflicts() {
        let b = "listen = \"127.0.0.2:10000\"\nendpoints = [\"u:1\"]\n";
        let any = "listen = \"127.0.0.1:0\"\nendpoints = [\"u:1\"]\n";
        let files = [
            ("a.toml", ROUTE_A),
            ("b.toml", b),
            ("c.toml", any),
            ("d.toml", any),
        ];
        let fixed = [FixedListener::egress(addr("127.0.0.1:0"))];
        assert_eq!(conflicts(&files, &fixed), Vec::<String>::new());
    }
}
