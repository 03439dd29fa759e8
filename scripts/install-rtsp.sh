#!/usr/bin/env bash
# A real RTSP server and a publisher for `posegraph live`'s stream tests (tests/test_live.py):
#   mediamtx, built once from its Go module and cached by version under
#     $POSEGRAPH_CACHE/rtsp/mediamtx-<version>/mediamtx (prints that path on success)
#   Debian's ffmpeg, which publishes a clip to it as a camera would (apt, as root or with sudo)
# Either missing: it says why and the stream tests skip with that reason.
set -euo pipefail
MEDIAMTX_VERSION="${POSEGRAPH_MEDIAMTX_VERSION:-v1.14.0}"
cache="${POSEGRAPH_CACHE:-$HOME/.cache/posegraph}/rtsp"
dir="$cache/mediamtx-$MEDIAMTX_VERSION"
# shellcheck source=scripts/go-caches.sh
source "$(dirname "${BASH_SOURCE[0]}")/go-caches.sh"
say() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s: the RTSP tests will be skipped\n' "$*" >&2; }

if ! command -v ffmpeg >/dev/null; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"
  else sudo=none; fi
  if [ "$sudo" = none ] || ! command -v apt-get >/dev/null; then
    warn "ffmpeg is missing and cannot be installed here (apt-get as root)"
  else
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
    say "$(ffmpeg -version | head -1)"
  fi
fi

if [ -x "$dir/mediamtx" ]; then
  echo "$dir/mediamtx"
  exit 0
fi
command -v go >/dev/null || { warn "go not found (mediamtx is built from its Go module)"; exit 0; }
started=$(date +%s)
mkdir -p "$cache"
# `go install ...@version` is refused: the module proxy lists no versions of mediamtx, and go
# install asks for that list (deprecation check). The exact version downloads, so it is built in a
# writable copy of the module. Two files its `go generate` would download are embedded by the
# build: VERSION (written here) and hls.js (the HLS player page, which posegraph never serves: an
# empty stand-in). Measured: 63 s on the 2-core machine with Go's module cache cold.
mod=$(cd "$cache" && go mod download -json "github.com/bluenviron/mediamtx@$MEDIAMTX_VERSION" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
src="$cache/src-mediamtx-$MEDIAMTX_VERSION"
rm -rf "$src" && cp -r "$mod" "$src" && chmod -R u+w "$src"
echo "$MEDIAMTX_VERSION" > "$src/internal/core/VERSION"
echo "/* hls.js is not bundled: posegraph serves no HLS page */" > "$src/internal/servers/hls/hls.min.js"
mkdir -p "$dir.tmp"
(cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$dir.tmp/mediamtx" .) \
  || { warn "go build mediamtx $MEDIAMTX_VERSION failed"; rm -rf "$dir.tmp"; exit 0; }
rm -rf "$dir" && mv "$dir.tmp" "$dir" && rm -rf "$src"
say "built mediamtx $MEDIAMTX_VERSION in $(( $(date +%s) - started ))s"
echo "$dir/mediamtx"
