#!/usr/bin/env python3
"""Checks one rendering of deploy/kubernetes (`kubectl kustomize DIR`) for what a schema cannot
see; check.sh runs it on the default, each overlay and every combination of components.

  check_render.py RENDERED.yaml --components redis,intercept [--fusebox BIN] [--ca DIR]
                  [--e2e] [--crds-out FILE.json] [--cache DIR]

- The optional pieces appear exactly when their component is in: FUSEBOX_REDIS and the Redis
  (redis), the PodMonitor and PrometheusRule (prometheus-operator), the dashboard ConfigMap
  (grafana), the CA, `intercept = true` and the app's CA variables (intercept). The base alone
  has no kind outside Kubernetes' own.
- Every volume a container mounts exists, every ConfigMap and Secret a volume names is in the
  rendering (or is fusebox-ca, which the user creates), and the app's container never gets
  the CA key.
- The example app's call is one the policy governs: http:// to a `tls = true` policy, or
  https:// to an `intercept = true` one.
- With --fusebox: the rendered policies pass `fusebox check --strict` as that pod's fusebox
  would run them (its --redis, a CA at --ca-dir when FUSEBOX_CA_DIR is set); without Redis the
  one warning allowed is fleet-without-redis. With --e2e as well: fusebox runs those policies
  on loopback and the app's own call (its URL, proxy and CA variables) goes through it; the
  answer must come from the pipeline of the app's policy (x-fusebox-upstream), inside TLS when
  intercepted. The example host does not resolve, so that answer is fusebox's 502 or 504.
- --crds-out writes the Prometheus Operator objects as JSON for validate_crds.mjs.
Needs PyYAML (kubernetes-validate's environment has it) and, for --e2e, curl.
"""
import argparse
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import yaml

COMPONENTS = ("redis", "prometheus-operator", "grafana", "intercept")
OPERATOR_KINDS = {"PodMonitor", "PrometheusRule"}
USER_SECRETS = {"fusebox-ca"}  # created by the user from `fusebox ca init` (README.md)
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
              "http_proxy", "https_proxy", "all_proxy", "no_proxy")

failures = []


def fail(message):
    failures.append(message)


