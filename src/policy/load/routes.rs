//! `[[route]]` tables (docs/ARCHITECTURE.md §3): each route's match, validated, and its
//! `[route.timeouts]`, `[route.retry]` and `[route.hedge]` laid over the policy's own values
//! with the same checks as the policy's sections, so that a route is complete once loaded.

use toml::Spanned;

use super::{method, Cx, RawPolicy};
use crate::policy::raw::{RawHeaderMatch, RawRoute};
use crate::policy::route::{parse_template, HeaderMatch, PathMatch, Route, MAX_ROUTES};
use crate::policy::Policy;

impl Cx<'_> {
    /// The policy's routes, in file order; `p` holds the policy's own settings already.
    pub(super) fn routes(&mut self, p: &mut Policy, raw: &RawPolicy, is_default: bool) {
        let Some(tables) = &raw.route else { return };
        if is_default {
            let why = "`route` cannot be set in default.toml: routes describe one API's paths; \
                       put them in that API's policy";
            self.error(tables.span(), why.into());
            return;
        }
        if tables.get_ref().len() > MAX_ROUTES {
            let why = format!(
                "{} routes: at most {MAX_ROUTES} (each is a `route` label value of every \
                 destination)",
                tables.get_ref().len()
            );
            self.error(tables.span(), why);
        }
        for table in tables.get_ref() {
            if let Some(route) = self.route(p, table) {
                if p.routes.iter().any(|r| r.name == route.name) {
                    let why = format!("route name \"{}\" is used twice", route.name);
                    self.error(table.span(), why);
                } else {
                    p.routes.push(route);
                }
            }
        }
    }

    /// One route, or `None` when its match or name is invalid (each problem reported).
    fn route(&mut self, p: &Policy, table: &Spanned<RawRoute>) -> Option<Route> {
        let r = table.get_ref();
        let before = self.error_count();
        let name = self.route_name(table);
        let mut methods = Vec::new();
        self.list(&mut methods, "route.methods", &r.methods, |s| method(s));
        let path = self.route_path(r);
        let header = r
            .header
            .as_ref()
            .and_then(|h| self.route_header(h.get_ref()));
        let mut own_breaker = false;
        self.value(&mut own_breaker, "route.breaker", &r.breaker, |s| {
            match s.as_str() {
                "own" => Ok(true),
                "shared" => Ok(false),
                _ => Err(format!(
                    "unknown breaker \"{s}\"; valid: \"shared\", \"own\""
                )),
            }
        });
        self.route_keys_of_the_destination(r);
        let sections = RawPolicy {
            timeouts: r.timeouts.clone(),
            retry: r.retry.clone(),
            hedge: r.hedge.clone(),
            ..RawPolicy::default()
        };
        let (mut timeouts, mut retry, mut hedge) = (p.timeouts, p.retry.clone(), p.hedge);
        self.timeouts(&mut timeouts, &sections);
        self.retry(&mut retry, &sections);
        self.hedge(&mut hedge, &sections);
        (self.error_count() == before).then_some(Route {
            name: name?,
            methods,
            path,
            header,
            own_breaker,
            timeouts,
            retry,
            hedge,
        })
    }

    /// `name`: required, a label value of letters, digits, `_`, `-` and `.`.
    fn route_name(&mut self, table: &Spanned<RawRoute>) -> Option<String> {
        let Some(name) = &table.get_ref().name else {
            let why = "a `[[route]]` needs a `name` (its `route` metric label)";
            self.error(table.span(), why.into());
            return None;
        };
        let text = name.get_ref();
        let valid = !text.is_empty()
            && text.len() <= 64
            && text.starts_with(|c: char| c.is_ascii_alphanumeric())
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        if !valid {
            let why = format!(
                "`route.name`: \"{text}\" is not a route name (1 to 64 letters, digits, `_`, `-` \
                 or `.`, starting with a letter or digit)"
            );
            self.error(name.span(), why);
            return None;
        }
        Some(text.clone())
    }

    /// `path_prefix` or `path` (not both), each starting with `/`.
    fn route_path(&mut self, r: &RawRoute) -> PathMatch {
        match (&r.path_prefix, &r.path) {
            (Some(_), Some(path)) => {
                let why = "`route.path` and `route.path_prefix` are both set; a route has one";
                self.error(path.span(), why.into());
                PathMatch::Any
            }
            (Some(_), None) => {
                let mut path = PathMatch::Any;
                self.value(&mut path, "route.path_prefix", &r.path_prefix, |s| {
                    if s.starts_with('/') {
                        Ok(PathMatch::Prefix(s.clone()))
                    } else {
                        Err(format!("\"{s}\" must start with `/`"))
                    }
                });
                path
            }
            (None, Some(_)) => {
                let mut path = PathMatch::Any;
                self.value(&mut path, "route.path", &r.path, |s| {
                    parse_template(s).map(PathMatch::Template)
                });
                path
            }
            (None, None) => PathMatch::Any,
        }
    }

    fn route_header(&mut self, h: &RawHeaderMatch) -> Option<HeaderMatch> {
        let name = h.name.get_ref().to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            let why = format!("`route.header.name`: \"{name}\" is not a header name");
            self.error(h.name.span(), why);
            return None;
        }
        if let Some(value) = &h.value {
            if http::HeaderValue::from_str(value.get_ref()).is_err() {
                let why = "`route.header.value`: not a header value (visible ASCII and spaces)";
                self.error(value.span(), why.into());
                return None;
            }
        }
        Some(HeaderMatch {
            name,
            value: h.value.as_ref().map(|v| v.get_ref().clone()),
        })
    }

    /// Keys that belong to the destination, not to a route: a tunnel has no path, and the
    /// connections and the retry budget are shared by every request to the destination.
    fn route_keys_of_the_destination(&mut self, r: &RawRoute) {
        const TUNNEL: &str = "a tunnel has no path, so no route";
        const SHARED: &str = "connections are the destination's, shared by its routes";
        const BUDGET: &str = "the retry budget is the destination's, shared by its routes";
        let keys = [
            (
                "timeouts.tunnel_idle",
                r.timeouts.tunnel_idle.as_ref().map(|v| v.span()),
                TUNNEL,
            ),
            (
                "timeouts.tunnel_max",
                r.timeouts.tunnel_max.as_ref().map(|v| v.span()),
                TUNNEL,
            ),
            (
                "timeouts.connect",
                r.timeouts.connect.as_ref().map(|v| v.span()),
                SHARED,
            ),
            (
                "retry.budget_ratio",
                r.retry.budget_ratio.as_ref().map(|v| v.span()),
                BUDGET,
            ),
            (
                "retry.budget_min_per_second",
                r.retry.budget_min_per_second.as_ref().map(|v| v.span()),
                BUDGET,
            ),
        ];
        for (key, span, because) in keys {
            if let Some(span) = span {
                self.error(
                    span,
                    format!("`route.{key}`: {because}; set it in the policy"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::policy::load_dir;
    use crate::policy::route::{PathMatch, Segment};

    fn load(text: &str) -> Result<crate::policy::PolicySet, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("partner.toml"), text).unwrap();
        load_dir(dir.path()).map_err(|errors| {
            let prefix = format!("{}/", dir.path().display());
            errors
                .iter()
                .map(|e| e.to_string().replacen(&prefix, "", 1))
                .collect()
        })
    }

    const PARTNER: &str = r#"
hosts = ["api.partner.example"]
[timeouts]
attempt = "2s"
total = "5s"
[retry]
attempts = 3

[[route]]
name = "status"
methods = ["get"]
path_prefix = "/v1/status"
[route.timeouts]
attempt = "300ms"

[[route]]
name = "items"
path = "/v1/items/{id}"
header = { name = "X-Tier", value = "gold" }
breaker = "own"
[route.retry]
attempts = 1
[route.hedge]
enabled = true
"#;

    #[test]
    fn routes_fill_in_what_they_do_not_set_from_the_policy() {
        let set = load(PARTNER).unwrap();
        let policy = set.lookup("api.partner.example", 443);
        let [status, items] = &policy.routes[..] else {
            panic!("{:?}", policy.routes)
        };
        assert_eq!(status.methods, ["GET"]);
        assert_eq!(status.path, PathMatch::Prefix("/v1/status".into()));
        assert_eq!(status.timeouts.attempt, Duration::from_millis(300));
        assert_eq!(status.timeouts.total, Duration::from_secs(5));
        assert_eq!(status.retry.attempts, 3);
        assert!(!status.own_breaker && !status.hedge.enabled);
        let segments = vec![
            Segment::Literal("v1".into()),
            Segment::Literal("items".into()),
            Segment::Param("id".into()),
        ];
        assert_eq!(items.path, PathMatch::Template(segments));
        let header = items.header.as_ref().unwrap();
        assert_eq!(
            (header.name.as_str(), header.value.as_deref()),
            ("x-tier", Some("gold"))
        );
        assert!(items.own_breaker && items.hedge.enabled);
        assert_eq!(items.retry.attempts, 1);
        assert_eq!(items.timeouts.attempt, Duration::from_secs(2));
    }

    #[test]
    fn each_bad_route_key_is_reported_where_it_is() {
        let text = r#"
hosts = ["a.example"]
[[route]]
path_prefix = "v1"
[[route]]
name = "x y"
path = "/a/{b}/{b}"
breaker = "mine"
[route.timeouts]
tunnel_idle = "5s"
[route.retry]
budget_ratio = 0.5
[[route]]
name = "twice"
[[route]]
name = "twice"
[[route]]
name = "other"
path = "/a"
path_prefix = "/a"
header = { name = "bad header" }
"#;
        let errors = load(text).unwrap_err();
        let expected = [
            ("partner.toml:3:1", "needs a `name`"),
            ("partner.toml:4:15", "must start with `/`"),
            ("partner.toml:6:8", "is not a route name"),
            ("partner.toml:7:8", "appears twice"),
            ("partner.toml:8:11", "unknown breaker"),
            ("partner.toml:10:15", "a tunnel has no path"),
            (
                "partner.toml:12:16",
                "the retry budget is the destination's",
            ),
            ("partner.toml:15:1", "is used twice"),
            ("partner.toml:19:8", "both set"),
            ("partner.toml:21:19", "not a header name"),
        ];
        for (at, part) in expected {
            let found = errors.iter().any(|e| e.starts_with(at) && e.contains(part));
            assert!(found, "no {at} {part:?} in {errors:#?}");
        }
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    }

    #[test]
    fn default_toml_has_no_routes() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[[route]]\nname = \"r\"\n";
        std::fs::write(dir.path().join("default.toml"), text).unwrap();
        let errors = load_dir(dir.path()).unwrap_err();
        assert!(
            errors[0].message.contains("cannot be set in default.toml"),
            "{errors}"
        );
    }
}
