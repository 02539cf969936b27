"""One emulated RunPod cluster for the module: a head pod and two GPU worker pods, as containers
of the pod image, provisioned by provision.yml and configured by site.yml over SSH
(scripts/cluster.py, with time-compressed rules: factor 12, a minute becomes 5 s)."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator

import pytest

from scripts.cluster import Cluster
from scripts.cluster_client import RunningCluster

TIME_FACTOR = 12


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    for tool in ("podman", "mmdebstrap", "ssh"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: `make system-deps` installs it (APT_PACKAGES in the Makefile)")
    state = tmp_path_factory.mktemp("cluster")
    made = Cluster(state_dir=state, prefix=f"gwt{secrets.token_hex(2)}", time_factor=TIME_FACTOR)
    try:
        endpoints = made.up(workers=2, gpus=4)
        yield RunningCluster(made, endpoints)
    finally:
        made.down()
