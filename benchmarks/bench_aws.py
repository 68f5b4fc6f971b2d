#!/usr/bin/env python3
"""API economy of the AWS provider's provisioning phase, against moto over HTTP.

Starts a moto server (``ThreadedMotoServer`` on 127.0.0.1, a free port), makes
a VPC, subnet, security group and key pair in it, points boto3 at it with
``AWS_ENDPOINT_URL`` (as a user would), and runs the provider's own hooks —
no SSH, no hosts — for 1 orchestrator + N factories:

1. the first ``up``'s provisioning (``flambe_cluster_load_instances``:
   find, create, wait until running);
2. a second ``up``'s provisioning on the same, running cluster (reuse);
3. ``down``'s release (``flambe_cluster_terminate``: alarms, terminate, wait).

Every EC2 and CloudWatch request is counted with a botocore event handler on
the provider's clients (``before-parameter-build``, once per request): RunInstances per role (from the
call's tags), DescribeInstances requests, the *looks* they make up (a look
is one paginated listing: its first request carries no NextToken), and
pages per look.  Beside them, a reference measured in the same run: one
poll done the per-instance way (one DescribeInstances per instance id) on
the same instances.  Prints figures, asserts nothing, stops the server at
the end (also on errors and Ctrl-C).

Usage: ``python3 benchmarks/bench_aws.py [--factories 100] [--factories 10 ...]``
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    import flambe_cluster  # noqa: F401
except ImportError:  # not installed: use the checkout's sources
    sys.path.insert(0, str(HERE.parent / "core"))
    sys.path.insert(0, str(HERE.parent / "providers" / "aws"))

import boto3  # noqa: E402
import botocore  # noqa: E402
import moto  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

REGION = "us-east-1"
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl bench"


class CallCounter:
    """Counts the requests the provider's clients send (botocore ``before-parameter-build`` events)."""

    def __init__(self) -> None:
        self.actions: Counter = Counter()
        self.run_instances_by_role: Counter = Counter()
        self.looks = 0
        self.pages = 0

    def __call__(self, model, params, **_kwargs) -> None:
        self.actions[model.name] += 1
        if model.name == "RunInstances":
            tags = {t["Key"]: t["Value"] for spec in params.get("TagSpecifications", []) for t in spec.get("Tags", [])}
            self.run_instances_by_role[tags.get("flambe-cluster:role", "?")] += 1
        elif model.name == "DescribeInstances":
            self.pages += 1
            if "NextToken" not in params:
                self.looks += 1

    def reset(self) -> None:
        self.__init__()


def make_world(endpoint: str) -> dict:
    kwargs = {"endpoint_url": endpoint, "region_name": REGION, "aws_access_key_id": "testing",
              "aws_secret_access_key": "testing"}
    ec2 = boto3.client("ec2", **kwargs)
    vpc = ec2.create_vpc(CidrBlock="10.200.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.200.0.0/20",
                               AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="bench", Description="bench", VpcId=vpc)["GroupId"]
    ec2.import_key_pair(KeyName="bench", PublicKeyMaterial=PUBLIC_KEY.encode())
    return {"ec2": ec2, "subnet": subnet, "group": group}


