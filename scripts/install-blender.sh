#!/usr/bin/env bash
# Debian's Blender, headless, for the motion export tests (tests/test_blender.py imports the BVH,
# GLB and FBX exports into it) and for FBX export (posegraph.motion.blender runs it to convert GLB
# to FBX). With python3-numpy: Blender's glTF importer imports numpy, and Debian's blender package
# (3.4) does not depend on it. Idempotent: prints one line, the Blender it found or installed.
# Needs apt: as root, or with passwordless sudo; otherwise it says so and the Blender tests skip
# with that reason. A Blender of your own (blender.org's build) is used through $POSEGRAPH_BLENDER.
set -euo pipefail
warn() { printf 'WARNING: %s: the Blender tests will be skipped\n' "$*" >&2; }
# Blender starts, and its Python can import numpy (about a second).
works() { "$1" -b --factory-startup -noaudio --python-exit-code 1 --python-expr "import numpy" >/dev/null 2>&1; }
found() { echo "==> $("$1" --version 2>/dev/null | head -1) ($(command -v "$1"))$2"; }

if [ -n "${POSEGRAPH_BLENDER:-}" ]; then
  if works "$POSEGRAPH_BLENDER"; then found "$POSEGRAPH_BLENDER" " from POSEGRAPH_BLENDER"
  else warn "POSEGRAPH_BLENDER=$POSEGRAPH_BLENDER does not run, or its Python cannot import numpy"; fi
  exit 0
fi
if command -v blender >/dev/null && works blender; then
  found blender ""
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  sudo=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo="sudo -n"
else
  warn "blender (with python3-numpy) is missing and apt needs root"
  exit 0
fi
command -v apt-get >/dev/null || { warn "blender is missing and this is not a Debian/Ubuntu machine"; exit 0; }
export DEBIAN_FRONTEND=noninteractive
if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends blender python3-numpy; } >/dev/null 2>&1; then
  warn "apt-get install blender python3-numpy failed"
  exit 0
fi
found blender ", installed with python3-numpy"
