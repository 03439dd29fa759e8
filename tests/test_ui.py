"""The web UI end to end in a real browser: `posegraph ui` (the embedded default: a local graph,
local job runners, SQLite and files) as its own process, driven by Playwright in Debian's headless
Chromium. Screenshots are kept in tests/artifacts/. The cluster mode (PoseJobs through the
Kubernetes API) is tested against kmock and a real S3 server, without a browser."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from tiers import missing, tier

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PASSWORD = "ui-test-" + uuid.uuid4().hex[:8]
AUTH = ("posegraph", PASSWORD)
MAX_UPLOAD_MB = 5
REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _posegraph_ui(data: Path, *args, env: dict[str, str] | None = None):
    """`posegraph ui --data DATA ARGS…` on a free port, until the block ends: {url, data, log}."""
    from services import free_port, stop_process, wait_for_port

    port = free_port()
    log = data / "ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "posegraph", "ui", "--port", str(port), "--data", str(data),
                                 *map(str, args)], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_port(port, timeout=600, proc=proc, log=log)  # it listens once its graph is up (first start exports)
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        yield {"url": url, "data": data, "log": log}
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
@tier("servers")
def ui(tmp_path_factory, checkpoints):
    """`posegraph ui` as a newcomer runs it, plus a password (the chart's default guard)."""
    with _posegraph_ui(tmp_path_factory.mktemp("ui"), "--checkpoints", checkpoints, "--max-upload-mb", MAX_UPLOAD_MB,
                       env={"POSEGRAPH_UI_PASSWORD": PASSWORD, "POSEGRAPH_RETRY_BASE_S": "0.1"}) as running:
        yield running


@pytest.fixture(scope="module")
@tier("browser")
def playwright():
    """One Playwright for the module: its sync API runs one instance per thread at a time (a second
    `sync_playwright()` beside the first fails), so every browser here is launched from this one."""
    if CHROMIUM is None:
        missing("no chromium on PATH: `make test` installs Debian's chromium (needs root or sudo for apt)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    instance = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--use-angle=swiftshader"])
    yield instance
    instance.close()


@contextlib.contextmanager
def _ui_page(browser, height: int = 1000, **options):
    """A page logged in to the UI (Basic auth), 1280 wide; the block's end closes it, then fails
    on any JavaScript error the page raised."""
    context = browser.new_context(http_credentials={"username": AUTH[0], "password": PASSWORD},
                                  viewport={"width": 1280, "height": height}, **options)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(browser, ui, tmp_path):
    with _ui_page(browser, accept_downloads=True) as page:
        page.goto(ui["url"] + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        yield page


def _jobs(ui) -> list[dict]:
    return httpx.get(f"{ui['url']}/api/jobs", auth=AUTH).json()["jobs"]


def _coloured_pixels(page, selector: str) -> int:
    """Pixels of a 2D canvas that are clearly coloured (not grey, white or transparent)."""
    return page.evaluate("""(selector) => {
        const c = document.querySelector(selector);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) {
            if (d[i + 3] > 128 && Math.abs(d[i] - d[i + 1]) + Math.abs(d[i + 1] - d[i + 2]) > 60) n++;
        }
        return n;
    }""", selector)


def _painted_pixels(page, selector: str) -> int:
    """Pixels of a canvas that differ from its background (the WebGL canvas keeps its buffer)."""
    return page.evaluate("""(selector) => {
        const c = document.querySelector(selector);
        const t = document.createElement('canvas'); t.width = c.width; t.height = c.height;
        const x = t.getContext('2d'); x.drawImage(c, 0, 0);
        const d = x.getImageData(0, 0, t.width, t.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) {
            if (Math.abs(d[i] - 0x11) + Math.abs(d[i + 1] - 0x15) + Math.abs(d[i + 2] - 0x1c) > 60) n++;
        }
        return n;
    }""", selector)


# ---- without a browser: the guard and the limits -------------------------------------------------------

def test_the_ui_requires_its_password(ui):
    assert httpx.get(f"{ui['url']}/api/jobs").status_code == 401
    assert httpx.get(f"{ui['url']}/api/jobs", auth=("posegraph", "wrong")).status_code == 401
    assert httpx.get(f"{ui['url']}/api/jobs", auth=AUTH).status_code == 200
    assert httpx.get(f"{ui['url']}/healthz").status_code == 200  # probes need no password
    assert "three" in httpx.get(f"{ui['url']}/static/vendor/three.module.min.js", auth=AUTH).text[:2000].lower()


def test_oversized_and_unreadable_uploads_are_refused_and_store_nothing(ui, tmp_path):
    before = len(_jobs(ui))
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom((MAX_UPLOAD_MB + 1) * 1_000_000))
    response = httpx.post(f"{ui['url']}/api/jobs", auth=AUTH, files={"file": ("big.mp4", big.read_bytes())})
    assert response.status_code == 413 and "limit is 5 MB" in response.json()["error"]
    chunked = httpx.post(f"{ui['url']}/api/jobs", auth=AUTH, content=iter([b"--x\r\n"] * 3),
                         headers={"content-type": "multipart/form-data; boundary=x"})
    assert chunked.status_code == 411 and "Content-Length" in chunked.json()["error"]
    response = httpx.post(f"{ui['url']}/api/jobs", auth=AUTH, data={"uri": "ftp://videos/walk.mp4"})
    assert response.status_code == 400 and "s3://" in response.json()["error"]
    response = httpx.post(f"{ui['url']}/api/jobs", auth=AUTH, data={"stride": "two"},
                          files={"file": ("x.mp4", b"\x00" * 10)})
    assert response.status_code == 400 and "stride" in response.json()["error"]
    assert len(_jobs(ui)) == before
    assert not list((ui["data"] / "uploads").iterdir()), "nothing half-written"
    assert not list((ui["data"] / "tmp").iterdir()), "temporary files cleaned up"


