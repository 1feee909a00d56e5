//! Routes within a policy (docs/ARCHITECTURE.md §3, `[[route]]`): a match on a request's
//! method, path and one header, and the timeouts, retry and hedge that requests matching it
//! get instead of the policy's. The first route that matches, in file order, wins; a request
//! no route matches is the policy's own (`route="_default"`).
//!
//! A route's settings are complete: the loader fills every key the route does not set from the
//! policy, so the proxy reads one [`Route`] and never merges at request time. Matching reads
//! the request in place (no allocation): it costs a few comparisons per route.

use http::{HeaderMap, Method};
use serde::Serialize;

use super::{Hedge, Retry, Timeouts};

/// The `route` label of requests that no route matched.
pub const DEFAULT_ROUTE: &str = "_default";

/// At most this many routes in one policy: each is a metric label value of every destination.
pub const MAX_ROUTES: usize = 100;

/// One `[[route]]` of a policy, with the policy's settings filled in where it sets none.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    /// Its `route` metric label and its name in logs, `/upstreams` and `status`.
    pub name: String,
    /// Upper-case method names; empty: any method.
    pub methods: Vec<String>,
    pub path: PathMatch,
    pub header: Option<HeaderMatch>,
    /// `breaker = "own"`: the route's tries have a breaker of their own (per destination),
    /// with the policy's `[breaker]` settings; otherwise they share the destination's.
    pub own_breaker: bool,
    pub timeouts: Timeouts,
    pub retry: Retry,
    pub hedge: Hedge,
}

/// Which paths a route takes. Paths are compared as the app sent them, without the query, and
/// not decoded (`%2F` is not `/`): routes choose timeouts, never who may call what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum PathMatch {
    /// No `path` or `path_prefix`: every path.
    Any,
    /// `path_prefix = "/v1/reports"`: paths that start with it (as text: `/v1/reportsX` too;
    /// end the prefix with `/` to match whole segments only).
    Prefix(String),
    /// `path = "/v1/items/{id}"`: paths of exactly these segments, `{name}` standing for any
    /// one non-empty segment.
    Template(Vec<Segment>),
}

/// One `/`-separated segment of a `path` template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    Literal(String),
    /// `{name}`: any one non-empty segment.
    Param(String),
}

/// `header = { name = "...", value = "..." }`: the request has this header (any value when
/// `value` is unset; otherwise one of its values equals `value`, case-sensitively).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderMatch {
    /// Lower case.
    pub name: String,
    pub value: Option<String>,
}

impl Route {
    /// Whether a request with this method, path (no query) and headers takes this route.
    pub fn matches(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        self.takes(method.as_str().as_bytes(), path.as_bytes(), headers)
    }

    /// [`Route::matches`], cheapest test first: the method, the path, then the header (a hash
    /// lookup).
    fn takes(&self, method: &[u8], path: &[u8], headers: &HeaderMap) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| same(m.as_bytes(), method)))
            && self.path.takes(path)
            && self.header.as_ref().is_none_or(|h| h.matches(headers))
    }
}

/// The index of the first of `routes` that a request takes; `None`: the policy's own.
///
/// A request that no route takes tries them all: with 50 routes, about 0.1 µs
/// (`cargo bench --bench route_match`, docs/PERFORMANCE.md).
pub fn route_for(
    routes: &[Route],
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<usize> {
    let method = method.as_str().as_bytes();
    routes
        .iter()
        .position(|route| route.takes(method, path.as_bytes(), headers))
}

/// `a == b`, byte by byte: the strings compared here are short and most differ in their first
/// bytes, where calling `memcmp` costs more than comparing.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        self.takes(path.as_bytes())
    }

    fn takes(&self, path: &[u8]) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Prefix(prefix) => {
                // The prefix's last byte first: the prefixes of one API share their first bytes.
                let prefix = prefix.as_bytes();
                path.get(prefix.len().wrapping_sub(1)) == prefix.last()
                    && path
                        .get(..prefix.len())
                        .is_some_and(|head| same(head, prefix))
            }
            PathMatch::Template(segments) => template_matches(segments, path),
        }
    }

    /// As written in the policy file.
    pub fn describe(&self) -> String {
        match self {
            PathMatch::Any => "any path".to_owned(),
            PathMatch::Prefix(prefix) => format!("path_prefix {prefix}"),
            PathMatch::Template(segments) => format!("path {}", template_text(segments)),
        }
    }
}

