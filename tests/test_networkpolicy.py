"""The chart's NetworkPolicies (charts/posegraph/templates/networkpolicies/). Rendered with real helm
3 and 4 for the default, kind and eks values: every pod the chart or the operator makes is selected
by a policy, every policy selects some pod, and each connection the pipeline needs is allowed while
the ones it does not need are refused (a small model of NetworkPolicy semantics over the pods'
real labels). Then the real kube-apiserver (tests/control_plane.py) stores the policies as sent and
selects the same pods as the model, the Job controller's labels included.

The pods' labels come from the code that makes them: the chart's Deployment and Job templates, the
operator's children (posegraph.operator.resources: pipeline_children, posejob_job) and what KServe
v0.20 adds to a predictor's and a router's pods (KSERVE_* below, from KServe's source)."""

from __future__ import annotations

import dataclasses
import ipaddress
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from test_chart import CHART, HELMS, NS, PROFILES as VALUES, helm

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "operators" / "examples"
# Addresses outside the pod network: where the API server, S3 and an RDS instance answer.
API_SERVER = "172.18.0.2"  # a kind control-plane node
S3_PUBLIC = "52.216.8.1"
RDS_IN_VPC = "192.168.40.7"  # inside eksctl's default VPC CIDR (values-eks.yaml)
ELSEWHERE = "10.200.0.9"
POD_NETWORK = "10.244.0.0/16"   # kind's (kind-config.yaml); the pods of the model get addresses in it


# ---- KServe's pod labels (v0.20.0, RawDeployment/Standard) ------------------------------------------
# pkg/controller/v1beta1/inferenceservice/components/predictor.go buildObjectMeta: the runtime's
# spec.labels, then the InferenceService's labels, then the predictor's, then
# serving.kserve.io/inferenceservice=<isvc> and component=predictor; deployment_reconciler.go
# createRawDefaultDeployment adds app=isvc.<isvc>-predictor to the pod template.
# pkg/controller/v1alpha1/inferencegraph/raw_ig.go constructForRawDeployment: the InferenceGraph's
# labels plus serving.kserve.io/inferencegraph=<name>; the same deployment code adds app=isvc.<name>.

def kserve_predictor_pod_labels(isvc: dict, runtime_labels: dict | None = None) -> dict[str, str]:
    name = isvc["metadata"]["name"]
    return {**(runtime_labels or {}), **isvc["metadata"].get("labels", {}),
            **isvc["spec"]["predictor"].get("labels", {}),
            "serving.kserve.io/inferenceservice": name, "component": "predictor",
            "app": f"isvc.{name}-predictor", "pod-template-hash": "5d9c7b8f4"}


def kserve_router_pod_labels(graph: dict) -> dict[str, str]:
    name = graph["metadata"]["name"]
    return {**graph["metadata"].get("labels", {}), "serving.kserve.io/inferencegraph": name,
            "app": f"isvc.{name}", "pod-template-hash": "6f7d8c9b5"}


def job_controller_labels(job_name: str) -> dict[str, str]:
    """What the Job controller adds to its pods (Kubernetes >= 1.27; checked against the real one below)."""
    uid = "0e2f6a55-8d1c-4c51-9a4e-3f1e2d3c4b5a"
    return {"job-name": job_name, "batch.kubernetes.io/job-name": job_name,
            "controller-uid": uid, "batch.kubernetes.io/controller-uid": uid}


# ---- a label-selector and NetworkPolicy model ----------------------------------------------------

def selector_matches(selector: dict | None, labels: dict[str, str]) -> bool:
    """metav1.LabelSelector: matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist), ANDed;
    an empty selector matches everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown operator {op}")
    return True


def selector_string(selector: dict) -> str:
    """The same selector as the API server's label_selector query parameter."""
    parts = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for e in selector.get("matchExpressions") or []:
        op, key, values = e["operator"], e["key"], ",".join(e.get("values") or [])
        parts.append({"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})", "Exists": key,
                      "DoesNotExist": f"!{key}"}[op])
    return ",".join(parts)


