"""The Streamlit app under AppTest: every page, every mode, errors, share links and secrets."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from conftest import TOKEN, serve, wait_loaded
from inference import Settings, load_model
from inference.demo_models import demo_name
from inference.server import create_app

PAGES = {
    "text-generation": ("pages/text_generation.py", "tg_go", "Text generation"),
    "image-to-text": ("pages/image_to_text.py", "i2t_go", "Image to text"),
    "object-detection": ("pages/object_detection.py", "od_go", "Object detection"),
}


def app(page: str | None = None, *, query: dict | None = None, secrets: dict | None = None) -> AppTest:
    """The app opened at its home page, then (with ``page``) switched to that page as its link would."""
    at = AppTest.from_file("../streamlit_app.py", default_timeout=180)
    at.query_params.update(query or {})
    at.secrets.update(secrets or {})
    at.run()
    if page is not None:
        at.switch_page(PAGES[page][0]).run()
    assert not at.exception
    return at


def history(at: AppTest):
    """The Run history table as the page shows it (the last dataframe on the page)."""
    return at.dataframe[-1].value


def click(at: AppTest, key: str) -> AppTest:
    at.button(key=key).click().run()
    assert not at.exception, at.exception
    return at


def page_text(at: AppTest) -> str:
    """Everything a person could read on the page, its sidebar included."""
    parts = []
    for kind in ("markdown", "caption", "code", "error", "info", "success", "warning", "title", "subheader",
                 "text"):
        parts += [str(element.value) for element in getattr(at, kind)]
    parts += [f"{metric.label} {metric.value}" for metric in at.metric]
    parts += [image.proto.imgs[0].caption for image in at.get("image") if image.proto.imgs]
    parts += [str(widget.value) for widget in at.text_input] + [str(widget.value) for widget in at.text_area]
    return "\n".join(parts)


@pytest.fixture(scope="module", autouse=True)
def _demo_models(demo_dir):
    """The app's offline demo models are the tests' ones (built once)."""
    return demo_dir


#: What our navigation lists: the studio's name (the home page), then the three task pages, with their URL paths.
NAVIGATION = [("Inference Studio", ""), ("Text generation", "text_generation"), ("Image to text", "image_to_text"),
              ("Object detection", "object_detection")]


def links(block) -> list[tuple[str, str]]:
    """(label, URL path) of every ``st.page_link`` in ``block`` (``at.sidebar``, ``at.main``), in order."""
    return [(link.proto.label, link.proto.page) for link in block.get("page_link")]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs_alone(page):
    """No page needs the entry script: ``AppTest.from_file(page)`` gets its controls, sidebar and navigation."""
    path, button, title = PAGES[page]
    at = AppTest.from_file(f"../{path}", default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == title
    assert at.button(key=button).label in ("Generate", "Describe", "Detect")
    assert at.text_input(key=f"{button.split('_')[0]}_model").value.startswith("demo/")
    assert links(at.sidebar) == NAVIGATION
    assert at.segmented_control(key="_backend_mode_widget").value == "Local"  # the shared sidebar
    assert "Device:" in page_text(at)  # and its local status


def test_home_page_links_the_three_tasks_and_shows_the_backends():
    at = app()
    assert at.title[0].value == "Inference Studio"
    assert links(at.sidebar) == NAVIGATION
    assert links(at.main) == NAVIGATION[1:]  # one link per task
    text = page_text(at)
    assert "**Backend:** Local" in text and "loopback server on this machine" in text
    assert "Device:" in text  # the sidebar's status is there too


def test_an_old_text_generation_link_to_the_root_still_opens_text_generation():
    """Until the home page came, text generation was at ``/``: its share links point there."""
    at = app(query={"mode": "compare", "prompt": "hello there", "max_new_tokens": "12"})
    assert at.title[0].value == "Text generation"
    assert at.text_area(key="tg_prompt").value == "hello there"
    assert at.slider(key="tg_max_new_tokens").value == 12
    assert "Backend: **Compare**" in page_text(at)


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_and_runs_locally(page):
    path, button, title = PAGES[page]
    at = app(page)
    assert at.title[0].value == title
    assert "random weights" in page_text(at)  # the offline demo models are labelled as such
    click(at, button)
    assert not at.error, [e.value for e in at.error]
    assert any(metric.label == "Total" and metric.value.endswith("ms") for metric in at.metric)


def test_text_generation_shows_streaming_metrics(demo_dir, session_engine):
    at = click(app("text-generation"), "tg_go")
    labels = [metric.label for metric in at.metric]
    assert labels[:3] == ["Total", "Time to first token", "Tokens/s"]
    # The streamed answer, whole, on the page: the same model, prompt and greedy settings give it here too.
    model = load_model(demo_dir["text-generation"], task="text-generation", backend="local", engine=session_engine)
    answer = model(at.text_area(key="tg_prompt").value, max_new_tokens=at.slider(key="tg_max_new_tokens").value).text
    assert answer and answer in page_text(at)


def test_image_to_text_with_a_prompt_runs_image_text_to_text():
    at = app("image-to-text")
    at.text_input(key="i2t_prompt").set_value("a photo of").run()
    assert "image-text-to-text" in page_text(at)
    click(at, "i2t_go")
    assert not at.error and any(metric.label == "Tokens/s" for metric in at.metric)
    assert list(history(at)["task"]) == ["image-text-to-text"]  # the run, as the Run history records it


def test_detection_class_filter_and_downloads():
    at = click(app("object-detection"), "od_go")
    labels = list(at.dataframe[0].value["label"])  # the table of detections on the page
    assert len(labels) > 0 and f"{len(labels)} of {len(labels)} detections shown" in page_text(at)
    assert [d.label for d in at.get("download_button")][:2] == ["Annotated PNG", "Detections JSON"]
    shown = at.multiselect(key="od_classes")
    first = shown.value[0]
    shown.unselect(first).run()
    assert not at.exception
    kept = sum(name != first for name in labels)
    assert f"{kept} of {len(labels)} detections shown" in page_text(at)


def test_compare_uses_the_loopback_server_when_no_endpoint_is_set():
    at = app("text-generation", query={"mode": "compare"})
    sidebar = page_text(at)
    assert "loopback server on this machine" in sidebar and "Reachable" in sidebar
    click(at, "tg_go")
    assert not at.error and [header.value for header in at.subheader][:2] == ["Local", "Remote"]
    assert "**Server**" in page_text(at)  # the remote column's server/network split: it ran remotely
    assert "Local and remote answers are identical." in page_text(at)  # same weights, greedy decoding


@pytest.fixture(scope="module")
def endpoint(demo_dir):
    """A token-protected server that serves the app's demo models under their short names (``demo/<task>``)."""
    models = {demo_name(task): demo_name(task) for task in demo_dir}
    with serve(create_app(models, settings=Settings(server_tokens=(TOKEN,)))) as url:
        wait_loaded(url, 4)
        yield {"REMOTE_INFERENCE_ENABLED": "true", "REMOTE_INFERENCE_ENDPOINT": f"{url}/inference",
               "REMOTE_INFERENCE_TOKEN": TOKEN}


