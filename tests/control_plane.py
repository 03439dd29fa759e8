"""A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager
built from Go modules by scripts/control-plane.sh and started on 127.0.0.1 with client
certificates, ServiceAccount tokens, RBAC, PodSecurity and an audit log. No kubelet runs: the test
plays it where a Pod must finish (``play_kubelet``)."""

from __future__ import annotations

import base64
import json
import os
import signal
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


def kserve_manager() -> Path:
    """Where scripts/control-plane.sh builds KServe's manager (`build-kserve`; it may not be there)."""
    return Path(script("manager").stdout.strip())


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

    # -- KServe's controller (scripts/control-plane.sh kserve-up / kserve-down) ----------------------
    def start_kserve(self) -> "KServeController":
        """KServe's manager on this control plane: its CRDs, ConfigMap, RBAC and webhooks."""
        result = script("kserve-up", str(self.dir), timeout=600)
        if result.returncode != 0:
            down = self.stop_kserve()  # what it applied before failing would outlive the module
            raise RuntimeError(f"scripts/control-plane.sh kserve-up failed:\n{result.stderr[-3000:]}"
                               f"\n(kserve-down: {down.returncode} {down.stderr[-500:]})")
        endpoints = dict(line.split("=", 1) for line in (self.dir / "kserve" / "endpoints").read_text().split())
        return KServeController(namespace=endpoints["namespace"], user=endpoints["user"],
                                webhook=endpoints["webhook"], metrics=endpoints["metrics"], probe=endpoints["probe"],
                                log=self.dir / "logs" / "kserve-manager.log")

    def stop_kserve(self) -> subprocess.CompletedProcess:
        """Stops the manager and removes what kserve-up made (CRDs included): the plane is as `up`
        left it, for the modules that run after (some check that no KServe CRD exists)."""
        return script("kserve-down", str(self.dir), timeout=600)

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

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> str:
        """A namespace ready for Pods: created, and its default ServiceAccount there."""
        import kubernetes

        kubernetes.client.CoreV1Api(self.api_client()).create_namespace(
            {"metadata": {"name": name, "labels": labels or {}}})
        self.wait_for_default_serviceaccount(name)
        return name

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


@dataclass
class KServeController:
    """KServe's manager as `kserve-up` started it: where its endpoints are and who it is."""
    namespace: str   # where its ConfigMap is ($POD_NAMESPACE)
    user: str        # its client certificate's user, bound to KServe's own ClusterRole
    webhook: str
    metrics: str
    probe: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


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


class _PodPoller:
    """A background thread that looks at Pods every 0.3 s while the context is active, as a
    kubelet would; subclasses say what to do with them in ``tick``."""

    def __init__(self, core) -> None:
        self.core = core
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
            self.tick()

    def pods(self, namespace: str) -> list:
        try:
            return self.core.list_namespaced_pod(namespace).items
        except Exception:  # noqa: BLE001 - the namespace may not exist yet
            return []

    def tick(self) -> None:  # pragma: no cover - per subclass
        raise NotImplementedError


class play_kubelet(_PodPoller):
    """While active, finish every Pod of the named Jobs with exit code 0, as a kubelet running them
    would (helm waits for its hook Jobs; without a node their Pods would stay Pending forever)."""

    def __init__(self, core, namespace: str, jobs: set[str]) -> None:
        super().__init__(core)
        self.namespace, self.jobs = namespace, jobs
        self.finished: set[str] = set()

    def tick(self) -> None:
        for pod in self.pods(self.namespace):
            job = (pod.metadata.labels or {}).get("job-name")
            if job in self.jobs and pod.metadata.name not in self.finished and pod.status.phase == "Pending":
                finish_pod(self.core, self.namespace, pod.metadata.name, 0)
                self.finished.add(pod.metadata.name)


