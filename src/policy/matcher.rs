//! Which policy a destination belongs to.
//!
//! Precedence (docs/ARCHITECTURE.md §1): exact `host:port` > exact host > longest wildcard suffix;
//! among policies that claim the same pattern, the first file by name wins. `None` means the
//! default policy. A lookup runs once per request, so it allocates nothing: the maps are keyed by
//! `String` and queried with `&str`, and wildcard candidates are slices of the host.

use std::collections::HashMap;
use std::sync::Arc;

use super::{HostPattern, Policy};

/// Maps a destination to the index of its policy in [`super::PolicySet::others`].
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    /// host → (port, policy index); a handful of ports per host at most, so a Vec beats a map.
    host_ports: HashMap<String, Vec<(u16, usize)>>,
    /// host → policy index.
    hosts: HashMap<String, usize>,
    /// suffix with its leading dot (`.example.com`) → policy index.
    wildcards: HashMap<String, usize>,
}

impl Matcher {
    /// Builds the matcher for `policies`, which must be in name order (the order of
    /// `PolicySet::others`): on a tie, the policy with the lower index wins.
    pub fn new(policies: &[Arc<Policy>]) -> Self {
        let mut m = Matcher::default();
        for (index, policy) in policies.iter().enumerate() {
            for pattern in &policy.hosts {
                match pattern {
                    HostPattern::HostPort { host, port } => {
                        let ports = m.host_ports.entry(host.clone()).or_default();
                        if !ports.iter().any(|(p, _)| p == port) {
                            ports.push((*port, index));
                        }
                    }
                    HostPattern::Host { host } => {
                        m.hosts.entry(host.clone()).or_insert(index);
                    }
                    HostPattern::Wildcard { suffix } => {
                        m.wildcards.entry(suffix.clone()).or_insert(index);
                    }
                }
            }
        }
        m
    }

    /// The index of the policy for `host:port`, or `None` for the default policy.
    /// `host` must be lowercase, without IPv6 brackets.
    pub fn lookup(&self, host: &str, port: u16) -> Option<usize> {
        if let Some(ports) = self.host_ports.get(host) {
            if let Some((_, index)) = ports.iter().find(|(p, _)| *p == port) {
                return Some(*index);
            }
        }
        if let Some(index) = self.hosts.get(host) {
            return Some(*index);
        }
        if self.wildcards.is_empty() {
            return None;
        }
        // Candidate suffixes from longest to shortest: for `a.b.example.com`, try
        // `.b.example.com`, then `.example.com`, then `.com`. The host itself is never a
        // candidate, so `*.example.com` does not match `example.com`.
        host.match_indices('.')
            .find_map(|(at, _)| self.wildcards.get(&host[at..]).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, hosts: Vec<HostPattern>) -> Arc<Policy> {
        Arc::new(Policy {
            name: name.to_string(),
            hosts,
            ..Policy::default()
        })
    }

    fn host(h: &str) -> HostPattern {
        HostPattern::Host {
            host: h.to_string(),
        }
    }

    fn host_port(h: &str, port: u16) -> HostPattern {
        HostPattern::HostPort {
            host: h.to_string(),
            port,
        }
    }

    fn wildcard(suffix: &str) -> HostPattern {
        HostPattern::Wildcard {
            suffix: suffix.to_string(),
        }
    }

    #[test]
    fn precedence_host_port_then_host_then_wildcard_then_default() {
        let m = Matcher::new(&[
            policy("a-wild", vec![wildcard(".example.com")]),
            policy("b-host", vec![host("api.example.com")]),
            policy("c-port", vec![host_port("api.example.com", 8443)]),
        ]);
        assert_eq!(m.lookup("api.example.com", 8443), Some(2));
        assert_eq!(m.lookup("api.example.com", 80), Some(1));
        assert_eq!(m.lookup("web.example.com", 8443), Some(0));
        assert_eq!(m.lookup("example.org", 80), None);
    }

    #[test]
    fn host_port_only_matches_its_port() {
        let m = Matcher::new(&[policy("a", vec![host_port("10.0.0.7", 8080)])]);
        assert_eq!(m.lookup("10.0.0.7", 8080), Some(0));
        assert_eq!(m.lookup("10.0.0.7", 8081), None);
        assert_eq!(m.lookup("10.0.0.8", 8080), None);
    }

    #[test]
    fn ipv6_hosts_match_without_brackets() {
        let m = Matcher::new(&[policy("a", vec![host_port("::1", 8080), host("fd00::7")])]);
        assert_eq!(m.lookup("::1", 8080), Some(0));
        assert_eq!(m.lookup("fd00::7", 1), Some(0));
        assert_eq!(m.lookup("::1", 80), None);
    }

    #[test]
    fn wildcard_matches_any_depth_but_not_the_bare_suffix() {
        let m = Matcher::new(&[policy("a", vec![wildcard(".example.com")])]);
        assert_eq!(m.lookup("a.example.com", 443), Some(0));
        assert_eq!(m.lookup("a.b.example.com", 443), Some(0));
        assert_eq!(m.lookup("example.com", 443), None);
        assert_eq!(m.lookup("badexample.com", 443), None);
        assert_eq!(m.lookup("example.com.evil", 443), None);
    }

    #[test]
    fn longest_wildcard_suffix_wins() {
        let m = Matcher::new(&[
            policy("a-short", vec![wildcard(".example.com")]),
            policy("b-long", vec![wildcard(".eu.example.com")]),
        ]);
        assert_eq!(m.lookup("api.eu.example.com", 443), Some(1));
        assert_eq!(m.lookup("x.api.eu.example.com", 443), Some(1));
        assert_eq!(m.lookup("eu.example.com", 443), Some(0));
        assert_eq!(m.lookup("api.us.example.com", 443), Some(0));
    }

    #[test]
    fn ties_go_to_the_first_file_by_name() {
        let m = Matcher::new(&[
            policy(
                "a",
                vec![host("x.test"), host_port("y.test", 1), wildcard(".z.test")],
            ),
            policy(
                "b",
                vec![host("x.test"), host_port("y.test", 1), wildcard(".z.test")],
            ),
        ]);
        assert_eq!(m.lookup("x.test", 80), Some(0));
        assert_eq!(m.lookup("y.test", 1), Some(0));
        assert_eq!(m.lookup("w.z.test", 80), Some(0));
    }

    #[test]
    fn empty_matcher_matches_nothing() {
        let m = Matcher::default();
        assert_eq!(m.lookup("a.example.com", 80), None);
        assert_eq!(m.lookup("", 0), None);
    }
}
