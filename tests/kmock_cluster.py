"""A Kubernetes API for tests: kmock's emulator on a loopback port, in a background thread, plus a
kubeconfig that points at it: the operator's fast unit tier (the one exception to "no mocks"; the
real API server is tests/control_plane.py's)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import yaml

VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
RESOURCES = {
    "posegraph.io/v1alpha1/posepipelines": {"kind": "PosePipeline", "namespaced": True, "subresources": {"status"}},
    "posegraph.io/v1alpha1/posejobs": {"kind": "PoseJob", "namespaced": True, "subresources": {"status"}},
    "serving.kserve.io/v1beta1/inferenceservices": {"kind": "InferenceService", "namespaced": True,
                                                     "subresources": {"status"}},
    "serving.kserve.io/v1alpha1/inferencegraphs": {"kind": "InferenceGraph", "namespaced": True,
                                                    "subresources": {"status"}},
    "serving.kserve.io/v1alpha1/clusterservingruntimes": {"kind": "ClusterServingRuntime", "namespaced": False,
                                                          "subresources": set()},
    "serving.kserve.io/v1alpha1/servingruntimes": {"kind": "ServingRuntime", "namespaced": True,
                                                   "subresources": set()},
}


def _emulator_class():
    import kmock

    class Emulator(kmock.KubernetesEmulator):
        """kmock 0.8 matches each request against each reaction by walking every request it has
        seen (apps.py, RawHandler._handle: "filtering is very expensive"): a GET took 12 ms after
        200 requests and 150 ms after 1,200, so the operator's tests slowed as they went (its
        resume storm after the restart took 29 s to wind down). Its own list keeps only the requests
        in flight; the history the tests assert on is kept here, whole."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.history: list = []
            self._in_flight: set[int] = set()

        async def _handle(self, request):
            self.history.append(request)
            self._in_flight.add(id(request))
            try:
                return await super()._handle(request)
            finally:
                self._in_flight.discard(id(request))
                self._requests[:] = [r for r in self._requests if id(r) in self._in_flight]

    return Emulator


class KMockCluster:
    def __init__(self, workdir: Path, kserve: bool = True) -> None:
        """``kserve=False``: a cluster without KServe's CRDs (for the chart's prerequisite check)."""
        import kmock

        workdir.mkdir(parents=True, exist_ok=True)
        self.kserve = kserve
        self._kmock = kmock
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30).rstrip("/")
        self.workdir = workdir
        # One kubeconfig per identity (the bearer token names it), so a test can tell whose
        # request it was: the operator's (KUBECONFIG), the job runner's, or the test's own.
        self.kubeconfig = self.kubeconfig_for("operator")

    def kubeconfig_for(self, identity: str) -> Path:
        path = self.workdir / f"kubeconfig-{identity}"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": identity, "user": {"token": identity}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": identity, "namespace": "poses"}}],
        }))
        return path

    async def _start(self) -> str:
        self.emulator = _emulator_class()()
        await self.emulator.__aenter__()
        self.emulator.resources.load_bundled()
        for key, info in RESOURCES.items():
            if self.kserve or not key.startswith("serving.kserve.io/"):
                self.emulator.resources[key] = {**info, "verbs": VERBS}
        # kmock reports Kubernetes 1.26 (k3s); the chart requires >= 1.27, so report a supported one.
        self.emulator["get /version"] << {"major": "1", "minor": "31", "gitVersion": "v1.31.4",
                                          "platform": "linux/amd64"}
        self.server = self._kmock.Server(self.emulator, host="127.0.0.1")
        await self.server.__aenter__()
        url = str(self.server.url).rstrip("/")
        # kmock answers /api/v1 with groupVersion "/v1"; clients that build a REST mapping from
        # discovery (helm) then find no core kinds. Serve the same list with "v1".
        import aiohttp

        async with aiohttp.ClientSession() as session, session.get(f"{url}/api/v1") as response:
            core = await response.json()
        self.emulator["get /api/v1"] << {**core, "groupVersion": "v1"}
        return url

    def requests(self, method: str, plural: str, name: str | None = None) -> list:
        """Requests the emulator received, filtered."""
        return [r for r in list(self.emulator.history)
                if str(r.method).upper().endswith(method.upper()) and r.resource is not None
                and r.resource.plural == plural and (name is None or r.name == name)]

    def verbs_used_by(self, identity: str) -> set[tuple[str, str, str]]:
        """(apiGroup, resource[/subresource], RBAC verb) of every request made with that identity."""
        verbs = {"LIST": "list", "WATCH": "watch", "FETCH": "get", "CREATE": "create", "DELETE": "delete"}
        used = set()
        for r in list(self.emulator.history):
            if r.headers.get("Authorization") != f"Bearer {identity}":
                continue
            if r.resource is None or r.action is None or r.resource.plural is None:
                if r.url.path.startswith(("/api", "/apis", "/version")) and r.method.name == "GET":
                    continue  # discovery: every authenticated identity may read it
                used.add(("?", str(r.url.path), str(r.method)))
                continue
            method = str(r.method.value if hasattr(r.method, "value") else r.method).upper()
            verb = {"PATCH": "patch", "PUT": "update"}.get(method) or verbs[r.action.name]
            resource = r.resource.plural + (f"/{r.subresource}" if r.subresource else "")
            used.add((r.resource.group or "", resource, verb))
        return used

    def stop(self) -> None:
        async def _stop():
            await self.server.__aexit__(None, None, None)
            await self.emulator.__aexit__(None, None, None)

        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
