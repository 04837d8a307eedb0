"""Ray job: is the cluster usable? Prints the sysaware version, the Python the job runs on, and the cluster's
resources (total and free). The first job to submit to a new cluster (deploy/README.md):

    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(cat ~/.ray/auth_token)
    ray job submit --address http://127.0.0.1:8265 --working-dir . \
      --runtime-env-json "{\"env_vars\": {\"PATH\": \"$PWD/.venv/bin:/usr/bin:/bin\"}}" -- python jobs/cluster_check.py

A job whose ``python`` is not the environment's fails at ``import sysaware``, which is the point of running it.
"""

from __future__ import annotations

import json
import sys

import ray

import sysaware


def main() -> None:
    ray.init(logging_level="warning")  # inside `ray job submit`: RAY_ADDRESS names the job's cluster
    nodes = [n for n in ray.nodes() if n["Alive"]]
    report = {
        "sysaware_version": sysaware.__version__,
        "ray_version": ray.__version__,
        "python": sys.executable,
        "nodes": len(nodes),
        "cluster_resources": ray.cluster_resources(),
        "available_resources": ray.available_resources(),
    }
    print(f"sysaware {sysaware.__version__} on Ray {ray.__version__}, {len(nodes)} node(s), python {sys.executable}")
    print(json.dumps(report, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
