"""The demo in a real browser: `streamlit run app/Home.py` on a free local port, photographed by headless Chromium."""
import importlib.util
from pathlib import Path

import pytest

APP_DIR = Path(__file__).resolve().parents[1] / "app"
_spec = importlib.util.spec_from_file_location("encvit_app_browser", APP_DIR / "browser.py")
browser = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(browser)


def test_main_page_renders_predictions_in_chromium(tmp_path):
    if not Path(browser.CHROMIUM).exists():
        pytest.fail(browser.CHROMIUM_MISSING)  # a missing browser is a broken set-up, not a reason to skip
    log = tmp_path / "server.log"
    with browser.serve(log) as url:
        elements = browser.run_page(url)  # the page as a first visit runs it; also loads the models
        assert "exception" not in elements
        assert elements.count("table") >= 3 and elements.count("imgs") >= 6, elements
        shot = browser.screenshot(url, tmp_path / "home.png")
        rendered, stats = browser.looks_rendered(shot)
        assert rendered, f"the screenshot looks blank: {stats}"
        shown, stats = browser.looks_rendered(shot, min_ink=0.05)
        assert shown, f"the screenshot shows no images and predictions: {stats}"
    assert "Stopping" in log.read_text()  # the server was shut down
    problems = browser.log_problems(log)
    assert not problems, "\n".join(problems)
