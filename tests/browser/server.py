"""The demo served by `streamlit run app/Home.py` on a free port of 127.0.0.1, with its output in a log file."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app" / "Home.py"
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never goes through a proxy


@dataclass(frozen=True)
class AppServer:
    """A running Streamlit server: its URL, the file its output goes to and its process id."""

    url: str
    log: Path
    pid: int = 0

    def peak_rss_mb(self) -> float:
        """The server's peak resident memory so far (MiB), from /proc (VmHWM)."""
        with open(f"/proc/{self.pid}/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))

    def log_size(self) -> int:
        """Bytes logged so far: pass to `problems` to see only what came after."""
        return self.log.stat().st_size

    def problems(self, since: int = 0) -> list[str]:
        """Lines logged after byte `since` that show an error: tracebacks and exceptions."""
        with open(self.log, "rb") as log:
            log.seek(since)
            lines = log.read().decode(errors="replace").splitlines()
        return [line for line in lines if "Traceback" in line or "Exception" in line or "Error:" in line]


def page_files(folder: Path, pages: dict[str, str]) -> dict[str, Path]:
    """Each page's Streamlit script written into `folder` as page0.py, page1.py, ...: {name: its file}."""
    files = {}
    for index, (name, text) in enumerate(pages.items()):
        files[name] = Path(folder) / f"page{index}.py"
        files[name].write_text(text)
    return files


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(log: Path, app: Path = APP, timeout: float = 90.0) -> Iterator[AppServer]:
    """Run `streamlit run app` headless and offline on a free local port; yield it; always stop it."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        "--global.developmentMode",
        "false",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            server = AppServer(f"http://127.0.0.1:{port}", Path(log), process.pid)
            _wait_until_healthy(server, process, timeout)
            yield server
        finally:
            stop(process)


def _wait_until_healthy(server: AppServer, process: subprocess.Popen, timeout: float) -> None:
    """Return once Streamlit's health endpoint answers "ok"; RuntimeError with the log if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with status {process.returncode}:\n{server.log.read_text()}")
        with contextlib.suppress(OSError):
            with _LOCAL.open(server.url + "/_stcore/health", timeout=2) as answer:
                if answer.read().strip() == b"ok":
                    return
        time.sleep(0.3)
    raise RuntimeError(f"streamlit did not answer at {server.url} within {timeout:.0f} s:\n{server.log.read_text()}")


def stop(process: subprocess.Popen) -> None:
    """Stop the server's process group: SIGTERM, then SIGKILL after 10 s."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
