"""The options of ``posegraph job run``, and the one place its command line is made.

Three launchers start a runner: the runner itself (one process per range with ``--workers``), the
UI's local launcher, and the operator's PoseJob → Job. Each used to type the argv by hand, and they
disagreed (the operator dropped ``--frame-format`` and ``--in-flight``, the local launcher
``--profile``). Now ``FLAGS`` below says, once, which flag carries which option: ``add_arguments``
makes the CLI's parser from it, ``JobOptions.argv`` the command line, ``from_args`` the options
back; tests/test_job_argv.py round-trips every option through each launcher.

This module imports nothing heavy: the operator (no model code, no OpenCV) builds its Jobs with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..errors import BadInput
from ..names import JOB_GRAPH_RETRIES
from .ranges import DEFAULT_OVERLAP

# Environment variable the runner reads its graph token from: a token on a command line is visible
# to every user of the machine (ps) and in a Job's manifest.
TOKEN_ENV = "POSEGRAPH_AUTH_TOKEN"


@dataclass
class JobOptions:
    video: str
    results: str = "sqlite:///posegraph-jobs/results.db"
    output: str = "posegraph-jobs/output/"
    graph: str = "local"  # "local" or the graph's URL
    lift3d: str | None = None  # lift3d's URL; default: tracks go through the graph too
    stride: int = 1
    batch: int = 8
    max_frames: int | None = None
    job_id: str | None = None
    render: bool = True
    motion: bool = True  # BVH, joint angles CSV and their plots under <output>/motion/
    retries: int = JOB_GRAPH_RETRIES
    video_format: str = "webm"  # webm (VP8, plays in browsers) or mp4 (mp4v)
    # Graph requests at once. 2 by default: with nothing else running on 2 cores, 2 in flight gave
    # 1.01x to 1.71x the frames/s of 1 in each of 10 rows of bench/video.py (1 to 4 persons a
    # frame, flip test on and off, 2026-12-01; docs/jobs.md), for up to ~270 MB more in pose2d's server.
    in_flight: int = 2
    frame_format: str = "jpeg"  # how frames travel to the graph: jpeg, or png (lossless, ~10x the bytes)
    detect_every: int | None = None  # the detector on every N-th frame (None: the profile's tracking.detect_every)
    # The camera, for where each person is (posegraph.motion.root): a focal length in pixels, or a
    # horizontal field of view; neither: the video's metadata, else the documented default.
    focal_px: float | None = None
    fov: float | None = None
    progress_file: str | None = None
    metrics_port: int | None = None
    report_posejob: str | None = None  # namespace/name: patch its status.progress (in a cluster)
    # A job split into ranges (posegraph.jobs.ranges): ``workers`` > 1 runs them here as that many
    # processes; ``ranges`` > 1 with ``range_index`` (default $JOB_COMPLETION_INDEX, an Indexed
    # Job's) runs one of them. The range that finishes last merges, lifts and renders, unless
    # ``range_only`` (the local coordinator does that itself, with its progress bar).
    workers: int = 1
    ranges: int = 1
    range_index: int | None = None
    range_only: bool = False
    overlap: int = DEFAULT_OVERLAP
    profile: str = "cpu"  # for --graph local
    checkpoints: str | None = None  # for --graph local
    token: str | None = None  # never on a command line: argv() leaves it to $POSEGRAPH_AUTH_TOKEN
    quiet: bool = False

    def resolved_job_id(self) -> str:
        if self.job_id:
            return self.job_id
        # Deterministic: the same command resumes the same job.
        key = json.dumps([self.video, self.stride, self.max_frames], sort_keys=True)
        return "job-" + hashlib.sha1(key.encode()).hexdigest()[:12]

    def validate(self) -> None:
        """BadInput naming the flag, for values argparse's types cannot refuse."""
        if self.stride < 1 or self.batch < 1 or self.in_flight < 1 or (self.detect_every or 1) < 1:
            raise BadInput("--stride, --batch, --in-flight and --detect-every must be ≥ 1")
        if self.workers < 1 or self.ranges < 1 or self.overlap < 0:
            raise BadInput("--workers and --ranges must be ≥ 1, --overlap ≥ 0")
        if self.workers > 1 and self.ranges > 1:
            raise BadInput("--workers N splits the job into N ranges itself: leave out --ranges")
        if self.video_format not in VIDEO_FORMATS:
            raise BadInput("--video-format must be webm or mp4")
        if self.frame_format not in FRAME_FORMATS:
            raise BadInput("--frame-format must be jpeg or png")
        if self.focal_px is not None and self.fov is not None:
            raise BadInput("--focal-px and --fov both give the focal length: use one")
        if self.focal_px is not None and not 1 <= self.focal_px <= 100_000:
            raise BadInput(f"--focal-px must be a positive number of pixels, got {self.focal_px}")
        if self.fov is not None and not 1 <= self.fov <= 179:
            raise BadInput(f"--fov must be between 1 and 179 degrees (across the image width), got {self.fov}")

    def argv(self) -> list[str]:
        """``job run`` and the flags that give these options (defaults left out), for
        ``python -m posegraph`` or the image's ``posegraph`` entry point. The token is left out:
        pass it as $POSEGRAPH_AUTH_TOKEN."""
        args = ["job", "run"]
        for flag in FLAGS:
            value = getattr(self, flag.field)
            if flag.field == "token" or (value == flag.default and not flag.required):
                continue
            if flag.kind == "switch":
                args.append(flag.name)  # set (or, for --no-*, cleared) away from the default
            else:
                args += [flag.name, str(value)]
        return args


