from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from posegraph import fetchpolicy

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
import containers as _containers  # noqa: E402,F401 - reads the real cache directory before isolation
import control_plane as _control_plane  # noqa: E402,F401 - reads the real cache directory before isolation
import services as _services  # noqa: E402,F401 - reads the real cache directory before isolation
from tiers import MODULE_TIERS, TIERS, missing, tier  # noqa: E402

ARTIFACTS = TESTS / "artifacts"


# ---- tiers (tests/tiers.py says how a test gets one) ------------------------------------------------

def _fixture_attributes(item, attribute: str) -> set:
    found = set()
    for name in item.fixturenames:
        for definition in item._fixtureinfo.name2fixturedefs.get(name, ()):
            value = getattr(definition.func, attribute, None)
            if value:
                found.add(value)
    return found


def pytest_configure(config):
    for name, what in TIERS.items():
        config.addinivalue_line("markers", f"{name}: {what}")


def pytest_collection_modifyitems(config, items):
    for item in items:
        tiers = _fixture_attributes(item, "posegraph_tier") | {t for m, t in MODULE_TIERS.items() if item.path.name == m}
        tiers |= {m.name for m in item.iter_markers() if m.name in TIERS}
        for name in tiers or {"fast"}:
            item.add_marker(getattr(pytest.mark, name))
        if _fixture_attributes(item, "posegraph_loopback"):
            item.user_properties.append(("loopback", True))


@pytest.fixture(autouse=True)
def _fast_tier_opens_no_sockets(request):
    """In a fast test, a TCP/UDP socket that binds or connects fails the test (see TIERS)."""
    if request.node.get_closest_marker("fast") is None or ("loopback", True) in request.node.user_properties:
        yield
        return
    opened = []

    def hook(event, args):
        if event in ("socket.bind", "socket.connect") and _network_address(args[1]):
            opened.append(f"{event} {args[1]}")
            raise RuntimeError(f"a fast-tier test opened a network socket ({event} {args[1]}): give the fixture "
                               "that starts its server a tier (@tier, tests/tiers.py)")

    _GUARD.append(hook)
    try:
        yield
    finally:
        _GUARD.remove(hook)
    assert not opened, f"a fast-tier test opened network sockets: {opened}"


def _network_address(address) -> bool:
    return isinstance(address, tuple) and len(address) >= 2 and isinstance(address[1], int)


_GUARD: list = []  # audit hooks cannot be removed: one stays installed and calls whatever is here


def _audit(event, args):
    if _GUARD and event.startswith("socket."):
        for hook in list(_GUARD):
            hook(event, args)


sys.addaudithook(_audit)


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory):
    """Caches, checkpoints and kubeconfig of the tests never touch the developer's own."""
    kserve_router = str(_control_plane.kserve_router())  # in the real cache, found before isolation
    root = tmp_path_factory.mktemp("posegraph-home")
    os.environ["POSEGRAPH_KSERVE_ROUTER"] = kserve_router
    os.environ["POSEGRAPH_CACHE"] = str(root / "cache")
    _keep_exports_across_sessions(root / "cache")
    os.environ["POSEGRAPH_CHECKPOINTS"] = str(root / "no-checkpoints-here")
    os.environ["KUBECONFIG"] = str(root / "kubeconfig-none")
    # Tests run posegraph in this process as the command line runs it, on files of their own: the
    # command line's fetch policy (the process default refuses every URI; tests/test_fetch_policy.py
    # checks that default in a fresh process, and the served policies where servers install them).
    fetchpolicy.install(fetchpolicy.FetchPolicy.command_line())
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        os.environ.pop(name, None)
    yield


