"""``posegraph`` command line. Errors a user can act on print one line and exit non-zero."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

from . import __version__, fetchpolicy, processes
from .errors import PosegraphError, UsageError
from .jobs import options as job_options
from .names import RUNTIMES, STAGES

log = logging.getLogger("posegraph")
# lazy: each command imports what it needs in its handler, so `posegraph --help` or `job status`
# does not pay for the pipeline, the UI or the embedded graph: `import posegraph.cli` took 0.19 s
# against 0.6-0.9 s for each of posegraph.pipeline, .ui.app, .jobs.runner, .embedded (2026-12-06).
# Commands that answer requests: they (or the servers they start) install a served fetch policy;
# every other command reads what its user names (posegraph.fetchpolicy).
NETWORK_SERVICES = {"serve", "up", "ui"}


def _profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="cpu", help="built-in profile (cpu, gpu, real-offline) or a .yaml file (default: cpu)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a profile value, e.g. --set detect.score_threshold=0.5 (repeatable)")
    p.add_argument("--checkpoints", type=Path, default=None,
                   help="directory with <model>.pth checkpoints (default: $POSEGRAPH_CHECKPOINTS or "
                        "~/.cache/posegraph/checkpoints)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posegraph", description="Human pose in 3D: detect → 2D → 3D.")
    parser.add_argument("--version", action="version", version=f"posegraph {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    _add_live(sub)
    _add_demo(sub)
    _add_models(sub)
    _add_serve(sub)
    _add_graph(sub)
    _add_up(sub)
    _add_call(sub)
    _add_job(sub)
    _add_export(sub)
    _add_db(sub)
    _add_ui(sub)
    _add_schema(sub)
    _add_stage(sub)
    return parser


def _add_stage(sub) -> None:
    stage = sub.add_parser("stage", help="a stage of your own: a model or any code as a node of the graph")
    ssub = stage.add_subparsers(dest="stage_command", required=True, metavar="ACTION")
    new = ssub.add_parser("new", help="write a working stage directory with its test (docs/write-a-stage.md)")
    new.add_argument("name", help="the stage's name: lowercase letters, digits and '-'")
    new.add_argument("--out", type=Path, required=True, help="a new directory")


def cmd_stage(args) -> int:
    from .stages.skeleton import new_stage

    written = new_stage(args.name, args.out)
    print(f"stage {args.name} in {args.out}:")
    for path in written:
        print(f"  {path}")
    print(f"next: pytest {args.out}   then: posegraph models archive --stage-dir {args.out} --out archives/{args.name}")
    return 0


def _add_run(sub) -> None:
    run = sub.add_parser("run", help="run the pipeline in this process on an image or a video")
    run.add_argument("input", help="image or video: a path, file://, s3:// or https:// URI")
    run.add_argument("--out", type=Path, default=Path("posegraph-out"), help="output directory")
    run.add_argument("--stride", type=int, default=1, help="video: process every N-th frame")
    run.add_argument("--max-frames", type=int, default=None, help="video: stop after N processed frames")
    run.add_argument("--detect-every", type=int, default=None, metavar="N",
                     help="video: the detector on every N-th frame only, boxes from the last keypoints between "
                          "(the profile's tracking.detect_every; default 1: every frame)")
    run.add_argument("--stage-dir", type=Path, action="append", default=[], metavar="DIR",
                     help="a stage of your own, run after the built-in ones (repeatable, in order; "
                          "docs/write-a-stage.md)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    _profile_args(run)


def _add_live(sub) -> None:
    live = sub.add_parser("live", help="poses from a camera, a stream or a video file as it plays")
    live.add_argument("source", help="a camera index (0), rtsp://… or http(s)://…, or a video file (played at "
                                     "its own frame rate)")
    live.add_argument("--seconds", type=float, default=None, help="stop after S seconds (default: Ctrl-C, or "
                                                                  "the end of a file)")
    live.add_argument("--out", type=Path, default=None, help="write the frame documents to DIR/frames.jsonl")
    live.add_argument("--stats-json", type=Path, default=None,
                      help="write fps, dropped_fraction, latency_ms_p50 and latency_ms_p95 here")
    live.add_argument("--detect-every", type=int, default=None, metavar="N",
                      help="the detector on every N-th frame only (default: the profile's tracking.detect_every)")
    live.add_argument("--lift-delay", type=int, default=None, metavar="FRAMES",
                      help="frames of look-ahead for the 3D (the profile's live.lift_delay, 0: causal; "
                           "each adds a frame of latency)")
    live.add_argument("--graph", default=None, help="a graph URL, or 'local' to start the embedded graph "
                                                    "(default: the stages in this process)")
    live.add_argument("--record", action="store_true",
                      help="keep the session in a results store as a job (tracks lifted whole when it stops)")
    live.add_argument("--results", default="sqlite:///posegraph-jobs/results.db",
                      help="with --record: sqlite:///path.db or postgresql://user@host/db")
    live.add_argument("--job-id", default=None, help="with --record: the job's id (default: live-<time>-<random>)")
    live.add_argument("--quiet", action="store_true", help="print only the summary")
    _profile_args(live)


def _add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="the quick tour: a bundled photo and a clip made from it, end to end")
    demo.add_argument("--out", type=Path, default=Path("posegraph-demo"), help="output directory")
    demo.add_argument("--frames", type=int, default=36, help="length of the synthetic clip")
    _profile_args(demo)


def _add_models(sub) -> None:
    models = sub.add_parser("models", help="list, download or create model checkpoints")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    mlist = msub.add_parser("list", help="the model catalogue and what is present locally")
    mlist.add_argument("--dir", type=Path, default=None, help="checkpoint directory to check")
    fetch = msub.add_parser("fetch", help="download the official OpenMMLab checkpoints")
    fetch.add_argument("--dir", type=Path, default=None, help="where to write <model>.pth")
    fetch.add_argument("--model", action="append", default=[], help="a model name (repeatable)")
    fetch.add_argument("--profile", default="cpu", help="fetch the models this profile uses (default: cpu)")
    fetch.add_argument("--all", action="store_true", help="every model in the catalogue")
    init = msub.add_parser("init", help="write checkpoints in mmengine format without downloading")
    init.add_argument("--random", action="store_true", required=True,
                      help="randomly initialised weights (offline use, tests): results are noise")
    init.add_argument("dir", nargs="?", type=Path, default=None, help="where to write <model>.pth")
    init.add_argument("--model", action="append", default=[], help="a model name (repeatable; default: all)")
    init.add_argument("--seed", type=int, default=0)

    archive = msub.add_parser("archive", help="build a stage's model archive in KServe's TorchServe layout")
    which = archive.add_mutually_exclusive_group(required=True)
    which.add_argument("--stage", choices=STAGES, help="a built-in stage")
    which.add_argument("--stage-dir", type=Path, help="a user's stage directory (posegraph stage new; "
                                                      "docs/write-a-stage.md)")
    archive.add_argument("--checkpoint", default=None,
                         help="weights URI (.pth or .onnx); default: <checkpoint dir>/<model>.pth")
    archive.add_argument("--out", type=Path, required=True, help="layout directory (config/ + model-store/)")
    archive.add_argument("--model-name", default=None,
                         help="served model name; KServe graphs call it by its InferenceService's name "
                              "(default: the stage name)")
    archive.add_argument("--batch-size", type=int, default=8, help="TorchServe server-side batch size")
    archive.add_argument("--max-batch-delay", type=int, default=5,
                         help="milliseconds TorchServe waits to fill a batch (a latency floor per request)")
    archive.add_argument("--workers", type=int, default=1)
    _profile_args(archive)
    push = msub.add_parser("push", help="upload an archive layout to s3://bucket/prefix/")
    push.add_argument("dir", type=Path)
    push.add_argument("target", help="s3://bucket/prefix/<stage>/")


def _add_serve(sub) -> None:
    serve = sub.add_parser("serve", help="serve one stage archive on 127.0.0.1 (KServe v1 protocol)")
    serve.add_argument("stage", help=f"the stage: {', '.join(STAGES)}, or a user's stage's name")
    serve.add_argument("--runtime", choices=RUNTIMES, default="torchserve")
    serve.add_argument("--model-dir", type=Path, required=True, help="archive layout (from `models archive`)")
    serve.add_argument("--port", type=int, default=None, help="HTTP port (default: a free one)")
    serve.add_argument("--metrics-port", type=int, default=None, help="TorchServe metrics port")
    serve.add_argument("--fetch-allow", default=None, metavar="SOURCES",
                       help="sources a request's image.uri may name: s3://bucket/prefix/, https://host, file:///dir "
                         "(comma-separated; default $POSEGRAPH_FETCH_ALLOW, else inline image data only)")


def _add_graph(sub) -> None:
    graph = sub.add_parser("graph", help="the KServe objects of a pipeline spec")
    gsub = graph.add_subparsers(dest="graph_command", required=True, metavar="ACTION")
    render = gsub.add_parser("render", help="print the InferenceServices and the InferenceGraph as YAML")
    render.add_argument("spec", type=Path, help="a PosePipeline YAML (see examples/pipeline.yaml)")


def _add_up(sub) -> None:
    up = sub.add_parser("up", help="run the graph on this machine: three stage servers and the router")
    up.add_argument("spec", type=Path, nargs="?", default=None,
                    help="a PosePipeline YAML; without it, the embedded default from the profile's checkpoints")
    up.add_argument("--runtime", choices=RUNTIMES, default=None,
                    help="stage server runtime (default: the spec's; without a spec kserve, which measured "
                         "1.12× in-process latency against TorchServe's 1.33×, see docs/graph.md)")
    up.add_argument("--port", type=int, default=8090, help="router port on 127.0.0.1 (default 8090)")
    up.add_argument("--router", choices=["posegraph", "kserve"], default="posegraph",
                    help="the graph router: posegraph's (metrics, errors that name the step) or KServe's own "
                         "binary, as a cluster runs it (built by scripts/control-plane.sh build-router)")
    up.add_argument("--fetch-allow", default=None, metavar="SOURCES",
                    help="sources a request's image.uri may name: s3://bucket/prefix/, https://host, file:///dir "
                         "(comma-separated; default $POSEGRAPH_FETCH_ALLOW, else inline image data only)")
    _profile_args(up)


def _add_call(sub) -> None:
    call = sub.add_parser("call", help="send an image through a graph endpoint and print the frame document")
    call.add_argument("image", help="a local image, or an s3:// / https:// URI the server reads")
    call.add_argument("--endpoint", required=True, help="the graph URL (local router or a cluster's InferenceGraph)")
    call.add_argument("--out", type=Path, default=None, help="write the document here instead of stdout")
    call.add_argument("--overlay", type=Path, default=None, help="also draw the result on the image (local files)")
    call.add_argument("--token", default=None, help="bearer token (default: $POSEGRAPH_AUTH_TOKEN)")
    call.add_argument("--timeout", type=float, default=120.0)


def _add_job(sub) -> None:
    job = sub.add_parser("job", help="video jobs: a video → 3D poses in a results store + rendered video")
    jsub = job.add_subparsers(dest="job_command", required=True, metavar="ACTION")
    jrun = jsub.add_parser("run", help="run (or resume) a job")
    job_options.add_arguments(jrun)
    jstatus = jsub.add_parser("status", help="a job's row from the results store")
    jstatus.add_argument("--results", default="sqlite:///posegraph-jobs/results.db")
    jstatus.add_argument("--job-id", required=True)


def _add_export(sub) -> None:
    from .motion.rigs import RIG_CHOICES

    export = sub.add_parser("export", help="a finished job's motion as files: BVH, GLB, FBX, CSV, joint angles, "
                                           "JSON Lines")
    export.add_argument("--results", default="sqlite:///posegraph-jobs/results.db")
    export.add_argument("--job-id", required=True)
    export.add_argument("--format", required=True, choices=["bvh", "glb", "fbx", "csv", "angles", "jsonl", "reps"],
                        help="bvh, glb, fbx: one animated skeleton per track (glb: glTF 2.0 with a mesh; fbx: "
                             "through Blender, which must be installed); csv: keypoints per track; angles: "
                             "angles.csv and a plot per track; jsonl: every frame's document; reps: reps.csv, "
                             "the repetitions a track stage found (examples/form_judge)")
    export.add_argument("--out", type=Path, required=True, help="directory (created)")
    export.add_argument("--in-place", action="store_true",
                        help="bvh/glb/fbx: the pelvis stays over the origin (default: it travels, on the floor)")
    export.add_argument("--lock-feet", action="store_true",
                        help="bvh/glb/fbx: a foot in contact with the floor stays put (the leg bends to it)")
    export.add_argument("--rig", choices=RIG_CHOICES, default="posegraph",
                        help="bvh/glb/fbx joint names: posegraph's (Human3.6M) or Mixamo's, for retargeting")


def _add_db(sub) -> None:
    db = sub.add_parser("db", help="the results store")
    dsub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    migrate = dsub.add_parser("migrate", help="create or update the schema")
    migrate.add_argument("--results", required=True, help="sqlite:///path.db or postgresql://user@host/db")


def _add_ui(sub) -> None:
    ui = sub.add_parser("ui", help="the web UI: upload photos and videos, watch jobs, see 2D and 3D skeletons")
    ui.add_argument("--port", type=int, default=8088, help="HTTP port (default 8088)")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    ui.add_argument("--data", default="posegraph-ui", help="uploads, job outputs and the SQLite store (local mode)")
    ui.add_argument("--results", default=None, help="results store DSN (default: sqlite under --data)")
    ui.add_argument("--graph", default="local", help="graph URL, or 'local' to start the embedded graph")
    ui.add_argument("--lift3d", default=None, help="lift3d's URL for video tracks (local mode, with --graph URL)")
    ui.add_argument("--max-upload-mb", type=float, default=200.0, help="largest accepted upload (default 200 MB)")
    ui.add_argument("--password-file", default=None,
                    help="HTTP Basic auth password, user 'posegraph' (default: $POSEGRAPH_UI_PASSWORD; none: off)")
    ui.add_argument("--no-auth", action="store_true", help="allow a non-loopback --host without a password")
    ui.add_argument("--fetch-allow", default=None, metavar="SOURCES",
                    help="video URIs users may give: s3://bucket/prefix/, https://host (comma-separated; default "
                         "$POSEGRAPH_FETCH_ALLOW, else uploads only)")
    ui.add_argument("--kubernetes-namespace", default=None,
                    help="cluster mode: videos become PoseJobs in this namespace (kubeconfig or in-cluster)")
    ui.add_argument("--pipeline", default="demo", help="cluster mode: the PosePipeline PoseJobs use")
    ui.add_argument("--upload-prefix", default="s3://posegraph-videos/uploads/", help="cluster mode: uploads go here")
    ui.add_argument("--output-prefix", default="s3://posegraph-outputs/", help="cluster mode: PoseJob outputs")
    ui.add_argument("--results-secret", default="posegraph-results",
                    help="cluster mode: the Secret PoseJobs name for the results store")
    _profile_args(ui)


def _add_schema(sub) -> None:
    schema = sub.add_parser("schema", help="write the frame/track document JSON Schemas")
    schema.add_argument("--out", type=Path, default=Path("docs/schemas"))


# A command's options that are profile settings: option (argparse dest) → the setting it sets.
PROFILE_OPTIONS = {"detect_every": "tracking.detect_every", "lift_delay": "live.lift_delay"}


def _overrides(args) -> list[str]:
    """The profile overrides of a command: its --set values, and the options that are profile
    settings (--detect-every, --lift-delay), whose ranges the profile's model checks, naming them."""
    return [*args.overrides, *(f"{setting}={getattr(args, dest)}" for dest, setting in PROFILE_OPTIONS.items()
                               if getattr(args, dest, None) is not None)]


