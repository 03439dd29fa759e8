"""What the operator, the PoseJob runner and the web UI may do in the API, written once.

``python -m posegraph.generate`` writes these rules into operators/rbac/*.yaml (plain manifests
for clusters without helm; the UI has none, it comes with the chart) and into the chart
(charts/posegraph/templates/_rbac_rules.tpl, which the chart's Role templates include).
tests/test_operator.py checks every request the operator and the runner made during its tests
against them, and that every grant was used.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..names import API_GROUP, INFERENCEGRAPHS, INFERENCESERVICES, KSERVE_GROUP, POSEJOBS, POSEPIPELINES


@dataclass(frozen=True)
class Rule:
    why: str  # written above the rule in every generated file
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]

    def as_dict(self) -> dict[str, list[str]]:
        return {"apiGroups": list(self.api_groups), "resources": list(self.resources), "verbs": list(self.verbs)}


OPERATOR_RULES = (
    Rule("Its own resources: watched, finalizers/annotations patched, status written.",
         (API_GROUP,), (POSEPIPELINES, POSEJOBS), ("get", "list", "watch", "patch")),
    Rule("", (API_GROUP,), (f"{POSEPIPELINES}/status", f"{POSEJOBS}/status"), ("patch",)),
    Rule("The KServe objects it creates for each PosePipeline (their status is read, never written;\n"
         "the garbage collector deletes them with their pipeline, through the ownerReference).",
         (KSERVE_GROUP,), (INFERENCESERVICES, INFERENCEGRAPHS), ("get", "list", "watch", "create", "patch")),
    Rule("The Job it runs for each PoseJob (deleted with its PoseJob by the garbage collector, through\n"
         "the ownerReference: the operator never deletes one).",
         ("batch",), ("jobs",), ("get", "list", "watch", "create")),
    Rule("The pods of its stages and runners, watched to name why one cannot start (an image, a\n"
         "Secret, the archive) in an Event on its PosePipeline or PoseJob (no writes).",
         ("",), ("pods",), ("list", "watch")),
    Rule("kopf watches CRDs to notice the resources it serves appearing or changing (no writes).",
         ("apiextensions.k8s.io",), ("customresourcedefinitions",), ("list", "watch")),
    Rule("Warnings and errors as Kubernetes Events on the resources (kopf posts them).",
         ("",), ("events",), ("create",)),
)

JOB_RUNNER_RULES = (
    Rule("Its only API call: reporting progress into its PoseJob's status.",
         (API_GROUP,), (f"{POSEJOBS}/status",), ("patch",)),
)

UI_RULES = (
    Rule("Videos uploaded in the UI become PoseJobs (and it reads their status messages).",
         (API_GROUP,), (POSEJOBS,), ("get", "create")),
)


def _flow(items: tuple[str, ...]) -> str:
    # [a, b] as in hand-written manifests; quoted only where YAML needs it ("" is the core group).
    return "[" + ", ".join(s if re.fullmatch(r"[a-z][a-z0-9./-]*", s) else json.dumps(s) for s in items) + "]"


def rules_yaml(rules: tuple[Rule, ...], indent: int = 0) -> str:
    """The ``rules:`` list as YAML lines (no key), each rule under its comment."""
    pad = " " * indent
    lines = []
    for rule in rules:
        lines += [f"{pad}# {line}" for line in rule.why.splitlines()]
        lines += [f"{pad}- apiGroups: {_flow(rule.api_groups)}",
                  f"{pad}  resources: {_flow(rule.resources)}",
                  f"{pad}  verbs: {_flow(rule.verbs)}"]
    return "\n".join(lines) + "\n"
