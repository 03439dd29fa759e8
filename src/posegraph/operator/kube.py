"""The few Kubernetes API calls the operator makes (kubernetes client; in-cluster or kubeconfig)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from .. import k8s_config
from ..names import INFERENCEGRAPHS, INFERENCESERVICES

log = logging.getLogger(__name__)
PLURALS = {"InferenceService": INFERENCESERVICES, "InferenceGraph": INFERENCEGRAPHS}


class Kube:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._custom = None
        self._batch = None

    def _apis(self):
        with self._lock:
            if self._custom is None:

                client = k8s_config.client()
                self._custom = client.CustomObjectsApi()
                self._batch = client.BatchV1Api()
        return self._custom, self._batch

    @staticmethod
    def _not_found(exc: Exception) -> bool:
        return getattr(exc, "status", None) == 404

    @staticmethod
    def _split(api_version: str) -> tuple[str, str]:
        group, _, version = api_version.rpartition("/")
        return group, version

    # -- custom objects ----------------------------------------------------------------------------------
    def get_custom(self, group: str, version: str, namespace: str, plural: str, name: str) -> dict | None:
        custom, _ = self._apis()
        try:
            return custom.get_namespaced_custom_object(group, version, namespace, plural, name)
        except Exception as exc:
            if self._not_found(exc):
                return None
            raise

    def apply_custom(self, manifest: dict[str, Any]) -> str:
        """Create, or bring spec, labels and owners up to date. Returns created|updated|unchanged."""
        custom, _ = self._apis()
        group, version = self._split(manifest["apiVersion"])
        plural = PLURALS[manifest["kind"]]
        meta = manifest["metadata"]
        existing = self.get_custom(group, version, meta["namespace"], plural, meta["name"])
        if existing is None:
            custom.create_namespaced_custom_object(group, version, meta["namespace"], plural, manifest)
            return "created"
        old_meta = existing.get("metadata", {})
        same = (existing.get("spec") == manifest.get("spec")
                and all(old_meta.get("labels", {}).get(k) == v for k, v in (meta.get("labels") or {}).items())
                and old_meta.get("ownerReferences") == meta.get("ownerReferences"))
        if same:
            return "unchanged"
        patch = {"spec": merge_patch(existing.get("spec") or {}, manifest.get("spec") or {}),
                 "metadata": {"labels": meta.get("labels") or {}, "ownerReferences": meta.get("ownerReferences")}}
        custom.patch_namespaced_custom_object(group, version, meta["namespace"], plural, meta["name"], patch)
        return "updated"

    def patch_status(self, group: str, version: str, namespace: str, plural: str, name: str,
                     status: dict[str, Any]) -> None:
        custom, _ = self._apis()
        custom.patch_namespaced_custom_object_status(group, version, namespace, plural, name, {"status": status})

    # -- jobs ------------------------------------------------------------------------------------------
    def get_job(self, namespace: str, name: str) -> dict | None:
        _, batch = self._apis()
        try:
            job = batch.read_namespaced_job(name, namespace)
        except Exception as exc:
            if self._not_found(exc):
                return None
            raise
        return batch.api_client.sanitize_for_serialization(job)

    def create_job(self, manifest: dict[str, Any]) -> bool:
        """Create; False when it already exists (a restart raced us there)."""
        _, batch = self._apis()
        try:
            batch.create_namespaced_job(manifest["metadata"]["namespace"], manifest)
            return True
        except Exception as exc:
            if getattr(exc, "status", None) == 409:
                return False
            raise


def merge_patch(old: Any, new: Any) -> Any:
    """An RFC 7386 JSON merge patch turning ``old`` into ``new``: changed keys, and null for keys
    that are gone (so a field removed from a spec is removed from the object too)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch
