"""Every image `make images` builds (scripts/build_images.py), built and run for real: their sizes and
layers, what is inside them, and each one started with the Helm chart's own settings (its user,
read-only root, no capabilities, its arguments, environment and volumes) doing its job. The Docker
engine is the one that answers, or posegraph's own dockerd (scripts/docker_engine.py).

`make test` builds the images first; without them these tests fail, saying so."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from containers import (ENGINE_ROOT, IMAGES, REPO, Docker, build_images, chart_container, docker_engine,
                        image_values, real_cache_env, rendered_chart)

STAGES = ("detect", "pose2d", "lift3d")
NAMESPACE = "posegraph"
# Size targets, uncompressed as `docker images` reports them (decimal MB, as Docker counts).
SIZE_TARGETS_MB = {"posegraph": 450, "stage-kserve": 600, "stage-torchserve": 1600}
# A rebuild after a change to one .py file under src/ may re-create at most this much per image.
CODE_CHANGE_LAYERS_MB = 5


# ---- fixtures ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def docker():
    """The engine, for this module: started here (and stopped after) only if none answers."""
    with docker_engine.engine(ENGINE_ROOT) as engine:
        d = Docker(engine)
        missing = [image.ref for image in IMAGES.values() if d.image(image.ref) is None]
        if missing:
            pytest.fail(f"images not built: {', '.join(missing)}; run `make images` (part of `make test`)")
        yield d
        leftovers = d("ps", "-aq", "--filter", "label=posegraph.test").stdout.decode().split()
        for cid in leftovers:
            d("rm", "-f", cid, check=False)


@pytest.fixture(scope="module")
def chart():
    """The chart as values-kind.yaml installs it, pointed at the images built here."""
    helm = REPO / ".tools" / "helm4" / "helm"
    assert helm.exists(), "helm missing: scripts/install-helm.sh (part of `make test`)"
    return rendered_chart(helm, REPO / "charts" / "posegraph", ["-f", str(REPO / "charts/posegraph/values-kind.yaml")],
                          image_values())


@pytest.fixture(scope="module")
def shared_dir():
    """A folder the containers' users (uid 1000, 70) can read: pytest's own are root-only."""
    path = Path(tempfile.mkdtemp(prefix="posegraph-images-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def readable_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


@pytest.fixture(scope="module")
def layouts(checkpoints, shared_dir) -> dict[str, Path]:
    """The three stage archives (KServe's storage layout), as `posegraph models archive` makes them."""
    from posegraph.config import load_profile
    from posegraph.embedded import archives_for_profile

    built = archives_for_profile(load_profile("cpu"), checkpoints)
    return {stage: readable_copy(path, shared_dir / "models" / stage) for stage, path in built.items()}


def jpeg_doc(pixels) -> dict:
    data = base64.b64encode(cv2.imencode(".jpg", pixels)[1].tobytes()).decode()
    return {"schema": "posegraph/frame/v1", "image": {"data": data, "format": "jpeg"}}


@pytest.fixture(scope="module")
def in_process(checkpoints, astronaut) -> dict:
    """The astronaut, through the stages in this process, on the JPEG-decoded pixels."""
    from posegraph.config import load_profile
    from posegraph.pipeline import Pipeline

    pixels = cv2.imdecode(np.frombuffer(base64.b64decode(jpeg_doc(astronaut)["image"]["data"]), np.uint8),
                          cv2.IMREAD_COLOR)
    return Pipeline(load_profile("cpu"), checkpoint_dir=checkpoints).load().image(pixels).to_json()


def same_persons(served: dict, local: dict) -> None:
    assert len(served["persons"]) == len(local["persons"]) > 0
    for a, b in zip(served["persons"], local["persons"]):
        assert np.allclose(a["bbox"], b["bbox"], atol=1e-4)
        assert np.allclose(a["keypoints2d"], b["keypoints2d"], atol=1e-4)
        assert np.allclose(a["keypoints3d"], b["keypoints3d"], atol=1e-4)


def start_stage(docker, chart, image: str, runtime: str, stage: str, layout: Path, network: str, scratch: Path):
    """A stage server container as KServe runs the chart's ServingRuntime: its args, env, user,
    read-only root, /tmp as an emptyDir, the archive at /mnt/models."""
    spec = chart_container(chart, "ClusterServingRuntime", f"posegraph-{runtime}")
    return docker.run(image, *spec.args(), network=network, aliases=(stage,),
                      options=spec.options(scratch) + ("--volume", f"{layout}:/mnt/models:ro"))


def predict_url(container, stage: str) -> str:
    return f"http://{container.ip}:8080/v1/models/{stage}:predict"


def wait_serving(container, stage: str, timeout: float = 240) -> None:
    """Until the stage answers a predict (an empty document: 400 once the model is up)."""
    def answers():
        r = httpx.post(predict_url(container, stage), json={"instances": [{"width": 8, "height": 8}]}, timeout=10)
        return r.status_code in (200, 400)
    container.wait_for(answers, f"{stage} serving", timeout=timeout)


def chain(containers: dict, doc: dict) -> dict:
    instances = [doc]
    for stage in STAGES:
        response = httpx.post(predict_url(containers[stage], stage), json={"instances": instances}, timeout=120)
        assert response.status_code == 200, response.text
        instances = response.json()["predictions"]
    return instances[0]


# ---- sizes, layers, contents -------------------------------------------------------------------------

def test_every_image_is_built_and_the_cpu_images_are_within_their_targets(docker):
    rows = []
    for image in IMAGES.values():
        info = docker.image(image.ref)
        size_mb = info["Size"] / 1e6
        rows.append(f"{image.ref:55s} {size_mb:8,.0f} MB  {len(info['RootFS']['Layers']):2d} layers  {image.what}")
        if image.name in SIZE_TARGETS_MB:
            assert size_mb <= SIZE_TARGETS_MB[image.name], f"{image.ref}: {size_mb:.0f} MB > {SIZE_TARGETS_MB[image.name]}"
        config = info["Config"]
        assert config.get("User") not in (None, "", "0", "root"), f"{image.ref} runs as root by default"
    print("\n" + "\n".join(rows))


FORBIDDEN = [
    (re.compile(r"\.(onnx|pth|pt|ckpt|safetensors|mar|tflite|h5)$"), "weights"),
    (re.compile(r"(^|/)(\.cache|__pycache__/pip)(/|$)|^var/cache/apt/archives/.+\.deb$|^var/lib/apt/lists/.+_"),
     "a cache"),
    (re.compile(r"(^|/)(bin|libexec/gcc/[^/]+/[^/]+)/(gcc|g\+\+|cc|c\+\+|cc1|cc1plus|clang|javac|ld|as|make|rustc)"
                r"(-\d+)?$"), "a compiler"),
    (re.compile(r"(^|/)(site-packages|dist-packages|python3(\.\d+)?)/(.+/)?(tests?)/"), "tests"),
]


def image_files(docker, ref: str):
    """(path, size) of every regular file of an image, read from `docker export`."""
    cid = docker("create", ref).stdout.decode().strip()
    try:
        export = subprocess.Popen([docker_engine.client(), "export", cid], stdout=subprocess.PIPE,
                                  env=docker.engine.env())
        with tarfile.open(fileobj=export.stdout, mode="r|") as tar:
            for member in tar:
                if member.isfile():
                    yield member.name, member.size
        export.wait()
    finally:
        docker("rm", cid, check=False)


@pytest.mark.parametrize("name", list(IMAGES))
def test_no_weights_caches_compilers_or_tests_in_the_image(docker, name):
    files = list(image_files(docker, IMAGES[name].ref))
    assert files
    largest = sorted(files, key=lambda f: -f[1])[:12]
    print(f"\n{IMAGES[name].ref}, largest files:\n" + "\n".join(f"  {size / 1e6:8.1f} MB  /{path}"
                                                          for path, size in largest))
    found = [(f"/{path}", why) for path, _ in files for pattern, why in FORBIDDEN if pattern.search(path)]
    assert not found, f"{IMAGES[name].ref} holds what it must not: {found[:10]}"


def test_a_code_change_rebuilds_only_a_few_megabytes_per_image(docker, tmp_path):
    """Build the posegraph images from a copy of the tree in which one .py file under src/ changed:
    the layers that differ from the images `make images` built total at most 5 MB per image."""
    tree = tmp_path / "tree"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()
    for rel in listed:
        source = REPO / rel
        if source.is_file():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / rel)
    names = tree / "src" / "posegraph" / "names.py"
    names.write_text(names.read_text() + "\n# a change: tests/test_images.py\n")
    targets = ["posegraph", "stage-kserve", "stage-torchserve"]
    layer_sizes_before = {name: layer_sizes(docker, IMAGES[name].ref) for name in targets}
    done = subprocess.run([sys.executable, str(tree / "scripts" / "build_images.py"), "--only", ",".join(targets),
                           "--tag-suffix=-touched"], capture_output=True, text=True, timeout=1800,
                          env=real_cache_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = []
    for name in targets:
        before = docker.image(IMAGES[name].ref)["RootFS"]["Layers"]
        touched = f"{IMAGES[name].ref}-touched"
        after = docker.image(touched)["RootFS"]["Layers"]
        changed = [layer for layer in after if layer not in before]
        sizes = layer_sizes(docker, touched)
        total = sum(sizes[layer] for layer in changed)
        report.append(f"{name}: {len(changed)} of {len(after)} layers changed, {total / 1e6:.2f} MB")
        assert 0 < len(changed) <= 2 and total <= CODE_CHANGE_LAYERS_MB * 1e6, report[-1]
        big = [layer for layer in before if layer_sizes_before[name][layer] > CODE_CHANGE_LAYERS_MB * 1e6]
        assert big and all(layer in after for layer in big), "the base and dependency layers are reused as they are"
        docker("rmi", touched, check=False)
    print("\n" + "\n".join(report))


def layer_sizes(docker, ref: str) -> dict[str, int]:
    """diff ID → bytes of each layer, from `docker save` (its layer tars are the layers)."""
    saved = docker("save", ref, timeout=600).stdout
    sizes: dict[str, int] = {}
    with tarfile.open(fileobj=io.BytesIO(saved)) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))[0]
        config = json.load(tar.extractfile(manifest["Config"]))
        for diff_id, layer in zip(config["rootfs"]["diff_ids"], manifest["Layers"]):
            sizes[diff_id] = tar.getmember(layer).size
    return sizes


