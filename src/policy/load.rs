//! Loading `policies/`: files → [`raw`](super::raw) structs → validated [`Policy`] values.
//!
//! Every `*.toml` file of the directory is one policy named by its stem (hidden entries such
//! as Kubernetes' `..data` are skipped; symlinks are followed). `default.toml` is applied over
//! the built-in defaults ([`Policy::default`]), and every other file over `default.toml`'s
//! effective values, field by field, except the fields that are never inherited (`allow` and
//! where traffic goes: `hosts`, `listen`, `endpoints`, `host_rewrite`, `sni`, `tls`).
//!
//! Validation never stops at the first problem: every error of every file is collected, with
//! the `file:line:col` of the offending value, so that `fusebox check` and a failed reload
//! show the operator everything at once.

use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use super::keys::line_col;
use super::raw::{List, RawPolicy, S};
use super::{
    Balance, BalanceMode, Breaker, BreakerMode, CaFile, Concurrency, Dns, Endpoint, GrpcCode,
    HostPattern, LimitMode, Matcher, Outlier, PanicMode, Policy, PolicySet, RateLimit, Retry,
    RetryOn, Timeouts, DEFAULT_POLICY,
};
use crate::address::canonical_host;

mod overload;
mod routes;

/// One problem in a policy file. `line` and `col` are 1-based and point at the offending
/// value (0 when the file could not be read at all).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{col}: {message}", file.display())]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl PolicyError {
    fn io(file: &Path, err: &std::io::Error) -> Self {
        PolicyError {
            file: file.to_path_buf(),
            line: 0,
            col: 0,
            message: format!("cannot read: {err}"),
        }
    }
}

/// Every problem found in a policy directory, sorted by file, then line. Displays one
/// `file:line:col: message` per line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

impl Deref for PolicyErrors {
    type Target = [PolicyError];

    fn deref(&self) -> &[PolicyError] {
        &self.0
    }
}

impl IntoIterator for PolicyErrors {
    type Item = PolicyError;
    type IntoIter = std::vec::IntoIter<PolicyError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a PolicyErrors {
    type Item = &'a PolicyError;
    type IntoIter = std::slice::Iter<'a, PolicyError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Loads and validates every policy of `dir`. Either all of it is valid, or every error found.
pub fn load_dir(dir: &Path) -> Result<PolicySet, PolicyErrors> {
    let mut errors = Vec::new();
    let mut sources = Vec::new();
    for (name, file) in policy_files(dir, &mut errors) {
        match fs::read_to_string(&file) {
            Ok(text) => sources.push(Source { name, file, text }),
            Err(err) => errors.push(PolicyError::io(&file, &err)),
        }
    }
    load_sources(dir, &sources, errors)
}

/// The text of one policy file.
pub(crate) struct Source {
    pub name: String,
    pub file: PathBuf,
    pub text: String,
}

/// `(stem, path)` of the policy files of `dir`, sorted by stem.
fn policy_files(dir: &Path, errors: &mut Vec<PolicyError>) -> Vec<(String, PathBuf)> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            errors.push(PolicyError::io(dir, &err));
            return Vec::new();
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(err) => {
                errors.push(PolicyError::io(dir, &err));
                continue;
            }
        };
        let hidden = path
            .file_name()
            .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."));
        if hidden || path.extension().is_none_or(|ext| ext != "toml") {
            continue;
        }
        // `fs::metadata` follows symlinks: ConfigMap volumes link each file through `..data`.
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => continue,
            Err(err) => {
                errors.push(PolicyError::io(&path, &err));
                continue;
            }
        }
        match path.file_stem().and_then(|s| s.to_str()) {
            Some(stem) => files.push((stem.to_string(), path)),
            None => errors.push(PolicyError {
                file: path,
                line: 0,
                col: 0,
                message: "policy file names must be UTF-8 (the name is a metric label)".into(),
            }),
        }
    }
    files.sort();
    files
}

/// Parses, inherits and validates already-read files; `errors` holds earlier (I/O) errors.
pub(crate) fn load_sources(
    dir: &Path,
    sources: &[Source],
    mut errors: Vec<PolicyError>,
) -> Result<PolicySet, PolicyErrors> {
    let parsed: Vec<(&Source, (RawPolicy, bool))> = sources
        .iter()
        .filter_map(|src| Some((src, Cx::new(dir, src, &mut errors).parse()?)))
        .collect();

    let builtin = Policy {
        file: dir.join("default.toml"),
        ..Policy::default()
    };
    let default = match parsed.iter().find(|(src, _)| src.name == DEFAULT_POLICY) {
        Some((src, (raw, _))) => Cx::new(dir, src, &mut errors).apply(&builtin, raw, true, true),
        None => builtin,
    };
    let others: Vec<Arc<Policy>> = parsed
        .iter()
        .filter(|(src, _)| src.name != DEFAULT_POLICY)
        .map(|(src, (raw, complete))| {
            Arc::new(Cx::new(dir, src, &mut errors).apply(&default, raw, false, *complete))
        })
        .collect();

    if !errors.is_empty() {
        errors.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
        return Err(PolicyErrors(errors));
    }
    let matcher = Matcher::new(&others);
    Ok(PolicySet {
        dir: dir.to_path_buf(),
        default: Arc::new(default),
        others,
        matcher,
    })
}

/// Validation context for one file: turns byte spans into `line:col` errors.
struct Cx<'a> {
    dir: &'a Path,
    src: &'a Source,
    errors: &'a mut Vec<PolicyError>,
}

impl<'a> Cx<'a> {
    fn new(dir: &'a Path, src: &'a Source, errors: &'a mut Vec<PolicyError>) -> Self {
        Cx { dir, src, errors }
    }

    /// How many errors all files have had so far.
    fn error_count(&self) -> usize {
        self.errors.len()
    }

    fn error(&mut self, span: Range<usize>, message: String) {
        let (line, col) = line_col(&self.src.text, span.start);
        self.errors.push(PolicyError {
            file: self.src.file.clone(),
            line,
            col,
            message,
        });
    }

    /// TOML syntax, unknown-key and type errors. serde stops at the first error, so each
    /// offending entry is reported, removed, and the rest deserialized again: the operator
    /// sees every such error of the file at once, and the entries that did deserialize still
    /// get validated. Returns the raw policy and whether it is complete (nothing removed).
    fn parse(&mut self) -> Option<(RawPolicy, bool)> {
        let text = &self.src.text;
        let mut doc = match DeTable::parse(text) {
            Ok(doc) => doc,
            Err(err) => {
                let span = err.span().unwrap_or(0..0);
                let message = match text.get(span.clone()) {
                    Some(key) if err.message() == "duplicate key" => {
                        format!("duplicate key `{key}`")
                    }
                    _ => err.message().to_string(),
                };
                self.error(span, message);
                return None;
            }
        };
        let mut complete = true;
        loop {
            let err = match RawPolicy::deserialize(toml::de::Deserializer::from(doc.clone())) {
                Ok(raw) => return Some((raw, complete)),
                Err(err) => err,
            };
            complete = false;
            let span = err.span().unwrap_or(0..0);
            let path = key_path(doc.get_ref(), &span);
            self.error(span, describe_serde_error(path.as_deref(), err.message()));
            // Without a key to remove, retrying would fail the same way.
            if !path.is_some_and(|path| remove_key(doc.get_mut(), &path)) {
                return None;
            }
        }
    }

