"""`posegraph` as a user runs it: a real subprocess, real files in, real files out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch


def posegraph(*args, env=None, timeout=600):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "posegraph", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def one_line_error(result, *needles):
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("posegraph: error")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def read_docs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def photo(tmp_path_factory, astronaut):
    path = tmp_path_factory.mktemp("in") / "astronaut.jpg"
    cv2.imwrite(str(path), astronaut)
    return path


def test_run_on_photo_writes_documents_overlay_and_plot(checkpoints, photo, tmp_path, artifacts):
    out = tmp_path / "photo"
    result = posegraph("run", photo, "--out", out, "--checkpoints", checkpoints, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["kind"] == "image" and summary["random_weights"] is True
    assert "RANDOM WEIGHTS" in result.stderr  # said loudly, once per model
    docs = read_docs(out / "frames.jsonl")
    assert len(docs) == 1
    doc = docs[0]
    assert doc["schema"] == "posegraph/frame/v1" and (doc["width"], doc["height"]) == (512, 512)
    assert doc["image"]["uri"].startswith("file://")
    assert summary["persons"] == len(doc["persons"]) > 0
    for person in doc["persons"]:
        assert len(person["bbox"]) == 4
        assert np.asarray(person["keypoints2d"]).shape == (17, 3)
        assert np.asarray(person["keypoints3d"]).shape == (17, 3)
    overlay = cv2.imread(str(out / "overlay.jpg"))
    assert overlay.shape == (512, 512, 3)
    assert np.abs(overlay.astype(int) - cv2.imread(str(photo)).astype(int)).mean() > 1, "nothing was drawn"
    plot = cv2.imread(str(out / "pose3d.png"))
    assert plot is not None and plot.shape[0] > 200
    shutil.copy(out / "pose3d.png", artifacts / "run-photo-pose3d.png")
    shutil.copy(out / "overlay.jpg", artifacts / "run-photo-overlay.jpg")


def test_a_run_on_cached_exports_reads_no_checkpoint_and_still_says_random(checkpoints, photo, tmp_path):
    """Once a checkpoint is exported, a run finds its ONNX from the checkpoint's bytes: PyTorch is
    not imported and nothing is unpickled, and what the checkpoint said (random weights) still
    reaches the summary. A changed checkpoint is exported afresh."""
    script = ("import sys, runpy; sys.argv = ['posegraph', *sys.argv[1:]]\n"
              "try:\n    runpy.run_module('posegraph', run_name='__main__')\n"
              "finally:\n    print('TORCH LOADED' if 'torch' in sys.modules else 'NO TORCH', file=sys.stderr)\n")
    def run(*extra):
        done = subprocess.run([sys.executable, "-c", script, "run", str(photo), "--checkpoints", str(checkpoints),
                               "--out", str(tmp_path / "out"), "--json", *extra], capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr

    run()  # exports, if this session has not yet
    summary, stderr = run()
    assert "NO TORCH" in stderr and summary["random_weights"] is True and "RANDOM WEIGHTS" in stderr
    # the same network with other weights: not the cached export
    changed = tmp_path / "changed"
    shutil.copytree(checkpoints, changed)
    detect = next(changed.glob("rtmdet-nano-person*.pth"))
    raw = torch.load(detect, weights_only=False)
    raw["meta"]["posegraph"].update(random_init=False, made_by=f"{__name__} {uuid.uuid4()}")  # new bytes
    torch.save(raw, detect)
    try:
        _, stderr = run("--checkpoints", str(changed))
    finally:  # its export is this test's alone: not kept in the cache the sessions share
        from posegraph.uri import cache_dir, file_sha256

        for made in cache_dir("onnx").glob(f"*-{file_sha256(detect)[:20]}-*"):
            made.unlink()
    assert "TORCH LOADED" in stderr, "a checkpoint never exported must be read"
    stages = read_docs(tmp_path / "out" / "frames.jsonl")[0]["stages"]
    assert stages["detect"]["random_weights"] is False and stages["pose2d"]["random_weights"] is True


def test_run_on_clip_tracks_and_lifts_whole_tracks(checkpoints, clip_path, tmp_path, artifacts):
    out = tmp_path / "clip"
    result = posegraph("run", clip_path, "--out", out, "--checkpoints", checkpoints, "--json",
                       "--set", "detect.max_persons=3")
    assert result.returncode == 0, result.stderr
    assert "frame" in result.stderr  # the progress bar
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    docs = read_docs(out / "frames.jsonl")
    assert summary["frames"] == len(docs) == 16
    assert [d["frame_index"] for d in docs] == list(range(16))
    assert summary["tracks"] >= 1
    persons = [p for d in docs for p in d["persons"]]
    assert persons and all(p["track_id"] is not None and len(p["keypoints3d"]) == 17 for p in persons)
    capture = cv2.VideoCapture(str(out / "overlay.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 16, "the overlay video has every processed frame"
    shutil.copy(out / "pose3d.png", artifacts / "run-clip-pose3d.png")


def test_run_reads_a_video_from_s3(checkpoints, clip_path, tmp_path, s3):
    s3.create_bucket("videos")
    s3.client().upload_file(str(clip_path), "videos", "in/clip.mp4")
    out = tmp_path / "from-s3"
    result = posegraph("run", "s3://videos/in/clip.mp4", "--out", out, "--checkpoints", checkpoints,
                       "--max-frames", "3", "--quiet", env=s3.env())
    assert result.returncode == 0, result.stderr
    docs = read_docs(out / "frames.jsonl")
    assert len(docs) == 3 and docs[0]["image"]["uri"] == "s3://videos/in/clip.mp4"
    missing = posegraph("run", "s3://videos/in/nothing.mp4", "--checkpoints", checkpoints, "--out", out,
                        env=s3.env())
    one_line_error(missing, "s3://videos/in/nothing.mp4")


def test_stride_and_max_frames(checkpoints, clip_path, tmp_path):
    out = tmp_path / "strided"
    result = posegraph("run", clip_path, "--out", out, "--checkpoints", checkpoints, "--stride", "3",
                       "--max-frames", "4", "--quiet")
    assert result.returncode == 0, result.stderr
    assert [d["frame_index"] for d in read_docs(out / "frames.jsonl")] == [0, 3, 6, 9]


def test_zero_persons_is_a_result_not_an_error(checkpoints, tmp_path):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 128, np.uint8))
    out = tmp_path / "blank"
    result = posegraph("run", blank, "--out", out, "--checkpoints", checkpoints,
                       "--set", "detect.score_threshold=0.9999")
    assert result.returncode == 0, result.stderr
    assert read_docs(out / "frames.jsonl")[0]["persons"] == []
    assert (out / "pose3d.png").is_file()
    assert "0 persons" in result.stdout


def test_not_an_image_or_video(checkpoints, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("this is not a picture\n" * 50)
    one_line_error(posegraph("run", text, "--checkpoints", checkpoints, "--out", tmp_path / "o"),
                   "notes.txt", "neither an image nor a video")


def test_truncated_video_keeps_what_decodes_and_says_so(checkpoints, clip_frames, tmp_path):
    """An AVI cut in half still decodes its first frames: those are processed, the user is told."""
    from posegraph.media.samples import write_clip

    full = tmp_path / "full.avi"
    writer = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), 12, (640, 480))
    for frame in clip_frames:
        writer.write(frame)
    writer.release()
    half = tmp_path / "half.avi"
    half.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    result = posegraph("run", half, "--checkpoints", checkpoints, "--out", tmp_path / "half", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "ended early" in result.stdout
    assert 0 < len(read_docs(tmp_path / "half" / "frames.jsonl")) < len(clip_frames)

    # An MP4 keeps its index at the end: cut, it cannot be opened at all, and says so.
    mp4 = write_clip(tmp_path / "clip.mp4", clip_frames)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    one_line_error(posegraph("run", cut, "--checkpoints", checkpoints, "--out", tmp_path / "cut"),
                   "cut.mp4", "truncated or corrupt")


def test_huge_frame_is_refused(checkpoints, tmp_path):
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.zeros((2000, 3000, 3), np.uint8))
    one_line_error(posegraph("run", big, "--checkpoints", checkpoints, "--out", tmp_path / "o",
                             env={"POSEGRAPH_MAX_PIXELS": "1000000"}), "6 MP", "limit")


def test_missing_input_and_missing_checkpoints(checkpoints, photo, tmp_path):
    one_line_error(posegraph("run", tmp_path / "nope.jpg", "--checkpoints", checkpoints), "no such file")
    one_line_error(posegraph("run", photo, "--checkpoints", tmp_path / "empty"),
                   "no checkpoint for", "models fetch", "models init --random")


def test_bad_profile_values_are_named(checkpoints, photo):
    one_line_error(posegraph("run", photo, "--checkpoints", checkpoints, "--set", "detect.scor_threshold=1"),
                   "detect.scor_threshold")
    one_line_error(posegraph("run", photo, "--checkpoints", checkpoints, "--set", "pose2d.model=rtmpose-xl"),
                   "rtmpose-xl", "known models")
    one_line_error(posegraph("run", photo, "--profile", "tpu"), "unknown profile")


def test_models_init_random_writes_mmengine_checkpoints(tmp_path):
    result = posegraph("models", "init", "--random", tmp_path, "--model", "rtmpose-t")
    assert result.returncode == 0, result.stderr
    checkpoint = torch.load(tmp_path / "rtmpose-t.pth", map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"meta", "state_dict"}
    assert checkpoint["meta"]["posegraph"]["random_init"] is True
    assert "backbone.stem.0.conv.weight" in checkpoint["state_dict"]
    listing = posegraph("models", "list", "--dir", tmp_path)
    assert "rtmpose-t" in listing.stdout and "present" in listing.stdout


def test_models_fetch_offline_fails_with_one_line(tmp_path, starts_servers):
    from services import free_port

    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    line = one_line_error(posegraph("models", "fetch", "--dir", tmp_path, "--model", "rtmpose-t",
                                    env={"POSEGRAPH_ZOO_MIRROR": unreachable}), "rtmpose-t", "offline?")
    assert "refused" in line.lower()
    assert not list(tmp_path.iterdir()), "no partial file is left behind"


def test_models_fetch_downloads_the_official_paths(tmp_path, checkpoints, starts_servers):
    """Against a mirror laid out like download.openmmlab.com (a real HTTP server)."""
    from services import http_file_server

    from posegraph.models.zoo import ZOO_HOST, get_model

    spec = get_model("rtmpose-t")
    mirror = tmp_path / "mirror"
    target = mirror / spec.url[len(ZOO_HOST) + 1:]
    target.parent.mkdir(parents=True)
    shutil.copy(checkpoints / "rtmpose-t.pth", target)
    with http_file_server(mirror) as base:
        result = posegraph("models", "fetch", "--dir", tmp_path / "got", "--model", "rtmpose-t",
                           env={"POSEGRAPH_ZOO_MIRROR": base})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "got" / "rtmpose-t.pth").read_bytes() == (checkpoints / "rtmpose-t.pth").read_bytes()


def test_demo_runs_end_to_end_offline(tmp_path, checkpoints, starts_servers):
    """The README's main job, offline: neither the OpenMMLab zoo nor the package index (BlazePose,
    test_blazepose.py) answers, so it falls back to random weights (and says so)."""
    ckpt_dir = tmp_path / "ckpts"
    result = posegraph("demo", "--out", tmp_path / "demo", "--frames", "8", "--checkpoints", ckpt_dir,
                       env={"POSEGRAPH_ZOO_MIRROR": "http://127.0.0.1:9", "POSEGRAPH_WHEEL_MIRROR": "http://127.0.0.1:9"})
    assert result.returncode == 0, result.stderr
    assert "cannot download BlazePose's weights either" in result.stdout
    assert "writing RANDOM weights" in result.stdout
    assert "through the graph" in result.stdout and "RANDOM WEIGHTS" in result.stdout
    for rel in ("photo/frame.json", "photo/overlay.jpg", "photo/pose3d.png", "clip/frames.jsonl",
                "clip/overlay.webm", "clip/pose3d.png", "results.db"):
        assert (tmp_path / "demo" / rel).is_file(), rel
    doc = json.loads((tmp_path / "demo" / "photo" / "frame.json").read_text())
    assert set(doc["stages"]) == {"detect", "pose2d", "lift3d"} and doc["stages"]["detect"]["random_weights"]
    assert len(read_docs(tmp_path / "demo" / "clip" / "frames.jsonl")) == 8
    assert "job demo-clip: succeeded" in result.stdout
    assert f"posegraph ui --data {tmp_path / 'demo'}" in result.stdout  # the UI reads this store