# ---- each image does its job ---------------------------------------------------------------------------

@pytest.mark.parametrize("runtime", ["kserve", "torchserve"])
def test_stage_images_serve_what_the_in_process_stages_give(docker, chart, layouts, astronaut, in_process, runtime,
                                                            shared_dir):
    image = IMAGES[f"stage-{runtime}"].ref
    with docker.network(f"stages-{runtime}") as network:
        containers = {stage: start_stage(docker, chart, image, runtime, stage, layouts[stage], network, shared_dir)
                      for stage in STAGES}
        for stage, container in containers.items():
            wait_serving(container, stage)
        served = chain(containers, jpeg_doc(astronaut))
        assert set(served["stages"]) == set(STAGES)
        same_persons(served, in_process)
        bad = httpx.post(predict_url(containers["detect"], "detect"), content=b"{not json", timeout=30)
        assert 400 <= bad.status_code < 500, bad.text


def test_router_image_chains_three_stage_containers(docker, chart, layouts, astronaut, in_process, shared_dir):
    """KServe's router image, on a user-defined network with three stage containers, runs the
    graph posegraph renders (the steps' serviceUrls are the containers' names, as KServe's
    controller points them at the stages' Services)."""
    from posegraph.embedded.graph import default_pipeline, local_graph_spec

    pipeline = default_pipeline(layouts, "kserve")
    with docker.network("router") as network:
        stages = {stage: start_stage(docker, chart, IMAGES["stage-kserve"].ref, "kserve", stage, layouts[stage],
                                     network, shared_dir) for stage in STAGES}
        spec = local_graph_spec(pipeline, {s: f"http://{s}:8080/v1/models/{s}:predict" for s in STAGES})
        router = docker.run(IMAGES["router"].ref, "--graph-json", json.dumps(spec), network=network,
                            options=("--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                                     "--env", "PROPAGATE_HEADERS=Authorization,X-Request-Id"))
        for stage, container in stages.items():
            wait_serving(container, stage)
        router.wait_for(lambda: httpx.get(f"http://{router.ip}:8080/readyz", timeout=5).status_code == 200,
                        "the router ready")
        response = httpx.post(f"http://{router.ip}:8080/", json={"instances": [jpeg_doc(astronaut)]}, timeout=180)
        assert response.status_code == 200, response.text
        same_persons(response.json()["predictions"][0], in_process)


def test_posegraph_image_runs_its_commands_and_the_ui(docker, chart, shared_dir):
    image = IMAGES["posegraph"].ref
    ui = chart_container(chart, "Deployment", "posegraph-ui")
    restricted = ("--user", "1000:1000", "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges")
    for args, expect in ((("--help",), "usage: posegraph"),
                         (("--entrypoint", "python", image, "-m", "posegraph.operator", "--help"), "usage"),
                         (("--version",), "posegraph 0.1.0")):
        if args[0] == "--entrypoint":
            done = docker("run", "--rm", "--network", "none", *restricted, *args)
        else:
            done = docker("run", "--rm", "--network", "none", *restricted, image, *args)
        assert expect in done.stdout.decode(), done.stdout.decode() + done.stderr.decode()
    # The UI as the chart runs it, against the PostgreSQL image as the chart runs it.
    auth = shared_dir / "ui-auth"
    auth.mkdir()
    (auth / "password").write_text("s3cret-ui\n")
    (auth / "password").chmod(0o644)
    with docker.network("ui") as network:
        postgres = start_postgresql(docker, chart, network, shared_dir)
        server = docker.run(image, *ui.args(), network=network,
                            options=ui.options(shared_dir, mounts={"/etc/posegraph-ui": str(auth)}))
        server.wait_for(lambda: httpx.get(f"http://{server.ip}:8088/healthz", timeout=5).status_code == 200,
                        "the UI ready")
        page = httpx.get(f"http://{server.ip}:8088/", auth=("posegraph", "s3cret-ui"), timeout=30)
        assert page.status_code == 200 and "posegraph" in page.text
        assert httpx.get(f"http://{server.ip}:8088/", timeout=30).status_code == 401
        three = httpx.get(f"http://{server.ip}:8088/static/vendor/three.module.min.js", auth=("posegraph", "s3cret-ui"),
                          timeout=30)
        assert three.status_code == 200 and len(three.content) > 100_000, "three.js is vendored into the image"
        loader = httpx.get(f"http://{server.ip}:8088/static/vendor/loaders/GLTFLoader.js",
                           auth=("posegraph", "s3cret-ui"), timeout=30)
        assert loader.status_code == 200 and "class GLTFLoader" in loader.text, "the motion view's loader too"
        assert postgres.running()


def start_postgresql(docker, chart, network: str, scratch: Path):
    spec = chart_container(chart, "Deployment", "posegraph-postgresql")
    container = docker.run(IMAGES["postgresql"].ref, *spec.args(), network=network,
                           aliases=(f"posegraph-postgresql.{NAMESPACE}.svc.cluster.local",), options=spec.options(scratch))
    probe = spec.container["readinessProbe"]["exec"]["command"]   # the chart's: over TCP
    container.wait_for(lambda: docker("exec", container.name, *probe, check=False).returncode == 0,
                       "PostgreSQL ready", timeout=90)
    return container


def test_postgresql_image_takes_the_charts_user_and_password(docker, chart, shared_dir):
    import psycopg

    spec = chart_container(chart, "Deployment", "posegraph-postgresql")
    env = spec.env()
    assert spec.user() == "70:70" and env["POSTGRES_USER"] == "posegraph"
    with docker.network("postgresql") as network:
        container = start_postgresql(docker, chart, network, shared_dir)
        dsn = f"host={container.ip} port=5432 dbname={env['POSTGRES_DB']} user={env['POSTGRES_USER']}"
        with psycopg.connect(dsn + f" password={env['POSTGRES_PASSWORD']}", connect_timeout=10) as conn:
            assert conn.execute("select current_user, current_database()").fetchone() == ("posegraph", "posegraph")
            conn.execute("create table t (x int)")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(dsn + " password=wrong", connect_timeout=10)
        # A restart keeps the cluster: the same data directory is started as it is.
        docker("restart", container.name)
        probe = spec.container["readinessProbe"]["exec"]["command"]
        container.wait_for(lambda: docker("exec", container.name, *probe, check=False).returncode == 0,
                           "PostgreSQL ready again")
        with psycopg.connect(dsn + f" password={env['POSTGRES_PASSWORD']}", connect_timeout=10) as conn:
            assert conn.execute("select count(*) from t").fetchone() == (0,)


@pytest.fixture(scope="module")
def object_store(docker, chart, shared_dir):
    """SeaweedFS as the chart runs it, its buckets made by the chart's hook Job (the posegraph
    image running the hook's own script), on a network where the chart's Service names resolve."""
    store = chart_container(chart, "Deployment", "posegraph-s3")
    hook = chart_container(chart, "Job", "posegraph-s3-buckets")
    config = shared_dir / "s3-config"
    config.mkdir()
    secret = store.secrets["posegraph-s3-config"]
    (config / "s3.json").write_text(secret["s3.json"])
    (config / "s3.json").chmod(0o644)
    with docker.network("objectstore") as network:
        server = docker.run(IMAGES["seaweedfs"].ref, *store.args(), network=network,
                            aliases=(f"posegraph-s3.{NAMESPACE}.svc.cluster.local",),
                            options=store.options(shared_dir, mounts={"/etc/seaweedfs": str(config)}))
        job = docker.run(IMAGES["posegraph"].ref, *hook.args(), network=network, options=hook.options(shared_dir))
        assert job.wait(timeout=180) == 0, job.logs()
        credentials = store.secrets["posegraph-s3"]
        yield {"network": network, "server": server, "hook_logs": job.logs(), "credentials": credentials,
               "endpoint": f"http://{server.ip}:8333"}


def s3_client(store):
    import boto3
    from botocore.config import Config

    creds = store["credentials"]
    return boto3.client("s3", endpoint_url=store["endpoint"], aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}))


