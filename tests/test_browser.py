"""The app in a real browser: Playwright drives Debian's Chromium through every page.

Needs /usr/bin/chromium (``.ci/run`` installs it); skipped elsewhere unless CI is set. Screenshots go to
$SCREENSHOT_DIR (default test-results/screenshots); ``make screenshots`` writes the README's.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import _loopback_socket

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = Path(os.environ.get("SCREENSHOT_DIR", ROOT / "test-results" / "screenshots"))
# The flags this sandbox needs: no background networking (the network is closed), no GPU, no sandbox as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run should have installed Debian's chromium")
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@contextlib.contextmanager
def fresh_server(env: dict[str, str] | None = None):
    """``streamlit run streamlit_app.py`` on a free loopback port, a new process (with ``env`` added): yields its URL."""
    sock = _loopback_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError("streamlit did not start")
        time.sleep(0.3)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def app_url(demo_dir):
    with fresh_server() as url:
        yield url


@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def browser(playwright):
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    return page


def _run(page, button: str, done: str, timeout: float = 120_000) -> None:
    page.get_by_role("button", name=button).first.click()
    page.get_by_text(done).first.wait_for(timeout=timeout)
    # Streamlit shows "Running" in the header until the script run ends.
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=timeout)
    page.wait_for_timeout(500)


def _shot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def test_text_generation_page(browser, app_url, demo_dir, session_engine):
    page = _open(browser, f"{app_url}/text_generation")
    page.get_by_role("button", name="Generate").wait_for(timeout=60_000)
    _run(page, "Generate", "Tokens/s")
    expect(page.get_by_text("Time to first token")).to_be_visible()
    # The sidebar's local status already lists the model this very run loaded.
    expect(page.locator('[data-testid="stSidebar"]').get_by_role("button", name="Unload").first).to_be_visible()
    # The streamed answer is on the page, whole: the same model, prompt and greedy settings give the same text here.
    from inference import load_model

    model = load_model(demo_dir["text-generation"], task="text-generation", backend="local", engine=session_engine)
    answer = model("Write a haiku about the sea.", max_new_tokens=64).text
    assert len(answer.split()) >= 5
    expect(page.locator('[data-testid="stMarkdownContainer"]').filter(has_text=answer).first).to_be_visible()
    _shot(page, "text-generation")
    page.close()


def test_image_to_text_page(browser, app_url):
    page = _open(browser, f"{app_url}/image_to_text")
    page.get_by_role("button", name="Describe").wait_for(timeout=60_000)
    _run(page, "Describe", "Tokens/s")
    expect(page.get_by_text("image-to-text", exact=True).first).to_be_visible()
    _shot(page, "image-to-text")
    page.close()


def test_object_detection_page(browser, app_url):
    page = _open(browser, f"{app_url}/object_detection")
    page.get_by_role("button", name="Detect").wait_for(timeout=60_000)
    _run(page, "Detect", "detections shown")
    image = page.locator('[data-testid="stImage"] img').first
    expect(image).to_have_js_property("naturalWidth", 512)  # the astronaut photo, loaded
    shown = httpx.URL(app_url).join(image.get_attribute("src"))  # the src may be relative or absolute
    assert _drawn_on(str(shown), ROOT / "assets" / "astronaut.jpg") > 0.002
    expect(page.locator('[data-testid="stDownloadButton"]').filter(has_text="Annotated PNG").first).to_be_visible()
    _shot(page, "object-detection")
    page.close()


def _drawn_on(url: str, original: Path) -> float:
    """The share of the shown image's pixels that differ clearly from the original photo (boxes and labels)."""
    import io

    import numpy as np
    from PIL import Image

    shown = np.asarray(Image.open(io.BytesIO(httpx.get(url, timeout=10).content)).convert("RGB"), dtype=np.int16)
    photo = np.asarray(Image.open(original).convert("RGB"), dtype=np.int16)
    assert shown.shape == photo.shape
    # Re-encoding moves a pixel by a few levels; a box or a label moves it by far more.
    return float((np.abs(shown - photo).max(axis=2) > 80).mean())


def test_object_detection_compare_page(browser, app_url):
    page = _open(browser, f"{app_url}/object_detection?mode=compare")
    page.get_by_role("button", name="Detect").wait_for(timeout=60_000)
    _run(page, "Detect", "Matched boxes", timeout=180_000)
    expect(page.get_by_text("loopback server on this machine").first).to_be_visible()
    expect(page.get_by_text("Both on one picture")).to_be_visible()
    _shot(page, "object-detection-compare")
    page.close()


def test_bad_upload_shows_an_error(browser, app_url):
    page = _open(browser, f"{app_url}/object_detection")
    page.get_by_role("button", name="Detect").wait_for(timeout=60_000)
    page.get_by_role("radio", name="Upload").click()  # a segmented control option
    page.locator('input[type="file"]').set_input_files(
        {"name": "holiday.png", "mimeType": "image/png", "buffer": b"this is not a picture"})
    page.get_by_text("holiday.png").wait_for(timeout=30_000)
    _run(page, "Detect", "not an image")
    expect(page.locator('[data-testid="stAlertContentError"]').first).to_be_visible()
    expect(page.get_by_text("Traceback")).to_have_count(0)
    page.close()


