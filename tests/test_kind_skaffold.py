"""kind-config.yaml and skaffold.yaml, checked against the chart and the Dockerfiles they name.
Neither kind nor skaffold can run here (no container engine), so these tests check what can go
wrong without them: names, targets, ports and labels that must agree across files, and that the
chart renders with the values skaffold would set (through real helm)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from test_chart import CHART, NS, by_kind, helm, helm_binary

REPO = Path(__file__).resolve().parents[1]
KIND = yaml.safe_load((REPO / "kind-config.yaml").read_text())
SKAFFOLD = yaml.safe_load((REPO / "skaffold.yaml").read_text())
VALUES_KIND = yaml.safe_load((CHART / "values-kind.yaml").read_text())


def test_kind_maps_the_graph_node_port_to_the_host():
    mappings = [m for node in KIND["nodes"] for m in node.get("extraPortMappings", [])]
    ports = {m["containerPort"]: m for m in mappings}
    assert VALUES_KIND["pipeline"]["nodePort"] in ports
    assert all(m["listenAddress"] == "127.0.0.1" for m in mappings), "bind the host side to loopback only"


def test_kind_maps_the_ui_node_port_to_the_host():
    ports = {m["containerPort"] for node in KIND["nodes"] for m in node.get("extraPortMappings", [])}
    assert VALUES_KIND["ui"]["enabled"] and VALUES_KIND["ui"]["nodePort"] in ports


def test_kind_has_a_labelled_gpu_pool_worker_for_the_stages_that_select_it():
    pools = {node.get("labels", {}).get("posegraph.io/pool") for node in KIND["nodes"] if node["role"] == "worker"}
    selected = {s.get("nodeSelector", {}).get("posegraph.io/pool")
                for s in VALUES_KIND["pipeline"]["stages"].values()} - {None}
    assert selected == {"gpu"} and selected <= pools


def _dockerfile_targets(path: Path) -> set[str]:
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", path.read_text(), flags=re.MULTILINE | re.IGNORECASE))


def _artifacts(config: dict) -> list[dict]:
    return config["build"]["artifacts"]


def _apply_patches(config: dict, patches: list[dict]) -> dict:
    """The JSON-patch subset skaffold profiles use here: add (with /-) and replace."""
    config = copy.deepcopy(config)
    for patch in patches:
        *parents, last = [p for p in patch["path"].split("/") if p]
        target = config
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if patch["op"] == "add" and last == "-":
            target.append(patch["value"])
        elif patch["op"] in ("add", "replace"):
            target[int(last) if isinstance(target, list) else last] = patch["value"]
        else:
            raise AssertionError(f"unexpected patch op {patch['op']}")
    return config


def _profiles() -> dict[str, dict]:
    out = {"default": SKAFFOLD}
    for profile in SKAFFOLD["profiles"]:
        out[profile["name"]] = _apply_patches(SKAFFOLD, profile.get("patches", []))
    return out


@pytest.mark.parametrize("profile", ["default", "kind", "eks"])
def test_every_artifact_builds_from_an_existing_dockerfile_target(profile):
    for artifact in _artifacts(_profiles()[profile]):
        dockerfile = REPO / artifact.get("context", ".") / artifact["docker"]["dockerfile"]
        assert dockerfile.exists(), dockerfile
        assert artifact["docker"]["target"] in _dockerfile_targets(dockerfile), artifact


def _sanitized(image: str) -> str:
    return re.sub(r"[/\-.:]", "_", image)  # skaffold's rule for template variable names


@pytest.mark.parametrize("profile", ["default", "kind", "eks"])
def test_value_templates_name_built_artifacts_and_chart_values(profile, tmp_path):
    config = _profiles()[profile]
    release = config["deploy"]["helm"]["releases"][0]
    artifacts = {_sanitized(a["image"]): a for a in _artifacts(config)}
    used = set()
    fake = {}
    for key, template in release["setValueTemplates"].items():
        for kind, name in re.findall(r"\{\{\.IMAGE_(REPO|TAG|DIGEST)_([A-Za-z0-9_]+)\}\}", template):
            assert name in artifacts, f"{key}: no artifact {name}"
            used.add(name)
        # What skaffold would pass: a repository under --default-repo, a tag, a digest.
        fake[key] = re.sub(r"\{\{\.IMAGE_REPO_([A-Za-z0-9_]+)\}\}", r"registry.example/\1", template)
        fake[key] = re.sub(r"\{\{\.IMAGE_TAG_[A-Za-z0-9_]+\}\}", "abc1234", fake[key])
        fake[key] = re.sub(r"\{\{\.IMAGE_DIGEST_[A-Za-z0-9_]+\}\}", "sha256:" + "0" * 64, fake[key])
    assert used == set(artifacts), "every built image reaches the chart"
    values_files = [REPO / f for f in release["valuesFiles"]]
    args = [arg for f in values_files for arg in ("-f", str(f))]
    for key, value in {**release.get("setValues", {}), **fake}.items():
        args += ["--set-string", f"{key}={value}"]
    helm_binary("helm4")
    out = helm("helm4", "template", release["name"], str(REPO / release["chartPath"]), "-n", release["namespace"], *args)
    objects = [d for d in yaml.safe_load_all(out.stdout) if d]
    images = {c["image"] for o in objects if o["kind"] in ("Deployment", "Job")
              for c in o["spec"]["template"]["spec"]["containers"]}
    images |= {c["image"] for o in by_kind(objects, "ClusterServingRuntime") for c in o["spec"]["containers"]}
    ours = {i for i in images if "posegraph_posegraph" in i}
    assert ours and all(i.startswith("registry.example/") and ":abc1234" in i for i in ours), images
    runtimes = {o["metadata"]["name"]: o["spec"]["containers"][0]["image"] for o in by_kind(objects, "ClusterServingRuntime")}
    if profile == "eks":
        assert "stage_torchserve_cuda" in runtimes["posegraph-torchserve-gpu"]
        assert all("@sha256:" in i for i in ours), "pushed images are pinned by digest"
    assert release["namespace"] == NS