def cmd_run(args) -> int:
    from .config import load_profile
    from .pipeline import Pipeline, run_input

    from .stages.user import builtin_chain, check_chain, load_user_stage

    users = [load_user_stage(directory) for directory in args.stage_dir]  # each refused in one line
    check_chain(builtin_chain(STAGES) + [(u.name, u.documents, u.reads, u.writes) for u in users])
    pipeline = Pipeline(load_profile(args.profile, _overrides(args)), checkpoint_dir=args.checkpoints,
                        user_stages=users).load()
    result = run_input(pipeline, args.input, args.out, stride=args.stride, max_frames=args.max_frames,
                       show_progress=not args.quiet)
    _report(result, as_json=args.json)
    return 0


def _live_steps(args, profile, overrides: list[str], stack):
    """(detect + pose2d for a frame, online lift3d, whole-track lift3d) for ``posegraph live``: the
    stages in this process, or a graph (``--graph URL|local``)."""
    from .live import graph_step, in_process_step
    from .pipeline import Pipeline

    if args.graph is None:
        pipeline = Pipeline(profile, checkpoint_dir=args.checkpoints).load()
        step, lift = in_process_step(pipeline, profile.tracking.detect_every)
        return step, lift, pipeline.stages["lift3d"].run
    from .client import GraphClient

    endpoint = args.graph
    if endpoint == "local":
        from .embedded import graph_on_demand

        endpoint, _ = graph_on_demand(args.profile, args.checkpoints, overrides, announce=not args.quiet)(stack)
    client = stack.enter_context(GraphClient(endpoint))
    step, lift = graph_step(client.infer, profile)
    return step, lift, client.infer


