"""The Streamlit app starts and shows the engine's status."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest


def test_app_starts_and_shows_status():
    at = AppTest.from_file("../streamlit_app.py", default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "Inference Studio"
    assert [metric.label for metric in at.metric][:2] == ["Device", "Models loaded"]
