"""A user's stage (posegraph.stages.user): the contract, `posegraph stage new`, the archive both
runtimes serve, the spec's extraStages through render, both routers and a video job, and the form
judge (examples/form_judge) built on the contract alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from posegraph.errors import MissingInput, UsageError
from posegraph.frame import FrameDocument, TrackDocument
from posegraph.stages.user import (
    BUILTIN_WRITES,
    GIVEN,
    StageContractError,
    UserStage,
    UserStageRunner,
    builtin_chain,
    check_chain,
    load_user_stage,
    probe_document,
)

REPO = Path(__file__).resolve().parents[1]
FORM_JUDGE = REPO / "examples" / "form_judge"
sys.path.insert(0, str(FORM_JUDGE))
import synthetic_exercise  # noqa: E402  (the example's own test data)


def posegraph_cli(*args, timeout=300, cwd=None):
    return subprocess.run([sys.executable, "-m", "posegraph", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


class Height(UserStage):
    name = "height"
    documents = "frame"
    reads = ("persons.keypoints3d",)
    writes = ("persons.height_m",)

    def preprocess(self, docs):
        return [p for d in docs for p in d.persons]

    def infer(self, persons):
        return [float(np.ptp(np.asarray(p.keypoints3d)[:, 1])) for p in persons]

    def postprocess(self, docs, persons, heights):
        for person, h in zip(persons, heights):
            person.height_m = h


# ---- the contract ---------------------------------------------------------------------------------------

def test_a_declared_stage_writes_its_field_and_records_itself():
    runner = UserStageRunner(Height())
    (doc,) = runner.run([probe_document("frame")])
    assert 1.3 < doc.persons[0].height_m < 2.0 and doc.stages["height"].model == "user:height"
    track = probe_document("track")
    assert runner.run([track])[0].to_json() == probe_document("track").to_json(), "a track passes through"


@pytest.mark.parametrize("sneak, field", [
    (lambda doc: setattr(doc.persons[0], "score", 0.1), "persons.score"),      # changes a field it did not declare
    (lambda doc: setattr(doc, "verdict", "fine"), "verdict"),                  # adds one
    (lambda doc: setattr(doc.persons[0], "keypoints3d", None), "persons.keypoints3d"),  # removes one
])
def test_a_field_it_does_not_declare_fails_the_batch_in_one_line(sneak, field):
    class Sneaky(Height):
        def postprocess(self, docs, persons, heights):
            super().postprocess(docs, persons, heights)
            sneak(docs[0])

    with pytest.raises(StageContractError) as caught:
        UserStageRunner(Sneaky()).run([probe_document("frame")])
    assert f"wrote {field!r}" in str(caught.value) and "\n" not in str(caught.value)


def test_a_document_without_what_it_reads_is_a_4xx_naming_the_field():
    doc = probe_document("frame")
    doc.persons[0].keypoints3d = None
    with pytest.raises(MissingInput, match=r"persons\[0\]\.keypoints3d"):
        UserStageRunner(Height()).run([doc])
    # A video job's frames get their 3D per track, after the graph: a stage reading 3D leaves them alone.
    video_frame = FrameDocument(width=64, height=64, per_track_3d=True, persons=[])
    assert UserStageRunner(Height()).run([video_frame])[0].stages == {}


@pytest.mark.parametrize("attrs, message", [
    ({"name": "Height"}, "DNS label"),
    ({"name": "lift3d"}, "built-in stage"),
    ({"documents": "video"}, "documents must be"),
    ({"reads": "persons.keypoints3d"}, "reads must be a list"),
    ({"reads": ("frames.keypoints3d",)}, "nests its items under 'persons'"),
    ({"writes": ()}, "writes is empty"),
    ({"writes": ("persons.keypoints3d",)}, "posegraph's own stages write"),
])
def test_a_wrong_declaration_is_refused_in_one_line(attrs, message):
    wrong = type("Wrong", (Height,), attrs)
    with pytest.raises(StageContractError, match=message):
        UserStageRunner(wrong())


def test_a_pipeline_whose_stage_reads_what_nobody_writes_is_refused_when_it_is_put_together():
    builtin = builtin_chain(("detect", "pose2d", "lift3d"))
    check_chain(builtin + [("height", "frame", ("persons.keypoints3d",), ("persons.height_m",)),
                           ("bmi", "frame", ("persons.height_m",), ("persons.bmi",))])
    with pytest.raises(UsageError) as caught:
        check_chain(builtin + [("bmi", "frame", ("persons.height_m",), ("persons.bmi",)),
                               ("height", "frame", ("persons.keypoints3d",), ("persons.height_m",))])
    assert str(caught.value).startswith("stage bmi reads frame field 'persons.height_m', which no earlier stage")
    with pytest.raises(UsageError, match="frames.keypoints3d"):  # lift3d is not in this pipeline
        check_chain(builtin_chain(("detect", "pose2d")) + [("judge", "track", ("frames.keypoints3d",), ("reps",))])


def test_the_builtin_fields_are_what_the_frame_contract_has():
    """GIVEN and BUILTIN_WRITES name real fields of the documents (a typo there would let a stage
    read a field nobody writes)."""
    from posegraph.frame import Person, TrackFrame

    frame_fields = set(FrameDocument.model_fields) | {"schema"}
    for kind, items in (("frame", set(Person.model_fields)), ("track", set(TrackFrame.model_fields))):
        top = set(FrameDocument.model_fields if kind == "frame" else TrackDocument.model_fields)
        for field in GIVEN[kind] + tuple(f for w in BUILTIN_WRITES.values() for f in w[kind]):
            if "." in field:
                assert field.split(".", 1)[1] in items, field
            else:
                assert field in top, field
    assert "persons" in frame_fields


# ---- stage directories: `posegraph stage new`, loading ----------------------------------------------------

def test_stage_new_writes_a_stage_whose_own_tests_pass(tmp_path):
    out = tmp_path / "my-stage"
    made = posegraph_cli("stage", "new", "pose-height", "--out", out)
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in out.iterdir()) == ["posegraph-stage.yaml", "stage.py", "test_stage.py"]
    tested = subprocess.run([sys.executable, "-m", "pytest", str(out), "-q", "-p", "no:cacheprovider"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert tested.returncode == 0 and "3 passed" in tested.stdout, tested.stdout[-2000:]
    again = posegraph_cli("stage", "new", "pose-height", "--out", out)
    assert again.returncode != 0 and "not empty" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    bad = posegraph_cli("stage", "new", "Pose_Height", "--out", tmp_path / "x")
    assert bad.returncode != 0 and "lowercase" in bad.stderr and not (tmp_path / "x").exists()


def _stage_dir(tmp_path: Path, code: str, settings: str = "") -> Path:
    directory = tmp_path / "stage"
    directory.mkdir()
    (directory / "stage.py").write_text(code)
    (directory / "posegraph-stage.yaml").write_text(f"module: stage.py\nclass: S\n{settings}")
    return directory


HEADER = "from posegraph.stages.user import UserStage\n"
GOOD = HEADER + '''
class S(UserStage):
    name = "s"
    documents = "track"
    reads = ("frames.keypoints3d",)
    writes = ("frames_seen",)

    class Settings(UserStage.Settings):
        factor: int = 1

    def preprocess(self, docs):
        return docs

    def infer(self, docs):
        return [len(d.frames) * self.settings.factor for d in docs]

    def postprocess(self, docs, batch, outputs):
        for d, n in zip(docs, outputs):
            d.frames_seen = n
'''


@pytest.mark.parametrize("code, settings, message", [
    (GOOD, "settings: {factr: 2}\n", "settings.factr: Extra inputs are not permitted"),
    (GOOD.replace("class S(", "class T("), "", "has no class 'S'"),
    (HEADER + "raise RuntimeError('no GPU here')\n", "", "importing it failed: RuntimeError: no GPU here"),
    (GOOD.replace("d.frames_seen = n", "d.frames[0].bbox = [0, 0, 1, 1]"), "", "wrote 'frames.bbox'"),
    (GOOD.replace("return docs\n", "return 1 / 0\n", 1), "", "probe track document: ZeroDivisionError"),
])
def test_a_broken_stage_directory_is_refused_when_loaded_in_one_line(tmp_path, code, settings, message):
    directory = _stage_dir(tmp_path, code, settings)
    with pytest.raises((UsageError, StageContractError)) as caught:
        load_user_stage(directory)
    assert message in str(caught.value) and "\n" not in str(caught.value), caught.value


def test_a_stage_directory_loads_with_its_settings(tmp_path):
    runner = load_user_stage(_stage_dir(tmp_path, GOOD, "settings: {factor: 3}\n"))
    (doc,) = runner.run([probe_document("track")])
    assert doc.frames_seen == 3 * len(doc.frames)
    with pytest.raises(UsageError, match="no posegraph-stage.yaml"):
        load_user_stage(tmp_path)


# ---- the archive, served by both runtimes ------------------------------------------------------------------

def squat_track(reps=3, noise_m=0.0, seed=0) -> TrackDocument:
    exercise = synthetic_exercise.squat([(1.2, 1.0, 1.0)] * reps, [0.6] * (reps + 1), noise_m=noise_m, seed=seed)
    from posegraph.frame import TrackFrame

    return TrackDocument(track_id=7, width=640, height=480, fps=exercise.fps, frames=[
        TrackFrame(frame_index=i, bbox=[0, 0, 10, 10], keypoints2d=[[1.0, 1.0, 1.0]] * 17, keypoints3d=k.tolist())
        for i, k in enumerate(exercise.keypoints3d)]), exercise


@pytest.fixture(scope="module")
def form_judge_archive(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("form-judge-archive")
    made = posegraph_cli("models", "archive", "--stage-dir", FORM_JUDGE, "--out", out)
    assert made.returncode == 0, made.stderr
    return out


def test_the_archive_carries_the_stage_and_refuses_a_broken_one(form_judge_archive, tmp_path, monkeypatch):
    from posegraph import fetchpolicy
    from posegraph.serving.archive import find_mar, unpack
    from posegraph.serving.runtime import load_stage

    # load_stage installs a served process's fetch policy: this process's is put back afterwards.
    monkeypatch.setattr(fetchpolicy, "_current", fetchpolicy.current())

    archive = unpack(find_mar(form_judge_archive, "form-judge"))
    assert archive.is_user_stage and archive.manifest["user"]["writes"] == ["exercise", "reps"]
    runner = load_stage(archive)
    track, exercise = squat_track()
    (doc,) = runner.run([track])
    assert doc.exercise == "squat" and len(doc.reps) == len(exercise.reps)
    broken = _stage_dir(tmp_path, GOOD.replace("d.frames_seen = n", "d.score = n"))
    refused = posegraph_cli("models", "archive", "--stage-dir", broken, "--out", tmp_path / "out")
    assert refused.returncode != 0 and "wrote 'score'" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("runtime", ["kserve", "torchserve"])
def test_both_runtimes_serve_the_form_judge(form_judge_archive, runtime, starts_servers):
    import httpx

    from posegraph.embedded import start_stage_server

    server = start_stage_server("form-judge", form_judge_archive, runtime=runtime)
    try:
        server.wait_ready()
        track, exercise = squat_track()
        answer = httpx.post(server.predict_url, json={"instances": [track.to_json()]}, timeout=60)
        assert answer.status_code == 200, answer.text
        (doc,) = answer.json()["predictions"]
        assert doc["exercise"] == "squat" and len(doc["reps"]) == len(exercise.reps)
        assert doc["stages"]["form-judge"]["model"] == "user:form-judge"
        broken = track.to_json()
        del broken["frames"][3]["keypoints3d"]
        refused = httpx.post(server.predict_url, json={"instances": [broken]}, timeout=60)
        assert refused.status_code == 400 and "frames[3].keypoints3d" in refused.json()["error"]
        metrics = httpx.get(server.metrics_url, timeout=30).text
        assert 'stage="form-judge"' in metrics, "the same metrics as the built-in stages"
    finally:
        server.stop()


# ---- the spec, render, both routers, a video job -------------------------------------------------------------

def four_stage_spec(layouts: dict[str, Path], runtime: str = "kserve") -> dict:
    builtin = {s: {"storageUri": str(layouts[s])} for s in ("detect", "pose2d", "lift3d")}
    return {"metadata": {"name": "judged"}, "spec": {
        "runtime": runtime, "stages": builtin,
        "extraStages": [{"name": "form-judge", "storageUri": str(layouts["form-judge"])}]}}


def test_extra_stages_render_as_services_and_graph_steps(tmp_path):
    from posegraph.graph.kserve_objects import render
    from posegraph.graph.spec import parse_pipeline

    layouts = {s: tmp_path / s for s in ("detect", "pose2d", "lift3d", "form-judge")}
    objects = render(parse_pipeline(four_stage_spec(layouts)))
    isvcs = [o["metadata"]["name"] for o in objects if o["kind"] == "InferenceService"]
    assert isvcs == ["judged-detect", "judged-pose2d", "judged-lift3d", "judged-form-judge"]
    steps = objects[-1]["spec"]["nodes"]["root"]["steps"]
    assert [s["name"] for s in steps] == ["detect", "pose2d", "lift3d", "form-judge"]
    assert all("condition" not in s for s in steps), "the graph goes on past lift3d to the user's stage"
    for bad, message in [({"name": "lift3d"}, "built-in stage"), ({"name": "Judge"}, "DNS label")]:
        spec = four_stage_spec(layouts)
        spec["spec"]["extraStages"][0].update(bad)
        with pytest.raises(UsageError, match=message):
            parse_pipeline(spec)
    twice = four_stage_spec(layouts)
    twice["spec"]["extraStages"] *= 2
    with pytest.raises(UsageError, match="listed twice"):
        parse_pipeline(twice)


def test_the_operators_status_counts_every_stage():
    from posegraph.operator.resources import pipeline_status

    body = {"metadata": {"name": "judged", "generation": 1}, "spec": {"extraStages": [{"name": "form-judge"}]}}
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    status = pipeline_status(body, {s: ready for s in ("detect", "pose2d", "lift3d")}, ready)
    assert status["readyStages"] == "3/4" and status["phase"] != "Ready" and "form-judge" in status["message"]
    status = pipeline_status(body, {s: ready for s in ("detect", "pose2d", "lift3d", "form-judge")}, ready)
    assert status["readyStages"] == "4/4" and status["phase"] == "Ready"


@pytest.fixture(scope="module", params=["kserve", "torchserve"])
def judged_graph(request, checkpoints, form_judge_archive, kserve_router, tmp_path_factory):
    """Four stage servers (the form judge after lift3d) behind KServe's router, and posegraph's router
    on the same servers with the same spec."""
    from services import both_routers

    from posegraph.config import load_profile
    from posegraph.embedded import archives_for_profile
    from posegraph.graph.spec import parse_pipeline

    layouts = {**archives_for_profile(load_profile("cpu"), checkpoints), "form-judge": form_judge_archive}
    with both_routers(parse_pipeline(four_stage_spec(layouts, request.param)), layouts) as graph:
        yield graph


def test_a_track_through_both_routers_comes_back_lifted_then_judged(judged_graph):
    """lift3d lifts the track (random weights here: its 3D is noise), then the form judge judges
    that 3D: what comes back equals the form judge run here on lift3d's output, through either router."""
    import httpx

    from posegraph.frame import parse_document

    track, _ = squat_track(reps=2)
    answers = {name: httpx.post(url, json={"instances": [track.to_json()]}, timeout=120)
               for name, url in judged_graph.routers.items()}
    judge = load_user_stage(FORM_JUDGE)
    for name, answer in answers.items():
        assert answer.status_code == 200, (name, answer.text)
        (doc,) = answer.json()["predictions"]
        assert list(doc["stages"]) == ["lift3d", "form-judge"], doc["stages"]
        assert doc["frames"][0]["keypoints3d"] != track.frames[0].keypoints3d, "lift3d lifted it"
        lifted = {k: v for k, v in doc.items() if k not in ("exercise", "reps")}
        lifted["stages"] = {"lift3d": doc["stages"]["lift3d"]}
        (here,) = judge.run([parse_document(lifted)])
        assert (doc["exercise"], doc["reps"]) == (here.exercise, here.reps), name
    kserve, ours = (answers[n].json()["predictions"][0] for n in ("kserve", "posegraph"))
    assert (kserve["exercise"], kserve["reps"]) == (ours["exercise"], ours["reps"])


