"""A Docker engine for `make images` and the image tests, started only when none answers.

    python3 scripts/docker_engine.py status     which engine answers (exit 1: none)
    python3 scripts/docker_engine.py up         start posegraph's own dockerd if none answers, print DOCKER_HOST
    python3 scripts/docker_engine.py down       stop posegraph's own dockerd, if it runs

In Python code: ``with engine() as docker: docker.run("images")`` uses the engine that answers (the
default socket, or $DOCKER_HOST), or installs Debian's ``docker.io`` and starts ``dockerd`` for the
block, and stops it after the block only if the block started it.

posegraph's own dockerd keeps to itself: its socket, data, exec root and pid file live under
``$POSEGRAPH_CACHE/docker`` (so images and build cache survive a stop), and it runs with no default
bridge, no iptables rules and no IP forwarding: dockerd otherwise sets the FORWARD policy to DROP
and creates docker0, which would have to be undone, and which break a real node's pod network.
Builds use ``--network host``; containers of the tests use networks they create and remove.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SOCKET = "/var/run/docker.sock"
# The docker.io package's client (20.10). The newer CLI some machines put first on PATH fails with
# DOCKER_BUILDKIT=1 when its buildx plugin is missing ("BuildKit is enabled but the buildx component
# is missing or broken"); the package's client builds with BuildKit itself.
PACKAGE_CLIENT = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class EngineError(RuntimeError):
    """One readable line: which step failed and what to do."""


def cache_dir() -> Path:
    """Where posegraph's own dockerd keeps everything: $POSEGRAPH_CACHE/docker."""
    return Path(os.environ.get("POSEGRAPH_CACHE", Path.home() / ".cache" / "posegraph")) / "docker"


def client() -> str:
    if os.path.exists(PACKAGE_CLIENT):
        return PACKAGE_CLIENT
    found = shutil.which("docker")
    if not found:
        raise EngineError("docker engine: no docker client; install Debian's docker.io (apt-get install docker.io)")
    return found


@dataclass
class Engine:
    host: str          # unix:///path/to/docker.sock
    started: bool      # True: this process started the daemon and stops it
    own: bool = False  # posegraph's own dockerd (started now or before), not the user's engine

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "1"}

    def run(self, *args: str, check: bool = True, capture: bool = True, input: bytes | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([client(), *args], env=self.env(), check=check, input=input, timeout=timeout,
                              stdout=subprocess.PIPE if capture else None,
                              stderr=subprocess.PIPE if capture else None)

    def inspect(self, kind: str, name: str) -> dict | None:
        done = self.run(kind, "inspect", name, check=False)
        if done.returncode != 0:
            return None
        return json.loads(done.stdout)[0]


def _answers(host: str) -> bool:
    try:
        done = subprocess.run([client(), "version", "--format", "{{.Server.Version}}"],
                              env={**os.environ, "DOCKER_HOST": host}, capture_output=True, timeout=15)
    except (subprocess.TimeoutExpired, EngineError):
        return False
    return done.returncode == 0


def _own_paths(root: Path | None = None) -> dict[str, Path]:
    root = root or cache_dir()
    return {"root": root, "data": root / "data", "exec": root / "exec", "socket": root / "docker.sock",
            "pidfile": root / "dockerd.pid", "log": root / "dockerd.log"}


def answering(root: Path | None = None) -> str | None:
    """The DOCKER_HOST of an engine that answers now ($DOCKER_HOST, the default socket, posegraph's
    own under ``root``), or None."""
    candidates = [os.environ["DOCKER_HOST"]] if os.environ.get("DOCKER_HOST") else []
    candidates += [f"unix://{DEFAULT_SOCKET}", f"unix://{_own_paths(root)['socket']}"]
    for host in candidates:
        if host.startswith("unix://") and not os.path.exists(host[len("unix://"):]):
            continue
        if _answers(host):
            return host
    return None


def _install_dockerd() -> None:
    if os.path.exists(DOCKERD) and os.path.exists(PACKAGE_CLIENT):
        return
    if os.geteuid() != 0:
        raise EngineError("docker engine: no engine answers and dockerd is not installed; "
                          "start Docker, or run as root so that Debian's docker.io can be installed")
    print("==> installing Debian's docker.io (dockerd, containerd, runc)", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker.io"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
            raise EngineError(f"docker engine: `{' '.join(cmd)}` failed ({tail[0]}); "
                              "install docker.io by hand or start a Docker engine")


def start(root: Path | None = None) -> Engine:
    """Start posegraph's own dockerd (its files under ``root``); returns once it answers."""
    _install_dockerd()
    paths = _own_paths(root)
    try:
        for key in ("data", "exec"):
            paths[key].mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineError(f"docker engine: cannot make {paths['root']} for dockerd ({exc.strerror}); "
                          "set POSEGRAPH_CACHE to a writable folder") from None
    host = f"unix://{paths['socket']}"
    cmd = [DOCKERD, "--host", host, "--data-root", str(paths["data"]), "--exec-root", str(paths["exec"]),
           "--pidfile", str(paths["pidfile"]), "--bridge", "none", "--iptables=false", "--ip6tables=false",
           "--ip-forward=false", "--ip-masq=false"]
    log = open(paths["log"], "ab")  # noqa: SIM115 - the daemon keeps it
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True)
    log.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EngineError(f"docker engine: dockerd exited with {process.returncode} at start; "
                              f"see {paths['log']}: {_last_line(paths['log'])}")
        if paths["socket"].exists() and _answers(host):
            return Engine(host=host, started=True, own=True)
        time.sleep(0.3)
    process.terminate()
    raise EngineError(f"docker engine: dockerd did not answer within {START_TIMEOUT_S:.0f}s; see {paths['log']}")


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "empty log"


def stop_own(root: Path | None = None) -> bool:
    """Stop posegraph's own dockerd (SIGTERM, then SIGKILL); True if one was running."""
    paths = _own_paths(root)
    try:
        pid = int(paths["pidfile"].read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.1)
    # dockerd leaves its managed containerd's mounts unmounted, but a killed one may not.
    for line in Path("/proc/mounts").read_text().splitlines():
        target = line.split()[1]
        if target.startswith(str(paths["root"]) + "/"):
            subprocess.run(["umount", "-l", target], check=False)
    return True


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs; reaps it if it is this process's child (started by ``start``)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def engine(root: Path | None = None):
    """The engine that answers, or posegraph's own (under ``root``) for the block, stopped after it."""
    host = answering(root)
    if host:
        yield Engine(host=host, started=False, own=host == f"unix://{_own_paths(root)['socket']}")
        return
    own = start(root)
    try:
        yield own
    finally:
        stop_own(root)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "status"
    try:
        if command == "status":
            host = answering()
            print(host or "no docker engine answers")
            return 0 if host else 1
        if command == "up":
            host = answering() or start().host
            print(host)
            return 0
        if command == "down":
            print("stopped posegraph's dockerd" if stop_own() else "posegraph's dockerd was not running")
            return 0
    except EngineError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
