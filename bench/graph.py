"""Per-image latency through the served graph vs the in-process pipeline, same checkpoints.

    python bench/graph.py [--requests 30] [--checkpoints DIR] [--runtime torchserve kserve]
                          [--routers posegraph kserve]

For the astronaut photo (base64 JPEG in, frame document out):
  in-process      Pipeline.image on the decoded photo
  in-process+json the same plus what any server must do (JSON + document validation in and out)
  direct chain    the client calls detect, pose2d and lift3d itself (no router)
  graph           one POST to the local router, which calls the three stages
  graph[kserve]   the same through KServe's own router binary (scripts/control-plane.sh build),
                  on the same stage servers with the same spec
Requests are interleaved (one of each in turn), so drift hits all variants alike.
graph / in-process is the headline ratio; (graph − direct chain) / 3 is a router's per-hop cost.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

from posegraph.models.checkpoints import write_random
from posegraph.config import load_profile
from posegraph.frame import parse_document
from posegraph.embedded import archives_for_profile, default_pipeline, start_local_graph, start_router
from posegraph.pipeline import Pipeline
from posegraph.media.samples import astronaut_bgr
from posegraph.embedded import free_port
from posegraph.models.zoo import get_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--checkpoints", type=Path)
    parser.add_argument("--runtime", nargs="+", default=["torchserve", "kserve"])
    parser.add_argument("--routers", nargs="+", default=["posegraph", "kserve"], choices=["posegraph", "kserve"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    profile = load_profile("cpu")
    checkpoints = args.checkpoints or Path(tempfile.mkdtemp(prefix="posegraph-bench-graph-"))
    for stage in ("detect", "pose2d", "lift3d"):
        model = profile.stage_settings(stage).model
        if not (checkpoints / f"{model}.pth").is_file():
            write_random(get_model(model), checkpoints / f"{model}.pth")
    pipeline = Pipeline(profile, checkpoint_dir=checkpoints).load()
    layouts = archives_for_profile(profile, checkpoints)

    data = cv2.imencode(".jpg", astronaut_bgr())[1].tobytes()
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    request = json.dumps({"instances": [{"image": {"data": base64.b64encode(data).decode()}}]}).encode()

    def in_process():
        pipeline.image(pixels)

    def in_process_json():
        doc = parse_document(json.loads(request)["instances"][0])
        from posegraph.media.imageio import pixels_of

        pixels_of(doc, stage="detect")
        pipeline.detect_and_pose([doc])
        pipeline.stages["lift3d"].run([doc])
        json.dumps({"predictions": [doc.to_json()]})

    results = []
    for runtime in args.runtime:
        first, *others = args.routers
        with start_local_graph(default_pipeline(layouts, runtime), layouts, router=first) as graph, \
                httpx.Client(timeout=120) as http:
            headers = {"content-type": "application/json"}
            # The other routers on the same stage servers, with the same spec.
            endpoints, extra = {first: graph.endpoint}, []
            for router in others:
                port = free_port()
                extra.append(start_router(router, graph.graph_spec, port, graph.pipeline.spec.graph.headersToPropagate,
                                          log=graph.workdir / f"router-{router}.log"))
                endpoints[router] = f"http://127.0.0.1:{port}/"

            def direct_chain():
                body = request
                for stage in ("detect", "pose2d", "lift3d"):
                    response = http.post(graph.servers[stage].predict_url, content=body, headers=headers)
                    body = json.dumps({"instances": response.json()["predictions"]}).encode()

            def through(url):
                def call():
                    response = http.post(url, content=request, headers=headers)
                    assert response.status_code == 200, response.text
                return call

            variants = {"in-process": in_process, "in-process+json": in_process_json, "direct chain": direct_chain,
                        **{f"graph[{router}]": through(url) for router, url in endpoints.items()}}
            times = {name: [] for name in variants}
            try:
                for call in variants.values():
                    call()
                for _ in range(args.requests):
                    for name, call in variants.items():
                        started = time.perf_counter()
                        call()
                        times[name].append((time.perf_counter() - started) * 1000)
            finally:
                for proc in extra:
                    proc.kill()
                    proc.wait(10)
        medians = {name: statistics.median(v) for name, v in times.items()}
        p95 = {name: float(np.percentile(v, 95)) for name, v in times.items()}
        print(f"\n{runtime} stage servers, {args.requests} images (medians):")
        for name in variants:
            print(f"  {name:18s} {medians[name]:7.1f} ms  (p95 {p95[name]:7.1f})  "
                  f"{medians[name] / medians['in-process']:.2f}× in-process")
        per_hop = {router: (medians[f"graph[{router}]"] - medians["direct chain"]) / 3 for router in endpoints}
        for router, hop in per_hop.items():
            print(f"  {router} router per hop {hop:+.2f} ms   graph/in-process "
                  f"{medians[f'graph[{router}]'] / medians['in-process']:.2f}×", flush=True)
        if "kserve" in endpoints and "posegraph" in endpoints:
            print(f"  graph[kserve] / graph[posegraph] {medians['graph[kserve]'] / medians['graph[posegraph]']:.3f}×")
        results.append({"runtime": runtime, "medians_ms": medians, "p95_ms": p95, "router_per_hop_ms": per_hop})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