# ---- in the browser ---------------------------------------------------------------------------------------

def test_photo_shows_2d_skeletons_and_a_3d_view(page, ui, tmp_path, astronaut, artifacts):
    import cv2

    photo = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(photo), astronaut)
    page.set_input_files("#photo-file", str(photo))
    with page.expect_response("**/api/photo") as response:
        page.click("#photo-form button")
    assert response.value.status == 200
    page.wait_for_selector("#photo-canvas[data-persons]", timeout=60_000)
    persons = int(page.get_attribute("#photo-canvas", "data-persons"))
    doc = response.value.json()
    assert persons == len(doc["persons"]) >= 1
    assert page.eval_on_selector("#photo-canvas", "c => [c.width, c.height]") == [512, 512]
    # The 3D view: a WebGL canvas with one skeleton per person, actually drawn.
    page.wait_for_selector("#photo-3d canvas")
    assert int(page.get_attribute("#photo-3d", "data-persons")) == sum(1 for p in doc["persons"] if p["keypoints3d"])
    assert int(page.get_attribute("#photo-3d", "data-rendered")) >= 1
    assert _painted_pixels(page, "#photo-3d canvas") > 200
    # Drag to rotate: the view re-renders and the picture changes.
    before = page.eval_on_selector("#photo-3d canvas", "c => c.toDataURL()")
    box = page.locator("#photo-3d canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 120, box["y"] + box["height"] / 2 + 30, steps=8)
    page.mouse.up()
    assert page.eval_on_selector("#photo-3d canvas", "c => c.toDataURL()") != before
    assert "person" in page.text_content("#photo-summary")
    if persons > 1:  # one person at a time
        page.select_option("#photo-person", "0")
        page.wait_for_function("document.querySelector('#photo-3d').dataset.persons === '1'")
    # Random weights (the test checkpoints) are said loudly.
    assert "RANDOM" in page.text_content("#banner")
    page.screenshot(path=str(artifacts / "ui-photo.png"), full_page=True)


@pytest.fixture(scope="module")
@tier("servers")
def real_ui(tmp_path_factory, blazepose_weights):
    """`posegraph ui --profile real-offline`: BlazePose's real weights (tests/test_blazepose.py)."""
    with _posegraph_ui(tmp_path_factory.mktemp("ui-real"), "--profile", "real-offline",
                       "--checkpoints", blazepose_weights) as running:
        yield running


def test_a_real_skeleton_on_the_astronaut(browser, real_ui, tmp_path, astronaut, artifacts):
    """With real weights (BlazePose, offline) the page shows one person, no random-weights banner,
    and the skeleton where she is: her nose inside her face's part of the photo."""
    import cv2

    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    try:
        page.goto(real_ui["url"] + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        photo = tmp_path / "astronaut.jpg"
        cv2.imwrite(str(photo), astronaut)
        page.set_input_files("#photo-file", str(photo))
        with page.expect_response("**/api/photo") as response:
            page.click("#photo-form button")
        doc = response.value.json()
        page.wait_for_selector("#photo-canvas[data-persons]", timeout=60_000)
        assert int(page.get_attribute("#photo-canvas", "data-persons")) == len(doc["persons"]) == 1
        nose = doc["persons"][0]["keypoints2d"][0]
        assert 170 < nose[0] < 260 and 90 < nose[1] < 180, "her nose, in the 512 × 512 photo"
        assert not page.is_visible("#banner"), "real weights: no RANDOM banner"
        assert _coloured_pixels(page, "#photo-canvas") > 200 and _painted_pixels(page, "#photo-3d canvas") > 200
        page.screenshot(path=str(artifacts / "ui-photo-real.png"), full_page=True)
    finally:
        context.close()


def _refused_upload(page, form: str, path: Path, endpoint: str, status: int) -> str:
    """Submit a file through one of the page's forms; expect the HTTP status and return the
    visible error banner's text."""
    page.set_input_files(f"#{form}-file", str(path))
    with page.expect_response(endpoint) as response:
        page.click(f"#{form}-form button")
    assert response.value.status == status
    page.wait_for_selector("#banner.error")
    return page.text_content("#banner")


def test_a_bad_photo_gets_a_visible_message(page, tmp_path, artifacts):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a photo")
    assert "not a decodable image" in _refused_upload(page, "photo", bad, "**/api/photo", 415)
    page.screenshot(path=str(artifacts / "ui-bad-photo.png"))


def test_video_job_from_upload_to_playback_and_downloads(page, ui, clip_path, artifacts, tmp_path):
    page.set_input_files("#video-file", str(clip_path))
    with page.expect_response("**/api/jobs") as response:
        page.click("#video-form button")
    assert response.value.status == 201
    job_id = response.value.json()["job_id"]
    page.wait_for_url(f"**/#/jobs/{job_id}")
    page.wait_for_function("document.querySelector('#job-phase') && "
                           "['succeeded','failed','partial'].includes(document.querySelector('#job-phase').textContent)",
                           timeout=300_000)
    assert page.text_content("#job-phase") == "succeeded", page.text_content("#job-error")
    job = httpx.get(f"{ui['url']}/api/jobs/{job_id}", auth=AUTH).json()
    assert job["frames_done"] == job["frames_total"] == 16
    assert f"{job['frames_total']} / {job['frames_total']} frames" in page.text_content("#job-status")

    # The rendered video plays, and the 3D view follows it.
    page.wait_for_selector("#job-player:not([hidden])")
    page.wait_for_function("document.querySelector('#job-video').readyState >= 2", timeout=30_000)
    page.eval_on_selector("#job-video", "v => v.play()")
    page.wait_for_function("document.querySelector('#job-video').currentTime > 0.3", timeout=30_000)
    page.wait_for_function("Number(document.querySelector('#job-3d').dataset.frame) > 0", timeout=30_000)
    assert _painted_pixels(page, "#job-3d canvas") > 100
    # Scrubbing moves the video and the 3D view to that frame.
    page.eval_on_selector("#job-scrub", "s => { s.value = '12'; s.dispatchEvent(new Event('input')); }")
    page.wait_for_function("document.querySelector('#job-3d').dataset.frame === '12'")
    assert abs(page.eval_on_selector("#job-video", "v => v.currentTime") - 12.5 / job["video_fps"]) < 0.05
    # The joint-angle plot of the longest track follows the player: its cursor is at frame 12.
    page.wait_for_selector("#job-angles-card:not([hidden])")
    page.wait_for_function("document.querySelector('#job-angles').dataset.frame === '12'")
    page.screenshot(path=str(artifacts / "ui-job.png"), full_page=True)
    assert _coloured_pixels(page, "#job-angles") > 500  # the angle curves (the grid is grey)

    # Downloads: frame documents, joint angles, a CSV per track and a BVH per track of 2+ frames.
    links = page.locator("#download-list a")
    bvh_tracks = [t for t in job["track_list"] if t["lifted"] and t["frames"] >= 2]
    # a long tail folds into <details>; per motion track BVH, GLB, GLB with the feet locked and FBX
    assert links.count() == 2 + len(job["track_list"]) + 4 * len(bvh_tracks)
    track = max(job["track_list"], key=lambda t: t["frames"])
    with page.expect_download() as download:
        page.click(f"#download-list a[href$='/tracks/{track['track_id']}.bvh']")
    from bvh_reference import parse_bvh

    bvh = parse_bvh(Path(download.value.path()).read_text())
    assert bvh["frames"] == track["frames"] and [j["name"] for j in bvh["joints"]][0] == "root"
    with page.expect_download() as download:
        page.click("#download-list a[href$='/angles.csv']")
    angle_rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert len(angle_rows) == sum(t["frames"] for t in job["track_list"] if t["lifted"])
    assert 0 <= float(angle_rows[0]["trunk_lean_deg"]) <= 180
    with page.expect_download() as download:
        page.click(f"#download-list a[href$='/tracks/{track['track_id']}.csv']")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert len(rows) == track["frames"]
    assert {int(r["track_id"]) for r in rows} == {track["track_id"]}
    assert [int(r["frame_index"]) for r in rows] == sorted(int(r["frame_index"]) for r in rows)
    assert rows[0]["nose_x"] and rows[0]["head_z_m"], "2D and 3D columns are filled"
    with page.expect_download() as download:
        page.click("#download-list a[href$='frames.jsonl']")
    lines = Path(download.value.path()).read_text().splitlines()
    assert len(lines) == 16 and json.loads(lines[0])["schema"] == "posegraph/frame/v1"

    # The job list shows it finished.
    page.goto(ui["url"] + "/#/")
    page.wait_for_selector(f"tr[data-job-id='{job_id}'][data-status='succeeded']")
    page.screenshot(path=str(artifacts / "ui-jobs.png"), full_page=True)


def test_motion_downloads_refuse_what_they_cannot_give(ui, clip_path, finished_job):
    """Runs after the video job above: a one-frame track has no BVH (409), an unknown track is a
    404, and a job that has not finished has no angles yet (409). Each says why."""
    from posegraph.jobs.store import open_store

    done = job = finished_job["job"]  # the video job above's, or one of its own when run alone
    short = next(t for t in job["track_list"] if t["frames"] == 1)
    base = f"{ui['url']}/api/jobs/{done['job_id']}"
    refused = httpx.get(f"{base}/tracks/{short['track_id']}.bvh", auth=AUTH)
    assert refused.status_code == 409 and "TrackTooShort" not in refused.text
    assert f"track {short['track_id']}" in refused.json()["error"]
    missing = httpx.get(f"{base}/tracks/99999.bvh", auth=AUTH)
    assert missing.status_code == 404 and "no track 99999" in missing.json()["error"]
    store = open_store(f"sqlite:///{ui['data'] / 'results.db'}")
    store.begin_job("still-running", str(clip_path), {})
    store.update_job("still-running", status="running")
    store.close()
    busy = httpx.get(f"{ui['url']}/api/jobs/still-running/angles.csv", auth=AUTH)
    assert busy.status_code == 409 and "once it has finished" in busy.json()["error"]


# ---- a track's motion: GLB and FBX downloads, and the job page's motion view -------------------------

@pytest.fixture(scope="module")
def finished_job(ui, clip_path) -> dict:
    """A succeeded video job (the one test_video_job_… made, or a new one when run alone) and the
    longest of its tracks that has a motion (lifted, 2 frames or more)."""
    import time

    done = next((j for j in _jobs(ui) if j["status"] == "succeeded"), None)
    if done is None:
        created = httpx.post(f"{ui['url']}/api/jobs", auth=AUTH, timeout=120,
                             files={"file": ("clip.mp4", clip_path.read_bytes())})
        assert created.status_code == 201, created.text
        job_id, deadline = created.json()["job_id"], time.monotonic() + 300
        while (done := httpx.get(f"{ui['url']}/api/jobs/{job_id}", auth=AUTH).json())["status"] not in (
                "succeeded", "failed", "partial"):
            assert time.monotonic() < deadline, f"job {job_id} did not finish: {done}"
            time.sleep(1)
        assert done["status"] == "succeeded", done.get("error")
    job = httpx.get(f"{ui['url']}/api/jobs/{done['job_id']}", auth=AUTH).json()
    # The page's own choice (its track select): the longest, then the lowest id.
    track = min((t for t in job["track_list"] if t["lifted"] and t["frames"] >= 2),
                key=lambda t: (-t["frames"], t["track_id"]))
    return {"job": job, "track": track, "base": f"{ui['url']}/api/jobs/{job['job_id']}"}


def _glb_json(data: bytes) -> dict:
    """A GLB's header checked (magic, version 2, length) and its JSON chunk."""
    import struct

    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert (magic, version, length) == (b"glTF", 2, len(data))
    chunk_length, chunk_type = struct.unpack_from("<II", data, 12)
    assert chunk_type == 0x4E4F534A  # "JSON"
    return json.loads(data[20:20 + chunk_length])


def test_glb_download_is_the_tracks_motion_and_bad_requests_are_one_line(ui, finished_job):
    base, track, job = finished_job["base"], finished_job["track"], finished_job["job"]
    response = httpx.get(f"{base}/tracks/{track['track_id']}.glb", auth=AUTH, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "model/gltf-binary"
    assert f'filename="{job["job_id"]}-track{track["track_id"]}.glb"' in response.headers["content-disposition"]
    doc = _glb_json(response.content)
    extras = doc["scenes"][doc.get("scene", 0)]["extras"]["posegraph"]
    assert len(extras["frame_index"]) == len(extras["contacts"]["left"]) == track["frames"]
    assert extras["joints"][0] == "root" and "left_foot" in extras["joints"]
    assert len(doc["animations"]) == 1
    # The options reach MotionOptions: Mixamo's joint names, and in place (the root stays over the origin).
    mixamo = _glb_json(httpx.get(f"{base}/tracks/{track['track_id']}.glb?rig=mixamo&in_place=1&lock_feet=1",
                                 auth=AUTH, timeout=120).content)
    assert mixamo["scenes"][0]["extras"]["posegraph"]["joints"][0] == "mixamorig:Hips"
    # Bad requests: a 4xx and one line saying why.
    for query, status, words in [(".glb?rig=unreal", 400, "unknown rig 'unreal'"),
                                 (".glb?lock_feet=maybe", 400, "lock_feet must be 1 or 0"),
                                 (".glb?feet=1", 400, "unknown option 'feet'")]:
        bad = httpx.get(f"{base}/tracks/{track['track_id']}{query}", auth=AUTH)
        assert bad.status_code == status and words in bad.json()["error"], (query, bad.text)
        assert "\n" not in bad.json()["error"]
    missing = httpx.get(f"{base}/tracks/99999.glb", auth=AUTH)
    assert missing.status_code == 404 and missing.json()["error"] == f"job {job['job_id']} has no track 99999"
    short = next((t for t in job["track_list"] if t["frames"] == 1), None)
    if short is not None:
        refused = httpx.get(f"{base}/tracks/{short['track_id']}.glb", auth=AUTH)
        assert refused.status_code == 409 and f"track {short['track_id']}" in refused.json()["error"]


def test_fbx_download_without_blender_says_what_to_install(ui, finished_job, tmp_path, monkeypatch):
    """The server process may well have Blender: this app, over the same results store, has none."""
    from starlette.testclient import TestClient

    from posegraph.ui.app import UISettings, create_app
    from posegraph.ui.launchers import LocalLauncher

    monkeypatch.setenv("POSEGRAPH_BLENDER", "/nonexistent/blender")
    results = f"sqlite:///{ui['data'] / 'results.db'}"
    settings = UISettings(graph="http://127.0.0.1:9", results=results, data_dir=tmp_path / "data",
                          launcher=LocalLauncher(graph="http://127.0.0.1:9", lift3d=None, results=results,
                                                 output_dir=tmp_path / "out"))
    track = finished_job["track"]
    with TestClient(create_app(settings)) as client:
        response = client.get(f"/api/jobs/{finished_job['job']['job_id']}/tracks/{track['track_id']}.fbx")
        assert response.status_code == 501, response.text
        error = response.json()["error"]
        assert "POSEGRAPH_BLENDER=/nonexistent/blender" in error and "Blender" in error and "\n" not in error
        assert client.get(f"/api/jobs/{finished_job['job']['job_id']}/tracks/99999.fbx").status_code == 404
        assert client.get(f"/api/jobs/{finished_job['job']['job_id']}/tracks/{track['track_id']}.fbx?rig=x"
                          ).status_code == 400


def test_job_page_plays_the_tracks_glb_following_the_video(page, ui, finished_job, artifacts):
    job, track = finished_job["job"], finished_job["track"]
    page.goto(f"{ui['url']}/#/jobs/{job['job_id']}")
    page.wait_for_selector("#job-motion[data-glb-loaded='1']", timeout=60_000)
    motion = "#job-motion"
    assert int(page.get_attribute(motion, "data-samples")) == track["frames"]
    assert track["track_id"] == int(page.eval_on_selector("#job-angles-track", "s => s.value"))
    page.wait_for_function("document.querySelector('#job-video').readyState >= 1", timeout=30_000)
    glb = _glb_json(httpx.get(f"{finished_job['base']}/tracks/{track['track_id']}.glb", auth=AUTH, timeout=120).content)
    frames = glb["scenes"][0]["extras"]["posegraph"]["frame_index"]

    def seek(frame: int) -> dict:
        page.eval_on_selector("#job-video", f"v => {{ v.pause(); v.currentTime = {(frame + 0.5) / job['video_fps']}; }}")
        page.wait_for_function(f"document.querySelector('{motion}').dataset.frame === '{frame}'", timeout=30_000)
        return page.eval_on_selector(motion, "e => ({...e.dataset})")

    first, last = seek(frames[0]), seek(frames[-1])
    assert first["visible"] == last["visible"] == "1"
    assert first["rootX"] != last["rootX"], "the root moves with the video"
    assert int(page.get_attribute(motion, "data-rendered")) >= 2 and _painted_pixels(page, f"{motion} canvas") > 200
    contacts = glb["scenes"][0]["extras"]["posegraph"]["contacts"]
    assert int(last["contacts"]) == int(contacts["left"][-1]) + int(contacts["right"][-1])
    # The downloads beside the BVH: GLB, GLB with the feet locked, FBX.
    for href in (".glb", ".glb?lock_feet=1", ".fbx"):
        assert page.locator(f"#download-list a[href$='/tracks/{track['track_id']}{href}']").count() == 1
    page.screenshot(path=str(artifacts / "ui-motion.png"), full_page=True)


def _stored_track_job(tmp_path: Path, job_id: str, keypoints2d, keypoints3d, roots, *, fps: float,
                      size: tuple[int, int], focal_px: float, results: dict | None = None) -> tuple[str, list]:
    """A results store holding one finished job whose one track is the given motion (as
    tests/test_root_motion.py's _stored_walk writes it, with root3d, joint angles and ``results``,
    a track stage's fields), and the job's rendered video: the 2D skeleton drawn on grey, at half
    ``size``, VP8 WebM. Returns the store's DSN and the frames drawn (grey, a quarter size: what the
    player's picture is matched to)."""
    import cv2
    import numpy as np

    from posegraph.jobs.rows import FrameRow, PersonRow
    from posegraph.jobs.store import open_store
    from posegraph.keypoints import COCO_LEFT, COCO_SKELETON
    from posegraph.media.video import open_video_writer
    from posegraph.motion.angles import joint_angles

    scale, half = 0.5, (size[0] // 2, size[1] // 2)
    video, drawn = tmp_path / f"{job_id}.webm", []
    writer = open_video_writer(video, fps, half)
    try:
        for i, k2 in enumerate(keypoints2d):
            pixels = np.full((half[1], half[0], 3), 110, np.uint8)
            points = np.round(k2[:, :2] * scale).astype(int)
            for a, b in COCO_SKELETON:
                colour = (28, 159, 255) if a in COCO_LEFT or b in COCO_LEFT else (240, 201, 76)
                cv2.line(pixels, tuple(points[a]), tuple(points[b]), colour, 3, cv2.LINE_AA)
            for x, y in points:
                cv2.circle(pixels, (x, y), 3, (255, 255, 255), -1, cv2.LINE_AA)
            cv2.putText(pixels, f"frame {i}", (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
            writer.write(pixels)
            drawn.append(cv2.resize(cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY), (half[0] // 4, half[1] // 4),
                                    interpolation=cv2.INTER_AREA).astype(np.float32))
    finally:
        writer.release()

    dsn = f"sqlite:///{tmp_path / (job_id + '.db')}"
    store = open_store(dsn)
    try:
        store.migrate()
        store.begin_job(job_id, str(video), {"focal_px": focal_px, "filename": video.name, "stride": 1})
        store.update_job(job_id, width=size[0], height=size[1], fps=fps)
        frames = [FrameRow(i, i / fps, "ok", None, 1) for i in range(len(keypoints2d))]
        persons = [PersonRow(1, 0.9, [*k2[:, :2].min(0), *k2[:, :2].max(0)], k2.tolist(), None, frame_index=i,
                             person_index=0) for i, k2 in enumerate(keypoints2d)]
        store.commit_batch(job_id, frames, persons, [(1, 0, len(frames) - 1)], last_frame=len(frames) - 1,
                           tracker_state=None)
        rows = [(i, 0, k3.tolist(), roots[i].tolist()) for i, k3 in enumerate(keypoints3d)]
        store.write_lifted(job_id, 1, rows, angles=joint_angles(keypoints3d), results=results)
        # The page plays the job's rendered overlay (the /video route serves outputs["overlay"]).
        store.update_job(job_id, status="succeeded", frames_total=len(frames), outputs={"overlay": str(video)})
    finally:
        store.close()
    return dsn, drawn


def _stored_walk_job(tmp_path: Path, walk) -> tuple[str, list]:
    """The synthetic walk (posegraph.motion.synthetic) as a finished job (_stored_track_job)."""
    return _stored_track_job(tmp_path, "walk", walk.keypoints2d, walk.keypoints3d, walk.root, fps=walk.fps,
                             size=(walk.width, walk.height), focal_px=walk.focal_px)


def test_motion_view_walks_the_synthetic_walk_with_the_video(browser, starts_servers, tmp_path, artifacts):
    """The motion view on a motion with a ground truth (posegraph.motion.synthetic.walk): the root
    travels as far as the person walked, the view's frame follows the video, and the planted-feet
    discs are the GLB's contacts. Its screenshot is the one to look at (ui-motion-walk.png)."""
    import numpy as np

    from posegraph.motion.synthetic import walk as synthetic_walk

    walk = synthetic_walk(4.0, fps=30.0)
    data = tmp_path / "ui"
    data.mkdir()
    results, drawn = _stored_walk_job(tmp_path, walk)
    # No graph: the job page reads only the store (photos would go to this closed port).
    with _posegraph_ui(data, "--graph", "http://127.0.0.1:9", "--results", results,
                       env={"POSEGRAPH_UI_PASSWORD": PASSWORD}) as running:
        base = f"{running['url']}/api/jobs/walk"
        job = httpx.get(base, auth=AUTH).json()
        assert job["status"] == "succeeded" and [t["track_id"] for t in job["track_list"]] == [1]
        glb = _glb_json(httpx.get(f"{base}/tracks/1.glb", auth=AUTH, timeout=120).content)
        extras = glb["scenes"][glb.get("scene", 0)]["extras"]["posegraph"]
        assert extras["frame_index"] == list(range(len(walk.world)))
        contacts = np.array([extras["contacts"]["left"], extras["contacts"]["right"]], bool).T

        with _ui_page(browser) as page:
            page.goto(f"{running['url']}/#/jobs/walk")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            page.wait_for_selector("#job-angles-track option[value='1']", state="attached", timeout=30_000)
            page.select_option("#job-angles-track", "1")  # the walk's track (the only one)
            motion = "#job-motion"
            page.wait_for_selector(f"{motion}[data-glb-loaded='1']", timeout=60_000)
            assert int(page.get_attribute(motion, "data-samples")) == len(walk.world)
            page.wait_for_function("document.querySelector('#job-video').readyState >= 1", timeout=30_000)
            duration = page.eval_on_selector("#job-video", "v => v.duration")
            assert abs(duration - len(walk.world) / walk.fps) < 0.2, duration

            def picture() -> np.ndarray:
                """The player's current picture, grey and a quarter size like ``drawn``."""
                import base64

                import cv2

                url = page.eval_on_selector("#job-video", """v => { const c = document.createElement('canvas');
                    c.width = v.videoWidth; c.height = v.videoHeight; c.getContext('2d').drawImage(v, 0, 0);
                    return c.toDataURL('image/png'); }""")
                pixels = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8),
                                      cv2.IMREAD_GRAYSCALE)
                assert pixels.shape[::-1] == (walk.width // 2, walk.height // 2)
                return cv2.resize(pixels, drawn[0].shape[::-1], interpolation=cv2.INTER_AREA).astype(np.float32)

            def seek(seconds: float) -> dict:
                frame = int(round(seconds * walk.fps))
                at = (frame + 0.5) / walk.fps  # frame k is shown from k / fps to (k + 1) / fps
                page.eval_on_selector("#job-video", f"v => {{ v.pause(); v.currentTime = {at}; }}")
                page.wait_for_function(f"document.querySelector('{motion}').dataset.frame === '{frame}' && "
                                       "!document.querySelector('#job-video').seeking", timeout=30_000)
                shown = page.eval_on_selector(motion, "e => ({...e.dataset})")
                assert shown["visible"] == "1" and int(shown["sample"]) == frame, shown
                assert int(shown["contacts"]) == int(contacts[frame].sum()), (frame, shown, contacts[frame])
                # The video shows that frame: of the frames drawn into it, the one its picture is closest to.
                seen = picture()
                closest = int(np.argmin([np.mean((seen - d) ** 2) for d in drawn]))
                assert abs(closest - frame) <= 1, (frame, closest)
                return {"frame": frame, "at": np.array([float(shown["rootX"]), float(shown["rootZ"])]),
                        "contacts": int(shown["contacts"]), "closest": closest,
                        "time": page.eval_on_selector("#job-video", "v => v.currentTime")}

            seeks = [seek(s) for s in (0.5, 1.5, 3.0)]
            for s in seeks:  # the video is where the view says
                assert abs(s["time"] * walk.fps - 0.5 - s["frame"]) < 0.05, s
            # Monotonic along the path: each seek farther from the first, each step the same way.
            a, b, c = (s["at"] for s in seeks)
            assert 0 < np.linalg.norm(b - a) < np.linalg.norm(c - a), (a, b, c)
            assert np.dot(b - a, c - b) > 0, (a, b, c)
            # Straight-line distances, the view's and the truth's (on the walk's 6 m arc the path is 0.7 % longer).
            shown = np.linalg.norm(c - a)
            truth = walk.world[:, 0, [0, 2]]
            walked = np.linalg.norm(truth[seeks[-1]["frame"]] - truth[seeks[0]["frame"]])
            assert shown == pytest.approx(walked, rel=0.25), (shown, walked)
            assert any(s["contacts"] > 0 for s in seeks), "a planted foot is shown"
            assert _painted_pixels(page, f"{motion} canvas") > 200
            page.locator("#job-player").screenshot(path=str(artifacts / "ui-motion-walk.png"))


def test_the_angle_chart_marks_the_form_judges_repetitions(browser, starts_servers, tmp_path, artifacts):
    """A track judged by the form judge (examples/form_judge, run here on a synthetic squat track): the
    job page's angle chart bands each repetition, says the one under the cursor, and offers the CSV."""
    import numpy as np

    sys.path.insert(0, str(REPO / "examples" / "form_judge"))
    import synthetic_exercise

    from posegraph.frame import TrackDocument, TrackFrame
    from posegraph.motion.root import project
    from posegraph.stages.user import load_user_stage

    squat = synthetic_exercise.squat([(1.2, 1.0, 1.0), (0.5, 0.6, 0.55), (1.4, 1.0, 1.0)], [0.6] * 4)
    roots = np.tile([0.0, 0.1, 3.0], (len(squat.keypoints3d), 1))
    uv = project(squat.keypoints3d + roots[:, None], 900.0, (480, 360))
    coco = np.zeros((len(uv), 17, 3))  # COCO joints where coco_to_h36m finds them (hips, knees, ...)
    for c, h in zip((11, 12, 13, 14, 15, 16, 5, 6, 7, 8, 9, 10, 0, 1, 2), (4, 1, 5, 2, 6, 3, 11, 14, 12, 15, 13, 16, 9, 10, 10)):
        coco[:, c, :2], coco[:, c, 2] = uv[:, h], 1.0
    track = TrackDocument(track_id=1, width=960, height=720, fps=squat.fps, frames=[
        TrackFrame(frame_index=i, bbox=[0, 0, 10, 10], keypoints2d=coco[i].tolist(), keypoints3d=k.tolist())
        for i, k in enumerate(squat.keypoints3d)])
    (judged,) = load_user_stage(REPO / "examples" / "form_judge").run([track])
    assert len(judged.reps) == 3 and [r["ok"] for r in judged.reps] == [True, False, True]
    results, _ = _stored_track_job(tmp_path, "squat", coco, squat.keypoints3d, roots, fps=squat.fps,
                                   size=(960, 720), focal_px=900.0,
                                   results={"exercise": judged.exercise, "reps": judged.reps})
    data = tmp_path / "ui"
    data.mkdir()
    with _posegraph_ui(data, "--graph", "http://127.0.0.1:9", "--results", results,
                       env={"POSEGRAPH_UI_PASSWORD": PASSWORD}) as running:
        csv_text = httpx.get(f"{running['url']}/api/jobs/squat/reps.csv", auth=AUTH).text
        assert csv_text.splitlines()[0].startswith("track_id,exercise,index,start_frame") and len(
            csv_text.splitlines()) == 4
        with _ui_page(browser, height=1100) as page:
            page.goto(f"{running['url']}/#/jobs/squat")
            page.wait_for_selector("#job-angles[data-reps='3']", timeout=60_000)
            assert page.get_attribute("#job-angles", "data-reps-marked") == "3"
            assert page.locator("#download-list a", has_text="Repetitions").count() == 1
            second = judged.reps[1]
            at = (second["bottom_frame"] + 0.5) / squat.fps
            page.eval_on_selector("#job-video", f"v => {{ v.pause(); v.currentTime = {at}; }}")
            page.wait_for_function("document.querySelector('#job-reps').textContent.startsWith('rep 2:')",
                                   timeout=30_000)
            note = page.text_content("#job-reps")
            assert "go deeper" in note and "control the descent" in note, note
            page.locator("#job-angles-card").screenshot(path=str(artifacts / "ui-reps.png"))


def test_a_video_that_cannot_be_decoded_gets_a_message_and_no_job(page, ui, clip_path, tmp_path, artifacts):
    truncated = tmp_path / "broken.mp4"
    truncated.write_bytes(clip_path.read_bytes()[:1500])  # looks like MP4, decodes nothing
    before = len(_jobs(ui))
    assert "broken.mp4" in _refused_upload(page, "video", truncated, "**/api/jobs", 400)
    assert len(_jobs(ui)) == before
    # A file that is too large is stopped in the page before it is sent.
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\x00" * ((MAX_UPLOAD_MB + 1) * 1_000_000))
    page.set_input_files("#video-file", str(big))
    page.click("#video-form button")
    page.wait_for_function("document.querySelector('#banner').textContent.includes('the limit is 5 MB')")
    page.screenshot(path=str(artifacts / "ui-bad-video.png"))


# ---- cluster mode: a PoseJob through the Kubernetes API ---------------------------------------------

# ---- the live view: the camera over a WebSocket ---------------------------------------------------------

def _live_url(ui, query: str = "") -> str:
    return ui["url"].replace("http://", "ws://") + "/api/live" + query


def _live_connect(ui, query: str = "?detect_every=2", auth: bool = True):
    import base64

    from websockets.sync.client import connect

    headers = {"Authorization": "Basic " + base64.b64encode(f"{AUTH[0]}:{PASSWORD}".encode()).decode()} if auth else {}
    return connect(_live_url(ui, query), additional_headers=headers, open_timeout=30, max_size=None)


def _jpeg(pixels) -> bytes:
    import cv2

    return cv2.imencode(".jpg", pixels)[1].tobytes()


def test_live_socket_answers_frames_with_2d_and_3d_and_bad_frames_with_a_message(ui, clip_frames):
    with _live_connect(ui) as ws:
        hello = json.loads(ws.recv(timeout=60))
        assert hello == {"ready": [], "detect_every": 2, "lift_delay": 0}
        answers = []
        for pixels in clip_frames[:6]:
            ws.send(_jpeg(pixels))
            answers.append(json.loads(ws.recv(timeout=120)))
        assert [a["received"] for a in answers] == list(range(6))
        ready = [f for a in answers for f in a["ready"]]
        assert [f["i"] for f in ready] == list(range(6)), "look-ahead 0: each frame comes back at once"
        assert [f["detected"] for f in ready] == [True, False, True, False, True, False]
        persons = [p for f in ready for p in f["p"]]
        assert persons and all(len(p["k2"]) == 17 and len(p["k3"]) == 17 and p["track"] is not None for p in persons)
        assert all(f["random_weights"] and {"pose2d", "lift3d"} <= set(f["ms"]) for f in ready if f["p"])
        # bad input: a message, the socket stays open and goes on
        ws.send(b"not an image")
        bad = json.loads(ws.recv(timeout=60))
        assert bad["received"] == 6 and "not a decodable image" in bad["error"] and bad["ready"] == []
        ws.send("a text message")
        assert "binary message" in json.loads(ws.recv(timeout=60))["error"]
        ws.send(b"\xff" * 2_000_001)
        assert "limit is 2 MB" in json.loads(ws.recv(timeout=60))["error"]
        ws.send(_jpeg(clip_frames[6]))
        after = json.loads(ws.recv(timeout=120))
        assert after["received"] == 8 and [f["i"] for f in after["ready"]] == [8]


def test_live_socket_is_guarded_and_limited(ui):
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    with pytest.raises(InvalidStatus) as refused:
        _live_connect(ui, auth=False)
    assert refused.value.response.status_code == 403
    with _live_connect(ui, "?detect_every=0") as ws:
        assert "between 1 and 100" in json.loads(ws.recv(timeout=30))["error"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1008
    with contextlib.ExitStack() as stack:
        for _ in range(4):
            ws = stack.enter_context(_live_connect(ui))
            assert "detect_every" in json.loads(ws.recv(timeout=60))
        with _live_connect(ui) as fifth:
            assert "4 live views are open already" in json.loads(fifth.recv(timeout=30))["error"]
            with pytest.raises(ConnectionClosed) as closed:
                fifth.recv(timeout=30)
            assert closed.value.rcvd.code == 1013


def _y4m(path: Path, frames, fps: int = 30) -> Path:
    """Frames as a YUV4MPEG2 file, what Chromium's fake camera plays (in a loop)."""
    import cv2

    height, width = frames[0].shape[:2]
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for pixels in frames:
            out.write(b"FRAME\n" + cv2.cvtColor(pixels, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


@pytest.fixture(scope="module")
def camera_browser(playwright, tmp_path_factory, clip_frames):
    """Chromium whose camera is the clip (--use-file-for-fake-video-capture), allowed without asking."""
    clip = _y4m(tmp_path_factory.mktemp("camera") / "camera.y4m", clip_frames)
    instance = playwright.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--use-angle=swiftshader", "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={clip}"])
    yield instance
    instance.close()


def test_live_view_follows_the_camera_in_2d_and_3d(camera_browser, ui, artifacts):
    with _ui_page(camera_browser, height=900) as page:
        page.goto(ui["url"] + "/#/live")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        page.fill("#live-detect-every", "3")
        page.click("#live-start")
        page.wait_for_function("Number(document.querySelector('#live-stats').dataset.frames || 0) >= 8",
                               timeout=180_000)
        stats = page.eval_on_selector("#live-stats", "e => ({...e.dataset, text: e.textContent})")
        assert float(stats["fps"]) > 0 and float(stats["p95"]) > 0, stats
        assert "frames/s" in stats["text"] and "latency" in stats["text"]
        # the skeleton over the video, in the frame's own pixels
        page.wait_for_selector("#live-canvas[data-persons]")
        assert page.eval_on_selector("#live-canvas", "c => [c.width, c.height]") == [640, 480]
        assert int(page.get_attribute("#live-canvas", "data-persons")) >= 1
        assert _coloured_pixels(page, "#live-canvas") > 200
        assert page.eval_on_selector("#live-video", "v => v.videoWidth") == 640
        # the 3D view follows
        assert int(page.get_attribute("#live-3d", "data-persons")) >= 1
        assert _painted_pixels(page, "#live-3d canvas") > 200
        rendered = int(page.get_attribute("#live-3d", "data-rendered"))
        page.wait_for_function(f"Number(document.querySelector('#live-3d').dataset.rendered) > {rendered + 2}",
                               timeout=60_000)
        assert "RANDOM" in page.text_content("#banner")
        page.screenshot(path=str(artifacts / "ui-live.png"), full_page=True)
        page.click("#live-stop")
        page.wait_for_function("!document.querySelector('#live-start').disabled")


def test_cluster_mode_uploads_to_s3_and_creates_a_posejob(tmp_path, s3_env, clip_path):
    import boto3
    from kmock_cluster import KMockCluster
    from starlette.testclient import TestClient

    from posegraph.ui.app import UISettings, create_app
    from posegraph.ui.launchers import KubernetesLauncher

    cluster = KMockCluster(tmp_path / "kmock")
    saved = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    try:
        s3 = boto3.client("s3")
        for bucket in ("ui-videos", "ui-outputs"):
            s3.create_bucket(Bucket=bucket)
        launcher = KubernetesLauncher(namespace="poses", pipeline="demo", upload_prefix="s3://ui-videos/uploads/",
                                      output_prefix="s3://ui-outputs/", results_secret="posegraph-results")
        settings = UISettings(graph="http://demo.poses.svc.cluster.local", results=f"sqlite:///{tmp_path / 'r.db'}",
                              launcher=launcher, data_dir=tmp_path / "data")
        with TestClient(create_app(settings)) as client:
            response = client.post("/api/jobs", files={"file": ("walk.mp4", clip_path.read_bytes())},
                                   data={"stride": "2", "detect_every": "0"})
            assert response.status_code == 400 and "detect_every" in response.json()["error"]
            response = client.post("/api/jobs", files={"file": ("walk.mp4", clip_path.read_bytes())},
                                   data={"stride": "2", "detect_every": "5"})
            assert response.status_code == 201, response.text
            job_id = response.json()["job_id"]
            name = job_id.removeprefix("poses-")
            assert job_id == f"poses-{name}"  # the id the operator gives the runner (--job-id ns-name)
            import kubernetes

            kubernetes.config.load_kube_config(config_file=str(cluster.kubeconfig))
            api = kubernetes.client.CustomObjectsApi()
            posejob = api.get_namespaced_custom_object("posegraph.io", "v1alpha1", "poses", "posejobs", name)
            spec = posejob["spec"]
            assert spec["video"] == f"s3://ui-videos/uploads/{name}/walk.mp4"
            assert spec["pipelineRef"] == {"name": "demo"} and spec["options"]["stride"] == 2
            assert spec["options"]["detectEvery"] == 5
            assert spec["output"]["prefix"] == f"s3://ui-outputs/{name}/"
            assert spec["results"]["secretRef"]["name"] == "posegraph-results"
            uploaded = s3.get_object(Bucket="ui-videos", Key=f"uploads/{name}/walk.mp4")["Body"].read()
            assert uploaded == clip_path.read_bytes()
            # Listed from the store at once; the PoseJob's status explains the wait.
            posejob["metadata"].setdefault("uid", str(uuid.uuid4()))
            api.patch_namespaced_custom_object_status("posegraph.io", "v1alpha1", "poses", "posejobs", name, {
                "status": {"phase": "Pending", "message": "waiting for PosePipeline demo to be Ready"}})
            jobs = client.get("/api/jobs").json()["jobs"]
            assert [j["job_id"] for j in jobs] == [job_id] and jobs[0]["status"] == "queued"
            assert jobs[0]["launcher"]["message"] == "waiting for PosePipeline demo to be Ready"
            # The UI's validation is the same: a bad upload creates no PoseJob.
            bad = client.post("/api/jobs", files={"file": ("notes.mp4", b"hello")})
            assert bad.status_code == 415
            assert len(api.list_namespaced_custom_object("posegraph.io", "v1alpha1", "poses", "posejobs")["items"]) == 1
    finally:
        cluster.stop()
        if saved is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = saved