def test_object_store_answers_s3_with_the_charts_buckets(object_store, chart):
    buckets = {b["Name"] for b in s3_client(object_store).list_buckets()["Buckets"]}
    values = next(o for o in chart if o["kind"] == "Job")  # the hook names its buckets in its args
    expected = set(values["spec"]["template"]["spec"]["containers"][0]["args"][1:])
    assert expected == {"posegraph-models", "posegraph-videos", "posegraph-outputs"} <= buckets
    assert "created posegraph-models" in object_store["hook_logs"]
    import botocore.exceptions

    bad = dict(object_store, credentials={"AWS_ACCESS_KEY_ID": "nobody", "AWS_SECRET_ACCESS_KEY": "wrong"})
    with pytest.raises(botocore.exceptions.ClientError):
        s3_client(bad).list_buckets()


def test_storage_initializer_copies_an_archive_from_s3(docker, object_store, layouts, shared_dir):
    """KServe's storage initializer image, with the arguments and S3 environment KServe's webhook
    gives it (from the chart's S3 Secret and its annotations), copies a pushed archive into the
    volume the stage container then mounts at /mnt/models."""
    client = s3_client(object_store)
    source = layouts["detect"]
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        client.upload_file(str(path), "posegraph-models", f"demo/detect/{path.relative_to(source).as_posix()}")
    volume = shared_dir / "mnt-models"
    volume.mkdir(mode=0o777)
    volume.chmod(0o777)
    creds = object_store["credentials"]
    env = {"AWS_ACCESS_KEY_ID": creds["AWS_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": creds["AWS_SECRET_ACCESS_KEY"],
           "S3_ENDPOINT": f"posegraph-s3.{NAMESPACE}.svc.cluster.local:8333", "S3_USE_HTTPS": "0",
           "S3_VERIFY_SSL": "0", "AWS_ENDPOINT_URL": f"http://posegraph-s3.{NAMESPACE}.svc.cluster.local:8333",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    options = ("--user", "1000:1000", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
               "--volume", f"{volume}:/mnt/models:rw", *(a for k, v in env.items() for a in ("--env", f"{k}={v}")))
    job = docker.run(IMAGES["storage-initializer"].ref, "s3://posegraph-models/demo/detect", "/mnt/models",
                     network=object_store["network"], options=options)
    assert job.wait(timeout=180) == 0, job.logs()
    copied = {p.relative_to(volume).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in volume.rglob("*") if p.is_file()}
    original = {p.relative_to(source).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in source.rglob("*") if p.is_file()}
    assert copied == original
    missing = docker.run(IMAGES["storage-initializer"].ref, "s3://posegraph-models/demo/nothing-here", "/mnt/models",
                         network=object_store["network"], options=options)
    assert missing.wait(timeout=180) != 0, "a storage URI with nothing behind it fails the init container"


def test_pause_image_holds_and_stops_on_sigterm(docker):
    done = docker("run", "--rm", "--network", "none", IMAGES["pause"].ref, "-v")
    assert done.stdout.decode().strip() == "posegraph pause 1.0"
    container = docker.run(IMAGES["pause"].ref, options=("--read-only", "--cap-drop", "ALL"))
    time.sleep(1)
    assert container.running()
    started = time.monotonic()
    container.stop(timeout=10)
    assert container.exit_code() == 0 and time.monotonic() - started < 5, "SIGTERM ends it at once"
    container.remove()


def test_cuda_stage_image_serves_on_the_cpu_without_a_gpu_and_says_so(docker, chart, layouts, astronaut, shared_dir):
    """No GPU here: the CUDA image (onnxruntime-gpu, CUDA from PyPI) starts, says plainly that it
    sees no GPU, and serves on the CPU what the CPU image serves."""
    with docker.network("cuda") as network:
        cpu = start_stage(docker, chart, IMAGES["stage-kserve"].ref, "kserve", "detect", layouts["detect"], network,
                          shared_dir)
        spec = chart_container(chart, "ClusterServingRuntime", "posegraph-kserve-gpu")
        gpu = docker.run(IMAGES["stage-kserve-cuda"].ref, *spec.args(), network=network,
                         options=spec.options(shared_dir) + ("--volume", f"{layouts['detect']}:/mnt/models:ro"))
        for container in (cpu, gpu):
            wait_serving(container, "detect")
        assert "no NVIDIA GPU is visible" in gpu.logs() and "serving on the CPU" in gpu.logs()
        answers = [httpx.post(predict_url(c, "detect"), json={"instances": [jpeg_doc(astronaut)]}, timeout=120).json()
                   for c in (cpu, gpu)]
        a, b = (answer["predictions"][0]["persons"] for answer in answers)
        assert len(a) == len(b) > 0 and np.allclose([p["bbox"] for p in a], [p["bbox"] for p in b], atol=1e-4)
        done = docker("run", "--rm", "--network", "none", "--entrypoint", "python", IMAGES["stage-torchserve-cuda"].ref,
                      "-c", "import onnxruntime, ts.protocol.otf_message_handler as h; "
                            "print(onnxruntime.get_available_providers())")
        assert "CUDAExecutionProvider" in done.stdout.decode()


# ---- the engine, and bad input -------------------------------------------------------------------------

def test_engine_is_started_only_when_none_answers_and_stopped_after(tmp_path, monkeypatch, docker):
    """With no engine on the default socket nor $DOCKER_HOST, `engine()` starts posegraph's own
    dockerd, and stops it after the block with nothing left behind; when one answers (the one these
    tests use), it is used and left running."""
    with docker_engine.engine(ENGINE_ROOT) as shared:
        assert shared.host == docker.engine.host and not shared.started
    assert docker_engine.answering(ENGINE_ROOT) == docker.engine.host, "left running"
    if os.path.exists(docker_engine.DEFAULT_SOCKET):
        pytest.fail("an engine answers on the default socket: this test needs a machine without one")
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    root = Path(tempfile.mkdtemp(prefix="pge-", dir="/tmp"))   # short: dockerd's socket paths have a limit
    try:
        with docker_engine.engine(root) as own:
            assert own.started and own.host == f"unix://{root}/docker.sock"
            assert own.run("info", "--format", "{{.DockerRootDir}}").stdout.decode().strip() == str(root / "data")
            pid = int((root / "dockerd.pid").read_text())
        assert not Path(f"/proc/{pid}").exists(), "dockerd stopped"
        assert not [line for line in Path("/proc/mounts").read_text().splitlines() if str(root) in line]
        assert not [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p).count(str(root))]
    finally:
        docker_engine.stop_own(root)
        shutil.rmtree(root, ignore_errors=True)


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def copy_of_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()
    for rel in listed:
        if (REPO / rel).is_file():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, tree / rel)
    return tree


