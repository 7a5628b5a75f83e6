"""A headless Chromium (Debian's `chromium-headless-shell`, or `chromium`) driven over the DevTools protocol, to see
pages the way a user's browser draws them: navigate, evaluate JavaScript until a condition holds, screenshot.
Written here because no package in the project's dependencies drives a browser; the protocol needs only a
websocket (`websockets`, which Prefect already depends on)."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

BINARIES = ("chromium-headless-shell", "chromium", "google-chrome")


def find_chromium() -> str | None:
    """The first headless-capable Chromium on PATH (make test installs Debian's chromium-headless-shell)."""
    return next((b for b in map(shutil.which, BINARIES) if b), None)


class Browser:
    """One headless Chromium process with one page; `close()` ends it and removes its profile."""

    def __init__(self, binary: str, width: int = 1400, height: int = 1000) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.profile = tempfile.mkdtemp(prefix="motfm-chromium-")
        self.proc = subprocess.Popen([binary, "--headless", "--no-sandbox", "--disable-gpu",
                                      f"--remote-debugging-port={port}", f"--user-data-dir={self.profile}",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)  # its GPU and renderer processes: one group to end
        end = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    page = next(t for t in json.load(r) if t["type"] == "page")
                break
            except (OSError, StopIteration):
                if time.time() > end or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError(f"{binary} did not open its DevTools port {port}") from None
                time.sleep(0.2)
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None)
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events that arrive meanwhile are dropped)."""
        i = next(self._ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def evaluate(self, js: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        res = self.call("Runtime.evaluate", expression=js, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{js}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for(self, js: str, timeout: float = 60) -> Any:
        """Evaluate `js` until it is truthy; its value, or TimeoutError with the page's text."""
        end = time.time() + timeout
        while time.time() < end:
            value = self.evaluate(js)
            if value:
                return value
            time.sleep(0.25)
        text = self.evaluate("document.body?.innerText ?? ''")
        raise TimeoutError(f"{js} still false after {timeout}s; page text: {text[:2000]!r}")

    def wait_for_text(self, *words: str, timeout: float = 60) -> None:
        """Wait until the page's visible text holds every one of `words` (the page may still be loading)."""
        self.wait_for(" && ".join(f"(document.body?.innerText ?? '').includes({json.dumps(w)})" for w in words),
                      timeout)

    def screenshot(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)