def expect(condition, message):
    if not condition:
        fail(message)


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def inspect(docs, components):
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    has = {c: c in components for c in COMPONENTS}

    kinds = set(by_kind)
    expect(kinds & OPERATOR_KINDS == (OPERATOR_KINDS if has["prometheus-operator"] else set()),
           f"operator kinds {sorted(kinds & OPERATOR_KINDS)} with prometheus-operator="
           f"{has['prometheus-operator']}")
    expect(("fusebox-redis" in by_kind.get("Deployment", {}))
           == ("fusebox-redis" in by_kind.get("Service", {})) == has["redis"],
           "the Redis Deployment and Service must come with components/redis, and only then")
    expect(("fusebox-grafana-dashboard" in by_kind.get("ConfigMap", {})) == has["grafana"],
           "the dashboard ConfigMap must come with components/grafana, and only then")

    deployment = by_kind["Deployment"]["example-app"]
    pod = deployment["spec"]["template"]["spec"]
    sidecar = next(c for c in pod["initContainers"] if c["name"] == "fusebox")
    app = next(c for c in pod["containers"] if c["name"] == "app")
    expect(sidecar.get("restartPolicy") == "Always", "fusebox must be a native sidecar")
    fenv, aenv = env_of(sidecar), env_of(app)
    expect(("FUSEBOX_REDIS" in fenv) == has["redis"],
           f"FUSEBOX_REDIS set={'FUSEBOX_REDIS' in fenv} with redis={has['redis']}")
    if has["redis"]:
        service = by_kind["Service"]["fusebox-redis"]
        port = service["spec"]["ports"][0]["port"]
        expect(fenv["FUSEBOX_REDIS"] == f"redis://fusebox-redis:{port}",
               f"FUSEBOX_REDIS {fenv['FUSEBOX_REDIS']} is not the Service fusebox-redis:{port}")
    expect(("FUSEBOX_CA_DIR" in fenv) == has["intercept"],
           f"FUSEBOX_CA_DIR set={'FUSEBOX_CA_DIR' in fenv} with intercept={has['intercept']}")

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for container in pod["initContainers"] + pod["containers"]:
        for mount in container.get("volumeMounts", []):
            expect(mount["name"] in volumes,
                   f"{container['name']} mounts {mount['name']}, which is no volume")
    for volume in volumes.values():
        if "configMap" in volume:
            expect(volume["configMap"]["name"] in by_kind.get("ConfigMap", {}),
                   f"volume {volume['name']}: no ConfigMap {volume['configMap']['name']}")
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            expect(name in by_kind.get("Secret", {}) or name in USER_SECRETS,
                   f"volume {volume['name']}: no Secret {name}")
    if has["intercept"]:
        ca_mount = next((m["mountPath"] for m in sidecar.get("volumeMounts", [])
                         if volumes.get(m["name"], {}).get("secret", {}).get("secretName")
                         == "fusebox-ca"), None)
        expect(ca_mount == fenv["FUSEBOX_CA_DIR"],
               f"FUSEBOX_CA_DIR {fenv['FUSEBOX_CA_DIR']} is not where fusebox-ca is mounted")
    for mount in app.get("volumeMounts", []):
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret and secret["secretName"] == "fusebox-ca":
            keys = [item["key"] for item in secret.get("items", [])]
            expect(keys == ["ca.pem"], f"the app's volume {mount['name']} holds {keys or 'all'}"
                   " of fusebox-ca: only ca.pem may reach the app")

    policies = by_kind["ConfigMap"]["fusebox-policies"]["data"]
    payments = policies["payments.toml"]
    intercepts = bool(re.search(r"^intercept = true$", payments, re.M))
    expect(intercepts == has["intercept"],
           f"payments.toml intercept={intercepts} with intercept={has['intercept']}")
    url = re.search(r"(https?)://([^/\s';]+)[^\s';]*", " ".join(app["command"]))
    host = re.search(r'^hosts = \["([^"]+)"\]', payments, re.M).group(1)
    expect(url and url.group(2) == host, f"the app does not call the payments host {host}")
    if url:
        if url.group(1) == "http":
            expect(re.search(r"^tls = true$", payments, re.M),
                   "the app calls http:// but payments.toml has no tls = true")
        else:
            expect(intercepts, "the app calls https:// without interception: a tunnel only")
    trust = ("CURL_CA_BUNDLE", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")
    expect(all(v in aenv for v in trust) == has["intercept"]
           and any(v in aenv for v in trust) == has["intercept"],
           f"the app's CA variables with intercept={has['intercept']}")
    return {"policies": policies, "sidecar_env": fenv, "app": app, "app_env": aenv,
            "url": url.group(0) if url else None, "pod": pod, "volumes": volumes,
            "operator": [d for d in docs if d["kind"] in OPERATOR_KINDS]}


def fusebox_args(seen, ca_dir):
    env = seen["sidecar_env"]
    args = []
    if "FUSEBOX_REDIS" in env:
        args += ["--redis", env["FUSEBOX_REDIS"]]
    if "FUSEBOX_CA_DIR" in env:
        args += ["--ca-dir", ca_dir]
    return args


def check_policies(fusebox, seen, ca_dir, work, cache):
    policies = work / "policies"
    policies.mkdir()
    for name, text in seen["policies"].items():
        (policies / name).write_text(text)
    env = seen["sidecar_env"]
    args = ["--listen", env["FUSEBOX_LISTEN"], "--admin", env["FUSEBOX_ADMIN"],
            *fusebox_args(seen, ca_dir)]
    # Renderings with the same policies and options need one `fusebox check` between them.
    key = hashlib.sha256(json.dumps([seen["policies"], args]).encode()).hexdigest()
    if cache and (pathlib.Path(cache) / key).exists():
        return policies
    cmd = [fusebox, "check", "--strict", "--format", "json", "--policies", str(policies)]
    done = subprocess.run(cmd + args, capture_output=True, text=True)
    report = json.loads(done.stdout)
    for e in report["errors"]:
        fail(f"fusebox check: {e['file']}:{e['line']}:{e['col']}: {e['message']}")
    allowed = set() if "FUSEBOX_REDIS" in env else {"fleet-without-redis"}
    for w in report["warnings"]:
        expect(w["code"] in allowed, f"fusebox check: warning[{w['code']}]: {w['message']}")
    if cache and not failures:
        (pathlib.Path(cache) / key).touch()
    return policies


def end_to_end(fusebox, seen, ca_dir, policies, work):
    """fusebox with the rendered policies, and the app's call through it as in the pod."""
    log = open(work / "fusebox.log", "w+")
    cmd = [fusebox, "run", "--policies", str(policies), "--listen", "127.0.0.1:0",
           "--admin", "127.0.0.1:0", *fusebox_args(seen, ca_dir)]
    clean = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    agent = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=clean)
    try:
        egress = None
        for _ in range(100):
            log.seek(0)
            found = re.search(r"fusebox is ready egress=(\S+)", log.read())
            if found:
                egress = found.group(1)
                break
            if agent.poll() is not None:
                break
            time.sleep(0.1)
        if egress is None:
            log.seek(0)
            fail("fusebox did not start with the rendered policies:\n" + log.read())
            return
        # The app's environment, with fusebox's real port and the CA's local directory.
        env = dict(clean)
        app_mounts = {m["mountPath"]: m["name"] for m in seen["app"].get("volumeMounts", [])}
        for name, value in seen["app_env"].items():
            value = value.replace(seen["sidecar_env"]["FUSEBOX_LISTEN"], egress)
            for path in app_mounts:
                value = value.replace(path, ca_dir)
            env[name] = value
        curl = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-D", "-", "--max-time", "20",
                               seen["url"]], capture_output=True, text=True, env=env)
        upstream = re.search(r"^x-fusebox-upstream: (\S+)", curl.stdout, re.M | re.I)
        expect(upstream and upstream.group(1) == "payments",
               f"the app's call {seen['url']} got no answer from the payments policy's pipeline"
               f" (curl exit {curl.returncode}: {curl.stderr.strip()}; {curl.stdout.strip()!r})")
        if seen["url"].startswith("https://"):
            time.sleep(0.2)
            log.seek(0)
            expect(re.search(r"fusebox::access: upstream=payments .*intercepted=true", log.read()),
                   "the app's https:// call was not intercepted")
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        log.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rendered")
    parser.add_argument("--components", default="")
    parser.add_argument("--fusebox")
    parser.add_argument("--ca", help="a CA directory from `fusebox ca init`")
    parser.add_argument("--e2e", action="store_true")
    parser.add_argument("--crds-out")
    parser.add_argument("--cache", help="a directory remembering policies already checked")
    args = parser.parse_args()
    components = {c for c in args.components.split(",") if c}
    unknown = components - set(COMPONENTS)
    if unknown:
        sys.exit(f"unknown components: {sorted(unknown)}")
    docs = [d for d in yaml.safe_load_all(open(args.rendered)) if d]
    seen = inspect(docs, components)
    if args.crds_out:
        pathlib.Path(args.crds_out).write_text(json.dumps(seen["operator"]))
    if args.fusebox and not failures:
        with tempfile.TemporaryDirectory() as tmp:
            work = pathlib.Path(tmp)
            policies = check_policies(args.fusebox, seen, args.ca, work, args.cache)
            if args.e2e and not failures:
                end_to_end(args.fusebox, seen, args.ca, policies, work)
    for message in failures:
        print(f"{args.rendered}: {message}", file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