def test_compare_detection_against_a_configured_endpoint(endpoint):
    at = click(app("object-detection", query={"mode": "compare"}, secrets=endpoint), "od_go")
    assert not at.error
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics["Only local"] == "0" and metrics["Only remote"] == "0"
    assert int(metrics["Matched boxes"]) == len(at.dataframe[0].value) > 0  # every box of the local table
    assert TOKEN not in page_text(at)


def test_run_n_times_reports_p50_and_p95(endpoint):
    at = app("text-generation", query={"mode": "compare"}, secrets=endpoint)
    at.number_input(key="tg_runs").set_value(3).run()
    click(at, "tg_repeat")
    table = at.dataframe[0].value
    assert list(table["backend"]) == ["Local", "Remote"] and list(table["n"]) == [3, 3]
    assert {"p50_ms", "p95_ms"} <= set(table.columns)
    assert at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")


def test_bad_upload_is_an_error_not_a_crash():
    at = app("object-detection")
    at.segmented_control(key="od_source").set_value("Upload").run()
    at.file_uploader(key="od_upload").set_value(("photo.png", b"definitely not a png", "image/png")).run()
    click(at, "od_go")
    assert any("not an image" in error.value for error in at.error)


def test_unreachable_endpoint_is_an_error_and_compare_still_shows_local(unused_port):
    secrets = {"REMOTE_INFERENCE_ENABLED": "true", "REMOTE_INFERENCE_TOKEN": TOKEN, "REMOTE_INFERENCE_TIMEOUT": "5",
               "REMOTE_INFERENCE_ENDPOINT": f"http://127.0.0.1:{unused_port}/inference"}
    at = click(app("text-generation", query={"mode": "remote"}, secrets=secrets), "tg_go")
    assert any("cannot reach the remote endpoint" in error.value for error in at.error)
    at = click(app("text-generation", query={"mode": "compare"}, secrets=secrets), "tg_go")
    assert [header.value for header in at.subheader][:2] == ["Local", "Remote"]
    assert "**Total**" in page_text(at)  # the local column's result (Compare's compact timings)
    assert any("cannot reach the remote endpoint" in error.value for error in at.error)  # the remote column's
    assert TOKEN not in page_text(at)


