//! Lints of a policy's `[[route]]` tables (docs/ARCHITECTURE.md §3): a route that an earlier
//! route always takes first ([`ROUTE_SHADOWED`]), and a route whose own `[route.retry]` may send
//! a non-idempotent request twice ([`ROUTE_NON_IDEMPOTENT_RETRY`]).
//!
//! Positions are found under `route[i]`, the i-th `[[route]]` of the file: a policy that loaded
//! kept every route of its file, in file order, so `policy.routes[i]` is that table. Shadowing
//! is only reported when it is certain: every request the later route matches, the earlier one
//! matches too.

use std::fmt;

use super::{
    non_idempotent_methods, resent_after_sending, Cx, Keys, ROUTE_NON_IDEMPOTENT_RETRY,
    ROUTE_SHADOWED,
};
use crate::policy::route::{HeaderMatch, PathMatch, Route, Segment};

/// A request with this header is retried whatever its method (`pipeline::retry::may_resend`).
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The keys of `[route.retry]` that make a route's retry its own.
const OWN_RETRY_KEYS: [&str; 3] = ["retry.methods", "retry.attempts", "retry.on"];

fn route_key(index: usize, key: &str) -> String {
    Keys::in_table("route", index, key)
}

impl Cx<'_> {
    /// The route lints of this policy.
    pub(super) fn routes(&mut self) {
        let routes = &self.policy.routes[..];
        for (index, route) in routes.iter().enumerate() {
            if let Some(earlier) = routes[..index].iter().position(|e| shadows(e, route)) {
                self.route_shadowed(&routes[earlier], earlier, route, index);
            }
            self.route_non_idempotent_retry(route, index);
        }
    }

    fn route_shadowed(
        &mut self,
        earlier: &Route,
        earlier_index: usize,
        route: &Route,
        index: usize,
    ) {
        let (earlier_line, _) = self.keys.at(&route_key(earlier_index, "name"), None);
        let message = format!(
            "route \"{}\" can never match: route \"{}\" (line {earlier_line}) comes first and \
             takes every request it would (the first route that matches, in file order, wins); \
             move \"{}\" above \"{}\" or narrow \"{}\"",
            route.name, earlier.name, route.name, earlier.name, earlier.name,
        );
        self.warn_at(ROUTE_SHADOWED, &route_key(index, "name"), None, message);
    }

    /// Reported only when the route sets one of [`OWN_RETRY_KEYS`]: a retry all inherited is
    /// the policy's, which [`Cx::retry`] lints.
    fn route_non_idempotent_retry(&mut self, route: &Route, index: usize) {
        let own: Vec<String> = OWN_RETRY_KEYS
            .iter()
            .map(|key| route_key(index, key))
            .filter(|key| self.keys.sets(key))
            .collect();
        let r = &route.retry;
        let needs_key = route
            .header
            .as_ref()
            .is_some_and(|h| h.name == IDEMPOTENCY_KEY);
        if own.is_empty() || r.attempts <= 1 || needs_key {
            return;
        }
        let risky = resent_after_sending(r);
        let bad = non_idempotent_methods(r, |m| takes_method(route, m));
        let Some(&(first, _)) = bad.first() else {
            return;
        };
        if risky.is_empty() {
            return;
        }
        let names = bad.iter().map(|(_, m)| *m).collect::<Vec<_>>().join(", ");
        let message = format!(
            "route \"{}\": {} lists {names} (not idempotent) while {} and `route.retry.on`{} \
             includes \"{}\": a \
             {names} request to this route that reached the upstream but lost its answer is \
             sent again, and may be executed twice (a double charge, a duplicate order); remove \
             {names} from the route's `retry.methods` or `methods`, or require an \
             `Idempotency-Key` with `header = {{ name = \"Idempotency-Key\" }}` (requests with \
             one are retried whatever their method), or keep only \"connect-failure\" in the \
             route's `retry.on`",
            route.name,
            self.show_route(
                index,
                "retry.methods",
                format_args!("[{}]", r.methods.join(", "))
            ),
            self.show_route(index, "retry.attempts", r.attempts),
            self.inherited(index, "retry.on"),
            risky.join("\", \""),
        );
        let item = own[0].ends_with(".methods").then_some(first);
        self.warn_at(ROUTE_NON_IDEMPOTENT_RETRY, &own[0], item, message);
    }

    /// `` `route.key` = value``, saying when the route inherits the value from the policy.
    fn show_route(&self, index: usize, key: &str, value: impl fmt::Display) -> String {
        format!("`route.{key}` = {value}{}", self.inherited(index, key))
    }

    /// ` (from the policy)` when the route does not set `key`.
    fn inherited(&self, index: usize, key: &str) -> &'static str {
        if self.keys.sets(&route_key(index, key)) {
            ""
        } else {
            " (from the policy)"
        }
    }
}

