"""Issue 10 §2 in a real browser: bad uploads seen before any click, many sessions at once on a cold model,
the first Remote run's startup message, and the app ending on SIGTERM with its loopback server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from conftest import _loopback_socket
from test_app_no_traceback import BAD_FILES
import test_browser
from test_browser import ROOT, _open, _shot, expect

TRACEBACK = '[data-testid="stException"]'
ERROR = '[data-testid="stAlertContentError"]'


@contextlib.contextmanager
def streamlit_app():
    """``streamlit run streamlit_app.py`` on a free loopback port; yields (url, process)."""
    sock = _loopback_socket()
    port = sock.getsockname()[1]
    sock.close()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/_stcore/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("streamlit did not start")
            time.sleep(0.3)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def playwright():
    yield from test_browser.playwright.__wrapped__()


@pytest.fixture(scope="module")
def browser(playwright):
    yield from test_browser.browser.__wrapped__(playwright)


@pytest.fixture(scope="module")
def app_url(demo_dir):
    with streamlit_app() as (url, _):
        yield url


def _idle(page, timeout: float = 120_000) -> None:
    """Wait until the script run ends (Streamlit shows "Running" in the header until then)."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=timeout)


@pytest.mark.parametrize("path, button, controls", [
    ("image_to_text", "Describe", ["Model", "Prompt (optional)"]),
    ("object_detection", "Detect", ["Model"]),
])
def test_bad_uploads_are_errors_before_any_click(browser, app_url, path, button, controls):
    page = _open(browser, f"{app_url}/{path}")
    page.get_by_role("button", name=button).wait_for(timeout=60_000)
    page.get_by_role("radio", name="Upload").click()
    for name, (data, says) in BAD_FILES.items():
        page.locator('input[type="file"]').set_input_files({"name": name, "mimeType": "image/png", "buffer": data})
        error = page.locator(ERROR).filter(has_text=name)
        error.wait_for(timeout=30_000)
        _idle(page)
        expect(error).to_contain_text(says)
        expect(page.locator(TRACEBACK)).to_have_count(0)
        expect(page.locator('[data-testid="stImage"]')).to_have_count(0)  # no preview of a bad file
        for label in controls:
            expect(page.get_by_role("textbox", name=label)).to_be_visible()
        expect(page.get_by_role("button", name=button)).to_be_visible()
        _shot(page, f"bad-upload-{path}-{name}")
    page.get_by_role("button", name=button).click()  # the last file (the huge PNG): nothing runs
    page.locator(ERROR).filter(has_text="Nothing was run").wait_for(timeout=30_000)
    expect(page.locator(TRACEBACK)).to_have_count(0)
    page.close()


def test_many_sessions_at_once_on_a_cold_model_all_get_their_boxes(browser, app_url, demo_dir, tmp_path):
    model = tmp_path / "cold-detector"  # a model no session has loaded yet
    shutil.copytree(demo_dir["object-detection"], model)
    pages = [_open(browser, f"{app_url}/object_detection?model={model}") for _ in range(4)]
    for page in pages:
        page.get_by_role("button", name="Detect").wait_for(timeout=60_000)
        _idle(page)
    for page in pages:  # as close to the same moment as one browser allows
        page.get_by_role("button", name="Detect").click()
    for index, page in enumerate(pages):
        page.get_by_text("detections shown").first.wait_for(timeout=120_000)
        _idle(page)
        expect(page.locator(TRACEBACK)).to_have_count(0)
        expect(page.locator(ERROR)).to_have_count(0)
        if index == 0:
            _shot(page, "many-sessions-one")
    for page in pages:
        page.close()


def _loopback_children(process: subprocess.Popen) -> list[psutil.Process]:
    return [child for child in psutil.Process(process.pid).children(recursive=True)
            if "inference.server" in " ".join(child.cmdline())]


def test_first_remote_run_says_the_server_is_starting_and_sigterm_ends_the_app_with_it(browser, demo_dir):
    with streamlit_app() as (url, process):
        page = _open(browser, f"{url}/text_generation?mode=remote")
        # The server starts as the page opens in Remote mode (its progress shows in the sidebar), or with the first
        # run if that comes sooner (then in the page): either way the page says what it is waiting for.
        page.get_by_text("Started the server on this machine in").first.wait_for(timeout=120_000)
        page.get_by_role("button", name="Generate").click()
        page.get_by_text("Tokens/s").first.wait_for(timeout=120_000)
        _idle(page)
        # The sidebar asked the server again after the run: the model this run loaded there is listed as loaded.
        sidebar = page.locator('[data-testid="stSidebar"]')
        expect(sidebar.get_by_role("listitem").filter(has_text="demo/text-generation")).to_contain_text("loaded")
        expect(sidebar.get_by_role("listitem").filter(has_text="demo/text-generation")).not_to_contain_text(
            "not loaded")
        expect(page.locator(TRACEBACK)).to_have_count(0)
        _shot(page, "remote-first-run")
        (server,) = _loopback_children(process)
        page.close()

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=8)
        took = time.monotonic() - started
        _, alive = psutil.wait_procs([server], timeout=2)
        assert not alive, "the loopback server outlived the app"
        assert took < 5, f"the app took {took:.1f} s to end after SIGTERM"