@dataclass(frozen=True)
class Pod:
    role: str
    namespace: str
    labels: dict = field(hash=False, compare=False)
    ip: str = field(default="", hash=False, compare=False)   # given by Cluster, in POD_NETWORK

    def __repr__(self) -> str:
        return f"{self.role}@{self.namespace}"


@dataclass(frozen=True)
class Address:
    """Something outside the pod network (a node, the API server, S3, RDS, a load balancer)."""
    ip: str


def peer_matches(peer: dict, policy_namespace: str, endpoint) -> bool:
    if "ipBlock" in peer:
        # The API says ipBlocks are meant for addresses outside the pod network, but leaves pod
        # addresses to the implementation; kube-router matches them (tests/test_node.py saw every pod
        # reach the router through the node-port policy's 0.0.0.0/0), so the model does too.
        ip = ipaddress.ip_address(endpoint.ip)
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(c) for c in block.get("except") or [])
    if not isinstance(endpoint, Pod):
        return False
    if "namespaceSelector" in peer:
        namespace_ok = selector_matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": endpoint.namespace})
    else:
        namespace_ok = endpoint.namespace == policy_namespace
    return namespace_ok and selector_matches(peer.get("podSelector"), endpoint.labels)


def port_matches(rule: dict, port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        if isinstance(p["port"], str):
            raise AssertionError(f"named port {p['port']!r}: the model (and the chart) use numbers")
        if p["port"] <= port <= p.get("endPort", p["port"]):
            return True
    return False


def policy_types(policy: dict) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))


def selects(policy: dict, pod: Pod) -> bool:
    return pod.namespace == policy["metadata"]["namespace"] and selector_matches(policy["spec"]["podSelector"], pod.labels)


class Cluster:
    """Pods and the policies over them: what may connect to what, as a NetworkPolicy implementation decides."""

    def __init__(self, policies: list[dict], pods: list[Pod]) -> None:
        addresses = ipaddress.ip_network(POD_NETWORK).hosts()
        next(addresses)   # the gateway
        self.policies = policies
        self.pods = [p if p.ip else dataclasses.replace(p, ip=str(next(addresses))) for p in pods]

    def _side_allows(self, direction: str, pod: Pod, other, port: int, protocol: str) -> bool:
        key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        selecting = [p for p in self.policies if direction in policy_types(p) and selects(p, pod)]
        if not selecting:
            return True  # a pod no policy selects for a direction is open in that direction
        for policy in selecting:
            for rule in policy["spec"].get(key) or []:
                peers = rule.get(peers_key)
                if port_matches(rule, port, protocol) and (
                        not peers or any(peer_matches(peer, policy["metadata"]["namespace"], other) for peer in peers)):
                    return True
        return False

    def allows(self, source, destination, port: int, protocol: str = "TCP") -> bool:
        egress = not isinstance(source, Pod) or self._side_allows("Egress", source, destination, port, protocol)
        ingress = not isinstance(destination, Pod) or self._side_allows("Ingress", destination, source, port, protocol)
        return egress and ingress

    def pod(self, role: str, namespace: str = NS) -> Pod:
        return next(p for p in self.pods if p.role == role and p.namespace == namespace)


# ---- rendering, and the pods of a release ------------------------------------------------------------

def render(values: str, *extra: str, helm_name: str = "helm4", namespace: str = NS) -> list[dict]:
    out = helm(helm_name, "template", "posegraph", str(CHART), "-n", namespace, *VALUES[values], *extra)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def network_policies(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] == "NetworkPolicy"]


def _with_uid(body: dict, namespace: str) -> dict:
    return {**body, "metadata": {**body["metadata"], "namespace": namespace, "uid": str(uuid.uuid4())}}


