"""A user's stage: a model (or any code) of their own as a node of the graph, outside posegraph.

The contract (docs/write-a-stage.md). A user's stage is a class in a Python module of their own:

    from posegraph.stages.user import UserStage

    class FormJudge(UserStage):
        name = "form-judge"              # a DNS label: its archive's and its InferenceService's suffix
        documents = "track"              # "frame": each image's document; "track": a person's whole track
        reads = ("frames.keypoints3d",)  # the fields it needs (a frame's: "width", "persons.keypoints3d")
        writes = ("reps",)               # the fields it adds; nothing else may change

        class Settings(UserStage.Settings):  # its configuration (stage.yaml's settings), checked
            exercise: str = "auto"

        def load(self): ...              # once: self.directory holds its files (an ONNX, say)
        def preprocess(self, docs): ...  # documents → a batch
        def infer(self, batch): ...      # the batch → outputs
        def postprocess(self, docs, batch, outputs): ...  # outputs → each document's own fields

A field is a document's top-level key (``reps``), or a key of each of its persons (frame
documents: ``persons.<key>``) or frames (track documents: ``frames.<key>``), the way the frame
contract (posegraph.frame) nests them. Whatever a stage does not declare it leaves alone: the run
compares every document before and after, and a stage that wrote (or changed) a field it did not
declare fails its batch with one line naming the field, as does a stage that reads one no earlier
stage writes when a pipeline is put together (:func:`check_chain`). When a stage is loaded it is run
once on a probe document (a synthetic walk, posegraph.motion.synthetic), so both show up then, not
on the first real request.

:class:`UserStageRunner` is the thin adapter the in-process pipeline and both model servers call
(the same ``run(docs)`` as the built-in stages'); :func:`load_user_stage` imports a stage directory
(``posegraph stage new`` writes one; ``posegraph models archive --stage-dir`` packs one).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import MissingInput, PosegraphError, UsageError
from ..frame import FrameDocument, Person, StageRecord, TrackDocument, TrackFrame
from ..motion.synthetic import walk
from ..names import STAGES

log = logging.getLogger(__name__)

STAGE_FILE = "posegraph-stage.yaml"  # a stage directory's description: name, module, class, settings
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_FIELD = re.compile(r"^(?:(persons|frames)\.)?[A-Za-z_][A-Za-z0-9_]*$")

# What a document holds before any stage ran (what a client or the video runner sends), and what
# each built-in stage adds: the fields a user's stage may read. One place, checked against the
# stages by tests/test_user_stages.py.
GIVEN = {
    "frame": ("image", "width", "height", "frame_index", "timestamp_s", "camera", "keep_image", "per_track_3d"),
    "track": ("track_id", "width", "height", "camera", "fps", "lift_frames", "frames", "frames.frame_index", "frames.bbox",
              "frames.score", "frames.keypoints2d", "frames.landmarks"),
}
BUILTIN_WRITES = {
    "detect": {"frame": ("persons", "persons.bbox", "persons.score", "persons.roi"), "track": ()},
    "pose2d": {"frame": ("persons.keypoints2d", "persons.landmarks", "persons.track_id"), "track": ()},
    "lift3d": {"frame": ("persons.keypoints3d", "persons.root3d"),
               "track": ("frames.keypoints3d", "frames.root3d")},
}


class StageContractError(PosegraphError):
    """A user's stage broke its contract: it wrote a field it did not declare, or its description
    is wrong. The stage's fault, not the request's: a server answers 500."""


class UserStage:
    """Base of a user's stage (the module docstring has the contract)."""

    name: ClassVar[str]
    documents: ClassVar[Literal["frame", "track"]]
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, settings: dict[str, Any] | None = None, directory: Path | None = None) -> None:
        self.settings = self.Settings.model_validate(settings or {})
        self.directory = Path(directory) if directory is not None else None

    def load(self) -> None:
        """Once, before the first batch: open files under ``self.directory`` (an ONNX model, say)."""

    def preprocess(self, docs: Sequence[Any]) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def infer(self, batch: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def postprocess(self, docs: Sequence[Any], batch: Any, outputs: Any) -> None:  # pragma: no cover
        raise NotImplementedError


# ---- the contract ---------------------------------------------------------------------------------------

def check_declaration(cls: type) -> None:
    """The class attributes of a user's stage, or StageContractError in one line."""
    where = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__name__', cls)}"
    if not (isinstance(cls, type) and issubclass(cls, UserStage)):
        raise StageContractError(f"{where} is not a posegraph.stages.user.UserStage")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _DNS_LABEL.match(name) or len(name) > 40:
        raise StageContractError(f"{where}: name must be a DNS label of at most 40 characters, not {name!r}")
    if name in STAGES:
        raise StageContractError(f"{where}: {name!r} is a built-in stage's name; choose another")
    if getattr(cls, "documents", None) not in ("frame", "track"):
        raise StageContractError(f"{where}: documents must be 'frame' or 'track', not {getattr(cls, 'documents', None)!r}")
    nested = "persons" if cls.documents == "frame" else "frames"
    for attr in ("reads", "writes"):
        fields = getattr(cls, attr)
        if isinstance(fields, str) or not all(isinstance(f, str) and _FIELD.match(f) for f in fields):
            raise StageContractError(f"{where}: {attr} must be a list of field names like 'reps' or "
                                     f"'{nested}.keypoints3d', not {fields!r}")
        wrong = [f for f in fields if f.split(".")[0] in ("persons", "frames") and "." in f
                 and not f.startswith(nested + ".")]
        if wrong:
            raise StageContractError(f"{where}: {attr} names {wrong[0]!r}, but a {cls.documents} document "
                                     f"nests its items under {nested!r}")
    if not cls.writes:
        raise StageContractError(f"{where}: writes is empty: a stage adds at least one field")
    given = set(GIVEN[cls.documents]) | {f for w in BUILTIN_WRITES.values() for f in w[cls.documents]}
    taken = sorted(set(cls.writes) & (given | {"stages", "schema", nested}))
    if taken:
        raise StageContractError(f"{where}: writes {taken[0]!r}, which posegraph's own stages write; "
                                 "name your field differently")


def check_chain(stages: Sequence[tuple[str, str, Sequence[str], Sequence[str]]]) -> None:
    """Stages in graph order as (name, documents, reads, writes): every read must be given or
    written by an earlier stage for the same kind of document; UsageError in one line otherwise."""
    written: dict[str, dict[str, str]] = {kind: {f: "given" for f in GIVEN[kind]} for kind in GIVEN}
    for name, kind, reads, writes in stages:
        for field in reads:
            if field not in written[kind]:
                earlier = [n for n, *_ in stages[: [s[0] for s in stages].index(name)]]
                raise UsageError(f"stage {name} reads {kind} field {field!r}, which no earlier stage writes "
                                 f"(earlier: {', '.join(earlier) or 'none'})")
        for field in writes:
            written[kind].setdefault(field, name)


def builtin_chain(names: Sequence[str]) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    """The built-in stages among ``names`` as check_chain's entries (what they write)."""
    return [(n, kind, (), BUILTIN_WRITES[n][kind]) for n in names if n in BUILTIN_WRITES for kind in ("frame", "track")]


def _fields(doc) -> dict[str, str]:
    """Field path → its JSON, for the contract's comparison (``stages`` is the runner's own)."""
    data = doc.to_json()
    data.pop("stages", None)
    out: dict[str, str] = {}
    nested = "persons" if isinstance(doc, FrameDocument) else "frames"
    for key, value in data.items():
        if key == nested and isinstance(value, list):
            out[key] = json.dumps(len(value))
            for i, item in enumerate(value):
                for k, v in item.items():
                    out[f"{nested}.{k}#{i}"] = json.dumps(v, sort_keys=True)
            continue
        out[key] = json.dumps(value, sort_keys=True)
    return out


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {key.split("#")[0] for key in set(before) | set(after) if before.get(key) != after.get(key)}


def _missing(doc, reads: Sequence[str]) -> list[str]:
    missing = []
    for field in reads:
        if "." in field:
            nested, key = field.split(".", 1)
            items = getattr(doc, nested, None)
            if items is None:
                missing.append(nested)
                continue
            missing += [f"{nested}[{i}].{key}" for i, item in enumerate(items) if _value(item, key) is None]
        elif _value(doc, field) is None:
            missing.append(field)
    return missing


def _value(model: BaseModel, key: str) -> Any:
    if key in type(model).model_fields:
        return getattr(model, key)
    return (model.model_extra or {}).get(key)


# ---- running one --------------------------------------------------------------------------------------------

class UserStageRunner:
    """A user's stage as posegraph runs every stage: ``run(docs)`` over a batch of documents, the
    ones of its kind worked on, the others passed through, its contract enforced, itself recorded
    in each document's ``stages``."""

    random_weights = False

    def __init__(self, stage: UserStage) -> None:
        check_declaration(type(stage))
        self.stage = stage
        self.name = stage.name
        self.documents = stage.documents
        self.reads, self.writes = tuple(stage.reads), tuple(stage.writes)
        self.model = f"user:{stage.name}"

    def accepts(self, doc) -> bool:
        """Documents of its kind; not a video job's frames when it reads lift3d's fields: their 3D
        comes per track after the graph (``per_track_3d``), as lift3d leaves them alone too."""
        if self.documents == "track":
            return isinstance(doc, TrackDocument)
        return isinstance(doc, FrameDocument) and not (
            doc.per_track_3d and set(self.reads) & set(BUILTIN_WRITES["lift3d"]["frame"]))

    def run(self, docs: Sequence[Any]) -> list[Any]:
        docs = list(docs)
        mine = [d for d in docs if self.accepts(d)]
        if not mine:
            return docs
        for i, doc in enumerate(mine):
            missing = _missing(doc, self.reads)
            if missing:
                raise MissingInput(self.name, missing[:3] + (["…"] if len(missing) > 3 else []),
                                   where=f"{self.documents} document")
        before = [_fields(d) for d in mine]
        started = time.perf_counter()
        batch = self.stage.preprocess(mine)
        outputs = self.stage.infer(batch)
        self.stage.postprocess(mine, batch, outputs)
        ms = (time.perf_counter() - started) * 1000
        for doc, seen in zip(mine, before):
            undeclared = sorted(_changed(seen, _fields(doc)) - set(self.writes))
            if undeclared:
                raise StageContractError(f"stage {self.name} wrote {undeclared[0]!r}, which it does not declare "
                                         f"(writes: {', '.join(self.writes)})")
            doc.stages[self.name] = StageRecord(model=self.model, ms=round(ms, 2))
        return docs

    __call__ = run

    def probe(self) -> None:
        """Run once on a probe document (module docstring); its errors, in one line, are the load's.
        A stage reading another user stage's fields is probed with the pipeline (probe_chain)."""
        available = set(GIVEN[self.documents]) | {f for w in BUILTIN_WRITES.values() for f in w[self.documents]}
        if not set(self.reads) <= available:
            log.info("stage %s reads fields of other stages (%s): probed with its pipeline", self.name,
                     ", ".join(sorted(set(self.reads) - available)))
            return
        try:
            self.run([probe_document(self.documents)])
        except StageContractError:
            raise
        except MissingInput as exc:
            raise StageContractError(f"stage {self.name} failed on posegraph's probe document: {exc}") from None
        except Exception as exc:  # the user's code: any error, named
            raise StageContractError(f"stage {self.name} failed on posegraph's probe {self.documents} document: "
                                     f"{type(exc).__name__}: {exc}") from exc


def probe_document(kind: str) -> FrameDocument | TrackDocument:
    """What every field a built-in stage writes looks like, on a synthetic walk (3 s at 30 frames/s;
    a frame: its first frame, one person)."""
    w = walk(3.0, 30.0)
    boxes = [[*k[:, :2].min(0), *k[:, :2].max(0)] for k in w.keypoints2d]
    if kind == "frame":
        return FrameDocument(width=w.width, height=w.height, frame_index=0, timestamp_s=0.0, persons=[Person(
            bbox=boxes[0], score=0.9, track_id=1, keypoints2d=w.keypoints2d[0].tolist(),
            keypoints3d=w.keypoints3d[0].tolist(), root3d=w.root[0].tolist())])
    return TrackDocument(track_id=1, width=w.width, height=w.height, fps=w.fps, frames=[
        TrackFrame(frame_index=i, bbox=boxes[i], score=0.9, keypoints2d=w.keypoints2d[i].tolist(),
                   keypoints3d=w.keypoints3d[i].tolist(), root3d=w.root[i].tolist()) for i in range(len(boxes))])


# ---- a stage directory ----------------------------------------------------------------------------------------

def read_stage_file(directory: Path) -> dict[str, Any]:
    """A stage directory's posegraph-stage.yaml: module (a .py file in the directory), class, settings."""
    directory = Path(directory)
    path = directory / STAGE_FILE
    if not path.is_file():
        raise UsageError(f"{directory} has no {STAGE_FILE}: not a stage directory (posegraph stage new writes one)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("module"), str) or not isinstance(data.get("class"), str):
        raise UsageError(f"{path}: needs 'module' (a .py file in the directory) and 'class' (the stage's class)")
    if not isinstance(data.get("settings", {}), dict):
        raise UsageError(f"{path}: settings must be a mapping")
    module = directory / data["module"]
    if module.suffix != ".py" or module.parent.resolve() != directory.resolve() or not module.is_file():
        raise UsageError(f"{path}: module {data['module']!r} must be a .py file in {directory}")
    return data


def import_stage_class(directory: Path, description: dict[str, Any]) -> type:
    """The stage's class, imported from its module under a name of its own (two stage directories
    may both have a stage.py), with the directory on sys.path for its own helpers."""
    directory = Path(directory).resolve()
    module_file = directory / description["module"]
    module_name = f"posegraph_user_stage_{abs(hash(str(module_file))):x}"
    spec = importlib.util.spec_from_file_location(module_name, module_file)
    if spec is None or spec.loader is None:
        raise UsageError(f"{module_file}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise StageContractError(f"{module_file.name}: importing it failed: {type(exc).__name__}: {exc}") from exc
    cls = getattr(module, description["class"], None)
    if cls is None:
        raise UsageError(f"{module_file.name} has no class {description['class']!r} (posegraph-stage.yaml)")
    check_declaration(cls)
    return cls


def load_user_stage(directory: Path, settings: dict[str, Any] | None = None, *, probe: bool = True) -> UserStageRunner:
    """A stage directory, imported, configured, loaded and (``probe``) tried on a probe document."""
    directory = Path(directory)
    description = read_stage_file(directory)
    cls = import_stage_class(directory, description)
    merged = {**description.get("settings", {}), **(settings or {})}
    try:
        stage = cls(merged, directory)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise UsageError(f"stage {cls.name}: settings.{loc}: {first['msg']}") from None
    stage.load()
    runner = UserStageRunner(stage)
    if probe:
        runner.probe()
    log.info("user stage %s (%s documents; reads %s; writes %s) from %s", runner.name, runner.documents,
             ", ".join(runner.reads) or "nothing", ", ".join(runner.writes), directory)
    return runner
