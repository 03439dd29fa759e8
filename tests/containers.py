"""Containers for the image tests: posegraph's Docker engine (scripts/docker_engine.py), the images
`make images` built (scripts/build_images.py), and `docker run` with the settings the Helm chart
gives each container (user, read-only root, capabilities, volumes, arguments, environment).

Imported by conftest before the session isolates POSEGRAPH_CACHE: the engine's data and the image
build caches are the real ones, where `make images` left them.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import build_images  # noqa: E402
import docker_engine  # noqa: E402

# Read before the session points POSEGRAPH_CACHE at a temporary folder.
ENGINE_ROOT = docker_engine.cache_dir()
REAL_CACHE = ENGINE_ROOT.parent
IMAGES = {image.name: image for image in build_images.images()}
LABEL = "posegraph.test"          # every container and network the tests make carries it


class Docker:
    """The engine, with the few operations the tests use. Everything it starts is removed by
    ``cleanup``, and carries LABEL so a crashed session's leftovers can be found."""

    def __init__(self, engine: docker_engine.Engine):
        self.engine = engine
        self.session = uuid.uuid4().hex[:8]

    def __call__(self, *args: str, check: bool = True, timeout: float = 600, input: bytes | None = None
                 ) -> subprocess.CompletedProcess:
        done = self.engine.run(*args, check=False, timeout=timeout, input=input)
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args[:3])}… failed ({done.returncode}): "
                                 f"{done.stderr.decode(errors='replace')[-2000:]}")
        return done

    def image(self, ref: str) -> dict | None:
        return self.engine.inspect("image", ref)

    @contextlib.contextmanager
    def network(self, name: str):
        full = f"pgtest-{self.session}-{name}"
        self("network", "create", "--label", LABEL, full)
        try:
            yield full
        finally:
            for cid in self("ps", "-aq", "--filter", f"network={full}").stdout.decode().split():
                self("rm", "-f", cid, check=False)
            self("network", "rm", full, check=False)

    def run(self, image: str, *args: str, network: str | None = None, name: str | None = None,
            aliases: tuple[str, ...] = (), detach: bool = True, options: tuple[str, ...] = (),
            timeout: float = 600) -> "Container | subprocess.CompletedProcess":
        name = name or f"pgtest-{self.session}-{uuid.uuid4().hex[:6]}"
        cmd = ["run", "--name", name, "--label", LABEL, *options]
        if network:
            cmd += ["--network", network, *(f"--network-alias={a}" for a in aliases)]
        else:
            cmd += ["--network", "none"]
        if detach:
            cmd.append("--detach")
        else:
            cmd.append("--rm")
        done = self(*cmd, image, *args, check=detach, timeout=timeout)
        return Container(self, name, network) if detach else done


