"""The status page in a real headless Chromium while a batch runs against the fake LLM.

Chromium is Debian's `chromium` package (scripts/run_tests.sh installs it on CI, like
redis-server), driven over the DevTools protocol with `websocket-client`: the page is
loaded once and its own script must move the progress without a reload. A screenshot
is kept in `test-artifacts/status-page.png` (gitignored) for a human to look at.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from tests.conftest import ROOT, Backend, config
from tests.fake_llm import server as fake

ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOT = ARTIFACTS / "status-page.png"


class Chromium:
    """A headless Chromium with one page, steered over the DevTools protocol."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.proc = subprocess.Popen(
            [
                binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--remote-debugging-port=0", "--remote-allow-origins=*",
                f"--user-data-dir={profile}", "--window-size=1280,1400", "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        port = self._devtools_port(profile)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            page = next(t for t in json.loads(resp.read()) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30)
        self._id = 0

    def _devtools_port(self, profile: Path) -> int:
        """Chromium writes its DevTools port to DevToolsActivePort in the profile once it listens."""
        marker = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if marker.exists() and (lines := marker.read_text().splitlines()):
                return int(lines[0])
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited: {self.proc.stderr.read()[-2000:] if self.proc.stderr else ''}")
            time.sleep(0.1)
        raise RuntimeError("chromium did not open its DevTools port")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                assert "error" not in message, message
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture()
def chromium(tmp_path: Path) -> Iterator[Chromium]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (scripts/run_tests.sh installs it under CI=true as root)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    browser = Chromium(binary, tmp_path / "chromium-profile")
    yield browser
    browser.close()


DONE = "(document.querySelector('#running .done') || {}).textContent || null"


def test_status_page_progress_moves_in_headless_chromium(
    chromium: Chromium, backend: Backend, llm: fake.FakeLLMServer
) -> None:
    llm.latency = 0.3
    llm.set_responder(lambda _req: fake.chat('{"sentiment": "正面"}'))
    tasks = [{"id": i, "data": {"text": f"物流很快，质量不错 {i}"}} for i in range(20)]  # ~6 s at concurrency 1
    runner = threading.Thread(target=backend.predict, args=(config("text_classification"), tasks, "5.1700000000"))
    runner.start()
    try:
        time.sleep(0.8)
        chromium.call("Page.enable")
        chromium.call("Page.navigate", url=backend.url + "/")
        seen: list[int] = []
        while runner.is_alive():
            if (value := chromium.evaluate(DONE)) is not None:
                seen.append(int(value))
                if len(set(seen)) == 2:  # the page's own refresh has moved the count once: picture it
                    shot = chromium.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
                    ARTIFACTS.mkdir(exist_ok=True)
                    SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
            time.sleep(0.3)
        navigations = chromium.evaluate("performance.getEntriesByType('navigation').length")
    finally:
        runner.join()
    assert navigations == 1  # one load: the numbers moved without a reload
    assert len(set(seen)) >= 2 and seen == sorted(seen) and seen[-1] < 20, seen
    assert SCREENSHOT.stat().st_size > 10_000 and SCREENSHOT.read_bytes()[:4] == b"\x89PNG"
    # After the batch the page's next refresh shows it among the last batches.
    time.sleep(2.5)
    text = chromium.evaluate("document.body.innerText")
    assert "当前没有进行中的批次" in text and re.search(r"\b5\s+20\s+20\s+0\b", text), text
