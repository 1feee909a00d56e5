#!/usr/bin/env python3
"""dashboards/queries.py - runs every PromQL expression of a Grafana dashboard (and of Prometheus
rule files) as an instant query against a real Prometheus, and fails on errors and empty results.

Usage:
  python3 dashboards/queries.py --prom http://127.0.0.1:9090 [DASHBOARD.json]
          [--rules RULES.yml ...] [--expr EXPR ...] [--var NAME=VALUE ...] [--allow-empty]
          [--timeout SECONDS] [--verbose]

What is checked:
  - DASHBOARD.json: the `expr` of every panel target (rows and collapsed rows followed) and of
    every annotation query whose data source is Prometheus (or not typed, i.e. the dashboard's
    default). Template-variable queries (templating, e.g. label_values(...)) are not PromQL and
    are skipped, as are targets of other data source types.
  - --rules FILE (repeatable): the `expr` of every rule (alerting and recording) of a Prometheus
    rule file. With PyYAML installed (python3-yaml) the file is parsed with it; without, a small
    built-in reader takes the value of every `expr:` key: plain one-line or multi-line values,
    '...' and "..." quoted values, and `|` / `>` block scalars (with - or + chomping), which is
    every form a rule file normally uses. It prints a note on stderr when it is used.
  - --expr EXPR (repeatable): extra expressions, treated like dashboard queries.

Before a dashboard or --expr query is sent it is rewritten the way Grafana would: its built-in
variables get fixed values (BUILTINS below: $__rate_interval 1m, $__interval 15s, $__range 1h and
their _ms / _s forms; an unknown $__name is left for Prometheus to reject), and template
variables ($name, ${name}, ${name:format}, [[name]]) become the regex `.*` unless --var
NAME=VALUE sets them. `$` followed by a digit (label_replace's "$1") is left alone. Rule
expressions are sent unchanged: Prometheus has no template variables.

Each query goes to POST /api/v1/query (instant, now). A parse or evaluation error fails it; an
empty result (no series) fails it too unless --allow-empty, as it usually means a misspelt metric
or label. Output, one line per query, then a summary:
  ok    WHERE: N series
  empty WHERE: no series (allowed by --allow-empty)
  EMPTY WHERE: no series
  ERROR WHERE: ERRORTYPE: MESSAGE
        query: THE QUERY AS SENT            (after EMPTY/ERROR, or always with --verbose)
  queries: N passed, N failed

Network: loopback only. --prom must be http(s)://127.x.x.x, localhost or [::1]; proxy environment
variables are ignored and redirects are not followed.

Exit status: 0 every query passed; 1 a query failed, Prometheus could not be reached, or an input
file is invalid or has no expressions; 2 usage (bad arguments, a non-loopback URL, a missing
file). Needs only python3's standard library (PyYAML is optional, see --rules).
"""
import argparse
import ipaddress
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

# Grafana's built-in variables, with the values a one-hour dashboard at a 15 s step would get.
# The longest names first, so that e.g. $__range_ms is not read as $__range followed by "_ms".
BUILTINS = {
    "__rate_interval_ms": "60000",
    "__rate_interval": "1m",
    "__interval_ms": "15000",
    "__interval": "15s",
    "__range_ms": "3600000",
    "__range_s": "3600",
    "__range": "1h",
}
# $name, ${name}, ${name:format}, ${name.path}, [[name]], [[name:format]]
VARIABLE = re.compile(r"\$\{([A-Za-z_]\w*)[^}]*\}|\$([A-Za-z_]\w*)|\[\[([A-Za-z_]\w*)(?::[^\]]*)?\]\]")
NON_PROMETHEUS_PREFIX = "-- "  # "-- Grafana --", "-- Dashboard --", "-- Mixed --"


class UsageError(Exception):
    pass


class InputError(Exception):
    pass