/// A template's text: `/v1/items/{id}`.
pub fn template_text(segments: &[Segment]) -> String {
    let mut text = String::new();
    for segment in segments {
        text.push('/');
        match segment {
            Segment::Literal(literal) => text.push_str(literal),
            Segment::Param(name) => {
                text.push('{');
                text.push_str(name);
                text.push('}');
            }
        }
    }
    text
}

/// Reads the path once, segment by segment, without splitting it first: a literal segment is
/// compared in place, so a path that differs early costs a byte or two.
fn template_matches(segments: &[Segment], path: &[u8]) -> bool {
    let mut rest = path;
    for segment in segments {
        let Some((&b'/', after)) = rest.split_first() else {
            return false;
        };
        rest = match segment {
            Segment::Literal(literal) => {
                let literal = literal.as_bytes();
                let Some(part) = after.get(..literal.len()) else {
                    return false;
                };
                if !same(part, literal) {
                    return false;
                }
                // What follows must be `/` (the next segment) or nothing (the end): checked
                // there.
                &after[literal.len()..]
            }
            Segment::Param(_) => {
                let end = after.iter().position(|&b| b == b'/').unwrap_or(after.len());
                if end == 0 {
                    return false;
                }
                &after[end..]
            }
        };
    }
    rest.is_empty()
}

impl HeaderMatch {
    fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(self.name.as_str()).iter();
        match &self.value {
            None => values.next().is_some(),
            Some(wanted) => values.any(|v| v.as_bytes() == wanted.as_bytes()),
        }
    }
}

