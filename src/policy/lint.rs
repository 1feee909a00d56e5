//! Lints: combinations of valid values that are dangerous together (docs/ARCHITECTURE.md §3),
//! reported by `fusebox check` as warnings. Every field is valid on its own by now (the loader
//! rejected the rest); these are the mistakes that only show under load or during an outage.
//!
//! A warning is reported where the dangerous value is *set*: a policy is only blamed for a
//! combination when its own file sets one of the keys involved. When all of them are inherited,
//! the policy has exactly `default.toml`'s values for them, so the one warning on
//! `default.toml` covers it (instead of one more per file that inherits it).
//!
//! The validated [`Policy`] keeps no spans, so the position of a key is found by parsing the
//! file's text again (best effort: `1:1` when the file cannot be read or parsed). Positions
//! point at the value, as the loader's errors do, and at the offending entry of an array.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::keys::Keys;
use super::{BreakerMode, HostPattern, LimitMode, Policy, PolicySet, Retry, RetryOn};

mod routes;

/// Every warning code, stable (CI pipelines may filter on them).
pub const CODES: [&str; 16] = [
    ATTEMPT_GE_TOTAL,
    CONNECT_GE_TOTAL,
    NON_IDEMPOTENT_RETRY,
    MIN_CALLS_UNREACHABLE,
    PROBES_GT_MIN_CALLS,
    OPEN_MAX_LT_OPEN_BASE,
    DUPLICATE_HOST,
    LISTEN_PORT_REUSED,
    FLEET_WITHOUT_REDIS,
    FLEET_FALLBACK_WHOLE,
    HEDGE_WITHOUT_ATTEMPTS,
    MAX_IN_FLIGHT_IGNORED,
    CLIENT_CERT_EXPIRING,
    CLIENT_KEY_READABLE,
    ROUTE_SHADOWED,
    ROUTE_NON_IDEMPOTENT_RETRY,
];

/// `timeouts.attempt >= timeouts.total` with retries on: a retry can never happen.
pub const ATTEMPT_GE_TOTAL: &str = "attempt-ge-total";
/// `timeouts.connect >= timeouts.total`: a hanging connect uses up the whole deadline.
pub const CONNECT_GE_TOTAL: &str = "connect-ge-total";
/// `retry.methods` lists POST, PATCH or CONNECT with retries on: may execute a request twice.
pub const NON_IDEMPOTENT_RETRY: &str = "non-idempotent-retry";
/// The rate limit admits fewer calls per `breaker.window` than `breaker.min_calls`.
pub const MIN_CALLS_UNREACHABLE: &str = "min-calls-unreachable";
/// `breaker.half_open_probes > breaker.min_calls`.
pub const PROBES_GT_MIN_CALLS: &str = "probes-gt-min-calls";
/// `breaker.open_max < breaker.open_base`.
pub const OPEN_MAX_LT_OPEN_BASE: &str = "open-max-lt-open-base";
/// The same `hosts` pattern in two files: the first file by name wins.
pub const DUPLICATE_HOST: &str = "duplicate-host";
/// Two route listeners on the same port.
pub const LISTEN_PORT_REUSED: &str = "listen-port-reused";

/// `rate_limit.scope = "fleet"` while `fusebox run` gets no `--redis`: each instance applies
/// only the fallback limit ([`fleet_without_redis`], checked by `fusebox check`).
pub const FLEET_WITHOUT_REDIS: &str = "fleet-without-redis";
/// `scope = "fleet"` with neither `fleet_fallback_rps` nor `fleet_size_hint`: while Redis fails,
/// every instance allows the whole fleet's `rps`.
pub const FLEET_FALLBACK_WHOLE: &str = "fleet-fallback-whole";

/// `hedge.enabled` with `retry.attempts = 1`: hedges count against the attempts, so none is
/// ever sent.
pub const HEDGE_WITHOUT_ATTEMPTS: &str = "hedge-without-attempts";
/// `concurrency.max_in_flight` set with an adaptive `concurrency.mode`, which ignores it.
pub const MAX_IN_FLIGHT_IGNORED: &str = "max-in-flight-ignored";

/// `client_cert` expires within [`EXPIRING_WITHIN`].
pub const CLIENT_CERT_EXPIRING: &str = "client-cert-expiring";
/// `client_key`'s file can be read by its group or by others.
pub const CLIENT_KEY_READABLE: &str = "client-key-readable";

