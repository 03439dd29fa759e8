"""Checkpoints are data, not code: loading one never runs what its author pickled into it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="loading .pth checkpoints needs PyTorch (the [models] extra)")


class _Payload:
    """What a hostile checkpoint carries: unpickling it runs a command (here: creates a file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile_checkpoint(tmp_path: Path, marker: Path) -> Path:
    path = tmp_path / "hostile.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "meta": {"x": _Payload(marker)}}, path)
    return path


def test_a_checkpoint_that_runs_code_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    from posegraph.models.checkpoints import UNSAFE_ENV, load_state_dict
    from posegraph.errors import PosegraphError

    monkeypatch.delenv(UNSAFE_ENV, raising=False)
    marker = tmp_path / "pwned"
    path = _hostile_checkpoint(tmp_path, marker)
    with pytest.raises(PosegraphError) as info:
        load_state_dict(str(path))
    assert not marker.exists(), "loading the checkpoint ran its payload"
    message = str(info.value)
    assert "not loadable as data" in message and UNSAFE_ENV in message and "runs whatever code" in message


def test_the_unsafe_flag_is_explicit_and_says_the_risk(tmp_path):
    """Off by default; when set it works and logs what it risks (run in a child: it does run the payload)."""
    marker = tmp_path / "ran"
    path = _hostile_checkpoint(tmp_path, marker)
    code = ("import logging; logging.basicConfig(level=logging.WARNING); "
            f"from posegraph.models.checkpoints import load_state_dict; print(sorted(load_state_dict({str(path)!r}).state_dict))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "POSEGRAPH_UNSAFE_UNPICKLE": "1"})
    assert result.returncode == 0, result.stderr
    assert "['w']" in result.stdout
    assert "can run any code" in result.stderr
    assert marker.exists()  # the flag really unpickles: that is its risk


def test_mmengine_style_meta_with_numpy_loads_as_data(tmp_path):
    """What official mmengine checkpoints keep in meta (numpy arrays and scalars) loads safely."""
    from posegraph.models.checkpoints import load_state_dict

    path = tmp_path / "official-like.pth"
    meta = {"epoch": 420, "seed": np.int64(7), "hist": np.arange(4, dtype=np.float32), "lr": np.float64(1e-3),
            "flags": np.array([True, False])}
    torch.save({"state_dict": {"backbone.w": torch.ones(3)}, "meta": meta}, path)
    loaded = load_state_dict(str(path))
    assert list(loaded.state_dict) == ["backbone.w"]
    assert torch.equal(loaded.state_dict["backbone.w"], torch.ones(3))
