"""``posegraph stage new NAME --out DIR``: a working stage directory to start from.

It writes a frame stage that reads each person's 3D keypoints and writes their height, with its
description (posegraph-stage.yaml) and its test: a user replaces the three steps with their model
and keeps the shape (docs/write-a-stage.md).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import UsageError
from ..names import STAGES
from .user import STAGE_FILE

_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

STAGE_PY = '''"""{name}: a posegraph stage (docs/write-a-stage.md). Made by `posegraph stage new`; replace the
three steps with your model and keep the shape: what it reads, what it writes, nothing else."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from posegraph.stages.user import UserStage

HEAD, RIGHT_ANKLE, LEFT_ANKLE = 10, 3, 6  # Human3.6M joints (posegraph's keypoints3d order)


class {cls}(UserStage):
    name = "{name}"
    documents = "frame"  # or "track": a person's whole track (frames.keypoints3d, ...)
    reads = ("persons.keypoints3d",)
    writes = ("persons.{field}",)

    class Settings(UserStage.Settings):
        # posegraph-stage.yaml's settings, checked: a typo there is an error, not a default.
        head_top_m: float = Field(0.10, ge=0, description="from the head joint to the top of the head")

    def load(self) -> None:
        # Once, before the first batch: open your model here, e.g. an ONNX file beside this one:
        #   import onnxruntime; self.session = onnxruntime.InferenceSession(str(self.directory / "model.onnx"))
        pass

    def preprocess(self, docs):
        """Documents → one array for the whole batch: every person's 3D keypoints."""
        people = [(d, i) for d, doc in enumerate(docs) for i, _ in enumerate(doc.persons)]
        points = np.asarray([docs[d].persons[i].keypoints3d for d, i in people], np.float64).reshape(-1, 17, 3)
        return people, points

    def infer(self, batch):
        """The model: here, head to the lower ankle, plus the top of the head."""
        _, points = batch
        ankles = np.minimum(np.linalg.norm(points[:, HEAD] - points[:, RIGHT_ANKLE], axis=-1),
                            np.linalg.norm(points[:, HEAD] - points[:, LEFT_ANKLE], axis=-1))
        return ankles + self.settings.head_top_m

    def postprocess(self, docs, batch, outputs):
        """Each output into its document: only the fields in ``writes``."""
        people, _ = batch
        for (d, i), height in zip(people, outputs):
            docs[d].persons[i].{field} = round(float(height), 3)
'''

STAGE_YAML = '''# A posegraph stage directory (docs/write-a-stage.md).
# Try it:   pytest {out}
# Pack it:  posegraph models archive --stage-dir {out} --out archives/{name}
module: stage.py
class: {cls}
settings:
  head_top_m: 0.10
'''

TEST_PY = '''"""{name}'s tests: `pytest {out}`. The stage is loaded the way posegraph serves it, checked on
posegraph's probe document (a synthetic walk), and its contract is held."""

from __future__ import annotations

from pathlib import Path

import pytest

from posegraph.stages.user import StageContractError, load_user_stage, probe_document

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def stage():
    return load_user_stage(HERE)


def test_it_writes_what_it_declares(stage):
    (doc,) = stage.run([probe_document("frame")])
    person = doc.persons[0]
    assert 1.4 < person.{field} < 2.2, "a person's height, metres"
    assert doc.stages["{name}"].model == "user:{name}"


def test_track_documents_pass_through(stage):
    track = probe_document("track")
    before = track.to_json()
    (after,) = stage.run([track])
    assert after.to_json() == before


def test_a_field_it_does_not_declare_is_refused(stage, monkeypatch):
    def sneaky(docs, batch, outputs):
        docs[0].persons[0].score = 0.0

    monkeypatch.setattr(stage.stage, "postprocess", sneaky)
    with pytest.raises(StageContractError, match="persons.score"):
        stage.run([probe_document("frame")])
'''


def new_stage(name: str, out: Path) -> list[Path]:
    """Write the skeleton for stage ``name`` into ``out`` (created; refused if it holds files)."""
    if not _NAME.match(name) or len(name) > 40:
        raise UsageError(f"stage name {name!r}: lowercase letters, digits and '-', starting with a letter "
                         "(it becomes an InferenceService's name)")
    if name in STAGES:
        raise UsageError(f"{name!r} is a built-in stage's name; choose another")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty: give a new directory")
    cls = "".join(part.capitalize() for part in name.split("-")) + "Stage"
    field = name.replace("-", "_") + "_height_m"
    values = {"name": name, "cls": cls, "field": field, "out": out}
    out.mkdir(parents=True, exist_ok=True)
    files = {"stage.py": STAGE_PY, STAGE_FILE: STAGE_YAML, "test_stage.py": TEST_PY}
    written = []
    for filename, template in files.items():
        path = out / filename
        path.write_text(template.format(**values))
        written.append(path)
    return written