    /// `raw` over `base`: each field `raw` sets (and that is valid) replaces the base value.
    /// Checks across keys need `complete`: a removed entry would make them misfire.
    fn apply(
        &mut self,
        base: &Policy,
        raw: &RawPolicy,
        is_default: bool,
        complete: bool,
    ) -> Policy {
        let mut p = Policy {
            name: self.src.name.clone(),
            file: self.src.file.clone(),
            // Never inherited.
            hosts: Vec::new(),
            listen: None,
            endpoints: Vec::new(),
            host_rewrite: None,
            tls: false,
            sni: None,
            allow: true,
            client_cert: None,
            client_key: None,
            routes: Vec::new(),
            ..base.clone()
        };

        if is_default {
            self.forbid_in_default("hosts", raw.hosts.as_ref().map(|v| v.span()));
            self.forbid_in_default("listen", raw.listen.as_ref().map(|v| v.span()));
            self.forbid_in_default("endpoints", raw.endpoints.as_ref().map(|v| v.span()));
            self.forbid_in_default("host_rewrite", raw.host_rewrite.as_ref().map(|v| v.span()));
        } else {
            self.list(&mut p.hosts, "hosts", &raw.hosts, |s| host_pattern(s));
            self.value(&mut p.listen, "listen", &raw.listen, |s| listen(s));
            self.list(&mut p.endpoints, "endpoints", &raw.endpoints, |s| {
                endpoint(s)
            });
            self.value(
                &mut p.host_rewrite,
                "host_rewrite",
                &raw.host_rewrite,
                |s| host_rewrite(s),
            );
            if complete {
                self.check_reachable(raw);
            }
        }
        self.value(&mut p.tls, "tls", &raw.tls, |&b| Ok(b));
        self.value(&mut p.sni, "sni", &raw.sni, |s| sni(s));
        let dir = self.dir;
        self.value(&mut p.ca_file, "ca_file", &raw.ca_file, |s| ca_file(dir, s));
        self.client_identity(&mut p, raw);
        self.value(&mut p.allow, "allow", &raw.allow, |&b| Ok(b));
        self.value(
            &mut p.allow_private,
            "allow_private",
            &raw.allow_private,
            |&b| Ok(b),
        );
        self.value(&mut p.intercept, "intercept", &raw.intercept, |&b| Ok(b));
        self.value(
            &mut p.allow_link_local,
            "allow_link_local",
            &raw.allow_link_local,
            |&b| Ok(b),
        );
        self.value(
            &mut p.metrics_max_destinations,
            "metrics_max_destinations",
            &raw.metrics_max_destinations,
            |&v| int(v, 1, U32_MAX),
        );
        self.value(
            &mut p.pool_idle_timeout,
            "pool_idle_timeout",
            &raw.pool_idle_timeout,
            |s| positive(s),
        );
        self.value(
            &mut p.pool_max_idle,
            "pool_max_idle",
            &raw.pool_max_idle,
            |&v| int(v, 0, U32_MAX),
        );

        self.timeouts(&mut p.timeouts, raw);
        self.retry(&mut p.retry, raw);
        self.breaker(&mut p.breaker, raw);
        self.rate_limit(&mut p.rate_limit, raw);
        self.concurrency(&mut p.concurrency, raw);
        self.hedge(&mut p.hedge, raw);
        self.balance(&mut p.balance, raw);
        self.outlier(&mut p.outlier, raw);
        self.dns(&mut p.dns, raw);
        self.routes(&mut p, raw, is_default);
        p
    }

    fn forbid_in_default(&mut self, key: &str, span: Option<Range<usize>>) {
        if let Some(span) = span {
            self.error(
                span,
                format!(
                    "`{key}` cannot be set in default.toml: the default policy serves every \
                     destination that no other file matches; put it in a policy of its own"
                ),
            );
        }
    }

    /// A policy is reached through `hosts` or `listen`; a route listener needs `endpoints`.
    fn check_reachable(&mut self, raw: &RawPolicy) {
        let has_hosts = raw.hosts.as_ref().is_some_and(|v| !v.get_ref().is_empty());
        let has_endpoints = raw
            .endpoints
            .as_ref()
            .is_some_and(|v| !v.get_ref().is_empty());
        if let Some(endpoints) = &raw.endpoints {
            if has_endpoints && !has_hosts && raw.listen.is_none() {
                self.error(
                    endpoints.span(),
                    "`endpoints`: set, but neither `hosts` nor `listen` is: no traffic can \
                     reach this policy; add `hosts` (egress listener) or `listen` (route \
                     listener)"
                        .into(),
                );
            }
        }
        if let Some(listen) = &raw.listen {
            if !has_endpoints {
                self.error(
                    listen.span(),
                    "`listen`: a route listener needs `endpoints` (\"host:port\" entries) to \
                     send its traffic to"
                        .into(),
                );
            }
        }
    }

    fn timeouts(&mut self, t: &mut Timeouts, raw: &RawPolicy) {
        let r = &raw.timeouts;
        self.value(&mut t.connect, "timeouts.connect", &r.connect, |s| {
            positive(s)
        });
        self.value(&mut t.attempt, "timeouts.attempt", &r.attempt, |s| {
            positive(s)
        });
        self.value(&mut t.total, "timeouts.total", &r.total, |s| positive(s));
        self.value(&mut t.idle, "timeouts.idle", &r.idle, |s| positive(s));
        self.value(
            &mut t.tunnel_idle,
            "timeouts.tunnel_idle",
            &r.tunnel_idle,
            |s| positive(s),
        );
        self.value(
            &mut t.tunnel_max,
            "timeouts.tunnel_max",
            &r.tunnel_max,
            |s| positive(s),
        );
    }

    fn retry(&mut self, t: &mut Retry, raw: &RawPolicy) {
        let r = &raw.retry;
        self.value(&mut t.attempts, "retry.attempts", &r.attempts, |&v| {
            int(v, 1, U32_MAX)
        });
        self.list(&mut t.on, "retry.on", &r.on, |s| retry_on(s));
        self.list(&mut t.statuses, "retry.statuses", &r.statuses, |&v| {
            status(v)
        });
        self.list(&mut t.grpc_codes, "retry.grpc_codes", &r.grpc_codes, |s| {
            grpc_code(s)
        });
        self.list(&mut t.methods, "retry.methods", &r.methods, |s| method(s));
        self.value(
            &mut t.backoff_base,
            "retry.backoff_base",
            &r.backoff_base,
            |s| positive(s),
        );
        self.value(
            &mut t.backoff_max,
            "retry.backoff_max",
            &r.backoff_max,
            |s| duration(s),
        );
        self.value(
            &mut t.budget_ratio,
            "retry.budget_ratio",
            &r.budget_ratio,
            |&v| {
                if v.is_finite() && v >= 0.0 {
                    Ok(v)
                } else {
                    Err(format!(
                        "must be a number >= 0 (0.2 = 20% more than first tries), got {v}"
                    ))
                }
            },
        );
        self.value(
            &mut t.budget_min_per_second,
            "retry.budget_min_per_second",
            &r.budget_min_per_second,
            |&v| int(v, 0, U32_MAX),
        );
        self.value(
            &mut t.honor_retry_after,
            "retry.honor_retry_after",
            &r.honor_retry_after,
            |&b| Ok(b),
        );
        self.value(
            &mut t.max_replay_bytes,
            "retry.max_replay_bytes",
            &r.max_replay_bytes,
            |&v| int(v, 0, i64::MAX),
        );
    }

    fn breaker(&mut self, t: &mut Breaker, raw: &RawPolicy) {
        let r = &raw.breaker;
        self.value(&mut t.mode, "breaker.mode", &r.mode, |s| breaker_mode(s));
        self.value(
            &mut t.consecutive_failures,
            "breaker.consecutive_failures",
            &r.consecutive_failures,
            |&v| int(v, 0, U32_MAX),
        );
        self.value(
            &mut t.failure_rate,
            "breaker.failure_rate",
            &r.failure_rate,
            |&v| rate(v),
        );
        self.value(&mut t.window, "breaker.window", &r.window, |s| positive(s));
        self.value(&mut t.min_calls, "breaker.min_calls", &r.min_calls, |&v| {
            int(v, 0, U32_MAX)
        });
        self.value(
            &mut t.slow_call_duration,
            "breaker.slow_call_duration",
            &r.slow_call_duration,
            |s| positive(s),
        );
        self.value(
            &mut t.slow_call_rate,
            "breaker.slow_call_rate",
            &r.slow_call_rate,
            |&v| rate(v),
        );
        self.list(
            &mut t.failure_statuses,
            "breaker.failure_statuses",
            &r.failure_statuses,
            |&v| status(v),
        );
        self.list(
            &mut t.grpc_failure_codes,
            "breaker.grpc_failure_codes",
            &r.grpc_failure_codes,
            |s| grpc_code(s),
        );
        self.value(&mut t.open_base, "breaker.open_base", &r.open_base, |s| {
            positive(s)
        });
        self.value(&mut t.open_max, "breaker.open_max", &r.open_max, |s| {
            positive(s)
        });
        // 0 probes would leave a tripped breaker half-open forever.
        self.value(
            &mut t.half_open_probes,
            "breaker.half_open_probes",
            &r.half_open_probes,
            |&v| int(v, 1, U32_MAX),
        );
        self.throttle(t, raw);
    }

    fn rate_limit(&mut self, t: &mut RateLimit, raw: &RawPolicy) {
        let r = &raw.rate_limit;
        self.value(&mut t.rps, "rate_limit.rps", &r.rps, |&v| {
            int(v, 0, U32_MAX)
        });
        self.value(&mut t.burst, "rate_limit.burst", &r.burst, |&v| {
            int(v, 0, U32_MAX)
        });
        self.value(&mut t.mode, "rate_limit.mode", &r.mode, |s| limit_mode(s));
        self.value(&mut t.fleet, "rate_limit.scope", &r.scope, |s| {
            match s.as_str() {
                "local" => Ok(false),
                "fleet" => Ok(true),
                _ => Err(format!(
                    "unknown scope \"{s}\"; valid: \"local\", \"fleet\""
                )),
            }
        });
        let mut fallback = t.fleet_fallback_rps.unwrap_or(0);
        self.value(
            &mut fallback,
            "rate_limit.fleet_fallback_rps",
            &r.fleet_fallback_rps,
            |&v| int(v, 1, U32_MAX),
        );
        if r.fleet_fallback_rps.is_some() {
            t.fleet_fallback_rps = Some(fallback);
        }
        self.value(
            &mut t.fleet_size_hint,
            "rate_limit.fleet_size_hint",
            &r.fleet_size_hint,
            |&v| int(v, 1, U32_MAX),
        );
    }