def cmd_live(args) -> int:
    from contextlib import ExitStack, closing

    from .config import load_profile
    from .live import run_live
    from .tracking import Tracker

    overrides = _overrides(args)
    profile = load_profile(args.profile, overrides)
    tracker = Tracker.for_settings(profile.tracking)
    recorded = None
    with ExitStack() as stack:
        step, lift, lift_whole = _live_steps(args, profile, overrides, stack)
        recording = None
        if args.record:
            from .jobs.recording import LiveRecording, new_live_job_id
            from .jobs.store import open_store

            store = stack.enter_context(closing(open_store(args.results)))
            recording = LiveRecording(store, args.job_id or new_live_job_id(), args.source, {
                "detect_every": profile.tracking.detect_every, "lift_delay": profile.live.lift_delay,
                "profile": args.profile})
        if not args.quiet:
            print(f"live: {args.source} → poses; Ctrl-C stops", flush=True)
        try:
            stats = run_live(args.source, step, lift, tracker, seconds=args.seconds, out=args.out,
                             on_doc=(lambda doc: recording.add(doc, tracker)) if recording else None)
        except BaseException as exc:
            if recording is not None:
                recording.fail(str(exc) or type(exc).__name__)
            raise
        if recording is not None:
            if not args.quiet:
                print(f"recording: lifting each track whole into job {recording.job_id}", flush=True)
            recorded = recording.finish(lift_whole, captured=stats.captured, fps=stats.source_fps)
    summary = {**stats.summary(), **({"job": recorded} if recorded else {})}
    if args.stats_json:
        args.stats_json.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{summary['frames_processed']} frames in {summary['seconds']} s: {summary['fps']} frames/s, "
          f"{summary['dropped_fraction']:.0%} dropped, latency p50 {summary['latency_ms_p50']} ms, "
          f"p95 {summary['latency_ms_p95']} ms")
    if recorded is not None:
        print(f"recorded as job {recorded['job_id']} ({recorded['status']}, {recorded['tracks']} tracks) in "
              f"{args.results}; its motion: posegraph export --results {args.results} --job-id {recorded['job_id']} "
              "--format bvh --out DIR")
    return 0


