"""`posegraph live SOURCE`: a video file played at its own frame rate stands in for a camera here
(the command reads cameras and rtsp:// / http(s):// streams through the same OpenCV reader)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiers import missing, tier


def posegraph(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "posegraph", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def write_avi(path: Path, frames, fps: float) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (frames[0].shape[1], frames[0].shape[0]))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def slow_clip(tmp_path_factory, clip_frames) -> Path:
    """16 frames at 4 frames/s: 4 s of video, slow enough that nothing need be dropped."""
    return write_avi(tmp_path_factory.mktemp("live") / "slow.avi", clip_frames, 4)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_file_plays_as_a_camera_and_every_frame_gets_2d_and_3d(checkpoints, slow_clip, tmp_path):
    done = posegraph("live", slow_clip, "--checkpoints", checkpoints, "--out", tmp_path / "out",
                     "--stats-json", tmp_path / "stats.json", "--set", "detect.max_persons=2")
    assert done.returncode == 0, done.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert {"fps", "dropped_fraction", "latency_ms_p50", "latency_ms_p95"} <= set(stats)
    docs = read_jsonl(tmp_path / "out" / "frames.jsonl")
    assert len(docs) == stats["frames_processed"] > 0
    # no frame is both processed and dropped, none lost in between (one may be left when it stops)
    assert 0 <= stats["frames_captured"] - stats["frames_processed"] - stats["frames_dropped"] <= 1
    assert stats["frames_captured"] == 16, "the whole file was read, at its own rate"
    indices = [d["frame_index"] for d in docs]
    assert indices == sorted(set(indices)), "frames in the order they were captured"
    persons = [p for d in docs for p in d.get("persons") or []]
    assert persons and all(len(p["keypoints2d"]) == 17 and len(p["keypoints3d"]) == 17 for p in persons)
    assert all(p.get("track_id") is not None for p in persons)
    assert 0 < stats["latency_ms_p50"] <= stats["latency_ms_p95"]
    assert f"{stats['frames_processed']} frames in" in done.stdout


def test_a_source_faster_than_the_poses_drops_frames_instead_of_queueing(checkpoints, clip_frames, tmp_path):
    """60 frames at 1,000 frames/s arrive in 60 ms, while one frame's poses take longer: the
    reader keeps only the newest, so most are dropped and the results stay in capture order."""
    fast = write_avi(tmp_path / "fast.avi", [clip_frames[i % len(clip_frames)] for i in range(60)], 1000)
    done = posegraph("live", fast, "--checkpoints", checkpoints, "--out", tmp_path / "out",
                     "--stats-json", tmp_path / "stats.json", "--quiet")
    assert done.returncode == 0, done.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["frames_captured"] == 60
    assert stats["frames_dropped"] > 0 and stats["frames_processed"] < 60
    assert stats["dropped_fraction"] == pytest.approx(stats["frames_dropped"] / 60, abs=1e-3)
    assert 0 <= 60 - stats["frames_processed"] - stats["frames_dropped"] <= 1


def test_detect_every_n_runs_live_too(checkpoints, slow_clip, tmp_path):
    done = posegraph("live", slow_clip, "--checkpoints", checkpoints, "--stats-json", tmp_path / "stats.json",
                     "--detect-every", "4", "--out", tmp_path / "out", "--quiet")
    assert done.returncode == 0, done.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    docs = read_jsonl(tmp_path / "out" / "frames.jsonl")
    detected = sum("detect" in d["stages"] for d in docs)
    assert detected == stats["frames_detected"] and 0 < detected < len(docs)


@pytest.mark.parametrize("source,needle", [("nope.mp4", "not a camera index"), ("7", "cannot open 7")])
def test_a_source_that_cannot_be_read_is_one_line(checkpoints, tmp_path, source, needle):
    done = posegraph("live", tmp_path / source if source.endswith(".mp4") else source, "--checkpoints", checkpoints)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("posegraph: error")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in done.stderr


def test_through_a_graph_frames_are_lifted_online_and_recorded(checkpoints, slow_clip, tmp_path, embedded_graph):
    from posegraph.jobs.store import open_store

    results = f"sqlite:///{tmp_path / 'results.db'}"
    done = posegraph("live", slow_clip, "--graph", embedded_graph.endpoint, "--out", tmp_path / "out",
                     "--stats-json", tmp_path / "stats.json", "--detect-every", "4", "--quiet",
                     "--record", "--results", results, "--job-id", "through-graph")
    assert done.returncode == 0, done.stderr
    job = open_store(results).job("through-graph")
    assert job.status == "succeeded" and job.tracks > 0
    assert all(t.lifted for t in open_store(results).tracks("through-graph")), "tracks lifted whole by the graph"
    docs = read_jsonl(tmp_path / "out" / "frames.jsonl")
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert len(docs) == stats["frames_processed"] > 0
    persons = [p for d in docs for p in d.get("persons") or []]
    assert persons and all(p.get("keypoints3d") for p in persons)
    assert all("lift3d" in d["stages"] for d in docs if d.get("persons"))
    assert 0 < sum("detect" in d["stages"] for d in docs) < len(docs)
    np.testing.assert_array_equal([d["frame_index"] for d in docs], sorted({d["frame_index"] for d in docs}))


@pytest.fixture(scope="module")
@tier("servers")
def rtsp_camera(tmp_path_factory, clip_path):
    """A real RTSP server (mediamtx, built from its Go module) with ffmpeg publishing the clip to it
    in a loop at 30 frames/s as H.264, as an IP camera would."""
    import services

    try:
        with services.rtsp_stream(clip_path, tmp_path_factory.mktemp("rtsp"), fps=30) as stream:
            yield stream
    except RuntimeError as exc:
        if "no RTSP server" not in str(exc):
            raise
        missing(str(exc))


def test_an_rtsp_camera_streams_through_live(checkpoints, rtsp_camera, tmp_path):
    done = posegraph("live", rtsp_camera.url, "--checkpoints", checkpoints, "--seconds", 6, "--detect-every", 5,
                     "--out", tmp_path / "out", "--stats-json", tmp_path / "stats.json", "--quiet")
    assert done.returncode == 0, done.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    docs = read_jsonl(tmp_path / "out" / "frames.jsonl")
    assert len(docs) == stats["frames_processed"] > 0
    # 6 s of a 30 frames/s stream: every frame the server sent was read (captured), and the ones the
    # poses could not keep up with were dropped, not queued
    assert stats["frames_captured"] >= 90, stats
    assert 0 <= stats["frames_captured"] - stats["frames_processed"] - stats["frames_dropped"] <= 1
    persons = [p for d in docs for p in d.get("persons") or []]
    assert persons and all(p.get("keypoints3d") and p.get("track_id") is not None for p in persons)
    assert all((d["width"], d["height"]) == (640, 480) for d in docs)
    assert "is reading from path 'cam'" in rtsp_camera.log.read_text(), "live read the stream from the server"


# ---- online lifting: each frame lifted as part of its track so far ---------------------------------

def _walking_tracks(frames: int, persons: int = 2, seed: int = 3):
    """Tracked frame documents of ``persons`` people whose 2D drifts (a random walk per joint)."""
    from posegraph.frame import FrameDocument, Person

    rng = np.random.default_rng(seed)
    kps = [rng.uniform(150, 450, (17, 2)) + np.cumsum(rng.normal(0, 2, (frames, 17, 2)), 0) for _ in range(persons)]
    docs = []
    for t in range(frames):
        people = [Person(bbox=[*(k[t].min(0) - 5), *(k[t].max(0) + 5)], score=0.9, track_id=10 + p,
                         keypoints2d=np.c_[k[t], np.ones(17)].tolist()) for p, k in enumerate(kps)]
        docs.append(FrameDocument(width=640, height=480, frame_index=t, persons=people))
    return docs


def _whole(stage, docs, person: int):
    """The 3D that lifting this person's track over ``docs`` as a whole gives each frame."""
    from posegraph.frame import TrackDocument, TrackFrame

    track = TrackDocument(track_id=1, width=640, height=480, frames=[
        TrackFrame(frame_index=d.frame_index, bbox=d.persons[person].bbox, keypoints2d=d.persons[person].keypoints2d)
        for d in docs])
    return np.asarray([f.keypoints3d for f in stage.run([track])[0].frames])