@dataclass
class Container:
    docker: Docker
    name: str
    network: str | None

    @property
    def ip(self) -> str:
        info = self.docker.engine.inspect("container", self.name)
        return info["NetworkSettings"]["Networks"][self.network]["IPAddress"]

    def logs(self) -> str:
        done = self.docker("logs", self.name, check=False)
        return (done.stdout + done.stderr).decode(errors="replace")

    def running(self) -> bool:
        info = self.docker.engine.inspect("container", self.name)
        return bool(info and info["State"]["Running"])

    def exit_code(self) -> int | None:
        info = self.docker.engine.inspect("container", self.name)
        return None if info["State"]["Running"] else info["State"]["ExitCode"]

    def wait(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.exit_code()
            if code is not None:
                return code
            time.sleep(0.3)
        raise AssertionError(f"{self.name} still runs after {timeout:.0f}s; logs:\n{self.logs()[-2000:]}")

    def wait_for(self, check, what: str, timeout: float = 180):
        """Poll ``check()`` until it returns something truthy; fail with the logs if the container
        exits or time runs out."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                result = check()
                if result:
                    return result
            except Exception as exc:  # noqa: BLE001 - polling: keep the last error for the message
                last = exc
            if not self.running():
                raise AssertionError(f"{self.name} exited ({self.exit_code()}) before {what}:\n{self.logs()[-3000:]}")
            time.sleep(0.5)
        raise AssertionError(f"no {what} after {timeout:.0f}s ({last!r}); logs:\n{self.logs()[-3000:]}")

    def stop(self, timeout: int = 10) -> None:
        self.docker("stop", "--time", str(timeout), self.name, check=False)

    def remove(self) -> None:
        self.docker("rm", "-f", self.name, check=False)


# ---- the chart's settings, as `docker run` options ------------------------------------------------

@dataclass
class ChartContainer:
    """One container of the rendered chart, with its pod's security context and volumes."""

    pod: dict
    container: dict
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)   # rendered Secrets' stringData

    @property
    def security(self) -> dict:
        return self.container.get("securityContext", {})

    def user(self) -> str:
        pod_security = self.pod.get("securityContext", {})
        uid = self.security.get("runAsUser", pod_security.get("runAsUser"))
        gid = self.security.get("runAsGroup", pod_security.get("runAsGroup", uid))
        return f"{uid}:{gid}"

    def env(self, resolved: dict[str, str] | None = None) -> dict[str, str]:
        """Plain values, Secret keys from the rendered Secrets, resource fields as the kubelet gives
        them (limits.cpu rounded up), envFrom Secrets; ``resolved`` overrides or adds."""
        out: dict[str, str] = {}
        for source in self.container.get("envFrom", []):
            name = source.get("secretRef", {}).get("name")
            out.update(self.secrets.get(name, {}))
        for item in self.container.get("env", []):
            if "value" in item:
                out[item["name"]] = str(item["value"])
            elif "secretKeyRef" in item.get("valueFrom", {}):
                ref = item["valueFrom"]["secretKeyRef"]
                if ref["key"] in self.secrets.get(ref["name"], {}):
                    out[item["name"]] = self.secrets[ref["name"]][ref["key"]]
            elif "resourceFieldRef" in item.get("valueFrom", {}):
                limit = self.container["resources"]["limits"][item["valueFrom"]["resourceFieldRef"]["resource"].split(".")[1]]
                out[item["name"]] = str(_cpu_ceiling(limit))
        out.update(resolved or {})
        return out

    def options(self, scratch: Path, *, env: dict[str, str] | None = None, mounts: dict[str, str] | None = None
                ) -> tuple[str, ...]:
        """`docker run` options: the chart's user, read-only root, no capabilities, no privilege
        escalation, working dir, environment; each emptyDir volume as the kubelet makes it, a fresh
        folder (mode 0777) under ``scratch``; ``mounts`` maps a container path (a Secret or model
        volume) to a host folder, bound read-only unless the chart mounts it writable. (Docker's
        tmpfs would do for an emptyDir, but it ignores its mode on a path the image has.)"""
        opts = ["--user", self.user()]
        if self.security.get("readOnlyRootFilesystem"):
            opts.append("--read-only")
        if "ALL" in self.security.get("capabilities", {}).get("drop", []):
            opts += ["--cap-drop", "ALL"]
        if self.security.get("allowPrivilegeEscalation") is False:
            opts += ["--security-opt", "no-new-privileges"]
        if self.container.get("workingDir"):
            opts += ["--workdir", self.container["workingDir"]]
        volumes = {v["name"]: v for v in self.pod.get("volumes", [])}
        for mount in self.container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "emptyDir" in volume:
                folder = Path(tempfile.mkdtemp(prefix=f"{mount['name']}-", dir=scratch))
                folder.chmod(0o777)
                opts += ["--volume", f"{folder}:{mount['mountPath']}:rw"]
            elif mounts and mount["mountPath"] in mounts:
                mode = "ro" if mount.get("readOnly") else "rw"
                opts += ["--volume", f"{mounts[mount['mountPath']]}:{mount['mountPath']}:{mode}"]
            else:
                raise AssertionError(f"no host folder given for the chart's volume {mount['mountPath']}")
        for key, value in self.env(env).items():
            opts += ["--env", f"{key}={value}"]
        if self.container.get("command"):
            opts += ["--entrypoint", self.container["command"][0]]
        return tuple(opts)

    def args(self) -> list[str]:
        """The command's arguments: the rest of ``command`` and ``args``, with $(VAR) expanded from
        the environment as the kubelet does."""
        env = self.env()
        words = [*self.container.get("command", [])[1:], *self.container.get("args", [])]
        out = []
        for word in words:
            for key, value in env.items():
                word = word.replace(f"$({key})", value)
            out.append(word)
        return out


def _cpu_ceiling(quantity: str) -> int:
    value = float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
    return max(1, int(-(-value // 1)))


def rendered_chart(helm: Path, chart: Path, values: list[str], extra: list[str]) -> list[dict]:
    import yaml

    done = subprocess.run([str(helm), "template", "posegraph", str(chart), "-n", "posegraph", *values, *extra],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def chart_container(objects: list[dict], kind: str, name: str, container: str | None = None) -> ChartContainer:
    """The container (the first, or ``container``) of the object ``kind``/``name`` in the rendered chart."""
    secrets = {o["metadata"]["name"]: dict(o.get("stringData", {})) for o in objects if o["kind"] == "Secret"}
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            spec = obj["spec"]
            pod = spec["template"]["spec"] if "template" in spec else spec
            containers = pod["containers"]
            chosen = next(c for c in containers if container in (None, c["name"]))
            return ChartContainer(pod, chosen, secrets)
    raise AssertionError(f"the chart renders no {kind} {name}")


def image_values() -> list[str]:
    """`helm --set` options that point the chart at the images `make images` built."""
    return [arg for key, value in build_images.chart_image_values().items()
            for arg in ("--set-string", f"{key}={value}")]


def json_logs(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def real_cache_env() -> dict[str, str]:
    """The environment for a `make images` run from a test: the real caches, not the session's."""
    return {**os.environ, "POSEGRAPH_CACHE": str(REAL_CACHE)}
