#!/usr/bin/env bash
# Debian's headless-capable Chromium for the web UI's browser tests (Playwright drives it through
# executable_path, so Playwright never downloads a browser). Needs apt: as root, or with
# passwordless sudo; otherwise it says so and the browser tests skip with that reason.
set -euo pipefail
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  sudo=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo="sudo -n"
else
  echo "WARNING: chromium is missing and apt needs root: the browser tests will be skipped" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "WARNING: chromium is missing and this is not a Debian/Ubuntu machine: the browser tests will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "==> $(chromium --version 2>/dev/null | head -1)"