@pytest.fixture(scope="module")
def lift_unsmoothed(checkpoints):
    from posegraph.stages import Lift3dStage

    # unsmoothed: the online path leaves out the 3D smoothing, which needs a track's every frame
    return Lift3dStage({"model": "videopose3d-243", "smoothing": {"method": "off"}}).load(
        str(checkpoints / "videopose3d-243.pth"))


@pytest.mark.parametrize("delay", [0, 3])
def test_online_lifting_gives_each_frame_what_its_track_so_far_gives_it(lift_unsmoothed, delay):
    from posegraph.live import OnlineLift

    docs = _walking_tracks(20)
    online = OnlineLift(lift_unsmoothed.run, lift_unsmoothed.spec, delay)
    out = []
    for t, doc in enumerate(docs):
        ready = online.push(doc.model_copy(deep=True))
        assert [d.frame_index for d in ready] == ([t - delay] if t >= delay else []), "`delay` frames later"
        out += ready
    out += online.flush()
    assert [d.frame_index for d in out] == list(range(20))
    for person in (0, 1):
        for t in (0, 7, 19):
            seen = docs[: min(len(docs), t + delay + 1)]   # what had come when frame t was lifted
            expected = _whole(lift_unsmoothed, seen, person)[t]
            np.testing.assert_allclose(out[t].persons[person].keypoints3d, expected, atol=1e-4)
    assert all(d.stages["lift3d"].model == "videopose3d-243" for d in out)


