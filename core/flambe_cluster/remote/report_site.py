"""Serve a small read-only web page about the cluster's job, detached, on the orchestrator.

Usage (on the orchestrator)::

    python -m flambe_cluster.remote.report_site launch STATE_DIR --port PORT [--job-dir DIR]
        [--output-log FILE] [--output-dir DIR] [--progress-file FILE] [--tensorboard-port PORT]
        [--log-lines N] [--wait SECONDS]
    python -m flambe_cluster.remote.report_site status STATE_DIR   # prints JSON: state, pgid, port
    python -m flambe_cluster.remote.report_site stop   STATE_DIR   # prints JSON: state ("none")

This is the seed's ``launch_report_site(progress_file, port, output_log,
output_dir, tensorboard_port)``: Flambé 0.4 ran a Flask app (``flambe-site``)
in tmux; this is the same page's content from the standard library, with no
names matched to stop it.

``launch`` writes the options to ``STATE_DIR/site.json`` and starts
``report_site serve STATE_DIR`` as
:func:`flambe_cluster.remote.processes.launch_service` does: it refuses
(exit code 3) while a site recorded in STATE_DIR runs or while PORT is taken,
records the process group in ``STATE_DIR/process.json``, logs the requests to
``STATE_DIR/output.log``, waits until PORT answers and prints ``{"pgid": N,
"port": PORT}`` (exit code 1 and the log's tail if it does not).  ``stop``
ends exactly that group and removes the record.

The page (``GET /``, HTTP on 0.0.0.0:PORT, everything HTML-escaped, refreshed
every 10 s) shows:

* the job's state, as :func:`flambe_cluster.remote.job.status` reads it from
  ``--job-dir``;
* the last ``--log-lines`` lines of ``--output-log``;
* the content of ``--progress-file`` (text; a binary file is only sized);
* every file under ``--output-dir`` with its size, each a link to
  ``/files/<relative path>``, which serves only regular files whose real path
  lies inside the output folder (no ``..``, no symlink out);
* a link to TensorBoard at ``http://<the host the page was asked from>:<--tensorboard-port>/``.

Relative folders are relative to ``$HOME``, like STATE_DIR (Flambé passes
``<experiment>/<output>`` paths); a relative ``--output-log`` is looked up in
``--job-dir`` when given, where :mod:`.job` writes ``output.log``, so
Flambé's ``output_log="output.log"`` shows the job's log.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from . import job
from .processes import (
    dispatch,
    launch_service,
    print_json,
    read_json,
    service_status,
    state_dir,
    stop_service,
    write_json,
)

OPTIONS = "site.json"
#: The most of the output log and of the progress file a page reads (the log's tail, the progress file's head).
READ_LIMIT = 256 * 1024
#: The most files of the output folder a page lists.
FILES_LIMIT = 2000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flambe_cluster.remote.report_site launch STATE_DIR")
    parser.add_argument("--port", type=int, required=True, help="the port the site listens on (0.0.0.0)")
    parser.add_argument("--job-dir", help="the job's folder (remote/job.py's JOB_DIR), for its state")
    parser.add_argument("--output-log", help="the log to show the tail of (relative: in --job-dir, else $HOME)")
    parser.add_argument("--output-dir", help="the folder whose files are listed and served")
    parser.add_argument("--progress-file", help="a file whose content is shown as the progress")
    parser.add_argument("--tensorboard-port", type=int, help="TensorBoard's port on this host, to link to")
    parser.add_argument("--log-lines", type=int, default=200, help="how many lines of the log to show")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the site to answer")
    return parser


def _resolve(options: argparse.Namespace) -> dict[str, Any]:
    """The options as absolute paths (see the module's docstring), ready for ``site.json``."""
    job_dir = state_dir(options.job_dir) if options.job_dir else None
    log = None
    if options.output_log:
        log = Path(options.output_log)
        if not log.is_absolute():
            log = (job_dir or Path.home()) / log
    return {
        "port": options.port,
        "job_dir": str(job_dir) if job_dir else None,
        "output_log": str(log) if log else None,
        "output_dir": str(state_dir(options.output_dir)) if options.output_dir else None,
        "progress_file": str(state_dir(options.progress_file)) if options.progress_file else None,
        "tensorboard_port": options.tensorboard_port,
        "log_lines": options.log_lines,
    }


def launch(folder: Path, argv: list[str]) -> int:
    """Write ``site.json`` and start the site detached (see the module's docstring)."""
    options = _parser().parse_args(argv)
    write_json(folder / OPTIONS, _resolve(options))
    return launch_service(folder, [sys.executable, "-m", "flambe_cluster.remote.report_site", "serve", str(folder)],
                          port=options.port, wait=options.wait, what="the report site")


# --- the page -------------------------------------------------------------------------------------------------

def _read_tail(path: Path, lines: int) -> str | None:
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - READ_LIMIT))
            data = handle.read()
    except OSError:
        return None
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def _read_progress(path: Path) -> str:
    """The file's text (its first READ_LIMIT bytes), or a note when it is missing or binary (holds NUL bytes)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(READ_LIMIT)
            size = os.fstat(handle.fileno()).st_size
    except OSError:
        return "(not written yet)"
    if b"\0" in data:
        return f"(a binary file of {size} bytes)"
    return data.decode(errors="replace") + (f"\n… ({size - len(data)} more bytes)" if size > len(data) else "")


def _output_files(root: Path) -> list[tuple[str, int]]:
    """(path relative to ``root``, size) of the regular files under ``root``, sorted, at most FILES_LIMIT."""
    found = []
    for top, dirs, files in os.walk(root):  # does not descend into symlinked folders
        dirs.sort()
        for name in sorted(files):
            path = Path(top) / name
            if path.is_file() and not path.is_symlink():
                found.append((path.relative_to(root).as_posix(), path.stat().st_size))
                if len(found) >= FILES_LIMIT:
                    return found
    return found


def _inside(root: Path, relative: str) -> Path | None:
    """The regular file ``root/relative`` if its real path lies inside ``root``'s, else None."""
    try:
        base = root.resolve()
        target = (base / relative).resolve()
        inside = base in target.parents and target.is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte
        return None
    return target if inside else None


