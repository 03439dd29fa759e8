"""The PosePipeline and PoseJob CustomResourceDefinitions, generated from the spec models.

``posegraph.graph.spec`` and ``posegraph.jobspec`` validate specs in the operator and in
``posegraph graph render``; their JSON Schemas, made structural here, are the CRDs' schemas. So
the API server and the operator accept the same fields (``python -m posegraph.generate`` writes
operators/crds/ and the chart's crds/; tests/test_generated.py fails when they are stale).

Kubernetes wants a structural schema (apiextensions.k8s.io/v1): every node typed, no ``$ref``,
no ``anyOf`` with null, ``additionalProperties`` only without ``properties``. pydantic's schema
is turned into one: references inlined, ``X | None`` as plain X (a CRD field is optional unless
required; null is not a value the operator writes), ``str | int`` as int-or-string, open maps
(``dict[str, Any]``, ``extra="allow"``) as ``x-kubernetes-preserve-unknown-fields``.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from ..graph.spec import PipelineSpec, PipelineStatus
from ..jobspec import PoseJobSpec, PoseJobStatus
from ..names import API_GROUP, API_VERSION, POSEJOBS, POSEPIPELINES

# Keys kept from pydantic's schema, in the order they are written (the rest is dropped: titles).
_ORDER = ("type", "format", "description", "enum", "default", "minimum", "maximum", "minLength", "maxLength",
          "pattern", "minItems", "maxItems", "required", "properties", "additionalProperties", "items", "anyOf",
          "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields")
_UNSUPPORTED = ("exclusiveMinimum", "exclusiveMaximum", "allOf", "oneOf", "not", "prefixItems", "patternProperties")


def structural(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s validation schema as a Kubernetes structural schema."""
    schema = model.model_json_schema(mode="validation")
    defs = schema.pop("$defs", {})
    return _node(schema, defs, model.__name__)


def _node(node: dict[str, Any], defs: dict[str, Any], where: str) -> dict[str, Any]:
    node = dict(node)
    if "$ref" in node:  # a model: inline it; the field's own keys (description, default) win
        ref = node.pop("$ref").rsplit("/", 1)[-1]
        node = {**defs[ref], **node}
    if "anyOf" in node:
        node = _any_of(node, defs, where)
        if "x-kubernetes-int-or-string" in node:
            return node
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for key in _UNSUPPORTED:
        if key in node:
            raise ValueError(f"{where}: {key} has no structural-schema form; express it another way")
    out: dict[str, Any] = {}
    if "default" in node and not isinstance(node["default"], (str, int, float, bool)):
        node.pop("default")  # None (absent) or an object: the model's own defaults apply (the operator's)
    if "properties" in node:
        out["properties"] = {name: _node(child, defs, f"{where}.{name}") for name, child in node["properties"].items()}
    extra = node.get("additionalProperties")
    if extra is True or extra == {}:
        out["x-kubernetes-preserve-unknown-fields"] = True  # an open map or extra="allow"
    elif isinstance(extra, dict):
        if "properties" in node:
            raise ValueError(f"{where}: properties and additionalProperties cannot both be set")
        out["additionalProperties"] = _node(extra, defs, f"{where}.*")
    # extra is False (extra="forbid"): the API server prunes unknown fields; nothing to say here.
    if node.get("type") == "object" and "properties" not in node and "additionalProperties" not in node:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "items" in node:
        out["items"] = _node(node["items"], defs, f"{where}[]")
    for key in ("type", "format", "description", "enum", "default", "minimum", "maximum", "minLength", "maxLength",
                "pattern", "minItems", "maxItems", "required"):
        if key in node:
            out[key] = node[key]
    if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        raise ValueError(f"{where}: no type (a structural schema types every field)")
    return {key: out[key] for key in _ORDER if key in out}


def _any_of(node: dict[str, Any], defs: dict[str, Any], where: str) -> dict[str, Any]:
    branches = [b for b in node.pop("anyOf") if b != {"type": "null"}]  # X | None: optional is enough
    types = sorted(b.get("type", "") for b in branches)
    if types == ["integer", "string"] and all(len(b) == 1 for b in branches):
        out = {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}
        if "description" in node:
            out = {"description": node["description"], **out}
        return out
    if len(branches) != 1:
        raise ValueError(f"{where}: a union of {types} has no structural-schema form")
    branch = branches[0]
    if "$ref" in branch:
        branch = {**defs[branch["$ref"].rsplit("/", 1)[-1]]}
    return {**branch, **node}


def _document(model: type[BaseModel], status: type[BaseModel]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": structural(model),
            "status": structural(status),
        },
    }


def _crd(kind: str, plural: str, short: str, columns: list[dict[str, str]], schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{API_GROUP}", "labels": {"app.kubernetes.io/part-of": "posegraph"}},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
                      "shortNames": [short], "categories": ["posegraph"]},
            "versions": [{
                "name": API_VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": copy.deepcopy(schema)},
            }],
        },
    }


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def posepipeline_crd() -> dict[str, Any]:
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Ready", "type": "string", "jsonPath": ".status.readyStages", "description": "stages ready / stages"},
        {"name": "Runtime", "type": "string", "jsonPath": ".spec.runtime"},
        {"name": "URL", "type": "string", "jsonPath": ".status.graphURL"},
        _AGE,
    ]
    return _crd("PosePipeline", POSEPIPELINES, "pp", columns, _document(PipelineSpec, PipelineStatus))


def posejob_crd() -> dict[str, Any]:
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Frames", "type": "string", "jsonPath": ".status.frames", "description": "frames done / total"},
        {"name": "Persons", "type": "integer", "jsonPath": ".status.progress.persons"},
        {"name": "Pipeline", "type": "string", "jsonPath": ".spec.pipelineRef.name"},
        _AGE,
    ]
    return _crd("PoseJob", POSEJOBS, "pj", columns, _document(PoseJobSpec, PoseJobStatus))


# What each CRD is, for the generated file's header.
DESCRIPTIONS = {
    POSEPIPELINES: """\
PosePipeline: a served detect → pose2d → lift3d pipeline. The operator turns it into one KServe
InferenceService per stage and one InferenceGraph (the same objects `posegraph graph render`
prints), adopts them, and reports their readiness here.""",
    POSEJOBS: """\
PoseJob: a video in object storage → 3D poses in PostgreSQL + a rendered video. The operator
runs it as a batch/v1 Job (`posegraph job run`) against a PosePipeline's graph and mirrors the
Job's outcome and the runner's progress here.""",
}
SOURCES = {POSEPIPELINES: "posegraph.graph.spec", POSEJOBS: "posegraph.jobspec"}


def crds() -> dict[str, dict[str, Any]]:
    """plural → CRD."""
    return {POSEPIPELINES: posepipeline_crd(), POSEJOBS: posejob_crd()}
