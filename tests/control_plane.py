"""A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager
built from Go modules by scripts/control-plane.sh and started on 127.0.0.1 with client
certificates, ServiceAccount tokens, RBAC, PodSecurity and an audit log. No kubelet runs: the test
plays it where a Pod must finish (``play_kubelet``)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from services import wait

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "control-plane.sh"
KUBECTL = REPO / ".tools" / "helm4" / "kubectl"
# The binaries are cached under the developer's cache directory, read before the tests point
# POSEGRAPH_CACHE at a throwaway one (conftest.py imports this module first).
SCRIPT_ENV = {**os.environ}


def script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=SCRIPT_ENV)


def kserve_router() -> Path:
    """Where scripts/control-plane.sh builds KServe's router (it may not be there)."""
    return Path(script("router").stdout.strip())


def built() -> Path | None:
    bindir = Path(script("bin").stdout.strip())
    return bindir if (bindir / "kube-apiserver").exists() else None


@dataclass
class ControlPlane:
    dir: Path
    server: str = ""
    _audit_offset: int = 0
    _events: list[dict] = field(default_factory=list)

    @classmethod
    def start(cls, directory: Path) -> "ControlPlane":
        result = script("up", str(directory))
        if result.returncode != 0:
            raise RuntimeError(f"scripts/control-plane.sh up failed:\n{result.stderr[-3000:]}")
        plane = cls(directory)
        plane.server = (directory / "server").read_text().strip()
        plane.wait_for_default_serviceaccount("default")
        return plane

    def stop(self) -> None:
        script("down", str(self.dir), timeout=120)

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    # -- clients -------------------------------------------------------------------------------------
    def api_client(self, kubeconfig: Path | None = None):
        import kubernetes

        return kubernetes.config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def kubectl(self, *args: str, kubeconfig: Path | None = None, check: bool = True,
                input: str | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([str(KUBECTL), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args],
                                capture_output=True, text=True, timeout=120, input=input)
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr[-2000:]}"
        return result

    def token_kubeconfig(self, namespace: str, service_account: str, path: Path) -> Path:
        """A kubeconfig that authenticates as a ServiceAccount with a token from `kubectl create
        token`, so that the account's RBAC, not cluster-admin, decides what its requests may do."""
        token = self.kubectl("-n", namespace, "create", "token", service_account, "--duration", "2h").stdout.strip()
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{"name": "test", "cluster": {"server": self.server,
                                                      "certificate-authority": str(self.dir / "pki" / "ca.crt")}}],
            "users": [{"name": service_account, "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "test", "user": service_account,
                                                    "namespace": namespace}}],
        }))
        return path

    def wait_for_default_serviceaccount(self, namespace: str, timeout: float = 120.0) -> None:
        """Pods need their namespace's ServiceAccount, which kube-controller-manager creates."""
        wait(lambda: self.kubectl("-n", namespace, "get", "serviceaccount", "default", check=False).returncode == 0,
             timeout=timeout, what=f"the default ServiceAccount in {namespace}")

    # -- the audit log: who did what, counted, not guessed ----------------------------------------------
    def audit(self) -> list[dict]:
        """Every audited request so far (the API server writes one JSON event per line)."""
        path = self.dir / "audit.log"
        with path.open("rb") as f:
            f.seek(self._audit_offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self._audit_offset += end
        self._events.extend(json.loads(line) for line in chunk[:end].splitlines() if line.strip())
        return self._events

    def creations(self, resource: str, name: str | None = None, namespace: str | None = None) -> list[dict]:
        """Successful creates of a resource (optionally of one name): each is one object made."""
        return [e for e in self.audit() if e.get("verb") == "create"
                and e.get("objectRef", {}).get("resource") == resource
                and not e.get("objectRef", {}).get("subresource")
                and (name is None or e["objectRef"].get("name") == name
                     or (e.get("responseObject") or {}).get("metadata", {}).get("name") == name)
                and (namespace is None or e["objectRef"].get("namespace") == namespace)
                and e.get("responseStatus", {}).get("code") == 201
                and "dryRun=" not in e.get("requestURI", "")]  # a dry run makes nothing

    def forbidden(self, user: str) -> list[str]:
        """The requests of one user that RBAC refused, as 'verb group/resource[/sub] in namespace'."""
        refused = []
        for e in self.audit():
            if e.get("user", {}).get("username") == user and e.get("responseStatus", {}).get("code") == 403:
                ref = e.get("objectRef", {})
                resource = "/".join(p for p in (ref.get("apiGroup") or "core", ref.get("resource"),
                                                ref.get("subresource")) if p)
                refused.append(f"{e['verb']} {resource} {ref.get('name') or ''} in {ref.get('namespace') or '(cluster)'}")
        return refused


def finish_pod(core, namespace: str, pod: str, exit_code: int, container: str | None = None) -> None:
    """What a kubelet reports when a Pod's containers have run: phase and each container's exit."""
    spec = core.read_namespaced_pod(pod, namespace).spec
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    statuses = [{"name": c.name, "image": c.image, "imageID": "", "ready": False, "restartCount": 0,
                 "state": {"terminated": {"exitCode": exit_code if (container in (None, c.name)) else 0,
                                          "reason": "Completed" if exit_code == 0 else "Error",
                                          "startedAt": now, "finishedAt": now}}}
                for c in spec.containers]
    core.patch_namespaced_pod_status(pod, namespace, {"status": {
        "phase": "Succeeded" if exit_code == 0 else "Failed", "startTime": now,
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
        "containerStatuses": statuses}})


class play_kubelet:
    """While active, finish every Pod of the named Jobs with exit code 0, as a kubelet running them
    would (helm waits for its hook Jobs; without a node their Pods would stay Pending forever)."""

    def __init__(self, core, namespace: str, jobs: set[str]) -> None:
        self.core, self.namespace, self.jobs = core, namespace, jobs
        self.finished: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            try:
                pods = self.core.list_namespaced_pod(self.namespace).items
            except Exception:  # noqa: BLE001 - the namespace may not exist yet
                continue
            for pod in pods:
                job = (pod.metadata.labels or {}).get("job-name")
                if job in self.jobs and pod.metadata.name not in self.finished and pod.status.phase == "Pending":
                    finish_pod(self.core, self.namespace, pod.metadata.name, 0)
                    self.finished.add(pod.metadata.name)


def secret_data(manifest: dict) -> dict:
    """A Secret's data as the API server stores it (stringData is write-only: it becomes data)."""
    data = dict(manifest.get("data") or {})
    for key, value in (manifest.get("stringData") or {}).items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    return data
