"""Video jobs against real services: PostgreSQL 15, an S3 server (SeaweedFS) and the local graph."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from tiers import tier

from posegraph.jobs.rows import JobCounts
from posegraph.jobs.store import open_store
from posegraph.media.samples import synthetic_clip_frames, write_clip

FRAMES = 24


@pytest.fixture(scope="module")
@tier("servers")
def postgres():
    from services import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture(scope="module")
def graph(embedded_graph):
    return embedded_graph  # the session's: these jobs only send it work


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("video") / "walk.mp4", synthetic_clip_frames(FRAMES))


def job(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "posegraph", "job", "run", "--quiet", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "POSEGRAPH_RETRY_BASE_S": "0.05", **(env or {})})


def graph_args(graph):
    return ["--graph", graph.endpoint, "--lift3d", graph.servers["lift3d"].predict_url]


def count_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    n = 0
    while capture.read()[0]:
        n += 1
    return n


def assert_complete(store, job_id: str, frames: int, stride: int = 1):
    row = store.job(job_id)
    assert row.status == "succeeded", row
    assert row.frames_done == frames and row.frames_failed == 0
    results = store.frame_results(job_id, 0, 10**9)
    assert sorted(results) == list(range(0, frames * stride, stride)), "every processed frame, no gap"
    persons = [p for f in results.values() for p in f.persons]
    assert len(persons) == row.persons == sum(len(f.persons) for f in results.values())
    counts = store.counts(job_id)
    assert counts.persons_without_3d == 0, "every track was lifted"
    assert counts.tracks == row.tracks == len({p.track_id for p in persons})
    for p in persons:
        assert len(p.keypoints2d) == 17 and len(p.keypoints3d) == 17 and p.track_id is not None
    return results


# ---- the happy paths ---------------------------------------------------------------------------------

def test_s3_video_to_postgres_and_s3_outputs(graph, clip, s3, postgres, tmp_path):
    s3.create_bucket("videos")
    s3.create_bucket("outputs")
    s3.client().upload_file(str(clip), "videos", "in/walk.mp4")
    progress = tmp_path / "progress.json"
    result = job("--video", "s3://videos/in/walk.mp4", *graph_args(graph), "--results", postgres.dsn,
                 "--output", "s3://outputs/jobs/walk/", "--batch", "4", "--job-id", "walk-1",
                 "--progress-file", progress, env=s3.env())
    assert result.returncode == 0, result.stderr
    assert "walk-1: succeeded" in result.stdout
    store = open_store(postgres.dsn)
    try:
        assert_complete(store, "walk-1", FRAMES)
        outputs = store.job("walk-1").outputs
        tracks = [t for t in store.tracks("walk-1")]
        # Joint angles in PostgreSQL: one row per frame of every lifted track (migration 2).
        for t in tracks:
            frames, angles = store.joint_angles("walk-1", t.track_id)
            assert frames == [r.frame_index for r in store.track_rows("walk-1", t.track_id)]
            assert all(v is None or 0 <= v <= 180 for values in angles.values() for v in values)
    finally:
        store.close()
    assert outputs == {"overlay": "s3://outputs/jobs/walk/overlay.webm", "pose3d": "s3://outputs/jobs/walk/pose3d.png",
                       "frames": "s3://outputs/jobs/walk/frames.jsonl", "angles": "s3://outputs/jobs/walk/motion/angles.csv",
                       "motion": "s3://outputs/jobs/walk/motion/"}
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket="outputs", Prefix="jobs/walk/motion/")["Contents"]}
    long_tracks = [t.track_id for t in tracks if t.frames >= 2]
    assert long_tracks, "the clip should give at least one track of 2+ frames"
    assert {f"jobs/walk/motion/track-{t}.bvh" for t in long_tracks} <= keys
    assert {f"jobs/walk/motion/track-{t}-angles.png" for t in long_tracks} | {"jobs/walk/motion/angles.csv"} <= keys
    assert not [k for k in keys if k.endswith("-angles.png") and int(k.split("track-")[1].split("-")[0])
                not in long_tracks], "no plot of a one-frame track"
    video = tmp_path / "overlay.webm"
    s3.client().download_file("outputs", "jobs/walk/overlay.webm", str(video))
    assert count_frames(video) == FRAMES
    lines = s3.client().get_object(Bucket="outputs", Key="jobs/walk/frames.jsonl")["Body"].read().splitlines()
    assert len(lines) == FRAMES and json.loads(lines[3])["frame_index"] == 3
    report = json.loads(progress.read_text())
    assert report["phase"] == "succeeded" and report["frames_done"] == FRAMES


def test_sqlite_and_local_files_with_a_stride(graph, clip, tmp_path):
    db = tmp_path / "jobs.db"
    result = job("--video", clip, *graph_args(graph), "--results", f"sqlite:///{db}", "--output", tmp_path / "out",
                 "--stride", "3", "--job-id", "strided", "--video-format", "mp4")
    assert result.returncode == 0, result.stderr
    store = open_store(f"sqlite:///{db}")
    assert_complete(store, "strided", FRAMES // 3, stride=3)
    assert count_frames(tmp_path / "out" / "overlay.mp4") == FRAMES // 3
    assert (tmp_path / "out" / "pose3d.png").stat().st_size > 10_000
    again = job("--video", clip, *graph_args(graph), "--results", f"sqlite:///{db}", "--output", tmp_path / "out",
                "--stride", "3", "--job-id", "strided")
    assert again.returncode == 0 and "already succeeded" in again.stdout


def test_the_embedded_graph_runs_the_job_by_itself(checkpoints, clip, tmp_path, starts_servers):
    """`--graph local`: no endpoint given; the runner starts the graph for the job and stops it."""
    result = job("--video", clip, "--checkpoints", checkpoints, "--results", f"sqlite:///{tmp_path / 'r.db'}",
                 "--output", tmp_path / "out", "--max-frames", "6", "--job-id", "embedded")
    assert result.returncode == 0, result.stderr
    assert_complete(open_store(f"sqlite:///{tmp_path / 'r.db'}"), "embedded", 6)


# ---- resume after SIGKILL ------------------------------------------------------------------------------

def _kill_midway(graph, clip, results: str, job_id: str, out: Path) -> None:
    cmd = [sys.executable, "-m", "posegraph", "job", "run", "--quiet", "--video", str(clip), *graph_args(graph),
           "--results", results, "--output", str(out), "--batch", "2", "--job-id", job_id]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "POSEGRAPH_RETRY_BASE_S": "0.05"})
    store = open_store(results)
    store.migrate()  # the runner migrates too; this only lets us poll before it has
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            row = store.job(job_id)
            if row and (row.frames_done or 0) >= 6:
                break
            if proc.poll() is not None:
                pytest.fail("the job finished before it could be killed")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        row = store.job(job_id)
        assert row.status == "running" and 6 <= row.frames_done < FRAMES, row
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_killed_job_resumes_without_duplicates_or_gaps(backend, graph, clip, postgres, tmp_path):
    results = postgres.dsn if backend == "postgres" else f"sqlite:///{tmp_path / 'jobs.db'}"
    _kill_midway(graph, clip, results, f"killed-{backend}", tmp_path / "out")
    resumed = job("--video", clip, *graph_args(graph), "--results", results, "--output", tmp_path / "out",
                  "--batch", "2", "--job-id", f"killed-{backend}")
    assert resumed.returncode == 0, resumed.stderr
    reference = job("--video", clip, *graph_args(graph), "--results", results, "--output", tmp_path / "ref",
                    "--batch", "2", "--job-id", f"uninterrupted-{backend}")
    assert reference.returncode == 0, reference.stderr
    store = open_store(results)
    try:
        got = assert_complete(store, f"killed-{backend}", FRAMES)
        want = assert_complete(store, f"uninterrupted-{backend}", FRAMES)
    finally:
        store.close()
    # The same rows as a run that was never interrupted: same persons, same track ids.
    for index in want:
        a, b = got[index].persons, want[index].persons
        assert [p.track_id for p in a] == [p.track_id for p in b], f"frame {index}"
        assert np.allclose([p.bbox for p in a], [p.bbox for p in b], atol=1e-3)
        assert np.allclose([p.keypoints3d for p in a], [p.keypoints3d for p in b], atol=1e-3)
    assert count_frames(tmp_path / "out" / "overlay.webm") == FRAMES, "the resumed job's video is complete"


# ---- bad input -----------------------------------------------------------------------------------------

def test_corrupt_video_fails_clearly_and_leaves_a_consistent_store(graph, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(5000))
    db = f"sqlite:///{tmp_path / 'r.db'}"
    result = job("--video", bad, *graph_args(graph), "--results", db, "--output", tmp_path / "o", "--job-id", "bad")
    assert result.returncode != 0
    assert "broken.mp4" in result.stderr and "Traceback" not in result.stderr
    store = open_store(db)
    row = store.job("bad")
    assert row.status == "failed" and "broken.mp4" in row.error
    assert store.counts("bad") == JobCounts(frames=0, persons=0, tracks=0, persons_without_3d=0)


def test_unreachable_video_uri_fails_clearly(graph, s3, tmp_path):
    db = f"sqlite:///{tmp_path / 'r.db'}"
    result = job("--video", "s3://videos/nope/missing.mp4", *graph_args(graph), "--results", db, "--output",
                 tmp_path / "o", "--job-id", "missing", env=s3.env())
    assert result.returncode != 0 and "s3://videos/nope/missing.mp4" in result.stderr
    assert open_store(db).job("missing").status == "failed"
    unreachable_graph = job("--video", tmp_path / "nothing.mp4", "--graph", "http://127.0.0.1:9/", "--results", db,
                            "--output", tmp_path / "o", "--job-id", "nofile")
    assert unreachable_graph.returncode != 0 and "no such file" in unreachable_graph.stderr


def test_a_video_with_nobody_in_it(checkpoints, tmp_path, starts_servers):
    from posegraph.config import load_profile
    from posegraph.embedded import archives_for_profile, default_pipeline, start_local_graph

    layouts = archives_for_profile(load_profile("cpu", ["detect.score_threshold=0.9999"]), checkpoints)
    empty = write_clip(tmp_path / "empty.mp4", [np.full((240, 320, 3), 90, np.uint8)] * 6)
    with start_local_graph(default_pipeline(layouts, "kserve"), layouts) as g:
        result = job("--video", empty, *graph_args(g), "--results", f"sqlite:///{tmp_path / 'r.db'}", "--output",
                     tmp_path / "o", "--job-id", "empty")
    assert result.returncode == 0, result.stderr
    assert "no person was found" in result.stdout
    row = open_store(f"sqlite:///{tmp_path / 'r.db'}").job("empty")
    assert row.status == "succeeded" and row.persons == 0 and row.frames_done == 6
    assert count_frames(tmp_path / "o" / "overlay.webm") == 6


class FlakyProxy(http.server.BaseHTTPRequestHandler):
    """In front of the real graph: the first attempts of each request get 503, and any request
    holding frame 5 gets a 400, as a graph that errors on one frame would."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        server = self.server
        frames = [d.get("frame_index") for d in json.loads(body).get("instances", [])]
        with server.lock:
            server.attempts[body] = server.attempts.get(body, 0) + 1
            attempt = server.attempts[body]
        if 5 in frames:
            status, payload = 400, json.dumps({"error": "detect: this frame is cursed"}).encode()
        elif attempt <= 2:
            status, payload = 503, json.dumps({"error": "overloaded, try again"}).encode()
        else:
            response = httpx.post(server.target, content=body, headers={"content-type": "application/json"},
                                  timeout=120)
            status, payload = response.status_code, response.content
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def test_a_graph_that_errors_on_some_frames_is_retried_then_recorded(graph, clip, tmp_path):
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyProxy)
    proxy.target, proxy.attempts, proxy.lock = graph.endpoint, {}, threading.Lock()
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    db = f"sqlite:///{tmp_path / 'r.db'}"
    try:
        result = job("--video", clip, "--graph", f"http://127.0.0.1:{proxy.server_address[1]}/", "--lift3d",
                     graph.servers["lift3d"].predict_url, "--results", db, "--output", tmp_path / "o",
                     "--max-frames", "8", "--batch", "4", "--job-id", "flaky")
    finally:
        proxy.shutdown()
    assert result.returncode == 5, result.stderr  # finished, but not clean: "partial"
    assert "1 frames failed" in result.stdout
    store = open_store(db)
    row = store.job("flaky")
    assert row.status == "partial" and row.frames_failed == 1 and row.frames_done == 7
    frames = store.frame_results("flaky", 0, 100)
    assert sorted(frames) == list(range(8)), "the failed frame is recorded, not skipped"
    assert frames[5].status == "failed" and "cursed" in frames[5].error
    assert max(proxy.attempts.values()) >= 3, "503s were retried"
    assert count_frames(tmp_path / "o" / "overlay.webm") == 8


