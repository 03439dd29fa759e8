"""A real single-node Kubernetes cluster on this machine, without kind and without a registry:
`make cluster` / `make cluster-down`.

    python scripts/cluster.py up [--dir .cluster] [--no-chart]
    python scripts/cluster.py down [--dir .cluster]
    python scripts/cluster.py status [--dir .cluster]

What runs (each a process of this machine, started by `up`, stopped by `down`):
  etcd, kube-apiserver, kube-controller-manager, kube-scheduler      the control plane
  containerd (Debian's), kubelet, kube-proxy (iptables)              one node, "posegraph-node"
  KServe's manager (scripts/control-plane.sh kserve-up)              InferenceServices and graphs
and, as pods on the node: CoreDNS (cluster DNS) and kube-network-policies (NetworkPolicies
enforced), then posegraph's chart (`helm install` with values-kind.yaml and the images of
`make images`, loaded into containerd: nothing is pulled).

The network stays on this machine: the node's address is on a bridge of its own
(pgnode0, 10.250.0.1), pods get 10.251.0.0/16 on another (pgcni0, CNI bridge + host-local +
firewall), Services 10.252.0.0/16. `down` deletes the pods while the kubelet still runs, stops
everything, unmounts what the kubelet and containerd mounted, removes both bridges and the
cgroups, restores the iptables rules and sysctls saved by `up`: nothing is left behind
(tests/test_node.py checks). One such cluster runs at a time on a machine.

The binaries come from scripts/control-plane.sh (build, build-node, build-kserve), the images from
scripts/build_images.py. Needs root (network, mounts, cgroups). Standard library plus PyYAML and
cryptography (the project's virtualenv).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_images  # noqa: E402
import docker_engine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "control-plane.sh"
HELM = REPO / ".tools" / "helm4" / "helm"
KUBECTL = REPO / ".tools" / "helm4" / "kubectl"

NODE = "posegraph-node"
NODE_BRIDGE, NODE_IP, NODE_NET = "pgnode0", "10.250.0.1", "10.250.0.0/24"
POD_BRIDGE, POD_NET, POD_GATEWAY = "pgcni0", "10.251.0.0/16", "10.251.0.1"
SERVICE_NET, API_SERVICE_IP, DNS_IP = "10.252.0.0/16", "10.252.0.1", "10.252.0.10"
# The API server's port on the node address. Fixed, as kind's is: the chart's NetworkPolicies
# allow egress to the API on 443 and 6443 (values networkPolicy.apiServer.ports), and pods reach it
# through the `kubernetes` Service at the port it advertises.
API_PORT = 6443
RELEASE, NAMESPACE = "posegraph", "posegraph"
SYSCTLS = {"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"}
# Debian packages the node needs besides docker.io's containerd and runc.
PACKAGES = {"/usr/lib/cni/bridge": "containernetworking-plugins", "/usr/sbin/conntrack": "conntrack",
            "/usr/sbin/iptables": "iptables", "/usr/bin/ctr": "containerd", "/usr/sbin/ipset": "ipset"}


class ClusterError(RuntimeError):
    """One readable line: which step failed and what to do."""


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def run(cmd: list[str], *, check: bool = True, env: dict | None = None, input: bytes | None = None,
        timeout: float = 600, step: str = "") -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, env=env, input=input, timeout=timeout)
    if check and done.returncode != 0:
        err = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        raise ClusterError(f"{step or Path(str(cmd[0])).name}: {err[-1] if err else 'failed'}")
    return done


def control_plane_script(*args: str, timeout: float = 1800, env: dict | None = None) -> str:
    return run(["bash", SCRIPT, *args], timeout=timeout, env=env,
               step=f"scripts/control-plane.sh {args[0]}").stdout.decode().strip()


# ---- certificates --------------------------------------------------------------------------------------

class PKI:
    """One CA for the API server's and kubelet's serving certificates and every client
    certificate (file names as scripts/control-plane.sh makes them: its kserve-up runs here too),
    and a key pair for ServiceAccount tokens."""

    def __init__(self, directory: Path):
        self.dir = directory

    def make(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.dir.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)

        def key():
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)

        def write(name: str, k, cert=None) -> None:
            (self.dir / f"{name}.key").write_bytes(k.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
            (self.dir / f"{name}.key").chmod(0o600)
            if cert is not None:
                (self.dir / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

        def name(cn: str, org: str | None = None):
            parts = ([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else [])
            return x509.Name(parts + [x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        ca_key = key()
        ca = (x509.CertificateBuilder().subject_name(name("posegraph-cluster-ca")).issuer_name(name("posegraph-cluster-ca"))
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=30))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                           content_commitment=False, key_encipherment=False, data_encipherment=False,
                                           key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
              .sign(ca_key, hashes.SHA256()))
        write("ca", ca_key, ca)

        def leaf(file: str, cn: str, org: str | None = None, *, server: list[str] | None = None) -> None:
            k = key()
            usage = x509.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.ExtendedKeyUsageOID.CLIENT_AUTH
            builder = (x509.CertificateBuilder().subject_name(name(cn, org)).issuer_name(ca.subject)
                       .public_key(k.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(now - datetime.timedelta(minutes=5))
                       .not_valid_after(now + datetime.timedelta(days=30))
                       .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
            if server:
                sans = [x509.IPAddress(ipaddress.ip_address(s)) if s[0].isdigit() else x509.DNSName(s) for s in server]
                builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            write(file, k, builder.sign(ca_key, hashes.SHA256()))

        leaf("apiserver", "kube-apiserver", server=[NODE_IP, API_SERVICE_IP, "127.0.0.1", "localhost", "kubernetes",
                                                     "kubernetes.default", "kubernetes.default.svc",
                                                     "kubernetes.default.svc.cluster.local"])
        leaf("kubelet-serving", f"system:node:{NODE}", server=[NODE_IP, NODE])
        leaf("admin", "posegraph-admin", "system:masters")
        leaf("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
        leaf("controller-manager", "system:kube-controller-manager")
        leaf("scheduler", "system:kube-scheduler")
        leaf("kube-proxy", "system:kube-proxy")
        leaf("kubelet", f"system:node:{NODE}", "system:nodes")
        sa = key()
        write("sa", sa)
        (self.dir / "sa.pub").write_bytes(sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def kubeconfig(self, path: Path, user: str, server: str) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "posegraph",
            "clusters": [{"name": "posegraph", "cluster": {"server": server,
                                                            "certificate-authority": str(self.dir / "ca.crt")}}],
            "users": [{"name": user, "user": {"client-certificate": str(self.dir / f"{user}.crt"),
                                              "client-key": str(self.dir / f"{user}.key")}}],
            "contexts": [{"name": "posegraph", "context": {"cluster": "posegraph", "user": user}}],
        }))
        return path


# ---- the cluster ---------------------------------------------------------------------------------------

@dataclass
class Cluster:
    dir: Path
    # Where the builds and the Docker engine keep their caches: this process's $POSEGRAPH_CACHE
    # unless given (the tests give the developer's, read before they isolate their own).
    script_env: dict | None = None
    engine_root: Path | None = None

    def script(self, *args: str, timeout: float = 1800) -> str:
        return control_plane_script(*args, timeout=timeout, env=self.script_env)

    # -- paths and state -----------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{NODE_IP}:{API_PORT}"

    @property
    def containerd_socket(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"

    def state(self) -> dict:
        path = self.dir / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def save_state(self, **changes) -> None:
        state = {**self.state(), **changes}
        (self.dir / "state.json").write_text(json.dumps(state, indent=2))

    def kubectl(self, *args: str, check: bool = True, input: bytes | None = None, timeout: float = 300
                ) -> subprocess.CompletedProcess:
        return run([KUBECTL, "--kubeconfig", self.kubeconfig, *args], check=check, input=input, timeout=timeout,
                   step=f"kubectl {args[0]}")

    def apply(self, *docs: dict) -> None:
        body = "\n---\n".join(yaml.safe_dump(d) for d in docs).encode()
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=body)

    # -- processes ---------------------------------------------------------------------------------------
    def start(self, name: str, cmd: list, *, env: dict | None = None) -> None:
        """``cmd`` in a session of its own (so `down` stops it with its children), its output in
        logs/NAME.log, its pid in pids/NAME. It outlives this process: `down` stops it."""
        (self.dir / "logs").mkdir(exist_ok=True)
        (self.dir / "pids").mkdir(exist_ok=True)
        with open(self.dir / "logs" / f"{name}.log", "ab") as log:
            process = subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       env={**os.environ, **(env or {})})
        (self.dir / "pids" / name).write_text(str(process.pid))

    def running(self, name: str) -> bool:
        try:
            pid = int((self.dir / "pids" / name).read_text())
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return False
        except ChildProcessError:
            pass
        except (OSError, ValueError):
            return False
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"

    def stop(self, name: str, grace: float = 10) -> None:
        path = self.dir / "pids" / name
        if not path.exists():
            return
        pid = int(path.read_text())
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
            try:
                os.killpg(pid, sig)
            except OSError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self.running(name):
                time.sleep(0.2)
            if not self.running(name):
                break
        path.unlink(missing_ok=True)

    def wait(self, what: str, check, timeout: float = 120, processes: tuple[str, ...] = ()) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except Exception:  # noqa: BLE001 - polling
                pass
            for name in processes:
                if not self.running(name):
                    tail = (self.dir / "logs" / f"{name}.log").read_text(errors="replace").strip().splitlines()[-5:]
                    raise ClusterError(f"{name} exited while waiting for {what}: {' | '.join(tail)}")
            time.sleep(0.5)
        raise ClusterError(f"no {what} after {timeout:.0f}s (logs: {self.dir / 'logs'})")

    def api_ready(self) -> bool:
        import ssl

        context = ssl.create_default_context(cafile=str(self.dir / "pki" / "ca.crt"))
        context.load_cert_chain(self.dir / "pki" / "admin.crt", self.dir / "pki" / "admin.key")
        with urllib.request.urlopen(f"{self.server}/readyz", context=context, timeout=3) as response:
            return response.status == 200

    # -- up ----------------------------------------------------------------------------------------------
    def up(self, *, chart: bool = True, checkpoints: Path | None = None) -> None:
        started = time.monotonic()
        if os.geteuid() != 0:
            raise ClusterError("the node needs root (network bridges, mounts, cgroups): run as root")
        if Path(f"/sys/class/net/{NODE_BRIDGE}").exists():
            raise ClusterError(f"a posegraph cluster already runs on this machine ({NODE_BRIDGE} exists): "
                               "`make cluster-down` (or scripts/cluster.py down --dir DIR) first")
        self.dir.mkdir(parents=True, exist_ok=True)
        if (self.dir / "pids").exists() and any((self.dir / "pids").iterdir()):
            raise ClusterError(f"{self.dir} has processes of an earlier cluster: scripts/cluster.py down --dir {self.dir}")
        bins = self.binaries()
        self.packages()
        timings = {}
        try:
            t = time.monotonic()
            self.network()
            self.control_plane(bins)
            timings["control plane"] = time.monotonic() - t
            t = time.monotonic()
            self.node(bins)
            timings["node Ready"] = time.monotonic() - t
            t = time.monotonic()
            self.load_images()
            timings["images loaded"] = time.monotonic() - t
            t = time.monotonic()
            self.addons(bins)
            timings["DNS and NetworkPolicies"] = time.monotonic() - t
            t = time.monotonic()
            self.script("kserve-up", str(self.dir), timeout=600)
            timings["KServe"] = time.monotonic() - t
            if chart:
                t = time.monotonic()
                self.install_chart(checkpoints)
                timings["chart and pipeline Ready"] = time.monotonic() - t
        except BaseException:
            say("up failed: stopping what it started")
            self.down(quiet=True)
            raise
        self.save_state(timings={k: round(v, 1) for k, v in timings.items()})
        say(f"cluster up in {time.monotonic() - started:.0f}s ("
            + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + ")")

    def binaries(self) -> dict[str, Path]:
        """Where the control plane's, the node's and KServe's binaries are (built if missing)."""
        self.script("build")
        self.script("build-node")
        self.script("build-kserve")
        bindir, nodedir = Path(self.script("bin")), Path(self.script("node-bin"))
        found = {name: bindir / name for name in ("etcd", "kube-apiserver", "kube-controller-manager")}
        found.update({name: nodedir / name for name in ("kube-scheduler", "kubelet", "kube-proxy", "kube-router")})
        for name, path in found.items():
            if not os.access(path, os.X_OK):
                raise ClusterError(f"{name} is not built ({path}): scripts/control-plane.sh build build-node")
        return found

    def packages(self) -> None:
        missing = sorted({pkg for path, pkg in PACKAGES.items() if not Path(path).exists()})
        if missing:
            say(f"installing Debian's {', '.join(missing)}")
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            run(["apt-get", "update", "-qq"], env=env, step="apt-get update")
            run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env,
                step=f"apt-get install {' '.join(missing)}")

    def network(self) -> None:
        """The node's address on a bridge of its own (no dummy links on this kernel), forwarding on;
        what it changes is saved first, so `down` puts it back."""
        saved = {key: Path("/proc/sys", *key.split(".")).read_text().strip() for key in SYSCTLS}
        iptables = run(["iptables-save"], step="iptables-save").stdout.decode()
        self.save_state(sysctls=saved, iptables=iptables)
        run(["ip", "link", "add", NODE_BRIDGE, "type", "bridge"], step=f"ip link add {NODE_BRIDGE}")
        run(["ip", "addr", "add", f"{NODE_IP}/24", "dev", NODE_BRIDGE], step="ip addr add")
        run(["ip", "link", "set", NODE_BRIDGE, "up"], step="ip link set up")
        for key, value in SYSCTLS.items():
            Path("/proc/sys", *key.split(".")).write_text(value)

    def control_plane(self, bins: dict[str, Path]) -> None:
        pki = PKI(self.dir / "pki")
        pki.make()
        pki.kubeconfig(self.kubeconfig, "admin", self.server)
        for user in ("controller-manager", "scheduler", "kube-proxy", "kubelet"):
            pki.kubeconfig(self.dir / f"{user}.kubeconfig", user, self.server)
        (self.dir / "server").write_text(self.server + "\n")  # what scripts/control-plane.sh kserve-up reads
        (self.dir / "etcd").mkdir(exist_ok=True)
        etcd_client, etcd_peer = free_port(), free_port()
        self.start("etcd", [bins["etcd"], "--name", "posegraph", "--data-dir", self.dir / "etcd",
                            "--listen-client-urls", f"http://127.0.0.1:{etcd_client}",
                            "--advertise-client-urls", f"http://127.0.0.1:{etcd_client}",
                            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                            "--initial-cluster", f"posegraph=http://127.0.0.1:{etcd_peer}",
                            "--unsafe-no-fsync", "--log-level", "warn"])
        p = self.dir / "pki"
        self.start("kube-apiserver", [
            bins["kube-apiserver"], "--bind-address", NODE_IP, "--advertise-address", NODE_IP,
            "--secure-port", API_PORT, "--etcd-servers", f"http://127.0.0.1:{etcd_client}",
            "--tls-cert-file", p / "apiserver.crt", "--tls-private-key-file", p / "apiserver.key",
            "--client-ca-file", p / "ca.crt",
            "--kubelet-client-certificate", p / "apiserver-kubelet-client.crt",
            "--kubelet-client-key", p / "apiserver-kubelet-client.key",
            "--kubelet-certificate-authority", p / "ca.crt", "--kubelet-preferred-address-types", "InternalIP",
            "--service-account-key-file", p / "sa.pub", "--service-account-signing-key-file", p / "sa.key",
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--authorization-mode", "Node,RBAC", "--anonymous-auth=false",
            "--enable-admission-plugins", "NamespaceLifecycle,NodeRestriction,ServiceAccount,PodSecurity,LimitRanger,"
                                          "ResourceQuota,DefaultStorageClass",
            "--service-cluster-ip-range", SERVICE_NET, "--service-node-port-range", "30000-32767",
            "--allow-privileged=false", "--profiling=false"])
        self.wait("the API server ready", self.api_ready, timeout=120, processes=("etcd", "kube-apiserver"))
        self.start("kube-controller-manager", [
            bins["kube-controller-manager"], "--kubeconfig", self.dir / "controller-manager.kubeconfig",
            "--authentication-kubeconfig", self.dir / "controller-manager.kubeconfig",
            "--authorization-kubeconfig", self.dir / "controller-manager.kubeconfig",
            "--bind-address", "127.0.0.1", "--secure-port", free_port(),
            "--service-account-private-key-file", p / "sa.key", "--root-ca-file", p / "ca.crt",
            "--use-service-account-credentials", "--leader-elect=false", "--cluster-cidr", POD_NET,
            "--service-cluster-ip-range", SERVICE_NET,
            # nodelifecycle on (it lifts the node's not-ready taint); no cloud, routes or IPAM: the
            # CNI's host-local hands out pod addresses.
            "--controllers", "*,-nodeipam,-route,-cloud-node-lifecycle,-service"])
        # --secure-port 0: a free port picked here could be taken by the controller manager, which
        # binds its own only after a while (seen).
        self.start("kube-scheduler", [bins["kube-scheduler"], "--kubeconfig", self.dir / "scheduler.kubeconfig",
                                      "--authentication-kubeconfig", self.dir / "scheduler.kubeconfig",
                                      "--authorization-kubeconfig", self.dir / "scheduler.kubeconfig",
                                      "--secure-port", "0", "--leader-elect=false"])
        self.wait("the default ServiceAccount", lambda: self.kubectl("get", "serviceaccount", "default",
                                                                       check=False).returncode == 0,
                  timeout=90, processes=("kube-apiserver", "kube-controller-manager"))

    def node(self, bins: dict[str, Path]) -> None:
        """containerd with the CNI, then the kubelet and kube-proxy; returns once the node is Ready."""
        root = self.dir / "containerd"
        for sub in ("root", "state", "cni/net.d", "cni/ipam"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        pause = build_images.images_by_name()["pause"].ref
        (root / "config.toml").write_text(f"""version = 2
root = "{root}/root"
state = "{root}/state"
[grpc]
  address = "{self.containerd_socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{_qualified(pause)}"
  # root here lacks CAP_SYS_RESOURCE: without this every sandbox fails ("can't get final child's PID
  # from pipe: EOF"), measured.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{root}/cni/net.d"
""")
        # The bridge plugin with host-local addresses; the firewall plugin lets pod traffic through
        # the FORWARD chain (policy DROP where dockerd ran, and br_netfilter sends bridged packets
        # there): without it pods could not reach each other (measured).
        (root / "cni" / "net.d" / "10-posegraph.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "posegraph",
            "plugins": [
                {"type": "bridge", "bridge": POD_BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": str(root / "cni" / "ipam"),
                          "ranges": [[{"subnet": POD_NET, "gateway": POD_GATEWAY}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "firewall", "backend": "iptables"},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ]}, indent=2))
        self.start("containerd", ["containerd", "--config", root / "config.toml"])
        self.wait("containerd", lambda: self.ctr("version").returncode == 0, timeout=60, processes=("containerd",))
        kubelet_dir = self.dir / "kubelet"
        kubelet_dir.mkdir(exist_ok=True)
        p = self.dir / "pki"
        (self.dir / "kubelet.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": NODE_IP, "port": free_port(), "readOnlyPort": 0, "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(p / "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(p / "kubelet-serving.crt"), "tlsPrivateKeyFile": str(p / "kubelet-serving.key"),
            "cgroupDriver": "cgroupfs", "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "clusterDNS": [DNS_IP], "clusterDomain": "cluster.local", "failSwapOn": False,
            "resolvConf": "/etc/resolv.conf",
            # The images are loaded, never pulled: a shared disk filling up must not make the kubelet
            # delete them or evict the pods.
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "serializeImagePulls": False,
        }))
        self.start("kubelet", [bins["kubelet"], "--config", self.dir / "kubelet.yaml",
                               "--kubeconfig", self.dir / "kubelet.kubeconfig", "--root-dir", kubelet_dir,
                               "--hostname-override", NODE, "--node-ip", NODE_IP,
                               "--node-labels", "posegraph.io/pool=gpu"])
        (self.dir / "kube-proxy.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "mode": "iptables", "clusterCIDR": POD_NET, "hostnameOverride": NODE,
            "clientConnection": {"kubeconfig": str(self.dir / "kube-proxy.kubeconfig")},
            "healthzBindAddress": f"127.0.0.1:{free_port()}", "metricsBindAddress": f"127.0.0.1:{free_port()}",
            # Leave the host's conntrack table size alone (its sysctl is not this node's to set).
            "conntrack": {"maxPerCore": 0, "min": 0},
        }))
        self.start("kube-proxy", [bins["kube-proxy"], "--config", self.dir / "kube-proxy.yaml"])

        def node_ready() -> bool:
            out = self.kubectl("get", "node", NODE, "-o", "json", check=False)
            if out.returncode != 0:
                return False
            conditions = json.loads(out.stdout)["status"].get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        self.wait("the node Ready", node_ready, timeout=180, processes=("containerd", "kubelet", "kube-proxy"))

    def ctr(self, *args: str, input: bytes | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return run(["ctr", "--address", self.containerd_socket, "--namespace", "k8s.io", *args], check=False,
                   input=input, timeout=timeout)

    def load_images(self) -> None:
        """Every CPU image of `make images` into the node's containerd, one `docker save` stream
        at a time: docker writes a save's layers to a folder under its data root before it streams
        them, so one save of all nine needed their whole size again on disk at once (a CI run ran
        out of disk there). Layers the images share are stored once by containerd."""
        images = [image for image in build_images.images() if not image.cuda]
        with docker_engine.engine(self.engine_root) as engine:
            sizes = {}
            for image in images:
                found = engine.inspect("image", image.ref)
                if found is None:
                    raise ClusterError(f"images not built: {image.ref}: run `make images`")
                sizes[image.ref] = found["Size"]
            for ref in sizes:
                save = subprocess.Popen([docker_engine.client(), "save", ref], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=engine.env())
                done = subprocess.run(["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io",
                                       "images", "import", "--all-platforms", "-"], stdin=save.stdout,
                                      capture_output=True, timeout=1200)
                save.stdout.close()
                saved = save.stderr.read().decode(errors="replace").strip()
                save.wait(timeout=60)
                if done.returncode != 0 or save.returncode != 0:
                    # docker's own error first: ctr only sees a stream that ended ("unrecognized
                    # image format") when docker save failed.
                    why = saved or done.stderr.decode(errors="replace").strip()
                    free = shutil.disk_usage(self.dir).free / 1e9
                    raise ClusterError(f"loading {ref} into containerd: {why[-300:]} ({free:.1f} GB free; the "
                                       f"CPU images take {2 * sum(sizes.values()) / 1e9:.1f} GB at most in "
                                       f"containerd, stored and unpacked)")
        listed = self.ctr("images", "list", "--quiet").stdout.decode().split()
        absent = [ref for ref in sizes if _qualified(ref) not in listed]
        if absent:
            raise ClusterError(f"containerd does not list {', '.join(absent)} after the import")

    def addons(self, bins: dict[str, Path]) -> None:
        """Cluster DNS (CoreDNS, a Deployment: scripts/cluster-addons.yaml) and NetworkPolicies
        enforced (kube-router's policy controller alone, on this machine, as its DaemonSet runs it on
        a node's network): from then on the chart's policies decide which pod reaches which."""
        text = (REPO / "scripts" / "cluster-addons.yaml").read_text()
        text = text.replace("COREDNS_IMAGE", build_images.images_by_name()["coredns"].ref).replace("DNS_IP", DNS_IP)
        self.kubectl("apply", "--server-side", "-f", "-", input=text.encode())
        self.kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=180s", timeout=200)
        self.save_state(ipsets=run(["ipset", "list", "-n"], step="ipset list").stdout.decode().split())
        self.start("kube-router", [bins["kube-router"], "--run-router=false", "--run-service-proxy=false",
                                   "--run-firewall=true", "--kubeconfig", self.kubeconfig,
                                   "--hostname-override", NODE, "--health-port", "0", "--enable-ipv6=false",
                                   "--service-cluster-ip-range", SERVICE_NET,
                                   "--service-node-port-range", "30000-32767"])
        self.wait("kube-router's policy controller", lambda: "Starting network policy controller full sync" in
                  (self.dir / "logs" / "kube-router.log").read_text(), timeout=60, processes=("kube-router",))

    def install_chart(self, checkpoints: Path | None = None) -> None:
        """The chart as values-kind.yaml sets it, with the images built here; the model archives
        in its object store; then its PosePipeline, Ready."""
        self.kubectl("create", "namespace", NAMESPACE)
        # The release's own pods meet PodSecurity "restricted" (tests/test_node.py shows it), but the
        # pipeline runs in this namespace too, and KServe v0.20's InferenceGraph router sets no seccomp
        # profile (pkg/controller/v1alpha1/inferencegraph/raw_ig.go): "restricted" would refuse it.
        # So: enforce "baseline", warn and audit "restricted".
        self.kubectl("label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=baseline",
                     "pod-security.kubernetes.io/warn=restricted", "pod-security.kubernetes.io/audit=restricted")
        sets = [a for k, v in build_images.chart_image_values().items() for a in ("--set-string", f"{k}={v}")]
        values = ["-f", REPO / "charts" / "posegraph" / "values-kind.yaml", *sets,
                  # this node's pod network, not kind's: the router's node-port policy excepts it
                  "--set-json", f'networkPolicy.podCIDRs=["{POD_NET}"]']
        # First without the pipeline: its stages would start before their archives are in the store.
        run([HELM, "--kubeconfig", self.kubeconfig, "install", RELEASE, REPO / "charts" / "posegraph",
             "-n", NAMESPACE, *values, "--set", "pipeline.enabled=false", "--wait", "--timeout", "10m"],
            timeout=700, step="helm install")
        self.push_archives(checkpoints)
        run([HELM, "--kubeconfig", self.kubeconfig, "upgrade", RELEASE, REPO / "charts" / "posegraph",
             "-n", NAMESPACE, *values, "--wait", "--timeout", "10m"], timeout=700, step="helm upgrade")
        self.wait_pipeline("demo", timeout=600)

    def s3_env(self) -> dict[str, str]:
        """The chart's object store as `posegraph models push` (boto3) reaches it from this machine:
        its Service's cluster address (kube-proxy's rules serve the host too), its Secret's keys."""
        secret = json.loads(self.kubectl("-n", NAMESPACE, "get", "secret", f"{RELEASE}-s3", "-o", "json").stdout)
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        service = json.loads(self.kubectl("-n", NAMESPACE, "get", "service", f"{RELEASE}-s3", "-o", "json").stdout)
        return {"AWS_ACCESS_KEY_ID": data["AWS_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": data["AWS_SECRET_ACCESS_KEY"],
                "AWS_DEFAULT_REGION": data.get("AWS_DEFAULT_REGION", "us-east-1"),
                "AWS_ENDPOINT_URL": f"http://{service['spec']['clusterIP']}:8333"}

    def push_archives(self, checkpoints: Path | None = None, prefix: str = "s3://posegraph-models/demo/") -> None:
        """As `make demo` does: the official checkpoints when they download, random ones otherwise
        (said loudly); each stage archived and pushed where the chart's pipeline reads it."""
        from posegraph.models.checkpoints import default_checkpoint_dir, ensure_checkpoints
        from posegraph.config import load_profile
        from posegraph.embedded import archives_for_profile
        from posegraph.serving.archive import push

        profile = load_profile("cpu")
        directory = Path(checkpoints) if checkpoints else default_checkpoint_dir()
        ensure_checkpoints(profile, directory)
        layouts = archives_for_profile(profile, directory)
        saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                                "AWS_ENDPOINT_URL")}
        os.environ.update(self.s3_env())
        try:
            for stage, layout in layouts.items():
                push(layout, f"{prefix}{stage}/")
                say(f"{stage}: archive pushed to {prefix}{stage}/")
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def describe(self) -> str:
        """How to reach what runs."""
        if not self.kubeconfig.exists() or not self.running("kube-apiserver"):
            return f"no cluster runs in {self.dir}"
        lines = [f"kubeconfig   export KUBECONFIG={self.kubeconfig}",
                 f"kubectl      {KUBECTL} get pods -A"]
        if self.kubectl("-n", NAMESPACE, "get", "service", "-o", "name", check=False).stdout:
            lines += [f"graph        http://{NODE_IP}:30080/   (posegraph call photo.jpg --endpoint http://{NODE_IP}:30080/)",
                      f"web UI       http://{NODE_IP}:30081/   user posegraph, password: "
                      f"{KUBECTL} --kubeconfig {self.kubeconfig} -n {NAMESPACE} get secret {RELEASE}-ui-auth "
                      "-o jsonpath='{.data.password}' | base64 -d",
                      "stop         make cluster-down"]
        timings = self.state().get("timings")
        if timings:
            lines.append("took         " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
        return "\n".join(lines)

    def wait_pipeline(self, name: str, namespace: str = NAMESPACE, timeout: float = 600) -> dict:
        found = {}

        def ready() -> bool:
            out = self.kubectl("-n", namespace, "get", "posepipeline", name, "-o", "json", check=False)
            if out.returncode != 0:
                return False
            found.update(json.loads(out.stdout))
            return found.get("status", {}).get("phase") == "Ready"
        self.wait(f"PosePipeline {name} Ready", ready, timeout=timeout, processes=("kubelet", "kube-apiserver"))
        return found

    # -- down --------------------------------------------------------------------------------------------
    def down(self, *, quiet: bool = False) -> None:
        """Stop everything `up` started and undo what it changed on the machine."""
        state = self.state()
        if (self.dir / "pids" / "kserve-manager").exists():
            run(["bash", SCRIPT, "kserve-down", str(self.dir)], check=False, timeout=300, env=self.script_env)
        if self.running("kube-apiserver") and self.running("kubelet"):
            # Nothing recreates pods while they go, and the kubelet tears their sandboxes down
            # (network namespaces, veths, addresses, mounts) as it would on a real node.
            self.stop("kube-controller-manager")
            self.stop("kube-scheduler")
            self.kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=1", "--wait=false",
                         check=False)
            self.wait_quietly("the pods gone", lambda: not self.ctr("containers", "list", "--quiet")
                              .stdout.decode().split(), timeout=120)
        for name in ("kube-router", "kube-proxy", "kubelet", "containerd", "kube-scheduler", "kube-controller-manager",
                     "kube-apiserver", "etcd"):
            self.stop(name)
        nodedir = Path(run(["bash", SCRIPT, "node-bin"], check=False, env=self.script_env).stdout.decode().strip())
        if (nodedir / "kube-proxy").exists():
            run([nodedir / "kube-proxy", "--cleanup"], check=False)
        if (nodedir / "kube-router").exists() and "ipsets" in state:
            run([nodedir / "kube-router", "--cleanup-config", "--run-router=false", "--run-service-proxy=false"],
                check=False, timeout=60)
        self.unmount()
        for link in (POD_BRIDGE, NODE_BRIDGE):
            if Path(f"/sys/class/net/{link}").exists():
                run(["ip", "link", "delete", link], check=False)
        for veth in Path("/sys/class/net").iterdir():  # a pod's end left behind by a killed runtime
            if veth.name.startswith("veth") and (veth / "master").exists() and \
                    (veth / "master").resolve().name == POD_BRIDGE:
                run(["ip", "link", "delete", veth.name], check=False)
        remove_cgroups()
        if "iptables" in state:
            restore_iptables(state["iptables"])
        if "ipsets" in state:
            # kube-router's sets that its cleanup left: only now, with the iptables rules that used
            # them restored away, can they be destroyed (a set a rule refers to cannot; a fresh
            # machine's run left nine KUBE-SRC/KUBE-DST sets when this ran before the restore).
            for name in run(["ipset", "list", "-n"], check=False).stdout.decode().split():
                if name not in state["ipsets"]:
                    run(["ipset", "destroy", name], check=False)
        for key, value in state.get("sysctls", {}).items():
            Path("/proc/sys", *key.split(".")).write_text(value)
        for path in (self.dir / "pids",):
            shutil.rmtree(path, ignore_errors=True)
        if not quiet:
            say(f"cluster in {self.dir} stopped; nothing of it runs or stays mounted")

    def wait_quietly(self, what: str, check, timeout: float) -> bool:
        try:
            self.wait(what, check, timeout=timeout)
            return True
        except ClusterError as exc:
            say(f"{exc}; going on")
            return False

    def unmount(self) -> None:
        """What the kubelet (projected volumes, emptyDirs) and containerd (rootfs, shm) mounted
        under the cluster's folder, deepest first; /run/netns entries the CNI left."""
        for _ in range(3):
            mounts = [line.split()[1].replace("\\040", " ") for line in Path("/proc/mounts").read_text().splitlines()]
            ours = sorted({m for m in mounts if m.startswith(str(self.dir.resolve()) + "/")}, key=len, reverse=True)
            if not ours:
                break
            for mount in ours:
                run(["umount", "-l", mount], check=False)