def pipeline_pods(pipeline: dict, namespace: str, runtimes: dict[str, dict]) -> list[Pod]:
    """The operator's children of a PosePipeline, as KServe turns them into pods."""
    from posegraph.operator.resources import pipeline_children

    pods = []
    for child in pipeline_children(_with_uid(pipeline, namespace)):
        if child["kind"] == "InferenceService":
            runtime = runtimes.get(child["spec"]["predictor"]["model"]["runtime"], {})
            labels = kserve_predictor_pod_labels(child, (runtime.get("spec") or {}).get("labels"))
            pods.append(Pod(f"stage:{child['metadata']['labels']['posegraph.io/stage']}", namespace, labels))
        else:
            pods.append(Pod("router", namespace, kserve_router_pod_labels(child)))
    return pods


def runner_pod(pipeline_name: str, namespace: str) -> tuple[Pod, dict]:
    from posegraph.operator.resources import posejob_job

    posejob = yaml.safe_load((EXAMPLES / "posejob.yaml").read_text())
    posejob["spec"]["pipelineRef"]["name"] = pipeline_name
    job = posejob_job(_with_uid(posejob, namespace), f"http://{pipeline_name}.{namespace}.svc.cluster.local")
    labels = {**job["spec"]["template"]["metadata"]["labels"], **job_controller_labels(job["metadata"]["name"])}
    return Pod("runner", namespace, labels), job


ROLE_OF_COMPONENT = {"operator": "operator", "ui": "ui", "postgresql": "postgresql", "object-store": "object-store"}


def release_pods(objects: list[dict], namespace: str = NS, extra_namespaces: tuple[str, ...] = ()) -> list[Pod]:
    """Every pod of the release: the chart's workloads, and in each namespace where PoseJobs run a
    pipeline's stages and router and a PoseJob's runner."""
    pods = []
    for o in objects:
        if o["kind"] not in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            continue
        labels = dict(o["spec"]["template"]["metadata"]["labels"])
        component = labels["app.kubernetes.io/component"]
        role = ROLE_OF_COMPONENT[component] if o["kind"] != "Job" else "buckets"
        labels.update(job_controller_labels(o["metadata"]["name"]) if o["kind"] == "Job"
                      else {"pod-template-hash": "7c9f6d5b8"})
        pods.append(Pod(role, o["metadata"].get("namespace", namespace), labels))
    runtimes = {o["metadata"]["name"]: o for o in objects if o["kind"] in ("ClusterServingRuntime", "ServingRuntime")}
    rendered = [o for o in objects if o["kind"] == "PosePipeline"]
    pipeline = rendered[0] if rendered else yaml.safe_load((EXAMPLES / "posepipeline.yaml").read_text())
    for ns in (namespace, *extra_namespaces):
        pods += pipeline_pods(pipeline, ns, runtimes)
        pods.append(runner_pod(pipeline["metadata"]["name"], ns)[0])
    return pods


def outsiders(namespace: str = NS) -> list[Pod]:
    """Pods that are not posegraph's: cluster DNS, a pod in the release namespace, one elsewhere."""
    return [Pod("dns", "kube-system", {"k8s-app": "kube-dns", "pod-template-hash": "668d6bf9bc"}),
            Pod("neighbour", namespace, {"app": "neighbour"}),
            Pod("stranger", "elsewhere", {"app": "stranger"}),
            Pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}),
            Pod("ingress", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})]


def cluster(values: str, *extra: str, helm_name: str = "helm4", extra_namespaces: tuple[str, ...] = ()) -> Cluster:
    objects = render(values, *extra, helm_name=helm_name)
    return Cluster(network_policies(objects), release_pods(objects, NS, extra_namespaces) + outsiders())


# ---- 1. rendered: selection -----------------------------------------------------------------------------