def run_pod(core, namespace: str, pod: str, ip: str = "10.244.0.10") -> None:
    """What a kubelet reports once a Pod's init containers have exited 0 and its containers run
    and pass their readiness probes: phase Running, Ready. The ReplicaSet and Deployment
    controllers then count it available, as they would on a node."""
    spec = core.read_namespaced_pod(pod, namespace).spec
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    init = [{"name": c.name, "image": c.image, "imageID": "", "ready": True, "restartCount": 0,
             "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}}}
            for c in spec.init_containers or []]
    running = [{"name": c.name, "image": c.image, "imageID": "", "ready": True, "started": True, "restartCount": 0,
                "state": {"running": {"startedAt": now}}} for c in spec.containers]
    core.patch_namespaced_pod_status(pod, namespace, {"status": {
        "phase": "Running", "startTime": now, "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                       for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
        "initContainerStatuses": init, "containerStatuses": running}})


class play_serving_kubelet(_PodPoller):
    """While active, run (Running, Ready: ``run_pod``) every Pending Pod that carries one of the
    label keys in the namespaces given, as a kubelet would once their images had started; Pods
    made later (a rollout, a deleted Pod replaced) too. Nothing runs in them: the data plane
    runs on this machine instead (tests/test_kserve_controller.py)."""

    def __init__(self, core, namespaces: set[str], label_keys: tuple[str, ...]) -> None:
        super().__init__(core)
        self.namespaces, self.label_keys = namespaces, label_keys
        self.running: set[tuple[str, str]] = set()

    def tick(self) -> None:
        for namespace in sorted(self.namespaces):
            for pod in self.pods(namespace):
                labels = pod.metadata.labels or {}
                key = (namespace, pod.metadata.name)
                if (any(k in labels for k in self.label_keys) and key not in self.running
                        and pod.status.phase == "Pending" and not pod.metadata.deletion_timestamp):
                    try:
                        run_pod(self.core, namespace, pod.metadata.name)
                        self.running.add(key)
                    except Exception:  # noqa: BLE001 - deleted meanwhile: the next round sees it
                        pass


class OperatorProcess:
    """`python -m posegraph.operator` as a local process with the args and env of the chart's
    operator Deployment in `namespace` and a token of its ServiceAccount (so the chart's
    ClusterRole decides what it may do, not cluster-admin); as tests/test_kube_apiserver.py runs it,
    for a release in any namespace."""

    def __init__(self, control_plane: ControlPlane, dynamic, namespace: str, workdir: Path) -> None:
        import sys

        from services import free_port

        self.control_plane, self.workdir = control_plane, workdir
        deployment = dynamic.resources.get(api_version="apps/v1", kind="Deployment").get(
            name="posegraph-operator", namespace=namespace).to_dict()
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        self.user = f"system:serviceaccount:{namespace}:{pod['serviceAccountName']}"
        self.kubeconfig = control_plane.token_kubeconfig(namespace, pod["serviceAccountName"],
                                                          workdir / "kubeconfig-operator")
        assert container["command"][:3] == ["python", "-m", "posegraph.operator"], container["command"]
        self.command = [sys.executable, *container["command"][1:]]
        self.command += [a for a in container["args"] if not a.startswith(("--liveness", "--metrics-port"))]
        self.command += [f"--liveness=http://127.0.0.1:{free_port()}/healthz", "--metrics-port=0"]
        self.env = {**os.environ, "KUBECONFIG": str(self.kubeconfig),
                    **{e["name"]: e["value"] for e in container["env"] if "value" in e}}
        self.env.pop("KUBERNETES_SERVICE_HOST", None)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with (self.workdir / f"operator-{self.starts}.log").open("w") as log:
            self.proc = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.workdir)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("operator-*.log")))


def secret_data(manifest: dict) -> dict:
    """A Secret's data as the API server stores it (stringData is write-only: it becomes data)."""
    data = dict(manifest.get("data") or {})
    for key, value in (manifest.get("stringData") or {}).items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    return data