    fn balance(&mut self, t: &mut Balance, raw: &RawPolicy) {
        let r = &raw.balance;
        self.value(&mut t.mode, "balance.mode", &r.mode, |s| match s.as_str() {
            "p2c-ewma" => Ok(BalanceMode::P2cEwma),
            "round-robin" => Ok(BalanceMode::RoundRobin),
            _ => Err(format!(
                "unknown mode \"{s}\"; valid: \"p2c-ewma\", \"round-robin\""
            )),
        });
        self.value(&mut t.decay, "balance.decay", &r.decay, |s| positive(s));
        self.value(
            &mut t.default_rtt,
            "balance.default_rtt",
            &r.default_rtt,
            |s| positive(s),
        );
        self.value(
            &mut t.failure_penalty,
            "balance.failure_penalty",
            &r.failure_penalty,
            |s| positive(s),
        );
        self.value(
            &mut t.max_endpoints,
            "balance.max_endpoints",
            &r.max_endpoints,
            |&v| int(v, 1, 10_000),
        );
    }

    fn outlier(&mut self, t: &mut Outlier, raw: &RawPolicy) {
        let r = &raw.outlier;
        // 0 would eject an endpoint before it failed.
        self.value(
            &mut t.consecutive_failures,
            "outlier.consecutive_failures",
            &r.consecutive_failures,
            |&v| int(v, 1, U32_MAX),
        );
        self.value(
            &mut t.base_ejection,
            "outlier.base_ejection",
            &r.base_ejection,
            |s| positive(s),
        );
        self.value(
            &mut t.max_ejection,
            "outlier.max_ejection",
            &r.max_ejection,
            |s| positive(s),
        );
        self.value(
            &mut t.max_ejected_percent,
            "outlier.max_ejected_percent",
            &r.max_ejected_percent,
            |&v| int(v, 0, 100),
        );
        self.value(&mut t.panic, "outlier.panic", &r.panic, |s| {
            match s.as_str() {
                "fail-fast" => Ok(PanicMode::FailFast),
                "route-all" => Ok(PanicMode::RouteAll),
                _ => Err(format!(
                    "unknown panic \"{s}\"; valid: \"fail-fast\", \"route-all\""
                )),
            }
        });
    }

    fn dns(&mut self, t: &mut Dns, raw: &RawPolicy) {
        let r = &raw.dns;
        self.value(&mut t.min_ttl, "dns.min_ttl", &r.min_ttl, |s| duration(s));
        self.value(&mut t.max_ttl, "dns.max_ttl", &r.max_ttl, |s| positive(s));
        let set = r.max_ttl.as_ref().or(r.min_ttl.as_ref());
        if let (Some(at), true) = (set, t.min_ttl > t.max_ttl) {
            self.error(
                at.span(),
                format!(
                    "`dns.min_ttl` ({:?}) is above `dns.max_ttl` ({:?})",
                    t.min_ttl, t.max_ttl
                ),
            );
        }
    }

    /// Sets `slot` from `v` when it is present and valid; reports it at its span otherwise.
    fn value<V, T>(
        &mut self,
        slot: &mut T,
        key: &str,
        v: &S<V>,
        parse: impl FnOnce(&V) -> Result<T, String>,
    ) {
        if let Some(v) = v {
            match parse(v.get_ref()) {
                Ok(t) => *slot = t,
                Err(why) => self.error(v.span(), format!("`{key}`: {why}")),
            }
        }
    }

    /// `client_cert` and `client_key`: both or neither, read and checked together; a problem
    /// is reported at the key of the file it is in.
    fn client_identity(&mut self, p: &mut Policy, raw: &RawPolicy) {
        let (cert, key) = match (&raw.client_cert, &raw.client_key) {
            (None, None) => return,
            (Some(cert), Some(key)) => (cert, key),
            (Some(alone), None) | (None, Some(alone)) => {
                let (set, missing) = if raw.client_cert.is_some() {
                    ("client_cert", "client_key")
                } else {
                    ("client_key", "client_cert")
                };
                let why =
                    format!("`{set}` needs `{missing}` beside it (a certificate and its key)");
                self.error(alone.span(), why);
                return;
            }
        };
        let now = std::time::SystemTime::now();
        match super::client_cert::read(self.dir, cert.get_ref(), key.get_ref(), now) {
            Ok((cert, key)) => {
                p.client_cert = Some(cert);
                p.client_key = Some(key);
            }
            Err((part, why)) => {
                let (name, span) = match part {
                    super::client_cert::Part::Cert => ("client_cert", cert.span()),
                    super::client_cert::Part::Key => ("client_key", key.span()),
                };
                self.error(span, format!("`{name}`: {why}"));
            }
        }
    }

    /// Like [`Cx::value`] for arrays: every bad entry is reported at its own span, and the
    /// array replaces `slot` only if all entries are valid.
    fn list<V, T>(
        &mut self,
        slot: &mut Vec<T>,
        key: &str,
        v: &List<V>,
        parse: impl Fn(&V) -> Result<T, String>,
    ) {
        let Some(items) = v else { return };
        let mut out = Vec::with_capacity(items.get_ref().len());
        let mut valid = true;
        for item in items.get_ref() {
            match parse(item.get_ref()) {
                Ok(t) => out.push(t),
                Err(why) => {
                    valid = false;
                    self.error(item.span(), format!("`{key}`: {why}"));
                }
            }
        }
        if valid {
            *slot = out;
        }
    }
}

/// Makes a serde error message name the key it is about (serde only names the type).
fn describe_serde_error(path: Option<&[String]>, message: &str) -> String {
    let Some(path) = path else {
        return message.to_string();
    };
    let path = path.join(".");
    // serde: "unknown field `x`, expected one of `a`, `b`" or "unknown field `x`, expected `a`"
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((_, expected)) = rest.split_once(", ") {
            let keys = expected
                .strip_prefix("expected one of ")
                .or_else(|| expected.strip_prefix("expected "))
                .unwrap_or(expected);
            return format!("unknown key `{path}`; valid keys here: {keys}");
        }
    }
    let message = message
        .replace("expected i64", "expected an integer")
        .replace("expected f64", "expected a number")
        .replace("expected a sequence", "expected an array");
    format!("`{path}`: {message}")
}

/// The path (`["retry", "attempts"]`) of the entry whose key or value is at `span`.
fn key_path(table: &DeTable<'_>, span: &Range<usize>) -> Option<Vec<String>> {
    for (key, value) in table {
        if let DeValue::Table(inner) = value.get_ref() {
            if let Some(mut path) = key_path(inner, span) {
                path.insert(0, key.get_ref().to_string());
                return Some(path);
            }
        }
        let v = value.span();
        if key.span() == *span || (v.start <= span.start && span.end <= v.end) {
            return Some(vec![key.get_ref().to_string()]);
        }
    }
    None
}

/// Removes the entry at `path`; returns whether there was one.
fn remove_key(table: &mut DeTable<'_>, path: &[String]) -> bool {
    match path {
        [] => false,
        [key] => table.remove(key.as_str()).is_some(),
        [key, rest @ ..] => match table.get_mut(key.as_str()).map(|v| v.get_mut()) {
            Some(DeValue::Table(inner)) => remove_key(inner, rest),
            _ => false,
        },
    }
}

const U32_MAX: i64 = u32::MAX as i64;

fn int<T: TryFrom<i64>>(v: i64, min: i64, max: i64) -> Result<T, String> {
    if v < min {
        return Err(format!("must be at least {min}, got {v}"));
    }
    if v > max {
        return Err(format!("must be at most {max}, got {v}"));
    }
    T::try_from(v).map_err(|_| format!("must be at most {max}, got {v}"))
}

/// `failure_rate` and `slow_call_rate`: a fraction of calls.
fn rate(v: f64) -> Result<f64, String> {
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!(
            "must be greater than 0 and at most 1 (0.5 = half the calls), got {v}"
        ))
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("\"{s}\" is not a duration ({e}); write e.g. \"250ms\", \"2s\" or \"1m\"")
    })
}

fn positive(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.is_zero() {
        return Err(format!("must be greater than 0, got \"{s}\""));
    }
    Ok(d)
}

fn status(v: i64) -> Result<u16, String> {
    match u16::try_from(v) {
        Ok(code) if (100..=599).contains(&code) => Ok(code),
        _ => Err(format!("{v} is not an HTTP status code (100 to 599)")),
    }
}