def _report(result, *, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(result.summary()))
        return
    what = "1 image" if result.kind == "image" else f"{result.frames} frames"
    tracks = f", {result.tracks} tracks" if result.kind == "video" else ""
    print(f"{what}: {result.persons} persons{tracks} in {result.seconds:.1f}s")
    if result.truncated:
        print("  note: the video ended early (truncated or damaged); results cover the decoded frames")
    print(f"  documents  {result.documents}")
    print(f"  overlay    {result.overlay}")
    print(f"  3D plot    {result.plot}")
    if result.random_weights:
        print("  RANDOM WEIGHTS were used: these results are noise. `posegraph models fetch` gets real ones.")


def cmd_models(args) -> int:
    from .models.checkpoints import checkpoint_path, default_checkpoint_dir, fetch_official, write_random
    from .models.zoo import MODELS, get_model

    if args.models_command == "list":
        directory = args.dir or default_checkpoint_dir()
        print(f"checkpoint directory: {directory}")
        for spec in MODELS.values():
            present = "present" if checkpoint_path(directory, spec.name).is_file() else "-"
            where = spec.url if spec.wheel is None else (
                f"{spec.wheel.member.rsplit('/', 1)[-1]} in {spec.wheel.wheel_url.rsplit('/', 1)[-1]} ({spec.wheel.licence})")
            print(f"  {spec.name:20s} {spec.stage:7s} {present:8s} {where}")
        return 0
    if args.models_command == "fetch":
        directory = args.dir or default_checkpoint_dir()
        if args.all:
            specs = list(MODELS.values())
        elif args.model:
            specs = [get_model(name) for name in args.model]
        else:
            from .config import load_profile

            profile = load_profile(args.profile)
            specs = [get_model(profile.stage_settings(s).model) for s in STAGES]
        for spec in specs:
            path = fetch_official(spec, directory)
            print(f"{spec.name}: {path}")
        return 0
    if args.models_command == "archive":
        return cmd_archive(args)
    if args.models_command == "push":
        from .serving.archive import push

        for uri in push(args.dir, args.target):
            print(uri)
        return 0
    directory = args.dir or default_checkpoint_dir()
    # Without --model: every model that has a random form (BlazePose's come real, from a wheel).
    specs = [get_model(name) for name in args.model] if args.model else [m for m in MODELS.values() if not m.wheel]
    for spec in specs:
        path = write_random(spec, checkpoint_path(directory, spec.name), seed=args.seed)
        print(f"{spec.name}: {path} (RANDOM weights)")
    return 0


