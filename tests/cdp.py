"""Headless Chromium driven over the DevTools protocol through a pipe (`--remote-debugging-pipe`: JSON
messages ending in NUL on file descriptors 3 and 4), so no websocket client or webdriver is needed.

`Browser(workdir).open(url)` loads a page; `evaluate` runs an expression in it, `wait_until` polls an
expression until it is truthy, `screenshot` writes a PNG. Always used as a context manager (the browser
process is killed on exit).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    """The Chromium executable on PATH, or None."""
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


class BrowserError(RuntimeError):
    """Chromium went away, answered an error, or a wait timed out."""


class Browser:
    """One headless Chromium with one page (1366x768 by default: a laptop screen)."""

    def __init__(self, workdir: Path, width: int = 1366, height: int = 768) -> None:
        exe = chromium_path()
        if exe is None:
            raise BrowserError("chromium is not installed (make setup installs Debian's `chromium`)")
        workdir.mkdir(parents=True, exist_ok=True)
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()
        log = os.open(workdir / "chromium.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
                "--force-device-scale-factor=1", f"--window-size={width},{height}",
                f"--user-data-dir={workdir / 'profile'}", "--remote-debugging-pipe", "about:blank"]
        self.pid = os.posix_spawn(exe, args, dict(os.environ), setsid=True, file_actions=[
            (os.POSIX_SPAWN_DUP2, to_child, 3), (os.POSIX_SPAWN_DUP2, from_child, 4),
            (os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2)])
        for fd in (to_child, from_child, log):
            os.close(fd)
        self._buf = b""
        self._seq = 0
        self.session = ""

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill the browser and its helpers. Safe to run twice."""
        for fd in (self._out, self._in):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> dict[str, Any]:
        """Send one command (to the page once `open` attached it) and return its result."""
        self._seq += 1
        msg: dict[str, Any] = {"id": self._seq, "method": method, "params": params or {}}
        if self.session and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self.session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, _, self._buf = self._buf.partition(b"\0")
                answer = json.loads(raw)
                if answer.get("id") == self._seq:
                    if "error" in answer:
                        raise BrowserError(f"{method}: {answer['error']}")
                    return answer.get("result", {})
            if time.monotonic() > deadline:
                raise BrowserError(f"{method}: no answer after {timeout}s")
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise BrowserError("chromium closed the pipe (see chromium.log)")
            self._buf += chunk

    def open(self, url: str) -> None:
        """Open `url` in a new page and attach to it."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable")
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def wait_until(self, expression: str, timeout: float = 20, what: str = "") -> Any:
        """Poll `expression` until it is truthy; its value. BrowserError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except BrowserError:
                value = None          # the page is still loading
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout}s waiting for {what or expression}")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> bytes:
        """Write the visible page as a PNG at `path` (and return its bytes)."""
        data = base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data