def run(factories: int, world: dict, key: Path, counter: CallCounter) -> dict:
    import flambe_cluster_aws as provider
    from flambe_cluster.config import parse_config
    from flambe_cluster.progress import log_progress
    from flambe_cluster.state import ClusterState

    name = f"bench-{factories}"
    config = parse_config({
        "provider": "aws", "name": name, "factories_num": factories, "factories_type": "t3.micro",
        "orchestrator_type": "t3.micro", "key_name": "bench", "key": str(key), "username": "ubuntu",
        "security_group": world["group"], "subnet_id": world["subnet"], "region_name": REGION, "use_public": False,
    })
    figures: dict = {}

    def phase(label, action):
        counter.reset()
        started = time.perf_counter()
        result = action()
        figures[label] = {"seconds": time.perf_counter() - started, "actions": dict(counter.actions),
                          "by_role": dict(counter.run_instances_by_role), "looks": counter.looks,
                          "pages": counter.pages}
        return result

    state = ClusterState.for_cluster(name).ensure()
    made = phase("first up", lambda: provider.flambe_cluster_load_instances(
        config=config, journal=state.journal.start_run(), progress=log_progress))
    phase("second up", lambda: provider.flambe_cluster_load_instances(
        config=config, journal=state.journal.start_run(), progress=log_progress))
    ids = [i.instance_id for i in made]
    ec2 = world["ec2"]
    started = time.perf_counter()
    for instance_id in ids:
        ec2.describe_instances(InstanceIds=[instance_id])
    figures["reference"] = {"seconds": time.perf_counter() - started, "calls": len(ids)}
    started = time.perf_counter()
    ec2.describe_instances(Filters=[{"Name": "tag:flambe-cluster:cluster", "Values": [name]}])
    figures["filtered"] = {"seconds": time.perf_counter() - started, "calls": 1}
    phase("down", lambda: provider.flambe_cluster_terminate(config=config, instances=made))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--factories", type=int, action="append",
                        help="factories per cluster (repeatable; default 100)")
    args = parser.parse_args()
    sizes = args.factories or [100]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    saved = dict(os.environ)
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        with tempfile.TemporaryDirectory(prefix="bench-aws-") as folder:
            key = Path(folder) / "id_ed25519"
            key.write_text("not used: nothing connects over SSH in this benchmark\n")
            os.environ.update({
                "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "FLAMBE_CLUSTER_HOME": str(Path(folder) / "state"),
            })
            for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL_CLOUDWATCH"):
                os.environ.pop(name, None)
            from flambe_cluster_aws import api

            counter = CallCounter()
            for service in ("ec2", "cloudwatch", "ssm"):
                api.client(service, REGION).meta.events.register(f"before-parameter-build.{service}", counter)
            world = make_world(endpoint)
            print(f"AWS provider against moto {moto.__version__} over HTTP ({endpoint}), boto3 {boto3.__version__}, "
                  f"botocore {botocore.__version__}")
            print("Counts are requests the provider sent; a look = one paginated DescribeInstances listing.\n")
            header = (f"{'cluster':>10}  {'phase':<10} {'RunInstances (orch/fact)':>24} {'DescribeInstances':>17} "
                      f"{'looks':>5} {'per look':>8} {'time':>7}  other calls")
            print(header)
            print("-" * len(header))
            for factories in sizes:
                figures = run(factories, world, key, counter)
                for label in ("first up", "second up", "down"):
                    f = figures[label]
                    actions = dict(f["actions"])
                    runs = actions.pop("RunInstances", 0)
                    describes = actions.pop("DescribeInstances", 0)
                    by_role = f"{runs} ({f['by_role'].get('orchestrator', 0)}/{f['by_role'].get('factory', 0)})"
                    per_look = f"{f['pages'] / f['looks']:.1f}" if f["looks"] else "-"
                    other = ", ".join(f"{k} {v}" for k, v in sorted(actions.items())) or "-"
                    print(f"{'1+' + str(factories):>10}  {label:<10} {by_role:>24} {describes:>17} {f['looks']:>5} "
                          f"{per_look:>8} {f['seconds']:>6.2f}s  {other}")
                ref, filtered = figures["reference"], figures["filtered"]
                print(f"{'':>10}  one poll, reference: per instance {ref['calls']} DescribeInstances calls "
                      f"{ref['seconds']:.2f}s; filtered on the cluster's tags {filtered['calls']} call "
                      f"{filtered['seconds']:.2f}s")
                first = figures["first up"]
                print(f"{'1+' + str(factories):>10}  RunInstances: "
                      f"orchestrator {first['by_role'].get('orchestrator', 0)}, "
                      f"factories {first['by_role'].get('factory', 0)}; DescribeInstances per poll: "
                      f"{first['pages'] / first['looks']:.1f} (pages of 1000 instances)\n")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