def cmd_archive(args) -> int:
    from .config import load_profile
    from .models.checkpoints import resolve_checkpoint
    from .serving.archive import ArchiveOptions, build_archive

    options = ArchiveOptions(model_name=args.model_name, batch_size=args.batch_size,
                             max_batch_delay_ms=args.max_batch_delay, workers=args.workers)
    if args.stage_dir is not None:
        from .serving.archive import build_user_archive

        mar = build_user_archive(args.stage_dir, args.out, options=options)
        print(f"{mar.stem}: {mar} ({mar.stat().st_size / 1e3:.1f} kB, a user's stage), "
              f"config {args.out / 'config' / 'config.properties'}")
        return 0
    profile = load_profile(args.profile, args.overrides)
    settings = profile.stage_settings(args.stage)
    checkpoint = resolve_checkpoint(settings.model, args.checkpoint or settings.checkpoint, args.checkpoints)
    mar = build_archive(args.stage, checkpoint, args.out, settings=settings, options=options)
    print(f"{args.stage}: {mar} ({mar.stat().st_size / 1e6:.1f} MB), config {args.out / 'config' / 'config.properties'}")
    return 0


def _fetch_env(allow: str | None) -> dict[str, str] | None:
    """The stage servers' environment for --fetch-allow, checked here so a typo fails at once."""
    if allow is None:
        return None
    from .fetchpolicy import ENV, FetchPolicy

    FetchPolicy.parse(allow, origin="--fetch-allow")
    return {ENV: allow}