def make_images(tree: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(tree / "scripts" / "build_images.py"), *args], capture_output=True,
                          text=True, timeout=1800, env=env or real_cache_env())


def one_readable_line(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("make images: "), done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_missing_requirement_names_the_step_and_tags_nothing(docker, tmp_path):
    tree = copy_of_tree(tmp_path)
    requirements = tree / "operators" / "requirements.txt"
    requirements.write_text(requirements.read_text() + "no-such-package-for-posegraph==1.0\n")
    before = docker.image(IMAGES["posegraph"].ref)["Id"]
    done = make_images(tree, "--only", "posegraph")
    one_readable_line(done, "wheels for posegraph", "no-such-package-for-posegraph", "operators/requirements.txt")
    assert docker.image(IMAGES["posegraph"].ref)["Id"] == before


def test_a_failing_build_step_leaves_the_current_image_current(docker, tmp_path):
    tree = copy_of_tree(tmp_path)
    dockerfile = tree / "operators" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("USER 1000\nWORKDIR /tmp",
                                                         "RUN echo a broken step && exit 3\nUSER 1000\nWORKDIR /tmp"))
    before = docker.image(IMAGES["posegraph"].ref)["Id"]
    done = make_images(tree, "--only", "posegraph")
    one_readable_line(done, "image posegraph/posegraph", "operators/Dockerfile", "exit code: 3")
    assert docker.image(IMAGES["posegraph"].ref)["Id"] == before