# ------------------------------------------------------------------ the dashboard
def is_prometheus(datasource):
    """True when a target with this datasource field is a Prometheus query."""
    if datasource is None:
        return True  # no data source of its own: the panel's or the dashboard's default
    if isinstance(datasource, dict):
        kind = datasource.get("type")
        if kind is None:
            return not str(datasource.get("uid", "")).startswith(NON_PROMETHEUS_PREFIX)
        return kind == "prometheus"
    return not str(datasource).startswith(NON_PROMETHEUS_PREFIX)  # old style: a name


def dashboard_exprs(dash):
    """(where, expr) for every panel target and annotation query; templating is not visited."""
    if isinstance(dash.get("dashboard"), dict):  # an export wrapped as {"dashboard": {...}}
        dash = dash["dashboard"]
    found = []

    def panels(items):
        for p in items or []:
            if not isinstance(p, dict):
                continue
            title = p.get("title") or f"panel id {p.get('id')}"
            panel_ds = p.get("datasource")
            for i, t in enumerate(p.get("targets") or []):
                if not isinstance(t, dict):
                    continue
                ds = t.get("datasource", panel_ds)
                if isinstance(ds, dict) and ds.get("uid") == "-- Mixed --":
                    ds = None
                expr = t.get("expr")
                if isinstance(expr, str) and expr.strip() and is_prometheus(ds):
                    found.append((f"{title} / {t.get('refId') or i}", expr))
            panels(p.get("panels"))

    panels(dash.get("panels"))
    for a in (dash.get("annotations") or {}).get("list") or []:
        if not isinstance(a, dict):
            continue
        expr = a.get("expr")
        if not isinstance(expr, str) and isinstance(a.get("target"), dict):
            expr = a["target"].get("expr")
        if isinstance(expr, str) and expr.strip() and is_prometheus(a.get("datasource")):
            found.append((f"annotation {a.get('name')}", expr))
    return found


def substitute(expr, variables):
    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in BUILTINS:
            return BUILTINS[name]
        if name.startswith("__"):
            return m.group(0)  # an unknown built-in: left for Prometheus to reject
        return variables.get(name, ".*")
    return VARIABLE.sub(repl, expr)


# ------------------------------------------------------------------ rule files
def rules_with_yaml(yaml, text, path):
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML: {e}")
    if not isinstance(doc, dict) or not isinstance(doc.get("groups"), list):
        raise InputError(f"{path}: no `groups:` list (not a Prometheus rule file)")
    found = []
    for g in doc["groups"]:
        if not isinstance(g, dict):
            continue
        for i, r in enumerate(g.get("rules") or []):
            if not isinstance(r, dict) or "expr" not in r:
                continue
            name = r.get("alert") or r.get("record") or f"rule {i + 1} of group {g.get('name')}"
            found.append((f"{os.path.basename(path)}: {name}", str(r["expr"])))
    return found


def _indent(line):
    return len(line) - len(line.lstrip(" "))


def _strip_comment(value):
    """A plain scalar ends at ' #'."""
    m = re.search(r"\s#", value)
    return (value[:m.start()] if m else value).strip()


def _read_quoted(lines, i, start, quote):
    """A quoted scalar beginning at lines[i][start] (the quote); returns (value, next line)."""
    text, j, pos = [], i, start + 1
    while j < len(lines):
        line = lines[j]
        k = pos
        while k < len(line):
            c = line[k]
            if quote == "'" and c == "'":
                if line[k + 1:k + 2] == "'":
                    k += 2
                    continue
                break
            if quote == '"' and c == "\\":
                k += 2
                continue
            if quote == '"' and c == '"':
                break
            k += 1
        if k < len(line):
            text.append(line[pos:k])
            raw = " ".join(t.strip() if n else t.rstrip() for n, t in enumerate(text))
            if quote == "'":
                return raw.replace("''", "'"), j + 1
            try:
                return json.loads('"' + raw.replace("\\/", "/") + '"'), j + 1
            except ValueError:
                return raw.replace('\\"', '"').replace("\\\\", "\\"), j + 1
        text.append(line[pos:])
        j, pos = j + 1, 0
    raise InputError(f"line {i + 1}: unterminated {quote}-quoted expr")


def _key_column(line):
    """Column of a line's mapping key, after a `- ` list marker if there is one."""
    m = re.match(r"^(\s*)(-\s+)?", line)
    return len(m.group(0))


