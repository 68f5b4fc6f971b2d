"""The idle watchdog that runs on each GCP host and deletes it when it has been idle too long.

This file is shipped to the hosts as it is and run there with the host's own
Python 3 (standard library only); nothing of flambe-cluster needs to be
installed for it.  It needs no client: once ``up`` has started it, it keeps
watching after the client has gone away.

``python3 watchdog.py ensure CONFIG_JSON`` starts it (detached, in its own
session) unless one with the same configuration already runs — so a second
``up`` never adds a second watchdog — restarts it when the configuration
changed, and stops it when the timeout is ``-1``.  It prints one word:
``started``, ``unchanged`` or ``disabled``, then the PID.

``python3 watchdog.py run CONFIG_PATH`` is the watchdog itself.  Every
``interval`` seconds it samples whether the host is busy:

* the CPU time of every process it can see grew by at least ``busy_cores``
  cores over the interval (Ray's idle daemons use far less), or
* a GPU is in use (``nvidia-smi``, when present), or
* on the orchestrator, the cluster's job is running (its ``process.json``
  without ``exit_code.json``, its process group alive).

With ``timeout_hours`` > 0 the host is released after that many hours of
consecutive idle samples.  With ``0`` it is released at the first idle sample
after it has been busy at least once (the end of the job, for the
orchestrator; the end of its share of work, for a factory).

Releasing means deleting the instance itself: the instance's name, zone and
project and an access token of its service account come from the metadata
server, then ``DELETE .../instances/NAME`` goes to the Compute Engine API
(the instances are created with the ``cloud-platform`` scope; the service
account needs ``compute.instances.delete``).  If that fails, the host powers
itself off (``power_off``: ``sudo -n shutdown -h now``): a stopped instance
costs only its disk, and ``up`` starts it again.
"""

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

GOOGLE_METADATA = "http://metadata.google.internal"
GOOGLE_API = "https://compute.googleapis.com"
NAME = "gcp-idle-watchdog"


def decide(state, busy, now, timeout_s):
    """One step of the idle clock: returns ``(new_state, release)``.

    ``state`` is ``{"idle_since": float|None, "worked": bool}``; ``now`` any
    monotonic clock in seconds; ``timeout_s`` < 0 never releases.
    """
    if busy:
        return {"idle_since": None, "worked": True}, False
    idle_since = state.get("idle_since")
    if idle_since is None:
        idle_since = now
    new_state = {"idle_since": idle_since, "worked": bool(state.get("worked"))}
    if timeout_s < 0:
        return new_state, False
    if timeout_s == 0:
        return new_state, new_state["worked"]
    return new_state, now - idle_since >= timeout_s


def cpu_seconds(proc="/proc"):
    """CPU time (user + system, seconds) of every process visible in ``proc``."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "stat")) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def gpu_busy():
    """Whether ``nvidia-smi`` reports any GPU utilisation (False without it)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(line.strip().isdigit() and int(line.strip()) > 0 for line in out.splitlines())


def job_running(job_dir):
    """Whether the cluster's job (started by flambe-cluster in ``job_dir``) still runs."""
    if not job_dir:
        return False
    try:
        with open(os.path.join(job_dir, "process.json")) as handle:
            record = json.load(handle)
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()
    except (OSError, ValueError):
        return False
    if os.path.exists(os.path.join(job_dir, "exit_code.json")) or record.get("boot") != boot:
        return False  # finished, or recorded before a reboot (the number may be someone else's now)
    try:  # the same test as flambe_cluster.remote.processes.recorded_alive, which this script cannot import
        os.killpg(int(record["pgid"]), 0)
        return True
    except (OSError, ValueError, KeyError):
        return False


def _get(url, headers=None, timeout=10):
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return answer.read().decode()


