"""A finished job's results as files: per track BVH, glTF (GLB) and FBX (through Blender), keypoints
CSV per track, joint angles (CSV, and a plot per track of two frames or more), frames as JSON Lines. One module for `posegraph export`,
the job runner's outputs and the web UI's downloads, so all three give the same bytes.

Everything is written into a temporary folder beside the destination and moved in only when the
whole export succeeded: an error never leaves half a set of files.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import UsageError
from ..keypoints import COCO17, H36M17
from ..motion.angles import ANGLES, joint_angles, plot_track_angles, stored_angle
from ..motion import world
from ..motion.blender import BlenderMissing, find_blender, glb_to_fbx
from ..motion.bvh import Solved, TrackTooShort, write_bvh
from ..motion.gltf import write_glb
from ..motion.rigs import joint_names
from ..motion.root import default_focal_px, focal_from_fov
from .rows import JobRow, TrackPoint, TrackRow
from .store import stored_frame_document

FORMATS = ("bvh", "glb", "fbx", "csv", "angles", "jsonl", "reps")
MOTION_FORMATS = ("bvh", "glb", "fbx")  # one file per track, of the track's motion (MotionOptions)
FINISHED = ("succeeded", "partial")


def finished_job(store, job_id: str) -> JobRow:
    """The job's row, or one readable line saying why it cannot be exported yet."""
    job = store.job(job_id)
    if job is None:
        raise UsageError(f"no job {job_id!r} in this results store (check --results and --job-id)")
    if job.status not in FINISHED:
        raise UsageError(f"job {job_id} is {job.status}: export it once it has finished (succeeded or partial)")
    return job


def frame_rate(job: JobRow) -> float:
    """Frames per second of the processed frames (every stride-th frame of the video)."""
    return float(job.fps or 30.0) / job.stride


def _num(value: Any) -> Any:
    return "" if value is None else (round(value, 6) if isinstance(value, float) else value)