def test_online_lifting_differs_from_lifting_each_frame_alone(lift_unsmoothed):
    """The temporal model sees the track: a frame's 3D depends on the frames before it."""
    from posegraph.live import OnlineLift

    docs = _walking_tracks(12, persons=1)
    online = OnlineLift(lift_unsmoothed.run, lift_unsmoothed.spec, 0)
    last = [online.push(d.model_copy(deep=True)) for d in docs][-1][0]
    alone = lift_unsmoothed.run([docs[-1].model_copy(deep=True)])[0]
    gap = np.abs(np.asarray(last.persons[0].keypoints3d) - np.asarray(alone.persons[0].keypoints3d)).max()
    assert gap > 1e-3


def test_a_person_without_a_track_gets_no_3d_and_tracks_are_forgotten(lift_unsmoothed):
    from posegraph.live import OnlineLift

    docs = _walking_tracks(3, persons=2)
    docs[1].persons[1].track_id = None
    online = OnlineLift(lift_unsmoothed.run, lift_unsmoothed.spec, 0)
    out = [online.push(d)[0] for d in docs]
    assert out[1].persons[0].keypoints3d is not None and out[1].persons[1].keypoints3d is None
    empty = docs[2].model_copy(update={"frame_index": 2 + online.context + 1, "persons": []})
    online.push(empty)
    assert online.tracks == {}


def test_lift_delay_holds_frames_back_and_loses_none(checkpoints, slow_clip, tmp_path):
    done = posegraph("live", slow_clip, "--checkpoints", checkpoints, "--lift-delay", 5, "--out", tmp_path / "out",
                     "--stats-json", tmp_path / "stats.json", "--quiet")
    assert done.returncode == 0, done.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    docs = read_jsonl(tmp_path / "out" / "frames.jsonl")
    assert len(docs) == stats["frames_processed"] == stats["frames_captured"] - stats["frames_dropped"]
    assert all(p.get("keypoints3d") for d in docs for p in d.get("persons") or [])


def test_a_lift_delay_out_of_range_is_one_line(checkpoints, slow_clip):
    done = posegraph("live", slow_clip, "--checkpoints", checkpoints, "--lift-delay", 99)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("posegraph: error")]
    assert len(errors) == 1 and "lift_delay" in errors[0], done.stderr


