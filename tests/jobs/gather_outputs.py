"""Test job: rebuilds the cluster's RemoteEnvironment from its environment and gathers ``~/outputs`` from every
factory, as a Flambé experiment does at its end; prints what it found (``env ...``, ``gathered ...``)."""

import configparser
import json
import os
from pathlib import Path

from flambe_cluster import RemoteEnvironment

env = RemoteEnvironment.from_env()
print("env", json.dumps({"orchestrator_ip": env.orchestrator_ip, "factories_ips": list(env.factories_ips),
                         "user": env.user, "local_user": env.local_user}), flush=True)
print("ray", os.environ["RAY_ADDRESS"], flush=True)
secrets = configparser.ConfigParser()
secrets.read(os.environ["FLAMBE_SECRETS"])
print("secrets", json.dumps(secrets.sections()), flush=True)
env.gather("outputs")
print("gathered", json.dumps(sorted(p.name for p in (Path.home() / "outputs").iterdir())), flush=True)