/// An HTTP method is a token (RFC 9110 §5.6.2); stored upper-case.
fn method(s: &str) -> Result<String, String> {
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !s.is_empty() && s.chars().all(is_tchar) {
        Ok(s.to_ascii_uppercase())
    } else {
        Err(format!(
            "\"{s}\" is not an HTTP method (a token such as \"GET\")"
        ))
    }
}

fn retry_on(s: &str) -> Result<RetryOn, String> {
    Ok(match s {
        "connect-failure" => RetryOn::ConnectFailure,
        "reset" => RetryOn::Reset,
        "gateway-error" => RetryOn::GatewayError,
        "timeout" => RetryOn::Timeout,
        "5xx" => RetryOn::FiveXx,
        "retriable-status" => RetryOn::RetriableStatus,
        _ => {
            return Err(format!(
                "unknown condition \"{s}\"; valid: \"connect-failure\", \"reset\", \
                 \"gateway-error\", \"timeout\", \"5xx\", \"retriable-status\""
            ))
        }
    })
}

fn grpc_code(s: &str) -> Result<GrpcCode, String> {
    GrpcCode::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = GrpcCode::ALL.iter().map(|c| c.name()).collect();
        format!("unknown gRPC status \"{s}\"; valid: {}", names.join(", "))
    })
}

fn breaker_mode(s: &str) -> Result<BreakerMode, String> {
    match s {
        "enforce" => Ok(BreakerMode::Enforce),
        "shadow" => Ok(BreakerMode::Shadow),
        "off" => Ok(BreakerMode::Off),
        "throttle" => Ok(BreakerMode::Throttle),
        _ => Err(format!(
            "unknown mode \"{s}\"; valid: \"enforce\", \"shadow\", \"off\", \"throttle\""
        )),
    }
}

fn limit_mode(s: &str) -> Result<LimitMode, String> {
    match s {
        "enforce" => Ok(LimitMode::Enforce),
        "shadow" => Ok(LimitMode::Shadow),
        _ => Err(format!(
            "unknown mode \"{s}\"; valid: \"enforce\", \"shadow\""
        )),
    }
}

const HOST_FORMS: &str =
    "expected \"name\", \"name:port\", \"*.suffix\", \"IP\", \"IP:port\" or \"[IPv6]:port\"";

/// A `hosts` entry.
pub(crate) fn host_pattern(s: &str) -> Result<HostPattern, String> {
    let parse = || {
        let (host, port) = split_host_port(s)?;
        if let Some(suffix) = host.strip_prefix("*.") {
            if port.is_some() {
                return Err("a wildcard matches every port and cannot have one".to_string());
            }
            let suffix = host_name(suffix)?;
            return Ok(HostPattern::Wildcard {
                suffix: format!(".{suffix}"),
            });
        }
        let host = host_name(host)?;
        Ok(match port {
            Some(port) => HostPattern::HostPort { host, port },
            None => HostPattern::Host { host },
        })
    };
    parse().map_err(|why| format!("\"{s}\": {why}; {HOST_FORMS}"))
}

/// An `endpoints` entry: `host:port`, IPv6 in brackets.
fn endpoint(s: &str) -> Result<Endpoint, String> {
    let parse = || {
        let (host, port) = split_host_port(s)?;
        let port = port.ok_or("the port is required")?;
        Ok(Endpoint {
            host: host_name(host)?,
            port,
        })
    };
    parse().map_err(|why: String| {
        format!("\"{s}\": {why}; expected \"host:port\", \"IP:port\" or \"[IPv6]:port\"")
    })
}

fn listen(s: &str) -> Result<Option<SocketAddr>, String> {
    s.parse().map(Some).map_err(|_| {
        format!(
            "\"{s}\" is not a socket address; expected \"IP:port\" such as \"127.0.0.1:10000\" \
             or \"[::1]:10000\""
        )
    })
}

/// The new `Host` header: a host with an optional port.
fn host_rewrite(s: &str) -> Result<Option<String>, String> {
    split_host_port(s)
        .and_then(|(host, _)| host_name(host))
        .map(|_| Some(s.to_string()))
        .map_err(|why| format!("\"{s}\": {why}; expected \"name\" or \"name:port\""))
}

/// The TLS server name: what rustls will accept (a DNS name or an IP address).
fn sni(s: &str) -> Result<Option<String>, String> {
    match rustls_pki_types::ServerName::try_from(s) {
        Ok(_) => Ok(Some(s.to_ascii_lowercase())),
        Err(_) => Err(format!("\"{s}\" is not a DNS name or IP address")),
    }
}

/// Relative paths are relative to the policies directory, so that the directory is
/// self-contained (a ConfigMap can carry the CA next to the policies).
fn ca_file(dir: &Path, s: &str) -> Result<Option<CaFile>, String> {
    let path = dir.join(s);
    match fs::File::open(&path).and_then(|f| f.metadata()) {
        Ok(meta) if meta.is_file() => {
            let pem =
                fs::read(&path).map_err(|e| format!("cannot read \"{}\": {e}", path.display()))?;
            super::ca::parse_ca_pem(&path, &pem)?;
            Ok(Some(CaFile {
                path,
                pem: pem.into(),
            }))
        }
        Ok(_) => Err(format!("\"{}\" is not a file", path.display())),
        Err(err) => Err(format!(
            "cannot read \"{}\": {err}; expected a readable PEM file",
            path.display()
        )),
    }
}

/// Splits `host[:port]`; IPv6 hosts come back without brackets.
fn split_host_port(s: &str) -> Result<(&str, Option<u16>), String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or("missing `]`")?;
        if ip.parse::<Ipv6Addr>().is_err() {
            return Err(format!("`{ip}` is not an IPv6 address"));
        }
        return match after {
            "" => Ok((ip, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((ip, Some(parse_port(port)?))),
                None => Err("unexpected text after `]`".into()),
            },
        };
    }
    if s.parse::<Ipv6Addr>().is_ok() {
        return Ok((s, None));
    }
    match s.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => {
            Err("write an IPv6 address with a port in brackets, e.g. \"[::1]:8080\"".into())
        }
        Some((host, port)) => Ok((host, Some(parse_port(port)?))),
        None => Ok((s, None)),
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(port) if port != 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(format!("port `{s}` must be a number from 1 to 65535")),
    }
}

