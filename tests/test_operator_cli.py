"""`python -m posegraph.operator` as a real process against kmock (its own emulator, so no other
operator instance shares it)."""

from __future__ import annotations

import os
import subprocess
import sys

from test_operator import EXAMPLES, apply, cluster, get, wait  # noqa: F401  (the cluster fixture)


def test_python_m_posegraph_operator_runs_against_a_kubeconfig(cluster, tmp_path):
    """The one command that runs the operator locally, as a real process."""
    import httpx
    from services import free_port

    port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "posegraph.operator", "--liveness",
                             f"http://127.0.0.1:{port}/healthz", "--metrics-port", str(metrics_port)],
                            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig),
                                 "POSEGRAPH_OPERATOR_METRICS_HOST": "127.0.0.1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200, timeout=30, what="liveness")
        apply(cluster, EXAMPLES / "posepipeline.yaml", name="p-cli")
        wait(lambda: get(cluster, "inferencegraphs", "p-cli", "serving.kserve.io", "v1alpha1"), what="its graph")
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert 'posegraph_operator_reconciles_total{kind="PosePipeline"}' in metrics
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert "Traceback" not in output, output[-2000:]