/// A `[[route]]` that an earlier route of the same policy takes every request of, so it never
/// matches.
pub const ROUTE_SHADOWED: &str = "route-shadowed";
/// A route's own `[route.retry]` retries a non-idempotent method the route can match: may
/// execute a request twice.
pub const ROUTE_NON_IDEMPOTENT_RETRY: &str = "route-non-idempotent-retry";

/// How soon a client certificate's expiry is worth a warning.
const EXPIRING_WITHIN: std::time::Duration = std::time::Duration::from_secs(14 * 86_400);

/// The permission bits of `path` when its group or others may read it (Unix only).
fn group_or_world_readable(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o044 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Methods that are safe to send twice (RFC 9110 §9.2.2); any other (POST, PATCH, CONNECT, an
/// extension method) must not be retried without an `Idempotency-Key`.
const IDEMPOTENT: [&str; 6] = ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"];

/// One lint finding. `line` and `col` are 1-based; displays as
/// `file:line:col: warning[code]: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    /// One of [`CODES`].
    pub code: &'static str,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: warning[{}]: {}",
            self.file.display(),
            self.line,
            self.col,
            self.code,
            self.message
        )
    }
}

/// The warnings for a loaded policy set, sorted by file, line and column. Reads the policy
/// files again only to find where keys are.
pub fn lint(set: &PolicySet) -> Vec<Warning> {
    lint_with(set, |path| match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        // An absent default.toml means the built-in defaults: a file that sets nothing.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Some(String::new()),
        Err(_) => None,
    })
}

/// [`lint`] with the file texts supplied by `read` (`None`: unknown text, positions `1:1`).
pub fn lint_with(set: &PolicySet, read: impl Fn(&Path) -> Option<String>) -> Vec<Warning> {
    let files: Vec<(&Policy, Keys)> = set
        .all()
        .map(|policy| (policy.as_ref(), Keys::new(read(&policy.file))))
        .collect();
    let mut warnings = Vec::new();
    let default_keys = &files[0].1;
    for (index, (policy, keys)) in files.iter().enumerate() {
        let mut cx = Cx {
            policy,
            keys,
            default_keys,
            is_default: index == 0,
            warnings: &mut warnings,
        };
        cx.timeouts();
        cx.retry();
        cx.breaker();
        cx.fleet();
        cx.overload();
        cx.client_identity(std::time::SystemTime::now());
        cx.routes();
    }
    // `set.all()` is default first, then by name: the order in which the matcher and the
    // listeners see them, so "earlier" below is "wins".
    duplicate_hosts(&files[1..], &mut warnings);
    listen_ports(&files[1..], &mut warnings);
    warnings
        .sort_by(|a, b| (&a.file, a.line, a.col, a.code).cmp(&(&b.file, b.line, b.col, b.code)));
    warnings.dedup();
    warnings
}

/// [`FLEET_WITHOUT_REDIS`] for every policy that sets `scope = "fleet"` (or inherits it), when
/// `fusebox run` will get no `--redis`.
pub fn fleet_without_redis(set: &PolicySet) -> Vec<Warning> {
    set.all()
        .filter(|policy| policy.rate_limit.fleet && policy.rate_limit.rps > 0)
        .map(|policy| {
            let keys = Keys::new(std::fs::read_to_string(&policy.file).ok());
            let (line, col) = keys.at("rate_limit.scope", None);
            Warning {
                file: policy.file.clone(),
                line,
                col,
                code: FLEET_WITHOUT_REDIS,
                message: format!(
                    "`rate_limit.scope` = \"fleet\" but no --redis is configured: each instance \
                     applies only the fallback limit of {} rps",
                    policy.rate_limit.fallback_rps()
                ),
            }
        })
        .collect()
}

/// Lints of one policy.
struct Cx<'a> {
    policy: &'a Policy,
    keys: &'a Keys,
    /// default.toml's, to say where an inherited value comes from.
    default_keys: &'a Keys,
    is_default: bool,
    warnings: &'a mut Vec<Warning>,
}

