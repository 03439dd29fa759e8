"""A finished job's results as files: BVH per track, keypoints CSV per track, joint angles (CSV, and
a plot per track of two frames or more), frames as JSON Lines. One module for `posegraph export`,
the job runner's outputs and the web UI's downloads, so all three give the same bytes.

Everything is written into a temporary folder beside the destination and moved in only when the
whole export succeeded: an error never leaves half a set of files.
"""

from __future__ import annotations

import csv
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
from ..motion.bvh import TrackTooShort, export_track_bvh
from .rows import JobRow, TrackPoint, TrackRow
from .store import stored_frame_document

FORMATS = ("bvh", "csv", "angles", "jsonl")
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
    """One person's frames: box, COCO-17 2D keypoints (px, score), Human3.6M-17 3D keypoints (m)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["frame_index", "timestamp_s", "track_id", "person_index", "score", "x1", "y1", "x2", "y2",
                     *[f"{n}_{c}" for n in COCO17 for c in ("x", "y", "score")],
                     *[f"{n}_{c}_m" for n in H36M17 for c in ("x", "y", "z")]])
    for r in rows:
        k2 = r.keypoints2d or [[None] * 3] * 17
        k3 = r.keypoints3d or [[None] * 3] * 17
        writer.writerow([r.frame_index, r.timestamp_s, track_id, r.person_index, _num(r.score), *map(_num, r.bbox),
                         *[_num(v) for p in k2 for v in p], *[_num(v) for p in k3 for v in p]])
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


def track_bvh(store, job: JobRow, track_id: int, path: Path) -> None:
    """One track as BVH; UsageError (one line) when it is too short to solve rotations."""

    rows = [r for r in store.track_rows(job.job_id, track_id) if r.keypoints3d is not None]
    try:
        export_track_bvh(np.asarray([r.keypoints3d for r in rows], np.float64).reshape(-1, 17, 3),
                         frame_rate(job), path)
    except TrackTooShort as exc:
        raise UsageError(f"track {track_id}: {exc}") from None


@dataclass
class Exported:
    files: list[Path]
    skipped: list[str]  # tracks left out, each with why


def export_job(store, job_id: str, fmt: str, out_dir: Path, *, finishing: bool = False) -> Exported:
    """Write one format of a finished job into out_dir (created): see FORMATS. ``finishing``: the
    job runner writing its own outputs, before it marks the job finished."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    job = store.job(job_id) if finishing else finished_job(store, job_id)
    random_weights = job.random_weights
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{job_id}-{fmt}-", dir=out_dir))
    skipped: list[str] = []
    try:
        tracks = store.tracks(job_id)
        if fmt == "jsonl":
            with open(work / "frames.jsonl", "w") as f:
                f.writelines(frames_jsonl(store, job))
        elif fmt == "csv":
            for t in tracks:
                rows = store.track_rows(job_id, t.track_id)
                (work / f"track-{t.track_id}.csv").write_text(track_csv(t.track_id, rows))
        elif fmt == "angles":
            all_angles = []
            for t in tracks:
                angles = track_angles(store, job_id, t)
                if angles is None:
                    skipped.append(f"track {t.track_id}: no 3D keypoints ({t.error or 'not lifted'})")
                    continue
                all_angles.append(angles)
                if len(angles.frame_index) < 2:  # one point is no curve (random weights make hundreds)
                    continue
                plot_track_angles(angles.frame_index, {k: np.asarray(v, np.float64) for k, v in angles.angles.items()},
                                  work / f"track-{t.track_id}-angles.png",
                                  title=f"job {job_id}, track {t.track_id}: joint angles",
                                  random_weights=random_weights)
            (work / "angles.csv").write_text(angles_csv(all_angles))
        else:  # bvh
            for t in tracks:
                try:
                    track_bvh(store, job, t.track_id, work / f"track-{t.track_id}.bvh")
                except UsageError as exc:
                    skipped.append(str(exc))
            if not any(work.iterdir()):
                raise UsageError(f"job {job_id} has no track long enough for BVH (2 frames with 3D keypoints): "
                                 + "; ".join(skipped[:3]))
        files = []
        for path in sorted(work.iterdir()):
            target = out_dir / path.name
            os.replace(path, target)
            files.append(target)
        return Exported(files, skipped)
    finally:
        shutil.rmtree(work, ignore_errors=True)
