"""Validate manifests against CustomResourceDefinition schemas, strictly.

The API server prunes fields a CRD does not declare, so a typo in a generated object would vanish
silently in a cluster. Here an undeclared field is an error: every object schema that lists
``properties`` gets ``additionalProperties: false``, unless it preserves unknown fields.
"""

from __future__ import annotations

import copy
import hashlib
import json
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml
from containers import REAL_CACHE

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


# KServe's InferenceService CRD is ~2 MB of YAML: libyaml's loader reads it ~10x faster than the
# pure-Python one, and a validator made once per schema skips jsonschema.validate's check of the
# schema itself on every call (together ~60 s of the graph tests, 2026-12-06).
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@lru_cache(maxsize=None)
def crd_schema(path: str, version: str):
    crd = yaml.load(Path(path).read_text(), Loader=_Loader)
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
    kind, _ = crd_schema(str(crd_path), version)
    assert manifest["kind"] == kind, f"{manifest['kind']} is not {kind}"
    error = jsonschema.exceptions.best_match(_validator(str(crd_path), version).iter_errors(manifest))
    if error is not None:
        raise error


def _check_schema_once(cls, schema) -> None:
    """A broken schema still fails loudly, but a schema that passed is remembered by its content:
    the check took 9.4 s for KServe's InferenceService CRD on this machine (2026-12-07), in every
    test process that validated against it."""
    digest = hashlib.sha256(json.dumps([cls.__name__, jsonschema.__version__, schema], sort_keys=True)
                            .encode()).hexdigest()[:24]
    passed = REAL_CACHE / "tests" / "schemas-checked" / digest
    if passed.is_file():
        return
    cls.check_schema(schema)
    passed.parent.mkdir(parents=True, exist_ok=True)
    passed.write_text("passed jsonschema's check_schema\n")


@lru_cache(maxsize=None)
def _validator(path: str, version: str):
    _, schema = crd_schema(path, version)
    cls = jsonschema.validators.validator_for(schema)
    _check_schema_once(cls, schema)
    return cls(schema)