@pytest.mark.parametrize("helm_name", sorted(HELMS))
@pytest.mark.parametrize("values", sorted(VALUES))
def test_every_pod_is_selected_and_every_policy_selects_a_pod(helm_name, values):
    objects = render(values, "--set", "jobRunner.extraNamespaces={videos}", helm_name=helm_name)
    policies = network_policies(objects)
    pods = release_pods(objects, NS, ("videos",))
    assert policies and {p["apiVersion"] for p in policies} == {"networking.k8s.io/v1"}
    roles = {p.role for p in pods}
    assert {"operator", "router", "runner", "stage:detect", "stage:pose2d", "stage:lift3d"} <= roles
    assert ("ui" in roles) == (values != "default") and ("postgresql" in roles) == (values == "kind")
    for pod in pods:
        selecting = [p["metadata"]["name"] for p in policies if selects(p, pod)]
        assert selecting, f"{pod} ({pod.labels}) is selected by no NetworkPolicy"
        types = {t for p in policies if selects(p, pod) for t in policy_types(p)}
        assert types == {"Ingress", "Egress"}, f"{pod}: isolated only for {types}"
    for policy in policies:
        where = f"{policy['metadata']['namespace']}/{policy['metadata']['name']}"
        assert [p for p in pods if selects(policy, p)], f"{where} selects none of {pods}"
        assert not [p for p in outsiders() if selects(policy, p)], f"{where} selects a pod that is not posegraph's"
    # One policy per component and namespace: stages, router and runner where PoseJobs run.
    names = sorted((p["metadata"]["namespace"], p["metadata"]["name"]) for p in policies)
    for ns in (NS, "videos"):
        for name in ("posegraph-stages", "posegraph-router", "posegraph-job-runner"):
            assert (ns, name) in names


def test_the_stage_and_router_selectors_need_kserves_pod_labels():
    """The selectors name labels KServe puts on pods, not only the operator's: an InferenceService's
    metadata alone (no pod) is not a stage pod, and a stage pod is not a router."""
    c = cluster("kind")
    stages = next(p for p in c.policies if p["metadata"]["name"] == "posegraph-stages")
    router = next(p for p in c.policies if p["metadata"]["name"] == "posegraph-router")
    from posegraph.operator.resources import pipeline_children

    pipeline = next(o for o in render("kind") if o["kind"] == "PosePipeline")
    children = pipeline_children(_with_uid(pipeline, NS))
    for child in children:
        bare = Pod("bare", NS, child["metadata"]["labels"])
        assert not selects(stages, bare) and not selects(router, bare)
    assert selects(stages, c.pod("stage:detect")) and not selects(router, c.pod("stage:detect"))
    assert selects(router, c.pod("router")) and not selects(stages, c.pod("router"))


# ---- 1. rendered: who may connect to whom -------------------------------------------------------------

STAGES = ("stage:detect", "stage:pose2d", "stage:lift3d")


