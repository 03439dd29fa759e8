"""One source for `posegraph job run`'s command line (posegraph.jobs.options): every option goes
through the CLI's parser and through each of the three launchers (the runner's own range
processes, the UI's local launcher, the operator's PoseJob → Job) and comes back unchanged."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest
import yaml

from posegraph.cli import build_parser
from posegraph.jobs.options import FLAGS, TOKEN_ENV, JobOptions, from_args

EXAMPLES = Path(__file__).parent.parent / "operators" / "examples"


def parsed(argv: list[str]) -> JobOptions:
    """What `posegraph job run` makes of ``argv`` (from "job", "run" on)."""
    assert argv[:2] == ["job", "run"], argv
    return from_args(build_parser().parse_args(argv))


def away_from_default(field: dataclasses.Field):
    """A value of ``field`` that is not its default (and that the runner would accept)."""
    special = {"video": "s3://videos/walk.mp4", "results": "postgresql://posegraph@db/poses",
               "output": "s3://outputs/walk/", "graph": "http://demo.poses.svc", "lift3d": "http://lift3d.poses.svc",
               "video_format": "mp4", "frame_format": "png", "report_posejob": "poses/walk",
               "progress_file": "/tmp/progress.json", "job_id": "walk-1", "profile": "gpu",
               "checkpoints": "/models", "token": "s3cret", "max_frames": 40, "range_index": 2,
               "metrics_port": 9100, "detect_every": 5, "focal_px": 1234.5, "fov": 63.0}
    if field.name in special:
        return special[field.name]
    if isinstance(field.default, bool):
        return not field.default
    assert isinstance(field.default, int), f"no test value for {field.name}: add one here"
    return field.default + 3


def every_option_set() -> JobOptions:
    return JobOptions(**{f.name: away_from_default(f) for f in dataclasses.fields(JobOptions)})


def test_every_option_has_one_flag_and_every_flag_one_option():
    fields = {f.name for f in dataclasses.fields(JobOptions)}
    flagged = [flag.field for flag in FLAGS]
    assert sorted(flagged) == sorted(fields)
    assert len({flag.name for flag in FLAGS}) == len(FLAGS)


def test_every_option_round_trips_through_the_command_line_but_the_token():
    options = every_option_set()
    argv = options.argv()
    assert "s3cret" not in argv and "--token" not in argv  # visible in ps and in a Job's manifest
    assert parsed(argv) == dataclasses.replace(options, token=None)


def test_defaults_are_left_out_and_come_back_as_defaults():
    options = JobOptions(video="walk.mp4")
    assert options.argv() == ["job", "run", "--video", "walk.mp4"]
    assert parsed(options.argv()) == options


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(JobOptions) if f.name != "token"])
def test_each_option_alone_round_trips(field):
    """One option away from its default, the others default: a flag that only works beside
    others (or a default the parser and the dataclass disagree on) shows here."""
    value = away_from_default(JobOptions.__dataclass_fields__[field])
    options = dataclasses.replace(JobOptions(video="walk.mp4"), **{field: value})
    assert parsed(options.argv()) == options


def test_the_runners_range_processes_get_every_option_of_the_job():
    from posegraph.jobs.runner import JobRunner

    # (--fov left out: with --focal-px it is refused, both giving the focal length.)
    job = dataclasses.replace(every_option_set(), ranges=1, range_index=None, range_only=False, workers=3, fov=None)
    range_options = JobRunner(job)._range_options(1)
    back = parsed(range_options.argv())
    # The range's own settings, then everything else exactly as the job has it (the token travels
    # in the environment, see the next test).
    assert (back.workers, back.ranges, back.range_index, back.range_only, back.quiet) == (1, 3, 1, True, True)
    assert (back.progress_file, back.metrics_port, back.report_posejob) == (None, None, None)  # the coordinator's
    kept = {f.name for f in dataclasses.fields(JobOptions)} - {
        "workers", "ranges", "range_index", "range_only", "quiet", "progress_file", "metrics_port", "report_posejob",
        "token"}
    assert {k: getattr(back, k) for k in kept} == {k: getattr(job, k) for k in kept}


def test_the_uis_local_launcher_passes_its_graph_store_profile_and_the_request(tmp_path, monkeypatch):
    from posegraph.ui import launchers

    spawned = {}
    monkeypatch.setattr(launchers.processes, "spawn",
                        lambda cmd, **kw: spawned.update(cmd=cmd, env=kw["env"]) or _Finished())
    launcher = launchers.LocalLauncher(graph="http://127.0.0.1:9/graph", lift3d="http://127.0.0.1:9/lift3d",
                                       results="sqlite:///r.db", output_dir=tmp_path, token="s3cret", profile="gpu")
    launcher.start(launchers.JobRequest(job_id="walk-1", video="/data/walk.mp4", stride=2, max_frames=30,
                                        detect_every=5))
    assert spawned["cmd"][1:3] == ["-m", "posegraph"]
    back = parsed(spawned["cmd"][3:])
    assert back == JobOptions(video="/data/walk.mp4", graph="http://127.0.0.1:9/graph",
                              lift3d="http://127.0.0.1:9/lift3d", results="sqlite:///r.db",
                              output=f"{tmp_path / 'walk-1'}/", job_id="walk-1", stride=2, max_frames=30,
                              detect_every=5, profile="gpu", quiet=True)
    assert spawned["env"][TOKEN_ENV] == "s3cret" and "s3cret" not in spawned["cmd"]


class _Finished:
    pid, returncode = 0, 0

    def poll(self):
        return 0


def test_the_operators_job_runs_every_posejob_option():
    """Each of the PoseJob's spec.options (jobspec.Options), set away from its default, reaches the
    runner's options under the same name in snake_case."""
    from posegraph.jobspec import Options
    from posegraph.operator.resources import posejob_job

    values = {"stride": 3, "batch": 4, "maxFrames": 50, "render": False, "videoFormat": "mp4", "inFlight": 5,
              "frameFormat": "png", "detectEvery": 5, "focalPx": 1400.0}
    # fov is the other way to give focalPx (both at once are refused): it has a job of its own below.
    assert set(values) | {"fov"} == set(Options.model_fields), "a PoseJob option without a test value: add it here"
    body = yaml.safe_load((EXAMPLES / "posejob.yaml").read_text())
    body["metadata"] = {**body["metadata"], "namespace": "poses", "uid": str(uuid.uuid4())}
    body["spec"] = {**body["spec"], "options": values, "parallelism": 4}
    args = posejob_job(body, "http://demo.poses.svc")["spec"]["template"]["spec"]["containers"][0]["args"]
    back = parsed(args)
    snake = {"maxFrames": "max_frames", "videoFormat": "video_format", "inFlight": "in_flight",
             "frameFormat": "frame_format", "detectEvery": "detect_every", "focalPx": "focal_px"}
    assert {snake.get(k, k): getattr(back, snake.get(k, k)) for k in values} == {snake.get(k, k): v
                                                                                for k, v in values.items()}
    name = body["metadata"]["name"]
    assert (back.video, back.graph, back.output) == (body["spec"]["video"], "http://demo.poses.svc",
                                                      body["spec"]["output"]["prefix"])
    assert (back.results, back.report_posejob, back.ranges, back.quiet) == ("$(POSEGRAPH_RESULTS)", f"poses/{name}",
                                                                           4, True)
    body["spec"]["options"] = {"fov": 70.0}
    args = posejob_job(body, "http://demo.poses.svc")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert (parsed(args).fov, parsed(args).focal_px) == (70.0, None)


def test_a_local_graph_is_the_callers_to_start(clip_path, tmp_path):
    """`--graph local` is started by whoever runs the job (posegraph job run, the UI: both through
    embedded.graph_on_demand), not by the runner: a runner given none says so, in one line."""
    from posegraph.errors import UsageError
    from posegraph.jobs.runner import JobRunner

    options = JobOptions(video=str(clip_path), graph="local", results=f"sqlite:///{tmp_path / 'r.db'}",
                         output=str(tmp_path / "out") + "/", quiet=True)
    with pytest.raises(UsageError, match="graph_on_demand"):
        JobRunner(options).run()