def test_a_rerun_does_not_reload_the_model():
    from ui.state import get_engine

    at = click(app("object-detection"), "od_go")
    before = {m["model_id"]: m["loaded_at"] for m in get_engine().status()["models"]}
    at.slider(key="od_threshold").set_value(0.3).run()
    click(at, "od_go")
    at.switch_page(PAGES["text-generation"][0]).run()
    at.switch_page(PAGES["object-detection"][0]).run()
    click(at, "od_go")
    after = {m["model_id"]: m["loaded_at"] for m in get_engine().status()["models"]}
    assert all(after[model_id] == loaded_at for model_id, loaded_at in before.items())
    assert "model load" not in page_text(at)  # the result reports no load time


def test_settings_survive_switching_pages():
    at = app("text-generation")
    at.text_area(key="tg_prompt").set_value("Tell me about cats").run()
    at.switch_page(PAGES["object-detection"][0]).run()
    at.switch_page(PAGES["text-generation"][0]).run()
    assert at.text_area(key="tg_prompt").value == "Tell me about cats"


def test_share_link_restores_settings_and_ignores_endpoint_and_token(demo_dir):
    query = {"mode": "remote", "model": "demo/text-generation", "prompt": "hello there", "max_new_tokens": "12",
             "temperature": "0.7", "seed": "7",
             "endpoint": "http://attacker.example/inference", "token": "stolen", "REMOTE_INFERENCE_ENDPOINT": "x"}
    at = app("text-generation", query=query)
    assert at.text_area(key="tg_prompt").value == "hello there"
    assert at.slider(key="tg_max_new_tokens").value == 12
    assert at.slider(key="tg_temperature").value == 0.7
    assert "Backend: **Remote**" in page_text(at)
    text = page_text(at)
    assert "attacker.example" not in text and "stolen" not in text
    assert "loopback server on this machine" in text  # the injected endpoint was not used


def test_share_link_with_out_of_range_values_keeps_defaults():
    at = app("text-generation", query={"max_new_tokens": "999999", "temperature": "hot"})
    assert at.slider(key="tg_max_new_tokens").value == 64
    assert at.slider(key="tg_temperature").value == 0.0


def test_share_box_holds_settings_but_never_endpoint_or_token(endpoint):
    at = app("object-detection", query={"mode": "compare"}, secrets=endpoint)
    at.slider(key="od_threshold").set_value(0.35).run()
    (url,) = [code.value for code in at.code if "threshold=" in code.value]
    assert "threshold=0.35" in url and "mode=compare" in url and "sample=astronaut" in url
    assert TOKEN not in url and "127.0.0.1:" not in url.split("?")[1] and "endpoint" not in url


@pytest.mark.parametrize("page", PAGES)
def test_token_never_reaches_the_page(page, endpoint):
    at = app(page, query={"mode": "remote"}, secrets=endpoint)
    assert TOKEN not in page_text(at)
    click(at, PAGES[page][1])
    assert TOKEN not in page_text(at)
    assert not at.error, [e.value for e in at.error]
