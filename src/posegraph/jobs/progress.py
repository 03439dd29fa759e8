"""Progress of a job, where each audience looks for it.

* a progress bar on a terminal (tqdm);
* a JSON file (``--progress-file``), rewritten atomically: what scripts, and a sidecar, read;
* Prometheus gauges on ``--metrics-port`` (frames done/total/failed, persons);
* in a cluster (``--report-posejob NAMESPACE/NAME``), the PoseJob's ``status.progress``, patched
  at most every few seconds through the Kubernetes API. The operator turns it into phase and
  printer columns.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from .. import k8s_config
from ..names import API_GROUP, API_VERSION, POSEJOBS

log = logging.getLogger(__name__)

REPORT_EVERY_S = 2.0


class Progress:
    def __init__(self, job_id: str, *, quiet: bool = False, progress_file: str | None = None,
                 metrics_port: int | None = None, posejob: str | None = None) -> None:
        self.job_id = job_id
        self.quiet = quiet
        self.file = Path(progress_file) if progress_file else None
        self.state: dict[str, Any] = {"job_id": job_id, "phase": "queued", "frames_done": 0, "frames_total": None,
                                      "frames_failed": 0, "persons": 0, "tracks": 0}
        self.bar = None
        self.last_report = 0.0
        self.gauges = self._metrics(metrics_port) if metrics_port else None
        self.posejob = posejob.split("/", 1) if posejob else None

    def _metrics(self, port: int):
        from prometheus_client import Gauge, start_http_server

        host = os.environ.get("POSEGRAPH_METRICS_HOST", "127.0.0.1")
        start_http_server(port, addr=host)
        names = ("frames_done", "frames_total", "frames_failed", "persons", "tracks")
        return {n: Gauge(f"posegraph_job_{n}", f"job {n.replace('_', ' ')}", ["job_id"]) for n in names}

    def start(self, *, total: int | None, done: int, phase: str) -> None:
        self.state.update(frames_total=total, frames_done=done, phase=phase)
        if not self.quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="frame", desc=self.job_id, dynamic_ncols=True)
        self.report(force=True)

    def report(self, *, done: int | None = None, force: bool = False, **fields: Any) -> None:
        if done is not None:
            if self.bar is not None:
                self.bar.update(done - self.state["frames_done"])
            self.state["frames_done"] = done
        if "failed" in fields:
            fields["frames_failed"] = fields.pop("failed")
        self.state.update({k: v for k, v in fields.items() if v is not None})
        if self.bar is not None and {"persons", "tracks"} & set(fields):
            self.bar.set_postfix(persons=self.state["persons"], tracks=self.state["tracks"], refresh=False)
        now = time.monotonic()
        if not force and now - self.last_report < REPORT_EVERY_S:
            return
        self.last_report = now
        self.state["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.file:
            tmp = self.file.with_name(f".{self.file.name}.part")
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.state))
            os.replace(tmp, self.file)
        if self.gauges:
            for name, gauge in self.gauges.items():
                value = self.state.get(name)
                if isinstance(value, (int, float)):
                    gauge.labels(self.job_id).set(value)
        if self.posejob:
            self._patch_posejob()

    def _patch_posejob(self) -> None:
        """Best effort: a progress report that cannot be delivered must not stop the job."""
        try:

            client = k8s_config.client()
            namespace, name = self.posejob
            progress = {k: v for k, v in self.state.items() if k != "job_id"}
            client.CustomObjectsApi().patch_namespaced_custom_object_status(
                API_GROUP, API_VERSION, namespace, POSEJOBS, name, {"status": {"progress": progress}})
        except Exception as exc:  # noqa: BLE001
            log.warning("could not report progress to PoseJob %s: %s", "/".join(self.posejob), exc)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
