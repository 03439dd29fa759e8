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

fingerprint=$(cat pyproject.toml requirements/*.txt scripts/bootstrap.sh | sha256sum | cut -c1-16)
stamp="$venv/.bootstrap-$mode-$fingerprint"
if [ -f "$stamp" ]; then
  exit 0
fi
started=$(date +%s)

case "$mode" in
  run)
    step "PyTorch (requirements/torch.txt: the one build for run and test)"
    pip_install -r requirements/torch.txt
    step "posegraph"
    pip_install -e ".[models,serve,postgres,operator,ui]"
    scripts/vendor-ui.sh
    ;;
  test)
    step "PyTorch (requirements/torch.txt: the one build for run and test)"
    pip_install -r requirements/torch.txt
    step "posegraph with test tools"
    pip_install -e ".[models,serve,postgres,operator,ui,test]"
    scripts/vendor-ui.sh
    step "OpenMMLab reference stack (for the fidelity tests only)"
    pip_install -r requirements/mm-reference-deps.txt
    pip_install --no-deps -r requirements/mm-reference.txt
    pip_install --force-reinstall --no-deps --no-build-isolation --no-binary xtcocotools "xtcocotools==1.14.3"
    step "helm 3 + helm 4 and kubectl (chart tests)"
    scripts/install-helm.sh
    step "Chromium for the browser tests (Debian's package; Playwright drives it)"
    scripts/install-chromium.sh
    ;;
  *)
    echo "usage: $0 run|test" >&2
    exit 2
    ;;
esac
touch "$stamp"
echo "==> $venv ready for '$mode' in $(( $(date +%s) - started ))s"