def track_csv(track_id: int, rows: list[TrackPoint]) -> str:
    """One person's frames: box, COCO-17 2D keypoints (px, score), Human3.6M-17 3D keypoints (m,
    root-relative), and where the pelvis is (m, camera space: root3d)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["frame_index", "timestamp_s", "track_id", "person_index", "score", "x1", "y1", "x2", "y2",
                     *[f"{n}_{c}" for n in COCO17 for c in ("x", "y", "score")],
                     *[f"{n}_{c}_m" for n in H36M17 for c in ("x", "y", "z")],
                     "pelvis_camera_x_m", "pelvis_camera_y_m", "pelvis_camera_z_m"])
    for r in rows:
        k2 = r.keypoints2d or [[None] * 3] * 17
        k3 = r.keypoints3d or [[None] * 3] * 17
        writer.writerow([r.frame_index, r.timestamp_s, track_id, r.person_index, _num(r.score), *map(_num, r.bbox),
                         *[_num(v) for p in k2 for v in p], *[_num(v) for p in k3 for v in p],
                         *map(_num, r.root3d or [None] * 3)])
    return buffer.getvalue()


@dataclass
class TrackAngles:
    track_id: int
    frame_index: list[int]
    timestamp_s: list[float | None]
    angles: dict[str, list[float | None]] = field(default_factory=dict)


def track_angles(store, job_id: str, track: TrackRow) -> TrackAngles | None:
    """A lifted track's angles from the store (computed from its 3D keypoints for jobs stored
    before the store had them); None for a track that has no 3D."""
    rows = [r for r in store.track_rows(job_id, track.track_id) if r.keypoints3d is not None]
    if not rows:
        return None
    frames, angles = store.joint_angles(job_id, track.track_id)
    if frames != [r.frame_index for r in rows]:
        computed = joint_angles(np.asarray([r.keypoints3d for r in rows]))
        frames = [r.frame_index for r in rows]
        angles = {k: [stored_angle(v) for v in values] for k, values in computed.items()}
    return TrackAngles(track.track_id, frames, [r.timestamp_s for r in rows], angles)


def angles_csv(tracks: list[TrackAngles]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["track_id", "frame_index", "timestamp_s", *[f"{a}_deg" for a in ANGLES]])
    for t in tracks:
        for i, frame in enumerate(t.frame_index):
            writer.writerow([t.track_id, frame, _num(t.timestamp_s[i]), *[_num(t.angles[a][i]) for a in ANGLES]])
    return buffer.getvalue()


def frames_jsonl(store, job: JobRow, chunk: int = 512) -> Iterator[str]:
    last = job.last_frame
    for start in range(0, (last if last is not None else -1) + 1, chunk):
        rows = store.frame_results(job.job_id, start, start + chunk)
        for index in sorted(rows):
            doc = stored_frame_document(rows[index], width=job.width, height=job.height, video_uri=job.video_uri)
            yield json.dumps(doc.to_json(), separators=(",", ":")) + "\n"


@dataclass(frozen=True)
class MotionOptions:
    """How a track's motion is exported (docs/motion.md): the root moving through space or in
    place, feet held during their contacts or not, and whose joint names."""

    root_motion: bool = True
    lock_feet: bool = False
    rig: str = "posegraph"

    def __post_init__(self) -> None:
        joint_names(self.rig)  # an unknown rig: UsageError, one line


def job_focal_px(job: JobRow) -> float:
    """The focal length the job ran with (its --focal-px / --fov), else the default: what places
    the persons of a job stored before lift3d wrote root3d."""
    params = job.params or {}
    if params.get("focal_px"):
        return float(params["focal_px"])
    if params.get("fov"):
        return focal_from_fov(float(params["fov"]), job.width)
    return default_focal_px(job.width, job.height)


def track_motion(store, job: JobRow, track_id: int) -> world.TrackMotion:
    """A stored track in the world (posegraph.motion.world); UsageError (one line) when it has too
    few frames with 3D, or no path."""
    rows = [r for r in store.track_rows(job.job_id, track_id) if r.keypoints3d is not None]
    k3 = np.asarray([r.keypoints3d for r in rows], np.float64).reshape(-1, 17, 3)
    if rows and all(r.root3d is not None for r in rows):
        root = np.asarray([r.root3d for r in rows], np.float64)
    elif rows:  # stored before version 5: fitted now, as lift3d would have
        root = world.track_root([r.keypoints2d for r in rows], k3, job.width, job.height, job_focal_px(job),
                                [r.frame_index for r in rows])
    else:
        root = np.zeros((0, 3))
    try:
        return world.track_motion(k3, root, frame_rate(job), [r.frame_index for r in rows], track=track_id)
    except (TrackTooShort, world.NoRootPath) as exc:
        raise UsageError(f"track {track_id}: {exc}") from None


def track_solved(store, job: JobRow, track_id: int, options: MotionOptions) -> tuple[world.TrackMotion, Solved]:
    motion = track_motion(store, job, track_id)
    solved = world.solve(motion, root_motion=options.root_motion, lock_feet=options.lock_feet, track=track_id)
    return motion, dataclasses.replace(solved, names=joint_names(options.rig))


def motion_extras(motion: world.TrackMotion, solved: Solved) -> dict[str, Any]:
    """What the web UI's 3D view reads beside the animation (the GLB scene's extras)."""
    return {"posegraph": {"frame_index": motion.frame_index.tolist(), "fps": motion.fps,
                          "contacts": {"left": motion.contacts[:, 0].tolist(), "right": motion.contacts[:, 1].tolist()},
                          "ground": {"fitted": motion.ground.fitted}, "joints": list(solved.names)}}


def track_file(store, job: JobRow, track_id: int, path: Path, fmt: str,
               options: MotionOptions = MotionOptions()) -> None:
    """One track's motion as ``fmt`` (MOTION_FORMATS) at ``path``; UsageError (one line) when the
    track cannot be solved, or FBX without Blender."""
    motion, solved = track_solved(store, job, track_id, options)
    if fmt == "bvh":
        write_bvh(solved, path)
        return
    name = f"{job.job_id} track {track_id}"
    if fmt == "glb":
        write_glb(solved, path, rig=options.rig, extras=motion_extras(motion, solved), name=name)
        return
    glb = path.with_name(f".{path.name}.glb")
    try:
        write_glb(solved, glb, rig=options.rig, extras=motion_extras(motion, solved), name=name)
        glb_to_fbx(glb, path)
    finally:
        glb.unlink(missing_ok=True)


def track_bvh(store, job: JobRow, track_id: int, path: Path, options: MotionOptions = MotionOptions()) -> None:
    """One track as BVH; UsageError (one line) when it is too short to solve rotations."""
    track_file(store, job, track_id, path, "bvh", options)


def reps_csv(tracks: list[TrackRow]) -> str | None:
    """Repetitions a user's track stage wrote (``reps``: a list of objects per track, as the form
    judge in examples/form_judge writes them), one row each; None when no track has any. The
    columns are the reps' keys in the order first seen; lists (feedback) are joined by "; "."""
    rows = [(t.track_id, (t.results or {}).get("exercise"), rep) for t in tracks
            for rep in (t.results or {}).get("reps") or [] if isinstance(rep, dict)]
    if not rows:
        return None
    keys = list(dict.fromkeys(k for _, _, rep in rows for k in rep))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["track_id", "exercise", *keys])
    for track_id, exercise, rep in rows:
        cells = ["; ".join(map(str, v)) if isinstance(v, list) else _num(v) for v in (rep.get(k) for k in keys)]
        writer.writerow([track_id, exercise or "", *cells])
    return buffer.getvalue()