def _size(count: int) -> str:
    """``count`` bytes for people: ``512 B``, ``1.5 KiB``, …, ``3.2 GiB``."""
    if count < 1024:
        return f"{count} B"
    scaled = float(count)
    for unit in ("KiB", "MiB", "GiB"):  # noqa: B007 - the unit the loop stops at is the one shown
        scaled /= 1024
        if scaled < 1024:
            break
    return f"{scaled:.1f} {unit}"


def render(settings: dict[str, Any], host: str) -> str:
    """The page's HTML for the settings of ``site.json``; ``host`` is the name the browser reached us by."""
    esc = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='10'>",
             "<title>Flambé report</title></head><body><h1>Flambé report</h1>"]
    if settings["job_dir"]:
        state = job.status(Path(settings["job_dir"]))
        exit_code = "" if state["exit_code"] is None else f" (exit code {state['exit_code']})"
        parts.append(f"<p>Job state: <strong id='job-state'>{esc(state['state'])}</strong>{esc(exit_code)}</p>")
    else:
        parts.append("<p>Job state: <strong id='job-state'>unknown</strong> (no job folder given)</p>")
    if settings["tensorboard_port"]:
        url = f"http://{host}:{settings['tensorboard_port']}/"
        parts.append(f"<p><a id='tensorboard' href='{esc(url)}'>TensorBoard</a></p>")
    if settings["progress_file"]:
        progress = _read_progress(Path(settings["progress_file"]))
        parts.append(f"<h2>Progress</h2><pre id='progress'>{esc(progress)}</pre>")
    if settings["output_dir"]:
        root = Path(settings["output_dir"])
        files = _output_files(root) if root.is_dir() else []
        parts.append(f"<h2>Output files</h2><p>{esc(str(root))}</p><table id='files'>")
        for relative, size in files:
            link = "files/" + urllib.parse.quote(relative)
            parts.append(f"<tr><td><a href='{esc(link)}'>{esc(relative)}</a></td><td>{esc(_size(size))}</td></tr>")
        parts.append("</table>")
        if not files:
            parts.append("<p>(no files yet)</p>")
        elif len(files) >= FILES_LIMIT:
            parts.append(f"<p>(only the first {FILES_LIMIT} files are listed)</p>")
    if settings["output_log"]:
        tail = _read_tail(Path(settings["output_log"]), settings["log_lines"])
        parts.append(f"<h2>Log</h2><p>{esc(settings['output_log'])}</p>"
                     f"<pre id='log'>{esc('(not written yet)' if tail is None else tail)}</pre>")
    parts.append("</body></html>")
    return "".join(parts)


class _Handler(BaseHTTPRequestHandler):
    settings: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/":
            self._send(HTTPStatus.OK, render(self.settings, self._host()).encode(), "text/html; charset=utf-8")
        elif path.startswith("/files/") and self.settings["output_dir"]:
            target = _inside(Path(self.settings["output_dir"]), urllib.parse.unquote(path[len("/files/"):]))
            if target is None:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
                return
            self._send_file(target)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _host(self) -> str:
        """The host part of the request's Host header (what the browser used), else the address it reached."""
        try:
            host = urllib.parse.urlsplit(f"//{self.headers.get('Host') or ''}").hostname
        except ValueError:  # a malformed header, e.g. "[::1"
            host = None
        host = host or self.connection.getsockname()[0]
        return f"[{host}]" if ":" in host else host

    def _send(self, code: HTTPStatus, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_file(self, target: Path) -> None:
        with open(target, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.send_header("Content-Disposition",
                             f"attachment; filename*=UTF-8''{urllib.parse.quote(target.name)}")
            self.end_headers()
            while chunk := handle.read(1 << 20):
                self.wfile.write(chunk)


def serve(folder: Path) -> int:
    """Serve the page for ``folder/site.json`` until stopped (the process ``launch`` starts)."""
    settings = read_json(folder / OPTIONS)
    assert settings is not None  # `launch` writes it before it starts this process
    handler = type("Handler", (_Handler,), {"settings": settings})
    with ThreadingHTTPServer(("0.0.0.0", settings["port"]), handler) as server:
        server.daemon_threads = True
        server.serve_forever()
    return 0


def main(argv: list[str]) -> int:
    return dispatch(argv, {"launch": launch, "serve": serve, "status": lambda path: print_json(service_status(path)),
                           "stop": stop_service}, with_options=("launch",))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
