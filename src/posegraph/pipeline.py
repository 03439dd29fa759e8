"""The in-process pipeline: detect → pose2d → lift3d in one process, for an image or a video.

This is the reference the served graph must equal; it is also what ``posegraph run`` uses.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .config import Profile, load_profile
from .errors import BadInput
from .frame import FrameDocument, ImageRef
from .media.imageio import decode_image
from .media.render import draw_overlay, plot_3d, poses_for_plot
from .media.video import VideoReader, VideoWriter, is_image_file
from .models.checkpoints import resolve_checkpoint
from .names import STAGES
from .stages import Stage, make_stage
from .stages.user import UserStageRunner
from .tracking import Tracker
from .uri import fetch_to_cache
from .videopass import InProcessLift, MemorySink, batch_for, in_process_frames, run_video, video_frames

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, profile: Profile | None = None, *, checkpoint_dir: Path | None = None,
                 user_stages: Sequence[UserStageRunner] = ()) -> None:
        """``user_stages``: a user's stages (posegraph.stages.user), loaded, run after the built-in
        ones in order: frame stages on every frame's document, track stages on every lifted track."""
        self.profile = profile or load_profile("cpu")
        self.checkpoint_dir = checkpoint_dir
        self.stages: dict[str, Stage] = {
            name: make_stage(name, self.profile.stage_settings(name)) for name in STAGES
        }
        self.user_stages = list(user_stages)
        self.tracks: list[dict] = []  # the last video's tracks, with what a user's track stages wrote

    def load(self) -> "Pipeline":
        p = self.profile
        for stage in self.stages.values():
            uri = resolve_checkpoint(stage.spec.name, stage.settings.checkpoint, self.checkpoint_dir)
            stage.load(uri, p.device, backend=p.backend, threads=p.threads)
        return self

    @property
    def random_weights(self) -> bool:
        return any(stage.random_weights for stage in self.stages.values())

    def detect_and_pose(self, docs: list[FrameDocument]) -> list[FrameDocument]:
        docs = self.stages["detect"].run(docs)
        return self.stages["pose2d"].run(docs)

    def image(self, pixels: np.ndarray, **fields) -> FrameDocument:
        doc = FrameDocument.from_pixels(pixels, **fields)
        self.detect_and_pose([doc])
        return self.after_lift3d(self.stages["lift3d"].run([doc]))[0]

    def after_lift3d(self, docs: list) -> list:
        """A user's stages on documents lift3d is done with (each passes the other kind through)."""
        for stage in self.user_stages:
            docs = stage.run(docs)
        return docs

    def tracker(self, state: dict | None = None) -> Tracker:
        return Tracker.for_settings(self.profile.tracking, state)

    def video(
        self,
        reader: VideoReader,
        *,
        stride: int = 1,
        max_frames: int | None = None,
        batch_frames: int = 8,
        on_frame: Callable[[FrameDocument, np.ndarray], None] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[FrameDocument]:
        """The video pass (posegraph.videopass) with this process's stages, documents in memory."""
        sink = MemorySink(on_frame=on_frame)
        lift = self.stages["lift3d"]
        # N > 1: two batches at once, one's detection beside the other's pose estimation: 1.62x
        # the frames/s of N = 1 at N = 5 with one person, 1.48x with one batch at a time (but
        # 1.09x against 1.21x with four persons; bench/detect_every.py, docs/live.md).
        every = self.profile.tracking.detect_every
        lift_s = run_video(video_frames(reader, stride=stride, max_frames=max_frames),
                           in_process_frames(self.stages, self.profile.tracking),
                           InProcessLift(lift, self.after_lift3d), sink, self.tracker(),
                           batch_frames=batch_for(every, batch_frames), in_flight=1 if every == 1 else 2,
                           progress=progress)
        sink.stamp_lift(lift.spec.name, lift.random_weights, lift_s * 1000)
        self.tracks = sink.tracks
        if self.user_stages:  # frame stages see each frame once its tracks gave it 3D
            sink.docs = [doc for start in range(0, len(sink.docs), 64)
                         for doc in self.after_lift3d(sink.docs[start:start + 64])]
        return sink.docs


@dataclass
class RunResult:
    kind: str  # image | video
    out_dir: Path
    documents: Path
    overlay: Path
    plot: Path
    frames: int = 0
    persons: int = 0
    tracks: int = 0
    seconds: float = 0.0
    random_weights: bool = False
    truncated: bool = False
    files: list[Path] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "kind": self.kind, "frames": self.frames, "persons": self.persons, "tracks": self.tracks,
            "seconds": round(self.seconds, 2), "random_weights": self.random_weights,
            "truncated": self.truncated, "documents": str(self.documents), "overlay": str(self.overlay),
            "plot": str(self.plot),
        }


