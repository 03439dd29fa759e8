"""Validate manifests against CustomResourceDefinition schemas, strictly.

The API server prunes fields a CRD does not declare, so a typo in a generated object would vanish
silently in a cluster. Here an undeclared field is an error: every object schema that lists
``properties`` gets ``additionalProperties: false``, unless it preserves unknown fields.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml

KSERVE_CRDS = Path(__file__).parent / "data" / "kserve-crds"


def strict(schema):
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@lru_cache(maxsize=None)
def crd_schema(path: str, version: str):
    crd = yaml.safe_load(Path(path).read_text())
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return crd["spec"]["names"]["kind"], strict(v["schema"]["openAPIV3Schema"])
    raise KeyError(f"{path} has no version {version}")


def kserve_crd_for(manifest) -> tuple[str, str]:
    group_version = manifest["apiVersion"]
    kind = manifest["kind"]
    files = {
        "InferenceService": "serving.kserve.io_inferenceservices.yaml",
        "InferenceGraph": "serving.kserve.io_inferencegraphs.yaml",
        "ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
        "ClusterServingRuntime": "serving.kserve.io_clusterservingruntimes.yaml",
    }
    return str(KSERVE_CRDS / files[kind]), group_version.split("/")[1]


def validate(manifest, crd_path: str | None = None, version: str | None = None) -> None:
    """Raise jsonschema.ValidationError if ``manifest`` does not fit its CRD exactly."""
    if crd_path is None:
        crd_path, version = kserve_crd_for(manifest)
    kind, schema = crd_schema(str(crd_path), version)
    assert manifest["kind"] == kind, f"{manifest['kind']} is not {kind}"
    jsonschema.validate(manifest, schema)