BUILTIN_CHAINS = {"filter": ("INPUT", "FORWARD", "OUTPUT"), "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
                  "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"), "raw": ("PREROUTING", "OUTPUT"),
                  "security": ("INPUT", "FORWARD", "OUTPUT")}


def iptables_tables(dump: str) -> dict[str, str]:
    """`iptables-save` output, table by table."""
    tables, current = {}, None
    for line in dump.splitlines():
        if line.startswith("*"):
            current = line[1:].strip()
            tables[current] = [line]
        elif current and not line.startswith("#"):
            tables[current].append(line)
            if line == "COMMIT":
                current = None
    return {name: "\n".join(lines) + "\n" for name, lines in tables.items()}


def restore_iptables(saved: str) -> None:
    """Every table as `up` found it: a table that had rules gets them back, one that had none
    (kube-proxy, kube-router and the CNI's firewall made it) is emptied, its chains deleted, its
    policies ACCEPT again. `iptables-restore` replaces each table it is given whole."""
    before = iptables_tables(saved)
    now = iptables_tables(run(["iptables-save"], check=False).stdout.decode())
    script = []
    for table in sorted(set(before) | set(now)):
        script.append(before.get(table) or "*{}\n{}COMMIT\n".format(
            table, "".join(f":{chain} ACCEPT [0:0]\n" for chain in BUILTIN_CHAINS.get(table, ()))))
    if script:
        run(["iptables-restore"], input="".join(script).encode(), check=False)