fn takes_method(route: &Route, method: &str) -> bool {
    route.methods.is_empty() || route.methods.iter().any(|m| m == method)
}

/// Whether `earlier` matches every request that `later` matches.
fn shadows(earlier: &Route, later: &Route) -> bool {
    methods_cover(&earlier.methods, &later.methods)
        && path_covers(&earlier.path, &later.path)
        && header_covers(earlier.header.as_ref(), later.header.as_ref())
}

/// Empty: any method, covered only by any method.
fn methods_cover(earlier: &[String], later: &[String]) -> bool {
    earlier.is_empty() || (!later.is_empty() && later.iter().all(|m| earlier.contains(m)))
}

fn header_covers(earlier: Option<&HeaderMatch>, later: Option<&HeaderMatch>) -> bool {
    match (earlier, later) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(l)) => e.name == l.name && (e.value.is_none() || e.value == l.value),
    }
}

fn path_covers(earlier: &PathMatch, later: &PathMatch) -> bool {
    match (earlier, later) {
        (PathMatch::Any, _) => true,
        (PathMatch::Prefix(e), PathMatch::Prefix(l)) => l.starts_with(e.as_str()),
        (PathMatch::Prefix(e), PathMatch::Template(l)) => {
            template_fixed_start(l).starts_with(e.as_str())
        }
        (PathMatch::Template(e), PathMatch::Template(l)) => {
            e.len() == l.len() && e.iter().zip(l).all(|(e, l)| segment_covers(e, l))
        }
        (PathMatch::Prefix(_) | PathMatch::Template(_), PathMatch::Any)
        | (PathMatch::Template(_), PathMatch::Prefix(_)) => false,
    }
}

/// A `{param}` takes any one non-empty segment: not an empty literal (`/v1/` ends in one).
fn segment_covers(earlier: &Segment, later: &Segment) -> bool {
    match (earlier, later) {
        (Segment::Param(_), Segment::Param(_)) => true,
        (Segment::Param(_), Segment::Literal(l)) => !l.is_empty(),
        (Segment::Literal(e), Segment::Literal(l)) => e == l,
        (Segment::Literal(_), Segment::Param(_)) => false,
    }
}

