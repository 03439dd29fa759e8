"""``posegraph demo``: the README's main job, on the embedded default.

It makes its own inputs from a photo that ships in a package and a clip made from it. It gets
checkpoints: the official ones if reachable; otherwise BlazePose's real weights from the mediapipe
wheel (the real-offline profile), said plainly; otherwise random ones, with a loud notice. It starts
the local graph (stage servers + router, as ``posegraph up``), sends the photo through it, then
runs the clip as a video job through the same graph (results in SQLite, a rendered video, motion
files). Then it prints where the results are, and how to see them in the web UI.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .client import GraphClient
from .config import load_profile
from .embedded import start_embedded_graph
from .jobs.options import JobOptions
from .jobs.runner import JobRunner
from .media.render import draw_overlay, plot_3d, poses_for_plot
from .media.samples import synthetic_clip_frames, write_astronaut, write_clip
from .errors import FetchError
from .models.checkpoints import default_checkpoint_dir, ensure_checkpoints

FALLBACK_PROFILE = "real-offline"


def _photo_through_graph(graph, photo: Path, out: Path) -> bool:
    """The photo through the graph; returns whether any stage ran on random weights."""
    import cv2

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with GraphClient(graph.endpoint) as client:
        doc = client.infer_image(photo)
    seconds = time.perf_counter() - started
    random_weights = any(record.random_weights for record in doc.stages.values())
    (out / "frame.json").write_text(json.dumps(doc.to_json(), indent=2) + "\n")
    pixels = cv2.imread(str(photo))
    cv2.imwrite(str(out / "overlay.jpg"), draw_overlay(pixels, doc, random_weights=random_weights))
    plot_3d(poses_for_plot([doc]), out / "pose3d.png", title=f"{photo.name} through the graph: 3D poses",
            random_weights=random_weights)
    stages = ", ".join(f"{k} {v.ms:.0f} ms" for k, v in doc.stages.items() if v.ms is not None)
    print(f"1 image through the graph: {len(doc.persons or [])} persons in {seconds:.2f}s ({stages})")
    print(f"  document   {out / 'frame.json'}")
    print(f"  overlay    {out / 'overlay.jpg'}")
    print(f"  3D plot    {out / 'pose3d.png'}")
    if random_weights:
        print("  RANDOM WEIGHTS were used: these results are noise. `posegraph models fetch` gets real ones.")
    return random_weights


def _weights(args, directory: Path) -> str:
    """The profile the demo runs: the one asked for when its checkpoints are there or download;
    else (offline from the OpenMMLab zoo) BlazePose's real weights, when the package index is
    reachable; else the one asked for, on random weights (ensure_checkpoints says so)."""
    try:
        ensure_checkpoints(load_profile(args.profile, args.overrides), directory, random_fallback=False)
        return args.profile
    except FetchError as exc:
        print(f"cannot download the OpenMMLab checkpoints ({str(exc).split(' — ')[0]})")
    try:
        ensure_checkpoints(load_profile(FALLBACK_PROFILE, args.overrides), directory)
    except FetchError as exc:
        print(f"cannot download BlazePose's weights either ({str(exc).split(' — ')[0]})")
        return args.profile
    print(f"using BlazePose instead (profile {FALLBACK_PROFILE}): REAL weights from the mediapipe wheel, "
          "Google's, Apache 2.0; not the RTMDet/RTMPose/VideoPose3D the cpu profile names")
    return FALLBACK_PROFILE


def run_demo(args) -> int:
    started = time.perf_counter()
    directory = Path(args.checkpoints) if args.checkpoints else default_checkpoint_dir()
    profile_name = _weights(args, directory)
    profile = load_profile(profile_name, args.overrides)
    out = Path(args.out).resolve()
    photo = write_astronaut(out / "inputs" / "astronaut.jpg")
    clip = write_clip(out / "inputs" / "clip.mp4", synthetic_clip_frames(args.frames))

    print("\n[1/3] the graph: three stage servers and a router on 127.0.0.1 (as `posegraph up`)")
    with start_embedded_graph(profile, directory) as graph:
        print(f"  endpoint {graph.endpoint}")
        print(f"\n[2/3] a photo through the graph: {photo}")
        _photo_through_graph(graph, photo, out / "photo")

        print(f"\n[3/3] a video job through the graph (frames in batches, tracks lifted whole): {clip}")
        results = f"sqlite:///{out / 'results.db'}"
        options = JobOptions(video=str(clip), results=results, output=str(out / "clip") + "/", graph=graph.endpoint,
                             lift3d=graph.servers["lift3d"].predict_url, job_id="demo-clip", profile=profile_name)
        summary = JobRunner(options).run()
    print(f"job {summary['job_id']}: {summary['status']}, {summary['frames_done']} frames, "
          f"{summary['persons']} persons, {summary['tracks']} tracks")
    for name, uri in (summary["outputs"] or {}).items():
        print(f"  {name:10s} {uri}")
    print(f"  results    {out / 'results.db'}   (posegraph job status --results {results} --job-id demo-clip)")
    print(f"\ndemo finished in {time.perf_counter() - started:.0f}s; open {out / 'photo' / 'pose3d.png'} "
          f"and {(summary['outputs'] or {}).get('overlay', '')}")
    # The web UI reads the same results store, so the demo's job is there to play and scrub.
    print(f"or look in a browser: posegraph ui --data {out}   → http://127.0.0.1:8088/")
    return 0