def test_a_base_that_cannot_be_made_names_the_step(docker, tmp_path):
    tree = copy_of_tree(tmp_path)
    script = tree / "scripts" / "build_images.py"
    script.write_text(script.read_text().replace('"include": ["python3", ',
                                                 '"include": ["no-such-package-for-posegraph", "python3", '))
    bases = {line for line in docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.decode().split()
             if line.startswith(build_images.BASE_REPOSITORY)}
    done = make_images(tree, "--only", "pause")
    one_readable_line(done, "base image (mmdebstrap)", "no-such-package-for-posegraph")
    after = {line for line in docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.decode().split()
             if line.startswith(build_images.BASE_REPOSITORY)}
    assert after == bases, "no base tagged"


def test_a_docker_engine_that_cannot_start_is_one_line(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "docker").write_text("a file where dockerd's folder would go\n")
    env = {**os.environ, "POSEGRAPH_CACHE": str(cache), "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    done = make_images(REPO, "--only", "pause", env=env)
    one_readable_line(done, "docker engine", "POSEGRAPH_CACHE")


# ---- the files behind the images --------------------------------------------------------------------

def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line} is not pinned"
            pins[re.sub(r"\[.*\]", "", name).lower().replace("_", "-")] = version
    return pins


@pytest.mark.parametrize("path", ["operators/requirements.txt", "model-servers/requirements-kserve.txt",
                                  "model-servers/requirements-torchserve.txt", "model-servers/requirements-cuda.txt"])
