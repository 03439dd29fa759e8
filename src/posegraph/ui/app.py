"""The web UI: an ASGI app (Starlette) over the graph endpoint and the results store.

Photos go through the graph and come straight back (nothing stored). Videos become jobs: the app
validates the upload, records the job as ``queued`` in the results store, and hands it to a
launcher (a local runner process, or a PoseJob in a cluster). Everything the pages show is read
back from the store, so the web process holds no state of its own.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from ..client import GraphClient, GraphError
from ..config import Profile, load_profile
from ..errors import BadInput, PosegraphError, UsageError
from ..fetchpolicy import FetchPolicy, FetchRefused
from ..frame import COCO17, H36M17, FrameDocument
from ..jobs import export
from ..jobs.rows import JobRow, TrackRow
from ..jobs.store import ResultsStore, open_store
from ..keypoints import COCO_LEFT, COCO_SKELETON, H36M_LEFT, H36M_SKELETON
from ..media.imageio import decode_image, image_ref
from ..media.video import VideoReader, sniff_container
from ..motion.blender import BlenderMissing, find_blender
from ..names import FAILED, QUEUED, RUNNING
from ..uri import fetch_to_cache, is_remote_video_uri
from .launchers import JobRequest, KubernetesLauncher, LocalLauncher
from .live import Sessions, live_socket

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


@dataclass
class UISettings:
    graph: str                                   # the graph endpoint photos go through
    results: str                                 # results store DSN (jobs are read from it)
    launcher: LocalLauncher | KubernetesLauncher
    data_dir: Path                               # uploads (local mode) and temporary files
    max_upload_bytes: int = 200 * 1024 * 1024
    password: str | None = None                  # HTTP Basic auth (user "posegraph"); None: off
    graph_token: str | None = None
    fetch_policy: FetchPolicy = field(default_factory=FetchPolicy.served)  # which video URIs a user may name
    profile: Profile = field(default_factory=lambda: load_profile("cpu"))  # the live view's tracking and lifting


@dataclass
class UIState:
    """What the endpoints read (``request.app.state.ui``): built once by create_app, so the
    endpoints can live at module level instead of as closures over the factory's locals."""
    store: ResultsStore
    launcher: LocalLauncher | KubernetesLauncher
    graph: str                                   # GraphClient endpoint and token, for photos
    graph_token: str | None
    uploads: Path                                # uploaded videos, one folder per job (local mode)
    tmp: Path                                    # uploads spooled here while they are checked
    max_upload_bytes: int
    fetch_policy: FetchPolicy
    profile: Profile                             # the live view's tracking, lift3d model and look-ahead
    live_sessions: Sessions                      # live sockets open now


def _ui(request: Request) -> UIState:
    return request.app.state.ui


