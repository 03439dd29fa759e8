"""Test tiers: the markers `make test-fast` and `make test` select by (tests/conftest.py applies them)."""

from __future__ import annotations

import os

import pytest

# ---- tiers ----------------------------------------------------------------------------------------
# A test's tier follows from what it uses, so no test is marked by hand: a fixture that starts
# something slow says which tier it is (@tier below), and every test that uses it, directly or
# through another fixture, gets that marker; a module that is one tier as a whole is named in
# MODULE_TIERS. What is left is the fast tier (`make test-fast`: `-m fast`), and a guard holds it to
# its promise: a fast test that opens a network socket (a server, or a connection to one) fails,
# naming the fixture to use (a test that starts servers itself asks for `starts_servers`). kmock's in-process API emulator is the exception, on loopback: the
# operator's unit tests run against it (the brief keeps them as the fast tier of the operator).
TIERS = {
    "servers": "starts posegraph's or third-party servers on loopback (stage servers, graphs, S3, PostgreSQL)",
    "control_plane": "a real kube-apiserver, etcd and controller-manager (and KServe's controller)",
    "node": "a real one-node cluster: kubelet, containerd, the chart's pods",
    "images": "builds or runs the container images with Docker",
    "browser": "drives Debian's Chromium",
    "blender": "runs Debian's Blender headless (importing the motion exports, converting GLB to FBX)",
    "reference": "the OpenMMLab reference stack (fidelity)",
    "fast": "none of the above: the unit tier, `make test-fast`",
}
MODULE_TIERS = {"test_node.py": "node", "test_images.py": "images", "test_kind_skaffold.py": "images",
                "test_processes.py": "servers", "test_fidelity.py": "reference"}


def tier(name: str):
    """Declare the tier of a fixture (put it under @pytest.fixture)."""
    assert name in TIERS and name != "fast", name

    def mark(function):
        function.posegraph_tier = name
        return function

    return mark


def loopback(function):
    """A fixture whose loopback sockets the fast tier allows (kmock's emulator; see TIERS)."""
    function.posegraph_loopback = True
    return function




def missing(reason: str):
    """A tool a test needs is not installed: a skip that says why, except under `make test`, which
    installs every one of them; there its absence is a broken install, and fails (a fresh clone
    once skipped all 29 fidelity tests because mmpose lost matplotlib)."""
    if os.environ.get("POSEGRAPH_FULL_SUITE") == "1":
        pytest.fail(f"{reason} [under `make test`, which installs it: a broken install]")
    pytest.skip(reason)