@pytest.mark.parametrize("helm_name", sorted(HELMS))
@pytest.mark.parametrize("values", sorted(VALUES))
def test_the_pipelines_connections_are_allowed_and_nothing_else(helm_name, values):
    c = cluster(values, helm_name=helm_name)
    pod = c.pod
    ui = values != "default"
    chart_pods = ["operator", "router", "runner", *STAGES] + (["ui"] if ui else [])

    # Stages: from the router and the runners, on 8080 only.
    for stage in STAGES:
        assert c.allows(pod("router"), pod(stage), 8080)
        assert c.allows(pod("runner"), pod(stage), 8080)
        assert not c.allows(pod("router"), pod(stage), 8082)
        for other in ["operator", "neighbour"] + (["ui"] if ui else []) + [s for s in STAGES if s != stage]:
            assert not c.allows(pod(other), pod(stage), 8080), f"{other} → {stage}"
        assert not c.allows(pod("stranger", "elsewhere"), pod(stage), 8080)
        assert not c.allows(pod("prometheus", "monitoring"), pod(stage), 8082)  # no scrapers named
    # The router: from the runners and the UI.
    assert c.allows(pod("runner"), pod("router"), 8080)
    if ui:
        assert c.allows(pod("ui"), pod("router"), 8080)
    for other in ("operator", "neighbour", *STAGES):
        assert not c.allows(pod(other), pod("router"), 8080), f"{other} → router"
    assert not c.allows(pod("ingress", "ingress-nginx"), pod("router"), 8080)
    # kind's node port (pipeline.nodePort) reaches the router from node addresses.
    assert c.allows(Address(API_SERVER), pod("router"), 8080) == (values == "kind")
    # The UI: its port, from anywhere; nothing else.
    if ui:
        for source in (pod("neighbour"), pod("stranger", "elsewhere"), Address(ELSEWHERE)):
            assert c.allows(source, pod("ui"), 8088)
            assert not c.allows(source, pod("ui"), 8080)
    # Nothing calls the runners or the operator (no metrics scraping configured).
    assert not c.allows(pod("neighbour"), pod("runner"), 9100)
    assert not c.allows(pod("prometheus", "monitoring"), pod("operator"), 9101)

    # Out: DNS for every pod; the API server for the operator, the runners and the UI only.
    for name in chart_pods:
        assert c.allows(pod(name), pod("dns", "kube-system"), 53, "UDP"), name
        assert c.allows(pod(name), pod("dns", "kube-system"), 53, "TCP"), name
        assert not c.allows(pod(name), pod("neighbour"), 53, "UDP"), name
    for name in chart_pods:
        wanted = name in ("operator", "runner", "ui")
        for port in (443, 6443):
            # 443 to any address is also S3's rule (0.0.0.0/0), except on kind (in-cluster store).
            s3 = port == 443 and values != "kind" and name in (*STAGES, "runner", "ui")
            assert c.allows(pod(name), Address(API_SERVER), port) == (wanted or s3), f"{name} → API server:{port}"
    # S3: the stages, the runners and the UI. kind's store is in the cluster: the stages open nothing
    # on 443 there (the runners and the UI still can, through the API server's 0.0.0.0/0 rule).
    for name in [*STAGES, "runner"] + (["ui"] if ui else []):
        if values == "kind":
            assert c.allows(pod(name), pod("object-store"), 8333), name
            assert c.allows(pod(name), Address(S3_PUBLIC), 443) == (name in ("runner", "ui")), name
        else:
            assert c.allows(pod(name), Address(S3_PUBLIC), 443), name
    assert not c.allows(pod("router"), Address(S3_PUBLIC), 443)
    # The results database: the runners and the UI.
    for name in ["runner"] + (["ui"] if ui else []):
        if values == "kind":
            assert c.allows(pod(name), pod("postgresql"), 5432), name
            assert not c.allows(pod(name), Address(RDS_IN_VPC), 5432)
        else:
            assert c.allows(pod(name), Address(RDS_IN_VPC), 5432), name
            assert c.allows(pod(name), Address(ELSEWHERE), 5432) == (values == "default")  # eks: the VPC only
    for name in ("operator", "router", *STAGES):
        assert not c.allows(pod(name), Address(RDS_IN_VPC), 5432), name
    # Between the pipeline's own pods: router → stages, runner → router and stages, UI → router.
    assert not c.allows(pod("stage:detect"), pod("router"), 8080)
    assert not c.allows(pod("router"), pod("runner"), 9100)
    assert not c.allows(pod("operator"), pod("router"), 8080)
    # Nothing leaves for an arbitrary address (e.g. a stage fetching from the internet on 80).
    for name in chart_pods:
        assert not c.allows(pod(name), Address(S3_PUBLIC), 80), name