def cmd_serve(args) -> int:
    from .embedded import start_stage_server

    processes.exit_on_sigterm()  # the child server stops too
    server = start_stage_server(args.stage, args.model_dir, runtime=args.runtime, port=args.port,
                                metrics_port=args.metrics_port, env=_fetch_env(args.fetch_allow))
    try:
        server.wait_ready()
        print(f"{args.stage} ({args.runtime}) ready: POST {server.predict_url}")
        print(f"metrics: {server.metrics_url}   log: {server.log_path}   Ctrl-C stops it", flush=True)
        while server.process.poll() is None:
            time.sleep(0.5)
        print(f"posegraph: error: the {args.runtime} server exited with {server.process.returncode}; "
              f"see {server.log_path}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def cmd_graph(args) -> int:
    from .graph.kserve_objects import render_yaml
    from .graph.spec import load_pipeline

    print(render_yaml(load_pipeline(args.spec)), end="")
    return 0


def cmd_up(args) -> int:
    from .config import load_profile
    from .embedded import (
        archives_for_pipeline,
        archives_for_profile,
        check_router,
        default_pipeline,
        kserve_router_binary,
        start_local_graph,
    )
    from .graph.spec import load_pipeline

    check_router(args.router)  # before archives are built: a missing binary is said at once
    processes.exit_on_sigterm()
    if args.spec:
        from .embedded.archives import check_user_stages

        pipeline = load_pipeline(args.spec)
        layouts = archives_for_pipeline(pipeline)
        check_user_stages(pipeline, layouts)
    else:
        from .models.checkpoints import default_checkpoint_dir, ensure_checkpoints

        profile = load_profile(args.profile, args.overrides)
        directory = args.checkpoints or default_checkpoint_dir()
        ensure_checkpoints(profile, directory)
        print("preparing stage archives (exported once, then cached) …", flush=True)
        layouts = archives_for_profile(profile, directory)
        pipeline = default_pipeline(layouts, args.runtime or "kserve")
    router_name = {"posegraph": "posegraph's graph router", "kserve": "KServe's InferenceGraph router"}[args.router]
    print(f"starting {', '.join(layouts)} ({args.runtime or pipeline.spec.runtime} runtime) and {router_name} …",
          flush=True)
    graph = start_local_graph(pipeline, layouts, port=args.port, runtime=args.runtime, router=args.router,
                              env=_fetch_env(args.fetch_allow))
    try:
        print(f"graph ready: POST {graph.endpoint}  (KServe v1: {{\"instances\": [frame documents]}})")
        for stage, server in graph.servers.items():
            print(f"  {stage:7s} {server.runtime:10s} {server.predict_url}   metrics {server.metrics_url}")
        if args.router == "kserve":
            print(f"  router  {router_name} ({kserve_router_binary()}), no metrics   logs {graph.workdir}")
        else:
            print(f"  router  {router_name}, metrics {graph.endpoint}metrics   logs {graph.workdir}")
        print(f"try: posegraph call photo.jpg --endpoint {graph.endpoint}      Ctrl-C stops everything", flush=True)
        while graph.router.poll() is None and all(s.process.poll() is None for s in graph.servers.values()):
            time.sleep(0.5)
        dead = [n for n, s in graph.servers.items() if s.process.poll() is not None] or ["router"]
        print(f"posegraph: error: {', '.join(dead)} stopped unexpectedly; logs in {graph.workdir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping …", flush=True)
        return 0
    finally:
        graph.stop()


def cmd_call(args) -> int:
    from .client import GraphClient

    with GraphClient(args.endpoint, token=args.token, timeout=args.timeout) as client:
        doc = client.infer_image(args.image)
    text = json.dumps(doc.to_json(), indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    else:
        print(text)
    if args.overlay:
        import cv2

        from .media.imageio import decode_image
        from .media.render import draw_overlay

        pixels = decode_image(Path(args.image).read_bytes(), what=args.image)
        random_weights = any(r.random_weights for r in doc.stages.values())
        cv2.imwrite(str(args.overlay), draw_overlay(pixels, doc, random_weights=random_weights))
    stages = ", ".join(f"{k} {v.ms:.0f} ms" for k, v in doc.stages.items() if v.ms is not None)
    print(f"{len(doc.persons or [])} persons ({stages})", file=sys.stderr)
    return 0


def cmd_job(args) -> int:
    from .jobs.runner import JobRunner
    from .jobs.store import open_store
    from .names import SUCCEEDED

    if args.job_command == "status":
        store = open_store(args.results)
        row = store.job(args.job_id)
        store.close()
        if row is None:
            print(f"posegraph: error: no job {args.job_id} in {args.results}", file=sys.stderr)
            return 1
        print(json.dumps(dataclasses.asdict(row), indent=2, default=str))
        return 0
    processes.exit_on_sigterm()
    from .embedded import graph_on_demand

    options = job_options.from_args(args)
    summary = JobRunner(options, local_graph=graph_on_demand(options.profile, options.checkpoints)).run()
    if summary.get("range_done"):
        print(f"job {summary['job_id']}: {summary['range_done']} done; the last range to finish merges, lifts and "
              "renders")
        return 0
    if summary["already_done"]:
        print(f"job {summary['job_id']} already succeeded; nothing to do")
    print(f"job {summary['job_id']}: {summary['status']}, {summary['frames_done']} frames "
          f"({summary['frames_failed']} failed), {summary['persons']} persons, {summary['tracks']} tracks")
    for name, uri in (summary["outputs"] or {}).items():
        print(f"  {name:12s} {uri}")
    print(f"  results      {args.results}")
    if summary["note"]:
        print(f"  note: {summary['note']}")
    # 5: finished, with failures recorded in the store (the operator does not retry it).
    return 0 if summary["status"] == SUCCEEDED else 5


def cmd_db(args) -> int:
    from .jobs.store import open_store, redact

    store = open_store(args.results)
    applied = store.migrate()
    store.close()
    print(f"{redact(args.results)}: " + (f"applied schema versions {applied}" if applied else "schema up to date"))
    return 0


def cmd_schema(args) -> int:
    from .generate import write_schemas

    for path in write_schemas(args.out):
        print(path)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def cmd_ui(args) -> int:
    from .ui.serve import run_ui

    return run_ui(args)


def cmd_export(args) -> int:
    from .jobs.export import MotionOptions, export_job
    from .jobs.store import open_store

    if args.results.startswith("sqlite:///") and not Path(args.results[len("sqlite:///"):]).expanduser().is_file():
        raise UsageError(f"no results store at {args.results[len('sqlite:///'):]} (--results)")
    store = open_store(args.results)
    try:
        store.migrate()
        done = export_job(store, args.job_id, args.format, args.out, motion=MotionOptions(
            root_motion=not args.in_place, lock_feet=args.lock_feet, rig=args.rig))
    finally:
        store.close()
    for line in done.skipped:
        print(f"skipped {line}", file=sys.stderr)
    print(f"{len(done.files)} {args.format} file{'s' if len(done.files) != 1 else ''} in {args.out}:")
    for path in done.files:
        print(f"  {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="posegraph: %(levelname)s: %(message)s")
    handlers = {"run": cmd_run, "live": cmd_live, "models": cmd_models, "schema": cmd_schema, "demo": cmd_demo,
                "serve": cmd_serve,
                "graph": cmd_graph, "up": cmd_up, "call": cmd_call, "job": cmd_job, "db": cmd_db, "ui": cmd_ui,
                "export": cmd_export, "stage": cmd_stage}
    if args.command not in NETWORK_SERVICES:
        fetchpolicy.install(fetchpolicy.FetchPolicy.command_line())
    try:
        return handlers[args.command](args)
    except PosegraphError as exc:
        if args.debug:
            raise
        print(f"posegraph: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("posegraph: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, with the way to see more
        if args.debug or os.environ.get("POSEGRAPH_DEBUG"):
            raise
        print(f"posegraph: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return 70

