"""The app with named endpoints: N-way Compare (up to four columns, parity against a chosen reference), the Remote
mode's endpoint choice, the sidebar's endpoint status, and share links that name endpoints, never URLs or tokens."""

from __future__ import annotations

import pytest

from conftest import TOKEN, serve, wait_loaded
from inference import Settings
from inference.demo_models import demo_name
from inference.server import create_app
from test_app import app, click, history, page_text


@pytest.fixture(scope="module")
def secrets(demo_dir):
    """One reference server, reached three ways: the studio protocol (REMOTE_INFERENCE_*), its OpenAI routes and,
    for the detector, the Hugging Face task API."""
    models = {demo_name(task): demo_name(task) for task in demo_dir}
    with serve(create_app(models, settings=Settings(server_tokens=(TOKEN,)))) as url:
        wait_loaded(url, 4)
        yield {"REMOTE_INFERENCE_ENABLED": "true", "REMOTE_INFERENCE_ENDPOINT": f"{url}/inference",
               "REMOTE_INFERENCE_TOKEN": TOKEN,
               "endpoints": {"v1": {"url": f"{url}/v1", "protocol": "openai", "token": TOKEN},
                             "hf-det": {"url": f"{url}/models/{demo_name('object-detection')}", "protocol": "hf",
                                        "token": TOKEN}}}


def test_three_columns_each_compared_with_the_reference(secrets):
    at = app("text-generation", query={"mode": "compare", "columns": "local,remote,v1"}, secrets=secrets)
    assert at.multiselect(key="_compare_columns_widget").value == ["local", "remote", "v1"]
    click(at, "tg_go")
    assert not at.error, [error.value for error in at.error]
    assert [header.value for header in at.subheader][:3] == ["Local", "Remote", "v1"]
    text = page_text(at)
    assert "Local and remote answers are identical." in text and "Local and v1 answers are identical." in text
    assert set(history(at)["backend"]) == {"local", "remote", "v1"}  # every run in the history, by its endpoint
    assert TOKEN not in text and "127.0.0.1" not in at.query_params.get("columns", "")


def test_another_reference_and_a_fourth_column_is_the_most(secrets):
    at = app("text-generation", query={"mode": "compare", "columns": "local,v1", "reference": "v1"}, secrets=secrets)
    assert at.selectbox(key="_compare_reference_widget").value == "v1"
    click(at, "tg_go")
    assert "v1 and local answers are identical." in page_text(at)
    columns = at.multiselect(key="_compare_columns_widget")
    assert columns.proto.max_selections == 4


def test_remote_mode_runs_on_the_chosen_endpoint(secrets):
    at = app("text-generation", query={"mode": "remote", "endpoint": "v1"}, secrets=secrets)
    assert at.selectbox(key="_remote_endpoint_widget").value == "v1"
    click(at, "tg_go")
    assert not at.error and list(history(at)["backend"]) == ["v1"]


def test_detection_compared_with_a_hugging_face_endpoint(secrets):
    at = click(app("object-detection", query={"mode": "compare", "columns": "local,hf-det"}, secrets=secrets), "od_go")
    assert not at.error, [error.value for error in at.error]
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics["Only local"] == "0" and metrics["Only hf-det"] == "0" and int(metrics["Matched boxes"]) > 0


def test_the_sidebar_shows_each_endpoint_and_never_a_token_or_path(secrets):
    at = app("text-generation", secrets=secrets)
    sidebar = "\n".join(str(element.value) for element in at.sidebar.markdown) + "\n".join(
        str(element.value) for element in at.sidebar.caption)
    assert "**v1** · openai · 127.0.0.1:" in sidebar and "**hf-det** · hf · 127.0.0.1:" in sidebar
    assert sidebar.count("Reachable") >= 2
    assert TOKEN not in sidebar and "/models/" not in sidebar and "/v1" not in sidebar


def test_share_links_name_endpoints_and_ignore_unknown_ones(secrets):
    at = app("text-generation", query={"mode": "compare", "columns": "local,v1,http://evil.example,nope"},
             secrets=secrets)
    assert at.multiselect(key="_compare_columns_widget").value == ["local", "v1"]
    link = next(code.value for code in at.code if "mode=compare" in code.value)
    assert "columns=local%2Cv1" in link and TOKEN not in link and "127.0.0.1:" not in link.split("?", 1)[1]