def test_kinds_stores_admit_only_their_clients():
    c = cluster("kind", "--set", "jobRunner.extraNamespaces={videos}", extra_namespaces=("videos",))
    pod = c.pod
    for client in ("runner", "ui"):
        assert c.allows(pod(client), pod("postgresql"), 5432)
    assert c.allows(pod("runner", "videos"), pod("postgresql"), 5432)  # PoseJobs in another namespace
    for other in ("router", "operator", "stage:detect", "neighbour", "object-store"):
        assert not c.allows(pod(other), pod("postgresql"), 5432), other
    for client in ("runner", "ui", "stage:detect", "stage:lift3d", "buckets"):
        assert c.allows(pod(client), pod("object-store"), 8333), client
    assert c.allows(pod("stage:pose2d", "videos"), pod("object-store"), 8333)
    for other in ("router", "operator", "neighbour"):
        assert not c.allows(pod(other), pod("object-store"), 8333), other
    # The bucket hook: DNS and the store, nothing else; and it is not the store (no ingress).
    assert c.allows(pod("buckets"), pod("dns", "kube-system"), 53, "UDP")
    assert not c.allows(pod("buckets"), pod("postgresql"), 5432)
    assert not c.allows(pod("buckets"), Address(API_SERVER), 6443)
    assert not c.allows(pod("runner"), pod("buckets"), 8333)
    # The stores open no connection.
    assert not c.allows(pod("postgresql"), pod("dns", "kube-system"), 53, "UDP")
    assert not c.allows(pod("object-store"), Address(S3_PUBLIC), 443)


def test_another_namespace_where_posejobs_run_gets_the_same_policies():
    c = cluster("eks", "--set", "jobRunner.extraNamespaces={videos}", extra_namespaces=("videos",))
    pod = c.pod
    assert c.allows(pod("runner", "videos"), pod("router", "videos"), 8080)
    assert c.allows(pod("router", "videos"), pod("stage:detect", "videos"), 8080)
    # Peers are per namespace: a runner elsewhere calls its own namespace's pipeline only.
    assert not c.allows(pod("runner", "videos"), pod("router"), 8080)
    assert not c.allows(pod("router"), pod("stage:detect", "videos"), 8080)
    assert not c.allows(pod("ui"), pod("router", "videos"), 8080)  # the UI uses the release's pipeline


def test_ingress_namespaces_metrics_and_ui_peers_come_from_values():
    c = cluster("eks", "--set", "networkPolicy.router.ingressNamespaces={ingress-nginx}",
                "--set", "networkPolicy.metrics.namespaces={monitoring}",
                "--set-json", 'networkPolicy.ui.from=[{"namespaceSelector": {"matchLabels": '
                              '{"kubernetes.io/metadata.name": "ingress-nginx"}}}]',
                "--set-json", 'networkPolicy.extraEgress.stages=[{"to": [{"ipBlock": {"cidr": "10.200.0.0/16"}}], '
                              '"ports": [{"port": 8000, "protocol": "TCP"}]}]')
    pod = c.pod
    ingress, prometheus = pod("ingress", "ingress-nginx"), pod("prometheus", "monitoring")
    assert c.allows(ingress, pod("router"), 8080)
    assert not c.allows(pod("stranger", "elsewhere"), pod("router"), 8080)
    assert c.allows(ingress, pod("ui"), 8088) and not c.allows(pod("neighbour"), pod("ui"), 8088)
    assert not c.allows(Address(ELSEWHERE), pod("ui"), 8088)
    assert c.allows(prometheus, pod("operator"), 9101) and c.allows(prometheus, pod("runner"), 9100)
    assert c.allows(prometheus, pod("stage:detect"), 8082) and c.allows(prometheus, pod("stage:detect"), 8080)
    assert not c.allows(prometheus, pod("router"), 8080)
    assert not c.allows(pod("stranger", "elsewhere"), pod("operator"), 9101)
    assert c.allows(pod("stage:detect"), Address(ELSEWHERE), 8000)
    assert not c.allows(pod("router"), Address(ELSEWHERE), 8000)


def test_the_servicemonitor_opens_only_the_operators_metrics_port():
    c = cluster("default", "--set", "serviceMonitor.enabled=true")
    pod = c.pod
    assert c.allows(pod("prometheus", "monitoring"), pod("operator"), 9101)
    assert not c.allows(pod("prometheus", "monitoring"), pod("operator"), 8081)
    assert not c.allows(pod("prometheus", "monitoring"), pod("runner"), 9100)
    assert not c.allows(pod("prometheus", "monitoring"), pod("stage:lift3d"), 8082)


