"""Kubernetes client configuration: in-cluster when in a pod, else $KUBECONFIG.

The kubernetes package reads KUBECONFIG once, when it is imported; reading it here at call time
lets a process (or a test) point at another cluster after that import.
"""

from __future__ import annotations

import os


def client():
    """The configured ``kubernetes.client`` module."""
    from kubernetes import client as k8s_client
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
    return k8s_client
