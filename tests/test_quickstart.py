"""The README's first command: a local cluster, the example sweep across both factories, results back, down."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest
from flambe_cluster.testing.hosts import require_root_namespaces

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.hosts  # the local provider builds the README's cluster on this machine
def test_quickstart_prints_the_results_table(tmp_path):
    reason = require_root_namespaces()
    if reason:
        pytest.skip(f"the quick start as root builds namespaced hosts: {reason}")
    results = tmp_path / "results"
    env = {**os.environ, "FLAMBE_CLUSTER_HOME": str(tmp_path / "state")}
    done = subprocess.run(["bash", "scripts/quickstart.sh", str(results)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "trial       C     gamma  accuracy  factory" in done.stdout
    assert "trials ran on: factory0, factory1" in done.stdout
    with open(results / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 9 and {r["factory"] for r in rows} == {"factory0", "factory1"}
    assert len(list(results.glob("trial-*.json"))) == 9, "each factory's trial files are gathered"
    assert "cluster 'quickstart' is down" in done.stderr
    assert not (tmp_path / "state" / "clusters" / "quickstart" / "local-hosts.json").exists()