def test_a_share_link_opened_first_on_a_fresh_server_gets_the_whole_app(browser, demo_dir):
    """Streamlit's legacy pages/ mode would run the page alone: no sidebar, no restored settings."""
    with fresh_server() as url:
        page = _open(browser, f"{url}/object_detection?mode=compare&threshold=0.35&sample=cat")
        page.get_by_role("button", name="Detect").wait_for(timeout=60_000)
        page.get_by_text("Backend: Compare").wait_for(timeout=60_000)
        expect(page.locator('[data-testid="stSidebar"]').get_by_text("Backend").first).to_be_visible()
        expect(page.locator('[data-testid="stSlider"]').first).to_contain_text("0.35")
        page.close()


#: Installed before the page's own scripts: records every state the navigation goes through, from the very first
#: paint, as [Streamlit's own navigation links, our page links in the sidebar] (labels without their icons).
RECORD_NAVIGATION = """
window.__navigation = [];
const label = (element) => {
  const copy = element.cloneNode(true);
  copy.querySelectorAll('[data-testid="stIconMaterial"], [data-testid="stIconEmoji"]').forEach((e) => e.remove());
  return copy.textContent.trim();
};
window.__navigationNow = () => {
  const streamlits = [...document.querySelectorAll('[data-testid="stSidebarNav"] a, [data-testid="stSidebarNavLink"]')];
  const ours = [...document.querySelectorAll('[data-testid="stSidebar"] [data-testid="stPageLink-NavLink"]')];
  return [[...new Set(streamlits.map(label))], ours.map(label)];
};
const record = () => {
  const state = JSON.stringify(window.__navigationNow());
  const states = window.__navigation;
  if (states[states.length - 1] !== state) states.push(state);
};
new MutationObserver(record).observe(document, {subtree: true, childList: true, characterData: true});
"""
#: Our navigation: the studio's name (the home page), then the three task pages with their titles.
NAVIGATION = ["Inference Studio", "Text generation", "Image to text", "Object detection"]
ICONS = ["edit_note", "image_search", "center_focus_strong"]  # the task pages' icons, as before


@pytest.mark.parametrize("path, title", [
    ("/", "Inference Studio"),  # the home page
    ("/object_detection?mode=compare&model=demo/object-detection&threshold=0.35", "Object detection"),  # a share link
])
def test_the_first_paint_on_a_fresh_server_shows_our_navigation_and_only_it(browser, demo_dir, path, title):
    """The first request a new server gets: no frame ever shows Streamlit's navigation (file names), only ours."""
    import json

    with fresh_server() as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.add_init_script(RECORD_NAVIGATION)
        page.goto(f"{url}{path}")
        nav = page.locator(".st-key-nav [data-testid='stPageLink-NavLink']")
        nav.last.wait_for(timeout=60_000)
        seen = [json.loads(state) for state in page.evaluate("window.__navigation")]
        # Taken as soon as our navigation is complete: it came first, whole or link by link, and nothing else before.
        with_links = [(streamlits, ours) for streamlits, ours in seen if streamlits or ours]
        assert with_links and all(not streamlits and ours == NAVIGATION[:len(ours)] for streamlits, ours in with_links), seen
        assert with_links[-1][1] == NAVIGATION
        expect(page.get_by_role("heading", name=title).first).to_be_visible(timeout=60_000)
        page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=120_000)
        # Still ours once the run ended, and Streamlit's never showed up in between.
        seen = [json.loads(state) for state in page.evaluate("window.__navigation")]
        assert all(not streamlits for streamlits, _ in seen), seen
        expect(page.locator('[data-testid="stSidebarNav"]')).to_have_count(0)
        assert page.evaluate("window.__navigationNow()") == [[], NAVIGATION]
        expect(page.locator(".st-key-nav [data-testid='stIconMaterial']")).to_have_text(ICONS)
        assert "Backend" in page.locator('[data-testid="stSidebar"]').inner_text()  # the shared sidebar
        _shot(page, "first-paint-home" if path == "/" else "first-paint-share-link")
        page.close()


# --------------------------------------------------------------------------- video and the live camera

SAMPLE_CLIP = ROOT / "assets" / "sample-clip.mp4"