def remove_cgroups() -> None:
    """The kubepods cgroups the kubelet made, in every controller (deepest first)."""
    for controller in Path("/sys/fs/cgroup").iterdir():
        top = controller / "kubepods"
        if not top.is_dir():
            continue
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                directory.rmdir()
            except OSError:
                pass
        try:
            top.rmdir()
        except OSError:
            pass


def _qualified(ref: str) -> str:
    """How containerd names an image Docker calls ``ref``."""
    name, _, tag = ref.rpartition(":")
    first = name.split("/")[0]
    if "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}" if "/" in name else f"docker.io/library/{name}"
    return f"{name}:{tag}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--dir", type=Path, default=REPO / ".cluster", help="where it keeps its files (default .cluster)")
    parser.add_argument("--no-chart", action="store_true", help="up: the cluster and KServe, without posegraph's chart")
    parser.add_argument("--checkpoints", type=Path, help="up: the checkpoints to archive (default: as `make demo`)")
    args = parser.parse_args(argv)
    cluster = Cluster(args.dir.resolve())
    try:
        if args.command == "up":
            cluster.up(chart=not args.no_chart, checkpoints=args.checkpoints)
            print(cluster.describe())
        elif args.command == "down":
            cluster.down()
        else:
            print(cluster.describe())
    except ClusterError as exc:
        print(f"make cluster: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
