"""One video pass (posegraph.videopass) behind `posegraph run` and `posegraph job run`.

The product's claim is that the served graph computes what the in-process pipeline computes: the
same clip through `posegraph run` (in-process stages, documents in memory) and through `posegraph
job run --graph local` (three stage servers, a router, a results store) must give the same frame
documents, given the same frame bytes (PNG: lossless on the way to the graph).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from posegraph.media.samples import synthetic_clip_frames, write_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("videopass") / "clip.mp4", synthetic_clip_frames(24))


@pytest.fixture(scope="module")
def pipeline(checkpoints):
    from posegraph.config import load_profile
    from posegraph.pipeline import Pipeline

    return Pipeline(load_profile("cpu"), checkpoint_dir=checkpoints).load()


def read_jsonl(path: Path) -> dict[int, dict]:
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    return {d["frame_index"]: d for d in docs}


def assert_same_persons(a: dict, b: dict, where: str) -> None:
    pa, pb = a.get("persons") or [], b.get("persons") or []
    assert len(pa) == len(pb), f"{where}: {len(pa)} persons in-process, {len(pb)} through the graph"
    for i, (x, y) in enumerate(zip(pa, pb)):
        assert x["track_id"] == y["track_id"], f"{where} person {i}: track {x['track_id']} vs {y['track_id']}"
        for key in ("bbox", "score", "keypoints2d", "keypoint_scores", "keypoints3d"):
            if x.get(key) is None or y.get(key) is None:
                assert x.get(key) is None and y.get(key) is None, f"{where} person {i}: {key} on one side only"
                continue
            np.testing.assert_allclose(np.asarray(x[key], float), np.asarray(y[key], float), atol=1e-4,
                                       err_msg=f"{where} person {i}: {key}")


def test_in_process_and_through_the_local_graph_give_the_same_documents(pipeline, checkpoints, clip, tmp_path,
                                                                            embedded_graph):
    from posegraph.jobs.options import JobOptions
    from posegraph.jobs.runner import JobRunner
    from posegraph.pipeline import run_input

    run_input(pipeline, str(clip), tmp_path / "run", show_progress=False)
    summary = JobRunner(JobOptions(
        video=str(clip), results=f"sqlite:///{tmp_path / 'results.db'}", output=str(tmp_path / "job") + "/",
        graph="local", checkpoints=str(checkpoints), frame_format="png", quiet=True),
        local_graph=lambda stack: (embedded_graph.endpoint, embedded_graph.servers["lift3d"].predict_url)).run()
    assert summary["status"] == "succeeded", summary

    in_process, served = read_jsonl(tmp_path / "run" / "frames.jsonl"), read_jsonl(tmp_path / "job" / "frames.jsonl")
    assert sorted(in_process) == sorted(served) == list(range(24))
    persons = sum(len(d.get("persons") or []) for d in in_process.values())
    lifted = sum(p.get("keypoints3d") is not None for d in in_process.values() for p in d.get("persons") or [])
    assert persons >= 24 and lifted == persons, (persons, lifted)  # something to compare, all of it lifted
    for index in in_process:
        assert_same_persons(in_process[index], served[index], f"frame {index}")


def test_detect_every_n_gives_the_same_documents_in_process_and_through_the_graph(pipeline, checkpoints, clip,
                                                                                  tmp_path, embedded_graph):
    """--detect-every 4: frames sent with the boxes from the frame before pass the served detect
    stage untouched, so the graph computes what the process computes (PNG frames), and the
    detector runs on a fraction of the frames."""
    import copy

    from posegraph.jobs.options import JobOptions
    from posegraph.jobs.runner import JobRunner
    from posegraph.pipeline import run_input

    every4 = copy.copy(pipeline)
    every4.profile = pipeline.profile.model_copy(
        update={"tracking": pipeline.profile.tracking.model_copy(update={"detect_every": 4})})
    run_input(every4, str(clip), tmp_path / "run", show_progress=False)
    summary = JobRunner(JobOptions(
        video=str(clip), results=f"sqlite:///{tmp_path / 'results.db'}", output=str(tmp_path / "job") + "/",
        graph="local", checkpoints=str(checkpoints), frame_format="png", detect_every=4, batch=5, quiet=True),
        local_graph=lambda stack: (embedded_graph.endpoint, embedded_graph.servers["lift3d"].predict_url)).run()
    assert summary["status"] == "succeeded", summary

    in_process, served = read_jsonl(tmp_path / "run" / "frames.jsonl"), read_jsonl(tmp_path / "job" / "frames.jsonl")
    assert sorted(in_process) == sorted(served) == list(range(24))
    detected = [i for i, d in in_process.items() if "detect" in d["stages"]]
    assert detected[:1] == [0] and len(detected) < 24 / 2, detected
    for index in in_process:
        assert_same_persons(in_process[index], served[index], f"frame {index}")


def test_tracks_are_lifted_once_each_as_the_tracker_lets_them_go(pipeline, clip):
    """Lifting does not wait for the video's end: a track the tracker has dropped is lifted after
    that batch, and every track exactly once."""
    from posegraph.media.video import VideoReader
    from posegraph.videopass import InProcessFrames, InProcessLift, MemorySink, run_video, video_frames

    calls: list[tuple[int, list[int]]] = []
    sink = MemorySink()
    lift = InProcessLift(pipeline.stages["lift3d"])

    def recording_lift(tracks):
        calls.append((len(sink.docs), [t.track_id for t in tracks]))
        return lift(tracks)

    # A tracker that forgets a person after one missed frame, on every other frame of the clip
    # and one frame with nobody: tracks end mid-video.
    tracker = pipeline.tracker()
    tracker.max_gap = 0
    with VideoReader(clip) as reader:
        frames = list(video_frames(reader))
    frames[10].pixels = np.full_like(frames[10].pixels, 127)  # nobody on frame 10: tracks break there
    run_video(frames, InProcessFrames(pipeline.stages), recording_lift, sink, tracker, batch_frames=4, lift_batch=2)

    lifted_ids = [tid for _, ids in calls for tid in ids]
    all_ids = {p.track_id for d in sink.docs for p in d.persons or []}
    assert sorted(lifted_ids) == sorted(all_ids), "each track lifted exactly once"
    assert any(frames_seen < len(frames) for frames_seen, _ in calls), f"no track lifted before the end: {calls}"
    assert all(len(ids) <= 2 for _, ids in calls)
    assert all(p.keypoints3d is not None for d in sink.docs for p in d.persons or [])


def test_requests_in_flight_change_nothing_in_the_results(checkpoints, clip, tmp_path, embedded_graph):
    """Several graph requests at once (job run --in-flight) give exactly the documents of one
    request at a time: results are taken in frame order."""
    from posegraph.jobs.options import JobOptions
    from posegraph.jobs.runner import JobRunner

    outputs = {}
    for in_flight in (1, 3):
        out = tmp_path / f"in-flight-{in_flight}"
        summary = JobRunner(JobOptions(
            video=str(clip), results=f"sqlite:///{tmp_path / f'{in_flight}.db'}", output=str(out) + "/",
            graph="local", checkpoints=str(checkpoints), batch=4, in_flight=in_flight, quiet=True),
            local_graph=lambda stack: (embedded_graph.endpoint, embedded_graph.servers["lift3d"].predict_url)).run()
        assert summary["status"] == "succeeded", summary
        outputs[in_flight] = read_jsonl(out / "frames.jsonl")
    assert sorted(outputs[1]) == sorted(outputs[3]) == list(range(24))
    for index in outputs[1]:
        assert_same_persons(outputs[1][index], outputs[3][index], f"frame {index}")