def test_an_uploaded_clip_plays_annotated_with_its_figures_and_downloads(browser, app_url):
    page = _open(browser, f"{app_url}/object_detection?source=Video&stride=2")
    page.get_by_role("button", name="Detect on video").wait_for(timeout=60_000)
    page.get_by_role("radio", name="Upload").last.click()  # the Clip control's Upload
    page.locator('input[type="file"]').set_input_files(str(SAMPLE_CLIP))
    page.get_by_text("sample-clip.mp4").first.wait_for(timeout=30_000)
    _run(page, "Detect on video", "frames run", timeout=180_000)
    expect(page.get_by_text("60 frames run").first).to_be_visible()
    expect(page.get_by_text("Frames/s").first).to_be_visible()
    fps = float(page.locator('[data-testid="stMetric"]').filter(has_text="Frames/s").first
                .locator('[data-testid="stMetricValue"]').inner_text())
    assert fps > 0
    expect(page.get_by_text("track ids").first).to_be_visible()
    # The annotated video: H.264 MP4 served to the page, every run frame in it, boxes drawn.
    src = page.locator('[data-testid="stVideo"]').first.get_attribute("src")
    annotated = httpx.get(str(httpx.URL(app_url).join(src)), timeout=10).content
    from inference.video import VideoReader

    with VideoReader(annotated) as reader:
        assert reader.info.codec == "h264" and len(list(reader.frames())) == 60
    for name in ("Annotated MP4", "Detections JSONL"):
        expect(page.locator('[data-testid="stDownloadButton"]').filter(has_text=name).first).to_be_visible()
    with page.expect_download() as download:
        page.locator('[data-testid="stDownloadButton"]').filter(has_text="Detections JSONL").first.click()
    lines = Path(download.value.path()).read_text().splitlines()
    assert len(lines) == 60 and '"track_id"' in "".join(lines)
    _shot(page, "video")
    page.close()


def test_stop_ends_a_clip_and_keeps_what_was_done(browser, app_url):
    page = _open(browser, f"{app_url}/object_detection?source=Video&max_edge=Full+size")
    page.get_by_role("button", name="Detect on video").wait_for(timeout=60_000)
    page.get_by_role("button", name="Detect on video").click()
    page.get_by_text("frames/s · p50").first.wait_for(timeout=60_000)  # frames are coming
    page.locator(".st-key-od_video_stop button").filter(visible=True).click()  # ours, not the header's (Streamlit's own stop)
    page.get_by_text("Stopped at frame").first.wait_for(timeout=60_000)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=60_000)
    expect(page.locator('[data-testid="stVideo"]').first).to_be_visible()
    expect(page.get_by_role("button", name="Detect on video")).to_be_enabled()
    expect(page.get_by_text("Traceback")).to_have_count(0)
    page.close()


def test_a_file_that_is_no_video_says_so_and_the_page_keeps_working(browser, app_url):
    page = _open(browser, f"{app_url}/object_detection?source=Video")
    page.get_by_role("button", name="Detect on video").wait_for(timeout=60_000)
    page.get_by_role("radio", name="Upload").last.click()
    page.locator('input[type="file"]').set_input_files(
        {"name": "holiday.mp4", "mimeType": "video/mp4", "buffer": b"this is not a video" * 100})
    page.get_by_text("This video cannot be used").wait_for(timeout=30_000)
    expect(page.get_by_text("not a video FFmpeg can read").first).to_be_visible()
    _run(page, "Detect on video", "Nothing was run")
    expect(page.get_by_role("button", name="Detect on video")).to_be_enabled()
    expect(page.get_by_text("Traceback")).to_have_count(0)
    page.close()


def test_the_video_compare_screenshot(browser, app_url):
    """Local and remote on the sample clip, side by side with their parity: the README's screenshot."""
    page = browser.new_page(viewport={"width": 1400, "height": 1700})  # tall enough for the parity
    page.goto(f"{app_url}/object_detection?mode=compare&source=Video&stride=2")
    page.get_by_role("button", name="Detect on video").wait_for(timeout=60_000)
    _run(page, "Detect on video", "Frames that agree", timeout=240_000)
    expect(page.get_by_text("loopback server on this machine").first).to_be_visible()
    videos = page.locator('[data-testid="stVideo"]')
    expect(videos).to_have_count(2)
    # Both players at the same moment of the clip, so the picture shows tracked boxes (#id) and not a first frame.
    page.evaluate("""() => Promise.all([...document.querySelectorAll('[data-testid="stVideo"]')].map((video) =>
        new Promise((done) => { video.addEventListener('seeked', done, {once: true}); video.currentTime = 2.2; })))""")
    page.wait_for_timeout(500)
    _shot(page, "video-compare")
    page.close()


def test_the_live_camera_streams_annotated_frames(playwright, app_url):
    """Chromium's fake camera through WebRTC to the app and back, on loopback, with no ICE server."""
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True,
        args=[*CHROMIUM_ARGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{app_url}/object_detection?source=Live+camera")
        component = page.frame_locator('iframe[title*="webrtc"]').first
        component.get_by_role("button", name="START").click(timeout=60_000)
        frames = page.locator('[data-testid="stMetric"]').filter(has_text="Frames").last
        deadline = time.monotonic() + 60
        count = 0
        while time.monotonic() < deadline and count < 10:
            page.wait_for_timeout(1000)
            text = frames.locator('[data-testid="stMetricValue"]').inner_text() if frames.count() else "0"
            count = int(text.replace(",", "")) if text.replace(",", "").isdigit() else 0
        assert count >= 10, "no annotated frames came back"
        # The annotated stream plays in the component: the video has frames of its own size.
        assert component.locator("video").first.evaluate("(video) => video.videoWidth") > 0
        expect(page.locator('[data-testid="stMetric"]').filter(has_text="Frames/s").first).to_be_visible()
        _shot(page, "live-camera")
        component.get_by_role("button", name="STOP").click()
    finally:
        browser.close()