@dataclass
class Exported:
    files: list[Path]
    skipped: list[str]  # tracks left out, each with why


def _write_angles(store, job: JobRow, tracks: list[TrackRow], work: Path, skipped: list[str]) -> None:
    all_angles = []
    for t in tracks:
        angles = track_angles(store, job.job_id, t)
        if angles is None:
            skipped.append(f"track {t.track_id}: no 3D keypoints ({t.error or 'not lifted'})")
            continue
        all_angles.append(angles)
        if len(angles.frame_index) < 2:  # one point is no curve (random weights make hundreds)
            continue
        plot_track_angles(angles.frame_index, {k: np.asarray(v, np.float64) for k, v in angles.angles.items()},
                          work / f"track-{t.track_id}-angles.png",
                          title=f"job {job.job_id}, track {t.track_id}: joint angles",
                          random_weights=job.random_weights)
    (work / "angles.csv").write_text(angles_csv(all_angles))


def _write_motion(store, job: JobRow, tracks: list[TrackRow], work: Path, skipped: list[str], fmt: str,
                  motion: MotionOptions) -> None:
    """bvh, glb, fbx: a file per track long enough."""
    for t in tracks:
        try:
            track_file(store, job, t.track_id, work / f"track-{t.track_id}.{fmt}", fmt, motion)
        except BlenderMissing:
            raise
        except UsageError as exc:
            skipped.append(str(exc))
    if not any(work.iterdir()):
        raise UsageError(f"job {job.job_id} has no track long enough for {fmt.upper()} (2 frames with 3D "
                         "keypoints): " + "; ".join(skipped[:3]))


def _write(store, job: JobRow, fmt: str, work: Path, skipped: list[str], motion: MotionOptions) -> None:
    tracks = store.tracks(job.job_id)
    if fmt == "jsonl":
        with open(work / "frames.jsonl", "w") as f:
            f.writelines(frames_jsonl(store, job))
    elif fmt == "reps":
        text = reps_csv(tracks)
        if text is None:
            raise UsageError(f"job {job.job_id} has no repetitions: a track stage that writes 'reps' (the form "
                             "judge in examples/form_judge) was not in its pipeline")
        (work / "reps.csv").write_text(text)
    elif fmt == "csv":
        for t in tracks:
            rows = store.track_rows(job.job_id, t.track_id)
            (work / f"track-{t.track_id}.csv").write_text(track_csv(t.track_id, rows))
    elif fmt == "angles":
        _write_angles(store, job, tracks, work, skipped)
    else:
        _write_motion(store, job, tracks, work, skipped, fmt, motion)


def export_job(store, job_id: str, fmt: str, out_dir: Path, *, finishing: bool = False,
               motion: MotionOptions = MotionOptions()) -> Exported:
    """Write one format of a finished job into out_dir (created): see FORMATS. ``finishing``: the
    job runner writing its own outputs, before it marks the job finished. ``motion``: how BVH,
    GLB and FBX carry the motion."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    if fmt == "fbx":
        find_blender()  # before any work: without Blender, one line naming what to install
    job = store.job(job_id) if finishing else finished_job(store, job_id)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{job_id}-{fmt}-", dir=out_dir))
    skipped: list[str] = []
    try:
        _write(store, job, fmt, work, skipped, motion)
        files = []
        for path in sorted(work.iterdir()):
            target = out_dir / path.name
            os.replace(path, target)
            files.append(target)
        return Exported(files, skipped)
    finally:
        shutil.rmtree(work, ignore_errors=True)