impl Cx<'_> {
    /// Reports `message` at the first of `involved` (most telling first) that this file sets;
    /// nothing if it sets none of them (the values are `default.toml`'s, warned about there).
    fn warn(&mut self, code: &'static str, involved: &[&str], message: String) {
        let Some(key) = involved.iter().find(|key| self.keys.sets(key)) else {
            return;
        };
        self.warn_at(code, key, None, message);
    }

    fn warn_at(&mut self, code: &'static str, key: &str, item: Option<usize>, message: String) {
        let (line, col) = self.keys.at(key, item);
        self.warnings.push(Warning {
            file: self.policy.file.clone(),
            line,
            col,
            code,
            message,
        });
    }

    /// `` `key` = value``, saying where an inherited value comes from.
    fn show(&self, key: &str, value: impl fmt::Display) -> String {
        let from = if self.keys.sets(key) {
            ""
        } else if !self.is_default && self.default_keys.sets(key) {
            " (from default.toml)"
        } else {
            " (built-in default)"
        };
        format!("`{key}` = {value}{from}")
    }

    fn timeouts(&mut self) {
        let t = self.policy.timeouts;
        let attempts = self.policy.retry.attempts;
        if attempts > 1 && t.attempt >= t.total {
            let message = format!(
                "{} is not shorter than {}: the first try can use up the whole request \
                 deadline, so the retries allowed by {} can never happen; set \
                 `timeouts.attempt` well below `timeouts.total` (about total / attempts)",
                self.show("timeouts.attempt", dur(t.attempt)),
                self.show("timeouts.total", dur(t.total)),
                self.show("retry.attempts", attempts),
            );
            self.warn(
                ATTEMPT_GE_TOTAL,
                &["timeouts.attempt", "timeouts.total", "retry.attempts"],
                message,
            );
        }
        if t.connect >= t.total {
            let message = format!(
                "{} is not shorter than {}: an upstream that never answers the connect uses \
                 up the whole request deadline, so the request fails as a `timeout` with no \
                 time left to retry; set `timeouts.connect` well below `timeouts.total`",
                self.show("timeouts.connect", dur(t.connect)),
                self.show("timeouts.total", dur(t.total)),
            );
            self.warn(
                CONNECT_GE_TOTAL,
                &["timeouts.connect", "timeouts.total"],
                message,
            );
        }
    }

    fn retry(&mut self) {
        let r = &self.policy.retry;
        if r.attempts <= 1 {
            return;
        }
        let risky = resent_after_sending(r);
        let bad = non_idempotent_methods(r, |_| true);
        let Some(&(first, _)) = bad.first() else {
            return;
        };
        if risky.is_empty() {
            return;
        }
        let names = bad.iter().map(|(_, m)| *m).collect::<Vec<_>>().join(", ");
        let message = format!(
            "{} lists {names} (not idempotent) while {} and `retry.on` includes \"{}\": a \
             {names} request that reached the upstream but lost its answer is sent again, and \
             may be executed twice (a double charge, a duplicate order); remove {names} from \
             `retry.methods` (requests with an `Idempotency-Key` header are retried whatever \
             their method), or keep only \"connect-failure\" in `retry.on`",
            self.show("retry.methods", format_args!("[{}]", r.methods.join(", "))),
            self.show("retry.attempts", r.attempts),
            risky.join("\", \""),
        );
        if self.keys.sets("retry.methods") {
            self.warn_at(NON_IDEMPOTENT_RETRY, "retry.methods", Some(first), message);
        } else {
            self.warn(
                NON_IDEMPOTENT_RETRY,
                &["retry.attempts", "retry.on"],
                message,
            );
        }
    }

    /// The §18 mechanisms set so that they cannot act.
    /// The client certificate expires soon; its key file is readable by others.
    fn client_identity(&mut self, now: std::time::SystemTime) {
        if let Some(cert) = &self.policy.client_cert {
            if cert.not_after <= now + EXPIRING_WITHIN {
                let left = cert.not_after.duration_since(now).unwrap_or_default();
                let message = format!(
                    "`client_cert` \"{}\" expires on {} ({} days from now): renew it before \
                     upstreams refuse the handshake",
                    cert.path.display(),
                    super::client_cert::date(cert.not_after),
                    left.as_secs() / 86_400
                );
                self.warn(CLIENT_CERT_EXPIRING, &["client_cert"], message);
            }
        }
        if let Some(key) = &self.policy.client_key {
            if let Some(mode) = group_or_world_readable(&key.path) {
                let message = format!(
                    "`client_key` \"{}\" is readable by others (mode {mode:o}): a private key \
                     should be readable by fusebox's user alone (chmod 600)",
                    key.path.display()
                );
                self.warn(CLIENT_KEY_READABLE, &["client_key"], message);
            }
        }
    }

    fn overload(&mut self) {
        let (hedge, attempts) = (&self.policy.hedge, self.policy.retry.attempts);
        if hedge.enabled && attempts < 2 {
            let message = format!(
                "{} while {}: a hedge is a try, and copies and retries together never exceed \
                 `retry.attempts`, so no hedge is ever sent; set `retry.attempts` to at least \
                 `hedge.max_attempts` ({})",
                self.show("hedge.enabled", true),
                self.show("retry.attempts", attempts),
                hedge.max_attempts,
            );
            self.warn(
                HEDGE_WITHOUT_ATTEMPTS,
                &["hedge.enabled", "retry.attempts"],
                message,
            );
        }
        let c = &self.policy.concurrency;
        if c.is_adaptive() && c.max_in_flight > 0 {
            let message = format!(
                "{} is ignored while {}: the limit adapts between `concurrency.min_limit` and \
                 `concurrency.max_limit` ({}); bound it with `max_limit`",
                self.show("concurrency.max_in_flight", c.max_in_flight),
                self.show("concurrency.mode", format_args!("\"{}\"", c.mode.label())),
                c.max_limit,
            );
            self.warn(
                MAX_IN_FLIGHT_IGNORED,
                &["concurrency.max_in_flight", "concurrency.mode"],
                message,
            );
        }
    }

    fn fleet(&mut self) {
        let limit = &self.policy.rate_limit;
        if limit.fleet
            && limit.rps > 0
            && limit.fleet_fallback_rps.is_none()
            && limit.fleet_size_hint <= 1
        {
            let message = format!(
                "{} with neither `rate_limit.fleet_fallback_rps` nor `rate_limit.fleet_size_hint`: \
                 while Redis fails, every instance allows the whole fleet's {} rps",
                self.show("rate_limit.scope", "\"fleet\""),
                limit.rps
            );
            self.warn(
                FLEET_FALLBACK_WHOLE,
                &["rate_limit.scope", "rate_limit.rps"],
                message,
            );
        }
    }

    fn breaker(&mut self) {
        let b = &self.policy.breaker;
        if b.mode == BreakerMode::Off {
            return;
        }
        let limit = self.policy.rate_limit;
        if limit.rps > 0 && limit.mode == LimitMode::Enforce && b.min_calls > 0 {
            // The limiter holds rps + burst tokens and refills rps per second (see
            // pipeline::limiter), so one destination can make at most this many calls per
            // window.
            let most = f64::from(limit.rps) * b.window.as_secs_f64()
                + f64::from(limit.rps)
                + f64::from(limit.burst);
            if f64::from(b.min_calls) > most {
                let most = most.floor();
                let message = format!(
                    "{} can never be reached: with {} and {}, one destination makes at most \
                     {most} calls per {}, so the `failure_rate` and `slow_call_rate` rules can \
                     never trip the breaker (only `consecutive_failures` can); lower \
                     `breaker.min_calls` to at most {most} or lengthen `breaker.window`",
                    self.show("breaker.min_calls", b.min_calls),
                    self.show("rate_limit.rps", limit.rps),
                    self.show("rate_limit.burst", limit.burst),
                    self.show("breaker.window", dur(b.window)),
                );
                self.warn(
                    MIN_CALLS_UNREACHABLE,
                    &[
                        "breaker.min_calls",
                        "rate_limit.rps",
                        "rate_limit.burst",
                        "breaker.window",
                        "rate_limit.mode",
                        "breaker.mode",
                    ],
                    message,
                );
            }
        }
        if b.min_calls > 0 && b.half_open_probes > b.min_calls {
            let message = format!(
                "{} is more than {}: after a trip, half-open sends more trial calls to the \
                 struggling upstream than the breaker needs to trip in the first place, and \
                 every one of them must succeed before it closes, so it flaps back open; set \
                 `breaker.half_open_probes` to at most {}",
                self.show("breaker.half_open_probes", b.half_open_probes),
                self.show("breaker.min_calls", b.min_calls),
                b.min_calls,
            );
            self.warn(
                PROBES_GT_MIN_CALLS,
                &[
                    "breaker.half_open_probes",
                    "breaker.min_calls",
                    "breaker.mode",
                ],
                message,
            );
        }
        if b.open_max < b.open_base {
            let message = format!(
                "{} is shorter than {}: open periods are capped at `open_max`, so `open_base` \
                 is ignored and an upstream that keeps failing gets probed every {} with no \
                 back-off; set `breaker.open_max` to at least `breaker.open_base`",
                self.show("breaker.open_max", dur(b.open_max)),
                self.show("breaker.open_base", dur(b.open_base)),
                dur(b.open_max),
            );
            self.warn(
                OPEN_MAX_LT_OPEN_BASE,
                &["breaker.open_max", "breaker.open_base", "breaker.mode"],
                message,
            );
        }
    }
}

