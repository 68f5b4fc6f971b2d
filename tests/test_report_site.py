"""The orchestrator's report site and TensorBoard helpers, run here as the orchestrator runs them.

Each helper is driven through its command line (``python -m
flambe_cluster.remote.<helper> launch|status|stop STATE_DIR``) on free ports
of 127.0.0.1.  The page is loaded in headless Chromium (Debian's
``chromium``; ``scripts/setup.sh --dev`` installs it as root) and TensorBoard
is the real one (``tensorboard``, in the ``dev`` extra).  Whatever a test
started is stopped by its recorded process group when the test ends, passed
or failed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from flambe_cluster.remote.processes import stop_group, stop_recorded

PYTHON = sys.executable


def helper(name: str, *args: str, check: int | None = 0, timeout: float = 180) -> subprocess.CompletedProcess:
    done = subprocess.run([PYTHON, "-m", f"flambe_cluster.remote.{name}", *args], capture_output=True, text=True,
                          timeout=timeout)
    if check is not None:
        assert done.returncode == check, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes of the group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def wait_gone(pgid: int, timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while (members := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return members


@pytest.fixture
def started(tmp_path):
    """Folders whose recorded process groups the test started; each is stopped at the end, whatever happened."""
    folders: list[Path] = []
    yield folders
    for folder in folders:
        stop_recorded(folder, grace=2.0)


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def job_dir(tmp_path, started):
    """A job launched with remote/job.py that logs, writes output files, then waits to be stopped."""
    folder = tmp_path / "job"
    output = tmp_path / "output"
    script = textwrap.dedent(f"""
        import pathlib, time
        out = pathlib.Path({str(output)!r})
        (out / "metrics").mkdir(parents=True)
        (out / "model.pt").write_bytes(b"w" * 3000)
        (out / "metrics" / "a<b>&c.txt").write_text("score 0.9")
        print("step 1 <done>", flush=True)
        time.sleep(600)
    """)
    folder.mkdir()
    (folder / "spec.json").write_text(json.dumps({"argv": [PYTHON, "-c", script], "cwd": str(tmp_path), "env": {}}))
    started.append(folder)
    helper("job", "launch", str(folder))
    deadline = time.monotonic() + 30
    while "step 1" not in (folder / "output.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    return folder


def chromium() -> str:
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("headless Chromium is missing: Debian package `chromium` "
                    "(scripts/setup.sh --dev installs it as root)")
    return browser


def chromium_dom(browser: str, url: str, profile: Path) -> str:
    browser_run = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu",
                                    f"--user-data-dir={profile}", "--dump-dom", url],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
    try:
        dom, errors = browser_run.communicate(timeout=120)
    finally:  # its helper processes share its group; none outlives the test
        stop_group(browser_run.pid, grace=2.0)
        browser_run.wait()
    assert browser_run.returncode == 0, errors[-3000:]
    return dom


def test_report_site_page_shows_the_job_and_its_files(tmp_path, started, job_dir):
    browser = chromium()
    output = tmp_path / "output"
    (output / "escape").symlink_to("/etc/passwd")
    (tmp_path / "progress.json").write_text('{"done": 3, "note": "<b>x</b>"}')
    site, port, tensorboard_port = tmp_path / "site", free_port(), free_port()
    started.append(site)
    launched = json.loads(helper("report_site", "launch", str(site), "--port", str(port), "--job-dir", str(job_dir),
                                 "--output-log", "output.log", "--output-dir", str(output),
                                 "--progress-file", str(tmp_path / "progress.json"),
                                 "--tensorboard-port", str(tensorboard_port)).stdout)
    assert launched["port"] == port
    assert json.loads(helper("report_site", "status", str(site)).stdout)["state"] == "running"

    dom = chromium_dom(browser, f"http://127.0.0.1:{port}/", tmp_path / "chromium")
    assert '<strong id="job-state">running</strong>' in dom
    assert "model.pt" in dom and "2.9 KiB" in dom
    assert "metrics/a&lt;b&gt;&amp;c.txt" in dom, "file names are escaped"
    assert "escape" not in dom, "a symlink is not listed"
    assert "step 1 &lt;done&gt;" in dom, "the log's tail, escaped"
    assert "&lt;b&gt;x&lt;/b&gt;" in dom, "the progress file, escaped"
    assert f'href="http://127.0.0.1:{tensorboard_port}/"' in dom

    refused = helper("report_site", "launch", str(site), "--port", str(free_port()), check=3)
    assert "already runs" in refused.stderr

    pgid = launched["pgid"]
    assert json.loads(helper("report_site", "stop", str(site)).stdout)["state"] == "none"
    assert wait_gone(pgid) == []
    assert json.loads(helper("job", "status", str(job_dir)).stdout)["state"] == "running", "the job is not ours to stop"
    assert json.loads(helper("job", "stop", str(job_dir)).stdout)["state"] == "finished"


def test_report_site_serves_only_the_output_files(tmp_path, started):
    site, output = tmp_path / "site", tmp_path / "output"
    (output / "metrics").mkdir(parents=True)
    (output / "model.pt").write_bytes(b"w" * 3000)
    (output / "metrics" / "a<b>&c.txt").write_text("score 0.9")
    (output / "escape").symlink_to("/etc/passwd")
    started.append(site)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        refused = helper("report_site", "launch", str(site), "--port", str(taken.getsockname()[1]), check=3)
    assert "taken" in refused.stderr
    assert json.loads(helper("report_site", "status", str(site)).stdout) == {"state": "none", "pgid": None,
                                                                             "port": None}
    port = free_port()
    launched = json.loads(helper("report_site", "launch", str(site), "--port", str(port),
                                 "--job-dir", str(tmp_path / "no-job"), "--output-dir", str(output)).stdout)
    status, page = http_get(f"http://127.0.0.1:{port}/")
    assert status == 200
    assert b"<strong id='job-state'>none</strong>" in page
    assert b"<a href='files/metrics/a%3Cb%3E%26c.txt'>metrics/a&lt;b&gt;&amp;c.txt</a>" in page
    assert http_get(f"http://127.0.0.1:{port}/files/model.pt") == (200, b"w" * 3000)
    assert http_get(f"http://127.0.0.1:{port}/files/metrics/a%3Cb%3E%26c.txt") == (200, b"score 0.9")
    for outside in ("escape", "..%2Fsite%2Fsite.json", "%2E%2E/site/site.json", "%2Fetc%2Fpasswd", "metrics",
                    "missing", "../../site/site.json"):
        assert http_get(f"http://127.0.0.1:{port}/files/{outside}")[0] == 404, outside
    helper("report_site", "stop", str(site))
    assert wait_gone(launched["pgid"]) == []


def test_tensorboard_answers_and_stops(tmp_path, started):
    if importlib.util.find_spec("tensorboard") is None:
        pytest.skip("TensorBoard is not installed here: pip install tensorboard (the dev extra has it)")
    logs, folder, port = tmp_path / "logs", tmp_path / "tensorboard", free_port()
    logs.mkdir()
    started.append(folder)
    launched = json.loads(helper("tensorboard", "launch", str(folder), "--logdir", str(logs),
                                 "--port", str(port)).stdout)
    assert http_get(f"http://127.0.0.1:{port}/")[0] == 200
    status = json.loads(helper("tensorboard", "status", str(folder)).stdout)
    assert status == {"state": "running", "pgid": launched["pgid"], "port": port}
    assert helper("tensorboard", "launch", str(folder), "--logdir", str(logs), "--port", str(free_port()),
                  check=3).stderr
    assert json.loads(helper("tensorboard", "stop", str(folder)).stdout)["state"] == "none"
    assert wait_gone(launched["pgid"]) == []
    assert json.loads(helper("tensorboard", "stop", str(folder)).stdout)["state"] == "none", "stop is idempotent"


def test_helpers_share_the_command_line_shape(tmp_path):
    for name in ("job", "report_site", "tensorboard"):
        assert "unknown command 'nope'" in helper(name, "nope", str(tmp_path), check=2).stderr
        assert "usage" in helper(name, "status", check=2).stderr
    assert "usage" in helper("job", "status", str(tmp_path), "--extra", check=2).stderr
    assert json.loads(helper("job", "status", str(tmp_path)).stdout) == {"state": "none", "exit_code": None,
                                                                         "pgid": None}