def test_image_requirements_are_pinned_to_what_the_tests_run(path):
    from importlib import metadata

    pins = _pins(REPO / path)
    assert not any(name.startswith(("mmcv", "mmdet", "mmpose", "mmengine", "torch")) and name != "torchserve"
                   for name in pins), "no OpenMMLab and no torch in an image"
    for name, version in pins.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # onnxruntime-gpu: the tests run the CPU package
        assert installed == version, f"{path}: {name}=={version}, but the tests run {installed}"


def test_the_posegraph_image_pins_every_dependency_posegraph_declares_for_it():
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *(r for extra in ("operator", "postgres", "ui")
                                             for r in project["optional-dependencies"][extra])]
    pins = _pins(REPO / "operators" / "requirements.txt")
    not_in_image = {"onnxruntime", "scikit-image"}   # operators/requirements.txt says why
    for requirement in map(Requirement, declared):
        name = requirement.name.lower().replace("_", "-")
        if name in not_in_image:
            assert name not in pins
            continue
        assert name in pins, f"{name} (pyproject.toml) is missing from operators/requirements.txt"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement}"


def test_storage_initializer_pins_are_kserves_lock():
    import tomllib

    lock = tomllib.loads((build_images.kserve_storage_initializer_dir(real_cache_env()) / "uv.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock["package"]}
    folder = REPO / "scripts" / "images" / "storage-initializer"
    assert _pins(folder / "requirements.txt") == {"kserve-storage": locked["kserve-storage"]}
    assert _pins(folder / "constraints.txt") == {k: v for k, v in locked.items() if k != "kserve-storage"}


def test_the_posegraph_image_vendors_the_three_js_of_vendor_ui():
    """The same three.js pin and files as scripts/vendor-ui.sh gives a checkout (the UI test above
    fetches it from the running image)."""
    script = (REPO / "scripts" / "vendor-ui.sh").read_text()
    version = re.search(r"^version=(\S+)$", script, re.M).group(1)
    dockerfile = (REPO / "operators" / "Dockerfile").read_text()
    stamp = re.search(r'^stamp="\$vendor/([^"]+)"$', script, re.M).group(1).replace("$version", version)
    assert f"three-{version}.tgz" in dockerfile and f"/vendor/{stamp}" in dockerfile, stamp
    assert build_images.THREE_TARBALL == f"three-{version}.tgz"
    names = re.findall(r'^cp "[^"]+" "\$vendor/([\w.\-/]+)"$', script, re.M)
    assert len(names) >= 5 and "loaders/GLTFLoader.js" in names, names
    for name in names:
        assert f":{name}" in dockerfile, name
    assert "/src/src/posegraph/ui/static/vendor" in dockerfile


def test_dockerfile_bases_are_pinned_and_images_run_as_non_root():
    for dockerfile in [*REPO.glob("model-servers/Dockerfile*"), REPO / "operators" / "Dockerfile",
                       *REPO.glob("scripts/images/*/Dockerfile")]:
        text = dockerfile.read_text()
        assert "# syntax=" not in text, f"{dockerfile}: BuildKit would pull that frontend"
        for arg in re.findall(r"ARG \w+_IMAGE=(\S+)", text):
            assert re.search(r":\S*\d+\.\d+", arg), f"{dockerfile}: unpinned base {arg}"
        assert re.search(r"^USER \d+", text, re.M), f"{dockerfile}: no numeric USER"