def _rule_name(lines, first, col):
    """The alert: or record: value of the list item holding the expr: key at lines[first]."""
    def content(line):
        return line.strip() and not line.lstrip().startswith("#")
    start = first
    while not re.match(r"^\s*-\s", lines[start]) or _key_column(lines[start]) != col:
        start -= 1
        if start < 0 or (content(lines[start]) and _indent(lines[start]) < col
                         and _key_column(lines[start]) != col):
            start = first  # no list item found: only the expr's own mapping level
            break
    end = first + 1
    while end < len(lines) and not (content(lines[end]) and _indent(lines[end]) < col):
        end += 1
    name_re = re.compile(r"^\s*(?:-\s+)?(?:alert|record):\s*(.*)$")
    for line in lines[start:end]:
        m = name_re.match(line)
        if m and _key_column(line) == col:
            value = _strip_comment(m.group(1))
            return value.strip("'\"") or None
    return None


def rules_builtin(text, path):
    """The value of every `expr:` key, without a YAML library (see the module docstring)."""
    lines = text.splitlines()
    found = []
    key_re = re.compile(r"^(\s*)(-\s+)?expr:(\s+|$)(.*)$")
    i = 0
    while i < len(lines):
        m = key_re.match(lines[i])
        if not m:
            i += 1
            continue
        col = len(m.group(1)) + len(m.group(2) or "")  # column of the `expr` key
        rest = m.group(4)
        first = i
        if rest.startswith(("'", '"')):
            expr, i = _read_quoted(lines, i, len(lines[i]) - len(rest), rest[0])
        elif rest[:1] in ("|", ">"):
            header = _strip_comment(rest)
            chomp = "-" if "-" in header else "+" if "+" in header else ""
            body, i = [], i + 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > col):
                body.append(lines[i])
                i += 1
            indents = [_indent(b) for b in body if b.strip()]
            cut = indents[0] if indents else 0
            body = [b[cut:] if b.strip() else "" for b in body]
            while body and not body[-1]:
                body.pop()
            if header[0] == "|":
                expr = "\n".join(body)
            else:  # folded: lines joined by spaces, an empty line is a newline
                expr = ""
                for b in body:
                    expr += "\n" if not b else (b if not expr or expr.endswith("\n") else " " + b)
            expr += "" if chomp == "-" else "\n"
        else:  # a plain scalar, possibly continued on more-indented lines
            parts, i = [_strip_comment(rest)], i + 1
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) > col \
                    and not lines[i].lstrip().startswith("#"):
                parts.append(_strip_comment(lines[i]))
                i += 1
            expr = " ".join(p for p in parts if p)
        name = _rule_name(lines, first, col)
        if expr.strip():
            found.append((f"{os.path.basename(path)}: {name or f'expr at line {first + 1}'}", expr))
    return found


def rule_exprs(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        import yaml  # optional: python3-yaml
    except ImportError:
        print(f"queries.py: note: PyYAML missing (apt-get install python3-yaml): reading the expr: "
              f"keys of {path} with the built-in reader", file=sys.stderr)
        return rules_builtin(text, path)
    return rules_with_yaml(yaml, text, path)


# ------------------------------------------------------------------ Prometheus
def check_loopback(url):
    u = urllib.parse.urlparse(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise UsageError(f"--prom {url}: expected http://HOST:PORT")
    host = u.hostname
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise UsageError(f"--prom {url}: only loopback Prometheus URLs (127.0.0.0/8, localhost, [::1])")
    return url.rstrip("/")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} not followed", headers, fp)


OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())


class Unreachable(Exception):
    pass