def _write_jsonl(path: Path, docs: list[FrameDocument], source: str) -> None:
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "w") as f:
        for doc in docs:
            if doc.image is None:
                doc.image = ImageRef(uri=source)  # where the pixels came from; frames are not inlined
            f.write(json.dumps(doc.to_json(), separators=(",", ":")) + "\n")
    tmp.replace(path)


# Long on purpose: the one in-process path of `posegraph run`, photo and video, read top to bottom.
def run_input(
    pipeline: Pipeline,
    source: str,
    out_dir: Path,
    *,
    stride: int = 1,
    max_frames: int | None = None,
    show_progress: bool = True,
) -> RunResult:
    """Run an image or a video (local path or URI) and write documents, an overlay and a 3D plot."""
    started = time.perf_counter()
    local = fetch_to_cache(source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    documents = out_dir / "frames.jsonl"
    plot_path = out_dir / "pose3d.png"
    source_uri = source if "://" in source else local.resolve().as_uri()

    if is_image_file(local):
        pixels = decode_image(local.read_bytes(), what=local.name)
        doc = pipeline.image(pixels)
        overlay = out_dir / "overlay.jpg"
        import cv2

        cv2.imwrite(str(overlay), draw_overlay(pixels, doc, random_weights=pipeline.random_weights))
        docs = [doc]
        kind, truncated = "image", False
    else:
        if stride < 1:
            raise BadInput("stride must be ≥ 1")
        with VideoReader(local) as reader:
            overlay = out_dir / "overlay.mp4"
            writer = VideoWriter(overlay, reader.info.fps / stride, (reader.info.width, reader.info.height))
            total = reader.info.frame_count // stride if reader.info.frame_count else None
            if max_frames:
                total = min(total or max_frames, max_frames)
            bar = None
            if show_progress:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="frame", desc=local.name, dynamic_ncols=True)
            try:
                docs = pipeline.video(
                    reader,
                    stride=stride,
                    max_frames=max_frames,
                    on_frame=lambda d, px: writer.write(draw_overlay(px, d, random_weights=pipeline.random_weights)),
                    progress=bar.update if bar else None,
                )
            finally:
                if bar:
                    bar.close()
            writer.close()
            kind, truncated = "video", reader.truncated
    _write_jsonl(documents, docs, source_uri)
    files = [documents]
    if kind == "video" and pipeline.tracks:  # a user's track stages wrote something
        tracks_path = out_dir / "tracks.jsonl"
        tracks_path.write_text("".join(json.dumps(t, separators=(",", ":")) + "\n" for t in pipeline.tracks))
        files.append(tracks_path)
    plot_3d(poses_for_plot(docs), plot_path, title=f"{local.name}: 3D poses (Human3.6M joints)",
            random_weights=pipeline.random_weights)
    track_ids = {p.track_id for d in docs for p in d.persons or [] if p.track_id is not None}
    return RunResult(
        kind=kind, out_dir=out_dir, documents=documents, overlay=overlay, plot=plot_path, frames=len(docs),
        persons=sum(len(d.persons or []) for d in docs), tracks=len(track_ids),
        seconds=time.perf_counter() - started, random_weights=pipeline.random_weights, truncated=truncated,
        files=[*files, overlay, plot_path],
    )