def test_kind_and_eks_policies_differ_only_where_intended():
    """(tests/test_chart.py compares the other objects.) kind: its stores and the node port; EKS: RDS by
    CIDR where kind has the in-cluster PostgreSQL, S3 by CIDR where kind has the in-cluster store."""
    kind = {p["metadata"]["name"]: p for p in network_policies(render("kind"))}
    eks = {p["metadata"]["name"]: p for p in network_policies(render("eks"))}
    assert set(kind) - set(eks) == {"posegraph-router-nodeport", "posegraph-postgresql", "posegraph-s3",
                                    "posegraph-s3-buckets"}
    assert set(eks) - set(kind) == set()
    changed = {name for name in kind.keys() & eks.keys() if kind[name] != eks[name]}
    assert changed == {"posegraph-stages", "posegraph-job-runner", "posegraph-ui"}  # S3 (and the database)
    assert kind["posegraph-operator"] == eks["posegraph-operator"] and kind["posegraph-router"] == eks["posegraph-router"]


def test_the_node_port_lets_node_addresses_in_and_no_pod():
    """The router's node-port policy (kind): open to addresses outside the pod network only. kind's
    pod network is said once in kind-config.yaml and values-kind.yaml must carry the same."""
    kind_config = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    kind_values = yaml.safe_load((CHART / "values-kind.yaml").read_text())
    assert kind_values["networkPolicy"]["podCIDRs"] == [kind_config["networking"]["podSubnet"]] == [POD_NETWORK]
    c = cluster("kind")
    assert c.allows(Address(API_SERVER), c.pod("router"), 8080)
    for source in (c.pod("neighbour"), c.pod("stranger", "elsewhere"), c.pod("ingress", "ingress-nginx")):
        assert not c.allows(source, c.pod("router"), 8080), source
    without = helm("helm4", "template", "posegraph", str(CHART), "-n", NS, *VALUES["kind"],
                   "--set-json", "networkPolicy.podCIDRs=[]", check=False)
    assert without.returncode != 0
    assert "set networkPolicy.podCIDRs to the cluster's pod network" in without.stderr


@pytest.mark.parametrize("helm_name", sorted(HELMS))
@pytest.mark.parametrize("values", sorted(VALUES))
def test_disabled_renders_none(helm_name, values):
    objects = render(values, "--set", "networkPolicy.enabled=false", helm_name=helm_name)
    assert not network_policies(objects)
    assert network_policies(render(values, helm_name=helm_name))


def test_the_values_schema_checks_the_block(tmp_path):
    for bad, mentions in (({"networkPolicy": {"enabld": True}}, "enabld"),
                          ({"networkPolicy": {"s3": {"cidrs": ["not-a-cidr"]}}}, "cidrs"),
                          ({"networkPolicy": {"apiServer": {"ports": [70000]}}}, "ports"),
                          ({"networkPolicy": {"ui": {"from": [{"podSelectr": {}}]}}}, "podSelectr")):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(bad))
        result = helm("helm4", "template", "x", str(CHART), "-f", str(path), check=False)
        assert result.returncode != 0 and "schema" in result.stderr.lower() and mentions in result.stderr, bad


# ---- 2. the real kube-apiserver: stored as sent, and it selects the pods the model selects ----------

@pytest.fixture(scope="module")
def api(control_plane):
    import kubernetes

    client = control_plane.api_client()
    return kubernetes.client.CoreV1Api(client), kubernetes.client.BatchV1Api(client), \
        kubernetes.client.NetworkingV1Api(client)