VIDEO_FORMATS = ("webm", "mp4")
FRAME_FORMATS = ("jpeg", "png")


@dataclass(frozen=True)
class Flag:
    name: str
    field: str
    help: str
    kind: str = "value"  # value, or switch: present means the opposite of the default
    type: Any = str
    choices: tuple[str, ...] | None = None
    required: bool = False

    @property
    def default(self) -> Any:
        return JobOptions.__dataclass_fields__[self.field].default


FLAGS: tuple[Flag, ...] = (
    Flag("--video", "video", "s3://, https:// or a local path", required=True),
    Flag("--graph", "graph", "graph URL, or 'local' to start the embedded graph"),
    Flag("--lift3d", "lift3d", "lift3d's URL (default: tracks go through the graph)"),
    Flag("--results", "results", "sqlite:///path.db or postgresql://user@host/db (password: $PGPASSWORD)"),
    Flag("--output", "output",
         "where the rendered video, plot and frames.jsonl go: s3://bucket/prefix/ or a directory"),
    Flag("--stride", "stride", "process every N-th frame", type=int),
    Flag("--batch", "batch", "frame documents per graph request", type=int),
    Flag("--in-flight", "in_flight", "graph requests at once (default 2: encoding, decoding and lifting overlap "
         "with inference; results are taken in frame order, so they do not change)", type=int),
    Flag("--workers", "workers", "split the video into this many contiguous ranges, run as as many processes on "
         "one graph; tracks are stitched across the ranges, then lifted whole", type=int),
    Flag("--ranges", "ranges", "the job is split into this many ranges and this process runs one "
         "(--range-index); what each pod of a PoseJob with spec.parallelism runs", type=int),
    Flag("--range-index", "range_index",
         "which range, 0-based (default: $JOB_COMPLETION_INDEX, set in an Indexed Job)", type=int),
    Flag("--range-only", "range_only", argparse.SUPPRESS, kind="switch"),  # --workers' processes
    Flag("--overlap", "overlap", f"frames each range reads before its own, for tracking (default {DEFAULT_OVERLAP})",
         type=int),
    Flag("--max-frames", "max_frames", "stop after N processed frames", type=int),
    Flag("--job-id", "job_id", "default: derived from the video and stride (reruns resume)"),
    Flag("--no-render", "render", "skip the overlay video and plot", kind="switch"),
    Flag("--no-motion", "motion", "skip the BVH files and joint angles under motion/", kind="switch"),
    Flag("--video-format", "video_format", "webm (plays in browsers) or mp4", choices=VIDEO_FORMATS),
    Flag("--frame-format", "frame_format",
         "how frames go to the graph: jpeg (default), or png, lossless at ~10x the bytes", choices=FRAME_FORMATS),
    Flag("--detect-every", "detect_every", "the detector on every N-th frame only, boxes from the last keypoints "
         "between (default: the profile's tracking.detect_every, 1); N > 1 sends one frame at a time", type=int),
    Flag("--focal-px", "focal_px", "the camera's focal length in pixels, for each person's place in space "
         "(default: the video's metadata, else the image diagonal; docs/motion.md)", type=float),
    Flag("--fov", "fov", "or the camera's horizontal field of view, degrees", type=float),
    Flag("--retries", "retries", "retries of a failing graph call (with backoff: 1, 2, 4, … s)", type=int),
    Flag("--progress-file", "progress_file", "keep a JSON progress report here"),
    Flag("--metrics-port", "metrics_port", "serve Prometheus job gauges here", type=int),
    Flag("--report-posejob", "report_posejob", "NAMESPACE/NAME: patch that PoseJob's status.progress"),
    Flag("--token", "token", f"bearer token for the graph (default ${TOKEN_ENV})"),
    Flag("--quiet", "quiet", "no progress bar", kind="switch"),
    Flag("--profile", "profile", "profile of the local graph"),
    Flag("--checkpoints", "checkpoints", "checkpoints of the local graph"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``job run``'s arguments, from FLAGS."""
    for flag in FLAGS:
        if flag.kind == "switch":
            parser.add_argument(flag.name, dest=flag.field, action="store_false" if flag.default else "store_true",
                                help=flag.help)
        else:
            parser.add_argument(flag.name, dest=flag.field, type=flag.type, choices=flag.choices,
                                required=flag.required, default=flag.default, help=flag.help)


def from_args(args: argparse.Namespace) -> JobOptions:
    return JobOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(JobOptions)})
