#!/usr/bin/env bash
# The Khronos glTF validator (the reference checker of glTF 2.0 files, compiled from Dart to one
# dependency-free JS file) for the glTF export tests (tests/test_gltf.py), from npm:
#   $POSEGRAPH_CACHE/gltf-validator/<version>/node_modules/gltf-validator
# Prints that folder on success; scripts/gltf-validate.mjs runs it on a file:
#   node scripts/gltf-validate.mjs "$(scripts/install-gltf-validator.sh)" track.glb
# Idempotent (a second call only prints the folder); a machine without npm or node gets a warning,
# and the validator tests then skip saying why.
set -euo pipefail
VERSION="${POSEGRAPH_GLTF_VALIDATOR_VERSION:-2.0.0-dev.3.10}"
dir="${POSEGRAPH_CACHE:-$HOME/.cache/posegraph}/gltf-validator/$VERSION"
package="$dir/node_modules/gltf-validator"
warn() { printf 'WARNING: %s: the glTF validator tests will be skipped\n' "$*" >&2; }

if [ -f "$package/package.json" ]; then
  echo "$package"
  exit 0
fi
command -v node >/dev/null || { warn "node not found"; exit 0; }
command -v npm >/dev/null || { warn "npm not found"; exit 0; }
# Installed beside the final folder and renamed into place: an interrupted install is never taken
# for a complete one. --ignore-scripts: the package has none, and a registry package runs nothing here.
rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
if ! npm install --prefix "$dir.tmp" --no-save --no-package-lock --ignore-scripts --no-audit --no-fund \
     --silent "gltf-validator@$VERSION" >&2; then
  warn "npm install gltf-validator@$VERSION failed"
  rm -rf "$dir.tmp"
  exit 0
fi
rm -rf "$dir" && mv "$dir.tmp" "$dir"
printf '==> gltf-validator %s in %s\n' "$VERSION" "$dir" >&2
echo "$package"
