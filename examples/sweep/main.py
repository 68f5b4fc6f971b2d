"""A small hyperparameter sweep run as Ray tasks across the cluster's factories.

Submitted to a flambe cluster (``flambe-cluster submit CONFIG --ext scikit-learn
examples/sweep``), it trains support-vector classifiers on scikit-learn's
bundled handwritten-digits data set over a grid of ``C`` and ``gamma``, one
Ray task per trial, spread over the factories.  Each trial writes its result
on the factory that ran it (``~/flambe-output/sweep/trial-N.json``); the
driver, on the orchestrator, prints a results table naming the factory of
every trial and writes ``~/flambe-output/sweep/results.csv``.  ``flambe-cluster
pull CONFIG flambe-output/sweep LOCAL`` gathers all of it.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import ray

OUTPUT = Path.home() / "flambe-output" / "sweep"
GRID = [(c, gamma) for c in (0.1, 1.0, 10.0) for gamma in (1e-4, 1e-3, 1e-2)]


@ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
def trial(index: int, c: float, gamma: float) -> dict:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import cross_val_score
    from sklearn.svm import SVC

    features, labels = load_digits(return_X_y=True)
    accuracy = float(cross_val_score(SVC(C=c, gamma=gamma), features, labels, cv=3).mean())
    result = {"trial": index, "C": c, "gamma": gamma, "accuracy": accuracy, "node": ray.util.get_node_ip_address()}
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / f"trial-{index}.json").write_text(json.dumps(result))
    return result


def main() -> int:
    remote_env = json.loads(os.environ["FLAMBE_REMOTE_ENV"])
    factory_names = {ip: f"factory{i}" for i, ip in enumerate(remote_env["factories_ips"])}
    ray.init(log_to_driver=False)
    results = ray.get([trial.remote(i, c, gamma) for i, (c, gamma) in enumerate(GRID)])
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with open(OUTPUT / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["trial", "C", "gamma", "accuracy", "node", "factory"])
        writer.writeheader()
        for result in results:
            writer.writerow({**result, "factory": factory_names.get(result["node"], "?")})
    print(f"{'trial':>5}  {'C':>6}  {'gamma':>8}  {'accuracy':>8}  factory")
    for r in sorted(results, key=lambda r: -r["accuracy"]):
        print(f"{r['trial']:>5}  {r['C']:>6g}  {r['gamma']:>8g}  {r['accuracy']:>8.4f}  "
              f"{factory_names.get(r['node'], '?')} ({r['node']})")
    best = max(results, key=lambda r: r["accuracy"])
    print(f"best: C={best['C']:g} gamma={best['gamma']:g} accuracy={best['accuracy']:.4f}")
    used = sorted({factory_names.get(r["node"], "?") for r in results})
    print(f"trials ran on: {', '.join(used)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
