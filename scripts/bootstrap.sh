#!/usr/bin/env bash
# Create/refresh the project virtualenv (.venv). Idempotent: a stamp skips work already done.
#   scripts/bootstrap.sh run    what `posegraph` needs (torch, onnxruntime, ...)
#   scripts/bootstrap.sh test   plus pytest, SeaweedFS and the OpenMMLab reference stack
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
venv="${POSEGRAPH_VENV:-.venv}"
python="${PYTHON:-python3}"

step() { printf '\n==> %s\n' "$*"; }
pip_install() { python -m pip install --quiet --disable-pip-version-check "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }

if [ ! -x "$venv/bin/python" ]; then
  step "creating $venv"
  "$python" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"

# The images' pins are the venv's constraints: what the tests run is what the images carry
# (tests/test_images.py checks it). Without them a fresh machine took the newest boto3, a day
# after the images had pinned the one before, and the check failed.
# (pip refuses extras in a constraint: psycopg[binary] constrains psycopg.)
image_pins=(-c "$venv/image-pins.txt")
fingerprint=$(cat pyproject.toml requirements/*.txt operators/requirements.txt model-servers/requirements-*.txt \
              scripts/bootstrap.sh | sha256sum | cut -c1-16)
stamp="$venv/.bootstrap-$mode-$fingerprint"
if [ -f "$stamp" ]; then
  exit 0
fi
started=$(date +%s)
sed -e 's/\[[^]]*\]//' operators/requirements.txt model-servers/requirements-kserve.txt \
    model-servers/requirements-torchserve.txt > "$venv/image-pins.txt"

case "$mode" in
  run)
    step "PyTorch (requirements/torch.txt: the one build for run and test)"
    pip_install -r requirements/torch.txt
    step "posegraph"
    pip_install -e ".[models,serve,postgres,operator,ui]" "${image_pins[@]}"
    scripts/vendor-ui.sh
    ;;
  test)
    step "PyTorch (requirements/torch.txt: the one build for run and test)"
    pip_install -r requirements/torch.txt
    step "posegraph with test tools"
    pip_install -e ".[models,serve,postgres,operator,ui,test]" "${image_pins[@]}"
    scripts/vendor-ui.sh
    step "OpenMMLab reference stack (for the fidelity tests only)"
    pip_install -r requirements/mm-reference-deps.txt "${image_pins[@]}"
    pip_install --no-deps -r requirements/mm-reference.txt
    pip_install --force-reinstall --no-deps --no-build-isolation --no-binary xtcocotools "xtcocotools==1.14.3"
    step "helm 3 + helm 4 and kubectl (chart tests)"
    scripts/install-helm.sh
    step "Chromium for the browser tests (Debian's package; Playwright drives it)"
    scripts/install-chromium.sh
    step "An RTSP server (mediamtx, from its Go module) and ffmpeg for the live stream tests"
    scripts/install-rtsp.sh >/dev/null
    step "The Khronos glTF validator (npm) for the glTF export tests"
    scripts/install-gltf-validator.sh >/dev/null
    step "Blender (Debian's) for the BVH/GLB import tests and the FBX export"
    scripts/install-blender.sh
    step "BlazePose's weights, out of the mediapipe wheel on PyPI (real weights for the tests)"
    "$venv/bin/posegraph" models fetch --profile real-offline \
      --dir "${POSEGRAPH_CACHE:-$HOME/.cache/posegraph}/blazepose" >/dev/null
    ;;
  *)
    echo "usage: $0 run|test" >&2
    exit 2
    ;;
esac
touch "$stamp"
echo "==> $venv ready for '$mode' in $(( $(date +%s) - started ))s"
