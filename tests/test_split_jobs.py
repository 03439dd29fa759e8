"""A video job split into contiguous frame ranges (posegraph.jobs.ranges; issue 17).

`posegraph job run --workers N` and a PoseJob's Indexed Job (`--ranges N`, one range a pod) must
give what the unsplit job gives: the same frames, persons, boxes, 2D and 3D keypoints, and the
same tracks up to a renumbering. A worker killed mid-range resumes from its own last commit and
the merged job has every frame once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tiers import tier

from posegraph.jobs.ranges import DEFAULT_OVERLAP, Stitcher, plan_ranges, range_job_id
from posegraph.media.samples import synthetic_clip_frames, write_clip

FRAMES = 32


# -- the plan and the stitching, alone ---------------------------------------------------------------------
@pytest.mark.parametrize("total,stride,count", [(32, 1, 1), (32, 1, 2), (32, 1, 4), (10, 3, 4), (3, 1, 4), (0, 1, 2)])
def test_ranges_own_every_sampled_frame_once(total, stride, count):
    plans = plan_ranges(total, stride=stride, count=count, overlap=5)
    owned = [f for p in plans for f in range(p.start, p.stop, stride)]
    assert owned == list(range(0, total * stride, stride)), plans
    for p in plans:
        assert p.stop_position * stride == p.stop
        assert p.warmup == (0 if p.index == 0 else max(0, p.start - 5 * stride))
    assert sum(not p.empty for p in plans) == min(total, count)


def test_the_stitcher_continues_matched_tracks_and_numbers_new_ones_by_first_appearance():
    box = [10.0, 10.0, 50.0, 90.0]
    other = [200.0, 10.0, 240.0, 90.0]
    stitch = Stitcher(warmup_frames={6, 7})
    # range 0 owns frames 0-7: tracks 0 (box) and 1 (other, from frame 6)
    assert [stitch.global_id(local) for local in (5, 9)] == [0, 1]
    stitch.remember(7, box, 0)
    stitch.remember(7, other, 1)
    stitch.remember(3, box, 0)  # not a warmup frame: not kept
    assert set(stitch.owned) == {7}
    # range 1 read frames 6-7 as warmup: its local 0 is on `other`, its local 1 on `box`
    stitch.begin_range([(7, 0, other), (7, 1, box), (6, 2, [400.0, 0.0, 420.0, 20.0])])
    assert stitch.global_id(1) == 0 and stitch.global_id(0) == 1
    assert stitch.global_id(2) == 2 and stitch.global_id(3) == 3  # matched to none: new, in order
    assert stitch.continued == 2


# -- whole jobs --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("split") / "clip.mp4", synthetic_clip_frames(FRAMES))


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    """The cpu profile with a tracker that links any overlap (threshold 0): random weights put ten
    boxes anywhere in each frame, and at 0.3 nearly every person would be a track of one frame.
    At 0 the unsplit job has tracks of up to 10 frames across every range boundary here."""
    import yaml

    from posegraph.config import _read

    data, _ = _read("cpu")
    data["tracking"]["threshold"] = 0.0
    path = tmp_path_factory.mktemp("profile") / "linking.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
@tier("servers")
def graph(checkpoints):
    """One embedded graph for every job here (each job would otherwise start its own)."""
    from posegraph.config import load_profile
    from posegraph.embedded import start_embedded_graph

    with start_embedded_graph(load_profile("cpu"), checkpoints) as started:
        yield started


def command(clip, graph, profile, tmp_path, name, *extra) -> list[str]:
    return [sys.executable, "-m", "posegraph", "job", "run", "--video", str(clip), "--graph", graph.endpoint,
            "--lift3d", graph.servers["lift3d"].predict_url, "--results", f"sqlite:///{tmp_path / (name + '.db')}",
            "--output", str(tmp_path / name) + "/", "--job-id", "clip", "--profile", str(profile), "--quiet", *extra]


def read_jsonl(path: Path) -> dict[int, dict]:
    return {d["frame_index"]: d for d in map(json.loads, path.read_text().splitlines())}


def assert_same_up_to_track_ids(reference: dict[int, dict], split: dict[int, dict], what: str) -> None:
    assert sorted(reference) == sorted(split) == list(range(FRAMES)), f"{what}: frames differ"
    renumbered: dict[int, int] = {}
    for index in reference:
        pa, pb = reference[index].get("persons") or [], split[index].get("persons") or []
        assert len(pa) == len(pb), f"{what} frame {index}: {len(pa)} persons unsplit, {len(pb)} split"
        for i, (x, y) in enumerate(zip(pa, pb)):
            where = f"{what} frame {index} person {i}"
            assert renumbered.setdefault(x["track_id"], y["track_id"]) == y["track_id"], \
                f"{where}: track {x['track_id']} unsplit is {renumbered[x['track_id']]} and {y['track_id']} split"
            for key in ("bbox", "score", "keypoints2d", "keypoints3d"):
                assert (x.get(key) is None) == (y.get(key) is None), f"{where}: {key} on one side only"
                if x.get(key) is not None:
                    np.testing.assert_allclose(np.asarray(x[key], float), np.asarray(y[key], float), atol=1e-4,
                                               err_msg=f"{where}: {key}")
    assert len(set(renumbered.values())) == len(renumbered), f"{what}: two unsplit tracks became one: {renumbered}"


def run_job(argv: list[str], results: str) -> dict:
    """`posegraph job run` in a process of its own, as a user runs it, and its job's row.

    The jobs here once differed in pose scores by up to 9.4e-3 (boxes and keypoint positions
    equal), now and then: OpenCV's warpAffine cut a crop's rows differently when its threads were
    busy with another request's crops. A loaded stage keeps OpenCV on one thread
    (media.imageio.single_threaded_opencv; test_stages checks crops cut concurrently)."""
    from posegraph.jobs.store import open_store

    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    store = open_store(results)
    try:
        return dataclasses.asdict(store.job("clip"))
    finally:
        store.close()


@pytest.fixture(scope="module")
def unsplit(clip, graph, profile, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unsplit")
    summary = run_job(command(clip, graph, profile, tmp, "unsplit", "--batch", "4"),
                      f"sqlite:///{tmp / 'unsplit.db'}")
    assert summary["status"] == "succeeded", summary
    docs = read_jsonl(tmp / "unsplit" / "frames.jsonl")
    persons = [p for d in docs.values() for p in d.get("persons") or []]
    tracks = {p["track_id"] for p in persons}
    assert len(persons) >= FRAMES and all(p["keypoints3d"] is not None for p in persons), "something to compare"
    print(f"unsplit: {len(persons)} persons in {len(tracks)} tracks over {FRAMES} frames")
    spans: dict[int, list[int]] = {}
    for index, doc in docs.items():
        for p in doc.get("persons") or []:
            spans.setdefault(p["track_id"], []).append(index)
    for count in (2, 3, 4):  # stitching has work at every boundary the tests split at
        for plan in plan_ranges(FRAMES, stride=1, count=count)[1:]:
            crossing = [t for t, frames in spans.items() if min(frames) < plan.start <= max(frames)]
            assert crossing, f"no track crosses frame {plan.start}: nothing to stitch there"
    return docs, summary


@pytest.fixture(scope="module")
@tier("servers")
def postgres():
    from services import postgres_server

    with postgres_server() as server:
        yield server


@pytest.mark.parametrize("workers,backend", [(1, "sqlite"), (2, "sqlite"), (4, "sqlite"), (3, "postgres")])
def test_one_two_and_four_workers_give_the_unsplit_jobs_results(clip, graph, profile, tmp_path, unsplit, workers,
                                                                backend, request):
    from posegraph.jobs.store import open_store

    argv = command(clip, graph, profile, tmp_path, "split", "--batch", "4", "--workers", str(workers))
    results = f"sqlite:///{tmp_path / 'split.db'}"
    if backend == "postgres":  # the ranges' processes write to one PostgreSQL at once
        results = request.getfixturevalue("postgres").dsn
        argv[argv.index("--results") + 1] = results
    summary = run_job(argv, results)
    assert summary["status"] == "succeeded", summary
    reference, reference_summary = unsplit
    assert_same_up_to_track_ids(reference, read_jsonl(tmp_path / "split" / "frames.jsonl"), f"{workers} workers")
    for key in ("frames_done", "frames_failed", "persons", "tracks"):
        assert summary[key] == reference_summary[key], key
    store = open_store(results)
    try:
        assert [j.job_id for j in store.list_jobs()] == ["clip"], "ranges are not jobs of their own in lists"
        assert store.counts("clip").persons_without_3d == 0
        with store.transaction() as cur:
            cur.execute("SELECT COUNT(*) FROM jobs WHERE parent_job_id IS NOT NULL")
            assert cur.fetchone()[0] == 0, "the ranges' rows are gone once merged"
    finally:
        store.close()


def _descendants(pid: int) -> dict[int, str]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    found, todo = {}, [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            try:
                found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            todo.append(child)
    return found


def _range_row(db: Path, range_id: str) -> dict | None:
    import sqlite3

    if not db.exists():
        return None
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            row = conn.execute("SELECT last_frame, range_start FROM jobs WHERE job_id = ?", (range_id,)).fetchone()
    except sqlite3.OperationalError:  # not migrated yet
        return None
    return None if row is None else {"last_frame": row[0], "range_start": row[1]}


def test_a_worker_killed_mid_range_resumes_and_nothing_is_lost_or_doubled(clip, graph, profile, tmp_path, unsplit):
    """SIGKILL one of `--workers 2`'s processes once it has committed frames it owns: the job fails
    with one line naming the range; the same command again resumes that range from its commit and
    the merged job equals the unsplit one."""
    db = tmp_path / "killed.db"
    job = command(clip, graph, profile, tmp_path, "killed", "--batch", "2", "--workers", "2")
    second = range_job_id("clip", 1, 2)
    first_run = subprocess.Popen(job, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        killed_at = None
        while time.monotonic() < deadline and first_run.poll() is None:
            row = _range_row(db, second)
            if row and row["last_frame"] is not None and row["last_frame"] >= row["range_start"]:
                worker = [pid for pid, cmd in _descendants(first_run.pid).items() if "--range-index 1" in cmd]
                assert worker, _descendants(first_run.pid)
                os.kill(worker[0], signal.SIGKILL)
                killed_at = row["last_frame"]
                break
            time.sleep(0.05)
        assert killed_at is not None, "range 2 never committed a frame of its own before the job ended"
        out, _ = first_run.communicate(timeout=300)
    finally:
        first_run.kill()
    assert first_run.returncode == 1, out
    last_line = out.strip().splitlines()[-1]
    assert "range 2/2" in last_line and "exit -9" in last_line and "run the same command again" in last_line, out
    assert killed_at < FRAMES - 1, "killed before its last frame"
    assert _range_row(db, second)["last_frame"] >= killed_at, "its commits were kept"

    resumed = subprocess.run(job, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    reference, reference_summary = unsplit
    assert_same_up_to_track_ids(reference, read_jsonl(tmp_path / "killed" / "frames.jsonl"), "killed and resumed")
    from posegraph.jobs.store import open_store

    store = open_store(f"sqlite:///{db}")
    try:
        row = store.job("clip")
        assert (row.frames_done, row.persons, row.tracks) == (
            reference_summary["frames_done"], reference_summary["persons"], reference_summary["tracks"])
    finally:
        store.close()


def test_ranges_run_as_an_indexed_jobs_pods_would(clip, graph, profile, tmp_path, unsplit):
    """`--ranges 3`, one process per range with $JOB_COMPLETION_INDEX as an Indexed Job sets it, in
    any order: each but the last exits 0 saying its range is done; the last merges, lifts and renders."""
    base = command(clip, graph, profile, tmp_path, "pods", "--batch", "4", "--ranges", "3")
    for position, index in enumerate((2, 0, 1)):
        done = subprocess.run(base, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "JOB_COMPLETION_INDEX": str(index)})
        assert done.returncode == 0, done.stdout + done.stderr
        if position < 2:
            assert f"range {index + 1}/3" in done.stdout and "done" in done.stdout, done.stdout
            assert not (tmp_path / "pods" / "frames.jsonl").exists()
        else:
            assert "succeeded" in done.stdout, done.stdout
    assert_same_up_to_track_ids(unsplit[0], read_jsonl(tmp_path / "pods" / "frames.jsonl"), "3 pods")

    again = subprocess.run(base[:-2] + ["--ranges", "2"], capture_output=True, text=True,
                           env={**os.environ, "JOB_COMPLETION_INDEX": "0"})
    assert again.returncode == 0 and "already succeeded" in again.stdout, again.stdout + again.stderr


def test_a_split_job_resumes_only_split_the_same_way(clip, graph, profile, tmp_path):
    base = command(clip, graph, profile, tmp_path, "mixed", "--max-frames", "12", "--no-render")
    first = subprocess.run(base + ["--ranges", "2", "--range-index", "0"], capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    for other in (["--workers", "3"], []):
        refused = subprocess.run(base + other, capture_output=True, text=True)
        assert refused.returncode != 0
        message = refused.stderr.strip().splitlines()[-1]
        assert "split into 2 ranges" in message and "--workers 2" in message, refused.stderr
    no_index = subprocess.run(base + ["--ranges", "2"], capture_output=True, text=True,
                              env={k: v for k, v in os.environ.items() if k != "JOB_COMPLETION_INDEX"})
    assert no_index.returncode != 0 and "--range-index" in no_index.stderr.strip().splitlines()[-1]


def test_the_default_overlap_covers_the_trackers_memory():
    from posegraph.config import load_profile

    assert DEFAULT_OVERLAP >= 2 * (load_profile("cpu").tracking.max_gap + 1)
