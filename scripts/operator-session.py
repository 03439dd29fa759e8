#!/usr/bin/env python
"""Reproduce the `kubectl get posepipelines,posejobs` session shown in docs/operator.md.

No API server runs on the machine this project is developed on, so this drives the real operator
(kopf, in-process) against kmock's Kubernetes emulator, plays KServe's and the Job controller's
part (it marks children Ready, reports runner progress, finishes the Job), and prints the tables
kubectl would print. The API server, not kubectl, renders CRD printer columns (and kmock does not),
so the tables are rendered here from the CRDs' own additionalPrinterColumns.

    .venv/bin/python scripts/operator-session.py
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
NS = "posegraph"


def main() -> None:
    from kmock_cluster import KMockCluster

    cluster = KMockCluster(Path(tempfile.mkdtemp(prefix="posegraph-kmock-")))
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    import kubernetes
    from kopf.testing import KopfRunner

    kubernetes.config.load_kube_config(config_file=str(cluster.kubeconfig))
    api, batch = kubernetes.client.CustomObjectsApi(), kubernetes.client.BatchV1Api()
    created = {}
    out: list[str] = []  # KopfRunner captures stdout while it runs: print afterwards

    def apply(example: str, name: str | None = None, minutes_ago: int = 0, **spec) -> None:
        manifest = yaml.safe_load((ROOT / "operators/examples" / example).read_text())
        name = name or manifest["metadata"]["name"]
        stamp = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=minutes_ago)
        created[name] = stamp
        # What an API server adds on create and kmock does not.
        manifest["metadata"].update(name=name, namespace=NS, uid=str(uuid.uuid4()), resourceVersion="1",
                                    creationTimestamp=stamp.strftime("%Y-%m-%dT%H:%M:%SZ"))
        manifest["spec"].update(spec)
        api.create_namespaced_custom_object("posegraph.io", "v1alpha1", NS, manifest["kind"].lower() + "s", manifest)

    def ready(isvc: str | None = None, graph: str | None = None) -> None:
        if isvc:
            api.patch_namespaced_custom_object_status("serving.kserve.io", "v1beta1", NS, "inferenceservices", isvc, {
                "status": {"url": f"http://{isvc}.{NS}.svc.cluster.local",
                           "conditions": [{"type": "Ready", "status": "True"}]}})
        if graph:
            api.patch_namespaced_custom_object_status("serving.kserve.io", "v1alpha1", NS, "inferencegraphs", graph, {
                "status": {"url": f"http://{graph}.{NS}.svc.cluster.local",
                           "conditions": [{"type": "Ready", "status": "True"}]}})

    with KopfRunner(["run", "--standalone", "--all-namespaces", "-m", "posegraph.operator.handlers"]):
        time.sleep(1)
        apply("posepipeline.yaml", minutes_ago=12)
        apply("posepipeline-gpu.yaml", minutes_ago=3)
        time.sleep(3)
        for stage in ("detect", "pose2d", "lift3d"):
            ready(isvc=f"demo-{stage}")
        ready(graph="demo")
        ready(isvc="demo-gpu-detect")  # the GPU pool is still scaling up for the other two
        time.sleep(2)
        apply("posejob.yaml", minutes_ago=6)
        apply("posejob.yaml", name="jump", minutes_ago=9, video="s3://posegraph-videos/jump.mp4")
        apply("posejob.yaml", name="typo", minutes_ago=1, pipelineRef={"name": "dmeo"})
        time.sleep(2)
        batch.patch_namespaced_job_status("posejob-walk", NS, {"status": {"active": 1, "ready": 1}})
        api.patch_namespaced_custom_object_status("posegraph.io", "v1alpha1", NS, "posejobs", "walk", {"status": {
            "progress": {"phase": "running", "frames_done": 184, "frames_total": 450, "persons": 362}}})
        api.patch_namespaced_custom_object_status("posegraph.io", "v1alpha1", NS, "posejobs", "jump", {"status": {
            "progress": {"phase": "succeeded", "frames_done": 300, "frames_total": 300, "persons": 300, "tracks": 1,
                         "outputs": {"overlay": "s3://posegraph-outputs/jump/overlay.webm",
                                     "pose3d": "s3://posegraph-outputs/jump/pose3d.png",
                                     "frames": "s3://posegraph-outputs/jump/frames.jsonl"}}}})
        time.sleep(0.5)
        batch.patch_namespaced_job_status("posejob-jump", NS, {"status": {"active": 0, "succeeded": 1, "conditions": [
            {"type": "Complete", "status": "True"}]}})
        time.sleep(2)

        out.append("$ kubectl get posepipelines,posejobs -n posegraph")
        for plural, kind in (("posepipelines", "posepipeline.posegraph.io"), ("posejobs", "posejob.posegraph.io")):
            out.append(table(api, plural, kind, created))
            out.append("")
        for plural, name in (("posepipelines", "demo-gpu"), ("posejobs", "typo"), ("posejobs", "jump")):
            status = api.get_namespaced_custom_object("posegraph.io", "v1alpha1", NS, plural, name)["status"]
            out.append(f"$ kubectl get {plural[:-1]} {name} -n posegraph -o jsonpath='{{.status}}' | yq -P")
            out.append(yaml.safe_dump(status, sort_keys=False, width=110).rstrip())
            out.append("")
    cluster.stop()
    print("\n".join(out))


def table(api, plural: str, kind: str, created: dict) -> str:
    crd = yaml.safe_load((ROOT / f"operators/crds/{plural}.posegraph.io.yaml").read_text())
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    rows = [["NAME"] + [c["name"].upper() for c in columns]]
    for item in api.list_namespaced_custom_object("posegraph.io", "v1alpha1", NS, plural)["items"]:
        row = [f"{kind}/{item['metadata']['name']}"]
        for column in columns:
            if column["type"] == "date":
                minutes = (dt.datetime.now(dt.timezone.utc) - created[item["metadata"]["name"]]).seconds // 60
                row.append(f"{minutes}m")
                continue
            value = item
            for part in column["jsonPath"].strip(".").split("."):
                value = value.get(part) if isinstance(value, dict) else None
            row.append("" if value is None else str(value))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


if __name__ == "__main__":
    main()