def test_a_video_job_through_the_graph_stores_and_exports_the_reps(judged_graph, clip_path, tmp_path):
    """The job's tracks go through the graph (no --lift3d): lift3d, then the form judge; its
    fields land in the store (tracks.results) and `posegraph export --format reps` writes them."""
    from posegraph.jobs.store import open_store

    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    done = posegraph_cli("job", "run", "--quiet", "--video", clip_path, "--graph", judged_graph.routers["kserve"],
                         "--results", db, "--output", tmp_path / "out", "--job-id", "judged", "--no-render",
                         timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    store = open_store(db)
    tracks = store.tracks("judged")
    store.close()
    judged = [t for t in tracks if t.lifted and t.results]
    assert judged and all("exercise" in t.results and isinstance(t.results["reps"], list) for t in judged)
    exported = posegraph_cli("export", "--results", db, "--job-id", "judged", "--format", "reps", "--out",
                             tmp_path / "reps")
    if any(t.results["reps"] for t in judged):
        assert exported.returncode == 0, exported.stderr
        header = (tmp_path / "reps" / "reps.csv").read_text().splitlines()[0]
        assert header.startswith("track_id,exercise,index,start_frame,bottom_frame,end_frame,depth_deg")
    else:  # random weights: noise moves too little, or too much, for a rep: said in one line
        assert exported.returncode != 0 and "no repetitions" in exported.stderr


# ---- the form judge's own tests, and `posegraph run --stage-dir` ------------------------------------------------

def test_the_form_judges_own_tests_pass():
    tested = subprocess.run([sys.executable, "-m", "pytest", str(FORM_JUDGE), "-q", "-p", "no:cacheprovider"],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert tested.returncode == 0 and " passed" in tested.stdout, tested.stdout[-3000:]


def test_posegraph_run_with_a_stage_dir_writes_the_tracks_results(checkpoints, clip_path, tmp_path):
    out = tmp_path / "run"
    done = posegraph_cli("run", clip_path, "--out", out, "--checkpoints", checkpoints, "--quiet",
                         "--stage-dir", FORM_JUDGE, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    tracks = [json.loads(line) for line in (out / "tracks.jsonl").read_text().splitlines()]
    assert tracks and all("exercise" in t and "reps" in t and "form-judge" in t["stages"] for t in tracks)
    refused = posegraph_cli("run", clip_path, "--out", tmp_path / "no", "--checkpoints", checkpoints,
                            "--stage-dir", tmp_path, timeout=120)
    assert refused.returncode != 0 and "posegraph-stage.yaml" in refused.stderr


def test_the_store_keeps_what_user_stages_wrote_and_old_stores_migrate(tmp_path):
    from posegraph.jobs.export import reps_csv
    from posegraph.jobs.rows import FrameRow, PersonRow
    from posegraph.jobs.store import SCHEMA, open_store, stored_frame_document

    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    assert store.migrate() == list(range(1, len(SCHEMA) + 1))
    store.begin_job("j", "v.mp4", {})
    store.commit_batch("j", [FrameRow(0, 0.0, "ok", None, 1)], [
        PersonRow(1, 0.9, [0, 0, 1, 1], None, None, None, None, {"height_m": 1.7}, frame_index=0, person_index=0)],
        [(1, 0, 0)], last_frame=0, tracker_state=None)
    store.write_lifted("j", 1, [(0, 0, [[0.0] * 3] * 17, [0.0, 0.0, 3.0], {"phase": "down"})],
                       results={"exercise": "squat", "reps": [{"index": 1, "feedback": ["a", "b"], "ok": False}]})
    (track,) = store.tracks("j")
    frame = store.frame_results("j", 0, 1)[0]
    store.close()
    assert track.results["exercise"] == "squat"
    person = stored_frame_document(frame, width=10, height=10, video_uri="v.mp4").persons[0]
    assert person.model_extra == {"height_m": 1.7, "phase": "down"}, "a user's fields back on the person"
    assert reps_csv([track]).splitlines() == ["track_id,exercise,index,feedback,ok", "1,squat,1,a; b,False"]


def test_posegraph_up_refuses_a_chain_whose_stage_reads_what_nobody_writes(tmp_path, form_judge_archive):
    """`posegraph up spec.yaml` reads each extra stage's archive (what it reads and writes) and puts
    the chain together before starting anything."""
    from posegraph.embedded.archives import check_user_stages
    from posegraph.graph.spec import parse_pipeline
    from posegraph.serving.archive import build_user_archive

    bmi = _stage_dir(tmp_path, GOOD.replace('reads = ("frames.keypoints3d",)', 'reads = ("frames.height_m",)')
                     .replace('name = "s"', 'name = "bmi"'))
    bmi_layout = tmp_path / "bmi-archive"
    # The probe cannot run a stage whose reads no probe document has: it is left to the chain check.
    build_user_archive(bmi, bmi_layout)
    layouts = {s: tmp_path / s for s in ("detect", "pose2d", "lift3d")} | {"form-judge": form_judge_archive,
                                                                             "bmi": bmi_layout}
    spec = four_stage_spec(layouts)
    check_user_stages(parse_pipeline(spec), layouts)  # the form judge reads lift3d's frames.keypoints3d
    spec["spec"]["extraStages"].append({"name": "bmi", "storageUri": str(bmi_layout)})
    with pytest.raises(UsageError, match="stage bmi reads track field 'frames.height_m', which no earlier stage"):
        check_user_stages(parse_pipeline(spec), layouts)