def test_db_migrate_cli(postgres, tmp_path):
    from posegraph.jobs.store import SCHEMA

    first = subprocess.run([sys.executable, "-m", "posegraph", "db", "migrate", "--results",
                            f"sqlite:///{tmp_path / 'new.db'}"], capture_output=True, text=True)
    every_version = list(range(1, len(SCHEMA) + 1))
    assert len(every_version) >= 3, "versions 1-3 exist (jobs, joint angles, ranges)"
    assert first.returncode == 0 and f"applied schema versions {every_version}" in first.stdout
    again = subprocess.run([sys.executable, "-m", "posegraph", "db", "migrate", "--results", postgres.dsn],
                           capture_output=True, text=True)
    assert again.returncode == 0 and "schema" in again.stdout
    bad = subprocess.run([sys.executable, "-m", "posegraph", "db", "migrate", "--results", "mysql://x"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "sqlite:///" in bad.stderr


# ---- exports: BVH, CSV, joint angles, JSON Lines ---------------------------------------------------

def export(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "posegraph", "export", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def test_export_every_format_of_a_finished_job(graph, clip, tmp_path):
    from bvh_reference import parse_bvh

    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    result = job("--video", clip, *graph_args(graph), "--results", db, "--output", tmp_path / "out",
                 "--job-id", "exported", "--no-render")
    assert result.returncode == 0, result.stderr
    store = open_store(db)
    tracks = {t.track_id: t for t in store.tracks("exported")}
    store.close()
    long_tracks = sorted(t for t, v in tracks.items() if v.frames >= 2)
    assert long_tracks
    # The runner wrote the motion outputs even without rendering.
    assert (tmp_path / "out" / "motion" / "angles.csv").is_file()
    assert sorted(p.name for p in (tmp_path / "out" / "motion").glob("*.glb")) == sorted(
        f"track-{t}.glb" for t in long_tracks)
    # lift3d placed every lifted person in space, and the store kept it (schema version 5).
    store = open_store(db)
    rows = store.track_rows("exported", long_tracks[0])
    store.close()
    assert all(r.root3d is not None and len(r.root3d) == 3 for r in rows if r.keypoints3d is not None)

    for fmt in ("bvh", "glb", "csv", "angles", "jsonl"):
        out = tmp_path / fmt
        done = export("--results", db, "--job-id", "exported", "--format", fmt, "--out", out)
        assert done.returncode == 0, done.stderr
        names = sorted(p.name for p in out.iterdir())
        assert not [n for n in names if n.startswith(".")], "no temporary left behind"
        if fmt == "bvh":
            assert names == sorted(f"track-{t}.bvh" for t in long_tracks)
            assert len([line for line in done.stderr.splitlines() if line.startswith("skipped track")]) == \
                len(tracks) - len(long_tracks)
            parsed = parse_bvh((out / f"track-{long_tracks[0]}.bvh").read_text())
            assert parsed["frames"] == tracks[long_tracks[0]].frames
            assert abs(parsed["frame_time"] - 1 / 12) < 1e-6  # the clip is 12 fps, every frame processed
        elif fmt == "glb":
            assert names == sorted(f"track-{t}.glb" for t in long_tracks)
            head = (out / names[0]).read_bytes()[:12]
            assert head[:4] == b"glTF" and int.from_bytes(head[4:8], "little") == 2
            assert (out / names[0]).read_bytes() == (tmp_path / "out" / "motion" / names[0]).read_bytes()
        elif fmt == "csv":
            assert names == sorted(f"track-{t}.csv" for t in tracks)
            rows = (out / f"track-{long_tracks[0]}.csv").read_text().splitlines()
            assert len(rows) == 1 + tracks[long_tracks[0]].frames and rows[0].startswith("frame_index,")
            assert rows[0].endswith(",pelvis_camera_x_m,pelvis_camera_y_m,pelvis_camera_z_m")
            assert all(line.rsplit(",", 3)[1:] != ["", "", ""] for line in rows[1:]), "each lifted frame's place"
        elif fmt == "angles":
            assert names == sorted(["angles.csv", *(f"track-{t}-angles.png" for t in long_tracks)])
            lines = (out / "angles.csv").read_text().splitlines()
            assert lines[0].split(",")[:4] == ["track_id", "frame_index", "timestamp_s", "left_knee_deg"]
            assert len(lines) == 1 + sum(v.frames for v in tracks.values())
            assert (out / "angles.csv").read_text() == (tmp_path / "out" / "motion" / "angles.csv").read_text()
        else:
            assert names == ["frames.jsonl"] and len((out / "frames.jsonl").read_text().splitlines()) == FRAMES


def test_export_refuses_what_it_cannot_write_in_one_line(graph, clip, tmp_path):
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    missing = export("--results", db, "--job-id", "nope", "--format", "bvh", "--out", tmp_path / "a")
    assert missing.returncode != 0 and "no results store" in missing.stderr and not (tmp_path / "jobs.db").exists()
    result = job("--video", clip, *graph_args(graph), "--results", db, "--output", tmp_path / "out",
                 "--job-id", "one-frame", "--max-frames", "1", "--no-render")
    assert result.returncode == 0, result.stderr
    cases = [("nope", "no job 'nope'"), ("one-frame", "no track long enough for BVH")]
    store = open_store(db)
    store.begin_job("busy", str(clip), {})
    store.update_job("busy", status="running")
    store.close()
    cases.append(("busy", "job busy is running"))
    for job_id, message in cases:
        out = tmp_path / f"out-{job_id}"
        refused = export("--results", db, "--job-id", job_id, "--format", "bvh", "--out", out)
        assert refused.returncode != 0 and message in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
        assert not out.exists() or not list(out.iterdir()), "nothing written"
