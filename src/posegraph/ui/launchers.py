"""Where a video job started from the web UI runs.

* ``LocalLauncher`` (the embedded default): a ``posegraph job run`` process on this machine,
  results in the same store (SQLite by default), outputs in local files.
* ``KubernetesLauncher``: the uploaded video goes to S3, and a PoseJob object is created through
  the Kubernetes API; the operator runs it and the runner writes into the same results store.

Either way the UI first records the job as ``queued`` in the results store, so the job list is
read from the store alone and a restarted UI loses nothing.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import k8s_config, processes
from ..jobs.options import TOKEN_ENV, JobOptions
from ..names import API_GROUP, API_GROUP_VERSION, API_VERSION, POSEJOBS, posejob_store_id
from ..uri import is_remote_video_uri, s3_client, split_s3

log = logging.getLogger(__name__)


@dataclass
class JobRequest:
    job_id: str
    video: str            # a local path (uploaded) or an s3:// / https:// URI
    stride: int = 1
    max_frames: int | None = None
    detect_every: int | None = None  # the detector on every N-th frame (None: the runner's profile)
    filename: str = ""    # the uploaded file's name, for the S3 key


class LocalLauncher:
    mode = "local"

    def __init__(self, *, graph: str, lift3d: str | None, results: str, output_dir: Path,
                 token: str | None = None, profile: str = "cpu") -> None:
        self.graph, self.lift3d, self.results, self.profile = graph, lift3d, results, profile
        self.output_dir = Path(output_dir)
        self.token = token
        self._processes: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    @staticmethod
    def store_job_id(name: str) -> str:
        return name  # the runner is started with --job-id NAME

    @staticmethod
    def job_name(job_id: str) -> str:
        return job_id

    def video_uri(self, request: JobRequest) -> str:
        return request.video

    def output_of(self, job_id: str) -> str:
        return str(self.output_dir / job_id) + "/"

    def start(self, request: JobRequest) -> None:
        out = Path(self.output_of(request.job_id))
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "posegraph", *self.options(request).argv()]
        env = dict(os.environ)
        if self.token:
            env[TOKEN_ENV] = self.token
        process = processes.spawn(cmd, log=out / "runner.log", append=True, env=env)
        with self._lock:
            self._processes[request.job_id] = process
        log.info("job %s: runner pid %d", request.job_id, process.pid)

    def options(self, request: JobRequest) -> JobOptions:
        """The runner's options: the UI's graph, store and profile, the request's video and choices."""
        return JobOptions(video=request.video, graph=self.graph, lift3d=self.lift3d, results=self.results,
                          output=self.output_of(request.job_id), job_id=request.job_id, stride=request.stride,
                          max_frames=request.max_frames, detect_every=request.detect_every, profile=self.profile,
                          quiet=True)

    def describe(self, job_id: str) -> dict[str, Any]:
        """What the store cannot know yet: a runner that died before writing anything."""
        with self._lock:
            process = self._processes.get(job_id)
        if process is None or process.poll() is None:
            return {}
        return {"runner_exit_code": process.returncode}

    def stop(self) -> None:
        with self._lock:
            runners = list(self._processes.values())
        # SIGTERM: a runner records its job as interrupted (resumable) and stops its own graph.
        processes.stop(runners, grace_s=20)


class KubernetesLauncher:
    mode = "kubernetes"

    def __init__(self, *, namespace: str, pipeline: str, upload_prefix: str, output_prefix: str,
                 results_secret: str) -> None:
        for name, prefix in (("upload prefix", upload_prefix), ("output prefix", output_prefix)):
            if not prefix.startswith("s3://"):
                raise ValueError(f"{name} {prefix!r}: PoseJobs read and write s3:// locations")
        self.namespace, self.pipeline = namespace, pipeline
        self.upload_prefix = upload_prefix.rstrip("/") + "/"
        self.output_prefix = output_prefix.rstrip("/") + "/"
        self.results_secret = results_secret

    def store_job_id(self, name: str) -> str:
        return posejob_store_id(self.namespace, name)

    def job_name(self, job_id: str) -> str:
        """The PoseJob's name for a store job id (the inverse of store_job_id)."""
        return job_id.removeprefix(f"{self.namespace}-")

    def video_uri(self, request: JobRequest) -> str:
        if is_remote_video_uri(request.video):
            return request.video
        name = Path(request.filename or request.video).name or "video"
        return f"{self.upload_prefix}{request.job_id}/{name}"

    def output_of(self, job_id: str) -> str:
        return f"{self.output_prefix}{job_id}/"

    def upload(self, request: JobRequest) -> str:
        uri = self.video_uri(request)
        if uri != request.video:

            bucket, key = split_s3(uri)
            s3_client().upload_file(request.video, bucket, key)
        return uri

    def start(self, request: JobRequest) -> None:
        video = self.upload(request)
        body = {
            "apiVersion": API_GROUP_VERSION,
            "kind": "PoseJob",
            "metadata": {"name": request.job_id, "namespace": self.namespace,
                         "labels": {"app.kubernetes.io/created-by": "posegraph-ui"}},
            "spec": {
                "video": video,
                "pipelineRef": {"name": self.pipeline},
                "output": {"prefix": self.output_of(request.job_id)},
                "results": {"secretRef": {"name": self.results_secret}},
                "options": {"stride": request.stride,
                            **({"maxFrames": request.max_frames} if request.max_frames else {}),
                            **({"detectEvery": request.detect_every} if request.detect_every else {})},
            },
        }
        k8s_config.client().CustomObjectsApi().create_namespaced_custom_object(
            API_GROUP, API_VERSION, self.namespace, POSEJOBS, body)

    def describe(self, name: str) -> dict[str, Any]:
        """The PoseJob's own status: says why a job waits (e.g. for its pipeline) before it runs."""

        try:
            posejob = k8s_config.client().CustomObjectsApi().get_namespaced_custom_object(
                API_GROUP, API_VERSION, self.namespace, POSEJOBS, name)
        except Exception:  # noqa: BLE001 - absent or unreachable: the store is the record
            return {}
        status = posejob.get("status") or {}
        return {k: status[k] for k in ("phase", "message") if k in status}

    def stop(self) -> None:
        pass
