"""BlazePose (issue 29): real pose weights from the mediapipe wheel on PyPI, converted from TFLite to
ONNX by posegraph (models/tflite.py) and checked against Google's own TFLite runtime (ai-edge-litert)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import zipfile

import numpy as np
import pytest

MODELS = {"blazepose-detector": (224, 224), "blazepose-full": (256, 256)}


def _litert(path, x: np.ndarray) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}


def _converted(path, x: np.ndarray) -> dict[str, np.ndarray]:
    from posegraph.models.engine import load_network
    from posegraph.models.zoo import get_model

    network = load_network(get_model(path.stem), str(path))
    names = [o.name for o in network.session.get_outputs()]
    return dict(zip(names, network(x)))


@pytest.mark.parametrize("model", MODELS)
def test_the_onnx_conversion_computes_what_tflite_computes(blazepose_weights, model, astronaut):
    """Every output, on noise and on a real photo, within 5e-4 of the output's own range: the same
    network (fp16 weights densified and widened once, at conversion); what is left is float32
    summed in another order over ~100 layers (the largest seen: 1.1e-4, the segmentation logits)."""
    import cv2

    path = blazepose_weights / f"{model}.tflite"
    h, w = MODELS[model]
    photo = cv2.resize(cv2.cvtColor(astronaut, cv2.COLOR_BGR2RGB), (w, h)).astype(np.float32)
    inputs = {"noise": np.random.default_rng(0).random((1, h, w, 3), dtype=np.float32),
              "photo": (photo / 127.5 - 1.0)[None] if model == "blazepose-detector" else (photo / 255.0)[None]}
    for what, x in inputs.items():
        expected, got = _litert(path, x), _converted(path, x)
        assert set(got) == set(expected)
        for name, value in expected.items():
            assert got[name].shape == value.shape, name
            scale = max(float(np.abs(value).max()), 1e-3)
            assert np.abs(got[name] - value).max() <= 5e-4 * scale, (what, name)


def test_the_conversion_takes_a_batch(blazepose_weights):
    path = blazepose_weights / "blazepose-full.tflite"
    x = np.random.default_rng(1).random((3, 256, 256, 3), dtype=np.float32)
    batched = _converted(path, x)
    for i in range(3):
        alone = _converted(path, x[i : i + 1])
        for name in batched:
            np.testing.assert_allclose(batched[name][i : i + 1], alone[name], rtol=1e-4, atol=1e-4)


def test_an_operator_the_converter_does_not_know_is_named(tmp_path, blazepose_weights, monkeypatch):
    from posegraph.models import tflite

    monkeypatch.setattr(tflite, "_builtin_names", lambda: {})  # every operator unknown
    with pytest.raises(tflite.ConversionError, match="TFLite operator \\? is not converted"):
        tflite.convert(blazepose_weights / "blazepose-detector.tflite")


def test_fetched_weights_carry_their_licence_and_where_they_came_from(blazepose_weights):
    from posegraph.models.zoo import get_model

    for model in MODELS:
        spec = get_model(model)
        path = blazepose_weights / f"{model}.tflite"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.wheel.sha256
        assert "Apache License" in (blazepose_weights / f"{model}.tflite.LICENSE").read_text()
        facts = json.loads((blazepose_weights / f"{model}.tflite.json").read_text())
        assert facts["source"] == spec.wheel.wheel_url and facts["licence"] == "Apache-2.0"


def test_a_wheel_is_taken_apart_only_when_its_hashes_match(blazepose_weights, tmp_path, starts_servers):
    """The fetch path against a real HTTP server holding a wheel: its member is taken out and
    checked; a wheel whose bytes are not the pinned ones is refused and not kept."""
    from posegraph.errors import FetchError
    from posegraph.models.checkpoints import fetch_from_wheel
    from posegraph.models.zoo import get_model

    spec = get_model("blazepose-detector")
    served = tmp_path / "served"
    served.mkdir()
    wheel = served / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(blazepose_weights / "blazepose-detector.tflite", spec.wheel.member)
        archive.writestr(spec.wheel.licence_member, "Apache License, Version 2.0")
    with starts_servers.http_file_server(served) as url:
        good = dataclasses.replace(spec, wheel=dataclasses.replace(
            spec.wheel, wheel_url=f"{url}/fake.whl", wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest()))
        dest = fetch_from_wheel(good, tmp_path / "out" / "blazepose-detector.tflite", progress=False)
        assert dest.read_bytes() == (blazepose_weights / "blazepose-detector.tflite").read_bytes()
        shutil.rmtree(tmp_path / "out")
        tampered = dataclasses.replace(spec, wheel=dataclasses.replace(good.wheel, wheel_url=f"{url}/fake.whl?v=2",
                                                                        wheel_sha256="0" * 64))
        with pytest.raises(FetchError, match="does not match its pinned sha256"):
            fetch_from_wheel(tampered, tmp_path / "out" / "blazepose-detector.tflite", progress=False)
        assert not (tmp_path / "out" / "blazepose-detector.tflite").exists()


def test_blazepose_has_no_random_weights(tmp_path):
    from posegraph.errors import UsageError
    from posegraph.models.checkpoints import write_random
    from posegraph.models.zoo import get_model

    with pytest.raises(UsageError, match="no random form"):
        write_random(get_model("blazepose-full"), tmp_path / "x.tflite")
