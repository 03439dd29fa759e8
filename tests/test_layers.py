"""posegraph's layers, enforced by a tool (import-linter's contracts in pyproject.toml), not by grep.

One `layers` contract orders every top-level module, from the command line down to the frame
document; further contracts forbid direct and indirect imports, function-level ones included:
stages and networks know nothing of serving, graphs, jobs, the operator or the UI; the operator
and the graph router import no model code, model server or web framework.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout and "7 kept" in result.stdout, result.stdout[-2000:]


@pytest.mark.parametrize("module,leak,reported", [
    # a stage that reaches up into the job runner: the layers and the stages' own contract
    ("stages/detect.py", "from ..jobs import runner", "posegraph.stages.detect -> posegraph.jobs.runner"),
    # the cycle this contract ended (motion's export read the results store): motion is below jobs
    ("motion/bvh.py", "from ..jobs import store", "posegraph.motion.bvh -> posegraph.jobs.store"),
    # and the other one (a network read the catalogue's strides): nets are below the catalogue
    ("models/nets/rtmdet.py", "from ..zoo import RTMDET_STRIDES", "posegraph.models.nets.rtmdet -> posegraph.models.zoo"),
], ids=["stage-to-jobs", "motion-to-jobs", "nets-to-zoo"])
def test_a_broken_contract_is_caught(tmp_path, module, leak, reported):
    """The check can fail: one import against the layers, even inside a function, is reported."""
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "static"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    stage = copy / "src" / "posegraph" / module
    stage.write_text(stage.read_text() + f"\n\ndef _leak():\n    {leak}  # noqa: F401\n")
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=copy, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(copy / "src"), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0, result.stdout[-2000:]
    assert reported in result.stdout, result.stdout[-3000:]


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


def test_the_architecture_page_names_every_module_in_the_contracts_order():
    """docs/architecture.md's layout lists the layers of pyproject.toml's `layers` contract, in its
    order, and that contract covers every top-level module and package of src/posegraph."""
    import re
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    in_contract = [name.strip() for layer in layers for name in layer.split("|")]
    source = ROOT / "src" / "posegraph"
    modules = {p.stem for p in source.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in source.iterdir() if (p / "__init__.py").is_file()}
    assert sorted(in_contract) == sorted(modules), "a module the layers contract does not place"
    page = (ROOT / "docs" / "architecture.md").read_text()
    block = page.split("## Layout and layers", 1)[1].split("```", 2)[1]
    listed = [m.group(1) for m in re.finditer(r"(?<![\w.])([a-z_0-9]+)(?:\.py|/)(?=[\s|]|$)", block)
              if m.group(1) != "posegraph"]
    assert listed == in_contract, "docs/architecture.md's layout differs from the layers contract"
    # and each package grouped by what it holds has a contract of its own, over every module in
    # it, whose order the page writes out under the package ("a → b | c")
    for contract in contracts:
        if contract["type"] != "layers" or contract["containers"] == ["posegraph"]:
            continue
        package = source.joinpath(*contract["containers"][0].split(".")[1:])
        inner = sorted(name.strip() for layer in contract["layers"] for name in layer.split("|"))
        assert inner == sorted({p.stem for p in package.glob("*.py") if p.stem != "__init__"} | {
            p.name for p in package.iterdir() if (p / "__init__.py").is_file()}), f"{package.name}: a module unplaced"
        assert " → ".join(contract["layers"]) in block, f"{package.name}'s order is not on the page"
    # and its table names every module inside every package, by its path in the package
    table = page.split("### Inside the packages", 1)[1]
    named = set(re.findall(r"^\| `([a-z_0-9/]+\.py)` \|", table, re.M))
    inside = {str(p.relative_to(source)) for p in source.glob("*/**/*.py") if p.name != "__init__.py"}
    assert sorted(inside - named) == [], "modules the page's table does not name"
    assert sorted(named - inside) == [], "the page's table names modules that do not exist"


def test_no_function_is_long_without_a_reason():
    """Functions over 60 lines say why, in a `# Long on purpose:` comment just above them."""
    import ast

    long = []
    for path in sorted((ROOT / "src" / "posegraph").rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if not lines[first - 2].strip().startswith("# Long on purpose:"):
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
                                f"({node.end_lineno - node.lineno + 1} lines)")
    assert not long, "split these, or say why not:\n" + "\n".join(long)


def test_imports_inside_functions_say_why():
    """A function-level import of a posegraph module hides a layer (grimp sees it; a reader does
    not): each one says why it is not at the top, in a `# lazy:` comment just above it (cli.py
    says it once, for all of its commands)."""
    import ast

    unexplained = []
    for path in sorted((ROOT / "src" / "posegraph").rglob("*.py")):
        text = path.read_text()
        if path.name == "cli.py" and "\n# lazy: each command imports" in text:
            continue
        lines = text.splitlines()
        for function in ast.walk(ast.parse(text)):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("posegraph")):
                    above = [line.strip() for line in lines[max(0, node.lineno - 4):node.lineno - 1]]
                    if not any(line.startswith("# lazy:") for line in above):
                        unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno} {lines[node.lineno - 1].strip()}")
    assert not unexplained, "move to the top, or say why not (# lazy: ...):\n" + "\n".join(unexplained)