def _keep_exports_across_sessions(cache: Path) -> None:
    """The session's ONNX exports and model archives live in the real cache, under tests/: the
    random checkpoints are the same every session (seeded) and both caches are keyed by the
    checkpoint's hash and the content of the exporting code (engine.export_fingerprint), so a
    warm session exports nothing and an edited network is exported afresh. Exports and random
    checkpoints of code that is no longer there, and archives made more than a week ago, are removed."""
    from posegraph.models.engine import export_fingerprint

    kept = _containers.REAL_CACHE / "tests"
    fingerprint = export_fingerprint()
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("onnx", "archives"):
        (kept / name).mkdir(parents=True, exist_ok=True)
        (cache / name).symlink_to(kept / name, target_is_directory=True)
    for old in [*(kept / "onnx").glob("*.onnx"), *(kept / "onnx").glob("*.json")]:  # exports, their facts
        if not old.stem.endswith(fingerprint):
            old.unlink(missing_ok=True)
    for old in kept.glob("checkpoints-*"):  # the checkpoints fixture's
        if old.name != f"checkpoints-{fingerprint}":
            shutil.rmtree(old, ignore_errors=True)
    week_ago = time.time() - 7 * 86400
    for old in (kept / "archives").iterdir():
        if old.stat().st_mtime < week_ago:
            shutil.rmtree(old, ignore_errors=True)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Path:
    """Randomly initialised checkpoints of every catalogue model, in mmengine format, made by
    `posegraph models init --random` (the real command)."""
    from posegraph.cli import main
    from posegraph.models.engine import export_fingerprint

    directory = tmp_path_factory.mktemp("checkpoints")
    # Seeded, so the same every session: made once per exporting code (export_fingerprint covers
    # the catalogue, the networks and the writer) and copied, not remade (17 s and 528 MB each
    # session, and each worker of `make test-fast`'s two; test_cli runs the command itself).
    kept = _containers.REAL_CACHE / "tests" / f"checkpoints-{export_fingerprint()}"
    if not (kept / "complete").is_file():  # made whole beside it, then renamed: there or not at all
        making = kept.with_name(f".{kept.name}.{os.getpid()}")
        assert main(["models", "init", "--random", str(making)]) == 0
        (making / "complete").write_text("made by `posegraph models init --random`\n")
        try:
            making.rename(kept)
        except OSError:  # another session made it first
            shutil.rmtree(making, ignore_errors=True)
    for made in kept.glob("*.pth"):
        shutil.copyfile(made, directory / made.name)
    return directory


BLAZEPOSE_MODELS = ("blazepose-detector", "blazepose-full", "blazepose-world")
# Fetched once into the real cache by scripts/bootstrap.sh (test): read before isolation.
BLAZEPOSE_DIR = _containers.REAL_CACHE / "blazepose"


@pytest.fixture(scope="session")
def blazepose_weights() -> Path:
    """BlazePose's two model files, real weights taken out of the mediapipe wheel by `posegraph
    models fetch` (scripts/bootstrap.sh test fetches them once; tests do not reach the index)."""
    from posegraph.models.checkpoints import checkpoint_path

    if not all(checkpoint_path(BLAZEPOSE_DIR, m).is_file() for m in BLAZEPOSE_MODELS):
        missing(f"BlazePose's weights are not in {BLAZEPOSE_DIR}: `posegraph models fetch --profile real-offline "
                f"--dir {BLAZEPOSE_DIR}` (make test does it)")
    return BLAZEPOSE_DIR


@pytest.fixture(scope="session")
@tier("servers")
def embedded_graph(checkpoints):
    """One embedded graph (the cpu profile: three KServe-runtime stage servers and posegraph's
    router) for the whole session, for the tests that only send it work; a test that stops or
    reconfigures a server starts its own."""
    from posegraph.config import load_profile
    from posegraph.embedded import start_embedded_graph

    with start_embedded_graph(load_profile("cpu"), checkpoints) as graph:
        yield graph


@pytest.fixture(scope="session")
def astronaut():
    from posegraph.media.samples import astronaut_bgr

    return astronaut_bgr()


@pytest.fixture(scope="session")
def clip_frames():
    from posegraph.media.samples import synthetic_clip_frames

    return synthetic_clip_frames(16)


@pytest.fixture(scope="session")
def clip_path(tmp_path_factory, clip_frames) -> Path:
    from posegraph.media.samples import write_clip

    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", clip_frames)