def _pod_manifest(pod: Pod, name: str) -> dict:
    return {"metadata": {"name": name, "labels": pod.labels},
            "spec": {"automountServiceAccountToken": False,
                     "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}}


@pytest.mark.parametrize("values", sorted(VALUES))
def test_the_api_server_accepts_them_and_selects_what_the_model_selects(control_plane, api, values):
    from test_kube_apiserver import assert_kept

    core, _, networking = api
    namespace, extra = f"np-{values}", f"np-{values}-jobs"
    objects = render(values, "--set", f"jobRunner.extraNamespaces={{{extra}}}", namespace=namespace)
    policies = network_policies(objects)
    for ns in (namespace, extra):
        control_plane.create_namespace(ns)
    # Created for real (not a dry run): validated, defaulted and stored by the API server.
    control_plane.kubectl("apply", "--server-side", "--field-manager", "helm", "-f", "-",
                          input=yaml.safe_dump_all(policies))
    for sent in policies:
        stored = networking.read_namespaced_network_policy(sent["metadata"]["name"], sent["metadata"]["namespace"])
        assert_kept(sent, control_plane.api_client().sanitize_for_serialization(stored),
                    f"NetworkPolicy/{sent['metadata']['name']}")

    # Pods with the model's labels, and the API server's own selection of them.
    pods = release_pods(objects, namespace, (extra,))
    names = {}
    for i, pod in enumerate(pods):
        names[pod] = f"{pod.role.replace(':', '-')}-{i}"
        core.create_namespaced_pod(pod.namespace, _pod_manifest(pod, names[pod]))
    for policy in policies:
        ns = policy["metadata"]["namespace"]
        selectors = [policy["spec"]["podSelector"]]
        selectors += [peer["podSelector"] for key, peers_key in (("ingress", "from"), ("egress", "to"))
                      for rule in policy["spec"].get(key) or [] for peer in rule.get(peers_key) or []
                      if "podSelector" in peer and "namespaceSelector" not in peer]
        for selector in selectors:
            served = {p.metadata.name for p in core.list_namespaced_pod(ns, label_selector=selector_string(selector)).items}
            modelled = {names[p] for p in pods if p.namespace == ns and selector_matches(selector, p.labels)}
            assert served == modelled, f"{policy['metadata']['name']}: {selector}"
            assert served or selector is not policy["spec"]["podSelector"], f"{policy['metadata']['name']} selects no pod"


def test_the_job_controllers_labels_are_the_modelled_ones(control_plane, api):
    """The runner's and the bucket hook's pods as kube-controller-manager makes them: the policies for
    them select them, and the object store's server policy does not select the hook."""
    from services import wait

    core, batch, _ = api
    namespace = "np-jobs"
    control_plane.create_namespace(namespace)
    objects = render("kind", namespace=namespace)
    policies = {p["metadata"]["name"]: p for p in network_policies(objects)}
    runner, job = runner_pod("demo", namespace)
    job["metadata"].pop("ownerReferences")  # no PoseJob here: the garbage collector would take it
    core.create_namespaced_service_account(namespace, {"metadata": {"name": job["spec"]["template"]["spec"]
                                                                    ["serviceAccountName"]}})
    hook = next(o for o in objects if o["kind"] == "Job")
    for manifest in (job, hook):
        batch.create_namespaced_job(namespace, manifest)

    def pod_of(job_name: str):
        items = core.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={job_name}").items
        return items[0] if items else None

    for manifest, policy, not_policy in ((job, "posegraph-job-runner", "posegraph-stages"),
                                         (hook, "posegraph-s3-buckets", "posegraph-s3")):
        name = manifest["metadata"]["name"]
        wait(lambda n=name: pod_of(n) is not None, what=f"the pod of Job {name}")
        real = pod_of(name).metadata.labels
        modelled = {**manifest["spec"]["template"]["metadata"]["labels"], **job_controller_labels(name)}
        assert set(modelled) <= set(real), f"{name}: modelled {sorted(modelled)}, real {sorted(real)}"
        assert {k: real[k] for k in ("job-name", "batch.kubernetes.io/job-name")} == {
            k: modelled[k] for k in ("job-name", "batch.kubernetes.io/job-name")}
        real_pod = Pod(name, namespace, real)
        assert selects(policies[policy], real_pod) and not selects(policies[not_policy], real_pod), name
        served = {p.metadata.name for p in core.list_namespaced_pod(
            namespace, label_selector=selector_string(policies[policy]["spec"]["podSelector"])).items}
        assert pod_of(name).metadata.name in served