class ClientError(Exception):
    """An answer for the user: HTTP status + one readable line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _in_thread(fn, *args, **kwargs):
    return await run_in_threadpool(fn, *args, **kwargs)


# ---- auth -------------------------------------------------------------------------------------------

class BasicAuth:
    """HTTP Basic auth on everything but /healthz, the live view's WebSocket included. The browser
    asks once and remembers (and sends the same credentials with the WebSocket's handshake)."""

    def __init__(self, app: ASGIApp, password: str | None) -> None:
        self.app, self.password = app, password

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.password or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        ok = False
        if header.lower().startswith("basic "):
            try:
                user, _, given = base64.b64decode(header[6:]).decode("utf-8").partition(":")
                # As bytes: compare_digest raises TypeError on non-ASCII str, so "Basic " + base64("é:x")
                # was a 500 (tests/test_hostile.py).
                ok = (secrets.compare_digest(user.encode(), b"posegraph")
                      and secrets.compare_digest(given.encode(), self.password.encode()))
            except (ValueError, UnicodeDecodeError):
                ok = False
        if ok:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # closed before it is accepted: the handshake gets a 403
            await send({"type": "websocket.close", "code": 1008, "reason": "sign in to the posegraph UI first"})
            return
        response = PlainTextResponse("posegraph: sign in as user 'posegraph' with the UI password",
                                     status_code=401, headers={"WWW-Authenticate": 'Basic realm="posegraph"'})
        await response(scope, receive, send)


# ---- uploads ----------------------------------------------------------------------------------------

async def _read_upload(request: Request) -> tuple[dict[str, str], Path | None, str]:
    """The multipart form: (fields, uploaded file spooled to disk or None, its original name).
    Oversized bodies are refused before they are read (Content-Length) and while they stream."""
    ui = _ui(request)
    length = request.headers.get("content-length")
    if length is None:
        raise ClientError(411, "send the upload with a Content-Length (no chunked uploads)")
    if not length.isdigit():
        raise ClientError(400, f"Content-Length {length!r} is not a byte count")
    if int(length) > ui.max_upload_bytes:
        raise ClientError(413, f"the upload is {int(length) / 1e6:.1f} MB; the limit is "
                               f"{ui.max_upload_bytes / 1e6:.0f} MB")
    try:
        form = await request.form(max_files=1, max_fields=10)
    except Exception as exc:  # noqa: BLE001 - a malformed multipart body
        raise ClientError(400, f"could not read the upload: {exc}") from None
    fields, path, name = {}, None, ""
    for key, value in form.multi_items():
        if isinstance(value, str):
            fields[key] = value.strip()
            continue
        name = Path(value.filename or "upload").name
        tmp = tempfile.NamedTemporaryFile(dir=ui.tmp, delete=False, suffix=Path(name).suffix[:8])
        with tmp:
            shutil.copyfileobj(value.file, tmp, length=1024 * 1024)
        path = Path(tmp.name)
        await value.close()
    await form.close()
    if path is not None and path.stat().st_size == 0:
        path.unlink()
        raise ClientError(400, f"{name} is empty")
    return fields, path, name


def _int_field(fields: dict[str, str], key: str, default: int | None, low: int, high: int) -> int | None:
    raw = fields.get(key) or ""
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ClientError(400, f"{key} must be a whole number, not {raw!r}") from None
    if not low <= value <= high:
        raise ClientError(400, f"{key} must be between {low} and {high}")
    return value


# ---- pages and metadata -----------------------------------------------------------------------------

async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def meta(request: Request) -> Response:
    ui = _ui(request)
    return JSONResponse({
        "title": "posegraph", "mode": ui.launcher.mode, "max_upload_mb": ui.max_upload_bytes / 1e6,
        "coco17": COCO17, "h36m17": H36M17, "coco_skeleton": COCO_SKELETON, "h36m_skeleton": H36M_SKELETON,
        "coco_left": sorted(COCO_LEFT), "h36m_left": sorted(H36M_LEFT),
        "three": (STATIC / "vendor" / "three.module.min.js").is_file(),
    })


# ---- photo: through the graph and straight back -----------------------------------------------------

async def photo(request: Request) -> Response:
    ui = _ui(request)
    fields, path, name = await _read_upload(request)
    if path is None:
        raise ClientError(400, "choose a photo to upload (field 'file')")
    try:
        data = path.read_bytes()
    finally:
        path.unlink(missing_ok=True)
    try:
        pixels = decode_image(data, what=name)
    except BadInput as exc:
        raise ClientError(415, f"{exc}. Upload a JPEG or PNG photo.") from None
    doc = FrameDocument(width=pixels.shape[1], height=pixels.shape[0], image=image_ref(pixels))
    started = time.perf_counter()
    try:
        with GraphClient(ui.graph, token=ui.graph_token) as client:
            [result] = await _in_thread(client.infer, [doc])
    except GraphError as exc:
        status = exc.status if exc.status and 400 <= exc.status < 500 else 502
        raise ClientError(status, f"the graph answered: {exc}") from None
    out = result.to_json()
    out.pop("image", None)
    out["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 1)
    out["random_weights"] = any(r.random_weights for r in (result.stages or {}).values())
    out["filename"] = name
    return JSONResponse(out)


# ---- jobs -------------------------------------------------------------------------------------------

async def create_job(request: Request) -> Response:
    ui = _ui(request)
    fields, path, name = await _read_upload(request)
    uri = fields.get("uri") or ""
    try:
        stride = _int_field(fields, "stride", 1, 1, 100)
        max_frames = _int_field(fields, "max_frames", None, 1, 1_000_000)
        detect_every = _int_field(fields, "detect_every", None, 1, 100)
        if path is None and not uri:
            raise ClientError(400, "choose a video to upload, or give an s3:// or https:// URI")
        if path is not None and uri:
            raise ClientError(400, "give either a file or a URI, not both")
        # Compact UTC, not ISO (utc_now): the name is also a PoseJob's, lower-case letters, digits and '-'.
        job_name = time.strftime("ui-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)
        if path is not None:
            # Decode before anything is stored: a bad video never becomes a job.
            if sniff_container(path) is None:
                raise ClientError(415, f"{name} is not a video (expected MP4, MOV, MKV, WebM or AVI)")
            try:
                with VideoReader(path) as reader:
                    if next(reader.frames(max_frames=1), None) is None:
                        raise BadInput(f"{name}: no frame could be decoded")
            except BadInput as exc:  # name the user's file, not our temporary copy
                raise ClientError(400, str(exc).replace(path.name, name)) from None
            video = ui.uploads / job_name / (re.sub(r"[^A-Za-z0-9._-]", "_", name) or "video")
            video.parent.mkdir(parents=True)
            shutil.move(path, video)
            path = None
            video_ref = str(video)
        else:
            if not is_remote_video_uri(uri):
                raise ClientError(400, f"{uri!r}: give an s3://bucket/key or https:// URI")
            try:  # before the UI, a runner or a pod reads anything from it
                ui.fetch_policy.check(uri, what="video", instead="Upload the file instead")
            except FetchRefused as exc:
                raise ClientError(403, str(exc)) from None
            video_ref = uri
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
    launcher, store = ui.launcher, ui.store
    job = JobRequest(job_id=job_name, video=video_ref, stride=stride, max_frames=max_frames,
                     detect_every=detect_every, filename=name)
    job_id = launcher.store_job_id(job_name)
    params = {"stride": stride, "max_frames": max_frames, "detect_every": detect_every, "source": "ui", "filename": name,
              "output": launcher.output_of(job_name)}
    try:
        await _in_thread(store.begin_job, job_id, launcher.video_uri(job), params)
        await _in_thread(launcher.start, job)
    except Exception as exc:  # noqa: BLE001 - the launcher failed: say so, keep the record
        log.exception("could not start job %s", job_id)
        await _in_thread(store.update_job, job_id, status=FAILED, error=f"could not start: {exc}")
        raise ClientError(502, f"could not start the job: {exc}") from None
    return JSONResponse({"job_id": job_id}, status_code=201)


def _job_json(launcher: LocalLauncher | KubernetesLauncher, job: JobRow) -> dict[str, Any]:
    out = {k: getattr(job, k) for k in ("job_id", "video_uri", "status", "width", "height", "fps", "frames_total",
                                    "frames_done", "frames_failed", "persons", "tracks", "outputs",
                                    "random_weights", "error", "note", "created_at", "started_at",
                                    "finished_at", "updated_at", "params")}
    out["video_fps"] = (job.fps / job.stride) if job.fps else None
    if job.status in (QUEUED, RUNNING):
        out["launcher"] = launcher.describe(launcher.job_name(job.job_id))
        if out["launcher"].get("runner_exit_code") not in (None, 0) and job.status == QUEUED:
            out["error"] = f"the runner exited with code {out['launcher']['runner_exit_code']} before starting"
    return out


async def list_jobs(request: Request) -> Response:
    ui = _ui(request)
    jobs = await _in_thread(ui.store.list_jobs, 200)
    return JSONResponse({"jobs": [_job_json(ui.launcher, j) for j in jobs]})


async def _get_job(request: Request) -> JobRow:
    job_id = request.path_params["job_id"]
    job = await _in_thread(_ui(request).store.job, job_id)
    if job is None:
        raise ClientError(404, f"no job {job_id}")
    return job


async def get_job(request: Request) -> Response:
    ui = _ui(request)
    job = await _get_job(request)
    out = _job_json(ui.launcher, job)
    out["track_list"] = [t.to_json() for t in await _in_thread(ui.store.tracks, job.job_id)]
    return JSONResponse(out)


async def frames(request: Request) -> Response:
    """Every stored frame, compact: what the 3D view needs to follow the video."""
    job = await _get_job(request)
    rows = await _in_thread(_ui(request).store.frame_results, job.job_id, 0, 2**31 - 1)
    compact = [{"i": r.frame_index, "t": r.timestamp_s, "ok": r.ok,
                "p": [{"track": p.track_id, "k3": p.keypoints3d, "k2": p.keypoints2d, "box": p.bbox}
                      for p in r.persons]}
               for r in sorted(rows.values(), key=lambda r: r.frame_index)]
    return JSONResponse({"job_id": job.job_id, "frames": compact})


async def frames_jsonl(request: Request) -> Response:
    job = await _get_job(request)
    return StreamingResponse(export.frames_jsonl(_ui(request).store, job), media_type="application/jsonl",
                             headers={"Content-Disposition": f'attachment; filename="{job.job_id}-frames.jsonl"'})


async def _track(request: Request) -> tuple[JobRow, TrackRow]:
    job = await _get_job(request)
    track_id = int(request.path_params["track_id"])
    tracks = await _in_thread(_ui(request).store.tracks, job.job_id)
    track = next((t for t in tracks if t.track_id == track_id), None)
    if track is None:
        raise ClientError(404, f"job {job.job_id} has no track {track_id}")
    return job, track


async def track_csv(request: Request) -> Response:
    job, track = await _track(request)
    rows = await _in_thread(_ui(request).store.track_rows, job.job_id, track.track_id)
    return Response(export.track_csv(track.track_id, rows), media_type="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{job.job_id}-track{track.track_id}.csv"'})


async def track_angles(request: Request) -> Response:
    """A track's joint angles per frame (degrees), for the page's plot beside the player, with the
    repetitions a user's track stage found in it (the form judge's ``reps``), which the plot marks."""
    job, track = await _track(request)
    angles = await _in_thread(export.track_angles, _ui(request).store, job.job_id, track)
    if angles is None:
        raise ClientError(409, f"track {track.track_id} has no 3D keypoints yet: no angles")
    results = track.results or {}
    reps = [r for r in results.get("reps") or [] if isinstance(r, dict)]
    return JSONResponse({"track_id": angles.track_id, "frames": angles.frame_index, "angles": angles.angles,
                         "exercise": results.get("exercise"), "reps": reps})


async def reps_csv(request: Request) -> Response:
    """Every track's repetitions (export.reps_csv, what `posegraph export --format reps` writes)."""
    store = _ui(request).store
    job = await _get_job(request)
    _finished(store, job)
    text = export.reps_csv(await _in_thread(store.tracks, job.job_id))
    if text is None:
        raise ClientError(404, f"job {job.job_id} has no repetitions (no track stage wrote 'reps')")
    return Response(text, media_type="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{job.job_id}-reps.csv"'})


def _finished(store: ResultsStore, job: JobRow) -> None:
    try:
        export.finished_job(store, job.job_id)
    except UsageError as exc:
        raise ClientError(409, str(exc)) from None


async def angles_csv(request: Request) -> Response:
    store = _ui(request).store
    job = await _get_job(request)
    _finished(store, job)
    tracks = [a for t in await _in_thread(store.tracks, job.job_id)
              if (a := await _in_thread(export.track_angles, store, job.job_id, t)) is not None]
    return Response(export.angles_csv(tracks), media_type="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{job.job_id}-angles.csv"'})


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
_MOTION_QUERY = ("lock_feet", "in_place", "rig")


def _motion_options(request: Request) -> export.MotionOptions:
    """``?lock_feet=1&in_place=1&rig=mixamo`` as MotionOptions; anything else a 400, one line."""
    query = request.query_params
    unknown = sorted(set(query) - set(_MOTION_QUERY))
    if unknown:
        raise ClientError(400, f"unknown option {unknown[0]!r}: the options are {', '.join(_MOTION_QUERY)}")

    def flag(key: str) -> bool:
        raw = query.get(key, "").strip().lower()
        if raw not in _TRUE + _FALSE:
            raise ClientError(400, f"{key} must be 1 or 0, not {query.get(key)!r}")
        return raw in _TRUE

    lock_feet, in_place = flag("lock_feet"), flag("in_place")
    try:
        return export.MotionOptions(root_motion=not in_place, lock_feet=lock_feet,
                                    rig=query.get("rig", "").strip() or "posegraph")
    except UsageError as exc:  # an unknown rig
        raise ClientError(400, str(exc)) from None


async def _track_motion(request: Request, fmt: str, media_type: str) -> Response:
    """One track's motion as BVH, GLB or FBX (export.track_file, the bytes `posegraph export` writes)."""
    store = _ui(request).store
    options = _motion_options(request)
    job, track = await _track(request)
    _finished(store, job)
    if not track.lifted:
        raise ClientError(409, f"track {track.track_id} has no 3D keypoints ({track.error or 'not lifted'}): "
                               f"no {fmt.upper()}")
    if fmt == "fbx":
        # Without Blender: 501 Not Implemented, not 409. 409 says the *resource* is not in a state to
        # answer (a track too short, a job still running: the user can wait or pick another); here no
        # track ever gets an FBX from this server until its operator installs Blender, which is what
        # 501 means ("the server does not support the functionality required"). Checked first: a
        # missing Blender is answered at once, before any track is solved.
        try:
            await _in_thread(find_blender)
        except BlenderMissing as exc:
            raise ClientError(501, str(exc)) from None

    def write() -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"t.{fmt}"
            export.track_file(store, job, track.track_id, path, fmt, options)
            return path.read_bytes()

    try:
        body = await _in_thread(write)
    except BlenderMissing as exc:
        raise ClientError(501, str(exc)) from None
    except UsageError as exc:  # too short to solve rotations, no root path, Blender failed
        raise ClientError(409, str(exc)) from None
    return Response(body, media_type=media_type, headers={
        "Content-Disposition": f'attachment; filename="{job.job_id}-track{track.track_id}.{fmt}"'})


async def track_bvh(request: Request) -> Response:
    return await _track_motion(request, "bvh", "application/octet-stream")


async def track_glb(request: Request) -> Response:
    return await _track_motion(request, "glb", "model/gltf-binary")


async def track_fbx(request: Request) -> Response:
    return await _track_motion(request, "fbx", "application/octet-stream")


async def video(request: Request) -> Response:
    job = await _get_job(request)
    uri = (job.outputs or {}).get("overlay")
    if not uri:
        raise ClientError(404, f"job {job.job_id} has no rendered video (yet)")
    try:
        path = await _in_thread(fetch_to_cache, uri, progress=False)
    except PosegraphError as exc:
        raise ClientError(502, f"cannot read {uri}: {exc}") from None
    media = "video/webm" if path.suffix == ".webm" else "video/mp4"
    return FileResponse(path, media_type=media)  # answers Range requests: the player can seek


async def client_error(request: Request, exc: ClientError) -> Response:
    return JSONResponse({"error": exc.message}, status_code=exc.status)


ROUTES = [
    Route("/", index),
    Route("/healthz", healthz),
    Route("/api/meta", meta),
    Route("/api/photo", photo, methods=["POST"]),
    Route("/api/jobs", list_jobs, methods=["GET"]),
    Route("/api/jobs", create_job, methods=["POST"]),
    Route("/api/jobs/{job_id}", get_job),
    Route("/api/jobs/{job_id}/frames", frames),
    Route("/api/jobs/{job_id}/frames.jsonl", frames_jsonl),
    Route("/api/jobs/{job_id}/tracks/{track_id:int}.csv", track_csv),
    Route("/api/jobs/{job_id}/tracks/{track_id:int}.bvh", track_bvh),
    Route("/api/jobs/{job_id}/tracks/{track_id:int}.glb", track_glb),
    Route("/api/jobs/{job_id}/tracks/{track_id:int}.fbx", track_fbx),
    Route("/api/jobs/{job_id}/tracks/{track_id:int}/angles", track_angles),
    Route("/api/jobs/{job_id}/angles.csv", angles_csv),
    Route("/api/jobs/{job_id}/reps.csv", reps_csv),
    Route("/api/jobs/{job_id}/video", video),
    WebSocketRoute("/api/live", live_socket),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]


# ---- the app ----------------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def _lifespan(app: Starlette):
    yield
    app.state.ui.launcher.stop()
    app.state.ui.store.close()


def create_app(settings: UISettings) -> Starlette:
    (settings.data_dir / "tmp").mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "uploads").mkdir(parents=True, exist_ok=True)
    store = open_store(settings.results)
    store.migrate()
    state = UIState(store=store, launcher=settings.launcher, graph=settings.graph, graph_token=settings.graph_token,
                    uploads=settings.data_dir / "uploads", tmp=settings.data_dir / "tmp",
                    max_upload_bytes=settings.max_upload_bytes, fetch_policy=settings.fetch_policy,
                    profile=settings.profile, live_sessions=Sessions())

    app = Starlette(routes=ROUTES, exception_handlers={ClientError: client_error},
                    middleware=[Middleware(BasicAuth, password=settings.password)], lifespan=_lifespan,
                    # The body limit also holds while an upload streams in (no Content-Length trust).
                    max_body_size=settings.max_upload_bytes + 1024 * 1024)
    app.state.ui = state
    return app
