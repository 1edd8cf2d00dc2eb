"""The demo in a real browser: Playwright drives the system's headless Chromium (never downloaded).

Needs Debian's ``chromium`` (or ``chromium-headless-shell``) installed, e.g. ``apt-get install -y chromium``;
``$SOCODEC_CHROMIUM`` names another binary. Without one these tests fail: they are not skipped.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from conftest import GOLDEN, chromium_path, tiny_ckpt_dir
from socodec import SoCodec
from socodec.demo.app import launch
from socodec.demo.app import DemoHandlers

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # its own pandas use

SPEECH = GOLDEN / "ground_truth.wav"
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-browser")
    codec = SoCodec.from_pretrained(tiny_ckpt_dir(root / "ckpts"), analyzer_config=GOLDEN / "analyzer_tiny.json",
                                    vocoder_config=GOLDEN / "vocoder_tiny.json")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = launch(DemoHandlers(codec, root / "work"), "127.0.0.1", port, block=False)
    try:
        yield app.local_url.rstrip("/")
    finally:
        app.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_path(), headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, app_url):
    """A fresh page on the app; every request it makes must stay on this machine."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.outside = []  # type: ignore[attr-defined]
    page.on("request", lambda r: None if r.url.startswith((app_url, "data:", "blob:")) else page.outside.append(r.url))
    page.goto(app_url)
    yield page
    context.close()


def _upload_speech(page: Page, path: Path) -> None:
    page.locator("#speech-input input[type=file]").set_input_files(str(path))
    page.click("#encode")


def test_upload_encode_and_hear_the_resynthesis(page: Page):
    _upload_speech(page, SPEECH)
    page.wait_for_selector("#resynthesis audio[src]", state="attached", timeout=WAIT_MS)
    assert "frames x 4 streams" in page.inner_text("#summary")
    assert "4 of 4 streams" in page.inner_text("#synthesis-summary")
    files = page.inner_text("#token-files")
    assert ".soc" in files and ".pt" in files
    page.locator("#streams label", has_text="2").click()  # a new stream count re-decodes the same tokens
    page.wait_for_function("document.querySelector('#synthesis-summary').innerText.includes('2 of 4 streams')",
                           timeout=WAIT_MS)
    assert page.outside == []  # type: ignore[attr-defined]


def test_the_empty_token_table_names_its_columns(page: Page):
    page.wait_for_selector("#token-table th[role=columnheader]", timeout=WAIT_MS)
    headers = [page.locator("#token-table th[role=columnheader]").nth(i).get_attribute("title") or ""
               for i in range(page.locator("#token-table th[role=columnheader]").count())]
    text = " ".join(headers)
    assert "frame" in text and "stream 4" in text, headers
    assert not {"1", "2", "3"} & {h.strip() for h in headers}, headers


def test_a_bad_upload_shows_the_one_line_error(page: Page, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00")
    _upload_speech(page, broken)
    toast = page.get_by_text("broken.wav: not a readable audio file")
    toast.wait_for(timeout=WAIT_MS)
    assert toast.count() >= 1
