#!/usr/bin/env bash
# Validates deploy/kubernetes offline (CI runs it from .ci/run):
#   1. prometheusrule.yaml and grafana-dashboard.yaml are what generate.py makes from
#      dashboards/alerts.yml and dashboards/fusebox.json (they cannot drift);
#   2. every built-in resource passes `kubernetes-validate --strict` against Kubernetes 1.29, the
#      first version with native sidecars (an unknown field is an error);
#   3. the PrometheusRule's rules pass `promtool check rules`; the operator's own kinds
#      (PodMonitor, PrometheusRule) have no schema in kubernetes-validate, so their required
#      fields are checked here.
# Needs: python3, promtool, and kubernetes-validate ($KUBERNETES_VALIDATE, or on PATH).
set -euo pipefail
cd "$(dirname "$0")"
KV=${KUBERNETES_VALIDATE:-kubernetes-validate}
PROMTOOL=${PROMTOOL:-promtool}

python3 generate.py --check

core=(policies.yaml admin-token.yaml deployment.yaml grafana-dashboard.yaml redis/redis.yaml)
"$KV" --strict --kubernetes-version 1.29.0 "${core[@]}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The spec of the PrometheusRule, dedented, is a rule file.
sed -n '/^spec:$/,$p' prometheusrule.yaml | tail -n +2 | sed 's/^  //' >"$work/rules.yml"
"$PROMTOOL" check rules "$work/rules.yml"
grep -q '^kind: PrometheusRule$' prometheusrule.yaml
grep -q '^apiVersion: monitoring.coreos.com/v1$' podmonitor.yaml
grep -q '^kind: PodMonitor$' podmonitor.yaml
grep -q '^    - port: admin$' podmonitor.yaml
grep -q 'fusebox.io/sidecar: "true"' podmonitor.yaml
grep -q 'fusebox.io/sidecar: "true"' deployment.yaml
for f in "${core[@]}" podmonitor.yaml prometheusrule.yaml; do
  grep -q "^  - $f$" kustomization.yaml || [ "$f" = redis/redis.yaml ] || { echo "$f is not in kustomization.yaml" >&2; exit 1; }
done
echo "deploy/kubernetes: all manifests valid"
