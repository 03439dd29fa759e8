"""posegraph's layers, enforced by a tool (import-linter's contracts in pyproject.toml), not by grep.

Contracts forbid direct and indirect imports, function-level ones included: stages and networks
know nothing of serving, graphs, jobs, the operator or the UI; the operator and the graph router
import no model code, model server or web framework.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout and "4 kept" in result.stdout, result.stdout[-2000:]


def test_a_broken_contract_is_caught(tmp_path):
    """The check can fail: a stage module that imports the job runner breaks the first contract."""
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "static"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    stage = copy / "src" / "posegraph" / "stages" / "detect.py"
    stage.write_text(stage.read_text() + "\n\ndef _leak():\n    from ..jobs import runner  # noqa: F401\n")
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=copy, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(copy / "src"), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0, result.stdout[-2000:]
    assert "posegraph.stages.detect -> posegraph.jobs.runner" in result.stdout, result.stdout[-3000:]


def test_the_operator_process_loads_no_model_code_or_model_server():
    """At run time too (an import-linter contract sees only static imports): the operator's
    handlers load none of torch, onnxruntime, KServe's model server, FastAPI or gRPC."""
    code = ("import json, sys, posegraph.operator.handlers; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout))
    assert "kopf" in loaded  # the handlers were really imported
    assert not loaded & {"torch", "onnxruntime", "onnx", "kserve", "fastapi", "grpc", "cv2", "starlette"}, loaded