/// The entries of `retry.methods` that are not idempotent and that `takes` lets through, with
/// their positions in the list.
fn non_idempotent_methods(retry: &Retry, takes: impl Fn(&str) -> bool) -> Vec<(usize, &str)> {
    let methods = retry.methods.iter().map(String::as_str).enumerate();
    methods
        .filter(|&(_, m)| !IDEMPOTENT.contains(&m) && takes(m))
        .collect()
}

/// The `retry.on` conditions under which a request that reached the upstream is sent again.
/// A connect failure means the request was never sent: retrying it is always safe.
fn resent_after_sending(retry: &Retry) -> Vec<&'static str> {
    retry
        .on
        .iter()
        .filter(|on| **on != RetryOn::ConnectFailure)
        .map(|on| on.label())
        .collect()
}

fn dur(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The same pattern in two files: the first file by name wins it (see [`super::Matcher`]), so
/// the later entry is dead. Reported on the later file, naming both.
fn duplicate_hosts(files: &[(&Policy, Keys)], warnings: &mut Vec<Warning>) {
    let mut first: HashMap<&HostPattern, (&Policy, &Keys, usize)> = HashMap::new();
    for (policy, keys) in files {
        for (i, pattern) in policy.hosts.iter().enumerate() {
            let Some(&(winner, winner_keys, winner_i)) = first.get(pattern) else {
                first.insert(pattern, (policy, keys, i));
                continue;
            };
            if std::ptr::eq(winner, *policy) {
                continue; // listed twice in one file: harmless
            }
            let (wl, wc) = winner_keys.at("hosts", Some(winner_i));
            let (line, col) = keys.at("hosts", Some(i));
            warnings.push(Warning {
                file: policy.file.clone(),
                line,
                col,
                code: DUPLICATE_HOST,
                message: format!(
                    "host \"{}\" is also in {}:{wl}:{wc}; files are matched in name order, so \
                     {} (policy `{}`) gets this destination and this entry in {} never \
                     applies; keep it in one of the two files",
                    pattern_text(pattern),
                    file_name(&winner.file),
                    file_name(&winner.file),
                    winner.name,
                    file_name(&policy.file),
                ),
            });
        }
    }
}

fn pattern_text(pattern: &HostPattern) -> String {
    match pattern {
        HostPattern::HostPort { host, port } if host.contains(':') => format!("[{host}]:{port}"),
        HostPattern::HostPort { host, port } => format!("{host}:{port}"),
        HostPattern::Host { host } => host.clone(),
        HostPattern::Wildcard { suffix } => format!("*{suffix}"),
    }
}

/// Two route listeners on one port at different addresses that do not collide (colliding
/// ones are errors: [`super::listeners`]). Reported on the later file, naming the earlier one.
fn listen_ports(files: &[(&Policy, Keys)], warnings: &mut Vec<Warning>) {
    let mut first: HashMap<u16, (&Policy, &Keys)> = HashMap::new();
    for (policy, keys) in files {
        let Some(addr) = policy.listen.filter(|a| a.port() != 0) else {
            continue;
        };
        let Some(&(winner, winner_keys)) = first.get(&addr.port()) else {
            first.insert(addr.port(), (policy, keys));
            continue;
        };
        let Some(other) = winner.listen else { continue };
        if super::listeners::collide(addr, other) {
            continue;
        }
        let (wl, wc) = winner_keys.at("listen", None);
        let (line, col) = keys.at("listen", None);
        warnings.push(Warning {
            file: policy.file.clone(),
            line,
            col,
            code: LISTEN_PORT_REUSED,
            message: format!(
                "`listen` = \"{addr}\" uses port {} like `listen` = \"{other}\" in {}:{wl}:{wc} \
                 (policy `{}`): different addresses, which works, but an app that picks the wrong \
                 address silently gets the other upstream's policy; give each route listener a \
                 port of its own",
                addr.port(),
                file_name(&winner.file),
                winner.name,
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load_dir;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    /// The warnings as `file:line:col: code`, file names relative to the directory, and the
    /// full lines (for messages).
    fn lints(files: &[(&str, &str)]) -> (Vec<String>, Vec<String>) {
        let dir = dir_with(files);
        let set = load_dir(dir.path()).unwrap_or_else(|e| panic!("unexpected errors:\n{e}"));
        let warnings = lint(&set);
        let short = warnings
            .iter()
            .map(|w| {
                let name = w.file.file_name().unwrap().to_string_lossy();
                format!("{name}:{}:{}: {}", w.line, w.col, w.code)
            })
            .collect();
        let full = warnings.iter().map(ToString::to_string).collect();
        (short, full)
    }

    #[track_caller]
    pub(super) fn assert_lints(files: &[(&str, &str)], expected: &[&str]) -> Vec<String> {
        let (short, full) = lints(files);
        assert_eq!(short, expected, "{full:#?}");
        full
    }

    #[test]
    fn repository_policies_lint_clean() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let set = load_dir(&dir).unwrap();
        let warnings = lint(&set);
        assert!(warnings.is_empty(), "{warnings:#?}");
    }

    #[test]
    fn built_in_defaults_and_empty_files_lint_clean() {
        assert_lints(&[], &[]);
        assert_lints(
            &[("default.toml", ""), ("a.toml", "hosts = [\"a\"]\n")],
            &[],
        );
    }

    #[test]
    fn a_client_certificate_soon_expired_and_a_readable_key_are_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let day = std::time::Duration::from_secs(86_400);
        let pair = |days: u32| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["c.test".to_owned()]).unwrap();
            params.not_after = (std::time::SystemTime::now() + day * days).into();
            (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
        };
        let policy = "hosts = [\"a\"]\nclient_cert = \"c.pem\"\nclient_key = \"k.pem\"\n";
        let (cert, key) = pair(3);
        let dir = dir_with(&[("c.pem", &cert), ("k.pem", &key), ("a.toml", policy)]);
        let key_path = dir.path().join("k.pem");
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let codes = |dir: &Path| -> Vec<&'static str> {
            let set = load_dir(dir).unwrap();
            lint(&set).iter().map(|w| w.code).collect()
        };
        assert_eq!(
            codes(dir.path()),
            [CLIENT_CERT_EXPIRING, CLIENT_KEY_READABLE]
        );
        let (cert, key) = pair(30);
        std::fs::write(dir.path().join("c.pem"), cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(codes(dir.path()).is_empty());
    }

    #[test]
    fn codes_are_distinct() {
        let mut codes = CODES.to_vec();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), CODES.len());
    }

    #[test]
    fn attempt_ge_total() {
        let full = assert_lints(
            &[(
                "a.toml",
                "hosts = [\"a\"]\n[timeouts]\nattempt = \"5s\"\ntotal = \"5s\"\n",
            )],
            &["a.toml:3:11: attempt-ge-total"],
        );
        assert!(
            full[0].contains("`timeouts.attempt` = 5s is not shorter"),
            "{full:?}"
        );
        assert!(
            full[0].contains("`retry.attempts` = 3 (built-in default)"),
            "{full:?}"
        );
        // Without retries the attempt timeout only caps the single try: harmless.
        assert_lints(
            &[(
                "a.toml",
                "hosts = [\"a\"]\n[timeouts]\nattempt = \"5s\"\ntotal = \"5s\"\n\
                 [retry]\nattempts = 1\n",
            )],
            &[],
        );
        // Only `total` set: reported there.
        assert_lints(
            &[("a.toml", "hosts = [\"a\"]\ntimeouts.total = \"1s\"\n")],
            &[
                "a.toml:2:18: attempt-ge-total",
                "a.toml:2:18: connect-ge-total",
            ],
        );
    }

    #[test]
    fn connect_ge_total() {
        let full = assert_lints(
            &[(
                "a.toml",
                "hosts = [\"a\"]\n[timeouts]\nconnect = \"3s\"\nattempt = \"1s\"\ntotal = \"3s\"\n",
            )],
            &["a.toml:3:11: connect-ge-total"],
        );
        assert!(full[0].contains("`timeouts.connect` = 3s"), "{full:?}");
    }

    #[test]
    fn non_idempotent_retry_points_at_the_method() {
        let full = assert_lints(
            &[(
                "a.toml",
                "hosts = [\"a\"]\n[retry]\nmethods = [\"GET\", \"post\", \"PATCH\"]\n",
            )],
            &["a.toml:3:19: non-idempotent-retry"],
        );
        assert!(full[0].contains("lists POST, PATCH"), "{full:?}");
        assert!(full[0].contains("Idempotency-Key"), "{full:?}");
        // An extension method is not idempotent either (RFC 9110 §9.2.2), as for routes.
        let full = assert_lints(
            &[(
                "a.toml",
                "hosts = [\"a\"]\n[retry]\nmethods = [\"GET\", \"LOCK\"]\n",
            )],
            &["a.toml:3:19: non-idempotent-retry"],
        );
        assert!(full[0].contains("lists LOCK"), "{full:?}");
        // No retries, or only connect failures (the request was never sent): fine.
        assert_lints(
            &[(
                "a.toml",
                "hosts = [\"a\"]\n[retry]\nattempts = 1\nmethods = [\"POST\"]\n",
            )],
            &[],
        );
        assert_lints(
            &[(
                "a.toml",
                "hosts = [\"a\"]\n[retry]\non = [\"connect-failure\"]\nmethods = [\"POST\"]\n",
            )],
            &[],
        );
        // Methods from default.toml with attempts set here: blamed on both files, each at
        // what it sets.
        assert_lints(
            &[
                (
                    "default.toml",
                    "[retry]\nattempts = 1\nmethods = [\"CONNECT\"]\n",
                ),
                ("a.toml", "hosts = [\"a\"]\n[retry]\nattempts = 2\n"),
            ],
            &["a.toml:3:12: non-idempotent-retry"],
        );
    }

    #[test]
    fn min_calls_unreachable() {
        // 1 rps over 10s with no burst: at most 11 calls per window.
        let full = assert_lints(
            &[("a.toml", "hosts = [\"a\"]\n[rate_limit]\nrps = 1\n")],
            &["a.toml:3:7: min-calls-unreachable"],
        );
        assert!(full[0].contains("at most 11 calls per"), "{full:?}");
        assert!(
            full[0].contains("`breaker.min_calls` = 20 (built-in default)"),
            "{full:?}"
        );
        // Reachable with a burst; shadow limits and a disabled breaker never prevent it.
        assert_lints(
            &[(
                "a.toml",
                "hosts = [\"a\"]\nrate_limit = { rps = 1, burst = 9 }\n",
            )],
            &[],
        );
        assert_lints(
            &[(
                "a.toml",
                "hosts = [\"a\"]\nrate_limit = { rps = 1, mode = \"shadow\" }\n",
            )],
            &[],
        );
        assert_lints(
            &[(
                "a.toml",
                "hosts = [\"a\"]\nrate_limit.rps = 1\nbreaker.mode = \"off\"\n",
            )],
            &[],
        );
    }

    #[test]
    fn probes_gt_min_calls() {
        assert_lints(
            &[(
                "a.toml",
                "hosts = [\"a\"]\n[breaker]\nmin_calls = 2\nhalf_open_probes = 3\n",
            )],
            &["a.toml:4:20: probes-gt-min-calls"],
        );
        assert_lints(
            &[(
                "a.toml",
                "hosts = [\"a\"]\n[breaker]\nmin_calls = 3\nhalf_open_probes = 3\n",
            )],
            &[],
        );
    }

    #[test]
    fn open_max_lt_open_base() {
        let full = assert_lints(
            &[("a.toml", "hosts = [\"a\"]\n[breaker]\nopen_base = \"2m\"\n")],
            &["a.toml:3:13: open-max-lt-open-base"],
        );
        assert!(
            full[0].contains(
                "`breaker.open_max` = 1m (built-in default) is shorter than \
                              `breaker.open_base` = 2m:"
            ),
            "{full:?}"
        );
        // Inherited from default.toml: said so.
        let full = assert_lints(
            &[
                ("default.toml", "[breaker]\nopen_max = \"10s\"\n"),
                ("a.toml", "hosts = [\"a\"]\n[breaker]\nopen_base = \"2m\"\n"),
            ],
            &["a.toml:3:13: open-max-lt-open-base"],
        );
        assert!(
            full[0].contains("`breaker.open_max` = 10s (from default.toml)"),
            "{full:?}"
        );
    }

    #[test]
    fn a_default_inherited_by_many_files_is_reported_once_on_default_toml() {
        let files = [
            (
                "default.toml",
                "# defaults\n[breaker]\nopen_base = \"2m\"\n",
            ),
            ("a.toml", "hosts = [\"a\"]\n"),
            ("b.toml", "hosts = [\"b\"]\n[breaker]\nmin_calls = 5\n"),
            ("c.toml", "hosts = [\"c\"]\n[breaker]\nopen_max = \"1s\"\n"),
        ];
        assert_lints(
            &files,
            &[
                "c.toml:3:12: open-max-lt-open-base",
                "default.toml:3:13: open-max-lt-open-base",
            ],
        );
    }

    #[test]
    fn duplicate_host_names_both_files() {
        let full = assert_lints(
            &[
                ("a.toml", "hosts = [\"x.test\", \"*.Y.test\"]\n"),
                (
                    "b.toml",
                    "# b\nhosts = [\"z.test\", \"*.y.test\", \"x.test\"]\n",
                ),
            ],
            &["b.toml:2:20: duplicate-host", "b.toml:2:32: duplicate-host"],
        );
        assert!(
            full[0].contains("\"*.y.test\" is also in a.toml:1:20"),
            "{full:?}"
        );
        assert!(
            full[0].contains("this entry in b.toml never applies"),
            "{full:?}"
        );
        // A name and a name:port are different patterns with a defined precedence.
        assert_lints(
            &[
                ("a.toml", "hosts = [\"x.test\"]\n"),
                ("b.toml", "hosts = [\"x.test:8080\"]\n"),
            ],
            &[],
        );
    }

    #[test]
    fn listen_port_reused() {
        let route = |listen: &str| format!("listen = \"{listen}\"\nendpoints = [\"u:1\"]\n");
        let full = assert_lints(
            &[
                ("a.toml", &route("127.0.0.1:10000")),
                ("b.toml", &route("127.0.0.2:10000")),
                ("c.toml", &route("127.0.0.1:10001")),
                // Colliding addresses are errors of `listeners`, not warnings.
                ("d.toml", &format!("# d\n{}", route("0.0.0.0:10001"))),
            ],
            &["b.toml:1:10: listen-port-reused"],
        );
        assert!(
            full[0].contains("different addresses, which works"),
            "{full:?}"
        );
        assert!(full[0].contains("in a.toml:1:10 (policy `a`)"), "{full:?}");
    }

    #[test]
    fn overload_settings_that_cannot_act() {
        let warnings = assert_lints(
            &[(
                "a.toml",
                "hosts = [\"a.test\"]\n[retry]\nattempts = 1\n[hedge]\nenabled = true\n\
                 [concurrency]\nmode = \"aimd\"\nmax_in_flight = 50\n",
            )],
            &[
                "a.toml:5:11: hedge-without-attempts",
                "a.toml:8:17: max-in-flight-ignored",
            ],
        );
        assert!(
            warnings[0].contains("no hedge is ever sent"),
            "{warnings:?}"
        );
    }

    #[test]
    fn unknown_text_reports_at_1_1() {
        let dir = dir_with(&[("a.toml", "hosts = [\"a\"]\n[breaker]\nopen_base = \"2m\"\n")]);
        let set = load_dir(dir.path()).unwrap();
        let warnings = lint_with(&set, |_| None);
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        assert_eq!((warnings[0].line, warnings[0].col), (1, 1));
        assert_eq!(warnings[0].code, OPEN_MAX_LT_OPEN_BASE);
    }
}
