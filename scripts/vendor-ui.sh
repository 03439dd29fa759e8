#!/usr/bin/env bash
# Vendor three.js into the web UI's static files at build time (never fetched from a CDN when the
# page runs). Pinned; from the npm registry. Idempotent. Without npm the UI still works and says
# that its 3D view is unavailable.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.170.0
vendor=src/posegraph/ui/static/vendor
# The stamp names what is vendored: a folder vendored before the GLTF loader came gets it now.
stamp="$vendor/three-$version-gltf.stamp"
if [ -f "$stamp" ]; then
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
# The job page's motion view: GLTFLoader and what it imports ("three" through the page's import map,
# ../utils/BufferGeometryUtils.js relatively: the examples/jsm tree is mirrored so that path holds).
mkdir -p "$vendor/loaders" "$vendor/utils"
cp "$work/package/examples/jsm/loaders/GLTFLoader.js" "$vendor/loaders/GLTFLoader.js"
cp "$work/package/examples/jsm/utils/BufferGeometryUtils.js" "$vendor/utils/BufferGeometryUtils.js"
imports() { grep -hE "^(import|\}) .*from '" "$vendor/loaders/GLTFLoader.js" "$vendor/utils/BufferGeometryUtils.js" \
  | sed -E "s/.*from '([^']+)'.*/\1/" | sort -u; }
if imports | grep -vqxE "three|\.\./utils/BufferGeometryUtils\.js"; then
  echo "ERROR: GLTFLoader.js imports something not vendored: $(imports | tr '\n' ' ')" >&2
  exit 1
fi
cp "$work/package/LICENSE" "$vendor/three.LICENSE"
touch "$stamp"
rm -rf "$work"
echo "==> three.js $version vendored into $vendor"