/// The text that every path a template matches starts with: up to and including the `/`
/// before its first `{param}` (`/v1/items/{id}`: `/v1/items/`), or all of it without one.
fn template_fixed_start(segments: &[Segment]) -> String {
    let mut text = String::new();
    for segment in segments {
        text.push('/');
        match segment {
            Segment::Literal(literal) => text.push_str(literal),
            Segment::Param(_) => break,
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::super::tests::assert_lints;
    use super::*;
    use crate::policy::route::parse_template;

    fn policy(routes: &str) -> String {
        format!("hosts = [\"a\"]\n{routes}")
    }

    fn template(text: &str) -> PathMatch {
        PathMatch::Template(parse_template(text).unwrap())
    }

    fn prefix(text: &str) -> PathMatch {
        PathMatch::Prefix(text.to_owned())
    }

    #[test]
    fn which_paths_cover_which() {
        let covered = [
            (PathMatch::Any, PathMatch::Any),
            (PathMatch::Any, template("/v1/{id}")),
            (prefix("/v1"), prefix("/v1/items")),
            (prefix("/v1/it"), template("/v1/items/{id}")),
            (prefix("/v1/items/"), template("/v1/items/{id}")),
            (prefix("/v1/items/42"), template("/v1/items/42")),
            (prefix("/"), template("/{id}")),
            (template("/v1/{a}/{b}"), template("/v1/items/{id}")),
        ];
        for (earlier, later) in &covered {
            assert!(path_covers(earlier, later), "{earlier:?} {later:?}");
        }
        let not_covered = [
            (prefix("/"), PathMatch::Any),
            (template("/v1"), PathMatch::Any),
            (template("/v1/{id}"), prefix("/v1/")),
            (prefix("/v1/items"), template("/v2/{id}")),
            (prefix("/v1/items/x"), template("/v1/items/{id}")),
            (prefix("/v1/items/"), template("/v1/items")),
            (prefix("/v1/items"), prefix("/v1")),
            (template("/v1/{id}"), template("/v1/")),
            (template("/v1/{id}"), template("/v1/{id}/parts")),
            (template("/v1/items"), template("/v1/{id}")),
        ];
        for (earlier, later) in &not_covered {
            assert!(!path_covers(earlier, later), "{earlier:?} {later:?}");
        }
    }

    #[test]
    fn route_shadowed_names_both_routes() {
        let text = policy(
            "[[route]]\nname = \"all\"\npath_prefix = \"/v1/\"\n\
             [[route]]\nname = \"items-get\"\nmethods = [\"GET\"]\npath = \"/v1/items/{id}\"\n\
             header = { name = \"X-Tier\", value = \"gold\" }\n",
        );
        let full = assert_lints(&[("a.toml", &text)], &["a.toml:6:8: route-shadowed"]);
        assert!(
            full[0].contains(
                "route \"items-get\" can never match: route \"all\" (line 3) comes first and \
                 takes every request it would"
            ),
            "{full:?}"
        );
        assert!(
            full[0].contains("move \"items-get\" above \"all\" or narrow \"all\""),
            "{full:?}"
        );
        // Methods a superset, a header with any value, a param over a literal: still shadowed.
        let text = policy(
            "[[route]]\nname = \"reads\"\nmethods = [\"GET\", \"HEAD\"]\npath = \"/v1/{x}\"\n\
             header = { name = \"x-tier\" }\n\
             [[route]]\nname = \"one\"\nmethods = [\"HEAD\"]\npath = \"/v1/items\"\n\
             header = { name = \"X-Tier\", value = \"gold\" }\n",
        );
        assert_lints(&[("a.toml", &text)], &["a.toml:8:8: route-shadowed"]);
    }

    #[test]
    fn routes_that_only_overlap_are_not_shadowed() {
        let pairs = [
            // Different paths.
            ("path_prefix = \"/v1/items\"", "path = \"/v2/{id}\""),
            ("path_prefix = \"/v1/items/x\"", "path = \"/v1/items/{id}\""),
            ("path = \"/v1/{id}\"", "path = \"/v1/\""),
            ("path = \"/v1/{id}\"", "path_prefix = \"/v1/\""),
            // GET only, before any method.
            ("methods = [\"GET\"]", "path_prefix = \"/v1/\""),
            ("methods = [\"GET\"]", "methods = [\"GET\", \"POST\"]"),
            // A header required, before a route without one.
            ("header = { name = \"x-tier\" }", "path_prefix = \"/v1/\""),
            (
                "header = { name = \"x-tier\", value = \"gold\" }",
                "header = { name = \"x-tier\" }",
            ),
            (
                "header = { name = \"x-tier\" }",
                "header = { name = \"x-plan\" }",
            ),
        ];
        for (first, second) in pairs {
            let text = policy(&format!(
                "[[route]]\nname = \"first\"\n{first}\n[[route]]\nname = \"second\"\n{second}\n"
            ));
            assert_lints(&[("a.toml", &text)], &[]);
        }
    }

    #[test]
    fn route_non_idempotent_retry_points_at_the_method() {
        let text = policy(
            "[[route]]\nname = \"orders\"\npath_prefix = \"/v1/orders\"\n\
             [route.retry]\nmethods = [\"GET\", \"POST\", \"PURGE\"]\n",
        );
        let full = assert_lints(
            &[("a.toml", &text)],
            &["a.toml:6:19: route-non-idempotent-retry"],
        );
        assert!(
            full[0].contains(
                "route \"orders\": `route.retry.methods` = [GET, POST, PURGE] lists POST, PURGE \
                 (not idempotent) while `route.retry.attempts` = 3 (from the policy)"
            ),
            "{full:?}"
        );
        assert!(full[0].contains("Idempotency-Key"), "{full:?}");
        // Methods inherited from a policy that does not retry, attempts the route's own.
        let text = "hosts = [\"a\"]\n[retry]\nattempts = 1\nmethods = [\"POST\"]\n\
                    [[route]]\nname = \"pay\"\nmethods = [\"POST\"]\n[route.retry]\nattempts = 2\n";
        assert_lints(
            &[("a.toml", text)],
            &["a.toml:9:12: route-non-idempotent-retry"],
        );
    }

    #[test]
    fn safe_route_retries_are_not_warned_about() {
        let routes = [
            // The route requires an Idempotency-Key: every request it takes may be resent.
            "header = { name = \"Idempotency-Key\" }\n[route.retry]\nmethods = [\"POST\"]",
            // The route never takes a POST.
            "methods = [\"GET\"]\n[route.retry]\nmethods = [\"GET\", \"POST\"]",
            // No retry, or only of requests never sent.
            "[route.retry]\nattempts = 1\nmethods = [\"POST\"]",
            "[route.retry]\non = [\"connect-failure\"]\nmethods = [\"POST\"]",
            // Nothing of its own: the policy's retry, clean here.
            "methods = [\"POST\"]\n[route.timeouts]\nattempt = \"1s\"",
        ];
        for route in routes {
            let text = policy(&format!("[[route]]\nname = \"r\"\n{route}\n"));
            assert_lints(&[("a.toml", &text)], &[]);
        }
        // An inherited policy retry is the policy's warning, not the route's.
        let text = "hosts = [\"a\"]\n[retry]\nmethods = [\"POST\"]\n\
                    [[route]]\nname = \"r\"\npath = \"/pay\"\n";
        assert_lints(&[("a.toml", text)], &["a.toml:3:12: non-idempotent-retry"]);
    }
}
