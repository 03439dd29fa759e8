"""A job's outputs, rebuilt from its results store: the overlay video, the 3D plot and
frames.jsonl (render_outputs), the BVH files and joint angles under motion/ (motion_outputs), each
written to the job's output prefix (s3:// or a directory). Rebuilt from the store, never from what
a run held in memory, so an interrupted job's outputs are complete when it finishes."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ..errors import UsageError
from ..frame import FrameDocument
from ..media.render import draw_overlay, plot_3d, poses_for_plot
from ..media.video import VideoReader, open_video_writer
from ..uri import write_bytes
from .export import export_job
from .options import JobOptions
from .rows import StoredFrame
from .store import ResultsStore, stored_frame_document


def join(prefix: str, name: str) -> str:
    return prefix.rstrip("/") + "/" + name


def render_outputs(store: ResultsStore, job_id: str, o: JobOptions, video: Path, info, *,
                   random_weights: bool) -> dict[str, str]:
    """Overlay video, 3D plot and frames.jsonl, rebuilt from the store, then uploaded."""
    work = Path(tempfile.mkdtemp(prefix=f"posegraph-{job_id}-"))
    try:
        return _render(store, job_id, o, video, info, random_weights, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _render(store, job_id, o, video, info, random_weights, work: Path) -> dict[str, str]:
    overlay_path = work / f"overlay.{o.video_format}"
    writer = open_video_writer(overlay_path, info.fps / o.stride, (info.width, info.height))
    docs_for_plot: list[FrameDocument] = []
    chunk = 256
    frames_cache: dict[int, StoredFrame] = {}
    with open(work / "frames.jsonl", "w") as jsonl, VideoReader(video) as reader:
        for index, pixels in reader.frames(stride=o.stride, max_frames=o.max_frames):
            if index not in frames_cache:
                frames_cache = store.frame_results(job_id, index, index + chunk * o.stride)
            frame = frames_cache.get(index)
            if frame is None:
                continue
            doc = stored_frame_document(frame, width=info.width, height=info.height, video_uri=o.video)
            writer.write(draw_overlay(pixels, doc, random_weights=random_weights))
            jsonl.write(json.dumps(doc.to_json(), separators=(",", ":")) + "\n")
            if doc.persons:
                docs_for_plot.append(FrameDocument(frame_index=index, persons=[
                    p for p in doc.persons if p.keypoints3d is not None and p.track_id is not None]))
    writer.release()
    plot_3d(poses_for_plot(docs_for_plot, by_track=True), work / "pose3d.png",
            title=f"{Path(o.video).name}: 3D poses (job {job_id})", random_weights=random_weights)
    outputs = {}
    types = {".webm": "video/webm", ".mp4": "video/mp4", ".png": "image/png", ".jsonl": "application/jsonl"}
    for path in (overlay_path, work / "pose3d.png", work / "frames.jsonl"):
        target = join(o.output, path.name)
        write_bytes(target, path.read_bytes(), content_type=types[path.suffix])
        outputs[path.stem] = target
    return outputs


def motion_outputs(store: ResultsStore, job_id: str, output: str) -> tuple[dict[str, str], list[str]]:
    """BVH and GLB per track (root motion, posegraph's joint names), joint angles (CSV, a plot per
    track) under <output>/motion/ (docs/motion.md);
    with the notes of what could not be made (e.g. no track long enough for a BVH: the job still
    succeeds)."""
    work = Path(tempfile.mkdtemp(prefix=f"posegraph-{job_id}-motion-"))
    outputs, notes = {}, []
    types = {".bvh": "application/octet-stream", ".glb": "model/gltf-binary", ".csv": "text/csv", ".png": "image/png"}
    try:
        for fmt in ("bvh", "glb", "angles"):
            try:
                done = export_job(store, job_id, fmt, work, finishing=True)
            except UsageError as exc:
                notes.append(str(exc))
                continue
            for path in done.files:
                write_bytes(join(output, f"motion/{path.name}"), path.read_bytes(), content_type=types[path.suffix])
            outputs["angles" if fmt == "angles" else "motion"] = join(
                output, "motion/angles.csv" if fmt == "angles" else "motion/")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return outputs, notes
