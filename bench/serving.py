"""Serving overhead per stage: in-process vs TorchServe vs KServe's Python server, side by side.

    python bench/serving.py [--requests 40] [--checkpoints DIR] [--json out.json]

For each stage, the same request document (the astronaut photo as a base64 JPEG, with the upstream
stages' output already filled in) is answered:
  in-process   stage.run on the parsed document (the work itself, no HTTP, no JSON)
  in-process+json   json.loads → parse → stage.run → json.dumps (what a server must do anyway)
  torchserve   POST /v1/models/<stage>:predict to a local TorchServe (batch size 8)
  kserve       POST /v1/models/<stage>:predict to a local KServe model server
at 1 and 8 concurrent clients (keep-alive connections). It reports median and p95 latency, requests
per second, and the per-hop overhead: a server's median at 1 client minus the in-process+json
median.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

from posegraph.models.checkpoints import write_random
from posegraph.config import load_profile
from posegraph.frame import parse_document
from posegraph.media.samples import astronaut_bgr
from posegraph.serving.archive import ArchiveOptions, build_archive
from posegraph.embedded import start_stage_server
from posegraph.names import STAGES as STAGE_ORDER
from posegraph.stages import STAGE_CLASSES
from posegraph.models.zoo import get_model



def percentile(values, q):
    return float(np.percentile(values, q))


def measure_interleaved(calls: dict, requests: int) -> dict:
    """One client: the variants take turns, request by request, so drift on a shared machine
    (other processes, CPU frequency) hits them all alike."""
    latencies = {name: [] for name in calls}
    for call in calls.values():
        call()  # warm-up
    started = {name: 0.0 for name in calls}
    for _ in range(requests):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            elapsed = time.perf_counter() - t0
            latencies[name].append(elapsed * 1000)
            started[name] += elapsed
    return {name: {"median_ms": statistics.median(v), "p95_ms": percentile(v, 95), "rps": len(v) / started[name]}
            for name, v in latencies.items()}


def measure(call, requests: int, clients: int) -> dict:
    latencies = []
    lock = threading.Lock()

    def worker(n):
        local = []
        for _ in range(n):
            started = time.perf_counter()
            call()
            local.append((time.perf_counter() - started) * 1000)
        with lock:
            latencies.extend(local)

    call()  # warm-up
    per_client = max(1, requests // clients)
    started = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, [per_client] * clients))
    wall = time.perf_counter() - started
    return {"median_ms": statistics.median(latencies), "p95_ms": percentile(latencies, 95),
            "rps": len(latencies) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--checkpoints", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--runtimes", default="torchserve,kserve", help="comma-separated (default: both)")
    parser.add_argument("--stages", default=",".join(STAGE_ORDER), help="comma-separated (default: all three)")
    args = parser.parse_args()
    measured = [s for s in STAGE_ORDER if s in args.stages.split(",")]
    runtimes = [r for r in args.runtimes.split(",") if r]

    profile = load_profile("cpu")
    work = Path(tempfile.mkdtemp(prefix="posegraph-bench-serving-"))
    checkpoints = args.checkpoints or work / "checkpoints"
    layouts = {}
    for stage in STAGE_ORDER:
        settings = profile.stage_settings(stage)
        path = checkpoints / f"{settings.model}.pth"
        if not path.is_file():
            write_random(get_model(settings.model), path)
        layouts[stage] = work / stage
        build_archive(stage, str(path), layouts[stage], settings=settings,
                      options=ArchiveOptions(batch_size=8, max_batch_delay_ms=5))

    # One request document per stage: what that stage receives inside the graph.
    image = base64.b64encode(cv2.imencode(".jpg", astronaut_bgr())[1].tobytes()).decode()
    doc = {"schema": "posegraph/frame/v1", "image": {"data": image, "format": "jpeg"}}
    stages = {}
    requests = {}
    for stage in STAGE_ORDER:
        settings = profile.stage_settings(stage)
        stages[stage] = STAGE_CLASSES[stage](settings).load(str(checkpoints / f"{settings.model}.pth"))
        requests[stage] = {"instances": [doc]}
        doc = stages[stage].run([parse_document(doc)])[0].to_json()

    results = []
    for stage in measured:
        body = json.dumps(requests[stage]).encode()
        parsed = parse_document(requests[stage]["instances"][0])

        def in_process(stage=stage, parsed=parsed):
            stages[stage].run([parsed.model_copy(deep=True)])

        def in_process_json(stage=stage, body=body):
            docs = [parse_document(d) for d in json.loads(body)["instances"]]
            json.dumps({"predictions": [d.to_json() for d in stages[stage].run(docs)]})

        # One server alive at a time, interleaved with its in-process baseline: an idle TorchServe
        # (JVM, a metrics collector every minute) would otherwise tax the KServe numbers and vice versa.
        for name, call in {"in-process": in_process, "in-process+json": in_process_json}.items():
            results.append({"stage": stage, "runtime": name, "clients": 8, **measure(call, args.requests, 8)})
        for runtime in runtimes:
            server = start_stage_server(stage, layouts[stage], runtime=runtime).wait_ready()
            local = threading.local()

            def post(server=server, local=local, body=body):
                if not hasattr(local, "client"):
                    local.client = httpx.Client(timeout=120)
                response = local.client.post(server.predict_url, content=body,
                                             headers={"content-type": "application/json"})
                assert response.status_code == 200, response.text

            try:
                paired = measure_interleaved({"in-process": in_process, "in-process+json": in_process_json,
                                              runtime: post}, args.requests)
                for name, m in paired.items():
                    results.append({"stage": stage, "runtime": name, "clients": 1, "paired_with": runtime, **m})
                results.append({"stage": stage, "runtime": runtime, "clients": 8, **measure(post, args.requests, 8)})
            finally:
                server.stop()
        for row in results:
            if row["stage"] == stage:
                pair = f" (with {row['paired_with']})" if "paired_with" in row and row["runtime"] != row["paired_with"] else ""
                print(f"{stage:7s} {row['runtime'] + pair:34s} {row['clients']:2d} clients  median {row['median_ms']:7.1f} ms  "
                      f"p95 {row['p95_ms']:7.1f} ms  {row['rps']:6.1f} req/s", flush=True)

    print("\nper-hop overhead at 1 client (server median − the in-process+json median measured beside it):")
    for stage in measured:
        for runtime in runtimes:
            base = next(r for r in results if r["stage"] == stage and r["runtime"] == "in-process+json"
                        and r.get("paired_with") == runtime)
            row = next(r for r in results if r["stage"] == stage and r["runtime"] == runtime and r["clients"] == 1)
            print(f"  {stage:7s} {runtime:10s} {row['median_ms'] - base['median_ms']:+6.1f} ms "
                  f"({row['median_ms'] / base['median_ms']:.2f}×)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
