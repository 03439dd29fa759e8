#!/usr/bin/env bash
# Vendor three.js into the web UI's static files at build time (never fetched from a CDN when the
# page runs). Pinned; from the npm registry. Idempotent. Without npm the UI still works and says
# that its 3D view is unavailable.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.170.0
vendor=src/posegraph/ui/static/vendor
if [ -f "$vendor/three-$version.stamp" ]; then
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "WARNING: npm not found: the web UI will run without its 3D view (three.js is vendored with npm)" >&2
  exit 0
fi
work=$(mktemp -d)
(cd "$work" && npm pack --silent "three@$version" >/dev/null && tar xzf "three-$version.tgz")
mkdir -p "$vendor"
rm -f "$vendor"/three-*.stamp
cp "$work/package/build/three.module.min.js" "$vendor/three.module.min.js"
cp "$work/package/examples/jsm/controls/OrbitControls.js" "$vendor/OrbitControls.js"
cp "$work/package/LICENSE" "$vendor/three.LICENSE"
touch "$vendor/three-$version.stamp"
rm -rf "$work"
echo "==> three.js $version vendored into $vendor"