/// Parses a `path` template: `/` then segments, `{name}` a whole segment of its own.
pub fn parse_template(text: &str) -> Result<Vec<Segment>, String> {
    let Some(rest) = text.strip_prefix('/') else {
        return Err(format!("\"{text}\" must start with `/`"));
    };
    let mut names: Vec<&str> = Vec::new();
    let mut segments = Vec::new();
    for part in rest.split('/') {
        if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`{{{name}}}` in \"{text}\": a parameter is a name of letters, digits and `_`"
                ));
            }
            if names.contains(&name) {
                return Err(format!("`{{{name}}}` appears twice in \"{text}\""));
            }
            names.push(name);
            segments.push(Segment::Param(name.to_owned()));
        } else if part.contains(['{', '}']) {
            return Err(format!(
                "\"{text}\": a `{{param}}` must be a whole segment (between `/`s)"
            ));
        } else {
            segments.push(Segment::Literal(part.to_owned()));
        }
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(methods: &[&str], path: PathMatch, header: Option<HeaderMatch>) -> Route {
        Route {
            name: "r".into(),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            path,
            header,
            own_breaker: false,
            timeouts: Timeouts::default(),
            retry: Retry::default(),
            hedge: Hedge::default(),
        }
    }

    fn template(text: &str) -> PathMatch {
        PathMatch::Template(parse_template(text).unwrap())
    }

    #[test]
    fn a_template_takes_exactly_its_segments() {
        let items = template("/v1/items/{id}");
        assert!(items.matches("/v1/items/42"));
        assert!(!items.matches("/v1/items/"));
        assert!(!items.matches("/v1/items"));
        assert!(!items.matches("/v1/items/42/parts"));
        assert!(!items.matches("/v1/itemsX/42"));
        assert!(!items.matches("v1/items/42"));
        assert!(template("/").matches("/"));
        assert!(!template("/").matches("/a"));
        assert!(template("/a/{x}/b/{y}").matches("/a/1/b/2"));
    }

    #[test]
    fn a_prefix_is_text() {
        let reports = PathMatch::Prefix("/v1/reports".into());
        assert!(reports.matches("/v1/reports"));
        assert!(reports.matches("/v1/reports/9"));
        assert!(reports.matches("/v1/reportsX"));
        assert!(!reports.matches("/v1/report"));
    }

    #[test]
    fn methods_and_header_must_all_match() {
        let header = HeaderMatch {
            name: "x-tier".into(),
            value: Some("gold".into()),
        };
        let r = route(&["PUT", "DELETE"], template("/i/{id}"), Some(header));
        let mut headers = HeaderMap::new();
        assert!(!r.matches(&Method::PUT, "/i/1", &headers));
        headers.append("x-tier", "silver".parse().unwrap());
        assert!(!r.matches(&Method::PUT, "/i/1", &headers));
        headers.append("x-tier", "gold".parse().unwrap());
        assert!(r.matches(&Method::PUT, "/i/1", &headers));
        assert!(r.matches(&Method::DELETE, "/i/1", &headers));
        assert!(!r.matches(&Method::GET, "/i/1", &headers));
        let present = HeaderMatch {
            name: "x-tier".into(),
            value: None,
        };
        let any = route(&[], PathMatch::Any, Some(present));
        assert!(any.matches(&Method::GET, "/", &headers));
        assert!(!any.matches(&Method::GET, "/", &HeaderMap::new()));
    }

    #[test]
    fn the_first_match_wins() {
        let routes = [
            route(&["GET"], PathMatch::Prefix("/v1/status".into()), None),
            route(&[], PathMatch::Prefix("/v1/".into()), None),
        ];
        let none = HeaderMap::new();
        assert_eq!(
            route_for(&routes, &Method::GET, "/v1/status", &none),
            Some(0)
        );
        assert_eq!(
            route_for(&routes, &Method::POST, "/v1/status", &none),
            Some(1)
        );
        assert_eq!(route_for(&routes, &Method::GET, "/v2", &none), None);
    }

    /// The matching of before it read paths in place: split at `/`, compare segment by segment.
    fn split_matches(segments: &[Segment], path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = rest.split('/');
        let fits = segments
            .iter()
            .all(|segment| match (segment, parts.next()) {
                (Segment::Literal(literal), Some(part)) => part == literal,
                (Segment::Param(_), Some(part)) => !part.is_empty(),
                (_, None) => false,
            });
        fits && parts.next().is_none()
    }

    proptest::proptest! {
        #[test]
        fn templates_match_as_if_split(
            template in "(/(a|ab|b|\\{x\\}|\\{y\\})?){1,4}",
            path in "/?[ab/]{0,10}",
            prefix in "/[ab/]{0,4}",
        ) {
            // A parameter named twice is refused.
            let parsed = parse_template(&template);
            proptest::prop_assume!(parsed.is_ok());
            let segments = parsed.unwrap();
            proptest::prop_assert_eq!(
                template_matches(&segments, path.as_bytes()),
                split_matches(&segments, &path),
                "{} {}", template, path
            );
            let by_prefix = PathMatch::Prefix(prefix.clone()).matches(&path);
            proptest::prop_assert_eq!(by_prefix, path.starts_with(&prefix));
        }
    }

    #[test]
    fn bad_templates_say_why() {
        assert!(parse_template("v1").unwrap_err().contains("start with"));
        assert!(parse_template("/v1/{}").is_err());
        assert!(parse_template("/v1/x{id}")
            .unwrap_err()
            .contains("whole segment"));
        assert!(parse_template("/{a}/{a}").unwrap_err().contains("twice"));
        assert_eq!(
            template_text(&parse_template("/v1/items/{id}").unwrap()),
            "/v1/items/{id}"
        );
    }
}