def release(config, log):
    """Delete this instance through the API (metadata server identity); power off if that fails."""
    metadata = config["metadata"].rstrip("/") + "/computeMetadata/v1/"
    flavor = {"Metadata-Flavor": "Google"}
    try:
        name = _get(metadata + "instance/name", flavor)
        zone = _get(metadata + "instance/zone", flavor).rsplit("/", 1)[-1]
        project = _get(metadata + "project/project-id", flavor)
        token = json.loads(_get(metadata + "instance/service-accounts/default/token", flavor))["access_token"]
        url = "%s/compute/v1/projects/%s/zones/%s/instances/%s?requestId=%s" % (
            config["api"].rstrip("/"), project, zone, name, uuid.uuid4())
        request = urllib.request.Request(url, method="DELETE", headers={"Authorization": "Bearer " + token})
        with urllib.request.urlopen(request, timeout=30) as answer:
            log("deleting instance %s (zone %s, project %s): HTTP %s" % (name, zone, project, answer.status))
        return True
    except Exception as exc:  # noqa: BLE001 - any failure falls back to powering off
        log("deleting this instance through the API failed (%s); powering off instead" % (exc,))
    done = subprocess.run(config["power_off"], capture_output=True, text=True)
    if done.returncode != 0:
        log("powering off failed too (%s); will try again" % (done.stderr.strip() or done.returncode))
        return False
    return True


def run(config_path):
    """The watchdog loop (never returns unless the host is released)."""
    with open(config_path) as handle:
        config = json.load(handle)
    folder = os.path.dirname(os.path.abspath(config_path))

    def log(message):
        with open(os.path.join(folder, NAME + ".log"), "a") as handle:
            handle.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), message))

    timeout_s = config["timeout_hours"] * 3600.0
    interval = float(config["interval"])
    log("watching: release after %s h idle (busy: >= %s cores, GPU use%s); check every %s s" % (
        config["timeout_hours"], config["busy_cores"], ", the job" if config.get("job_dir") else "", interval))
    job_dir = os.path.expanduser(config["job_dir"]) if config.get("job_dir") else None
    state = {"idle_since": None, "worked": False}
    before_cpu, before = cpu_seconds(), time.monotonic()
    while True:
        time.sleep(interval)
        cpu, now = cpu_seconds(), time.monotonic()
        cores = max(cpu - before_cpu, 0.0) / max(now - before, 1e-6)
        before_cpu, before = cpu, now
        busy = cores >= config["busy_cores"] or job_running(job_dir) or gpu_busy()
        state, go = decide(state, busy, now, timeout_s)
        if go:
            log("idle since %.0f s (%.2f cores busy): releasing this instance" % (now - state["idle_since"], cores))
            if release(config, log):
                return


def _pid_alive(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return NAME.encode() in handle.read()
    except OSError:
        return False


def ensure(encoded):
    """Start, keep or stop the watchdog for the configuration given as base64 JSON (see the module docstring)."""
    config = json.loads(base64.b64decode(encoded).decode())
    folder = os.path.expanduser(config["folder"])
    os.makedirs(folder, exist_ok=True)
    config_path = os.path.join(folder, NAME + ".json")
    pid_path = os.path.join(folder, NAME + ".pid")
    script = os.path.abspath(__file__)
    with open(script, "rb") as handle:
        wanted = dict(config, script=hashlib.sha256(handle.read()).hexdigest())
    try:
        with open(pid_path) as handle:
            pid = int(handle.read().strip())
    except (OSError, ValueError):
        pid = None
    running = pid is not None and _pid_alive(pid)
    try:
        with open(config_path) as handle:
            current = json.load(handle)
    except (OSError, ValueError):
        current = None
    if running and current == wanted and config["timeout_hours"] >= 0:
        print("unchanged", pid)
        return
    if running:
        assert pid is not None  # running implies a pid
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not _pid_alive(pid):
                break
            time.sleep(0.05)
    if config["timeout_hours"] < 0:
        for path in (pid_path, config_path):
            if os.path.exists(path):
                os.remove(path)
        print("disabled", 0)
        return
    with open(config_path + ".tmp", "w") as handle:
        json.dump(wanted, handle)
    os.replace(config_path + ".tmp", config_path)
    with open(os.devnull, "rb") as null_in, open(os.path.join(folder, NAME + ".log"), "ab") as out:
        process = subprocess.Popen([sys.executable, script, "run", config_path], stdin=null_in, stdout=out,
                                   stderr=out, start_new_session=True, close_fds=True)
    with open(pid_path, "w") as handle:
        handle.write(str(process.pid))
    print("started", process.pid)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "ensure":
        ensure(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "run":
        run(sys.argv[2])
    else:
        sys.exit("usage: %s ensure BASE64_CONFIG | run CONFIG_PATH" % sys.argv[0])