# ---- recording a session into a results store, as a job ---------------------------------------------

def test_a_recorded_session_is_a_job_with_whole_track_3d(checkpoints, slow_clip, tmp_path):
    from posegraph.jobs.store import open_store

    results = f"sqlite:///{tmp_path / 'results.db'}"
    done = posegraph("live", slow_clip, "--checkpoints", checkpoints, "--record", "--results", results,
                     "--job-id", "live-test", "--detect-every", 3, "--out", tmp_path / "out",
                     "--stats-json", tmp_path / "stats.json", "--set", "detect.max_persons=2", "--quiet")
    assert done.returncode == 0, done.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["job"]["job_id"] == "live-test" and stats["job"]["status"] == "succeeded"
    assert "recorded as job live-test" in done.stdout
    store = open_store(results)
    job = store.job("live-test")
    assert job.status == "succeeded" and job.video_uri == str(slow_clip.resolve())
    assert job.frames_done == stats["frames_processed"] and job.frames_total == stats["frames_captured"] == 16
    assert (job.width, job.height) == (640, 480) and job.fps == pytest.approx(4.0)
    assert job.params["source"] == "live" and job.params["detect_every"] == 3 and job.random_weights
    live_docs = {d["frame_index"]: d for d in read_jsonl(tmp_path / "out" / "frames.jsonl")}
    stored = store.frame_results("live-test", 0, 100)
    assert sorted(stored) == sorted(live_docs), "every processed frame is in the store"
    tracks = store.tracks("live-test")
    assert tracks and all(t.lifted for t in tracks)
    # the store holds each track lifted whole (as a job does), the JSON Lines the online 3D
    from posegraph.config import load_profile
    from posegraph.frame import TrackDocument, TrackFrame
    from posegraph.pipeline import Pipeline

    lift = Pipeline(load_profile("cpu"), checkpoint_dir=checkpoints).load().stages["lift3d"]
    track = tracks[0]
    rows = store.track_rows("live-test", track.track_id)
    whole = lift.run([TrackDocument(track_id=track.track_id, width=640, height=480, frames=[
        TrackFrame(frame_index=r.frame_index, bbox=r.bbox, keypoints2d=r.keypoints2d) for r in rows])])[0]
    np.testing.assert_allclose([r.keypoints3d for r in rows], [f.keypoints3d for f in whole.frames], atol=1e-5)
    angles_frames, _ = store.joint_angles("live-test", track.track_id)
    assert angles_frames == [r.frame_index for r in rows]
    # and a job's exports read it
    out = tmp_path / "bvh"
    exported = posegraph("export", "--results", results, "--job-id", "live-test", "--format", "bvh", "--out", out)
    assert exported.returncode == 0, exported.stderr
    assert list(out.glob("*.bvh"))


def test_recording_to_a_job_id_that_exists_is_refused_and_keeps_it(checkpoints, slow_clip, tmp_path):
    from posegraph.jobs.store import open_store

    results = f"sqlite:///{tmp_path / 'results.db'}"
    first = posegraph("live", slow_clip, "--checkpoints", checkpoints, "--record", "--results", results,
                      "--job-id", "mine", "--seconds", 1.5, "--quiet")
    assert first.returncode == 0, first.stderr
    before = open_store(results).job("mine")
    again = posegraph("live", slow_clip, "--checkpoints", checkpoints, "--record", "--results", results,
                      "--job-id", "mine", "--quiet")
    assert again.returncode != 0
    errors = [line for line in again.stderr.splitlines() if line.startswith("posegraph: error")]
    assert len(errors) == 1 and "already in this results store" in errors[0]
    after = open_store(results).job("mine")
    assert (after.status, after.frames_done, after.finished_at) == (before.status, before.frames_done,
                                                                   before.finished_at)


def test_a_stream_source_is_recorded_without_its_password():
    from posegraph.jobs.recording import source_uri

    assert source_uri("rtsp://cam:secret@10.0.0.5:8554/live") == "rtsp://cam:***@10.0.0.5:8554/live"
    assert source_uri("0") == "camera:0"