/// A host name or IP address, normalized: lower case, IP addresses in canonical form.
fn host_name(host: &str) -> Result<String, String> {
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    // Any spelling of an IP address (`2130706433`, `[::ffff:10.0.0.1]`) is its canonical form,
    // the one requests are matched in (see `crate::address`).
    let lower = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let canonical = canonical_host(&lower)?;
    if canonical.parse::<IpAddr>().is_ok() {
        return Ok(canonical.into_owned());
    }
    if host == "*" {
        return Err(
            "`*` alone is not a pattern: destinations no file matches get \
                    default.toml, whose `allow` decides about them"
                .into(),
        );
    }
    if host.contains('*') {
        return Err("a wildcard is only allowed as a leading `*.`".into());
    }
    // The one spelling that requests are matched in (see `proxy/target.rs`): no trailing dot
    // of a fully qualified name, and international names in their ASCII (punycode) form,
    // which is what clients send.
    let host = host.strip_suffix('.').unwrap_or(host);
    let ascii;
    let host = if host.is_ascii() {
        host
    } else {
        ascii = idna::domain_to_ascii(host)
            .map_err(|_| format!("`{host}` is not a valid international domain name"))?;
        ascii.as_str()
    };
    if host.len() > 253 {
        return Err("a host name is at most 253 characters".into());
    }
    for label in host.split('.') {
        let valid_chars = label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if label.is_empty() || label.len() > 63 || !valid_chars {
            return Err(format!(
                "`{label}` is not a valid DNS label (1 to 63 letters, digits, `-`, `_`)"
            ));
        }
    }
    // Top-level domains are never numeric: this is a mistyped IPv4 address.
    let tld = host.rsplit('.').next().unwrap_or(host);
    if tld.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{host}` is not a valid IPv4 address"));
    }
    Ok(host.to_ascii_lowercase())
}

impl Default for Policy {
    /// The built-in defaults: what an absent or empty `default.toml` means (docs/ARCHITECTURE.md
    /// §3).
    fn default() -> Self {
        Policy {
            name: DEFAULT_POLICY.to_string(),
            file: PathBuf::from("default.toml"),
            hosts: Vec::new(),
            listen: None,
            endpoints: Vec::new(),
            host_rewrite: None,
            tls: false,
            sni: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            allow: true,
            allow_private: true,
            allow_link_local: false,
            intercept: false,
            metrics_max_destinations: 100,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle: 256,
            timeouts: Timeouts::default(),
            retry: Retry::default(),
            breaker: Breaker::default(),
            rate_limit: RateLimit::default(),
            concurrency: Concurrency::default(),
            hedge: super::Hedge::default(),
            balance: Balance::default(),
            outlier: Outlier::default(),
            dns: Dns::default(),
            routes: Vec::new(),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(1),
            attempt: Duration::from_secs(2),
            total: Duration::from_secs(5),
            idle: Duration::from_secs(5 * 60),
            tunnel_idle: Duration::from_secs(60 * 60),
            tunnel_max: Duration::from_secs(24 * 60 * 60),
        }
    }
}

impl Default for Retry {
    /// Retries only idempotent methods, only on failures where the request cannot have been
    /// processed twice in a harmful way (not on timeouts).
    fn default() -> Self {
        Retry {
            attempts: 3,
            on: vec![
                RetryOn::ConnectFailure,
                RetryOn::Reset,
                RetryOn::GatewayError,
            ],
            statuses: vec![503],
            grpc_codes: vec![GrpcCode::Unavailable],
            methods: ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]
                .map(String::from)
                .to_vec(),
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            budget_ratio: 0.2,
            budget_min_per_second: 10,
            honor_retry_after: true,
            max_replay_bytes: 65536,
        }
    }
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            mode: BreakerMode::Enforce,
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_calls: 20,
            slow_call_duration: Duration::from_secs(1),
            slow_call_rate: 1.0,
            failure_statuses: vec![500, 502, 503, 504],
            grpc_failure_codes: vec![
                GrpcCode::Unavailable,
                GrpcCode::ResourceExhausted,
                GrpcCode::DeadlineExceeded,
                GrpcCode::Internal,
            ],
            open_base: Duration::from_secs(5),
            open_max: Duration::from_secs(60),
            half_open_probes: 1,
            throttle_window: Duration::from_secs(120),
            throttle_k: 2.0,
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            rps: 0,
            burst: 0,
            mode: LimitMode::Enforce,
            fleet: false,
            fleet_fallback_rps: None,
            fleet_size_hint: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn load(files: &[(&str, &str)]) -> PolicySet {
        let dir = dir_with(files);
        load_dir(dir.path()).unwrap_or_else(|e| panic!("unexpected errors:\n{e}"))
    }

    /// The errors as `file:line:col: message`, with the file name relative to the directory.
    fn errors(files: &[(&str, &str)]) -> Vec<String> {
        let dir = dir_with(files);
        let errors = load_dir(dir.path()).expect_err("expected errors");
        let prefix = format!("{}/", dir.path().display());
        errors
            .iter()
            .map(|e| e.to_string().replacen(&prefix, "", 1))
            .collect()
    }

    /// Asserts exactly one error, at `at` (`file:line:col`), whose message contains `parts`.
    #[track_caller]
    fn assert_error(files: &[(&str, &str)], at: &str, parts: &[&str]) {
        let errors = errors(files);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        let error = &errors[0];
        assert!(error.starts_with(&format!("{at}: ")), "{error}");
        for part in parts {
            assert!(error.contains(part), "{error:?} lacks {part:?}");
        }
    }

    fn builtin(dir: &Path) -> Policy {
        Policy {
            file: dir.join("default.toml"),
            ..Policy::default()
        }
    }

    #[test]
    fn builtin_defaults_when_default_toml_is_absent() {
        let dir = dir_with(&[]);
        let set = load_dir(dir.path()).unwrap();
        assert_eq!(*set.default, builtin(dir.path()));
        assert!(set.others.is_empty());
        let d = &set.default;
        assert_eq!(d.name, "default");
        assert_eq!(d.timeouts.attempt, Duration::from_secs(2));
        assert_eq!(
            d.retry.on,
            [
                RetryOn::ConnectFailure,
                RetryOn::Reset,
                RetryOn::GatewayError
            ]
        );
        assert_eq!(d.breaker.failure_statuses, [500, 502, 503, 504]);
        assert!(d.allow && d.allow_private && !d.allow_link_local && !d.tls);
        assert_eq!(d.metrics_max_destinations, 100);
        assert_eq!(d.pool_idle_timeout, Duration::from_secs(90));
        assert_eq!(d.pool_max_idle, 256);
    }

    #[test]
    fn builtin_defaults_when_default_toml_is_empty() {
        let dir = dir_with(&[("default.toml", "# nothing\n")]);
        let set = load_dir(dir.path()).unwrap();
        assert_eq!(*set.default, builtin(dir.path()));
    }

    #[test]
    fn default_toml_overrides_builtin_values() {
        let set = load(&[(
            "default.toml",
            "allow = false\nallow_private = false\n[timeouts]\ntotal = \"9s\"\n\
             [retry]\nmethods = [\"get\"]\n[rate_limit]\nrps = 5\nmode = \"shadow\"\n",
        )]);
        let d = &set.default;
        assert!(!d.allow && !d.allow_private);
        assert_eq!(d.timeouts.total, Duration::from_secs(9));
        assert_eq!(d.timeouts.connect, Duration::from_secs(1));
        assert_eq!(d.retry.methods, ["GET"]);
        assert_eq!(d.rate_limit.rps, 5);
        assert_eq!(d.rate_limit.mode, LimitMode::Shadow);
    }

    #[test]
    fn other_policies_inherit_field_by_field() {
        let set = load(&[
            (
                "default.toml",
                "allow_private = false\nmetrics_max_destinations = 7\n\
                 [breaker]\nfailure_rate = 0.3\nwindow = \"20s\"\n[retry]\nattempts = 2\n",
            ),
            (
                "api.toml",
                "hosts = [\"api.test\"]\n[breaker]\nmin_calls = 3\n",
            ),
        ]);
        let api = set.get("api").unwrap();
        let expected_breaker = Breaker {
            failure_rate: 0.3,
            window: Duration::from_secs(20),
            min_calls: 3,
            ..Breaker::default()
        };
        assert_eq!(api.breaker, expected_breaker);
        assert_eq!(api.retry.attempts, 2);
        assert_eq!(api.retry.statuses, [503]);
        assert!(!api.allow_private);
        assert_eq!(api.metrics_max_destinations, 7);
        assert_eq!(api.timeouts, Timeouts::default());
        assert_eq!(api.name, "api");
    }

    #[test]
    fn where_traffic_goes_and_allow_are_not_inherited() {
        let set = load(&[
            (
                "default.toml",
                "allow = false\ntls = true\nsni = \"example.com\"\nallow_link_local = true\n",
            ),
            ("api.toml", "hosts = [\"api.test\"]\n"),
        ]);
        assert!(!set.default.allow && set.default.tls);
        let api = set.get("api").unwrap();
        assert!(api.allow);
        assert!(!api.tls);
        assert_eq!(api.sni, None);
        assert_eq!(api.listen, None);
        assert!(api.endpoints.is_empty());
        assert!(api.allow_link_local, "allow_link_local is inherited");
    }

    #[test]
    fn values_are_parsed_and_normalized() {
        let set = load(&[(
            "api.toml",
            "hosts = [\"API.Example.com\", \"*.Svc.test\", \"10.0.0.7:8080\", \"[::1]:8080\", \
             \"fd00:0::7\", \"db_1.internal\"]\n\
             listen = \"[::1]:10001\"\nendpoints = [\"10.0.0.8:8443\", \"[fd00::8]:443\"]\n\
             host_rewrite = \"api.example.com\"\nsni = \"API.example.com\"\n\
             [retry]\non = [\"5xx\", \"retriable-status\", \"timeout\"]\nbackoff_max = \"0s\"\n\
             budget_ratio = 0\n[breaker]\nmode = \"off\"\nslow_call_rate = 1\n",
        )]);
        let api = set.get("api").unwrap();
        assert_eq!(
            api.hosts,
            [
                HostPattern::Host {
                    host: "api.example.com".into()
                },
                HostPattern::Wildcard {
                    suffix: ".svc.test".into()
                },
                HostPattern::HostPort {
                    host: "10.0.0.7".into(),
                    port: 8080
                },
                HostPattern::HostPort {
                    host: "::1".into(),
                    port: 8080
                },
                HostPattern::Host {
                    host: "fd00::7".into()
                },
                HostPattern::Host {
                    host: "db_1.internal".into()
                },
            ]
        );
        assert_eq!(api.listen, Some("[::1]:10001".parse().unwrap()));
        assert_eq!(
            api.endpoints,
            [
                Endpoint {
                    host: "10.0.0.8".into(),
                    port: 8443
                },
                Endpoint {
                    host: "fd00::8".into(),
                    port: 443
                },
            ]
        );
        assert_eq!(api.host_rewrite.as_deref(), Some("api.example.com"));
        assert_eq!(api.sni.as_deref(), Some("api.example.com"));
        assert_eq!(
            api.retry.on,
            [RetryOn::FiveXx, RetryOn::RetriableStatus, RetryOn::Timeout]
        );
        assert_eq!(api.retry.backoff_max, Duration::ZERO);
        assert_eq!(api.retry.budget_ratio, 0.0);
        assert_eq!(api.breaker.mode, BreakerMode::Off);
        assert_eq!(api.breaker.slow_call_rate, 1.0);
    }

    #[test]
    fn lookup_goes_through_the_matcher() {
        let set = load(&[
            ("a.toml", "hosts = [\"*.example.com\"]\n"),
            ("b.toml", "hosts = [\"api.example.com:8443\"]\n"),
        ]);
        assert_eq!(set.lookup("x.example.com", 443).name, "a");
        assert_eq!(set.lookup("api.example.com", 8443).name, "b");
        assert_eq!(set.lookup("api.example.com", 443).name, "a");
        assert_eq!(set.lookup("example.org", 443).name, "default");
    }

    #[test]
    fn invalid_durations() {
        assert_error(
            &[("a.toml", "[timeouts]\nconnect = \"fast\"\n")],
            "a.toml:2:11",
            &[
                "`timeouts.connect`",
                "\"fast\" is not a duration",
                "\"250ms\"",
            ],
        );
        assert_error(
            &[("a.toml", "[breaker]\nwindow = \"0s\"\n")],
            "a.toml:2:10",
            &["`breaker.window`", "greater than 0"],
        );
        assert_error(
            &[("a.toml", "[retry]\nbackoff_base = \"0ms\"\n")],
            "a.toml:2:16",
            &["`retry.backoff_base`", "greater than 0"],
        );
        assert_error(
            &[("a.toml", "[retry]\nbackoff_max = \"-1s\"\n")],
            "a.toml:2:15",
            &["`retry.backoff_max`", "not a duration"],
        );
    }

    #[test]
    fn out_of_range_numbers() {
        assert_error(
            &[("a.toml", "[retry]\nattempts = 0\n")],
            "a.toml:2:12",
            &["`retry.attempts`", "at least 1, got 0"],
        );
        assert_error(
            &[("a.toml", "[breaker]\nfailure_rate = 0\n")],
            "a.toml:2:16",
            &["`breaker.failure_rate`", "greater than 0 and at most 1"],
        );
        assert_error(
            &[("a.toml", "[breaker]\nslow_call_rate = 1.5\n")],
            "a.toml:2:18",
            &["`breaker.slow_call_rate`", "at most 1", "got 1.5"],
        );
        assert_error(
            &[("a.toml", "[retry]\nbudget_ratio = -0.1\n")],
            "a.toml:2:16",
            &["`retry.budget_ratio`", ">= 0"],
        );
        assert_error(
            &[("a.toml", "metrics_max_destinations = 0\n")],
            "a.toml:1:28",
            &["`metrics_max_destinations`", "at least 1"],
        );
        assert_error(
            &[("a.toml", "[rate_limit]\nrps = -1\n")],
            "a.toml:2:7",
            &["`rate_limit.rps`", "at least 0, got -1"],
        );
        assert_error(
            &[("a.toml", "[concurrency]\nmax_in_flight = 4294967296\n")],
            "a.toml:2:17",
            &["`concurrency.max_in_flight`", "at most 4294967295"],
        );
        assert_error(
            &[("a.toml", "[breaker]\nhalf_open_probes = 0\n")],
            "a.toml:2:20",
            &["`breaker.half_open_probes`", "at least 1"],
        );
    }

    #[test]
    fn invalid_status_codes_are_reported_each_at_its_entry() {
        let errors = errors(&[(
            "a.toml",
            "[retry]\nstatuses = [503, 99]\n[breaker]\nfailure_statuses = [500, 600]\n",
        )]);
        assert_eq!(
            errors,
            [
                "a.toml:2:18: `retry.statuses`: 99 is not an HTTP status code (100 to 599)",
                "a.toml:4:26: `breaker.failure_statuses`: 600 is not an HTTP status code \
                 (100 to 599)",
            ]
        );
    }

    #[test]
    fn grpc_codes_are_read_by_name_and_a_wrong_one_is_pointed_at() {
        let set = load(&[(
            "a.toml",
            "hosts = [\"a.test\"]\n[retry]\ngrpc_codes = [\"unavailable\", \"resource-exhausted\"]\n\
             [breaker]\ngrpc_failure_codes = []\n",
        )]);
        let a = set.get("a").unwrap();
        assert_eq!(
            a.retry.grpc_codes,
            [GrpcCode::Unavailable, GrpcCode::ResourceExhausted]
        );
        assert!(a.breaker.grpc_failure_codes.is_empty());
        let default = set.get("default").unwrap();
        assert_eq!(default.retry.grpc_codes, [GrpcCode::Unavailable]);
        assert_eq!(default.breaker.grpc_failure_codes.len(), 4);
        assert_error(
            &[(
                "a.toml",
                "[breaker]\ngrpc_failure_codes = [\"UNAVAILABLE\"]\n",
            )],
            "a.toml:2:23",
            &[
                "`breaker.grpc_failure_codes`",
                "unknown gRPC status \"UNAVAILABLE\"",
                "resource-exhausted",
            ],
        );
    }

    #[test]
    fn invalid_methods_conditions_and_modes() {
        assert_error(
            &[("a.toml", "[retry]\nmethods = [\"GET\", \"GE T\"]\n")],
            "a.toml:2:19",
            &["`retry.methods`", "\"GE T\" is not an HTTP method"],
        );
        assert_error(
            &[("a.toml", "[retry]\non = [\"reset\", \"always\"]\n")],
            "a.toml:2:16",
            &[
                "`retry.on`",
                "\"always\"",
                "\"connect-failure\"",
                "\"retriable-status\"",
            ],
        );
        assert_error(
            &[("a.toml", "[breaker]\nmode = \"sometimes\"\n")],
            "a.toml:2:8",
            &["`breaker.mode`", "\"enforce\", \"shadow\", \"off\""],
        );
        assert_error(
            &[("a.toml", "[rate_limit]\nmode = \"off\"\n")],
            "a.toml:2:8",
            &["`rate_limit.mode`", "\"enforce\", \"shadow\""],
        );
    }

    #[test]
    fn invalid_hosts() {
        let cases = [
            ("\"\"", "empty"),
            ("\"*\"", "`*` alone"),
            ("\"a.*.com\"", "leading `*.`"),
            ("\"*.\"", "empty"),
            ("\"**.a.com\"", "leading `*.`"),
            ("\"a..com\"", "not a valid DNS label"),
            ("\"a b.com\"", "not a valid DNS label"),
            ("\"api.test:0\"", "port `0`"),
            ("\"api.test:65536\"", "port `65536`"),
            ("\"api.test:\"", "port ``"),
            ("\"*.api.test:443\"", "cannot have one"),
            ("\"fd00::1:x\"", "in brackets"),
            ("\"[fd00::1\"", "missing `]`"),
            ("\"[api.test]:80\"", "not an IPv6 address"),
            ("\"10.0.0.300\"", "not a valid IPv4 address"),
        ];
        for (value, why) in cases {
            let text = format!("hosts = [\"ok.test\", {value}]\n");
            assert_error(
                &[("a.toml", &text)],
                "a.toml:1:21",
                &["`hosts`", why, "\"*.suffix\""],
            );
        }
    }

    #[test]
    fn invalid_endpoints_listen_and_names() {
        assert_error(
            &[(
                "a.toml",
                "listen = \"127.0.0.1:10000\"\nendpoints = [\"up.test\"]\n",
            )],
            "a.toml:2:14",
            &["`endpoints`", "port is required", "\"host:port\""],
        );
        assert_error(
            &[(
                "a.toml",
                "listen = \"localhost:10000\"\nendpoints = [\"up.test:80\"]\n",
            )],
            "a.toml:1:10",
            &["`listen`", "not a socket address", "127.0.0.1:10000"],
        );
        assert_error(
            &[("a.toml", "hosts = [\"a.test\"]\nhost_rewrite = \"a b\"\n")],
            "a.toml:2:16",
            &["`host_rewrite`", "\"a b\""],
        );
        assert_error(
            &[("a.toml", "hosts = [\"a.test\"]\nsni = \"not a name\"\n")],
            "a.toml:2:7",
            &["`sni`", "not a DNS name"],
        );
    }

    #[test]
    fn client_cert_and_key_come_together_are_never_inherited_and_rotate_by_content() {
        let pair = |cn: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![cn.to_owned()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (cert, key) = pair("client.test");
        let with = "hosts = [\"a.test\"]\nclient_cert = \"c.pem\"\nclient_key = \"k.pem\"\n";
        assert_error(
            &[("a.toml", "hosts = [\"a.test\"]\nclient_cert = \"c.pem\"\n")],
            "a.toml:2:15",
            &["`client_cert` needs `client_key`"],
        );
        assert_error(
            &[("c.pem", &cert), ("k.pem", "nothing\n"), ("a.toml", with)],
            "a.toml:3:14",
            &["`client_key`", "k.pem", "holds no private key"],
        );
        let dir = dir_with(&[
            ("c.pem", &cert),
            ("k.pem", &key),
            (
                "default.toml",
                "client_cert = \"c.pem\"\nclient_key = \"k.pem\"\n",
            ),
            ("a.toml", with),
            ("b.toml", "hosts = [\"b.test\"]\n"),
        ]);
        let set = load_dir(dir.path()).unwrap();
        let loaded = set.get("a").unwrap().client_cert.clone().unwrap();
        assert_eq!(loaded.path, dir.path().join("c.pem"));
        assert!(
            set.get("b").unwrap().client_cert.is_none(),
            "never inherited"
        );
        // The same paths with another certificate and key are another identity.
        let (cert, key) = pair("rotated.test");
        std::fs::write(dir.path().join("c.pem"), cert).unwrap();
        std::fs::write(dir.path().join("k.pem"), key).unwrap();
        let rotated = load_dir(dir.path()).unwrap();
        assert_ne!(
            rotated.get("a").unwrap().client_cert.as_ref(),
            Some(&loaded)
        );
    }

    #[test]
    fn ca_file_must_be_readable_and_is_relative_to_the_directory() {
        assert_error(
            &[(
                "a.toml",
                "hosts = [\"a.test\"]\nca_file = \"missing.pem\"\n",
            )],
            "a.toml:2:11",
            &["`ca_file`", "cannot read", "missing.pem"],
        );
        // A file that TLS origination could not use is refused now, not when a client is built.
        for broken in ["-----BEGIN CERTIFICATE-----\n", "not a certificate\n"] {
            assert_error(
                &[
                    ("ca.pem", broken),
                    ("a.toml", "hosts = [\"a.test\"]\nca_file = \"ca.pem\"\n"),
                ],
                "a.toml:2:11",
                &["`ca_file`", "ca.pem"],
            );
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let dir = dir_with(&[
            ("ca.pem", &ca.pem()),
            ("a.toml", "hosts = [\"a.test\"]\nca_file = \"ca.pem\"\n"),
        ]);
        let set = load_dir(dir.path()).unwrap();
        let loaded = set.get("a").unwrap().ca_file.clone().unwrap();
        assert_eq!(loaded.path, dir.path().join("ca.pem"));
        // The same path with other certificates is another `ca_file`: a reload applies it.
        let other = params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), other.pem()).unwrap();
        let rotated = load_dir(dir.path()).unwrap();
        let rotated = rotated.get("a").unwrap().ca_file.clone().unwrap();
        assert_eq!(rotated.path, loaded.path);
        assert_ne!(rotated, loaded);
    }

    #[test]
    fn unreachable_policies_and_listeners_without_endpoints() {
        assert_error(
            &[("a.toml", "endpoints = [\"up.test:443\"]\n")],
            "a.toml:1:13",
            &["`endpoints`", "neither `hosts` nor `listen`"],
        );
        assert_error(
            &[("a.toml", "listen = \"127.0.0.1:10000\"\n")],
            "a.toml:1:10",
            &["`listen`", "needs `endpoints`"],
        );
        // With hosts, endpoints redirect egress traffic: fine.
        load(&[(
            "a.toml",
            "hosts = [\"a.test\"]\nendpoints = [\"10.0.0.1:80\"]\n",
        )]);
    }

    #[test]
    fn default_toml_cannot_say_where_traffic_goes() {
        let errors = errors(&[(
            "default.toml",
            "hosts = [\"a.test\"]\nlisten = \"127.0.0.1:1\"\nendpoints = [\"b:1\"]\n\
             host_rewrite = \"c\"\n",
        )]);
        assert_eq!(errors.len(), 4, "{errors:#?}");
        for (error, (at, key)) in errors.iter().zip([
            ("1:9", "hosts"),
            ("2:10", "listen"),
            ("3:13", "endpoints"),
            ("4:16", "host_rewrite"),
        ]) {
            assert!(
                error.starts_with(&format!("default.toml:{at}: `{key}` cannot be set")),
                "{error}"
            );
        }
    }

    #[test]
    fn hedge_concurrency_and_throttle_keys() {
        let set = load(&[(
            "a.toml",
            "hosts = [\"a.test\"]\n[hedge]\nenabled = true\ndelay = \"p99\"\n\
             [concurrency]\nmode = \"gradient\"\nmax_limit = 200\n\
             [breaker]\nmode = \"throttle\"\nthrottle_k = 1.5\n",
        )]);
        let a = &set.others[0];
        assert!(a.hedge.enabled);
        assert_eq!(a.hedge.delay, super::super::HedgeDelay::Percentile(99.0));
        assert_eq!(a.hedge.max_extra_load, 0.05);
        assert_eq!(a.concurrency.mode, super::super::ConcurrencyMode::Gradient);
        assert_eq!((a.concurrency.min_limit, a.concurrency.max_limit), (5, 200));
        assert_eq!(a.breaker.mode, BreakerMode::Throttle);
        assert_eq!(a.breaker.throttle_k, 1.5);
        assert_eq!(a.breaker.throttle_window, Duration::from_secs(120));
        assert_error(
            &[("a.toml", "[concurrency]\nmin_limit = 10\nmax_limit = 5\n")],
            "a.toml:2:13",
            &["`concurrency.min_limit` (10) is above `concurrency.max_limit` (5)"],
        );
        assert_error(
            &[("a.toml", "[hedge]\nmax_attempts = 1\n")],
            "a.toml:2:16",
            &["`hedge.max_attempts`", "at least 2"],
        );
        assert_error(
            &[("a.toml", "[concurrency]\nbackoff_ratio = 1.0\n")],
            "a.toml:2:17",
            &["`concurrency.backoff_ratio`", "less than 1"],
        );
    }

    #[test]
    fn balance_outlier_and_dns_sections() {
        let set = load(&[(
            "a.toml",
            "hosts = [\"a.test\"]\n[balance]\nmode = \"round-robin\"\ndecay = \"2s\"\n\
             failure_penalty = \"1s\"\n[outlier]\nconsecutive_failures = 2\n\
             max_ejected_percent = 100\npanic = \"route-all\"\n[dns]\nmin_ttl = \"0s\"\n",
        )]);
        let a = &set.others[0];
        assert_eq!(a.balance.mode, BalanceMode::RoundRobin);
        assert_eq!(a.balance.decay, Duration::from_secs(2));
        assert_eq!(a.balance.default_rtt, Duration::from_millis(30));
        assert_eq!(a.outlier.consecutive_failures, 2);
        assert_eq!(a.outlier.panic, PanicMode::RouteAll);
        assert_eq!(a.outlier.base_ejection, Duration::from_secs(10));
        assert_eq!(a.dns.min_ttl, Duration::ZERO);
        assert_eq!(set.default.balance.mode, BalanceMode::P2cEwma);
        assert_error(
            &[("a.toml", "[outlier]\npanic = \"all\"\n")],
            "a.toml:2:9",
            &["`outlier.panic`", "\"fail-fast\", \"route-all\""],
        );
        assert_error(
            &[("a.toml", "[dns]\nmin_ttl = \"10m\"\n")],
            "a.toml:2:11",
            &["`dns.min_ttl` (600s) is above `dns.max_ttl` (300s)"],
        );
    }

    #[test]
    fn unknown_keys_list_the_valid_keys() {
        assert_error(
            &[("a.toml", "hosts = [\"a.test\"]\nretries = 3\n")],
            "a.toml:2:1",
            &[
                "unknown key `retries`",
                "`hosts`, `listen`, `endpoints`",
                "`rate_limit`, `concurrency`",
            ],
        );
        assert_error(
            &[("a.toml", "[timeouts]\nconnect = \"1s\"\n  read = \"1s\"\n")],
            "a.toml:3:3",
            &["unknown key `timeouts.read`; valid keys here: `connect`, `attempt`, `total`, `idle`, `tunnel_idle`, `tunnel_max`"],
        );
        assert_error(
            &[("a.toml", "concurrency = { max = 1 }\n")],
            "a.toml:1:17",
            &["unknown key `concurrency.max`; valid keys here: `max_in_flight`"],
        );
    }

    #[test]
    fn type_and_syntax_errors_have_positions() {
        assert_error(
            &[("a.toml", "[retry]\nattempts = \"3\"\n")],
            "a.toml:2:12",
            &["`retry.attempts`: invalid type: string \"3\", expected an integer"],
        );
        assert_error(
            &[("a.toml", "hosts = [\"a.test\", 7]\n")],
            "a.toml:1:20",
            &["`hosts`: invalid type: integer `7`, expected a string"],
        );
        assert_error(
            &[("a.toml", "tls = yes\n")],
            "a.toml:1:7",
            &["string values must be quoted"],
        );
        assert_error(
            &[("a.toml", "tls = true\n\ntls = false\n")],
            "a.toml:3:1",
            &["duplicate key `tls`"],
        );
        assert_error(
            &[("a.toml", "[retry]\nmethods = [\"GET\"\n")],
            "a.toml:2:17",
            &["unclosed array"],
        );
    }

    #[test]
    fn every_error_of_a_file_is_reported_not_only_the_first() {
        let errors = errors(&[(
            "a.toml",
            "hosts = [\"api.test\", \"*\", \"x:0\"]\nretries = 2\n[breaker]\nmode = \"maybe\"\n\
             window = \"0s\"\nattempts = 1\n[retry]\nattempts = \"3\"\n",
        )]);
        let positions: Vec<&str> = errors
            .iter()
            .map(|e| e.split(": ").next().unwrap())
            .collect();
        assert_eq!(
            positions,
            [
                "a.toml:1:22",
                "a.toml:1:27",
                "a.toml:2:1",
                "a.toml:4:8",
                "a.toml:5:10",
                "a.toml:6:1",
                "a.toml:8:12"
            ],
            "{errors:#?}"
        );
        assert!(errors[5].contains("unknown key `breaker.attempts`"));
    }

    #[test]
    fn a_removed_entry_does_not_cause_follow_up_errors() {
        // `hosts` has the wrong type; without it, `endpoints` would look unreachable.
        assert_error(
            &[(
                "a.toml",
                "hosts = \"a.test\"\nendpoints = [\"10.0.0.1:80\"]\n",
            )],
            "a.toml:1:9",
            &["`hosts`: invalid type", "expected an array"],
        );
    }

    #[test]
    fn positions_count_characters_not_bytes() {
        assert_error(
            &[("a.toml", "# café ☕\n[retry] # é\nattempts = 0 # é\n")],
            "a.toml:3:12",
            &["`retry.attempts`"],
        );
        assert_eq!(line_col("é=1", 3), (1, 3));
        assert_eq!(line_col("a\nb", 2), (2, 1));
        assert_eq!(line_col("ab", 99), (1, 3));
    }

    #[test]
    fn all_errors_of_all_files_are_collected_in_order() {
        let errors = errors(&[
            ("b.toml", "hosts = [\"*\"]\n[retry]\nattempts = 0\n"),
            ("a.toml", "[breaker]\nmode = \"x\"\nwindow = \"y\"\n"),
            ("default.toml", "bogus = 1\n"),
            ("c.toml", "hosts = [\"c.test\"]\n"),
        ]);
        let positions: Vec<&str> = errors
            .iter()
            .map(|e| e.split(": ").next().unwrap())
            .collect();
        assert_eq!(
            positions,
            [
                "a.toml:2:8",
                "a.toml:3:10",
                "b.toml:1:10",
                "b.toml:3:12",
                "default.toml:1:1"
            ],
            "{errors:#?}"
        );
    }

    #[test]
    fn errors_display_one_per_line() {
        let dir = dir_with(&[("a.toml", "[retry]\nattempts = 0\nbackoff_base = \"x\"\n")]);
        let errors = load_dir(dir.path()).unwrap_err();
        let text = errors.to_string();
        assert_eq!(text.lines().count(), 2);
        let file = dir.path().join("a.toml");
        assert!(text.starts_with(&format!("{}:2:12: `retry.attempts`", file.display())));
    }

    #[test]
    fn io_errors_are_policy_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let errors = load_dir(&missing).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!((errors[0].line, errors[0].col), (0, 0));
        assert_eq!(errors[0].file, missing);
        assert!(errors[0].message.starts_with("cannot read"));
    }

    #[test]
    fn only_visible_toml_files_are_policies() {
        let dir = dir_with(&[
            ("a.toml", "hosts = [\"a.test\"]\n"),
            (".hidden.toml", "garbage ="),
            ("README.md", "garbage ="),
            ("b.toml.bak", "garbage ="),
        ]);
        fs::create_dir(dir.path().join("sub.toml")).unwrap();
        fs::create_dir(dir.path().join("..data")).unwrap();
        fs::write(dir.path().join("..data/x.toml"), "garbage =").unwrap();
        let set = load_dir(dir.path()).unwrap();
        let names: Vec<&str> = set.others.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a"]);
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_files_are_followed_like_a_configmap_volume() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("..2024_01_01_00_00_00.1");
        fs::create_dir(&data).unwrap();
        fs::write(data.join("api.toml"), "hosts = [\"api.test\"]\n").unwrap();
        fs::write(data.join("default.toml"), "[retry]\nattempts = 1\n").unwrap();
        symlink("..2024_01_01_00_00_00.1", dir.path().join("..data")).unwrap();
        symlink("..data/api.toml", dir.path().join("api.toml")).unwrap();
        symlink("..data/default.toml", dir.path().join("default.toml")).unwrap();
        let set = load_dir(dir.path()).unwrap();
        assert_eq!(set.default.retry.attempts, 1);
        assert_eq!(set.lookup("api.test", 80).name, "api");
        assert_eq!(set.lookup("api.test", 80).retry.attempts, 1);
    }

    #[test]
    fn others_are_ordered_by_name() {
        let set = load(&[
            ("zeta.toml", "hosts = [\"z.test\"]\n"),
            ("alpha.toml", "hosts = [\"a.test\"]\n"),
            ("mid.toml", "hosts = [\"m.test\"]\n"),
        ]);
        let names: Vec<&str> = set.all().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["default", "alpha", "mid", "zeta"]);
    }

    #[test]
    fn repository_policies_load_cleanly() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let set = load_dir(&dir).unwrap_or_else(|e| panic!("policies/ has errors:\n{e}"));
        // default.toml documents the built-in values: it must not change them.
        assert_eq!(*set.default, builtin(&dir));

        let payments = set.get("payments").expect("payments.toml");
        assert_eq!(set.lookup("api.payments.internal", 443).name, "payments");
        assert_eq!(set.lookup("10.0.0.7", 8080).name, "payments");
        assert!(payments.retry.on.contains(&RetryOn::Timeout));
        assert!(payments.rate_limit.rps > 0);

        // `fusebox run` with the bundled policies binds only its own two listeners.
        assert_eq!(set.routes().count(), 0);
    }

    #[test]
    fn envoy_example_loads_as_one_route_listener() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/envoy");
        let set = load_dir(&dir).unwrap_or_else(|e| panic!("examples/envoy has errors:\n{e}"));
        let envoy = set.get("envoy").expect("envoy.toml");
        assert_eq!(envoy.listen, Some("127.0.0.1:10000".parse().unwrap()));
        assert!(envoy.tls);
        assert_eq!(
            envoy.endpoints,
            [Endpoint {
                host: "www.envoyproxy.io".into(),
                port: 443
            }]
        );
        assert_eq!(envoy.host_rewrite.as_deref(), Some("www.envoyproxy.io"));
        assert_eq!(envoy.sni.as_deref(), Some("www.envoyproxy.io"));
        assert_eq!(set.routes().count(), 1);
    }

    #[test]
    fn parsers_accept_documented_forms() {
        assert_eq!(
            host_pattern("[::1]").unwrap(),
            HostPattern::Host { host: "::1".into() }
        );
        assert_eq!(
            host_pattern("[FD00::1]:65535").unwrap(),
            HostPattern::HostPort {
                host: "fd00::1".into(),
                port: 65535
            }
        );
        assert!(host_pattern("api.test:+80").is_err());
        assert_eq!(method("patch").unwrap(), "PATCH");
        assert_eq!(positive(" 1m ").unwrap(), Duration::from_secs(60));
        assert_eq!(int::<u32>(5, 0, U32_MAX), Ok(5));
    }

    #[test]
    fn host_names_have_one_spelling() {
        let host = |h: &str| HostPattern::Host { host: h.into() };
        assert_eq!(
            host_pattern("API.Example.com.").unwrap(),
            host("api.example.com")
        );
        assert_eq!(
            host_pattern("Bücher.example").unwrap(),
            host("xn--bcher-kva.example")
        );
        assert_eq!(
            host_pattern("*.bücher.example").unwrap(),
            HostPattern::Wildcard {
                suffix: ".xn--bcher-kva.example".into()
            }
        );
        assert_eq!(
            host_pattern("bücher.example.:8443").unwrap(),
            HostPattern::HostPort {
                host: "xn--bcher-kva.example".into(),
                port: 8443
            }
        );
        for bad in [
            "example..com",
            "a..",
            "bad name.example",
            "1.2.3.4.5",
            "[fe80::1%lo]:80",
        ] {
            assert!(host_pattern(bad).is_err(), "{bad}");
        }
        // An address is matched in its canonical form, however the policy spells it.
        for spelled in ["2130706433", "0x7F000001", "127.1", "127.0.0.1."] {
            assert_eq!(
                host_pattern(spelled).unwrap(),
                host("127.0.0.1"),
                "{spelled}"
            );
        }
        assert_eq!(
            host_pattern("[::ffff:10.0.0.1]:80").unwrap(),
            HostPattern::HostPort {
                host: "10.0.0.1".into(),
                port: 80
            }
        );
    }
}
