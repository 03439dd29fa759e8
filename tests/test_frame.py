"""The frame document: validation, pass-through of unknown fields, the KServe v1 envelope, the schemas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posegraph.errors import BadInput
from posegraph.frame import FRAME_SCHEMA, TRACK_SCHEMA, FrameDocument, TrackDocument, json_schemas, parse_document

REPO = Path(__file__).resolve().parents[1]


def kp(n=17, w=3, v=1.0):
    return [[v] * w for _ in range(n)]


def test_round_trip_keeps_unknown_fields_and_schema_tag():
    payload = {
        "schema": FRAME_SCHEMA,
        "width": 640,
        "height": 480,
        "frame_index": 7,
        "client_ref": {"camera": "north"},
        "persons": [{"bbox": [1, 2, 30, 40], "score": 0.9, "keypoints2d": kp(), "note": "kept"}],
    }
    doc = parse_document(payload)
    out = doc.to_json()
    assert out["schema"] == FRAME_SCHEMA
    assert out["client_ref"] == {"camera": "north"}
    assert out["persons"][0]["note"] == "kept"
    assert out["persons"][0]["bbox"] == [1.0, 2.0, 30.0, 40.0]
    assert parse_document(json.loads(json.dumps(out))).to_json() == out


def test_kserve_v1_envelope_carries_documents():
    """{"instances": [doc, ...]} in, {"predictions": [doc, ...]} out: plain JSON both ways."""
    docs = [FrameDocument(width=10, height=10, persons=[]).to_json(),
            TrackDocument(track_id=1, width=10, height=10,
                          frames=[{"frame_index": 0, "bbox": [0, 0, 5, 5], "keypoints2d": kp()}]).to_json()]
    request = json.dumps({"instances": docs})
    parsed = [parse_document(d) for d in json.loads(request)["instances"]]
    assert [type(d) for d in parsed] == [FrameDocument, TrackDocument]
    response = {"predictions": [d.to_json() for d in parsed]}
    assert json.loads(json.dumps(response))["predictions"][1]["schema"] == TRACK_SCHEMA


@pytest.mark.parametrize(
    "payload,message",
    [
        ([1, 2], "must be a JSON object"),
        ({"schema": "posegraph/frame/v9"}, "unknown schema"),
        ({"persons": [{"bbox": [1, 2, 3], "score": 1}]}, "persons.0.bbox"),
        ({"persons": [{"bbox": [1, 2, 3, 4], "score": 1, "keypoints2d": kp(16)}]}, "17 points"),
        ({"persons": [{"bbox": [1, 2, 3, float("nan")], "score": 1}]}, "finite"),
        ({"persons": [{"bbox": [5, 2, 5, 9], "score": 1}]}, "x2 > x1"),
        ({"image": {}}, "exactly one of 'data'"),
        ({"image": {"data": "AAAA", "uri": "s3://b/k"}}, "exactly one of 'data'"),
        ({"width": 0, "height": 5}, "width"),
        ({"schema": TRACK_SCHEMA, "track_id": 1, "width": 5, "height": 5, "frames": []}, "frames"),
    ],
)
def test_bad_documents_give_one_readable_error(payload, message):
    with pytest.raises(BadInput) as info:
        parse_document(payload)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_persons_absent_versus_empty_are_different_states():
    assert parse_document({"width": 4, "height": 4}).persons is None  # detection has not run
    assert parse_document({"width": 4, "height": 4, "persons": []}).persons == []  # nobody found


def test_published_json_schemas_are_current():
    """docs/schemas/*.json are generated from the code (`posegraph schema`); they must not drift."""
    for name, schema in json_schemas().items():
        published = REPO / "docs" / "schemas" / name
        assert published.is_file(), f"run `posegraph schema` to write {published}"
        assert json.loads(published.read_text()) == schema, f"{published} is stale: run `posegraph schema`"


def test_schema_validates_a_real_document_with_jsonschema():
    import jsonschema

    schema = json_schemas()["frame-document.schema.json"]
    good = FrameDocument(width=3, height=3, persons=[{"bbox": [0, 0, 1, 1], "score": 0.5}]).to_json()
    jsonschema.validate(good, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good, "persons": [{"score": 0.5}]}, schema)