@pytest.fixture
@tier("servers")
def starts_servers():
    """For a test that starts servers itself (a subprocess, an embedded graph, a file server): its
    tier. Without it, the fast tier's socket guard fails the test."""
    import services

    return services


@pytest.fixture(scope="session")
@tier("servers")
def s3(tmp_path_factory):
    from services import s3_server

    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3_env(s3, monkeypatch):
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return s3


@pytest.fixture(scope="session")
@tier("reference")
def mm():
    """The OpenMMLab reference stack (test-only). Skips, saying why, if it cannot import."""
    from mm_reference import mm_available

    reason = mm_available()
    if reason:
        missing(f"OpenMMLab reference stack unavailable ({reason}); `make test` installs it")
    import mm_reference

    return mm_reference


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def pytest_report_header(config):
    try:
        import onnxruntime
        import torch

        return f"posegraph tests: torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
    except ImportError:
        return "posegraph tests: torch not installed"


np.set_printoptions(precision=4, suppress=True)


@pytest.fixture(scope="session")
@tier("control_plane")
def control_plane(tmp_path_factory):
    """A real kube-apiserver + etcd + kube-controller-manager (scripts/control-plane.sh), shared by
    every test that needs Kubernetes itself. `make test` builds it; without the binaries the tests
    fail, saying how to build them (they must never pass against nothing)."""
    from control_plane import ControlPlane, built

    if built() is None:
        pytest.fail("no control plane binaries: run `scripts/control-plane.sh build` (part of `make test`; needs Go)")
    plane = ControlPlane.start(tmp_path_factory.mktemp("control-plane"))
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
@tier("servers")
def kserve_router() -> Path:
    """KServe's own InferenceGraph router (cmd/router of the pinned release), built by
    scripts/control-plane.sh. Missing, the tests that need it fail saying how to build it."""
    path = Path(os.environ["POSEGRAPH_KSERVE_ROUTER"])
    if not os.access(path, os.X_OK):
        pytest.fail(f"KServe's router is not built ({path}): run `scripts/control-plane.sh build` "
                    "(part of `make test`; needs Go)")
    return path


@pytest.fixture(scope="module")
def kserve_controller(control_plane):
    """KServe's own manager (InferenceService and InferenceGraph controllers, admission webhooks) on
    the session's control plane for one module, started by `scripts/control-plane.sh kserve-up`.
    Afterwards `kserve-down` removes it with its CRDs, webhooks and RBAC, so that the modules after
    see the plane as `up` left it. `make test` builds the manager; without it the tests fail, saying
    how to build it."""
    from control_plane import kserve_manager

    manager = kserve_manager()
    if not os.access(manager, os.X_OK):
        pytest.fail(f"KServe's manager is not built ({manager}): run `scripts/control-plane.sh build-kserve` "
                    "(part of `make test`; needs Go)")
    kserve = control_plane.start_kserve()
    yield kserve
    down = control_plane.stop_kserve()
    assert down.returncode == 0, f"scripts/control-plane.sh kserve-down failed:\n{down.stderr[-3000:]}"


# ---- API clients of the shared control plane, one per module that asks -------------------------------

@pytest.fixture(scope="module")
def core(control_plane):
    import kubernetes

    return kubernetes.client.CoreV1Api(control_plane.api_client())


@pytest.fixture(scope="module")
def apps(control_plane):
    import kubernetes

    return kubernetes.client.AppsV1Api(control_plane.api_client())


@pytest.fixture(scope="module")
def batch(control_plane):
    import kubernetes

    return kubernetes.client.BatchV1Api(control_plane.api_client())


@pytest.fixture(scope="module")
def custom(control_plane):
    import kubernetes

    return kubernetes.client.CustomObjectsApi(control_plane.api_client())


@pytest.fixture(scope="module")
def dynamic(control_plane):
    from kubernetes.dynamic import DynamicClient

    return DynamicClient(control_plane.api_client())
