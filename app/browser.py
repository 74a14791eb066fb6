"""Run the demo in a real Streamlit server and photograph it with headless Chromium (tests and docs/app.png).

Everything stays on 127.0.0.1; Streamlit's usage statistics are off so that nothing reaches for the network.
"""
from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

APP = Path(__file__).resolve().parent / "Home.py"
CHROMIUM = "/usr/bin/chromium"
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never goes through a proxy
CHROMIUM_MISSING = ("Chromium is not installed at /usr/bin/chromium: install Debian's chromium "
                    "(`sudo apt-get install chromium`) to run the browser test and make docs/app.png")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env() -> dict[str, str]:
    """The environment for an offline Streamlit server: no usage statistics, no file watcher."""
    return {**os.environ, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
            "STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none", "STREAMLIT_GLOBAL_DEVELOPMENT_MODE": "false"}


@contextlib.contextmanager
def serve(log: Path, app: Path = APP, port: int | None = None, timeout: float = 60.0):
    """Start `streamlit run app` headless on 127.0.0.1 with its output in `log`; yield its URL; always stop it."""
    port = port or free_port()
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true",
               "--server.port", str(port), "--server.address", "127.0.0.1"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=server_env(),
                                   start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_until_healthy(url, process, log, timeout)
            yield url
        finally:
            stop(process)


def wait_until_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    """Return once Streamlit's health endpoint answers "ok"; RuntimeError with the log if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with status {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with _LOCAL.open(url + "_stcore/health", timeout=2) as answer:
                if answer.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"streamlit did not answer at {url} within {timeout:.0f} s:\n{log.read_text(errors='replace')}")


def stop(process: subprocess.Popen) -> None:
    """Terminate the server's process group (SIGTERM, then SIGKILL after 10 s)."""
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


def run_page(url: str, timeout: float = 120.0) -> list[str]:
    """Run the page once over Streamlit's websocket, as a browser's first visit does; the element types it drew.

    This also warms the server (the models land in `st.cache_resource`), so a browser visiting next is quick.
    RuntimeError if the script does not finish successfully within `timeout` seconds.
    """
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.sync.client import connect

    request = BackMsg()
    request.rerun_script.query_string = ""
    elements: list[str] = []
    deadline = time.monotonic() + timeout
    with connect(url.replace("http", "ws", 1) + "_stcore/stream", subprotocols=["streamlit"], open_timeout=10,
                 max_size=None, proxy=None) as socket_:
        socket_.send(request.SerializeToString())
        while True:
            message = ForwardMsg()
            message.ParseFromString(socket_.recv(timeout=max(0.1, deadline - time.monotonic())))
            kind = message.WhichOneof("type")
            if kind == "delta" and message.delta.WhichOneof("type") == "new_element":
                elements.append(message.delta.new_element.WhichOneof("type"))
            elif kind == "script_finished":
                if message.script_finished != ForwardMsg.FINISHED_SUCCESSFULLY:
                    raise RuntimeError(f"the page script did not finish successfully ({message.script_finished})")
                return elements


# The page is finished when Streamlit's script is not running, no element still shows its loading skeleton
# (element code arrives in chunks) and every image has arrived.
PAGE_READY = """(() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const images = [...document.querySelectorAll('img')];
  return !!app && app.dataset.testScriptState === 'notRunning'
    && !document.querySelector('[data-testid="stSkeleton"], [data-testid="stAppSkeleton"]')
    && images.every(i => i.complete && i.naturalWidth > 0);
})()"""


def screenshot(url: str, path: Path, size: tuple[int, int] = (1280, 1600), ready: str = PAGE_READY,
               timeout: float = 90.0) -> Path:
    """A PNG of `url` in headless Chromium, taken once the JavaScript expression `ready` is true.

    Chromium is driven over its DevTools socket (on 127.0.0.1) rather than with --screenshot and
    --virtual-time-budget: virtual time does not wait for Streamlit's websocket, and on a busy machine about
    half such shots caught the page before its script had finished. FileNotFoundError if Chromium is missing.
    """
    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(CHROMIUM_MISSING)
    path = Path(path)
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="encvit-chromium-", ignore_cleanup_errors=True) as profile:
        command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", "--hide-scrollbars",
                   "--no-proxy-server", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                   "about:blank"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            with _devtools(Path(profile) / "DevToolsActivePort", process, deadline) as devtools:
                devtools("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1,
                         mobile=False)
                devtools("Page.navigate", url=url)
                streak = 0
                while streak < 2:  # ready twice in a row, so that nothing is caught between two states
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{url} was not ready within {timeout:.0f} s")
                    time.sleep(0.25)
                    ok = devtools("Runtime.evaluate", expression=ready, returnByValue=True)["result"].get("value")
                    streak = streak + 1 if ok else 0
                data = devtools("Page.captureScreenshot", format="png")["data"]
        finally:
            stop(process)
    path.write_bytes(base64.b64decode(data))
    return path


@contextlib.contextmanager
def _devtools(port_file: Path, process: subprocess.Popen, deadline: float):
    """Yield call(method, **params) -> result, talking to Chromium's first page over the DevTools protocol."""
    from websockets.sync.client import connect

    while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"chromium did not open its DevTools port (status {process.poll()})")
        time.sleep(0.1)
    port = int(port_file.read_text().splitlines()[0])
    with _LOCAL.open(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
        page = next(t for t in json.load(answer) if t["type"] == "page")
    with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10, proxy=None) as socket_:
        ids = itertools.count(1)

        def call(method: str, **params):
            number = next(ids)
            socket_.send(json.dumps({"id": number, "method": method, "params": params}))
            while True:  # skip events until the answer to this call
                answer = json.loads(socket_.recv(timeout=max(0.1, deadline - time.monotonic())))
                if answer.get("id") == number:
                    if "error" in answer:
                        raise RuntimeError(f"DevTools {method} failed: {answer['error']}")
                    return answer["result"]

        yield call


def looks_rendered(path: Path, min_ink: float = 0.01) -> tuple[bool, str]:
    """Whether a screenshot shows a page rather than a blank one: many colours and `min_ink` non-white pixels."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    inked = float((pixels.min(axis=-1) < 230).mean())
    return colours > 50 and inked > min_ink, f"{colours} distinct colours, {100 * inked:.1f}% non-white pixels"


def log_problems(log: Path) -> list[str]:
    """Lines of a server log that show an error: tracebacks and exceptions."""
    return [line for line in log.read_text(errors="replace").splitlines()
            if "Traceback" in line or "Exception" in line or "Error:" in line]