def instant_query(prom, query, timeout):
    """The decoded /api/v1/query answer (a dict with "status")."""
    data = urllib.parse.urlencode({"query": query, "time": f"{time.time():.3f}"}).encode()
    req = urllib.request.Request(prom + "/api/v1/query", data=data,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with OPENER.open(req, timeout=timeout) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:  # 400 bad_data, 422 execution: JSON with the error
        try:
            return json.load(e)
        except ValueError:
            return {"status": "error", "errorType": f"HTTP {e.code}", "error": str(e.reason)}
    except ValueError as e:
        return {"status": "error", "errorType": "response", "error": f"not JSON: {e}"}
    except (urllib.error.URLError, OSError) as e:
        raise Unreachable(f"cannot reach Prometheus at {prom}: {getattr(e, 'reason', e)}")


# ------------------------------------------------------------------ main
def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="queries.py", description="Run a Grafana dashboard's (and rule files') PromQL "
        "expressions against a loopback Prometheus; see the module docstring.")
    ap.add_argument("dashboard", nargs="?", help="Grafana dashboard JSON")
    ap.add_argument("--prom", required=True, help="Prometheus base URL (loopback only)")
    ap.add_argument("--rules", action="append", default=[], metavar="FILE",
                    help="a Prometheus rule file: check the expr of every rule (repeatable)")
    ap.add_argument("--expr", action="append", default=[], help="an extra expression (repeatable)")
    ap.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                    help="value of a template variable (default: the regex .*)")
    ap.add_argument("--allow-empty", action="store_true", help="a query with no series passes")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per query (default 10)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every query as sent")
    a = ap.parse_args(argv)  # exits 2 on bad arguments
    if not (a.dashboard or a.rules or a.expr):
        raise UsageError("nothing to check: give DASHBOARD.json, --rules FILE or --expr EXPR")
    if a.timeout <= 0:
        raise UsageError("--timeout must be positive")
    a.variables = {}
    for v in a.var:
        name, sep, value = v.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise UsageError(f"--var {v}: expected NAME=VALUE")
        a.variables[name] = value
    a.prom = check_loopback(a.prom)
    for f in [a.dashboard] + a.rules:
        if f and not os.path.isfile(f):
            raise UsageError(f"no such file: {f}")
    return a


def main(argv):
    try:
        a = parse_args(argv)
    except UsageError as e:
        print(f"queries.py: {e}", file=sys.stderr)
        return 2

    queries = []  # (where, query as sent)
    try:
        if a.dashboard:
            try:
                with open(a.dashboard, encoding="utf-8") as f:
                    dash = json.load(f)
            except ValueError as e:
                raise InputError(f"{a.dashboard}: not valid JSON: {e}")
            if not isinstance(dash, dict):
                raise InputError(f"{a.dashboard}: not a dashboard (a JSON object expected)")
            found = dashboard_exprs(dash)
            if not found:
                raise InputError(f"{a.dashboard}: no PromQL expressions found")
            queries += [(w, substitute(e, a.variables)) for w, e in found]
        for path in a.rules:
            found = rule_exprs(path)
            if not found:
                raise InputError(f"{path}: no rule expressions found")
            queries += found
        queries += [(f"--expr {i + 1}", substitute(e, a.variables)) for i, e in enumerate(a.expr)]
    except (InputError, OSError, UnicodeDecodeError) as e:
        print(f"queries.py: {e}", file=sys.stderr)
        print("queries: 0 passed, 1 failed")
        return 1

    passed = failed = 0
    for n, (where, query) in enumerate(queries):
        try:
            d = instant_query(a.prom, query, a.timeout)
        except Unreachable as e:
            print(f"ERROR {where}: {e}")
            failed += len(queries) - n
            print(f"      ({len(queries) - n - 1} more queries not run)")
            break
        show = a.verbose
        if d.get("status") != "success":
            failed += 1
            show = True
            print(f"ERROR {where}: {d.get('errorType')}: {d.get('error')}")
        else:
            result = (d.get("data") or {}).get("result")
            series = len(result) if isinstance(result, list) else 1  # scalar, string: a value
            if series:
                passed += 1
                print(f"ok    {where}: {series} series")
            elif a.allow_empty:
                passed += 1
                print(f"empty {where}: no series (allowed by --allow-empty)")
            else:
                failed += 1
                show = True
                print(f"EMPTY {where}: no series")
        if show:
            print("      query: " + " ".join(query.split()))
    print(f"queries: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
